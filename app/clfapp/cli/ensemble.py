from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import checks, common
from ..config import INFER_BS, DataConfig


@common.command
def ensemble(members: Annotated[list[str], typer.Argument(help="Two or more run folders (or names under runs/).")],
             vote: Annotated[str, typer.Option("--vote", help="soft (weighted mean of probabilities) | hard (weighted majority of the members' decisions).")] = "soft",
             weights: Annotated[Optional[str], typer.Option("--weights", help="One positive weight per member, comma-separated, e.g. 2,1 (normalised to sum 1; default equal).")] = None,
             name: Annotated[Optional[str], typer.Option("--name", help="Folder name under runs/ (default: ensemble-N).")] = None,
             data: Annotated[Optional[str], typer.Option("--data", help="Measure on this labelled folder or CSV (its non-train part) instead of the members' shared validation split.")] = None,
             labels: Annotated[str, typer.Option("--labels", help="With --data: folder | csv:FILE | name:REGEX.")] = DataConfig.labels,
             metric: Annotated[Optional[str], typer.Option("--metric", help="Multi-label: F1 the thresholds maximise (default: the first member's [thresholds] metric).")] = None,
             mode: Annotated[Optional[str], typer.Option("--mode", help="Multi-label: global | per-label (default: the first member's [thresholds] mode).")] = None,
             bs: Annotated[int, typer.Option("--bs", help="Batch size.")] = INFER_BS):
    """Combine trained runs into one ensemble, in a self-contained folder runs/NAME.

    The members' bundles are copied in (the folder can be moved alone); each keeps its own
    input size, resize and normalisation. Soft vote averages the probabilities (weighted); hard
    vote takes the weighted majority of the members' decisions (ties: the mean probability),
    written as vote shares. The ensemble is accepted wherever a run is (predict, evaluate,
    thresholds). Members must have the same classes (or labels) and must not have trained on
    each other's validation images (fit them with --splits-from FIRST_RUN), unless --data
    gives other labelled data to measure on. Multi-label soft-vote ensembles get their own
    thresholds, searched on the averaged probabilities.

    Writes ensemble.json, members/, splits.csv, metrics.json and report.md (each member and the
    ensemble on the shared validation images).
    """
    from ..infer import ensemble as ens
    from .. import report
    from ..models import runs

    checks.number("--bs", bs, 1)
    parsed = checks.numbers_list("--weights", weights, 0, low_open=True)
    checks.new_folder(runs.RUNS_DIR, name)
    folders = [runs.existing(m) for m in members]
    built = ens.build(folders, runs.RUNS_DIR, name, vote, parsed, data, labels, metric, mode, bs)
    meta = built.meta
    common.echo(f"{meta.vote} vote of {len(meta.members)} members on {built.source}:")
    for line in report.members_table(built.members, built.figures, meta.multi_label):
        common.echo(line)
    if built.search is not None:
        s = built.search
        common.echo(f"ensemble thresholds: {s.metric} {s.score_at_half:.4f} at 0.5 → {s.score:.4f}")
    common.echo(f"ensemble: {built.folder}; report: {built.folder / 'report.md'}")
