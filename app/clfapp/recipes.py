"""Recipe names → TOML files: the project's recipes/ folder, or any path to a .toml file."""
from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from .errors import UsageError

# The recipes/ folder at the repository root (clfapp is installed in editable mode from it).
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.toml"))}


def find(recipe: str) -> tuple[str, Path]:
    """(name, file) for a recipe name or a path to a TOML file."""
    p = Path(recipe)
    if p.suffix == ".toml" or p.is_file():
        if not p.is_file():
            raise UsageError(f"recipe file {p} not found")
        return p.stem, p
    known = available()
    if recipe not in known:
        close = difflib.get_close_matches(recipe, list(known), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(known) or 'none'}"
        raise UsageError(f"unknown recipe {recipe!r}{hint}")
    return recipe, known[recipe]


def describe(path: Path) -> str:
    """The recipe's first comment line, as its one-line description."""
    first = path.read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
