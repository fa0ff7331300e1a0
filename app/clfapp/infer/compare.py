"""Models side by side on the same items: quality, size and speed in one table.

Anything a run is accepted as can be compared: a run folder, an ensemble folder, or an ONNX
export folder (`clfapp export`). Every model is measured on the same labelled items (the first
model's validation split, or `--data`; its test split when a compared model was trained on
those validation images by `fit --full`, refused when there is none), and timed on the same
decoded images:

* latency per image at batch 1: the median over `repeats` single-image calls after warm-up;
* throughput at batch 32: images per second, from the median of `repeats // 4 + 1` calls.

Each model is measured and timed as its inference spec says it runs (input size, TTA views,
precision; the `run_as` column), so the figures and the speed are those of the model shipped.

Timing covers the model (normalisation, forward pass, softmax/sigmoid, the vote of an
ensemble), not JPEG decoding: decoding is the same work for every model and would hide the
difference being measured. The thread count and precision are part of the table.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError


@dataclass
class Model:
    """One compared model: how to call it on decoded images, and what it costs on disk."""
    name: str
    kind: str                         # run | ensemble | onnx
    predictor: object                 # predict.Predictor, ensemble.EnsemblePredictor, OnnxPredictor
    inputs: list[tuple[int, str]]     # (size, resize) of each decoded input it takes
    run: Callable[[list[np.ndarray]], np.ndarray]   # decoded inputs -> probabilities
    parameters: int
    disk_bytes: int
    home: Path                        # where its splits.csv lives


def _files_bytes(folder: Path, patterns: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for pat in patterns for p in Path(folder).rglob(pat) if p.is_file())


def _torch_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def load(folder: Path, threads: int) -> Model:
    """A `Model` for a run, ensemble or export folder."""
    from . import loader

    folder = Path(folder)
    p = loader.load(folder, threads=threads)
    keys = p.inputs

    def run(arrays, p=p, keys=keys):
        return p.probabilities_by_input(dict(zip(keys, arrays)), bs=len(arrays[0]))
    if p.kind == "onnx":
        import onnx
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        # An export lives in RUN/export-N: the run's splits.csv names the items.
        return Model(f"{folder.parent.name}/{folder.name}", "onnx", p, keys, run,
                     int(sum(np.prod(t.dims) for t in graph.initializer)),
                     _files_bytes(folder, ("*.onnx",)), folder.parent)
    if p.kind == "ensemble":
        return Model(folder.name, "ensemble", p, keys, run,
                     sum(_torch_parameters(m.model) for m in p.members),
                     _files_bytes(folder, ("*.safetensors",)), folder)
    return Model(folder.name, "run", p, keys, run, _torch_parameters(p.model),
                 _files_bytes(folder / "model", ("*.safetensors",)), folder)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(model: Model, pixels: dict, repeats: int, warmup: int = 3) -> dict:
    """Latency per image at batch 1 (ms) and images/s at batch 32, on decoded images."""
    arrays = [pixels[key] for key in model.inputs]
    one = [a[:1] for a in arrays]
    batch = [a[:32] for a in arrays]
    for _ in range(warmup):
        model.run(one)
        model.run(batch)
    latency = _median_seconds(lambda: model.run(one), repeats)
    per_batch = _median_seconds(lambda: model.run(batch), max(3, repeats // 4 + 1))
    return {"latency_ms_bs1": latency * 1000, "images_per_s_bs32": len(batch[0]) / per_batch}


def quality(model: Model, items) -> dict:
    """The figures of the comparison table: single-label accuracy, macro-F1, ROC AUC;
    multi-label micro-F1 at the model's thresholds, mAP."""
    from .evaluate import measure

    m, _, _ = measure(model.predictor, items)
    if model.predictor.meta.multi_label:
        return {"n": m["n"], "f1_micro": m["f1_micro"], "f1_macro": m["f1_macro"], "map": m["map"]}
    return {"n": m["n"], "accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
            "roc_auc": m["roc_auc_ovr"]}


def compare(folders: list[Path], data_path: str | None = None, threads: int = 0,
            repeats: int = 20, labels: str = "folder", strict: bool = False):
    """(table DataFrame, description of the items, settings dict) for `folders`.

    The column `overlap` counts the items each model was trained on (its run's splits.csv:
    train rows, and valid rows after fit --full; n/a when unknown); such a model gets a
    warning on stderr and a `*` on its name. `strict` refuses them instead (UsageError)."""
    import pandas as pd
    import torch

    from . import spec
    from .decoding import decode_per_input
    from .evaluate import labelled_items, overlap, overlap_warning

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    models = [load(f, threads) for f in folders]
    first = models[0].predictor
    for m in models[1:]:
        if m.predictor.classes != first.classes or m.predictor.meta.multi_label != first.meta.multi_label:
            raise UsageError(f"{m.name} does not predict the same classes as {models[0].name}: "
                             "only models of the same task can be compared")
    # the models' own label separator (multi-label --data), as evaluate uses
    # refused (or the test split) when a model trained on them (fit --full: model.json trained_on)
    items, described = labelled_items(models[0].home, data_path, labels, first.meta.label_delim,
                                      also=[m.home for m in models[1:]])
    if not len(items):
        raise UsageError(f"no labelled items to compare on ({described}); pass --data PATH")
    # a model measured on items it was trained on (another run's validation split, or --data
    # holding its training folder) scores high for it: counted, warned, marked in the table
    overlaps = {m.name: overlap(m.home, items["path"]) for m in models}
    seen = {name: o for name, o in overlaps.items() if o and o["n"]}
    if seen and strict:
        name, o = next(iter(seen.items()))
        more = f" (and {len(seen) - 1} other model(s))" if len(seen) > 1 else ""
        raise UsageError(f"--strict: {o['n']} of the {o['of']} items to compare on were training "
                         f"items of {name}{more}, e.g. {Path(o['examples'][0]).name}; compare on "
                         "images none of them trained on (--data)")
    for name, o in seen.items():
        print(overlap_warning(name, o), file=sys.stderr)
    sample = items["path"].tolist()[:32]
    decoded, kept = decode_per_input(sample, [k for m in models for k in m.inputs])
    if not len(kept):
        raise UsageError("none of the images to time could be read")
    pixels = {key: np.concatenate([arr] * (32 // len(arr) + 1))[:32]   # 32 images to time on
              for key, arr in decoded.items()}
    rows = []
    for m in models:
        print(f"measuring {m.name} ...", flush=True)
        o = overlaps[m.name]
        rows.append({"model": m.name + (" *" if o and o["n"] else ""), "kind": m.kind,
                     "run_as": spec.describe_conditions(spec.conditions(m.predictor)),
                     **quality(m, items), "overlap": None if o is None else o["n"],
                     "parameters_m": m.parameters / 1e6, "size_mb": m.disk_bytes / 1e6,
                     **speed(m, pixels, repeats)})
    table = pd.DataFrame(rows)
    table["overlap"] = pd.Series([r["overlap"] for r in rows], dtype=object)  # ints, None: n/a
    base = table["latency_ms_bs1"].min()
    table["latency_vs_fastest"] = table["latency_ms_bs1"] / base
    precisions = sorted({c.get("precision") or "fp32" for m in models
                         for c in _flat(spec.conditions(m.predictor))})   # fp32, or int8 exports
    settings = {"threads": threads, "repeats": repeats,
                "precision": (" or ".join(precisions) + " (each model's run_as)"
                              if len(precisions) > 1 else (precisions or ["fp32"])[0]),
                "timed_on": f"{len(sample)} decoded validation images (decoding not timed)"}
    return table, described, settings


def _flat(conditions: dict) -> list[dict]:
    """spec.conditions of one model, or of each member of an ensemble."""
    return list(conditions["members"].values()) if "members" in conditions else [conditions]


def markdown(table, described: str, settings: dict) -> str:
    """The table as markdown, with what it was measured on and how."""
    def cell(v):
        if isinstance(v, float):
            return "n/a" if np.isnan(v) else (f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}")
        return "n/a" if v is None else str(v)
    cols = list(table.columns)
    lines = ["# Model comparison", "",
             f"Quality on the {described}. Speed: CPU, {settings['threads']} thread(s), "
             f"{settings['precision']}, median of {settings['repeats']} runs after warm-up, on "
             f"{settings['timed_on']}.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    if "overlap" in table.columns and (table["overlap"].fillna(0) > 0).any():
        lines += ["", "\\* trained on some of these items (the `overlap` column counts them): its "
                  "figures are optimistic, not evidence."]
    return "\n".join(lines) + "\n"
