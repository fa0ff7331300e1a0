from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import checks, common

app = typer.Typer(help="Datasets: embedded samples, checks, the image cache.", no_args_is_help=True, rich_markup_mode="markdown")


@app.command("sample")
@common.command
def sample(name: Annotated[str, typer.Argument(help="Sample to write: digits.")],
           out: Annotated[Optional[Path], typer.Option("--out", help="Target folder (default data/NAME).")] = None):
    """Write an embedded dataset (no network needed) as image files in ImageNet layout."""
    from ..data import samples

    # a given --out is made in an existing folder; the default data/NAME makes data/ too
    checks.output_folder("--out", out or Path("data") / name, may_make=0 if out else 1)
    samples.make(name, out or Path("data") / name)


@app.command("check")
@common.command
def check(target: Annotated[str, typer.Argument(help="Dataset folder or .csv, or a recipe (its data.path).")],
          json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON (machine-readable).")] = False,
          set_: common.Set = None,
          threads: Annotated[int, typer.Option("--threads", help="Threads reading and hashing files (0: 2 per core, at most 8).")] = 0):
    """Check a dataset before training on it: images per class (per label), sizes and colour
    modes, unreadable files (zero-byte, truncated, not an image, wrong extension), exact
    duplicates (by content hash) and duplicates across the train/valid/test split that `fit`
    would make, classes too small for the split, label-file rows naming missing files.

    Exit 0 when `fit` would accept the data (warnings included), 2 when it would refuse it.
    `fit` runs the part that reads no image by itself before it starts.
    """
    import json

    checks.number("--threads", threads, 0)
    from .. import config, recipes
    from ..data import check as chk, dataset_root, samples

    dataset = recipes.data_argument(target)
    if dataset is not None:
        overrides = {"data": {"path": str(dataset)}}
        path = None
    else:
        _, path = recipes.find(target)
        overrides = {}
    for section, table in config.parse_set(set_ or []).items():
        overrides.setdefault(section, {}).update(table)
    cfg = config.load(path, overrides, recipe_name=target)
    if cfg.data.sample and not Path(cfg.data.path).expanduser().exists():
        samples.ensure(cfg.data.sample, Path(cfg.data.path))
    report = chk.full(cfg, threads=threads or None, progress=True)
    if json_out:
        typer.echo(json.dumps(report.to_json(), indent=1))
    else:
        for line in chk.render(report, dataset_root(cfg.data)):
            common.echo(line)
    if report.errors:
        raise typer.Exit(2)


@app.command("prepare")
@common.command
def prepare(recipe: common.RecipeOrData = None, data: common.Data = None, size: common.Size = None,
            split_seed: common.SplitSeed = None, splits_from: common.SplitsFrom = None,
            set_: common.Set = None,
            workers: Annotated[int, typer.Option("--workers", help="Decoders (0: one per core, at most 8).")] = 0,
            pool: Annotated[Optional[str], typer.Option("--pool", help="thread | process (default: config.CACHE_POOL).", show_default=False)] = None):
    """Decode a recipe's (or a folder's) images once into the on-disk image cache, ahead of
    `fit`, `lr-find` and `evaluate`, which then read them from it (a memory map: memory stays
    bounded whatever the dataset's size).

    The images `fit` would decode with the same arguments (train + valid, at data.size and
    data.resize) are cached in $CLFAPP_CACHE/images (default ~/.cache/clfapp/images), keyed by
    each file's path, mtime and size: a changed file makes a new entry, and only it is
    decoded again. A build that is killed leaves nothing that looks complete.
    """
    import time

    from ..data import cache, samples, split_items

    checks.number("--workers", workers, 0)
    if pool is not None and pool not in ("thread", "process"):
        raise common.UsageError(f"--pool must be thread or process, got {pool!r}")
    recipe = common.project_default(recipe)
    cfg = common.resolve_config(recipe, data, size=size, sets=set_, split_seed=split_seed,
                                splits_from=splits_from)
    common.check_data_path(recipe, cfg)
    if cfg.data.cache == "off":
        raise common.UsageError("data.cache is off for this recipe: fit would not read a cache; "
                                "drop --set data.cache=off (or set it to auto or on)")
    if cfg.data.sample:   # an embedded sample is written first, as fit does
        samples.ensure(cfg.data.sample, Path(cfg.data.path))
    used, _ = split_items(cfg)
    paths = used["path"].tolist()
    stamped = cache.stamps(paths)
    entry = cache.find(stamped, cfg.data.size, cfg.data.resize)
    t0 = time.perf_counter()
    if entry is None:
        entry = cache.build(paths, cfg.data.size, cfg.data.resize, stamped, workers=workers or None,
                            kind=pool)
        m, what = entry.meta, "built"
        done = f"{m['decoded']} decoded, {m['reused']} reused from older entries"
    else:
        what, done = "already there", "nothing to do"
    seconds = time.perf_counter() - t0
    unreadable = len(entry.meta["unreadable"])
    common.echo(f"image cache {what}: {len(entry.rows)} images at {cfg.data.size} px "
                f"({cfg.data.resize}), {done}, {seconds:.1f} s"
                + (f"; {unreadable} unreadable image(s) left out" if unreadable else ""))
    common.echo(f"  {entry.data} ({entry.data.stat().st_size / 2**20:.1f} MiB)")
