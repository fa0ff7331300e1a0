from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common
from ..config import INFER_BS


@common.command
def predict(run: Annotated[str, typer.Argument(help="Run folder (or its name under runs/) holding model/, or an ensemble folder; given alone, the images (`clfapp predict photos/`: the newest finished run classifies them).")],
            paths: Annotated[Optional[list[str]], typer.Argument(help="Images, folders (recursive), or .txt/.csv lists of paths.", show_default=False)] = None,
            out: Annotated[Optional[Path], typer.Option("--out", help="Output file (default RUN/predict-N/predictions.csv|json).")] = None,
            fmt: Annotated[str, typer.Option("--format", help="csv | json.")] = "csv",
            top_k: Annotated[int, typer.Option("--top-k", help="How many ranked labels per image.")] = 3,
            tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Also average over the mirrors the model was trained with (model.json tta_flips); a no-op for models trained without flips. Default: what the model says (model.json tta, from aug.tta).", show_default=False)] = None,
            threshold: Annotated[Optional[float], typer.Option("--threshold", help="Multi-label: one threshold for every label, instead of the model's tuned ones.")] = None,
            bs: Annotated[int, typer.Option("--bs", help="Batch size.")] = INFER_BS,
            backend: Annotated[str, typer.Option("--backend", help="torch (the bundle) | onnx (RUN's newest export-N from `clfapp export`, or an export folder, through ONNX Runtime; no --tta).")] = "torch"):
    """Classify images with a trained model: label, probability and top-k per image
    (multi-label models: the predicted label set and one probability column per label).

    Loads only the safe bundle (safetensors + model.json); unreadable images are skipped with a
    warning naming them. `clfapp predict photos/` (one argument that is no run) uses the newest
    finished run under runs/ (model/ and metrics.json written) and says which.
    """
    from ..infer import predict as pr
    from ..report import runs

    if fmt not in ("csv", "json"):
        raise common.UsageError(f"--format must be csv or json, got {fmt!r}")
    if backend not in ("torch", "onnx"):
        raise common.UsageError(f"--backend must be torch or onnx, got {backend!r}")
    if backend == "onnx" and tta:
        raise common.UsageError("--tta is not available with --backend onnx (the exported graph is "
                                "the plain model); use --backend torch for TTA")
    if paths:
        folder = runs.existing(run)
    else:  # `clfapp predict photos/`: the newest finished run classifies them
        from .. import auto
        folder, line = auto.default_run(run, runs.RUNS_DIR)
        common.echo(line)
        paths = [run]
    files = pr.collect_paths(paths)
    if backend == "onnx":
        from ..infer.onnx_predict import OnnxPredictor
        predictor = OnnxPredictor(folder)
    else:
        predictor = pr.load_predictor(folder)
        tta = pr.tta_default(predictor, tta)
    probs, kept = predictor.probabilities(files, tta=bool(tta), bs=bs)
    kept_files = [files[i] for i in kept]
    if predictor.meta.multi_label:
        df = pr.multilabel_table(kept_files, probs, predictor.meta, threshold)
    else:
        df = pr.table(kept_files, probs, predictor.classes, top_k)
    if out is None:
        out = runs.new_folder(folder, "predict") / f"predictions.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_json(tmp, orient="records", indent=1)
    os.replace(tmp, out)  # never a half-written output file
    common.echo(f"{len(df)} predictions written to {out}")
