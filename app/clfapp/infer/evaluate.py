"""Measure a model on labelled data: which items, their probabilities, and the figures.

The figures themselves are defined in clfapp.metrics; `metrics` and `multilabel_metrics` are
kept here for the callers that import them."""
from __future__ import annotations

import numpy as np
from ..config import INFER_BS


def metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """accuracy, macro/weighted F1, ROC AUC, per-class table and confusion matrix, as defined
    in clfapp.metrics (the one definition every figure of clfapp uses)."""
    from .metrics import single_label
    return single_label(probs, y, classes)


def multilabel_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str],
                       thresholds: list[float] | float = 0.5) -> dict:
    """F1 (micro, macro, samples), subset and per-label accuracy, mAP, macro ROC AUC and a
    per-label table, at the given decision thresholds (defined in clfapp.metrics)."""
    from .metrics import multi_label
    return multi_label(probs, y, classes, thresholds)


def labelled_items(run, data_path: str | None = None, labels: str = "folder", delim: str = " ",
                   *, also=(), tune: bool = False):
    """(items, description) to measure a run on: a labelled dataset (its non-train part when it
    has split folders), or by default the run's own validation split from splits.csv.

    The default is refused as evidence when a model of `run` (or of the folders `also`, other
    models measured on the same items) was trained on those validation images (`fit --full`,
    model.json trained_on): the run's test split is used instead when it has one, unless
    `tune` (a threshold search must not see the test split); else one UsageError: give --data.
    """
    from .. import data
    from ..config import DataConfig
    from ..errors import UsageError

    if data_path:
        items = data.scan(DataConfig(path=data_path, labels=labels, label_delim=delim))
        return items[items["split"].isna() | (items["split"] != "train")], data_path
    splits = run / "splits.csv"
    if not splits.is_file():
        raise UsageError(f"{run} has no splits.csv; pass --data PATH")
    items = data.splits.read(splits)   # paths absolute, confined to the dataset folder
    rows, split = evidence_split(items, run.name, [run, *also], tune)
    if split == "test":
        return rows, (f"test split of {run.name} (its validation images were trained on by the "
                      "final model of fit --full; the test split never was)")
    if (run / "folds.csv").is_file():   # a k-fold run (train/kfold.py): its folds are training items
        return rows, (f"validation split of {run.name} (in none of its folds: no fold model "
                      "trained on it or chose its epoch on it)")
    return rows, (f"validation split of {run.name} (it chose the best epoch, and thresholds if "
                  "tuned there: optimistic)")


def evidence_split(items, where: str, folders, tune: bool = False):
    """(rows, "valid" | "test"): the validation rows of `items` (a splits.csv of `where`), or
    its test rows when a model of `folders` was trained on those validation images (`fit
    --full`) and `tune` is off. Refused (UsageError, naming --data) when that leaves nothing
    unseen by every model of `folders`."""
    from ..errors import UsageError

    valid = items[items["split"] == "valid"]
    seen = trained_on_valid(folders)
    culprits = [name for name, paths in seen if paths & set(valid["path"])]
    if not culprits:
        return valid, "valid"
    test = items[items["split"] == "test"]
    who = ", ".join(culprits[:3]) + (", ..." if len(culprits) > 3 else "")
    ref = "its validation images" if culprits == [where] else f"the validation images of {where}"
    why = (f"{who}'s model was trained on {ref} (fit --full), so they are no evidence"
           if len(culprits) == 1 else f"the models of {who} were trained on {ref} (fit --full), "
           "so they are no evidence")
    if tune:
        raise UsageError(f"{why}, and the test split stays unseen for measuring; give --data "
                         "FOLDER with labelled images it did not train on")
    if not len(test) or any(paths & set(test["path"]) for _, paths in seen):
        raise UsageError(f"{why} and {where} has no test split; give --data FOLDER with "
                         "labelled images it did not train on (or fit with data.test_pct)")
    return test, "test"


def _models(folders):
    """Every model (members.Member) of `folders`: run, ensemble or bundle folders, or an ONNX
    export (RUN/export-N: its run's model). A folder holding no model adds nothing."""
    from pathlib import Path

    from . import bundle, ensemble_meta, members

    for folder in folders:
        folder = Path(folder)
        if (folder / "onnx.json").is_file() and not (folder / bundle.META).is_file():
            folder = folder.parent   # an export's items are its run's
        if not (ensemble_meta.is_ensemble(folder) or (folder / bundle.META).is_file()
                or (folder / "model" / bundle.META).is_file()):
            continue
        yield from members.read(folder).members


def _recorded(folders):
    """(member, its splits.csv as path -> split) of every model in `folders` that recorded
    one beside it (see _models); members without a record are left out."""
    from pathlib import Path

    from ..data import splits

    for m in _models(folders):
        record = Path(m.folder) / "splits.csv"
        if record.is_file():
            yield m, splits.recorded(record)


def trained_on_valid(folders) -> list[tuple[str, set]]:
    """(name, its validation paths) of every model in `folders` (run, ensemble or bundle
    folders; an export's home) whose weights were trained on its own run's validation images
    (`fit --full`: model.json trained_on = "train+valid"). A folder holding no model, or a
    model with no recorded splits.csv beside it, adds nothing."""
    from . import bundle

    return [(m.name, set(rec.index[rec == "valid"])) for m, rec in _recorded(folders)
            if m.meta.inference.trained_on == bundle.TRAIN_VALID]


def training_items(folder) -> set[str] | None:
    """The resolved paths of every item the weights of `folder`'s model(s) were trained on:
    the train rows of each member's splits.csv, and its valid rows too after `fit --full`
    (model.json trained_on). None when no member recorded a splits.csv (unknown)."""
    from . import bundle

    seen, known = set(), False
    for m, rec in _recorded([folder]):
        known = True
        parts = ["train", "valid"] if m.meta.inference.trained_on == bundle.TRAIN_VALID else ["train"]
        seen |= {_resolved(p) for p in rec.index[rec.isin(parts)]}
    return seen if known else None


def _resolved(path: str) -> str:
    import os
    return os.path.realpath(path)


def overlap(folder, paths) -> dict | None:
    """How many of `paths` (the items a model is measured on) the model(s) of `folder` were
    trained on, compared by resolved absolute path: {"n", "of", "examples" (up to 3 paths)}.
    None when the model's training items are unknown (no splits.csv recorded)."""
    seen = training_items(folder)
    if seen is None:
        return None
    paths = list(paths)
    hits = [p for p in paths if _resolved(p) in seen]
    return {"n": len(hits), "of": len(paths), "examples": hits[:3]}


def overlap_warning(name: str, found: dict | None) -> str | None:
    """The one warning line for an overlap `found` by `overlap` (None when there is none)."""
    if not found or not found["n"]:
        return None
    from pathlib import Path
    shown = ", ".join(Path(p).name for p in found["examples"])
    return (f"warning: {found['n']} of the {found['of']} items measured were training items of "
            f"{name} (e.g. {shown}): its figures on them are optimistic, not evidence")


def measure(predictor, items, tta: bool | None = None, bs: int = INFER_BS,
            threshold: float | None = None):
    """(metrics, probs, truth) of `predictor` on labelled `items`, run as its inference spec
    says unless `tta` is given; unreadable images skipped."""
    probs, kept = predictor.probabilities(items["path"].tolist(), tta=tta, bs=bs)
    m, y = score(probs, items.iloc[kept], predictor.meta, threshold)
    return m, probs, y


def score(probs, items, meta, threshold: float | None = None):
    """(metrics, truth) of probabilities `probs` for labelled `items` (rows aligned), for a
    model described by `meta` (classes, multi_label, thresholds, label_delim)."""
    from .. import data
    from ..models.decisions import decision_thresholds

    if meta.multi_label:
        if "labels" not in items.columns:
            from ..errors import UsageError
            raise UsageError("this is a multi-label model; give data with a labels column")
        y = data.label_matrix(items["labels"], meta.classes, meta.label_delim)
        return multilabel_metrics(probs, y, meta.classes, decision_thresholds(meta, threshold)), y
    y = data.class_indices(items["label"], meta.classes)
    return metrics(probs, y, meta.classes), y


def held_out(run, items) -> tuple[dict, dict | None] | None:
    """The saved bundle of `run` measured on the dataset's test split (items with split ==
    "test": a test/ folder or a split column, never trained on, nor used to choose the best
    epoch or the thresholds, so the honest figure).

    Returns (figures at the bundle's thresholds, figures at 0.5 for multi-label models or None),
    or None when there is no test split, or it cannot be measured (said on stderr: the run is
    still complete with its validation figures). The bundle is loaded afresh: fit's threshold
    search rewrites model.json after its first load.
    """
    import sys

    from ..errors import UsageError
    from .metrics import multi_label
    from .predict import Predictor

    test = items[items["split"] == "test"]
    if not len(test):
        return None
    try:
        predictor = Predictor(run)
        m, probs, y = measure(predictor, test)   # as its spec says
    except UsageError as e:
        print(f"warning: the test split was not measured: {e}", file=sys.stderr)
        return None
    meta = predictor.meta
    return m, (multi_label(probs, y, meta.classes, 0.5) if meta.multi_label else None)
