from __future__ import annotations

import shutil

import typer

from . import common


@common.command
def fit(recipe: common.Recipe, data: common.Data = None, arch: common.Arch = None,
        size: common.Size = None, epochs: common.Epochs = None, bs: common.Bs = None,
        lr: common.Lr = None, seed: common.Seed = None, name: common.Name = None,
        weights: common.Weights = None, pretrained: common.Pretrained = None,
        set_: common.Set = None):
    """Train a classifier from RECIPE (with overrides) into a new run folder runs/RECIPE-N.

    Fine-tunes a pretrained backbone with one-cycle schedules (or trains from scratch), keeps
    the best epoch, and writes config.toml, splits.csv, results.csv, metrics.json, report.md,
    plots/ and the model bundle (model/) into the run folder. Ctrl-C saves the best epoch so far.
    """
    from .. import runs, train

    cfg = common.resolve_config(recipe, data, arch, size, epochs, bs, lr, seed, weights, pretrained, set_)
    folder = runs.new_folder(runs.RUNS_DIR, cfg.recipe, name)
    common.echo(f"run folder: {folder}")
    try:
        result = train.fit(cfg, folder)
    except common.UsageError:
        shutil.rmtree(folder, ignore_errors=True)  # a run that never started leaves nothing
        raise
    if not result.metrics:
        common.echo(f"interrupted before the first epoch ended; nothing to save in {folder}")
        raise typer.Exit(common.EXIT_INTERRUPTED)
    from ..report import summary_line
    common.echo(f"\n{folder}: {summary_line(result.metrics)}")
    common.echo(f"best epoch {result.best_epoch}, {result.seconds:.0f} s; model in {folder / 'model'}")
    if result.interrupted:
        raise typer.Exit(common.EXIT_INTERRUPTED)
