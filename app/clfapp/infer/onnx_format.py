"""The export folder's format, shared by the writer (infer/export.py) and the reader
(infer/onnx_predict.py) so that neither imports the other: file names, format number, the
graph's output name and the metadata keys."""
from __future__ import annotations

from pathlib import Path

ONNX_FILE, META_FILE = "model.onnx", "onnx.json"
REFERENCE_FILE = "preprocess.py"
"""The standalone reference preprocessing (Pillow + numpy) written beside the graph: the
source of infer/onnx_reference.py."""
FORMAT = 1
"""Changes only when a reader must read an export differently (a field an older clfapp would
ignore and then predict wrong). Facts added for outside consumers keep it: `preprocessing`
(every step before the graph) describes what clfapp's ONNX predictor has always done, so an
older clfapp reads such an export correctly, and this one reads exports without it.

Test-time augmentation inside the graph (`inference`, `tta`, members[].views) keeps it too: the
mirrored views are averaged by the graph itself, so any reader that feeds the graph and reads
its output, an older clfapp included, gets the probabilities the model's spec means (an older
clfapp refuses `--tta` with the ONNX backend, which is no wrong answer either). An older
clfapp only cannot say that TTA ran; this one reads exports without `inference` as before
(no TTA, an inferred spec)."""
OUTPUT_NAME = "probabilities"
METADATA_KEY = "clfapp"
FLAT_KEYS = ("classes", "multi_label", "thresholds", "label_delim", "inputs", "vote", "weights",
             "inference", "opset", "versions")
"""Facts also stored one by one in the ONNX file's metadata_props, beside METADATA_KEY's whole set."""


def is_export(folder) -> bool:
    """An export folder itself (not a run holding export-N folders): it has onnx.json or model.onnx."""
    folder = Path(folder)
    return (folder / META_FILE).is_file() or (folder / ONNX_FILE).is_file()
