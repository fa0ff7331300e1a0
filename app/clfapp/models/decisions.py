"""Multi-label decisions: the thresholds in force for a model. In models/ (below infer and report),
so that prediction, evaluation and the reports decide labels by the one rule without importing one another."""
from __future__ import annotations

import numpy as np


def decision_thresholds(meta, override: float | None = None) -> np.ndarray:
    """The multi-label thresholds in force: --threshold, else the model's (meta.thresholds),
    else 0.5; one per class of `meta.classes`."""
    if override is not None:
        return np.full(len(meta.classes), float(override))
    return np.asarray(meta.thresholds if meta.thresholds else [0.5] * len(meta.classes))
