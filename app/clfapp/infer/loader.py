"""The one way in from a model folder to a predictor, whatever the folder holds: a run (or a
bundle folder) gives a predict.Predictor, an ensemble folder (ensemble.json) an
ensemble.EnsemblePredictor, an export folder (onnx.json) an onnx_predict.OnnxPredictor.

Every predictor offers the same calls (`meta`, `classes`, `kind`, `inputs`,
`probabilities(paths)`, `probabilities_by_input(pixels)`), so commands never ask which kind
they hold. Sitting above the three, it is what lets them not import one another.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from . import ensemble_meta, onnx_format

BACKENDS = ("torch", "onnx")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be {' or '.join(BACKENDS)}, got {backend!r}")


def load(folder, backend: str = "torch", threads: int | None = None):
    """The predictor of `folder`. backend "onnx" runs a run's or an ensemble's newest
    export-N (or the export folder given) through ONNX Runtime with `threads` intra-op
    threads; an export folder is always run that way, it holds no PyTorch model."""
    check_backend(backend)
    folder = Path(folder)
    if backend == "onnx" or onnx_format.is_export(folder):
        from .onnx_predict import OnnxPredictor
        return OnnxPredictor(folder, threads=threads)
    if ensemble_meta.is_ensemble(folder):
        from .ensemble import EnsemblePredictor
        return EnsemblePredictor(folder)
    from .predict import Predictor
    return Predictor(folder)
