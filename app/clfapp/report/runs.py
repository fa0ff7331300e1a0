"""Run folders: every command that produces something gets a fresh folder of its own."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError

RUNS_DIR = Path("runs")


def new_folder(parent: Path, prefix: str, name: str | None = None) -> Path:
    """`parent/name` (must not exist) or the next free `parent/prefix-N`, created."""
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{parent} is a file, not a folder; runs go there: move it away")
    if name and (name.strip() in (".", "..") or "/" in name or "\\" in name):
        # a name is one folder under parent: "../x" or "a/b" would write outside it
        raise UsageError(f"--name {name!r} must be a plain folder name (no '/', '\\', '..')")
    if name:
        folder = parent / name
        parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()  # atomic: of two runs given one --name, exactly one gets it
        except FileExistsError:
            raise UsageError(f"{folder} already exists; choose another --name")
        return folder
    parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := pattern.match(p.name))]
    n = max(taken, default=0) + 1
    while True:  # another process may take the same number: mkdir is the lock
        try:
            folder = parent / f"{prefix}-{n}"
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


def existing(run: str | Path) -> Path:
    """A run folder given by path or by its name under runs/."""
    for candidate in (Path(run), RUNS_DIR / str(run)):
        if candidate.is_dir():
            return candidate
    from ..infer.bundle import refuse_pickle
    refuse_pickle(Path(run))  # a model.pkl handed where a run goes: say why it is refused
    raise UsageError(f"run {run} not found (looked at {run} and {RUNS_DIR / str(run)})")
