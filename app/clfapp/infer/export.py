"""ONNX export of a run or an ensemble folder, checked against PyTorch on real images.

The exported graph (RUN/export-N/model.onnx):

- input `image`: float32, N x 3 x S x S, RGB, values in [0, 1] (the decoded uint8 pixels / 255),
  batch axis dynamic. The normalisation ((x - mean) / std) is INSIDE the graph, so a consumer
  only decodes, resizes (onnx.json says how: size, resize method, PIL bicubic) and divides by 255.
- output `probabilities`: float32, N x C: softmax for single-label, sigmoid for multi-label
  models (decide with onnx.json's thresholds, 0.5 where it has none).
- an ensemble folder (ensemble.json) exports as ONE graph that runs every member on its own
  preprocessing and averages the probabilities with the ensemble's weights (its soft vote).
  Members that need different pixels (another input size or resize method) get one input each,
  named `image_<size>` (`image_<size>_<resize>` where two share a size); members with the same
  preprocessing share one input. A hard-vote ensemble is refused: its answer is a majority of
  member labels, not probabilities, and exporting soft probabilities under its name would
  silently change its predictions.
- test-time augmentation is INSIDE the graph when the model's inference spec runs it (an
  ensemble's spec: every member or none): each member averages its activated probabilities over
  its own views (spec.tta_views of the mirrors it trained with: flips of the width and height,
  transposes of the square), as predict.Predictor.forward does, before the ensemble's weighted
  mean. So a consumer of model.onnx gets clfapp's probabilities without mirroring anything.
  `export --tta/--no-tta` overrides the spec; onnx.json `inference.tta` and `tta` say what the
  graph does, and its parity check runs PyTorch with the same TTA.

onnx.json holds the facts a consumer needs (inputs, classes, multi-label, thresholds, label
delimiter, mean/std, vote and weights, opset, library versions, and `preprocessing`: every step
clfapp applies to an image file before the graph, in order) and the parity check; the same
facts (without the parity figures) are in the ONNX file's metadata_props (key `clfapp`, plus
flat copies of the main ones), and the ONNX predictor refuses files where the two disagree.
Beside them, preprocess.py (the source of onnx_reference.py: Pillow and numpy only) is those
steps as code, giving clfapp's exact pixels to a program that does not use clfapp.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import bundle, members as model_members, model_io, spec as spec_mod
from .decoding import decode_per_input, distinct, input_of
from .onnx_format import (FLAT_KEYS, FORMAT, META_FILE, METADATA_KEY, ONNX_FILE, OUTPUT_NAME,
                          REFERENCE_FILE)
from ..data import images
from ..errors import UsageError

DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_OPSET = 20   # the TorchScript exporter's newest opset in torch 2.14
DEFAULT_TOLERANCE = 1e-4
PARITY_IMAGES = 64
INTERPOLATION = "bicubic"
"""What images.read_image resizes with (PIL bicubic), whatever the arch's own default is:
this is the resampling a consumer must reproduce."""
assert images.RESIZE_FILTER.name.lower() == INTERPOLATION


class ExportFailed(UsageError):
    """The export ran but its result cannot be trusted (the parity check failed): exit 1."""

    exit_code = 1


def read_source(folder: Path) -> tuple[list[model_members.Member], dict]:
    """(members, facts) of a run folder (one member, weight 1) or a soft-vote ensemble folder."""
    source = model_members.read(folder)   # the members' one reader, with its checks
    if source.vote == "hard":
        raise UsageError(f"{folder} is a 'hard'-vote ensemble: its answer is a majority "
                         "of member labels, not probabilities, so it has no ONNX graph; only "
                         "soft-vote ensembles export (make one with vote 'soft')")
    facts = dict(kind=source.kind, classes=source.classes, multi_label=source.multi_label,
                 thresholds=source.thresholds, label_delim=source.label_delim, vote=source.vote,
                 weights=None if source.ensemble is None else [m.weight for m in source.members],
                 spec=(source.members[0].meta.inference if source.ensemble is None
                       else source.ensemble.inference))
    return source.members, facts


def graph_views(members: list[model_members.Member], tta: bool) -> list[list[tuple[str, ...]]]:
    """The views each member's part of the graph averages: its own mirrors' (spec.tta_views)
    with TTA, else the image alone."""
    return [spec_mod.tta_views(m.meta.inference.tta_flips) if tta else [()] for m in members]


def view_names(views: list[tuple[str, ...]]) -> list[str]:
    """Views in words, as onnx.json lists them: "image", "horizontal", "vertical+transpose"."""
    return ["+".join(v) or "image" for v in views]


def input_groups(members: list[model_members.Member]) -> list[dict]:
    """One graph input per distinct preprocessing (size, resize), in member order."""
    keys = [input_of(m.meta) for m in members]
    groups = [dict(size=size, resize=resize, members=[i for i, k in enumerate(keys) if k == (size, resize)])
              for size, resize in distinct(keys)]
    sizes = [g["size"] for g in groups]
    for g in groups:
        if len(groups) == 1:
            g["name"] = "image"
        elif sizes.count(g["size"]) == 1:
            g["name"] = f"image_{g['size']}"
        else:
            g["name"] = f"image_{g['size']}_{g['resize']}"
    return groups


def _mirrored(x, view: tuple[str, ...]):
    """`x` (N x 3 x S x S) seen through `view`, as predict._mirrored sees it."""
    import torch
    for mirror in view:
        x = x.transpose(2, 3) if mirror == "transpose" else torch.flip(x, dims=[3 if mirror == "horizontal" else 2])
    return x


def _graph(members: list[model_members.Member], groups: list[dict], views: list[list[tuple]]):
    """The torch module to export: inputs in [0, 1] -> weighted mean of member probabilities,
    each member's the mean over its `views` (TTA; [()]: the image alone)."""
    import torch
    import torch.nn as nn

    class Normalised(nn.Module):
        def __init__(self, model, meta, views):
            super().__init__()
            self.model, self.multi_label = model, bool(meta.multi_label)
            self.views = list(views)
            self.register_buffer("mean", model_io.channel_stats(meta.mean))
            self.register_buffer("std", model_io.channel_stats(meta.std))

        def forward(self, x):
            x = model_io.normalise(x, self.mean, self.std)
            probs = model_io.activate(self.model(x), self.multi_label)
            if len(self.views) == 1:
                return probs
            # one view after another, summed in predict.Predictor.forward's order: memory of
            # one batch at a time (a batch of all 8 views would need 8 times as much), and
            # the model's weights are stored once in the file however many views call them
            for view in self.views[1:]:
                probs = probs + model_io.activate(self.model(_mirrored(x, view)), self.multi_label)
            return probs / len(self.views)

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(Normalised(bundle.load(m.folder)[0], m.meta, v)
                                         for m, v in zip(members, views))
            self.which = [next(k for k, g in enumerate(groups) if i in g["members"])
                          for i in range(len(members))]
            self.weights = [m.weight for m in members]

        def forward(self, *inputs):
            if len(self.members) == 1:
                return self.members[0](inputs[0])
            out = None
            for net, k, w in zip(self.members, self.which, self.weights):
                p = net(inputs[k]) * w
                out = p if out is None else out + p
            return out

    return Graph().eval()


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = bundle.library_versions()
    for pkg in ("onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def preprocessing(groups: list[dict], facts: dict, names: list[str] | None = None,
                  views: list[list[tuple]] | None = None) -> dict:
    """onnx.json `preprocessing`: what clfapp does to an image file before the graph, step by step
    in order (data/images.read_image, then onnx_predict's scaling), and what the graph does itself.
    preprocess.py (onnx_reference.py) is the same steps as code; tests check both against clfapp."""
    ensemble = facts["kind"] == "ensemble" or len(groups) > 1
    activation = ("sigmoid per class (multi-label; decide with `thresholds`, 0.5 where there are "
                  "none)" if facts["multi_label"] else "softmax over the classes")
    inside = ["normalisation: (x - mean) / std per channel (each member's own mean and std)",
              "activation: " + activation]
    if ensemble:
        inside.append("ensemble: the weighted mean of the members' probabilities (`weights`)")
    inside.append(_tta_inside(names or [], views or [[()]]))
    return {
        "reference": {"file": REFERENCE_FILE, "needs": ["Pillow", "numpy"],
                      "function": "preprocess(image, size, resize) -> float32 3 x size x size",
                      "batch": "feed(images) -> {input name: float32 N x 3 x S x S}, from onnx.json"},
        "per_input": [{"input": g["name"], "size": g["size"], "resize": g["resize"],
                       "interpolation": INTERPOLATION} for g in groups],
        "steps": [
            {"step": "decode", "how": "Pillow (PIL.Image.open, then load)",
             "jpeg_reduced_scale": {
                 "rule": "JPEG files only: s = the largest of 8, 4, 2, 1 not above "
                         "min(width // (2 * size), height // (2 * size)) (the stored width and "
                         "height, before EXIF rotation); libjpeg decodes at 1/s scale (DCT "
                         "scaling) to ceil(width / s) x ceil(height / s) pixels",
                 "pillow": "img.draft('RGB', (2 * size, 2 * size)) before img.load()",
                 "why": "decoding a large photo is ~10x faster; the pixels differ a little from "
                        "a full decode (about 0.2/255 on average for a 3000 px photo), so skip "
                        "it and the probabilities are close to clfapp's but not equal"}},
            {"step": "exif_transpose",
             "how": "turn the image upright by its EXIF Orientation tag (1-8), after decoding",
             "pillow": "PIL.ImageOps.exif_transpose(img)"},
            {"step": "to_rgb", "result": "8-bit RGB", "by_mode": {
                "RGB": "unchanged",
                "I;16, I;16B, I;16L, I;16N (16-bit grey)": "value / 257, clipped to [0, 255] and "
                    "truncated to uint8, then grey -> RGB (the same value in each channel)",
                "I (32-bit grey)": "value / 257 when its maximum is above 255, else the value; "
                                   "then clipped, truncated and grey -> RGB as above",
                "RGBA, LA, PA, P with transparency": "alpha composited over white "
                    "(255, 255, 255): Image.alpha_composite(white, img.convert('RGBA')), then RGB",
                "any other (L, P, CMYK, YCbCr, 1, ...)": "Pillow's img.convert('RGB')",
                "16 bits per channel colour (PNG, TIFF)": "Pillow itself decodes these to "
                    "8-bit RGB or RGBA on open (RGBA: then over white, as above)"}},
            {"step": "resize", "size": "per_input[].size: a square, size x size",
             "interpolation": f"{INTERPOLATION} (Pillow's Image.Resampling.BICUBIC, whose "
                              "support widens when downscaling; not OpenCV's INTER_CUBIC)",
             "methods": {
                 "squish": "img.resize((size, size), BICUBIC): the whole image, aspect not kept",
                 "crop": "ImageOps.fit(img, (size, size), method=BICUBIC): the centred crop of "
                         "the target's aspect, then resized",
                 "pad": "ImageOps.pad(img, (size, size), method=BICUBIC, color=(0, 0, 0)): "
                        "resized to fit inside, centred, black borders"}},
            {"step": "to_tensor",
             "how": "uint8 H x W x 3 -> float32 N x 3 x H x W (NCHW, RGB), divided by 255: "
                    "values in [0, 1]"},
        ],
        "inside_graph": inside,
    }


def _tta_inside(names: list[str], views: list[list[tuple]]) -> str:
    """preprocessing.inside_graph's line on TTA: the views the graph averages, or none."""
    if all(len(v) == 1 for v in views):
        return ("test-time augmentation: none; the graph is the plain model, the image alone "
                "(exported without TTA)")

    def listed(v):
        return f"{len(v)} views ({', '.join(view_names(v))})"
    how = ("horizontal: the width flipped; vertical: the height flipped; transpose: width and "
           "height swapped (the input is square); the mean of the activated probabilities")
    if len(views) == 1:
        return f"test-time augmentation: the mean over {listed(views[0])}; {how}"
    per = "; ".join(f"{n}: {listed(v)}" for n, v in zip(names, views))
    return (f"test-time augmentation: each member the mean over its own views, before the "
            f"weighted mean ({per}); {how}")


def describe(members: list[model_members.Member], facts: dict, groups: list[dict], opset: int,
             source: Path, tta: bool | None = None) -> dict:
    """The facts written to onnx.json and into the ONNX file's metadata_props; `tta` (None:
    the spec's) is whether the graph runs TTA."""
    from dataclasses import replace

    one = members[0].meta if len(members) == 1 else None
    base = facts["spec"]
    on = base.tta if tta is None else bool(tta)
    views = graph_views(members, on)
    single_input = groups[0] if len(groups) == 1 else None
    return {
        "format": FORMAT,
        "kind": facts["kind"],
        "source": Path(source).name,
        "inputs": [{"name": g["name"], "dtype": "float32", "shape": ["batch", 3, g["size"], g["size"]],
                    "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0], "size": g["size"],
                    "resize": g["resize"], "interpolation": INTERPOLATION,
                    "members": [members[i].name for i in g["members"]]} for g in groups],
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(facts["classes"])],
                   "activation": "sigmoid" if facts["multi_label"] else "softmax"},
        "normalisation": "inside the graph: (pixels / 255 - mean) / std; feed pixels / 255",
        "size": single_input["size"] if single_input else None,
        "resize": single_input["resize"] if single_input else None,
        "interpolation": INTERPOLATION,
        "mean": list(one.mean) if one else None,
        "std": list(one.std) if one else None,
        "classes": list(facts["classes"]),
        "multi_label": bool(facts["multi_label"]),
        "thresholds": facts["thresholds"],
        "label_delim": facts["label_delim"],
        "vote": facts["vote"],
        "weights": facts["weights"],
        "members": [{"name": m.name, "arch": m.meta.arch, "weight": m.weight, "size": m.meta.input_size,
                     "resize": m.meta.resize, "mean": list(m.meta.mean), "std": list(m.meta.std),
                     "input": next(g["name"] for g in groups if i in g["members"]),
                     "tta_flips": list(m.meta.inference.tta_flips), "views": view_names(v)}
                    for i, (m, v) in enumerate(zip(members, views))],
        "preprocessing": preprocessing(groups, facts, [m.name for m in members], views),
        "tta_flips": one.inference.tta_flips if one else None,
        "inference": replace(base, tta=on).to_dict(),
        "tta": {"inside_graph": any(len(v) > 1 for v in views),
                "set_by": ("the inference spec" if tta is None else "--tta" if tta else "--no-tta"),
                "spec_tta": bool(base.tta)},
        "opset": opset,
        "exporter": "torch.onnx.export, TorchScript-based (dynamo=False)",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def _export_graph(graph, groups: list[dict], target: Path, opset: int) -> None:
    import warnings

    import torch

    dummy = tuple(torch.rand(2, 3, g["size"], g["size"]) for g in groups)
    # torch < 2.5 has no `dynamo` argument and only the TorchScript exporter
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    names = [g["name"] for g in groups]
    axes = {n: {0: "batch"} for n in names + [OUTPUT_NAME]}
    # The TorchScript-based exporter (dynamo=False), on purpose: the dynamo exporter (torch's
    # default since 2.9) needs the `onnxscript` package (not installed: ModuleNotFoundError on
    # torch 2.14.1 here; it would be one more dependency and a younger code path), while the
    # tracer exports every convnet + fastai head tried (timm test_resnet and
    # tf_efficientnet_lite0 with its "same" padding, fixed at the traced input size;
    # torchvision resnet18 and densenet121) with ORT matching PyTorch to ~1e-6, and gives a
    # dynamic batch axis through dynamic_axes. Its deprecation notices are not the user's business.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(graph, dummy, str(target), **legacy, opset_version=opset,
                              input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=True)


def _stamp(target: Path, facts: dict) -> None:
    """Write the facts into the ONNX file's metadata_props and check the model."""
    import onnx

    model = onnx.load(str(target))
    del model.metadata_props[:]
    props = {METADATA_KEY: json.dumps(facts, sort_keys=True)}
    props.update({k: json.dumps(facts[k]) for k in FLAT_KEYS})
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "clfapp"
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def validation_paths(folder: Path, limit: int = PARITY_IMAGES) -> list[str]:
    """Up to `limit` validation images of a run/ensemble folder (splits.csv, split == valid),
    spread evenly over the list; [] when there is none to read."""
    from ..data import splits as recorded_splits

    splits = Path(folder) / "splits.csv"
    if not splits.is_file():
        return []
    items = recorded_splits.read(splits)
    if "split" not in items or "path" not in items:
        return []
    paths = [p for p in items.loc[items["split"] == "valid", "path"] if Path(p).is_file()]
    if len(paths) > limit:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit).round()]
    return paths


def parity_pixels(folder: Path, groups: list[dict]) -> tuple[dict, str]:
    """The same decoded pixels for both sides, per input ({(size, resize): uint8 N x S x S x 3}):
    real validation images where there are any, else seeded random pixels (said on stderr)."""
    keys = [(g["size"], g["resize"]) for g in groups]
    paths = validation_paths(folder)
    if paths:
        pixels, kept = decode_per_input(paths, keys)
        if len(kept):
            return pixels, f"{len(kept)} validation images (splits.csv)"
    print(f"warning: {folder} has no readable validation images (splits.csv); the parity check "
          "uses 8 random images instead", file=sys.stderr)
    rng = np.random.default_rng(0)
    return {(size, resize): rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
            for size, resize in keys}, "8 random images (no validation images found)"


def export(source: Path, out: Path | None = None, opset: int = DEFAULT_OPSET,
           tolerance: float = DEFAULT_TOLERANCE, tta: bool | None = None) -> tuple[Path, dict]:
    """Export `source` (run or ensemble folder) to ONNX, then check parity with PyTorch.
    `tta`: whether the graph averages the mirrored views (None: as the source's inference
    spec says).

    Returns (export folder, onnx.json). Raises ExportFailed (exit 1) when ONNX Runtime and
    PyTorch disagree by more than `tolerance`; the export folder is then removed, so `predict
    --backend onnx` never picks up an export that failed its check.
    """
    import shutil

    from ..models import runs
    from . import loader

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if not tolerance >= 0:
        raise UsageError(f"--tolerance must be a number >= 0, got {tolerance}")
    source = Path(source)
    members, facts = read_source(source)
    groups = input_groups(members)
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"{out} already exists and is not an empty folder; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        folder = out
    else:
        folder = runs.new_folder(source, "export")
    try:
        described = describe(members, facts, groups, opset, source, tta)
        on = described["inference"]["tta"]
        tmp = folder / (ONNX_FILE + ".tmp")
        _export_graph(_graph(members, groups, graph_views(members, on)), groups, tmp, opset)
        _stamp(tmp, described)
        os.replace(tmp, folder / ONNX_FILE)
        _write_json(folder / META_FILE, described)
        (folder / REFERENCE_FILE).write_text(reference_source())

        pixels, what = parity_pixels(source, groups)
        theirs = _torch_probabilities(loader.load(source), pixels,
                                      described["tta"]["inside_graph"]).astype(np.float64)
        ours = loader.load(folder).probabilities_by_input(pixels).astype(np.float64)
        diff = float(np.abs(theirs - ours).max())
        described["parity"] = {"max_abs_diff": diff, "tolerance": tolerance, "images": what,
                               "passed": bool(diff <= tolerance)}
        _write_json(folder / META_FILE, described)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not diff <= tolerance:
        shutil.rmtree(folder, ignore_errors=True)
        raise ExportFailed(f"parity check failed: ONNX Runtime and PyTorch differ by up to {diff:.3g} "
                           f"on {what} (tolerance {tolerance:g}); export removed")
    return folder, described


def _torch_probabilities(predictor, pixels: dict, tta: bool) -> np.ndarray:
    """PyTorch's probabilities for the parity check, run with the graph's TTA."""
    if hasattr(predictor, "each_member_on"):   # an ensemble (soft vote: hard ones never export)
        return predictor.combine(predictor.each_member_on(pixels, tta))
    return predictor.probabilities_of(pixels[predictor.inputs[0]], tta)


def tta_said(info: dict) -> str:
    """export's line on what TTA the graph does, and how to get the other."""
    inside, by = info["tta"]["inside_graph"], info["tta"]["set_by"]
    counts = [len(m["views"]) if inside else len(spec_mod.tta_views(m["tta_flips"]))
              for m in info["members"]]
    n = counts[0] if len(counts) == 1 else "/".join(map(str, counts))
    mirrors = any(m["tta_flips"] for m in info["members"])
    if inside:
        why = "as the model's inference spec says" if by == "the inference spec" else by
        return (f"test-time augmentation: inside the graph, the mean over {n} views ({why}); "
                "`clfapp export --no-tta` exports the plain model")
    if not mirrors:
        return "test-time augmentation: none (trained without flips: no mirror to average)"
    if info["tta"]["spec_tta"]:
        return (f"test-time augmentation: none in the graph ({by}), although the model's "
                f"inference spec averages {n} views: its probabilities differ from "
                "`clfapp predict --backend torch`")
    return (f"test-time augmentation: none, as the model's inference spec says; "
            f"`clfapp export --tta` puts its {n} views in the graph")


def reference_source() -> str:
    """onnx_reference.py's source, read as package data (works from a wheel or a zip too)."""
    from importlib.resources import files
    return files(__package__).joinpath("onnx_reference.py").read_text(encoding="utf-8")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
