"""What every command shares: error handling, exit codes, recipe options."""
from __future__ import annotations

import errno
import functools
import sys
import warnings
from typing import Annotated, Optional

import typer

from ..errors import UsageError  # noqa: F401 (re-exported)

EXIT_INTERRUPTED = 130


def command(fn):
    """Run a command body: user mistakes → one line + exit 2; Ctrl-C → exit 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _quiet_bars_off_terminal()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="fastai")
        # PIL's EXIF/palette chatter, DecompressionBombWarning: here once, never in decode threads
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"PIL\.")
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED)
        except OSError as e:
            said = storage_error(e)
            if said is None:
                raise
            typer.echo(f"error: {said}", err=True)
            raise typer.Exit(UsageError.exit_code)
    return wrapper


# Errors of the place outputs go (a full disk, a folder that cannot be written): the user fixes
# them, so one line and exit 2 rather than a traceback.
_STORAGE = {errno.ENOSPC: "the disk is full; free some space or write elsewhere",
            errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
            errno.EROFS: "that file system is read-only; write elsewhere",
            errno.EACCES: "check its permissions, or write elsewhere",
            errno.EPERM: "check its permissions, or write elsewhere"}


def storage_error(e: OSError) -> str | None:
    """The one line for an OSError of a full or unwritable output place; None for any other."""
    hint = _STORAGE.get(e.errno)
    if hint is None:
        return None
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where} ({hint})"


def _quiet_bars_off_terminal() -> None:
    """Progress bars only on a terminal: piped into a log, they are thousands of lines; there,
    plain lines instead (report/progress.py).

    (fastprogress's own check tests `stdout.isatty` without calling it, so it is always on.)
    """
    from ..report.progress import plain_lines_off_terminal
    plain_lines_off_terminal()


# Options shared by the commands that take a recipe (fit, lr-find). None = keep the recipe's value.
Recipe = Annotated[str, typer.Argument(help="Recipe name (see `clfapp recipes`) or path to a .toml file.")]
RecipeOrData = Annotated[Optional[str], typer.Argument(
    help="Recipe name (see `clfapp recipes`), path to a .toml file, or a dataset folder or .csv "
         "(the default settings, some chosen for that data); left out: ./clfapp.toml.",
    show_default=False)]
Data = Annotated[Optional[str], typer.Option("--data", help="Dataset folder or CSV (data.path).")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="timm or torchvision architecture (model.arch).")]
Size = Annotated[Optional[int], typer.Option("--size", help="Input size in pixels (data.size).")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Epochs after the frozen ones (train.epochs).")]
Bs = Annotated[Optional[int], typer.Option("--bs", help="Batch size (train.bs).")]
Lr = Annotated[Optional[str], typer.Option("--lr", help="Learning rate, or 'auto' for the LR finder's valley (train.lr).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed for training (train.seed); the split has its own (--split-seed).")]
SplitSeed = Annotated[Optional[int], typer.Option("--split-seed", help="Seed of the train/valid split (data.seed).")]
SplitsFrom = Annotated[Optional[str], typer.Option("--splits-from", help="Reuse this run's train/valid split, item by item (data.splits_from).")]
Name = Annotated[Optional[str], typer.Option("--name", help="Run folder name under runs/ (default: RECIPE-N).")]
Weights = Annotated[Optional[str], typer.Option("--weights", help="Pretrained backbone weights file (model.weights).")]
Pretrained = Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Start from pretrained weights (model.pretrained).")]
Set = Annotated[Optional[list[str]], typer.Option("--set", help="Any config value: section.key=value (repeatable).")]
Budget = Annotated[Optional[str], typer.Option("--budget", help=(
    "Wall time for the whole command, e.g. 900, 90s, 15m, 1h30m (train.budget): the epochs are "
    "planned from the measured speed to end within it; the recipe's epochs are a ceiling."))]


def resolve_config(recipe: str, data=None, arch=None, size=None, epochs=None, bs=None, lr=None,
                   seed=None, weights=None, pretrained=None, sets=None, split_seed=None,
                   splits_from=None, budget=None, base=None, base_origin="", announce=True):
    """Recipe file + command-line overrides → one validated Config (recipe None: the
    defaults alone, or the defaults under `base`'s tables, e.g. what `distill`'s student takes
    from its teacher). `announce` False: the line saying which settings were chosen for the
    data is not printed (a command that trains nothing)."""
    from .. import config, recipes

    dataset = recipes.data_argument(recipe) if recipe is not None else None
    if dataset is not None:  # `fit photos/`: the defaults with that data, run named after its folder
        if data:
            raise UsageError(f"{recipe} is a dataset and so is --data {data}; give the data once")
        root = dataset.resolve().parent if dataset.is_file() else dataset.resolve()
        name, path, data = root.name or "data", None, recipe
    else:
        name, path = recipes.find(recipe) if recipe is not None else ("", None)
    # A dataset given on the command line replaces the recipe's, embedded sample included.
    flags = {"data": {"path": data, "size": size, "sample": "" if data else None,
                      "seed": split_seed, "splits_from": splits_from},
             "model": {"arch": arch, "weights": weights, "pretrained": pretrained},
             "train": {"epochs": epochs, "bs": bs, "lr": lr, "seed": seed, "budget": budget}}
    overrides = {s: {k: v for k, v in t.items() if v is not None} for s, t in flags.items()}
    for section, table in config.parse_set(sets or []).items():
        overrides.setdefault(section, {}).update(table)
    cfg = config.load(path, {s: t for s, t in overrides.items() if t}, recipe_name=name,
                      base=base, base_origin=base_origin)
    if dataset is not None:  # settings chosen for the data where nobody set them (auto.py)
        from .. import auto
        cfg, line = auto.apply(cfg, given={(s, k) for s, t in overrides.items() for k in t})
        if line and announce:
            echo(line)
    # --epochs on an SGDR recipe: the cycles are refitted to those epochs (one line says how)
    cfg, line = config.fit_sgdr_to_epochs(cfg, set(overrides.get("train", {})))
    if line:
        echo(line)
    return cfg


def project_default(recipe: str | None) -> str:
    """The recipe argument, or with none given the project's ./clfapp.toml (said in one line);
    without either, a usage error saying what to pass."""
    from .. import auto
    recipe, line = auto.project_recipe(recipe)
    if line:
        echo(line)
    return recipe


def check_data_path(recipe: str | None, cfg) -> None:
    """A missing data folder, with the recipe's `# layout:` hint: one line saying what the
    recipe expects and where to put it (data.scan's own error names no layout). An embedded
    sample (data.sample) is written on first use, so it is never missing."""
    from pathlib import Path
    from .. import recipes

    if recipe is None or cfg.data.sample or (cfg.data.path and Path(cfg.data.path).expanduser().exists()):
        return
    hint = recipes.layout_hint(recipes.find(recipe)[1])
    if hint:
        raise UsageError(f"data path {cfg.data.path!r} does not exist; recipe {cfg.recipe!r} expects "
                         f"{hint}; put it there, or pass --data PATH")


def echo(msg: str) -> None:
    typer.echo(msg)
    sys.stdout.flush()
