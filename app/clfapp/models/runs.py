"""Run folders: every command that produces something gets a fresh folder of its own; a run is
found by path or by name under runs/, and the newest one by what it holds. In models/, below every
command that uses it: it knows only the errors and how to refuse a pickle."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError
from .pickles import refuse_pickle

RUNS_DIR = Path("runs")


def numbered(parent: Path, prefix: str) -> list[tuple[int, Path]]:
    """(N, folder) of each `parent/prefix-N`, lowest N first (none when `parent` is no folder)."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    return sorted((int(m.group(1)), p) for p in parent.iterdir() if (m := pattern.match(p.name)))


def new_folder(parent: Path, prefix: str, name: str | None = None) -> Path:
    """`parent/name` (must not exist) or the next free `parent/prefix-N`, created."""
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{parent} is a file, not a folder; runs go there: move it away")
    check_name(name)
    if name:
        folder = parent / name
        parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()  # atomic: of two runs given one --name, exactly one gets it
        except FileExistsError:
            raise UsageError(f"{folder} already exists; choose another --name")
        return folder
    parent.mkdir(parents=True, exist_ok=True)
    n = max((k for k, _ in numbered(parent, prefix)), default=0) + 1
    while True:  # another process may take the same number: mkdir is the lock
        try:
            folder = parent / f"{prefix}-{n}"
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


def check_name(name: str | None) -> None:
    """A --name is one folder under its parent: "../x" or "a/b" would write outside it."""
    if name and (name.strip() in (".", "..") or "/" in name or "\\" in name):
        raise UsageError(f"--name {name!r} must be a plain folder name (no '/', '\\', '..')")


def named(run: str | Path, runs_dir: Path = RUNS_DIR) -> Path | None:
    """`runs_dir/run` when `run` is a relative name and that folder exists, else None. An
    absolute path is never a name under runs/ (`runs_dir / "/home/me/photos"` is that path
    itself, whatever it holds)."""
    if Path(run).is_absolute():
        return None
    folder = Path(runs_dir) / str(run)
    return folder if folder.is_dir() else None


def looks_like_run(folder: str | Path) -> bool:
    """A folder that holds a run or an ensemble (model/, ensemble.json or config.toml), finished
    or not: what no folder of images holds."""
    p = Path(folder)
    return p.is_dir() and ((p / "model").is_dir() or (p / "ensemble.json").is_file()
                           or (p / "config.toml").is_file())


def existing(run: str | Path) -> Path:
    """A run folder given by path or by its name under runs/."""
    if Path(run).is_dir():
        return Path(run)
    if (folder := named(run)) is not None:
        return folder
    refuse_pickle(Path(run))  # a model.pkl handed where a run goes: say why it is refused
    where = run if Path(run).is_absolute() else f"{run} and {RUNS_DIR / str(run)}"
    raise UsageError(f"run {run} not found (looked at {where})")


def is_finished(folder: Path) -> bool:
    """A run that completed: its bundle (or ensemble.json) and its metrics.json are written."""
    folder = Path(folder)
    model = (folder / "model" / "model.json").is_file() or (folder / "ensemble.json").is_file()
    return model and (folder / "metrics.json").is_file()


def newest_finished_run(runs_dir: Path) -> Path | None:
    """The finished run (or ensemble) folder directly under `runs_dir` whose metrics.json was
    written last; None when there is none."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    done = [p for p in runs_dir.iterdir() if p.is_dir() and is_finished(p)]
    return max(done, key=lambda p: (p / "metrics.json").stat().st_mtime, default=None)
