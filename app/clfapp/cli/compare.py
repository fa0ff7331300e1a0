from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from . import checks, common
from ..config import DataConfig


@common.command
def compare(models: Annotated[list[str], typer.Argument(help="Run, ensemble or export (RUN/export-N) folders.")],
            data: Annotated[Optional[str], typer.Option("--data", help="Labelled folder or CSV to measure on (default: the first model's validation split; its test split, or refused, where a model trained on it: fit --full).")] = None,
            labels: Annotated[str, typer.Option("--labels", help="With --data: folder | csv:FILE | name:REGEX.")] = DataConfig.labels,
            threads: Annotated[int, typer.Option("--threads", help="CPU threads for every model (0: torch's default).")] = 0,
            repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per figure (the median is reported).")] = 20,
            strict: Annotated[bool, typer.Option("--strict", help="Refuse (exit 2) when a model was trained on some of the items compared on, instead of warning and marking its row.")] = False,
            name: common.Name = None):
    """Compare models side by side on the same items: accuracy, macro-F1 and ROC AUC
    (multi-label: micro-F1 at each model's thresholds, mAP), parameters, size on disk,
    latency per image at batch 1 and images/s at batch 32 (CPU, thread count and precision
    stated; decoding not timed).

    The column overlap counts the compared items each model was trained on (its splits.csv:
    train rows, and valid rows after fit --full); such a model is warned about and marked
    with * (--strict refuses it).

    Prints the table and writes comparison.csv, comparison.md and report.html into
    runs/compare-N.
    """
    from ..infer import compare as cmp
    from ..models import runs

    checks.number("--threads", threads, 0)
    checks.number("--repeats", repeats, 1)
    checks.new_folder(runs.RUNS_DIR, name)   # not after every model was measured
    folders = [runs.existing(m) for m in models]
    table, described, settings = cmp.compare(folders, data, threads, repeats, labels, strict)
    folder = runs.new_folder(runs.RUNS_DIR, "compare", name)
    md = cmp.markdown(table, described, settings)
    for fname, text in (("comparison.csv", table.to_csv(index=False)), ("comparison.md", md)):
        tmp = folder / (fname + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, folder / fname)
    from ..report import html
    html.write_comparison(folder, table, described, settings)
    common.echo(md)
    common.echo(f"written to {folder / 'comparison.csv'}, {folder / 'comparison.md'} and "
                f"{folder / 'report.html'}")
