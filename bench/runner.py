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


def last_and_best(run, metric: str) -> tuple[float, float]:
    """A clfapp run's `metric` at its last epoch and at its best epoch (the one it kept), both
    as recorded per epoch in results.csv, to set beside a plain script's per-epoch figures."""
    import pandas as pd
    from pathlib import Path

    df = pd.read_csv(Path(run) / "results.csv")
    return round(float(df[metric].iloc[-1]), 4), round(float(df[metric].max()), 4)


def print_table(rows: dict, names: tuple) -> None:
    """rows: {side: (figure, ..., seconds)}; prints them and each other side's ratio to the
    "plain fastai" row (figures and seconds: below 1 in seconds is faster)."""
    print(f"\n{'':14s} " + " ".join(f"{n:>9s}" for n in names) + f" {'seconds':>8s}")
    for side, values in rows.items():
        print(f"{side:14s} " + " ".join(f"{v:9.4f}" for v in values[:-1]) + f" {values[-1]:8.1f}")
    a = rows.get("plain fastai")
    for side, b in rows.items():
        if a is not None and side != "plain fastai":
            print(f"{side + '/fastai':14s} " + " ".join(f"{y / x:9.3f}" for x, y in zip(a, b)))
