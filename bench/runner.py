"""What the side-by-side benchmarks share: run a command, time it, stop on failure."""
import subprocess
import sys
import time


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    """(wall seconds, stdout) of `cmd`; exits with its stderr tail when it fails."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return seconds, out.stdout
