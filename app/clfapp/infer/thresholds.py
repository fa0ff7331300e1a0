"""Multi-label decision thresholds: search them on labelled predictions for a chosen F1.

The F1 searched is clfapp.metrics' (one definition): the score a search reports is the figure
evaluate reports on the same predictions at the same thresholds. The thresholds fit the data
they were searched on; figures on that same data are optimistic."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics

METRICS = metrics.F1_AVERAGES
MODES = ("global", "per-label")
GRID = np.round(np.arange(0.02, 0.981, 0.01), 2)


def f1(y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    """F1 of boolean label matrices (f1_micro, f1_macro or f1_samples), as clfapp.metrics
    defines it: the search maximises exactly the figure that evaluate and fit report."""
    return metrics.f1(y, pred, metric)


@dataclass
class Search:
    thresholds: list[float]      # one per label (all equal for mode global)
    score: float                 # the metric at those thresholds
    score_at_half: float         # the metric at 0.5, for comparison
    curve: list[tuple[float, float]]  # (global threshold, metric) over the grid
    metric: str = "f1_micro"


def search(probs: np.ndarray, y: np.ndarray, metric: str = "f1_micro",
           mode: str = "global", grid: np.ndarray = GRID) -> Search:
    """Best thresholds for `metric` on (probs, y): one global value, or refined per label.

    per-label starts from the best global threshold and sweeps each label's own threshold with
    the others held (two passes of coordinate ascent), so it never scores below global.
    """
    curve = [(float(t), f1(y, probs >= t, metric)) for t in grid]
    best_t, best = max(curve, key=lambda c: (c[1], -abs(c[0] - 0.5)))
    thresholds = np.full(probs.shape[1], best_t)
    if mode == "per-label":
        for _ in range(2):
            for j in range(probs.shape[1]):
                for t in grid:
                    trial = thresholds.copy()
                    trial[j] = t
                    score = f1(y, probs >= trial, metric)
                    if score > best + 1e-12:
                        best, thresholds = score, trial
    return Search([float(t) for t in thresholds], float(best), f1(y, probs >= 0.5, metric), curve,
                  metric)


@dataclass
class Tuned:
    search: Search
    before: dict   # multi-label metrics at 0.5
    after: dict    # at the chosen thresholds


def tune(run, probs: np.ndarray, y: np.ndarray, metric: str, mode: str, predictor,
         tta: bool | None = None, on: str = "") -> Tuned:
    """Search thresholds on (probs, y), the probabilities of `predictor` run with `tta` (None:
    its spec's) on the items `on` describes, and store them with those conditions in the
    inference spec of the run's bundle (model.json), or an ensemble's ensemble.json."""
    from . import bundle, ensemble_meta, spec

    store = ensemble_meta if ensemble_meta.is_ensemble(run) else bundle
    meta = store.read_meta(run)
    found = search(probs, y, metric, mode)
    spec.set_thresholds(meta.inference, found.thresholds, predictor, tta, metric, mode, on)
    store.write_meta(run, meta)
    return Tuned(found, metrics.multi_label(probs, y, meta.classes, 0.5),
                 metrics.multi_label(probs, y, meta.classes, found.thresholds))
