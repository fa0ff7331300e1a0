from __future__ import annotations

import shutil
from typing import Annotated, Optional

import typer

from . import checks, common

Teacher = Annotated[str, typer.Argument(help="The teacher: a run folder (runs/NAME, with model/) or an ensemble folder (ensemble.json).")]
StudentArch = Annotated[Optional[str], typer.Option("--arch", help="The student's architecture (required; model.arch).")]
Temperature = Annotated[float, typer.Option("--temperature", help="Softmax (sigmoid) temperature T of the soft targets; > 0.")]
Alpha = Annotated[float, typer.Option("--alpha", help="Share of the hard-label loss, in [0, 1]; the rest is the teacher's soft term.")]
Cache = Annotated[bool, typer.Option("--cache-teacher/--live-teacher", help="Compute the teacher's outputs once on the un-augmented training images instead of on every augmented batch: no teacher forward per batch, targets blind to augmentation; not with MixUp/CutMix.")]


@common.command
def distill(teacher: Teacher, arch: StudentArch = None, temperature: Temperature = 1.5,
            alpha: Alpha = 0.5, cache_teacher: Cache = False, data: common.Data = None,
            size: common.Size = None, epochs: common.Epochs = None, bs: common.Bs = None,
            lr: common.Lr = None, seed: common.Seed = None, name: common.Name = None,
            weights: common.Weights = None, pretrained: common.Pretrained = None,
            splits_from: common.SplitsFrom = None, set_: common.Set = None):
    """Train a student (--arch) on TEACHER's softened outputs into a new run folder.

    TEACHER is a run folder or an ensemble folder. The loss is alpha x the usual hard-label
    loss + (1 - alpha) x T^2 x KL(teacher || student) at temperature T (multi-label: BCE
    against the teacher's sigmoid probabilities at T); an ensemble teaches with the weighted
    mean of its members' probabilities. The teacher sees every augmented (and MixUp-mixed)
    training batch through its own size and normalisation, unless --cache-teacher.

    The student starts from the defaults for its arch (those of a plain fit: head, cut_blocks,
    pretrained weights, LR, freeze policy, epochs) and takes from the teacher only its data
    and split, its augmentation and the size it predicts at (model.json's test size, as
    data.test_size, unless --size): the [data] and [aug] tables of its config.toml (an
    ensemble's: its own config.toml or its first member's; with neither, --data is required).
    Anything else only by the flags and --set. It uses the teacher's split item by item
    (data.splits_from = TEACHER; --splits-from to change), so it validates on exactly the
    teacher's validation images. The run folder is an ordinary one (runs/RECIPE-distill-N)
    plus distill.json; report.md says what the teacher cost per epoch.
    """
    from dataclasses import replace
    from pathlib import Path

    from ..train import distill as core
    from ..models import runs
    from .fit import EXIT_CODES

    checks.number("--temperature", temperature, 0, low_open=True)
    checks.number("--alpha", alpha, 0, 1)
    checks.new_folder(runs.RUNS_DIR, name)   # before the teacher loads
    core.check_options(temperature, alpha)
    if not arch:
        raise common.UsageError("distill needs the student's architecture: --arch NAME "
                                "(e.g. --arch resnet18)")
    t = core.load_teacher(teacher)
    if t.config is None and data is None:
        raise common.UsageError(f"{teacher} records no config.toml to take the data from; "
                                "pass --data PATH (and --set data.labels=... if not folders)")
    if splits_from is None and t.splits is not None:
        splits_from = str(Path(t.splits).absolute())
    sets = list(set_ or [])
    size_given = size is not None or any(s.partition("=")[0].strip() == "data.size" for s in sets)
    base = core.student_base(t, size_given)
    cfg = common.resolve_config(None, data, arch, size, epochs, bs, lr, seed, weights, pretrained,
                                sets, None, splits_from, base=base,
                                base_origin=f"the teacher's {t.config or 'model.json'}")
    cfg = replace(cfg, recipe=cfg.recipe or Path(teacher).absolute().name)
    folder = runs.new_folder(runs.RUNS_DIR, f"{cfg.recipe}-distill", name)
    common.echo(f"run folder: {folder}")
    try:
        result = core.run(cfg, folder, t, temperature, alpha, cache_teacher)
    except common.UsageError:
        if not (folder / "model").exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if not result.metrics:
        common.echo(f"training {result.stopped} before the first epoch ended; nothing to save in {folder}")
        raise typer.Exit(EXIT_CODES[result.stopped])
    from ..report import summary_line
    common.echo(f"\n{folder}: {summary_line(result.metrics)}")
    common.echo(f"best epoch {result.best_epoch}, {result.seconds:.0f} s; model in {folder / 'model'}; "
                f"distill.json")
    if result.stopped:
        raise typer.Exit(EXIT_CODES[result.stopped])
