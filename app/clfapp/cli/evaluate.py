from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common


@common.command
def evaluate(run: Annotated[str, typer.Argument(help="Run folder (or its name under runs/).")],
             data: Annotated[Optional[str], typer.Option("--data", help="Labelled folder or CSV to evaluate on (default: the run's validation split).")] = None,
             labels: Annotated[str, typer.Option("--labels", help="With --data: folder | csv:FILE | name:REGEX.")] = "folder",
             tta: Annotated[bool, typer.Option("--tta", help="Average with mirrored images.")] = False,
             bs: Annotated[int, typer.Option("--bs", help="Batch size.")] = 64):
    """Measure a trained model: accuracy, macro/weighted F1, ROC AUC, per-class table, confusion matrix.

    Writes metrics.json, report.md and plots/confusion_matrix.png into RUN/eval-N.
    """
    import pandas as pd

    from .. import data as datamod
    from .. import evaluate as ev
    from .. import predict, report, runs
    from ..config import DataConfig

    folder = runs.existing(run)
    if data:
        items = datamod.scan(DataConfig(path=data, labels=labels))
        items = items[items["split"].isna() | (items["split"] != "train")]
        source = data
    else:
        splits = folder / "splits.csv"
        if not splits.is_file():
            raise common.UsageError(f"{folder} has no splits.csv; pass --data PATH")
        items = pd.read_csv(splits, dtype=str, keep_default_na=False)
        items = items[items["split"] == "valid"]
        source = f"validation split of {folder.name}"
    predictor = predict.Predictor(folder)
    y = ev.targets(items["label"], predictor.classes)
    probs, kept = predictor.probabilities(items["path"].tolist(), tta=tta, bs=bs)
    m = ev.metrics(probs, y[kept], predictor.classes)
    out = runs.new_folder(folder, "eval")
    report.write_metrics(out, m, predictor.classes, f"Evaluation of {folder.name}",
                         extra=[f"Data: {source}" + (" (TTA)" if tta else "") + ".", ""])
    common.echo(f"{source}: {report.summary_line(m)}")
    common.echo(f"report: {out / 'report.md'}")
