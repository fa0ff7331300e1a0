from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import checks, common
from ..config import INFER_BS, ThresholdsConfig


@common.command
def thresholds(run: Annotated[str, typer.Argument(help="Run folder of a multi-label model, or a (soft-vote) ensemble folder.")],
               metric: Annotated[str, typer.Option("--metric", help="f1_micro | f1_macro | f1_samples.")] = ThresholdsConfig.metric,
               mode: Annotated[str, typer.Option("--mode", help="global (one threshold) | per-label.")] = ThresholdsConfig.mode,
               data: Annotated[Optional[str], typer.Option("--data", help="Labelled data to tune on (default: the run's validation split; required after fit --full, whose model trained on it).")] = None,
               labels: Annotated[str, typer.Option("--labels", help="With --data: csv:FILE.")] = "csv:labels.csv",
               bs: Annotated[int, typer.Option("--bs", help="Batch size.")] = INFER_BS):
    """Search multi-label decision thresholds that maximise METRIC and store them in the model.

    `evaluate` and `predict` use them from then on (`--threshold` overrides). Writes the metric
    before and after, the per-label table and the metric-versus-threshold curve into
    RUN/thresholds-N.
    """
    from ..infer import evaluate as ev
    from ..infer import loader
    from .. import report
    from ..models import runs
    from ..infer import spec
    from ..infer import thresholds as th

    if metric not in th.METRICS:
        raise common.UsageError(f"--metric must be one of {', '.join(th.METRICS)}, got {metric!r}")
    if mode not in th.MODES:
        raise common.UsageError(f"--mode must be one of {', '.join(th.MODES)}, got {mode!r}")
    checks.number("--bs", bs, 1)
    folder = runs.existing(run)
    checks.new_folder(folder)   # RUN/thresholds-N, and the model's own files it updates
    checks.output_folder("", folder / "model" if (folder / "model").is_dir() else folder)
    predictor = loader.load(folder)
    if not predictor.meta.multi_label:
        raise common.UsageError(f"{folder} holds a single-label model: it decides by the top class, "
                                "there are no thresholds to tune")
    if getattr(predictor.meta, "vote", "soft") == "hard":
        raise common.UsageError(f"{folder} is a hard-vote ensemble: a label is on when a weighted "
                                "majority of its members says so, there are no thresholds to tune")
    items, source = ev.labelled_items(folder, data, labels, predictor.meta.label_delim, tune=True)
    _, probs, y = ev.measure(predictor, items, bs=bs)   # run as shipped: its spec's size and TTA
    tuned = th.tune(folder, probs, y, metric, mode, predictor, on=source)
    out = runs.new_folder(folder, "thresholds")
    report.write_multilabel_metrics(out, tuned.after, f"Thresholds of {folder.name}",
                                    before=tuned.before, search=tuned.search,
                                    extra=[f"Tuned on {source}: {mode}, {metric}, on the "
                                           f"probabilities of the model as shipped "
                                           f"({spec.describe_conditions(spec.conditions(predictor))}).", ""])
    shown = (f"{tuned.search.thresholds[0]:.2f}" if mode == "global"
             else ", ".join(f"{c}={t:.2f}" for c, t in zip(predictor.classes, tuned.search.thresholds)))
    common.echo(f"{metric}: {tuned.search.score_at_half:.4f} at 0.5 → {tuned.search.score:.4f} "
                f"with thresholds {shown}")
    saved = folder / "ensemble.json" if predictor.kind == "ensemble" else folder / "model" / "model.json"
    common.echo(f"saved in {saved}; report: {out / 'report.md'}")
