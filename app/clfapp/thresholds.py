"""Multi-label decision thresholds: search them on validation predictions for a chosen F1."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("f1_micro", "f1_macro", "f1_samples")
MODES = ("global", "per-label")
GRID = np.round(np.arange(0.02, 0.981, 0.01), 2)


def f1(y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    """F1 of boolean label matrices; `metric` is f1_micro, f1_macro or f1_samples.

    An image with no true and no predicted label counts as a perfect sample (F1 = 1), as an
    empty label set predicted correctly is a correct answer.
    """
    y, pred = y.astype(bool), pred.astype(bool)
    tp = (y & pred).sum(axis=0 if metric != "f1_samples" else 1).astype(float)
    fp = (~y & pred).sum(axis=0 if metric != "f1_samples" else 1).astype(float)
    fn = (y & ~pred).sum(axis=0 if metric != "f1_samples" else 1).astype(float)
    if metric == "f1_micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        denom = 2 * tp + fp + fn
        return float(2 * tp / denom) if denom else 1.0
    denom = 2 * tp + fp + fn
    scores = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return float(scores.mean())


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


def tune(run, probs: np.ndarray, y: np.ndarray, metric: str, mode: str) -> Tuned:
    """Search thresholds on (probs, y) and store them in the run's bundle (model.json)."""
    from . import bundle
    from .evaluate import multilabel_metrics

    meta = bundle.read_meta(run)
    found = search(probs, y, metric, mode)
    meta.thresholds = found.thresholds
    bundle.write_meta(run, meta)
    return Tuned(found, multilabel_metrics(probs, y, meta.classes, 0.5),
                 multilabel_metrics(probs, y, meta.classes, found.thresholds))
