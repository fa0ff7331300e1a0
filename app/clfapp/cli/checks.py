"""Options checked before any work starts: every command's numbers and output places.

Each command calls these first, before it loads a model, reads data or makes a folder, so a
value it would choke on late (a NaN threshold, a negative thread count, an --out whose folder
is missing or a file, a --name that is taken, a folder it cannot write to) is refused in one
line, exit 2, naming the option and what it accepts. The core functions keep their own guards
for Python callers; these are what the command line promises (docs/reliability.md).

Nothing here imports torch: `clfapp --help` stays instant.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import UsageError
from ..models import runs


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def number(option: str, value, low=None, high=None, *, low_open: bool = False,
           high_open: bool = False) -> None:
    """`value` (None: not given) is a finite number within [low, high] (an open end with
    low_open / high_open; None: no bound); else one line naming `option` and the range."""
    if value is None:
        return
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (low is None or (value > low if low_open else value >= low))
          and (high is None or (value < high if high_open else value <= high)))
    if ok:
        return
    if isinstance(value, int) and not isinstance(value, bool):   # counts: said in words
        if low is not None and high is not None:
            accepted = f"from {low} to {high}"
        elif low is not None:
            accepted = f"{low} or more"
        else:
            accepted = f"{high} or less"
        raise UsageError(f"{option} must be {accepted}, got {value}")
    if low == 0 and low_open and high is None:
        raise UsageError(f"{option} must be a positive number, got {_fmt(value)}")
    if low is not None and high is not None:
        accepted = (f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}"
                    f"{')' if high_open else ']'}")
    elif low is not None:
        accepted = f"{'>' if low_open else '>='} {_fmt(low)}"
    elif high is not None:
        accepted = f"{'<' if high_open else '<='} {_fmt(high)}"
    else:
        raise UsageError(f"{option} must be a finite number, got {_fmt(value)}")
    raise UsageError(f"{option} must be a number {accepted}, got {_fmt(value)}")


def numbers_list(option: str, text: str | None, low=None, high=None, **bounds) -> list[float] | None:
    """A comma-separated list of numbers (e.g. ensemble --weights), each checked as `number`."""
    if text is None:
        return None
    try:
        values = [float(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"{option} must be numbers separated by commas, got {text!r}")
    for v in values:
        number(option, v, low, high, **bounds)
    return values


def _given(option: str, path: Path) -> str:
    return f"{option} {path}" if option else str(path)


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _place(option: str, path: Path, is_folder: bool, may_make: int) -> None:
    """`path` can be written as a file (is_folder False) or made as a folder: it is not of the
    other kind, at most `may_make` folders above it are missing (the command makes them), the
    nearest existing one is a folder, and it is writable."""
    given = _given(option, path)
    if path.exists():
        if is_folder and not path.is_dir():
            raise UsageError(f"{given} is a file, not a folder; choose another {option or 'place'}")
        if not is_folder and path.is_dir():
            raise UsageError(f"{given} is a folder; give a file name")
    missing, above = [], path.parent
    while not above.exists() and not above.is_symlink() and above != above.parent:
        missing.append(above)
        above = above.parent
    if not above.is_dir():
        raise UsageError(f"{given}: {above} is a file, not a folder")
    if len(missing) > may_make:
        raise UsageError(f"{given}: the folder {missing[-1]} does not exist; create it first, "
                         f"or choose another {option or 'place'}")
    if not _writable(above):
        raise UsageError(f"{given}: {above} is not writable (check its permissions, or write "
                         f"elsewhere)")


def output_file(option: str, path: str | Path | None, may_make: int = 0) -> None:
    """A file the command writes (None: not given); up to `may_make` missing folders above it
    are made."""
    if path is not None:
        _place(option, Path(path), is_folder=False, may_make=may_make)


def output_folder(option: str, path: str | Path | None, may_make: int = 0,
                  may_exist: bool = True) -> None:
    """A folder the command makes or writes into (None: not given); up to `may_make` missing
    folders above it are made; may_exist False: it must not exist yet."""
    if path is None:
        return
    path = Path(path)
    if not may_exist and path.exists():
        raise UsageError(f"{_given(option, path)} already exists; choose another "
                         f"{option or 'place'}")
    if path.is_dir():
        if not _writable(path):
            raise UsageError(f"{_given(option, path)} is not writable (check its permissions, "
                             f"or write elsewhere)")
        return
    _place(option, path, is_folder=True, may_make=may_make)


def new_folder(parent: str | Path, name: str | None = None, option: str = "--name") -> None:
    """What `runs.new_folder(parent, prefix, name)` will do, checked first: `parent` (runs/,
    or a run for its eval-N, predict-N, ...) is a folder or can be made, it is writable, and
    `name`, when given, is a plain folder name not taken there."""
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{parent} is a file, not a folder; runs go there: move it away")
    runs.check_name(name)
    if name and (parent / name).exists():
        raise UsageError(f"{parent / name} already exists; choose another {option}")
    if parent.is_dir():
        if not _writable(parent):
            raise UsageError(f"{parent} is not writable (check its permissions, or write elsewhere)")
        return
    _place("", parent, is_folder=True, may_make=len(parent.parts))
