"""Recipe names → TOML files.

A name is looked up in `./recipes/` of the current folder first (a user's own recipes, which
may shadow a shipped one), then among the recipes shipped inside the package (the
repository's top-level `recipes/`, installed as `clfapp.builtin_recipes`). Any path to a .toml file
works too. A recipe's relative `data.path` is read from the current folder (see docs/recipes.md).
"""
from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from .errors import UsageError

LOCAL_DIR = Path("recipes")


def shipped_dir() -> Path | None:
    """The folder of the recipes installed with clfapp (the source folder in an editable install);
    run from a source checkout that was never installed, the checkout's recipes/ folder."""
    try:
        return Path(str(resources.files("clfapp.builtin_recipes")))
    except ModuleNotFoundError:
        source = Path(__file__).resolve().parents[2] / "recipes"
        return source if source.is_dir() else None


def available() -> dict[str, Path]:
    """Every recipe by name: the shipped ones, overridden by same-named ones in ./recipes/."""
    found: dict[str, Path] = {}
    for folder in (shipped_dir(), LOCAL_DIR):
        if folder is not None and folder.is_dir():
            found.update({p.stem: p.resolve() for p in sorted(folder.glob("*.toml"))})
    return dict(sorted(found.items()))


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
        raise UsageError(f"unknown recipe {recipe!r}{hint} (a folder of images or a .csv file "
                         f"works too)")
    return recipe, known[recipe]


def data_argument(arg: str) -> Path | None:
    """The dataset that `arg` names where a recipe would stand (`clfapp fit photos/`): an existing
    folder or .csv file; None when `arg` is a known recipe name (a recipe wins over a folder of
    the same name, so `clfapp fit digits` stays the recipe) or no such folder or CSV exists."""
    if arg in available():
        return None
    p = Path(arg).expanduser()
    return p if p.is_dir() or (p.is_file() and p.suffix.lower() == ".csv") else None


def describe(path: Path) -> str:
    """The recipe's first comment line, as its one-line description."""
    first = path.read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def layout_hint(path: Path) -> str:
    """What data layout the recipe expects and where: its `# layout: ...` comment line, read by
    `fit` and `lr-find` into the error when the data path is missing ("" when it has none).

    A comment, not a config key: the expected layout describes the recipe's dataset, it is no
    setting of a run (see docs/recipes.md)."""
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text.lower().startswith("layout:"):
            return text[len("layout:"):].strip()
    return ""
