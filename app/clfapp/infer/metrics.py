"""Every metric clfapp reports, defined once.

The per-epoch columns of results.csv (and so the best-epoch choice, `train.monitor`), the
multi-label threshold search, metrics.json of `clfapp fit` and `clfapp evaluate` all call the
functions here, so the same predictions give the same figure wherever it is shown.

The convention (identical everywhere)
-------------------------------------
* Averages run over a fixed set: every class the model knows (macro F1, per-class table) and
  every image (samples F1). The set never depends on the predictions, so a figure measured at
  0.5 and one at tuned thresholds, or on two different splits, average over the same classes.
* A ratio whose denominator is zero - precision with nothing predicted, recall with nothing
  true, F1 with nothing true and nothing predicted - is 1.0: there was nothing to get wrong,
  and nothing was got wrong. So a class absent from a split and never predicted scores F1 = 1,
  one absent but predicted scores 0; a multi-label image with no labels and none predicted
  scores F1 = 1, as subset accuracy and accuracy_multi also count it right.
  This is scikit-learn's `labels=range(C), zero_division=1.0` (tests check the equality).
  Mind that it lifts single-label macro F1 on a split that lacks classes; the per-class table
  shows support 0 for them, and f1_weighted (weights = support) ignores them.
* Rank metrics (ROC AUC, average precision) are undefined for a class with no positive or no
  negative item in the split: such classes are left out of their average, and the figure is
  None when no class is left. A rank metric has no "nothing to get wrong" case to score.
* Decisions: single-label predicts the arg-max of the probabilities; multi-label predicts a
  label when its probability is >= its threshold (0.5 unless tuned).

Inputs are numpy arrays: probabilities N x C, single-label truth as class indices (N,),
multi-label truth and predictions as boolean N x C matrices.
"""
from __future__ import annotations

import numpy as np

F1_AVERAGES = ("f1_micro", "f1_macro", "f1_samples")
EPOCH_METRICS = {False: ("accuracy", "f1_macro"),
                 True: ("accuracy_multi", "f1_micro", "f1_macro")}
"""The per-epoch metric names (results.csv columns, `train.monitor` values) per multi_label."""


def ratio(num, den):
    """num / den elementwise, 1.0 where den == 0 (the convention above)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def _counts(y: np.ndarray, pred: np.ndarray, axis: int):
    """(tp, fp, fn) of boolean matrices summed along `axis` (0: per label, 1: per image)."""
    return ((y & pred).sum(axis=axis), (~y & pred).sum(axis=axis), (y & ~pred).sum(axis=axis))


def _f1(tp, fp, fn):
    return ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn)


# --- single-label -----------------------------------------------------------------------------

def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C x C counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(y) * n_classes + np.asarray(pred),
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of items whose predicted class is the true one."""
    return float(np.mean(np.asarray(pred) == np.asarray(y))) if len(y) else 1.0


def per_class(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """precision, recall, f1, support arrays, one entry per class the model knows."""
    cm = confusion(y, pred, n_classes)
    tp = np.diag(cm)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": _f1(tp, fp, fn), "support": cm.sum(axis=1)}


def f1_macro(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of the per-class F1 over all `n_classes` classes."""
    return float(per_class(y, pred, n_classes)["f1"].mean())


def f1_weighted(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Per-class F1 averaged with the classes' true counts as weights."""
    t = per_class(y, pred, n_classes)
    return float((t["f1"] * t["support"]).sum() / t["support"].sum()) if t["support"].sum() else 1.0


def roc_auc_ovr(probs: np.ndarray, y: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC averaged over the classes with both positives and negatives."""
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(y == c, probs[:, c]) for c in range(probs.shape[1])
              if 0 < (y == c).sum() < len(y)]
    return float(np.mean(scores)) if scores else None


def single_label(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """accuracy, macro/weighted F1, ROC AUC, per-class table and confusion matrix."""
    n = len(classes)
    y = np.asarray(y, dtype=int)
    pred = probs.argmax(axis=1)
    t = per_class(y, pred, n)
    return {
        "n": int(len(y)),
        "accuracy": accuracy(y, pred),
        "f1_macro": float(t["f1"].mean()),
        "f1_weighted": f1_weighted(y, pred, n),
        "roc_auc_ovr": roc_auc_ovr(probs, y),
        "per_class": {c: {"precision": float(t["precision"][i]), "recall": float(t["recall"][i]),
                          "f1": float(t["f1"][i]), "support": int(t["support"][i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion(y, pred, n).tolist(),
    }


# --- multi-label ------------------------------------------------------------------------------

def f1(y: np.ndarray, pred: np.ndarray, average: str) -> float:
    """F1 of boolean label matrices; `average` is f1_micro, f1_macro or f1_samples."""
    if average not in F1_AVERAGES:
        raise ValueError(f"average must be one of {F1_AVERAGES}, got {average!r}")
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    tp, fp, fn = _counts(y, pred, axis=1 if average == "f1_samples" else 0)
    if average == "f1_micro":
        return float(_f1(tp.sum(), fp.sum(), fn.sum()))
    return float(_f1(tp, fp, fn).mean())


def subset_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of images whose whole predicted label set is right."""
    return float((np.asarray(pred) == np.asarray(y)).all(axis=1).mean())


def accuracy_multi(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of (image, label) decisions that are right."""
    return float((np.asarray(pred) == np.asarray(y)).mean())


def decide(probs: np.ndarray, thresholds=0.5) -> np.ndarray:
    """Multi-label decisions: probability >= threshold (one value, or one per label)."""
    return probs >= np.broadcast_to(np.asarray(thresholds, dtype=float), (probs.shape[1],))


def _rank_scores(probs: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    """Per-label average precision and ROC AUC, for the labels where they are defined."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    present = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    return ({j: float(average_precision_score(y[:, j], probs[:, j])) for j in present},
            {j: float(roc_auc_score(y[:, j], probs[:, j])) for j in present})


def multi_label(probs: np.ndarray, y: np.ndarray, classes: list[str], thresholds=0.5) -> dict:
    """F1 (micro, macro, samples), subset and per-label accuracy, mAP, macro ROC AUC and a
    per-label table, at the given decision thresholds."""
    y = np.asarray(y).astype(bool)
    t = np.broadcast_to(np.asarray(thresholds, dtype=float), (probs.shape[1],))
    pred = decide(probs, t)
    ap, auc = _rank_scores(probs, y)
    tp, fp, fn = _counts(y, pred, axis=0)
    precision, recall, f1s = ratio(tp, tp + fp), ratio(tp, tp + fn), _f1(tp, fp, fn)
    return {
        "n": int(len(y)),
        "f1_micro": f1(y, pred, "f1_micro"),
        "f1_macro": f1(y, pred, "f1_macro"),
        "f1_samples": f1(y, pred, "f1_samples"),
        "subset_accuracy": subset_accuracy(y, pred),
        "accuracy_multi": accuracy_multi(y, pred),
        "map": float(np.mean(list(ap.values()))) if ap else None,
        "roc_auc_macro": float(np.mean(list(auc.values()))) if auc else None,
        "thresholds": [float(x) for x in t],
        "per_label": {c: {"precision": float(precision[j]), "recall": float(recall[j]),
                          "f1": float(f1s[j]), "ap": ap.get(j), "support": int(y[:, j].sum()),
                          "threshold": float(t[j])} for j, c in enumerate(classes)},
    }


# --- per epoch ----------------------------------------------------------------------------------

def epoch_score(probs: np.ndarray, target: np.ndarray, name: str, multi_label: bool) -> float:
    """One per-epoch metric from the validation set's probabilities and targets, decided and
    defined exactly as `single_label` / `multi_label` (at 0.5) decide and define it.

    `target` is class indices (single-label) or the 0/1 label matrix (multi-label), as fastai
    hands them to a metric.
    """
    if multi_label:
        y, pred = np.asarray(target) > 0.5, decide(probs, 0.5)
        return accuracy_multi(y, pred) if name == "accuracy_multi" else f1(y, pred, name)
    y, pred = np.asarray(target, dtype=int), probs.argmax(axis=1)
    if name == "accuracy":
        return accuracy(y, pred)
    if name == "f1_macro":
        return f1_macro(y, pred, probs.shape[1])
    raise ValueError(f"no single-label epoch metric {name!r}")
