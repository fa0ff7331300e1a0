"""INT8 export: static QDQ quantisation of an fp32 export, checked against it before it ships.

`clfapp export MODEL --int8` (a run, a soft-vote ensemble, a distilled student):

1. the fp32 export is written as usual (infer/export.py, with its parity check against
   PyTorch) into a temporary folder beside the target;
2. ONNX Runtime's quant_pre_process (symbolic shape inference, graph optimisation) prepares it,
   and quantize_static rewrites it as a QDQ graph (QuantizeLinear/DequantizeLinear pairs that
   ORT's CPU provider fuses into integer kernels): weights int8 per output channel, activations
   uint8 per tensor, their ranges calibrated (min/max) on training images of the model's own
   run (splits.csv train rows, spread over the list) decoded exactly as predict decodes them
   (data.images at the spec's size and resize, / 255). The tail from the final softmax /
   sigmoid on (the probabilities and TTA's mean of them) stays float: uint8 probabilities
   would tie the top classes;
3. both graphs run on the held-out evidence (the validation split; the test split of a
   `fit --full` run, whose validation images were trained on; refused without one): argmax
   agreement, and the metric (accuracy; f1_micro at the spec's thresholds for multi-label) of
   each. Below `min_agreement` or losing more than `max_drop` points, the export is refused
   (ExportFailed, exit 1) and nothing is left, unless `accept_drop`;
4. the INT8 graph, onnx.json (with `int8`: the figures, the calibration, the operators left
   in float) and preprocess.py are renamed into place in one step.

The result is an ordinary export folder (`inference.precision` "int8"), so `predict --backend
onnx` and `compare` run it as they run any export.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import UsageError

CALIBRATION_IMAGES = 256
MIN_AGREEMENT = 99.0   # percent
MAX_DROP = 1.0         # points of the metric
CALIBRATION_BS = 8
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
ACTIVATIONS = {"Softmax", "Sigmoid"}
COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def check_options(calibration_images: int, min_agreement: float, max_drop: float) -> None:
    if not calibration_images >= 1:
        raise UsageError(f"--calibration-images must be at least 1, got {calibration_images}")
    if not 0 <= min_agreement <= 100:
        raise UsageError(f"--min-agreement must be a percentage between 0 and 100, got {min_agreement}")
    if not max_drop >= 0:
        raise UsageError(f"--max-drop must be a number of points >= 0, got {max_drop}")


def splits_of(source: Path):
    """The source's splits.csv (data.splits.read: paths absolute); refused without one."""
    from ..data import splits

    record = Path(source) / "splits.csv"
    if not record.is_file():
        raise UsageError(f"--int8: {source} has no splits.csv, so there are no training images to "
                         "calibrate on nor held-out images to check the INT8 graph on")
    return splits.read(record)


def evidence(source: Path, items):
    """(rows, "valid" | "test") the INT8 graph is checked on: evaluate.evidence_split, with
    export's own one-line refusal (export has no --data) when there is none."""
    from . import evaluate

    try:
        rows, split = evaluate.evidence_split(items, Path(source).name, [source])
    except UsageError:
        raise UsageError(f"--int8: the model of {source} was trained on its validation images "
                         "(fit --full) and it has no test split, so nothing unseen is left to "
                         "check the INT8 graph against fp32 on; fit with data.test_pct, or export "
                         "without --int8")
    if not len(rows):
        raise UsageError(f"--int8: {source} has no {split} images in splits.csv to check the "
                         "INT8 graph on")
    return rows, split


def calibration_paths(items, limit: int) -> list[str]:
    """Up to `limit` training images (splits.csv train rows), spread evenly over the list."""
    paths = [p for p in items.loc[items["split"] == "train", "path"] if Path(p).is_file()]
    if len(paths) > limit:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit).round()]
    return paths


class _Reader:
    """A CalibrationDataReader (get_next -> {input name: float32 N x 3 x S x S} or None): the
    calibration images decoded per graph input, as the ONNX predictor feeds them."""

    def __init__(self, paths: list[str], inputs: list[dict], bs: int = CALIBRATION_BS):
        from .decoding import decode_per_input
        from .onnx_predict import _to_input

        keys = [(int(i["size"]), i["resize"]) for i in inputs]
        self.batches, self.count = [], 0
        for start in range(0, len(paths), bs):
            pixels, kept = decode_per_input(paths[start:start + bs], keys)
            if len(kept):
                self.batches.append({i["name"]: _to_input(pixels[k]) for i, k in zip(inputs, keys)})
                self.count += len(kept)
        self._it = iter(self.batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.batches)


def float_tail(model) -> list[str]:
    """Names of the nodes to keep in float: each final activation (a Softmax/Sigmoid after which
    no Conv/MatMul/Gemm runs) and everything after it (TTA's mean, an ensemble's weighted mean)."""
    nodes = list(model.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def after(node) -> list:
        seen, todo, out = set(), [node], []
        while todo:
            cur = todo.pop()
            for o in cur.output:
                for c in consumers.get(o, []):
                    if id(c) not in seen:
                        seen.add(id(c))
                        out.append(c)
                        todo.append(c)
        return out

    keep = {}
    for n in nodes:
        if n.op_type in ACTIVATIONS:
            down = after(n)
            if not any(d.op_type in COMPUTE for d in down):
                for d in [n, *down]:
                    keep[d.name] = True
    return [k for k in keep if k]


def float_ops(model) -> dict[str, int]:
    """{op type: count} of the nodes of a QDQ graph that compute in float: every node but the
    QuantizeLinear/DequantizeLinear pairs themselves and those wrapped by them (each data input
    from a DequantizeLinear, each output read only by QuantizeLinear: the pattern ORT's CPU
    provider runs as one integer kernel)."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    shape_math = _shape_math(model)
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    graph_outputs = {o.name for o in model.graph.output}
    constants = {t.name for t in model.graph.initializer}
    out: dict[str, int] = {}
    for k, n in enumerate(nodes):
        if n.op_type in QDQ_OPS or n.op_type == "Constant" or k in shape_math:
            continue
        data = [i for i in n.input if i and i not in constants
                and not (i in producer and producer[i].op_type == "Constant")]
        wrapped = (all(i in producer and producer[i].op_type == "DequantizeLinear" for i in data)
                   and all(o not in graph_outputs and consumers.get(o)
                           and set(consumers[o]) == {"QuantizeLinear"} for o in n.output if o))
        if not wrapped:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return dict(sorted(out.items()))


def _shape_math(model) -> set[int]:
    """Positions (in graph.node) of the nodes that only compute shapes (Shape, and what is fed only by shape
    arithmetic and constants: integer index maths such as TF "same" padding's pad sizes),
    not image data: they are no part of what quantisation could speed up."""
    constants = {t.name for t in model.graph.initializer}
    out, made = set(), set()
    for k, n in enumerate(model.graph.node):   # ONNX graphs are in topological order
        data = [i for i in n.input if i and i not in constants]
        if n.op_type == "Constant":
            made.update(n.output)
        elif n.op_type == "Shape" or all(i in made for i in data):
            out.add(k)
            made.update(n.output)
    return out


def quantize_graph(fp32: Path, target: Path, reader: _Reader, work: Path) -> dict:
    """fp32 model.onnx -> INT8 QDQ model at `target`; {"preprocessed": bool, "float_ops": ...}."""
    import logging

    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    try:
        # shape inference + ORT's graph optimisation (BatchNorm already folded by the exporter,
        # constant folding, ...): more tensors get known shapes and quantise
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        source, preprocessed = prepared, True
    except Exception:   # a graph its symbolic shape inference cannot read: quantise as it is
        source, preprocessed = fp32, False
    model = onnx.load(str(source))
    exclude = float_tail(model)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)   # ORT's advice lines are not the user's business
    try:
        # not extra_options CalibMaxIntermediateOutputs: ORT 1.32's MinMaxCalibrater drops the
        # chunks it "flushes" without merging their ranges (calibrate.py collect_data), so it
        # calibrated on the last partial chunk only, or failed "No data is collected"
        quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=exclude)
    except (ValueError, RuntimeError, KeyError, onnx.checker.ValidationError) as e:
        from .export import ExportFailed
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportFailed(f"ONNX Runtime could not quantise the graph ({type(e).__name__}: "
                           f"{first}); nothing written")
    finally:
        logging.getLogger().setLevel(quiet)
    q = onnx.load(str(target))
    return {"preprocessed": preprocessed, "float_ops": float_ops(q),
            "kept_float": sorted({n.op_type for n in model.graph.node if n.name in set(exclude)})}


def agreement_and_metrics(fp32_folder: Path, int8_folder: Path, rows) -> dict:
    """Both graphs on labelled `rows`: argmax agreement (%), and the metric of each."""
    from . import evaluate
    from .onnx_predict import OnnxPredictor

    paths = rows["path"].tolist()
    p32, kept = OnnxPredictor(fp32_folder).probabilities(paths)
    q = OnnxPredictor(int8_folder)
    p8, kept8 = q.probabilities(paths)
    if not np.array_equal(kept, kept8):   # the same decoder: cannot happen, but never compare
        raise UsageError("the fp32 and INT8 graphs read different images")   # misaligned rows
    m32, _ = evaluate.score(p32, rows.iloc[kept], q.meta)
    m8, _ = evaluate.score(p8, rows.iloc[kept], q.meta)
    name = "f1_micro" if q.meta.multi_label else "accuracy"
    agree = float((p32.argmax(1) == p8.argmax(1)).mean() * 100)
    return {"images": int(len(kept)), "agreement": agree, "metric": name,
            "fp32": float(m32[name]), "int8": float(m8[name]),
            "max_abs_diff": float(np.abs(p32.astype(np.float64) - p8).max())}


def export_int8(source: Path, out: Path | None, opset: int, tolerance: float, tta: bool | None,
                calibration_images: int = CALIBRATION_IMAGES, min_agreement: float = MIN_AGREEMENT,
                max_drop: float = MAX_DROP, accept_drop: bool = False) -> tuple[Path, dict]:
    """Export `source` as an INT8 QDQ graph (see the module's docstring). Returns (folder,
    onnx.json). Nothing is left behind on any failure; ExportFailed (exit 1) when the check
    fails without `accept_drop`."""
    from ..models import runs
    from . import export as ex
    from .onnx_format import META_FILE, ONNX_FILE

    check_options(calibration_images, min_agreement, max_drop)
    source = Path(source)
    ex.read_source(source)   # refuses hard-vote ensembles and broken folders before any work
    items = splits_of(source)
    rows, split = evidence(source, items)
    calib = calibration_paths(items, calibration_images)
    if not calib:
        raise UsageError(f"--int8: {source}'s splits.csv lists no readable training images to "
                         "calibrate the INT8 graph on")
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"{out} already exists and is not an empty folder; choose another --out")
        final, claimed = out, not out.exists()
    else:
        final, claimed = runs.new_folder(source, "export"), True   # claims the number; filled by the rename
    work = final.parent / f".{final.name}.int8-tmp-{os.getpid()}"
    ok = False
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        fp32_folder, info = ex.export(source, work / "fp32", opset, tolerance, tta)
        int8_folder = work / "int8"
        int8_folder.mkdir()
        reader = _Reader(calib, info["inputs"])
        if not reader.count:
            raise UsageError(f"--int8: none of the {len(calib)} calibration images of {source} "
                             "could be read")
        graph = quantize_graph(fp32_folder / ONNX_FILE, int8_folder / ONNX_FILE, reader, work)
        described = {k: v for k, v in info.items() if k != "parity"}
        described["inference"] = dict(described["inference"], precision="int8")
        described["int8"] = {
            "quantisation": "static QDQ (onnxruntime.quantization.quantize_static): weights int8 "
                            "per channel (symmetric), activations uint8 per tensor, MinMax "
                            "calibration",
            "calibration": {"images": reader.count, "from": "train split (splits.csv)",
                            "asked": calibration_images},
            "pre_processed": graph["preprocessed"],
            "float_ops": graph["float_ops"],
            "kept_float": "the final " + "/".join(graph["kept_float"] or ["activation"])
                          + " and what follows it (probabilities, TTA and ensemble means)",
        }
        ex._stamp(int8_folder / ONNX_FILE, described)   # before measuring: the predictor checks it
        ex._write_json(int8_folder / META_FILE, described)
        (int8_folder / ex.REFERENCE_FILE).write_text(ex.reference_source())
        figures = agreement_and_metrics(fp32_folder, int8_folder, rows)
        drop = (figures["fp32"] - figures["int8"]) * 100
        passed = figures["agreement"] >= min_agreement and drop <= max_drop
        described["int8"].update(
            split=split, images=figures["images"], agreement=figures["agreement"],
            metric={"name": figures["metric"], "fp32": figures["fp32"], "int8": figures["int8"],
                    "drop_points": drop},
            max_abs_diff=figures["max_abs_diff"],
            limits={"min_agreement": min_agreement, "max_drop_points": max_drop},
            passed=bool(passed), accepted_by=None if passed else ("--accept-drop" if accept_drop else None),
            size_bytes={"fp32": (fp32_folder / ONNX_FILE).stat().st_size,
                        "int8": (int8_folder / ONNX_FILE).stat().st_size})
        described["parity"] = info.get("parity")
        if not passed and not accept_drop:
            raise ex.ExportFailed(
                f"INT8 check failed on {figures['images']} {split} images: agreement with fp32 "
                f"{figures['agreement']:.1f}% (at least {min_agreement:g}% wanted), "
                f"{figures['metric']} {figures['fp32']:.4f} -> {figures['int8']:.4f} "
                f"({-drop:+.2f} points; at most -{max_drop:g} wanted); nothing written "
                "(--accept-drop keeps it)")
        ex._stamp(int8_folder / ONNX_FILE, {k: v for k, v in described.items() if k != "parity"})
        ex._write_json(int8_folder / META_FILE, described)
        if final.exists():
            final.rmdir()   # the empty folder claimed above (or the empty --out)
        os.replace(int8_folder, final)
        ok = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not ok and claimed and final.is_dir() and not any(final.iterdir()):
            final.rmdir()   # the folder this export claimed: an --out given empty stays
    return final, described


def said(info: dict) -> str:
    """export's line on the INT8 check."""
    q = info["int8"]
    m = q["metric"]
    floats = ", ".join(f"{k} x{v}" for k, v in q["float_ops"].items()) or "none"
    verdict = "ok" if q["passed"] else "BELOW THE LIMITS, kept by --accept-drop"
    return (f"int8: calibrated on {q['calibration']['images']} training images; on "
            f"{q['images']} {q['split']} images: agreement with fp32 {q['agreement']:.1f}%, "
            f"{m['name']} {m['fp32']:.4f} (fp32) -> {m['int8']:.4f} (int8): {verdict}; "
            f"size {q['size_bytes']['fp32'] / 1e6:.1f} -> {q['size_bytes']['int8'] / 1e6:.1f} MB; "
            f"left in float: {floats}")
