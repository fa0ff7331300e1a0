"""INT8 ONNX vs fp32 ONNX vs PyTorch on this CPU for one run: speed, size, validation metric.

    python bench/int8_speed.py runs/plants-1 [--threads 2] [--repeats 5] [--calibration-images 256]
                                             [--no-tta] [--exports FP32_DIR INT8_DIR]

Exports the run twice into a temporary folder (the run is not touched): fp32
(`clfapp export`) and INT8 (`clfapp export --int8`, kept whatever its check says, as
--accept-drop does, so the figures are shown either way). Speed: images/s at batch 1 and
--bs (32) on the same decoded pixels (the run's validation images, repeated to fill a batch),
from uint8 N x S x S x 3, so each side includes its own /255 and normalisation but not JPEG
decoding or resizing, which all share; every side runs the model's inference spec (its TTA
views: inside both graphs, predict.Predictor.forward's for PyTorch). PyTorch is clfapp's
predict.Predictor (fp32, channels_last, inference_mode). torch's threads and ORT's intra-op
threads are set equal. Each figure is the median of --repeats timed runs (x3 at batch 1),
the backends timed in alternation so they see the same background load. Metric: accuracy
(f1_micro at the spec's thresholds for multi-label) on the held-out split INT8 is checked on
(validation; test for a fit --full run), all three on the same images. Size: model.onnx on
disk, PyTorch's model/ folder (its weights).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from onnx_vs_torch import median_seconds  # noqa: E402


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=None, help="default: torch.get_num_threads()")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calibration-images", type=int, default=256)
    ap.add_argument("--no-tta", action="store_true",
                    help="export and run every side without TTA (the plain model: one view per "
                         "image, 8x less work for an 8-view model; the ratios barely change)")
    ap.add_argument("--exports", type=Path, nargs=2, metavar=("FP32", "INT8"),
                    help="reuse these export folders (`clfapp export RUN` and `clfapp export RUN "
                         "--int8`) instead of exporting again")
    args = ap.parse_args()

    import warnings

    import numpy as np
    import torch
    warnings.filterwarnings("ignore")

    from clfapp.infer import evaluate, export, onnx_predict, quantize
    from clfapp.infer.predict import Predictor

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tta = False if args.no_tta else None   # None: as the model's inference spec says
    tmp = tempfile.TemporaryDirectory()
    if args.exports:
        f32_folder, i8_folder = args.exports
        info = json.loads((i8_folder / "onnx.json").read_text())
        print(f"using the exports {f32_folder} (fp32) and {i8_folder} (INT8)")
    else:
        print(f"exporting {args.run} (fp32, then INT8) into a temporary folder ...", flush=True)
        f32_folder, _ = export.export(args.run, Path(tmp.name) / "fp32", tta=tta)
        i8_folder, info = quantize.export_int8(args.run, Path(tmp.name) / "int8", export.DEFAULT_OPSET,
                                               export.DEFAULT_TOLERANCE, tta, args.calibration_images,
                                               accept_drop=True)
    if "int8" not in info:
        sys.exit(f"{i8_folder} is not an INT8 export (onnx.json has no `int8`)")
    q = info["int8"]
    models = {"PyTorch": Predictor(args.run),
              "ONNX fp32": onnx_predict.OnnxPredictor(f32_folder, threads=threads),
              "ONNX INT8": onnx_predict.OnnxPredictor(i8_folder, threads=threads)}
    if len(models["ONNX fp32"].meta.inputs) != 1:
        sys.exit("this benchmark takes a run folder (one input), not an ensemble")

    print("measuring PyTorch on the same held-out images ...", flush=True)
    items = quantize.splits_of(args.run)
    rows, split = quantize.evidence(args.run, items)
    m, _, _ = evaluate.measure(models["PyTorch"], rows, tta=tta)
    metric = {"PyTorch": m[q["metric"]["name"]], "ONNX fp32": q["metric"]["fp32"],
              "ONNX INT8": q["metric"]["int8"]}

    decoded, source = export.parity_pixels(args.run, export.input_groups(export.read_source(args.run)[0]))
    (pixels,) = decoded.values()
    batch = np.concatenate([pixels] * (args.bs // len(pixels) + 1))[: args.bs]
    one = batch[:1]
    xb, x1 = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (batch, one))
    runs_b = {"PyTorch": lambda: models["PyTorch"].forward(xb, tta),
              "ONNX fp32": lambda: models["ONNX fp32"].probabilities_of(batch),
              "ONNX INT8": lambda: models["ONNX INT8"].probabilities_of(batch)}
    runs_1 = {"PyTorch": lambda: models["PyTorch"].forward(x1, tta),
              "ONNX fp32": lambda: models["ONNX fp32"].probabilities_of(one),
              "ONNX INT8": lambda: models["ONNX INT8"].probabilities_of(one)}
    print(f"timing at batch {args.bs} ...", flush=True)
    tb = median_seconds(runs_b, args.repeats, warmup=2)
    print("timing at batch 1 ...", flush=True)
    t1 = median_seconds(runs_1, args.repeats * 3, warmup=3)
    size = {"PyTorch": folder_bytes(Path(args.run) / "model"),
            "ONNX fp32": (f32_folder / "model.onnx").stat().st_size,
            "ONNX INT8": (i8_folder / "model.onnx").stat().st_size}

    spec = models["ONNX INT8"].spec
    views = models["ONNX INT8"].views[0]
    meta = info["members"][0]
    print(f"\nrun {args.run} ({meta['arch']}, {info['size']} px {info['resize']}, "
          f"{len(info['classes'])} classes, {views} TTA view(s) per image, "
          f"{'--no-tta: the plain model' if args.no_tta else 'as its inference spec says'})")
    print(f"CPU ({os.cpu_count()} logical cores seen), {threads} thread(s) each (torch threads = ORT "
          f"intra-op threads); torch {torch.__version__}, onnxruntime "
          f"{info['versions'].get('onnxruntime', '?')}; timed on {source} (decoding not timed), "
          f"median of {args.repeats} (batch {args.bs}) / {args.repeats * 3} (batch 1) runs, alternating")
    print(f"INT8: static QDQ, per-channel int8 weights, uint8 activations, calibrated on "
          f"{q['calibration']['images']} training images; agreement with fp32 {q['agreement']:.2f}% "
          f"on {q['images']} {split} images; left in float: "
          f"{', '.join(f'{k} x{v}' for k, v in q['float_ops'].items()) or 'none'}\n")
    name = q["metric"]["name"]
    print(f"| backend | img/s @bs1 | img/s @bs{args.bs} | size MB | {name} ({split}, {q['images']}) |")
    print("|---|---|---|---|---|")
    for k in models:
        print(f"| {k} | {1 / t1[k]:.1f} | {args.bs / tb[k]:.1f} | {size[k] / 1e6:.2f} | {metric[k]:.4f} |")
    r32 = tb["ONNX fp32"] / tb["ONNX INT8"]
    print(f"\nratios (speed-up, > 1 = faster): INT8/fp32 ONNX {tb['ONNX fp32'] / tb['ONNX INT8']:.2f}x "
          f"@bs{args.bs}, {t1['ONNX fp32'] / t1['ONNX INT8']:.2f}x @bs1; INT8/PyTorch "
          f"{tb['PyTorch'] / tb['ONNX INT8']:.2f}x @bs{args.bs}, {t1['PyTorch'] / t1['ONNX INT8']:.2f}x "
          f"@bs1; fp32 ONNX/PyTorch {tb['PyTorch'] / tb['ONNX fp32']:.2f}x @bs{args.bs}, "
          f"{t1['PyTorch'] / t1['ONNX fp32']:.2f}x @bs1; size fp32/INT8 "
          f"{size['ONNX fp32'] / size['ONNX INT8']:.2f}x")
    drop = (metric["ONNX fp32"] - metric["ONNX INT8"]) * 100
    met = r32 >= 1.3 and drop <= 1.0
    print(f"target (INT8 >= 1.3x fp32 ONNX at batch {args.bs}, <= 1 point lost): "
          f"{r32:.2f}x, {name} {-drop:+.2f} points against fp32 -> {'MET' if met else 'NOT MET'}; "
          f"top-class agreement {q['agreement']:.2f}% ({'meets' if q['agreement'] >= 99 else 'BELOW'} "
          "the 99 % `clfapp export --int8` asks by default)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
