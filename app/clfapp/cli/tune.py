from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from . import checks, common


@common.command
def tune(recipe: common.RecipeOrData = None,
         trials: Annotated[Optional[int], typer.Option("--trials", help=(
             "Trials the study holds in all (finished, pruned and running ones; failed ones "
             "not): run again with more to search further [default: 20; grid: every point]"),
             show_default=False)] = None,
         budget: Annotated[Optional[str], typer.Option("--budget", help=(
             "Wall time of this command, e.g. 90m, 2h: no trial starts after it, and the one "
             "running then stops at its next epoch end."))] = None,
         sampler: Annotated[Optional[str], typer.Option("--sampler", help=(
             "tpe | random | grid (every combination of the space's lists) [default: tpe]"),
             show_default=False)] = None,
         pruner: Annotated[Optional[str], typer.Option("--pruner", help=(
             "median | hyperband | none: stop trials that are clearly losing, after any epoch "
             "[default: median]"), show_default=False)] = None,
         storage: Annotated[Optional[str], typer.Option("--storage", help=(
             "Optuna database URL (sqlite:///..., postgresql://..., mysql://...): workers on "
             "several machines share one study [default: sqlite in the study folder]"),
             show_default=False)] = None,
         study: Annotated[Optional[str], typer.Option("--study", help=(
             "The study's name and folder runs/NAME [default: tune-RECIPE]"),
             show_default=False)] = None,
         keep: Annotated[Optional[int], typer.Option("--keep", help=(
             "Keep the run folders of the best N finished trials only [default: all]"),
             show_default=False)] = None,
         data: common.Data = None, set_: common.Set = None):
    """Search RECIPE's hyper-parameters with Optuna: each trial a normal fit, pruned after any epoch.

    The search space is the recipe's [tune] table: "train.lr" = {low = 1e-4, high = 1e-2,
    log = true}, "aug.max_rotate" = [0, 10, 30], "model.arch" = ["tf_efficientnet_lite0",
    "resnet18"]: any config key, checked before the first trial; plain keys there (trials,
    sampler, pruner, budget, startup_trials, warmup_epochs, keep) are the study's settings,
    which the flags override. A folder of images, or a recipe without [tune], searches
    train.lr, train.wd, model.dropout and aug.max_rotate.

    The study lives in runs/tune-RECIPE/: study.db (run the command again to continue it;
    start more processes, here or with --storage URL elsewhere, to share it), splits.csv (the
    one split every trial validates on), trial-N/ run folders, leaderboard.csv,
    plots/ (optimisation history, parameter importances, each trial's epochs) and best.toml,
    the best trial as a recipe: `clfapp fit runs/tune-RECIPE/best.toml`.
    Ctrl-C: exit 130, the trial it cut off is tried again when the study continues.
    """
    started = time.time()
    from pathlib import Path

    from .. import recipes
    from ..models import runs
    from ..train import Terminated, _sigterm_as_interrupt
    from ..train import tune as tuning

    checks.number("--trials", trials, 1)
    checks.number("--keep", keep, 0)
    checks.new_folder(runs.RUNS_DIR)
    if study is not None:   # runs/NAME: an existing study continues
        _check_study_name(study)
        checks.output_folder("--study", runs.RUNS_DIR / study, may_make=len(runs.RUNS_DIR.parts))
    recipe = common.project_default(recipe)
    cfg = common.resolve_config(recipe, data, sets=set_)
    common.check_data_path(recipe, cfg)
    recipe_file = None if recipes.data_argument(recipe) is not None else recipes.find(recipe)[1]
    table, had = tuning.space_of(recipe_file)
    where = str(recipe_file) if recipe_file is not None else recipe
    params, settings_in_table = tuning.parse_space(table, cfg, where)
    settings = tuning.resolve_settings(settings_in_table, dict(
        trials=trials, budget=budget, sampler=sampler, pruner=pruner, keep=keep))
    if settings.sampler == "grid":
        tuning.grid_points(params, cfg.train.seed)   # lists only: refused before any loading
    tuning.check_combinations(cfg, params)
    name = study or f"tune-{cfg.recipe}"
    _check_study_name(name)
    folder = Path(runs.RUNS_DIR) / name
    common.echo(f"study {name} in {folder}: {settings.sampler} sampler, {settings.pruner} pruner; "
                f"search space{'' if had else ' (the default: no [tune] table)'}: "
                + ", ".join(p.name for p in params))
    try:
        with _sigterm_as_interrupt():   # between trials too: the study records how it ended
            result = tuning.run_study(cfg, params, settings, folder, name, storage,
                                      trials_given=trials is not None or "trials" in settings_in_table,
                                      started=started)
    except tuning.StudyFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    except Terminated:
        common.echo("terminated; the study keeps its trials: run the same command to continue")
        raise typer.Exit(128 + 15)
    except KeyboardInterrupt:
        common.echo("interrupted; the study keeps its trials: run the same command to continue")
        raise typer.Exit(common.EXIT_INTERRUPTED)
    column = result.user_attrs.get("monitor", cfg.train.monitor)
    rows = tuning.leaderboard(result, params, column)
    common.echo("\n" + tuning.table(rows, params, column))
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    n_pruned, minutes = tuning.saved_minutes(result)
    common.echo(f"\n{len(rows)} trials: {counts['complete']} finished, {counts['pruned']} pruned"
                + (f" (about {minutes:.1f} min of training saved: their remaining epochs at "
                   f"their own speed)" if n_pruned else "")
                + (f", {counts['fail']} failed" if counts["fail"] else "")
                + f"; leaderboard: {folder / 'leaderboard.csv'}, plots: {folder / 'plots'}")
    best = tuning.best_trial(result)
    if best is None:
        common.echo("no trial finished: no best recipe")
        raise typer.Exit(1)
    common.echo(f"best: trial {best.number}, {column} {best.value:.4f}: "
                + ", ".join(f"{k}={tuning._fmt(v)}" for k, v in best.params.items()))
    common.echo(f"best recipe: {folder / 'best.toml'} (clfapp fit {folder / 'best.toml'})")


def _check_study_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise common.UsageError(f"--study {name!r}: give a plain name (its folder is runs/NAME)")
