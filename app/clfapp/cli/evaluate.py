from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import checks, common
from ..config import INFER_BS, DataConfig


@common.command
def evaluate(run: Annotated[str, typer.Argument(help="Run folder (or its name under runs/), or an ensemble folder.")],
             data: Annotated[Optional[str], typer.Option("--data", help="Labelled folder or CSV to evaluate on (default: the run's validation split; after fit --full, whose model trained on it, its test split, or refused without one).")] = None,
             labels: Annotated[str, typer.Option("--labels", help="With --data: folder | csv:FILE | name:REGEX.")] = DataConfig.labels,
             tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Average over the mirrors the model was trained with, or not. Default: as the model's inference spec says (model.json inference.tta); a figure measured otherwise is said to differ from the shipped model's.", show_default=False)] = None,
             bs: Annotated[int, typer.Option("--bs", help="Batch size.")] = INFER_BS,
             threshold: Annotated[Optional[float], typer.Option("--threshold", help="Multi-label: one threshold for every label, instead of the model's tuned ones.")] = None):
    """Measure a trained model: accuracy, macro/weighted F1, ROC AUC, per-class table, confusion
    matrix; for multi-label models micro/macro/samples F1, subset accuracy, mAP and a per-label
    table at the model's thresholds.

    Given an ensemble folder, measures each member and the ensemble on the same images and
    prints them side by side (also in its report).

    Writes metrics.json, report.md, report.html and plots/ into RUN/eval-N.
    """
    from ..infer import evaluate as ev
    from ..infer import ensemble, loader, spec
    from .. import report
    from ..models import runs
    from ..report import html

    checks.number("--bs", bs, 1)
    checks.number("--threshold", threshold, 0, 1)
    folder = runs.existing(run)
    checks.new_folder(folder)   # RUN/eval-N: writable before the model is measured
    predictor = loader.load(folder)
    departures = spec.departures(predictor, tta, threshold)   # told to run it otherwise: said
    for line in departures:
        typer.echo(line, err=True)
    tta = spec.tta_in_force(predictor, tta)
    run_as = _run_as(predictor, tta, departures)
    items, source = ev.labelled_items(folder, data, labels, predictor.meta.label_delim)
    # --data may hold images the model trained on (its own dataset folder): said, and recorded
    found = ev.overlap(folder, items["path"]) if data else None
    warning = ev.overlap_warning(folder.name, found)
    if warning:
        typer.echo(warning, err=True)
        source += (f" ({found['n']} of its {found['of']} items were training items of this model: "
                   "optimistic)")
    if predictor.kind == "ensemble":  # each member and the ensemble
        m, members, probs, y = ensemble.measure(predictor, items, tta, bs, threshold)
        if found is not None:
            m["training_overlap"] = found
        m["inference"] = run_as
        out = runs.new_folder(folder, "eval")
        built = ensemble.Built(folder, predictor.meta, m, members,
                               source + (" (TTA)" if tta else "") + "".join(f". {d}" for d in departures))
        built.evidence = html.evidence_of(predictor, items, probs, y, source, threshold)
        ensemble.write_report(built, out, f"Evaluation of {folder.name}")
        for line in report.members_table(members, m, predictor.meta.multi_label):
            common.echo(line)
        common.echo(f"{source}: ensemble {report.summary_line(m)}")
        common.echo(f"report: {out / 'report.md'}")
        return
    m, probs, y = ev.measure(predictor, items, tta, bs, threshold)
    if found is not None:
        m["training_overlap"] = found   # metrics.json: how many measured items it trained on
    m["inference"] = run_as
    out = runs.new_folder(folder, "eval")
    extra = [f"Data: {source}" + (" (TTA)" if tta else "") + ".", "",
             *(line for d in departures for line in (d, "")),
             f"Run as: {'the model as shipped' if run_as['as_shipped'] else 'not as shipped'} "
             f"({spec.describe_conditions(run_as['conditions'])}).", ""]
    evidence = html.evidence_of(predictor, items, probs, y, source, threshold)  # report.html
    if predictor.meta.multi_label:
        report.write_multilabel_metrics(out, m, f"Evaluation of {folder.name}", extra=extra,
                                        evidence=evidence)
    else:
        report.write_metrics(out, m, predictor.classes, f"Evaluation of {folder.name}", extra=extra,
                             evidence=evidence)
    common.echo(f"{source}: {report.summary_line(m)}")
    common.echo(f"report: {out / 'report.md'}")


def _run_as(predictor, tta: bool, departures: list[str]) -> dict:
    """metrics.json `inference`: the conditions the figures were measured under, and whether
    they are the model's as shipped (its inference spec)."""
    from ..infer import spec
    return {"as_shipped": not departures, "conditions": spec.conditions(predictor, tta),
            "departures": departures, "inferred_spec": bool(predictor.spec.inferred)}
