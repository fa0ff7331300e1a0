"""Single-label metrics from predicted probabilities and true class indices."""
from __future__ import annotations

import numpy as np


def macro_roc_auc(probs: np.ndarray, y: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC averaged over the classes that have both positives and negatives."""
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(y == c, probs[:, c]) for c in range(probs.shape[1])
              if 0 < (y == c).sum() < len(y)]
    return float(np.mean(scores)) if scores else None


def metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """accuracy, macro/weighted F1, ROC AUC, per-class table and confusion matrix."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "roc_auc_ovr": macro_roc_auc(probs, y),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(s[i])} for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def targets(labels, classes: list[str]) -> np.ndarray:
    """Class indices of `labels`; a label the model does not know is a usage error."""
    from .errors import UsageError

    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(l) for l in labels if str(l) not in index})
    if unknown:
        raise UsageError(f"labels unknown to the model: {', '.join(unknown[:8])} "
                         f"(it knows: {', '.join(classes[:12])})")
    return np.array([index[str(l)] for l in labels])
