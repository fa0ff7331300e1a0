from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import checks, common


@common.command
def export(run: Annotated[str, typer.Argument(help="Run folder (or its name under runs/), or an ensemble folder.")],
           fmt: Annotated[str, typer.Option("--format", help="Export format: onnx (the only one).")] = "onnx",
           out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write (default RUN/export-N).")] = None,
           opset: Annotated[int, typer.Option("--opset", help="ONNX opset (13-20).")] = 17,
           tolerance: Annotated[float, typer.Option("--tolerance", help="Largest |PyTorch - ONNX Runtime| probability difference accepted by the parity check.")] = 1e-4,
           tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Put test-time augmentation (the mean over the mirrors the model trained with) inside the graph, or export the plain model. Default: what the model's inference spec says (model.json / ensemble.json `inference.tta`).", show_default=False)] = None,
           int8: Annotated[bool, typer.Option("--int8", help="Quantise to INT8 (static QDQ, per-channel int8 weights, uint8 activations calibrated on the run's training images), then check it against the fp32 graph on the validation split (the test split of a fit --full run): refused, exit 1 and nothing written, below --min-agreement or losing more than --max-drop points.")] = False,
           calibration_images: Annotated[int, typer.Option("--calibration-images", help="With --int8: how many training images (splits.csv) calibrate the activation ranges.")] = 256,
           min_agreement: Annotated[float, typer.Option("--min-agreement", help="With --int8: the least agreement (%) of its top class with fp32's accepted.")] = 99.0,
           max_drop: Annotated[float, typer.Option("--max-drop", help="With --int8: the most points of the metric (accuracy; f1_micro for multi-label) it may lose against fp32.")] = 1.0,
           accept_drop: Annotated[bool, typer.Option("--accept-drop", help="With --int8: keep the INT8 export even below --min-agreement / --max-drop (onnx.json records it).")] = False):
    """Export a trained model (or a soft-vote ensemble, as one graph) to ONNX.

    Writes RUN/export-N/model.onnx, onnx.json and preprocess.py. The graph takes float32
    N x 3 x S x S RGB pixels in [0, 1] (decoded, resized as onnx.json says, divided by 255; the
    normalisation is inside) and gives probabilities (softmax; sigmoid for multi-label).
    preprocess.py (Pillow and numpy only) turns image files into that input exactly as clfapp
    does (EXIF orientation, transparency over white, 16-bit scaling, reduced-scale JPEG decoding,
    resize); onnx.json's `preprocessing` lists the same steps. When the model's inference spec
    runs TTA, the graph does it too (each member over its own mirrors): --no-tta exports the
    plain model, --tta puts TTA in; onnx.json `inference` says which. Afterwards it checks
    ONNX Runtime against PyTorch (run with the graph's TTA) on the run's validation images:
    beyond --tolerance it exits 1 and removes the export. Use it with `clfapp predict RUN PATHS --backend onnx`.

    --int8 writes an INT8 graph instead (an ordinary export folder, onnx.json `int8` holding its
    agreement with fp32, the metric of both and the operators left in float).
    """
    from ..infer import export as ex
    from ..models import runs

    if fmt != "onnx":
        raise common.UsageError(f"--format must be onnx (the only export format), got {fmt!r}")
    checks.number("--opset", opset, ex.MIN_OPSET, ex.MAX_OPSET)
    checks.number("--tolerance", tolerance, 0)
    checks.output_folder("--out", out)
    checks.number("--calibration-images", calibration_images, 1)
    checks.number("--min-agreement", min_agreement, 0, 100)
    checks.number("--max-drop", max_drop, 0)
    int8_options = {"--calibration-images": calibration_images != 256, "--min-agreement": min_agreement != 99.0,
                    "--max-drop": max_drop != 1.0, "--accept-drop": accept_drop}
    given = [k for k, v in int8_options.items() if v]
    if given and not int8:
        raise common.UsageError(f"{given[0]} applies to INT8 exports only; add --int8")
    folder = runs.existing(run)
    if out is None:
        checks.new_folder(folder)   # RUN/export-N
    if int8:
        from ..infer import quantize
        target, info = quantize.export_int8(folder, out, opset, tolerance, tta, calibration_images,
                                            min_agreement, max_drop, accept_drop)
    else:
        target, info = ex.export(folder, out, opset, tolerance, tta)
    shapes = ", ".join(f"{i['name']} float32 N x 3 x {i['size']} x {i['size']} in [0, 1] "
                       f"({i['resize']}, {i['interpolation']})" for i in info["inputs"])
    kind = "INT8 " if int8 else ""
    kind += f"ensemble of {len(info['members'])} (soft vote)" if info["kind"] == "ensemble" else "model"
    common.echo(f"exported {kind} to {target / ex.ONNX_FILE} (opset {opset}; input {shapes}; "
                f"output {info['output']['activation']} probabilities over {len(info['classes'])} classes)")
    common.echo(ex.tta_said(info))
    common.echo(f"preprocessing: {target / ex.REFERENCE_FILE} (Pillow + numpy; every step in "
                f"{ex.META_FILE} `preprocessing`)")
    p = info["parity"]
    common.echo(f"parity on {p['images']}: max |PyTorch - ONNX Runtime| = {p['max_abs_diff']:.3g} "
                f"(tolerance {p['tolerance']:g}): ok" + (" (the fp32 graph)" if int8 else ""))
    if int8:
        common.echo(quantize.said(info))
