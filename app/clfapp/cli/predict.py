from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import checks, common
from ..config import INFER_BS, INFER_WORKERS


@common.command
def predict(run: Annotated[str, typer.Argument(help="Run folder (or its name under runs/) holding model/, or an ensemble folder; given alone, the images (`clfapp predict photos/`: the newest finished run classifies them).")],
            paths: Annotated[Optional[list[str]], typer.Argument(help="Images, folders (recursive), or .txt/.csv lists of paths.", show_default=False)] = None,
            out: Annotated[Optional[Path], typer.Option("--out", help="Output file (default RUN/predict-N/predictions.csv|json).")] = None,
            fmt: Annotated[str, typer.Option("--format", help="csv | json.")] = "csv",
            top_k: Annotated[int, typer.Option("--top-k", help="How many ranked labels per image.")] = 3,
            tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Average over the mirrors the model was trained with, or not. Default: as the model's inference spec says (model.json inference.tta); told otherwise, a line says the output is not the shipped model's.", show_default=False)] = None,
            threshold: Annotated[Optional[float], typer.Option("--threshold", help="Multi-label: one threshold for every label, instead of the model's tuned ones.")] = None,
            bs: Annotated[int, typer.Option("--bs", help="Batch size.")] = INFER_BS,
            backend: Annotated[str, typer.Option("--backend", help="torch (the bundle) | onnx (RUN's newest export-N from `clfapp export`, or an export folder, through ONNX Runtime, with the TTA its graph was exported with: --tta/--no-tta only as the export did).")] = "torch",
            workers: Annotated[int, typer.Option("--workers", help="Processes decoding images ahead of the model (0: decode in this one).")] = INFER_WORKERS,
            resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted prediction: keep the rows already written (--out, or RUN's newest predict-N) and classify only the files not in them.")] = False):
    """Classify images with a trained model: label, probability and top-k per image
    (multi-label models: the predicted label set and one probability column per label).

    Loads only the safe bundle (safetensors + model.json); unreadable images are skipped with a
    warning naming them. `clfapp predict photos/` (one argument that is no run) uses the newest
    finished run under runs/ (model/ and metrics.json written) and says which.

    Any number of images: they are decoded batch by batch (images a fit cached are read from
    the image cache) and CSV rows are written and flushed as each batch is done, into
    OUT.part, renamed to OUT at the end. After an interruption, the same command with
    `--resume` keeps those rows and classifies only the rest: each file once in the output.
    OUT.meta.json says which model, TTA, input size and thresholds wrote the rows; `--resume`
    under any other is refused, naming what differs.
    """
    from ..infer import loader, spec, stream
    from ..infer import predict as pr
    from ..models import runs

    if fmt not in ("csv", "json"):
        raise common.UsageError(f"--format must be csv or json, got {fmt!r}")
    loader.check_backend(backend)
    if resume and fmt != "csv":
        raise common.UsageError("--resume works with --format csv (a JSON file is written whole "
                                "at the end)")
    checks.number("--workers", workers, 0)
    checks.number("--top-k", top_k, 1)
    checks.number("--bs", bs, 1)
    checks.number("--threshold", threshold, 0, 1)
    if out is not None and not resume:   # --out's own folder is made (and removed if unused)
        checks.output_file("--out", out, may_make=1)
    if paths:
        folder = runs.existing(run)
    else:  # `clfapp predict photos/`: the newest finished run classifies them
        from .. import auto
        folder, line = auto.default_run(run, runs.RUNS_DIR)
        common.echo(line)
        paths = [run]
    if out is None and not resume:
        checks.new_folder(folder)   # RUN/predict-N
    files = pr.collect_paths(paths)
    predictor = loader.load(folder, backend)
    if predictor.kind == "onnx":   # its TTA is in the graph: the other is an export away
        predictor.check_tta(tta)
    departures = spec.departures(predictor, tta, threshold)   # told to run it otherwise
    tta = spec.tta_in_force(predictor, tta)
    # a folder this command makes is removed again when it ends with nothing predicted
    made_folder = (out is None and not resume) or (out is not None and not out.parent.exists())
    if out is None:
        out = (_resumable(folder) if resume else None) or runs.new_folder(folder, "predict") / f"predictions.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        _say(departures)
        try:
            _write_json(predictor, files, out, tta, bs, workers, top_k, threshold)
        except common.UsageError:
            _remove_if_empty(out.parent, made_folder)
            raise
        return
    sink = stream.CsvSink(out, stream.header(predictor.meta, top_k), resume,
                          stream.record(predictor, folder, bool(tta), threshold))
    todo = [f for f in files if f not in sink.done]
    _say(departures)
    if resume:
        common.echo(f"resuming {out}: {len(sink.done)} rows kept, {len(todo)} of {len(files)} "
                    "files left")
    try:
        n = stream.run(predictor, todo, sink, tta=bool(tta), bs=bs, workers=workers,
                       top_k=top_k, threshold=threshold)
    except common.UsageError:  # e.g. no image could be read: no half-written file is left
        sink.close()
        if sink.rows == 0 and not resume:
            sink.discard()
            _remove_if_empty(out.parent, made_folder)
        raise
    except KeyboardInterrupt:
        sink.close()
        common.echo(f"interrupted: {sink.rows} rows are in {sink.part}; the same command with "
                    "--resume continues")
        raise
    sink.finish()
    common.echo(f"{sink.rows} predictions written to {out} ({n.seconds:.1f} s, "
                f"{n.rate:.0f} images/s for {n.images} images)")


def _say(departures: list[str]) -> None:
    """The lines saying this command runs the model other than its spec does (stderr)."""
    for line in departures:
        typer.echo(line, err=True)


def _remove_if_empty(folder: Path, made: bool) -> None:
    if made and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _resumable(folder: Path) -> Path | None:
    """predictions.csv of RUN's newest predict-N folder (finished or not), to resume."""
    from ..models import runs
    for _, p in reversed(runs.numbered(folder, "predict")):
        out = p / "predictions.csv"
        if out.exists() or out.with_name(out.name + ".part").exists():
            return out
    raise common.UsageError(f"--resume: {folder} has no earlier predict-N/predictions.csv to "
                            "resume; pass --out FILE or leave out --resume")


def _write_json(predictor, files, out, tta, bs, workers, top_k, threshold):
    import pandas as pd

    from ..infer import predict as pr
    from ..infer import stream
    parts = [stream.rows_of(predictor, [files[i] for i in idx], probs, top_k, threshold)
             for idx, probs in pr.batches(predictor, files, bool(tta), bs, workers)]
    if not parts:
        raise common.UsageError("none of the images could be read")
    df = pd.concat(parts, ignore_index=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_json(tmp, orient="records", indent=1)
    os.replace(tmp, out)  # never a half-written output file
    common.echo(f"{len(df)} predictions written to {out}")
