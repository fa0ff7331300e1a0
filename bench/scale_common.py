"""What the scale benches share: running a command while measuring its peak memory.

Peak memory is polled every 0.1 s from /proc over the command's whole process tree (DataLoader
and decoder workers included), as resident memory (VmRSS: anonymous + file pages mapped, the
image cache's pages included while they are resident) and as RssAnon (the process's own heap:
what cannot be given back without swap); GNU time's maximum resident set size is reported too
(the largest single process).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLFAPP = str(REPO / ".venv" / "bin" / "clfapp")
PYTHON = str(REPO / ".venv" / "bin" / "python")


@dataclass
class Measured:
    rc: int
    seconds: float
    peak_rss_mb: float       # whole tree, VmRSS summed, polled
    peak_anon_mb: float      # whole tree, RssAnon summed, polled
    time_v_mb: float         # GNU time: max RSS of the largest process
    output: str


def _status(pid: int) -> dict:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|RssAnon|PPid):\s+(\d+)", text, re.M)}


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def run(cmd: list[str], log: Path, env: dict | None = None, kill_when=None, cwd=None) -> Measured:
    """Run `cmd` under /usr/bin/time -v, output into `log`; `kill_when()` (polled) True sends
    SIGKILL to the whole tree (an interruption as hard as they come)."""
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT,
                             env=e, cwd=cwd, start_new_session=True)
        peak_rss = peak_anon = 0
        while p.poll() is None:
            procs = [_status(q) for q in _tree(p.pid)]
            peak_rss = max(peak_rss, sum(s.get("VmRSS", 0) for s in procs))
            peak_anon = max(peak_anon, sum(s.get("RssAnon", 0) for s in procs))
            if kill_when is not None and kill_when():
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                break
            time.sleep(0.1)
    seconds = time.perf_counter() - t0
    out = log.read_text(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    return Measured(p.returncode, seconds, peak_rss / 1024, peak_anon / 1024,
                    int(m.group(1)) / 1024 if m else float("nan"), out)


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def machine_note() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
            "(the machine is shared with other work: timings are what this load allowed)")


def say(msg: str) -> None:
    print(msg, flush=True)
    sys.stdout.flush()
