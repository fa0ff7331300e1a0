"""Inference with an exported ONNX model (clfapp export) through ONNX Runtime.

The same small interface as predict.Predictor (`meta` with classes / multi_label / thresholds /
label_delim, `classes`, `probabilities(paths) -> (probs, kept)`, `probabilities_of(pixels)`), so
predict and evaluate can use either. Images are decoded and resized by clfapp.images, the code
path training used, so the pixels are the ones the model was trained on. Needs numpy, PIL and
onnxruntime only: no torch.

Test-time augmentation is in the graph or not (`clfapp export --tta/--no-tta`; onnx.json
`inference.tta`, and each member's `views`): `tta` None runs the graph as it is, and asking
for the other (`--no-tta` of a graph with TTA inside, `--tta` of a plain graph whose model has
mirrors) is refused with one line saying to export again with that setting.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..models import runs
from ..config import INFER_BS
from ..errors import UsageError
from .decoding import Input, decode_per_input, gathered
from .onnx_format import FORMAT, META_FILE, METADATA_KEY, ONNX_FILE, OUTPUT_NAME, is_export


@dataclass
class ExportMeta:
    """What predict/evaluate read from a predictor's `meta` (a subset of onnx.json)."""
    classes: list[str]
    multi_label: bool
    thresholds: list[float] | None
    label_delim: str
    inputs: list[dict]


def find_export(folder: Path) -> Path:
    """`folder` itself when it is an export folder, else its newest export-N/ holding one."""
    folder = Path(folder)
    if is_export(folder):
        return folder
    found = [(n, p) for n, p in runs.numbered(folder, "export") if (p / META_FILE).is_file()]
    if not found:
        raise UsageError(f"{folder} has no ONNX export (no export-N/{META_FILE}); run "
                         f"`clfapp export {folder} --format onnx` first")
    return max(found)[1]


def _default_threads() -> int:
    """ORT's intra-op threads: OMP_NUM_THREADS when set (as torch reads it), else ORT's own."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


class OnnxPredictor:
    """An export folder's model.onnx in an ONNX Runtime session, with onnx.json's preprocessing."""

    kind = "onnx"

    def __init__(self, folder: Path, threads: int | None = None):
        import onnxruntime as ort

        folder = find_export(folder)
        self.folder = folder
        meta_path, onnx_path = folder / META_FILE, folder / ONNX_FILE
        if not meta_path.is_file() or not onnx_path.is_file():
            raise UsageError(f"{folder} is not a whole ONNX export: it needs {META_FILE} and {ONNX_FILE}")
        try:
            info = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"{meta_path} is not valid JSON: {e}")
        if not isinstance(info, dict):
            raise UsageError(f"{meta_path} is not a clfapp export description")
        if not isinstance(info.get("format"), int) or info["format"] > FORMAT:
            raise UsageError(f"{meta_path}: export format {info.get('format')!r} is not one this "
                             f"clfapp reads (up to {FORMAT}); upgrade clfapp or export again")
        options = ort.SessionOptions()
        options.intra_op_num_threads = _default_threads() if threads is None else threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"{onnx_path} is not a readable ONNX model ({first}); export again")
        self._check(info, onnx_path)
        self.info = info
        try:
            self.meta = ExportMeta(classes=list(info["classes"]), multi_label=bool(info["multi_label"]),
                                   thresholds=info.get("thresholds"),
                                   label_delim=info.get("label_delim", " "), inputs=info["inputs"])
        except (KeyError, TypeError) as e:
            raise UsageError(f"{meta_path} is not a valid clfapp export description: {e}")

    def _check(self, info: dict, onnx_path: Path) -> None:
        """onnx.json must say what the ONNX file says about itself, and fit its graph."""
        embedded = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if embedded is None:
            raise UsageError(f"{onnx_path} carries no clfapp metadata: not made by `clfapp export`")
        try:
            facts = json.loads(embedded)
        except json.JSONDecodeError:
            raise UsageError(f"{onnx_path}: its clfapp metadata is not valid JSON; export again")
        differ = sorted(k for k in set(facts) | (set(info) - {"parity"}) if facts.get(k) != info.get(k))
        if differ:
            raise UsageError(f"{self.folder / META_FILE} does not match {ONNX_FILE} "
                             f"({', '.join(differ)} differ); it was edited or the files come from "
                             "different exports: export again")
        want = [(i["name"], i["size"]) for i in info["inputs"]]
        have = [(x.name, x.shape[2] if len(x.shape) == 4 else None) for x in self.session.get_inputs()]
        out = self.session.get_outputs()
        if have != want or len(out) != 1 or out[0].name != OUTPUT_NAME \
                or out[0].shape[-1] != len(info["classes"]):
            raise UsageError(f"{onnx_path}: its graph's inputs/outputs do not fit {META_FILE}; export again")

    @cached_property
    def spec(self):
        """How the graph is run (onnx.json `inference`, read once); an export from before the
        spec: no TTA, the first input's size, marked inferred."""
        from . import spec
        raw = self.info.get("inference")
        if raw is not None:
            return spec.InferenceSpec.from_dict(dict(raw), str(self.folder / META_FILE))
        size, resize = self.inputs[0]
        return spec.InferenceSpec(size=size, resize=resize, thresholds=self.meta.thresholds,
                                  chosen_by="inferred", inferred=True)

    # --- TTA: fixed in the graph -------------------------------------------------------------

    def _members(self) -> list[dict]:
        return [m for m in self.info.get("members") or [] if isinstance(m, dict)]

    @property
    def views(self) -> list[int]:
        """How many views each member's part of the graph averages (1: no TTA; an export
        from before onnx.json listed them: 1, the graph was always the plain model)."""
        return [len(m.get("views") or ["image"]) for m in self._members()] or [1]

    @property
    def tta_inside(self) -> bool:
        return any(n > 1 for n in self.views)

    @property
    def tta_flips(self) -> list[str] | None:
        """A one-model export's mirrors (what `--tta` would average); None for an ensemble."""
        members = self._members()
        if len(members) != 1:
            return None
        flips = members[0].get("tta_flips", self.info.get("tta_flips"))
        return None if flips is None else list(flips)

    def _has_mirrors(self) -> bool:
        """Whether TTA would average anything (unknown, for an old export: assume so)."""
        members = self._members()
        if members and all("tta_flips" in m for m in members):
            return any(m["tta_flips"] for m in members)
        flips = self.info.get("tta_flips")
        return flips is None or bool(flips)

    def check_tta(self, tta: bool | None) -> None:
        """Refuse to run this graph with TTA other than the one inside it (one line)."""
        if tta is None:
            return
        if tta and not self.tta_inside and self._has_mirrors():
            raise UsageError(f"--tta: {self.folder} was exported without TTA (its graph is the "
                             f"plain model); export again with `clfapp export {self._source()} "
                             "--tta` to put the mirrored views in the graph, or use --backend torch")
        if not tta and self.tta_inside:
            n = "/".join(map(str, self.views)) if len(self.views) > 1 else self.views[0]
            raise UsageError(f"--no-tta: {self.folder} has TTA inside its graph (the mean over "
                             f"{n} views); export again with `clfapp export {self._source()} "
                             "--no-tta` for the plain model, or use --backend torch")

    def _source(self) -> str:
        """The run or ensemble folder this export-N was made from (to export it again)."""
        return str(self.folder.parent) if self.folder.name.startswith("export-") else "MODEL"

    def conditions(self, tta: bool | None = None) -> dict:
        """spec.conditions of this graph: per member for an ensemble export (as the PyTorch
        ensemble's), else size, resize, views and precision; `tta` only as check_tta allows."""
        self.check_tta(tta)
        precision = self.spec.precision
        members = self._members()
        if self.info.get("kind") == "ensemble" and members:
            return {"members": {m["name"]: {"size": int(m["size"]), "resize": m["resize"],
                                            "views": n, "precision": precision}
                                for m, n in zip(members, self.views)}}
        size, resize = self.inputs[0]
        return {"size": size, "resize": resize, "views": self.views[0], "precision": precision}

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def inputs(self) -> list[Input]:
        """(size, resize) of each graph input, in onnx.json's order."""
        return [(int(spec["size"]), spec["resize"]) for spec in self.meta.inputs]

    def probabilities_by_input(self, pixels: dict, bs: int = INFER_BS) -> np.ndarray:
        """Probabilities for decoded images given per input ({(size, resize): N x S x S x 3})."""
        return self.probabilities_of([pixels[key] for key in self.inputs], bs=bs)

    def probabilities_of(self, pixels, tta: bool | None = None, bs: int = INFER_BS) -> np.ndarray:
        """Probabilities for decoded images: one N x S x S x 3 uint8 array per graph input
        (a list, in onnx.json's input order; a bare array for a one-input graph). `tta` None:
        the graph as it is (with the TTA inside it or none); other than the graph: refused."""
        self.check_tta(tta)
        arrays = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
        if len(arrays) != len(self.meta.inputs):
            raise ValueError(f"{len(self.meta.inputs)} input arrays expected, got {len(arrays)}")
        n = len(arrays[0])
        out = []
        for i in range(0, n, bs):
            feed = {spec["name"]: _to_input(a[i:i + bs]) for spec, a in zip(self.meta.inputs, arrays)}
            out.append(self.session.run([OUTPUT_NAME], feed)[0])
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)

    def probabilities(self, paths: list[str], tta: bool | None = None, bs: int = INFER_BS,
                      workers: int = 0, progress: bool = True):
        """(probs N'xC, kept indices into `paths`); unreadable images are skipped with a warning.
        `tta` as probabilities_of. (`workers`, `progress`: for predict.Predictor's interface.)"""
        self.check_tta(tta)
        out, kept = [], []
        for start in range(0, len(paths), bs):
            pixels, ok = decode_per_input(paths[start:start + bs], self.inputs)
            if not len(ok):
                continue
            out.append(self.probabilities_by_input(pixels, bs=bs))
            kept.append(ok + start)
        return gathered(out, kept, len(paths))


def _to_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 N x S x S x 3 -> float32 N x 3 x S x S in [0, 1], as the graph expects."""
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)
