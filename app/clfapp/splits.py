"""Train/valid splits of a labelled item table (column `label`, optional folder `split`)."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from .errors import UsageError


def stratified(labels: pd.Series, valid_pct: float, seed: int) -> np.ndarray:
    """A boolean mask of validation items: `valid_pct` of every class, at least one (seeded).

    Each class with n >= 2 images gives round(valid_pct * n) of them, clipped to 1..n-1, so
    small classes are never missing from validation. Single-image classes stay in training,
    with a warning.
    """
    rng = np.random.default_rng(seed)
    values = labels.to_numpy()
    mask = np.zeros(len(values), dtype=bool)
    singles = []
    for label in sorted(pd.unique(values), key=str):
        idx = np.flatnonzero(values == label)
        if len(idx) < 2:
            singles.append(str(label))
            continue
        k = min(len(idx) - 1, max(1, int(round(valid_pct * len(idx)))))
        mask[rng.permutation(idx)[:k]] = True
    if singles:
        print(f"warning: {len(singles)} class(es) have one image and stay in training: "
              f"{', '.join(singles[:5])}", file=sys.stderr)
    return mask


def iterative(y: np.ndarray, valid_pct: float, seed: int, order: int = 2) -> np.ndarray:
    """A boolean mask of validation items by iterative stratification (Sechidis et al. 2011).

    `y` is the N x L 0/1 label matrix; label (and label-pair, order 2) frequencies come out
    nearly equal in both parts. scikit-multilearn draws from numpy's global generator, so it
    is seeded here and the caller's generator state is put back afterwards.
    """
    from skmultilearn.model_selection import IterativeStratification

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        splitter = IterativeStratification(n_splits=2, order=order,
                                           sample_distribution_per_fold=[valid_pct, 1 - valid_pct])
        _, valid = next(splitter.split(np.zeros((len(y), 1)), np.asarray(y, dtype=int)))
    finally:
        np.random.set_state(state)
    mask = np.zeros(len(y), dtype=bool)
    mask[valid] = True
    return mask


def random(n: int, valid_pct: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: max(1, int(round(valid_pct * n)))]] = True
    return mask


def assign(items: pd.DataFrame, method: str, valid_pct: float, seed: int,
           y: np.ndarray | None = None) -> pd.DataFrame:
    """Fill `items.split` with train/valid (test items, from a test/ folder, stay test).

    method auto: the dataset's own valid folder when it has one, else stratified, or iterative
    when `y` (the multi-label matrix, rows aligned with `items`) is given.
    """
    items = items.copy()
    has_folders = items["split"].notna().any()
    has_valid = (items["split"] == "valid").any()
    if method == "folder" and not has_valid:
        raise UsageError("data.split = 'folder' but the dataset has no valid/ (val/, validation/) "
                         "folder; use split = 'stratified'")
    if method in ("auto", "folder") and has_valid:
        items["split"] = items["split"].fillna("train")
        return items
    pool = items["split"] != "test" if has_folders else pd.Series(True, index=items.index)
    sub = items[pool]
    if method == "random":
        mask = random(len(sub), valid_pct, seed)
    elif y is not None:
        mask = iterative(y[pool.to_numpy()], valid_pct, seed)
    elif method == "iterative":
        raise UsageError("data.split = 'iterative' is for multi-label data; use 'stratified'")
    else:
        mask = stratified(sub["label"].reset_index(drop=True), valid_pct, seed)
    items.loc[pool, "split"] = np.where(mask, "valid", "train")
    return items


def label_frequencies(y: np.ndarray, split: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Each label's frequency (% of images) in each split: label x split."""
    parts = [p for p in ("train", "valid", "test") if (split == p).any()]
    return pd.DataFrame({p: y[split == p].mean(axis=0) * 100 for p in parts}, index=classes)
