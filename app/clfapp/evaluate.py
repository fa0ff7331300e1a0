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


def multilabel_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str],
                       thresholds: list[float] | float = 0.5) -> dict:
    """F1 (micro, macro, samples), subset and per-label accuracy, mAP, macro ROC AUC and a
    per-label table, at the given decision thresholds."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from .thresholds import f1

    y = y.astype(bool)
    t = np.broadcast_to(np.asarray(thresholds, dtype=float), (probs.shape[1],))
    pred = probs >= t
    present = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    ap = {j: float(average_precision_score(y[:, j], probs[:, j])) for j in present}
    per_label = {}
    for j, c in enumerate(classes):
        tp, fp, fn = (y[:, j] & pred[:, j]).sum(), (~y[:, j] & pred[:, j]).sum(), (y[:, j] & ~pred[:, j]).sum()
        per_label[c] = {"precision": float(tp / (tp + fp)) if tp + fp else 0.0,
                        "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
                        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 1.0,
                        "ap": ap.get(j), "support": int(y[:, j].sum()), "threshold": float(t[j])}
    return {
        "n": int(len(y)),
        "f1_micro": f1(y, pred, "f1_micro"),
        "f1_macro": f1(y, pred, "f1_macro"),
        "f1_samples": f1(y, pred, "f1_samples"),
        "subset_accuracy": float((pred == y).all(axis=1).mean()),
        "accuracy_multi": float((pred == y).mean()),
        "map": float(np.mean(list(ap.values()))) if ap else None,
        "roc_auc_macro": float(np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in present])) if present else None,
        "thresholds": [float(x) for x in t],
        "per_label": per_label,
    }


def labelled_items(run, data_path: str | None = None, labels: str = "folder", delim: str = " "):
    """(items, description) to measure a run on: a labelled dataset (its non-train part when it
    has split folders), or by default the run's own validation split from splits.csv."""
    import pandas as pd

    from . import data
    from .config import DataConfig
    from .errors import UsageError

    if data_path:
        items = data.scan(DataConfig(path=data_path, labels=labels, label_delim=delim))
        return items[items["split"].isna() | (items["split"] != "train")], data_path
    splits = run / "splits.csv"
    if not splits.is_file():
        raise UsageError(f"{run} has no splits.csv; pass --data PATH")
    items = pd.read_csv(splits, dtype=str, keep_default_na=False)
    return items[items["split"] == "valid"], f"validation split of {run.name}"


def measure(predictor, items, tta: bool = False, bs: int = 64, threshold: float | None = None):
    """(metrics, probs, truth) of `predictor` on labelled `items`; unreadable images skipped."""
    from . import data
    from .predict import decision_thresholds

    meta = predictor.meta
    probs, kept = predictor.probabilities(items["path"].tolist(), tta=tta, bs=bs)
    if meta.multi_label:
        if "labels" not in items.columns:
            from .errors import UsageError
            raise UsageError("this is a multi-label model; give data with a labels column")
        y = data.label_matrix(items["labels"].iloc[kept], meta.classes, meta.label_delim)
        return multilabel_metrics(probs, y, meta.classes, decision_thresholds(meta, threshold)), probs, y
    y = data.class_indices(items["label"].iloc[kept], meta.classes)
    return metrics(probs, y, meta.classes), probs, y
