"""The export folder's format, shared by the writer (infer/export.py) and the reader
(infer/onnx_predict.py) so that neither imports the other: file names, format number, the
graph's output name and the metadata keys."""
from __future__ import annotations

from pathlib import Path

ONNX_FILE, META_FILE = "model.onnx", "onnx.json"
FORMAT = 1
OUTPUT_NAME = "probabilities"
METADATA_KEY = "clfapp"
FLAT_KEYS = ("classes", "multi_label", "thresholds", "label_delim", "inputs", "vote", "weights",
             "opset", "versions")
"""Facts also stored one by one in the ONNX file's metadata_props, beside METADATA_KEY's whole set."""


def is_export(folder) -> bool:
    """An export folder itself (not a run holding export-N folders): it has onnx.json or model.onnx."""
    folder = Path(folder)
    return (folder / META_FILE).is_file() or (folder / ONNX_FILE).is_file()
