"""k-fold cross-validation: `clfapp fit DATA --folds K` (train.folds).

The training split (the dataset's own valid/ and test/ items, or the hash split's, stay out)
is cut into K disjoint folds (data/splits.py `kfold`: stratified and hash-stable for
single-label, iterative stratification for multi-label). Fold k's model is an ordinary run,
trained by `train.fit` on the other K-1 folds with fold k as its validation split:

```
RUN/
  config.toml      the job's config (train.folds = K)
  folds.csv        path, label(s), split, fold (1..K for training items, empty for the others)
  fold-1/ ... fold-K/   each a run folder of its own: splits.csv (its held-out fold "valid",
                   the other folds "train", the dataset's validation and test items "test"),
                   model/, metrics.json, report.md, checkpoint while it trains
  oof.csv          path, split, label (labels), one probability column per class: every
                   training image once, predicted by the fold model that never trained on it
                   (as shipped: Predictor(fold) runs its inference spec); then the dataset's
                   valid/test items, predicted by the fold ensemble
  ensemble.json, members/fold-k/, splits.csv   the K fold models as a soft-vote ensemble
  metrics.json, report.md, report.html   each fold's figures, their mean and std, and the
                   out-of-fold figures over all training images (the estimate)
```

`clfapp fit --resume RUN` keeps the folds that finished, resumes the interrupted one from its
checkpoint (train/resume.py) and trains the rest. train.budget covers the whole job: each fold
gets an equal share of what is left when it starts.

The dataset's validation items are in no fold: no fold model trained on them nor chose its best
epoch on them, so they (and the test split) are where the fold ensemble is measured
(`clfapp evaluate RUN` takes them from RUN/splits.csv), never a fold's held-out items.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsageError

FOLDS = "folds.csv"
OOF = "oof.csv"


def is_kfold(folder: Path) -> bool:
    """A k-fold run folder (made by `fit --folds`) holds folds.csv."""
    return (Path(folder) / FOLDS).is_file()


def fold_dir(folder: Path, k: int) -> Path:
    return Path(folder) / f"fold-{k}"


@dataclass
class Plan:
    items: pd.DataFrame    # path (absolute), label or labels, split, fold (1..K; 0 = in no fold)
    k: int
    root: Path
    multi_label: bool


@dataclass
class KFoldResult:
    folder: Path
    metrics: dict
    seconds: float
    stopped: str = ""     # "" or how the interrupted fold stopped (interrupted, terminated)
    fold: int = 0         # the fold that stopped


def plan(cfg) -> Plan:
    """Scan and split the data (no image decoded) and assign each training item its fold;
    UsageError when K is more than the training images (of the smallest class)."""
    from .. import data
    from ..data import splits

    k = cfg.train.folds
    used, tests = data.split_items(cfg)
    items = pd.concat([used, tests], ignore_index=True)
    train = (items["split"] == "train").to_numpy()
    root = data.dataset_root(cfg.data)
    keys = splits.split_keys(items.loc[train, "path"], root)
    multi = data.is_multi_label(items)
    if multi:
        if train.sum() < k:
            raise UsageError(f"--folds {k} is more than the {int(train.sum())} training images")
        classes = data.classes_of(items, cfg.data.label_delim)
        y = data.label_matrix(items.loc[train, "labels"], classes, cfg.data.label_delim)
        f = splits.kfold(None, keys, k, cfg.data.seed, y=y)
    else:
        counts = items.loc[train, "label"].value_counts()
        small, n = str(counts.idxmin()), int(counts.min())
        if n < k:
            raise UsageError(f"--folds {k} is more than the {n} training image(s) of class "
                             f"{small!r}: each fold needs every class; use --folds "
                             + (f"{n} or fewer" if n >= 2 else "with more images of it"))
        f = splits.kfold(items.loc[train, "label"].reset_index(drop=True), keys, k, cfg.data.seed)
    fold = np.zeros(len(items), dtype=int)
    fold[train] = f + 1
    items["fold"] = fold
    return Plan(items, k, root, multi)


def _read_plan(folder: Path, cfg) -> Plan:
    """The fold assignment RUN/folds.csv recorded (a resumed job never recomputes it)."""
    from .. import data
    from ..data import splits

    items = splits.read(folder / FOLDS)
    items["fold"] = items["fold"].replace("", "0").astype(int)
    return Plan(items, cfg.train.folds, data.dataset_root(cfg.data), "labels" in items.columns)


def _fold_items(p: Plan, k: int) -> pd.DataFrame:
    """Every item with fold k's split: its fold valid, the other folds train, the rest test."""
    out = p.items.drop(columns="fold").copy()
    out["split"] = np.where(p.items["fold"] == k, "valid",
                            np.where(p.items["fold"] > 0, "train", "test"))
    return out


def fit(cfg, folder: Path, p: Plan | None = None, started: float | None = None) -> KFoldResult:
    """Train (or, for `--resume`, finish) the K folds of `folder`, then write oof.csv, the
    ensemble and the report. `p`: the plan of a new job (None: read folds.csv)."""
    from .. import config
    from ..data import splits
    from . import checkpoint, resume as resuming
    from .. import train

    started = time.perf_counter() if started is None else started
    folder = Path(folder)
    if p is not None:
        (folder / "config.toml").write_text(config.dumps(cfg))
        splits.write(p.items, folder / FOLDS, p.root)
    else:
        p = _read_plan(folder, cfg)
    total = config.budget_seconds(cfg.train.budget)
    done_before = 0.0    # seconds the folds finished by earlier commands took (--resume); the
    # time of this command, the folds it trains included, counts from `started`
    for k in range(1, p.k + 1):
        here = fold_dir(folder, k)
        state = checkpoint.state_of(here) if here.is_dir() else "none"
        if state == "finished":
            print(f"fold {k}/{p.k}: finished earlier, kept", flush=True)
            done_before += _seconds(here)
            continue
        print(f"\n== fold {k}/{p.k} ==", flush=True)
        if state == "checkpoint":
            result = resuming.resume(here, time.perf_counter())
        else:
            shutil.rmtree(here, ignore_errors=True)   # never finished an epoch: from the start
            here.mkdir(parents=True)
            splits.write(_fold_items(p, k), here / splits.FILE, p.root)
            train_cfg = replace(cfg.train, folds=0)
            if total:
                left = total - done_before - (time.perf_counter() - started)
                share = max(left * 0.95, 1.0) / (p.k - k + 1)   # 5 %: oof.csv and the ensemble
                train_cfg = replace(train_cfg, budget=f"{share:.0f}")
            fold_cfg = replace(cfg, train=train_cfg,
                               data=replace(cfg.data, splits_from=str(here / splits.FILE)))
            result = train.fit(fold_cfg, here, started=time.perf_counter(), checkpoints=True)
        if result.stopped in ("interrupted", "terminated") or not result.metrics:
            return KFoldResult(folder, {}, time.perf_counter() - started,
                               result.stopped or "interrupted", k)
    return KFoldResult(folder, finish(folder, p), time.perf_counter() - started)


def _seconds(run: Path) -> float:
    try:
        return float(json.loads((run / "metrics.json").read_text()).get("seconds", 0.0))
    except (OSError, ValueError, TypeError):
        return 0.0


def finish(folder: Path, p: Plan) -> dict:
    """oof.csv, the fold ensemble, metrics.json and the report of a job whose folds all
    finished."""
    from ..infer import evaluate
    from ..infer.predict import Predictor
    from ..infer.ensemble import EnsemblePredictor
    from ..data import splits

    keys = _keys(p.multi_label)
    label_col = "labels" if p.multi_label else "label"
    from ..models.decisions import decision_thresholds

    frames, figures, all_probs, all_rows, all_thresholds = [], [], [], [], []
    classes = None
    for k in range(1, p.k + 1):
        here = fold_dir(folder, k)
        predictor = Predictor(here)
        classes = list(predictor.meta.classes)
        rows = splits.read(here / splits.FILE)
        rows = rows[rows["split"] == "valid"].reset_index(drop=True)
        probs, kept = predictor.probabilities(rows["path"].tolist(), progress=False)
        rows = rows.iloc[kept].reset_index(drop=True)
        m, _ = evaluate.score(probs, rows, predictor.meta)
        figures.append(dict(fold=k, n=int(len(rows)), **{key: m.get(key) for key in keys}))
        print(f"fold {k}: " + "  ".join(f"{key} {_fmt(m.get(key))}" for key in keys)
              + f"  (n={len(rows)}, its held-out fold)", flush=True)
        all_probs.append(probs)
        all_thresholds.append(np.broadcast_to(decision_thresholds(predictor.meta), probs.shape))
        all_rows.append(rows)
        frames.append(_oof_frame(rows.assign(split="train"), probs, classes, label_col))
    write_ensemble(folder, p, classes)
    others = p.items[p.items["fold"] == 0].reset_index(drop=True)
    ens_figures = {}
    if len(others):
        ens = EnsemblePredictor(folder)
        probs, kept = ens.probabilities(others["path"].tolist(), progress=False)
        others = others.iloc[kept].reset_index(drop=True)
        frames.append(_oof_frame(others, probs, classes, label_col))
        for split in ("valid", "test"):
            on = (others["split"] == split).to_numpy()
            if on.any():
                m, _ = evaluate.score(probs[on], others[on], ens.meta)
                ens_figures[split] = {"n": int(on.sum()), **{key: m.get(key) for key in keys}}
    oof = pd.concat(frames, ignore_index=True)
    oof.to_csv(folder / OOF, index=False)
    rows = pd.concat(all_rows, ignore_index=True)
    probs = np.concatenate(all_probs)
    from .. import data
    if p.multi_label:
        y = data.label_matrix(rows["labels"], classes, _delim(folder))
        m = pooled_multilabel(probs, np.concatenate(all_thresholds), y, classes)
    else:
        y = data.class_indices(rows["label"], classes)
        m = evaluate.metrics(probs, y, classes)
    table = {key: [f[key] for f in figures if f[key] is not None] for key in keys}
    mean = {key: float(np.mean(v)) for key, v in table.items() if v}
    std = {key: float(np.std(v)) for key, v in table.items() if v}
    note = ("out-of-fold predictions of the training split (each image by the fold model that "
            "never trained on it" + (", at its thresholds" if p.multi_label else "") + ")")
    m = dict(m, k=p.k, folds=figures, mean=mean, std=std, split="oof", split_note=note,
             ensemble=ens_figures,
             seconds=round(sum(_seconds(fold_dir(folder, k)) for k in range(1, p.k + 1)), 1))
    _report(folder, m, classes, p, keys)
    return m


def pooled_multilabel(probs: np.ndarray, thresholds: np.ndarray, y: np.ndarray,
                      classes: list) -> dict:
    """Multi-label figures of out-of-fold probabilities where each row is decided at its own
    fold model's thresholds (`thresholds`, N x L): the decisions from probabilities mapped
    monotonically so that each row's threshold lands on 0.5, the ranking figures (mAP, ROC
    AUC, per-label AP) from the probabilities themselves."""
    from ..infer import evaluate

    t = np.asarray(thresholds, dtype=float)
    shifted = np.where(probs >= t, 0.5 + 0.5 * (probs - t) / np.maximum(1 - t, 1e-12),
                       0.5 * probs / np.maximum(t, 1e-12))
    m = evaluate.multilabel_metrics(shifted, y, classes, 0.5)
    raw = evaluate.multilabel_metrics(probs, y, classes, 0.5)
    m["map"], m["roc_auc_macro"] = raw["map"], raw["roc_auc_macro"]
    mean_t = t.mean(axis=0) if len(t) else np.full(len(classes), 0.5)
    m["thresholds"] = [float(x) for x in mean_t]
    for j, c in enumerate(classes):
        m["per_label"][c].update(ap=raw["per_label"][c]["ap"], threshold=float(mean_t[j]))
    return m


def _keys(multi_label: bool) -> tuple:
    from .. import report
    return tuple(k for k in (report.MULTI_KEYS if multi_label else report.SINGLE_KEYS) if k != "n")


def _delim(folder: Path) -> str:
    from ..infer.ensemble_meta import read_meta
    return read_meta(folder).label_delim


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _oof_frame(rows: pd.DataFrame, probs: np.ndarray, classes: list, label_col: str) -> pd.DataFrame:
    out = pd.DataFrame({"path": rows["path"].to_numpy(), "split": rows["split"].to_numpy(),
                        label_col: rows[label_col].fillna("").to_numpy()})
    return pd.concat([out, pd.DataFrame(probs, columns=[str(c) for c in classes])], axis=1)


def write_ensemble(folder: Path, p: Plan, classes: list) -> None:
    """RUN as a soft-vote ensemble of its fold models (infer/ensemble.py's layout): members/
    fold-k/ with the fold's bundle (hard links where the file system allows, else copies), its
    splits.csv and config.toml; RUN/splits.csv lists the training items as train (every one
    trained K-1 of the K members) and the dataset's validation and test items as they are."""
    from datetime import datetime, timezone

    from ..data import splits
    from ..infer import bundle, spec
    from ..infer.ensemble_meta import MEMBERS, EnsembleMeta, write_meta

    names, metas = [], []
    for k in range(1, p.k + 1):
        src, name = fold_dir(folder, k), f"fold-{k}"
        target = folder / MEMBERS / name
        shutil.rmtree(target, ignore_errors=True)
        (target / "model").mkdir(parents=True)
        for f in (bundle.WEIGHTS, bundle.META):
            _link_or_copy(src / "model" / f, target / "model" / f)
        for record in (splits.FILE, "config.toml"):
            shutil.copy2(src / record, target / record)
        names.append(name)
        metas.append(bundle.read_meta(src))
    items = p.items.drop(columns="fold")
    splits.write(items, folder / splits.FILE, p.root)
    first = metas[0]
    inference = spec.InferenceSpec(tta=all(m.inference.tta for m in metas), chosen_by="members",
                                   trained_on=spec.TRAIN,
                                   split_digest=spec.split_digest(folder / splits.FILE))
    write_meta(folder, EnsembleMeta(
        vote="soft", weights=[1 / p.k] * p.k, members=names, classes=list(classes),
        multi_label=first.multi_label, label_delim=first.label_delim, data_root=str(p.root),
        inference=inference, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=bundle.library_versions()))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _report(folder: Path, m: dict, classes: list, p: Plan, keys: tuple) -> None:
    from .. import report

    fmt = report.fmt
    rows = [f"| fold | n | {' | '.join(keys)} |", "|---|---|" + "---|" * len(keys)]
    rows += [f"| {f['fold']} | {f['n']} | " + " | ".join(fmt(f[k]) for k in keys) + " |"
             for f in m["folds"]]
    rows.append("| mean ± std | | " + " | ".join(
        f"{m['mean'][k]:.4f} ± {m['std'][k]:.4f}" if k in m["mean"] else "n/a" for k in keys) + " |")
    n = sum(f["n"] for f in m["folds"])
    extra = [f"{p.k}-fold cross-validation of the training split ({n} images): fold k's model "
             f"(fold-k/) trained on the other {p.k - 1} folds and chose its best epoch on fold k. "
             "Each fold's figures on its held-out fold, then their mean ± std (population std "
             "over the folds):", "", *rows, ""]
    for split, e in m["ensemble"].items():
        extra += [f"The fold ensemble (soft vote of the {p.k} fold models, this folder) on the "
                  f"dataset's {split} split ({e['n']} images, in no fold): "
                  + ", ".join(f"{k} {fmt(e.get(k))}" for k in keys) + ".", ""]
    extra += ["## Out-of-fold figures (the estimate)", "",
              f"Over every training image, each predicted by the fold model that never trained "
              f"on it ({OOF})" + (", decided at that model's thresholds (the per-label "
                                  "threshold column: their mean over the folds)"
                                  if p.multi_label else "") + ":", ""]
    title = f"Cross-validation {folder.name}"
    if p.multi_label:
        report.write_multilabel_metrics(folder, m, title, extra=extra)
    else:
        report.write_metrics(folder, m, classes, title, extra=extra)
