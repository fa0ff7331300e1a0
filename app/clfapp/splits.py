"""Train/valid splits of a labelled item table (column `label`, optional folder `split`)."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from .errors import UsageError


def stratified(labels: pd.Series, valid_pct: float, seed: int) -> np.ndarray:
    """A boolean mask of validation items, `valid_pct` of every class (seeded).

    Classes with a single item cannot be split; they stay in training, with a warning.
    """
    from sklearn.model_selection import train_test_split

    counts = labels.value_counts()
    singles = counts[counts < 2].index
    if len(singles):
        print(f"warning: {len(singles)} class(es) have one image and stay in training: "
              f"{', '.join(map(str, singles[:5]))}", file=sys.stderr)
    idx = np.flatnonzero(~labels.isin(singles).to_numpy())
    mask = np.zeros(len(labels), dtype=bool)
    if len(idx) == 0:
        return mask
    n_classes = labels.iloc[idx].nunique()
    n_valid = max(n_classes, int(round(valid_pct * len(idx))))
    if n_valid >= len(idx) - n_classes + 1:
        raise UsageError(f"too few images ({len(idx)}) to hold out one per class for validation; "
                         "add images or lower data.valid_pct")
    _, valid = train_test_split(idx, test_size=n_valid, random_state=seed,
                                stratify=labels.iloc[idx].to_numpy())
    mask[valid] = True
    return mask


def random(n: int, valid_pct: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: max(1, int(round(valid_pct * n)))]] = True
    return mask


def assign(items: pd.DataFrame, method: str, valid_pct: float, seed: int) -> pd.DataFrame:
    """Fill `items.split` with train/valid (test items, from a test/ folder, stay test).

    method auto: the dataset's own valid folder when it has one, else stratified.
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
    else:
        mask = stratified(sub["label"].reset_index(drop=True), valid_pct, seed)
    items.loc[pool, "split"] = np.where(mask, "valid", "train")
    return items
