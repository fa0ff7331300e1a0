from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import checks, common

FOLDS = 5
"""K of the k-fold fit `data issues` runs when no --run is given."""

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


@app.command("issues")
@common.command
def issues(data: Annotated[Path, typer.Argument(help="Dataset folder or label .csv (as `fit` takes it).", show_default=False, metavar="DATA")],
           run: Annotated[Optional[Path], typer.Option("--run", help="A `clfapp fit DATA --folds K` run whose RUN/oof.csv holds the out-of-fold probabilities (without it, that fit is run first).", show_default=False)] = None,
           folds: Annotated[Optional[int], typer.Option("--folds", help="K of the k-fold fit run when no --run is given (default 5).", show_default=False)] = None,
           budget: common.Budget = None,
           out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write (must not exist; default runs/issues-N).", show_default=False)] = None,
           write_clean: Annotated[Optional[Path], typer.Option("--write-clean", help="Also write a cleaned label CSV (fname, label or labels, split) that `clfapp fit FILE` takes; it must sit in a folder above the data's.", show_default=False)] = None,
           fix: Annotated[Optional[str], typer.Option("--fix", help="With --write-clean: drop (the images with a label issue are left out; the default) or relabel (they get the suggested label). Both drop the outliers and the extra copies of near-duplicates (the training copy stays).", show_default=False)] = None,
           set_: common.Set = None):
    """Find what is wrong in a dataset: label issues, near-duplicates and outliers.

    Label issues come from out-of-fold probabilities (each training image predicted by a
    model that never saw it): cleanlab's confident learning on RUN/oof.csv of a `clfapp fit
    DATA --folds K` run. Near-duplicates (resized, recompressed, slightly cropped or identical
    copies, within and across splits) and outliers (images unlike the rest) are found on every
    image of the data.

    Writes issues.csv (path, split, kind, given, suggested, score, group; most suspicious first
    within each kind) and issues.html (thumbnails, grouped by kind) into a new folder. The
    data is never changed: `--write-clean FILE` writes a new label CSV instead.
    """
    import time

    import pandas as pd

    from ..data import classes_of, dataset_root, is_multi_label, split_items
    from ..infer import issues as iss
    from ..models import runs

    t0 = time.perf_counter()
    if fix is not None and write_clean is None:
        raise common.UsageError("--fix says how --write-clean FILE fixes the data; give --write-clean FILE too")
    fix = fix or "drop"
    if fix not in iss.FIXES:
        raise common.UsageError(f"--fix must be drop or relabel, got {fix!r}")
    if not data.exists():
        raise common.UsageError(f"data {data} not found; give a dataset folder or label .csv")
    if data.is_file() and data.suffix.lower() != ".csv":
        raise common.UsageError(f"data {data} is a file; give a dataset folder or a label .csv")
    if run is not None:
        if folds is not None or budget is not None:
            raise common.UsageError("--folds and --budget are for the k-fold fit; with --run RUN "
                                    "its oof.csv is used as it is")
        run = runs.existing(run)
        if not (run / iss.OOF).is_file():
            raise common.UsageError(f"{run} has no {iss.OOF}; give --run RUN of a "
                                    "`clfapp fit DATA --folds K` run")
    if folds is not None:
        checks.number("--folds", folds, 2)
    if out is not None:
        checks.output_folder("--out", out, may_exist=False)
        checks.output_folder("--out", out.with_name(out.name + ".part"), may_exist=False)
    else:
        checks.new_folder(runs.RUNS_DIR)
    if write_clean is not None:
        checks.output_file("--write-clean", write_clean)
        if write_clean.exists():
            raise common.UsageError(f"--write-clean {write_clean} already exists; choose another file")

    cfg = common.resolve_config(str(data), sets=set_, announce=False)   # its splits, as fit makes them
    delim = cfg.data.label_delim
    if write_clean is not None:
        iss.check_clean_place(write_clean, dataset_root(cfg.data))
    used, tests = split_items(cfg)
    items = pd.concat([used, tests], ignore_index=True)
    multi = is_multi_label(items)
    given_col = "labels" if multi else "label"
    classes = classes_of(used, delim)
    if run is None:   # the out-of-fold probabilities: `clfapp fit DATA --folds K` now
        from .fit import fit_folds
        common.echo(f"0/3 out-of-fold probabilities: clfapp fit {data} --folds {folds or FOLDS}"
                    + (f" --budget {budget}" if budget else ""))
        run = fit_folds(str(data), folds or FOLDS, budget, set_, t0)

    common.echo(f"1/3 label issues: cleanlab on the out-of-fold probabilities of {run / iss.OOF}")
    oof = iss.read_oof(run, items, classes, multi, delim, dataset_root(cfg.data))
    labels = iss.label_issues(oof, delim)
    common.echo(f"    {len(labels)} of {len(oof.rows)} image(s) look mislabelled")

    paths = items["path"].tolist()
    from ..infer import near_duplicates, outliers
    common.echo(f"2/3 near-duplicates among {len(paths)} image(s) (all splits)")
    found = near_duplicates.find(paths)
    dups = iss.duplicate_rows(found, items, given_col)
    common.echo(f"    {len(dups)} image(s) in {dups['group'].nunique()} set(s)")
    common.echo(f"3/3 outliers: pretrained features of {len(paths)} image(s)")
    odd = iss.outlier_rows(outliers.find(paths), items, given_col)
    common.echo(f"    {len(odd)} outlier(s)")
    table = iss.combine(labels, dups, odd)

    folder = _write_issues(out, table, {
        "data": str(data), "out-of-fold probabilities": str(run / iss.OOF),
        "images": len(items), "classes": len(classes),
        "label issues": len(labels), "near-duplicates": f"{len(dups)} in {dups['group'].nunique()} set(s)",
        "outliers": len(odd)}, multi, delim, t0, dataset_root(cfg.data))
    common.echo(f"wrote {folder / 'issues.csv'} and {folder / 'issues.html'}: {len(labels)} label "
                f"issue(s), {len(dups)} near-duplicate(s), {len(odd)} outlier(s)")
    if write_clean is not None:
        kept, done = iss.clean_items(items, table, fix, given_col,
                                     [(p.a, p.b, p.score) for p in found.pairs])
        iss.write_clean(write_clean, kept, given_col)
        why = ", ".join(f"{done[k]} {what}" for k, what in (
            ("label", "with a label issue"), ("copies", "near-duplicate copies"),
            ("outliers", "outliers")) if done[k])
        common.echo(f"wrote {write_clean} ({fix}): {done['kept']} image(s), {done['dropped']} "
                    f"dropped{f' ({why})' if why else ''}, {done['relabelled']} relabelled; "
                    f"`clfapp fit {write_clean}` trains on it")


def _write_issues(out: Path | None, table, described: dict, multi: bool, delim: str, t0: float,
                  root: Path) -> Path:
    """issues.csv and issues.html into OUT (built as OUT.part, renamed at the end) or a new
    runs/issues-N (each file written through a temporary name)."""
    import shutil
    import time

    from ..infer import issues as iss
    from ..models import runs
    from ..report import issues_page

    if out is None:
        folder = runs.new_folder(runs.RUNS_DIR, "issues")
        target = folder
    else:
        target = out
        folder = out.with_name(out.name + ".part")
        folder.mkdir(parents=True)
    try:
        iss.write_table(folder / "issues.csv", table)
        issues_page.write(folder, table, described, multi, delim, time.perf_counter() - t0,
                          root=root, name=target.name)
    except BaseException:
        if out is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if out is not None:
        folder.rename(target)
    return target
