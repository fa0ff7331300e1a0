from __future__ import annotations

import shutil
import time
from typing import Annotated, Optional

import typer

from . import checks, common


@common.command
def fit(ctx: typer.Context, recipe: common.RecipeOrData = None, data: common.Data = None,
        arch: common.Arch = None, size: common.Size = None, epochs: common.Epochs = None, bs: common.Bs = None,
        lr: common.Lr = None, seed: common.Seed = None, name: common.Name = None,
        weights: common.Weights = None, pretrained: common.Pretrained = None,
        split_seed: common.SplitSeed = None, splits_from: common.SplitsFrom = None,
        set_: common.Set = None, budget: common.Budget = None,
        full: Annotated[bool, typer.Option("--full", help=(
            "Then retrain the same settings (epochs, LR, seed) on train+valid as the final "
            "model/; the first model moves to model-valid/ and its figures stay the estimate."))] = False,
        deterministic: Annotated[bool, typer.Option("--deterministic", help=(
            "Bit-for-bit reruns: deterministic torch algorithms, and a resumed run keeps its "
            "thread count (train.deterministic)."))] = False,
        resume: Annotated[Optional[str], typer.Option("--resume", metavar="RUN", help=(
            "Continue RUN (a folder, or its name under runs/) from its last finished epoch, "
            "to the same end and files as a run never stopped; refused if its config or data "
            "changed. Takes no recipe or other option."), show_default=False)] = None,
        processes: Annotated[Optional[int], typer.Option("--processes", metavar="N", help=(
            "Train data-parallel in N processes on this machine (gloo on CPUs, one GPU each "
            "on CUDA), each on train.bs // N images a step so the global batch stays train.bs; "
            "only the first writes the run folder. `accelerate launch --multi_gpu "
            "--num_processes N -m clfapp fit ...` does the same under accelerate's launcher. "
            "Not with --budget, --full or --resume."), show_default=False)] = None,
        folds: Annotated[Optional[int], typer.Option("--folds", metavar="K", help=(
            "k-fold cross-validation (train.folds): K models on disjoint folds of the training "
            "split in RUN/fold-1..K, out-of-fold probabilities in RUN/oof.csv, each fold's "
            "figures with mean ± std; RUN is also their soft-vote ensemble. Not with --full "
            "or --processes."), show_default=False)] = None):
    """Train a classifier from RECIPE (with overrides) into a new run folder runs/RECIPE-N.

    `clfapp fit photos/` (a folder of labelled images, or a .csv of fname,label[s]) trains the
    default settings on it into runs/photos-N, with the input size, epochs, LR and arch chosen
    for that data wherever no flag or --set gives them (one line says what and why).
    `clfapp fit` alone uses the project's ./clfapp.toml.

    Fine-tunes a pretrained backbone with one-cycle schedules (or trains from scratch), keeps
    the best epoch, and writes config.toml, splits.csv, results.csv, metrics.json, report.md,
    plots/ and the model bundle (model/) into the run folder. Whatever stops training early
    (Ctrl-C: exit 130, SIGTERM: 143, a NaN/inf loss or an error: 1) still saves the best epoch so far.
    After every epoch RUN/checkpoint.safetensors is replaced; `clfapp fit --resume RUN` continues
    a run that was killed or stopped from there (a finished run: says so, exit 0).
    """
    started = time.perf_counter()  # --budget counts from here: loading torch and the data spend it
    from ..models import runs
    from .. import train
    from ..train import distributed

    checks.number("--processes", processes, 1)
    if resume is None and distributed.is_main():   # rank 0 makes the folder: only it checks
        checks.new_folder(runs.RUNS_DIR, name)   # before the data is read or a model made
    if processes and processes > 1 and distributed.active():
        raise common.UsageError(f"this is already one of {distributed.world_size()} processes "
                                f"started by a launcher; drop --processes")
    if resume is not None:
        given = [flag for flag, v in (("RECIPE", recipe), ("--data", data), ("--arch", arch),
                 ("--size", size), ("--epochs", epochs), ("--bs", bs), ("--lr", lr), ("--seed", seed),
                 ("--name", name), ("--weights", weights), ("--pretrained", pretrained),
                 ("--split-seed", split_seed), ("--splits-from", splits_from), ("--set", set_),
                 ("--budget", budget), ("--full", full), ("--deterministic", deterministic),
                 ("--processes", processes), ("--folds", folds))
                 if v not in (None, False, [])]
        if given:
            raise common.UsageError(f"--resume continues {resume} with the config it started with; "
                                    f"drop {', '.join(given)}")
        if distributed.active():
            distributed.check(None, distributed.world_size(), resume=True)
        folder = runs.existing(resume)
        checks.output_folder("--resume", folder)   # it writes there: writable before it loads
        return _resume(folder, started)
    if deterministic:
        set_ = [*(set_ or []), "train.deterministic=true"]
    if folds is not None:
        set_ = [*(set_ or []), f"train.folds={folds}"]
    recipe = common.project_default(recipe)  # none given: ./clfapp.toml
    cfg = common.resolve_config(recipe, data, arch, size, epochs, bs, lr, seed, weights, pretrained, set_,
                                split_seed, splits_from, budget=budget)
    common.check_data_path(recipe, cfg)
    from ..data import check as data_check
    data_check.before_fit(cfg)  # reads no image: missing files, classes too small, no split
    from .. import models
    models.resolve(cfg.model.arch, cfg.model.pretrained, cfg.model.cut_blocks)  # before any folder
    if cfg.train.folds:
        return _fit_folds(cfg, name, started, full, processes)
    if full and cfg.train.budget:
        raise common.UsageError("--budget (train.budget) does not work with --full yet: the "
                                "retraining on train+valid would run past it; drop one of them")
    n = processes or distributed.world_size()
    if n > 1:  # what several processes cannot do: said here, before any of them starts
        distributed.check(cfg, n, full=full)
    if processes and processes > 1:  # this command line again, as ranks 0..N-1 (distributed.py)
        code = distributed.launch(processes, _command_line_without(ctx, "processes"))
        if code:
            raise typer.Exit(code)
        return
    distributed.init()   # under accelerate launch / torchrun / --processes: join the others
    # rank 0 claims runs/NAME-N, the others train into a private scratch folder
    folder = distributed.run_folder(lambda: runs.new_folder(runs.RUNS_DIR, cfg.recipe, name))
    common.echo(f"run folder: {folder}")
    try:
        if full:
            from ..train import full as full_fit
            result = full_fit.fit_full(cfg, folder)
        else:
            result = train.fit(cfg, folder, started=started, checkpoints=not distributed.active())
    except (common.UsageError, OSError) as e:
        if isinstance(e, OSError) and common.storage_error(e) is None:
            raise
        from ..train import checkpoint
        if checkpoint.state_of(folder) == "checkpoint":
            # epochs are done and saved (a disk that filled up later): the folder is the way back
            common.echo(f"{folder} is kept: its checkpoint holds the epochs finished so far; once "
                        f"the cause is fixed (space freed), `clfapp fit --resume {folder}` "
                        f"continues it")
        elif not (folder / "model").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a run that never started leaves nothing
        raise
    finally:
        distributed.cleanup(folder)   # ranks > 0: their scratch folder
    if not distributed.is_main():     # rank 0 reports; here only how training ended
        if result.stopped:
            raise typer.Exit(EXIT_CODES[result.stopped])
        return
    _report(result, folder)


def _command_line_without(ctx: typer.Context, drop: str) -> list[str]:
    """This fit's arguments as click parsed them, without the option named `drop` (what
    `--processes` hands each process)."""
    args, opts = [], []
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if p.name == drop or v is None or v in ((), []):
            continue
        if p.param_type_name == "argument":
            args.append(str(v))
        elif p.is_flag:
            if v or p.secondary_opts:
                opts.append(p.opts[0] if v else p.secondary_opts[0])
        else:
            for x in (v if p.multiple else [v]):
                opts += [p.opts[0], str(x)]
    return args + opts


def _fit_folds(cfg, name, started: float, full: bool, processes):
    """`fit --folds K` (train/kfold.py): refusals first, then the K folds in one run folder,
    which is returned (`data issues` runs it for its out-of-fold probabilities)."""
    from ..models import runs
    from ..train import distributed, kfold

    if full:
        raise common.UsageError("--folds (train.folds) does not work with --full: each fold's "
                                "model is measured on its held-out fold; drop one of them")
    if processes is not None or distributed.active():
        raise common.UsageError("--folds (train.folds) does not work with --processes or a "
                                "launcher's several processes yet; drop one of them")
    plan = kfold.plan(cfg)   # K more than a class's training images: refused before any folder
    folder = runs.new_folder(runs.RUNS_DIR, cfg.recipe, name)
    common.echo(f"run folder: {folder}")
    try:
        result = kfold.fit(cfg, folder, plan, started)
    except (common.UsageError, OSError):
        if not any((kfold.fold_dir(folder, k) / "model").exists() for k in range(1, plan.k + 1)):
            shutil.rmtree(folder, ignore_errors=True)   # nothing trained: nothing to keep
        raise
    _report_folds(result, folder)
    return folder


def fit_folds(data: str, folds: int, budget: str | None, sets: list[str] | None, started: float):
    """The run folder of `clfapp fit DATA --folds K [--budget B] [--set ...]`, trained now."""
    cfg = common.resolve_config(data, sets=[*(sets or []), f"train.folds={folds}"], budget=budget)
    return _fit_folds(cfg, None, started, False, None)


def _report_folds(result, folder) -> None:
    if result.stopped:
        common.echo(f"\n{folder}: fold {result.fold} {result.stopped}; the folds before it are "
                    f"kept; `clfapp fit --resume {folder}` continues from there")
        raise typer.Exit(EXIT_CODES[result.stopped])
    from ..report import summary_line
    m = result.metrics
    common.echo(f"\n{folder}: {m['k']} folds; out-of-fold {summary_line(m)}")
    key = "f1_micro" if "f1_micro" in m["mean"] else "accuracy"
    common.echo(f"{key} per fold: {', '.join(f'{f[key]:.4f}' for f in m['folds'])}; mean "
                f"{m['mean'][key]:.4f} ± {m['std'][key]:.4f}; {result.seconds:.0f} s. "
                f"oof.csv, report.md; {folder} is also the folds' soft-vote ensemble")


def _resume(folder, started: float) -> None:
    from ..train import checkpoint, resume
    from ..train import kfold
    if kfold.is_kfold(folder):
        if (folder / "metrics.json").is_file() and (folder / "ensemble.json").is_file():
            common.echo(f"{folder} has finished: all its folds, oof.csv and metrics.json are "
                        f"written; nothing to resume")
            return
        from .. import config
        cfg = config.from_file(folder / "config.toml")
        _report_folds(kfold.fit(cfg, folder, None, started), folder)
        return
    if checkpoint.state_of(folder) == "finished":
        common.echo(checkpoint.finished_line(folder))   # resuming it again is no mistake: exit 0
        return
    _report(resume.resume(folder, started), folder)


def _report(result, folder) -> None:
    """The end of fit: its summary lines, and the exit code of a run that stopped early."""
    if not result.metrics:
        common.echo(f"training {result.stopped} before the first epoch ended; nothing to save in {folder}")
        raise typer.Exit(EXIT_CODES[result.stopped])
    from ..report import summary_line
    common.echo(f"\n{folder}: {summary_line(result.metrics)}")
    common.echo(f"best epoch {result.best_epoch}, {result.seconds:.0f} s; model in {folder / 'model'}")
    if "full" in result.metrics:
        f = result.metrics["full"]
        common.echo(f"final model: trained on train+valid ({f['n_train']} images, {f['epochs']} "
                    f"epochs, last epoch kept) in {folder / 'model'}; the figures above are the "
                    f"estimate of the first model, now in {folder / 'model-valid'}")
    if result.stopped:
        raise typer.Exit(EXIT_CODES[result.stopped])


# How `fit` exits when training ended early (the best epoch is saved in every case).
EXIT_CODES = {"interrupted": common.EXIT_INTERRUPTED, "terminated": 128 + 15, "diverged": 1}
