"""ONNX Runtime vs PyTorch on CPU for one run: throughput at batch 32, latency at batch 1.

    python bench/onnx_vs_torch.py runs/plants-1 [--threads 2] [--repeats 10]

Both sides get the same decoded pixels (the run's validation images, repeated to fill a batch;
random pixels when it has none) and start from uint8 N x S x S x 3, so each includes its own
conversion (/255, normalisation) but not JPEG decoding or resizing, which both share. PyTorch is
clfapp's predict.Predictor (fp32, channels_last, inference_mode); ONNX Runtime is
onnx_predict.OnnxPredictor (fp32, CPU execution provider) on the run's newest export, or on a
fresh one made in a temporary folder when the run has none. torch's thread count and ORT's
intra-op threads are set equal. Each figure is the median of --repeats timed runs after warm-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def median_seconds(fns: dict, repeats: int, warmup: int = 3) -> dict:
    """{name: median seconds} of each callable, timed in alternation (torch, ORT, torch, ...):
    on a CPU shared with other work, both sides then see the same background load."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=None, help="default: torch.get_num_threads()")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import warnings

    import numpy as np
    import torch
    warnings.filterwarnings("ignore", category=FutureWarning)

    from clfapp.infer import export, onnx_predict
    from clfapp.errors import UsageError
    from clfapp.infer.predict import Predictor

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = None
    try:
        folder = onnx_predict.find_export(args.run)
        how = f"existing export {folder}"
    except UsageError:
        tmp = tempfile.TemporaryDirectory()
        folder, _ = export.export(args.run, Path(tmp.name) / "export")
        how = "fresh export (temporary folder)"
    ours = onnx_predict.OnnxPredictor(folder, threads=threads)
    theirs = Predictor(args.run)
    if len(ours.meta.inputs) != 1:
        sys.exit("this benchmark takes a run folder (one input), not an ensemble")
    decoded, source = export.parity_pixels(args.run, export.input_groups(export.read_source(args.run)[0]))
    (pixels,) = decoded.values()
    batch = np.concatenate([pixels] * (args.bs // len(pixels) + 1))[: args.bs]
    one = batch[:1]
    x_batch, x_one = torch.from_numpy(batch).permute(0, 3, 1, 2), torch.from_numpy(one).permute(0, 3, 1, 2)
    diff = float(np.abs(theirs.forward(x_batch).numpy() - ours.probabilities_of(batch)).max())

    batch_t = median_seconds({"PyTorch": lambda: theirs.forward(x_batch),
                              "ONNX Runtime": lambda: ours.probabilities_of(batch)}, args.repeats)
    one_t = median_seconds({"PyTorch": lambda: theirs.forward(x_one),
                            "ONNX Runtime": lambda: ours.probabilities_of(one)}, args.repeats * 3)
    rows = {name: (batch_t[name], one_t[name]) for name in batch_t}
    info = ours.info
    print(f"\nrun {args.run} ({info['members'][0]['arch']}, {info['size']} px, {len(info['classes'])} "
          f"classes); {how}; opset {info['opset']}")
    print(f"CPU, {threads} thread(s) each (torch.get_num_threads() = ORT intra-op threads), fp32 on "
          f"both sides; pixels: {source}; max |diff| {diff:.2g}")
    print(f"torch {torch.__version__}, onnxruntime {info['versions'].get('onnxruntime', '?')}; "
          f"median of {args.repeats} (batch {args.bs}) / {args.repeats * 3} (batch 1) runs, alternating, after 3 warm-up\n")
    print(f"{'backend':14s} {f'img/s @bs{args.bs}':>12s} {'ms/img @bs1':>12s}")
    for name, (t_batch, t_one) in rows.items():
        print(f"{name:14s} {args.bs / t_batch:12.1f} {t_one * 1000:12.2f}")
    (tb, to), (ob, oo) = rows["PyTorch"], rows["ONNX Runtime"]
    print(f"{'ORT/PyTorch':14s} {tb / ob:11.2f}x {to / oo:11.2f}x  (speed-up; > 1 = ORT faster)")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
