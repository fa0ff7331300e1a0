"""Train/valid splits of a labelled item table (column `label`, optional folder `split`).

Single-label splits (`stratified`, `random`) decide each item by a hash of its path relative to
the dataset root and the seed, not by a seeded shuffle: with a shuffle, adding one image to a
growing dataset reshuffles everything and moves earlier validation images into training (a leak
across runs that no metric shows). With the hash, an item's split depends only on its own name.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsageError


def hash_units(keys, seed: int) -> np.ndarray:
    """A number in [0, 1) per key, fixed by (seed, key) alone: u = sha1("seed:key")[:12] / 16**12.

    sha1 rather than Python's hash(): the same on every machine and in every process
    (PYTHONHASHSEED randomises str hashes).
    """
    return np.array([int(hashlib.sha1(f"{seed}:{k}".encode()).hexdigest()[:12], 16) / 16**12
                     for k in keys], dtype=np.float64).reshape(-1)


def _hash_mask(u: np.ndarray, valid_pct: float) -> np.ndarray:
    """Valid iff u < valid_pct, then at least one valid and (n >= 2) at least one train item.

    The fix-ups move the fewest items possible (the lowest u into valid, the highest u into
    train), so they touch only groups where the hash rule alone left a side empty.
    """
    mask = u < valid_pct
    if len(u) and not mask.any():
        mask[np.argmin(u)] = True
    if len(u) >= 2 and mask.all():
        mask[np.argmax(u)] = False
    return mask


def stratified(labels: pd.Series, keys, valid_pct: float, seed: int) -> np.ndarray:
    """A boolean mask of validation items, decided per item by a hash of (seed, key), per class.

    `keys` (aligned with `labels`) name the items stably: their paths relative to the dataset
    root, so that moving the dataset folder keeps the split. An item is valid when its
    `hash_units` value is below `valid_pct`; each class therefore gets valid_pct of its images
    *on average*, not exactly round(valid_pct * n) (e.g. a class of 10 at 0.2 may give 1, 2 or
    3). That is the price of stability: adding images (or a class) never moves an image that
    was there before between train and valid, because each item's decision is its own.

    Every class with n >= 2 images keeps at least one validation and one training image (when
    the hash gives none, the lowest-hash item goes to valid; when it gives all, the highest-hash
    one goes to train), so small classes are never missing from validation. Single-image classes
    stay in training, with a warning.
    """
    return stratified_parts(labels, keys, valid_pct, 0.0, seed) == "valid"


def iterative(y: np.ndarray, valid_pct: float, seed: int, order: int = 2) -> np.ndarray:
    """A boolean mask of validation items by iterative stratification (Sechidis et al. 2011).

    `y` is the N x L 0/1 label matrix; label (and label-pair, order 2) frequencies come out
    nearly equal in both parts. Unlike the single-label splits this one is not stable when
    items are added: it balances label combinations over the whole set, so every item's
    place depends on all the others. scikit-multilearn draws from numpy's global generator, so it
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


def random(keys, valid_pct: float, seed: int) -> np.ndarray:
    """A boolean mask of validation items by a hash of (seed, key), ignoring labels.

    valid_pct on average, stable when items are added (see `stratified`); at least one valid
    item, and at least one training item when there are two or more.
    """
    return _hash_mask(hash_units(keys, seed), valid_pct)


def split_keys(paths, root: Path | str | None) -> list[str]:
    """The names the split hashes: each path relative to `root`, '/'-separated.

    Relative, so the split survives moving or copying the dataset folder; '/'-separated, so it
    is the same on Windows. A path outside `root` (an absolute file name in a label CSV) keeps
    its full path. Without a root, the paths are used as given.
    """
    if root is None:
        return [Path(p).as_posix() for p in paths]
    root = Path(root)
    keys = []
    for p in paths:
        try:
            keys.append(Path(p).relative_to(root).as_posix())
        except ValueError:
            keys.append(Path(p).as_posix())
    return keys


def _hash_parts(u: np.ndarray, valid_pct: float, test_pct: float) -> np.ndarray:
    """train/valid/test of one group (a class, or everything for `random`) by the hash rule:
    u < test_pct → test, u < test_pct + valid_pct → valid, else train.

    The guarantees of `_hash_mask` come first: a group of n >= 2 keeps at least one valid and
    one train item. A group of fewer than 3 items gets no test item at all (it is split as with
    test_pct = 0); in a larger group whose hash leaves fewer than two non-test items, the
    test items with the highest u go back until two remain. Then the valid/train fix-ups of
    `_hash_mask` apply to the non-test items (lowest u into valid, highest into train). With
    test_pct = 0 this is exactly `_hash_mask`.
    """
    out = np.full(len(u), "train", dtype=object)
    if len(u) < 3 or test_pct <= 0:
        out[_hash_mask(u, valid_pct)] = "valid"
        return out
    test = u < test_pct
    while (~test).sum() < 2:
        test[np.flatnonzero(test)[np.argmax(u[test])]] = False
    rest = np.flatnonzero(~test)
    valid = _hash_mask(u[rest], test_pct + valid_pct)   # the valid band sits above test's
    out[test] = "test"
    out[rest[valid]] = "valid"
    return out


def stratified_parts(labels: pd.Series, keys, valid_pct: float, test_pct: float,
                     seed: int) -> np.ndarray:
    """train/valid/test per item, by `_hash_parts` within each class (see `stratified`; with
    test_pct = 0 the same split). Single-image classes stay in training."""
    values = labels.to_numpy()
    u = hash_units(keys, seed)
    if len(u) != len(values):
        raise ValueError(f"{len(values)} labels but {len(u)} keys")
    out = np.full(len(values), "train", dtype=object)
    singles = []
    for label in sorted(pd.unique(values), key=str):
        idx = np.flatnonzero(values == label)
        if len(idx) < 2:
            singles.append(str(label))
            continue
        out[idx] = _hash_parts(u[idx], valid_pct, test_pct)
    if singles:
        print(f"warning: {len(singles)} class(es) have one image and stay in training: "
              f"{', '.join(singles[:5])}", file=sys.stderr)
    return out


def iterative_parts(y: np.ndarray, valid_pct: float, test_pct: float, seed: int) -> np.ndarray:
    """train/valid/test by iterative stratification, seeded: test_pct of the items split off
    first, then valid_pct (of the whole) from the rest. Not stable when items are added."""
    out = np.full(len(y), "train", dtype=object)
    rest = np.arange(len(y))
    if test_pct > 0:
        test = iterative(y, test_pct, seed)
        out[test] = "test"
        rest = np.flatnonzero(~test)
    valid = iterative(np.asarray(y)[rest], valid_pct / (1 - test_pct), seed)
    out[rest[valid]] = "valid"
    return out


def assign(items: pd.DataFrame, method: str, valid_pct: float, seed: int,
           y: np.ndarray | None = None, root: Path | str | None = None,
           test_pct: float = 0.0) -> pd.DataFrame:
    """Fill `items.split` with train/valid, and test when `test_pct` > 0 (test items from a
    test/ folder or split column stay test).

    method auto: the dataset's own valid folder when it has one, else stratified, or iterative
    when `y` (the multi-label matrix, rows aligned with `items`) is given. `root` is the
    dataset folder: the hash splits name items by their path relative to it (`split_keys`), so
    pass it whenever `items.path` is absolute, or moving the dataset changes the split.
    `test_pct` is for datasets that give no split of their own: with a test or valid folder
    (or split column) it is refused, not silently added to.
    """
    items = items.copy()
    has_folders = items["split"].notna().any()
    has_valid = (items["split"] == "valid").any()
    if test_pct > 0 and has_folders:
        given = "/".join(sorted(set(items["split"].dropna())))
        raise UsageError(f"data.test_pct = {test_pct} but the dataset gives its own split "
                         f"({given}); drop data.test_pct (a test/ folder is the test split)")
    if method == "folder" and not has_valid:
        raise UsageError("data.split = 'folder' but the dataset has no valid/ (val/, validation/) "
                         "folder; use split = 'stratified'")
    if method in ("auto", "folder") and has_valid:
        items["split"] = items["split"].fillna("train")
        return items
    pool = items["split"] != "test" if has_folders else pd.Series(True, index=items.index)
    sub = items[pool]
    keys = split_keys(sub["path"], root)
    if method == "random":
        parts = _hash_parts(hash_units(keys, seed), valid_pct, test_pct)
    elif y is not None:
        parts = iterative_parts(y[pool.to_numpy()], valid_pct, test_pct, seed)
    elif method == "iterative":
        raise UsageError("data.split = 'iterative' is for multi-label data; use 'stratified'")
    else:
        parts = stratified_parts(sub["label"].reset_index(drop=True), keys, valid_pct, test_pct, seed)
    items.loc[pool, "split"] = parts
    return items


FILE = "splits.csv"


def write(items: pd.DataFrame, csv: Path | str, root: Path | str) -> None:
    """Write `items` (path, label, split, ...) as a splits.csv whose paths are relative to the
    dataset root `root`, '/'-separated, with a last column `root` (that folder, absolute, on
    every row: the file is read whole by anyone, path = root/path). `read` puts them back
    under the root (and refuses any that would leave it)."""
    import os

    out = items.copy()
    out["path"] = split_keys(out["path"], root)
    out["root"] = str(Path(root).expanduser().absolute())
    csv = Path(csv)
    tmp = csv.with_name(f"{csv.name}.{os.getpid()}.tmp")   # each process its own (several ranks)
    out.to_csv(tmp, index=False)
    os.replace(tmp, csv)


def record_root(csv: Path | str) -> Path:
    """The dataset folder a splits.csv's paths are relative to, and confined to: the dataset
    root of the config.toml beside it (a run folder, an ensemble member), the data_root of the
    ensemble.json beside it (else its first member's), else the CSV's own folder."""
    import json

    from ..config import from_file

    folder = Path(csv).absolute().parent
    config = folder / "config.toml"
    if not config.is_file() and (folder / "ensemble.json").is_file():
        try:
            meta = json.loads((folder / "ensemble.json").read_text())
            root, first = meta.get("data_root"), meta["members"][0]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            root = first = None
        if isinstance(root, str) and Path(root).is_absolute():
            return Path(root)
        if isinstance(first, str) and "/" not in first and "\\" not in first and first not in (".", ".."):
            config = folder / "members" / first / "config.toml"
    if config.is_file():
        try:
            path = from_file(config).data.path
        except (UsageError, OSError, ValueError):
            path = ""
        if path:
            root = Path(path).expanduser()
            if not root.is_absolute():
                # data.path as typed, relative to where fit ran: here, or the folder holding
                # runs/ (a run is runs/NAME; an ensemble member runs/ENS/members/NAME)
                homes = [Path.cwd(), *config.absolute().parents[1:5]]
                root = next((h / root for h in homes if (h / root).exists()), Path.cwd() / root)
            root = root.absolute()
            return root.parent if root.is_file() or root.suffix.lower() == ".csv" else root
    return folder


def _inside(path: str, root: str) -> bool:
    import os
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:    # another drive (Windows)
        return False


def read(csv: Path | str, root: Path | str | None = None) -> pd.DataFrame:
    """A splits.csv (path, split, ...; strings, "" for empty cells) with each path absolute:
    a relative one joined to the dataset root (`root`, else the file's `root` column, else
    `record_root`), an absolute one (runs written before paths were relative) kept. A path that leaves the root (`../../etc/x`, an
    absolute file name elsewhere) is refused with one line: like a label CSV, a recorded split
    must not point clfapp at other files on the machine (symlinks inside the folder are still
    followed, as when the dataset is scanned)."""
    import os

    csv = Path(csv)
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UsageError(f"{csv} is empty; it needs a header (path,split,...) and one row per image")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{csv} is not a valid CSV: {str(e).strip().splitlines()[0]}")
    if "path" not in df.columns:
        return df
    if root is None and "root" in df.columns and len(df):
        given = set(df["root"])
        if len(given) != 1 or not os.path.isabs(next(iter(given))):
            raise UsageError(f"{csv}: its root column must name one absolute folder on every row")
        root = next(iter(given))
    df = df.drop(columns="root", errors="ignore")
    base = os.path.normpath(str(Path(root if root is not None else record_root(csv))
                                .expanduser().absolute()))
    paths = [os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))
             for p in df["path"]]
    outside = [raw for raw, p in zip(df["path"], paths) if not _inside(p, base)]
    if outside:
        raise UsageError(f"{csv} names {len(outside)} file(s) outside the dataset folder {base}, "
                         f"e.g. {outside[0]!r}; a splits.csv lists only that folder's images")
    df["path"] = paths
    return df


def recorded(source: str | Path, root: Path | str | None = None) -> pd.Series:
    """The split of every item a run recorded: absolute path → train/valid/test, from a run
    folder's splits.csv (or the CSV itself; `read`: paths confined to `root` or the record's
    dataset folder)."""
    path = Path(source)
    csv = path / FILE if path.is_dir() else path
    if not csv.is_file():
        raise UsageError(f"data.splits_from: {csv} not found (give a run folder holding "
                         "splits.csv, or the CSV itself)")
    df = read(csv, root)
    if not {"path", "split"} <= set(df.columns):
        raise UsageError(f"data.splits_from: {csv} has no path and split columns")
    return df.drop_duplicates("path").set_index("path")["split"]


def reuse(items: pd.DataFrame, source: str | Path, root: Path | str | None = None) -> pd.DataFrame:
    """`items` with the train/valid/test assignment recorded in `source` wherever it lists an
    item (matched by absolute path); the others keep the split `assign` gave them (said on
    stderr). So a second model (an ensemble member, a distilled student) validates on exactly
    the images the first one never trained on. `root`: the dataset folder of `items`, which
    the record's relative paths are joined to."""
    import os

    given = recorded(source, root)   # normalised absolute paths
    items = items.copy()
    found = items["path"].map(lambda p: given.get(os.path.normpath(p)))
    listed = found.notna() & found.isin(["train", "valid", "test"])
    if not listed.any():
        raise UsageError(f"data.splits_from: none of this dataset's images is listed in {source}; "
                         "was that run trained on other data?")
    items.loc[listed, "split"] = found[listed]
    if (~listed).any():
        print(f"note: {int((~listed).sum())} image(s) not listed in {source} were split by the "
              "usual rule", file=sys.stderr)
    return items


def label_frequencies(y: np.ndarray, split: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Each label's frequency (% of images) in each split: label x split."""
    parts = [p for p in ("train", "valid", "test") if (split == p).any()]
    return pd.DataFrame({p: y[split == p].mean(axis=0) * 100 for p in parts}, index=classes)


def _hash_folds(u: np.ndarray, k: int) -> np.ndarray:
    """Fold 0..k-1 of one group (a class) by the hash rule: fold = floor(u * k), so an item's
    fold depends on its own name alone. When that leaves a fold empty in a group of at least
    k items, the item nearest to that fold's band [f/k, (f+1)/k) moves there from the fullest
    fold (the fewest moves, as `_hash_mask` does), so every fold holds every class."""
    fold = np.minimum((u * k).astype(int), k - 1)
    if len(u) < k:
        return fold
    for f in range(k):
        if (fold == f).any():
            continue
        counts = np.bincount(fold, minlength=k)
        donor = np.flatnonzero(fold == int(np.argmax(counts)))
        centre = (f + 0.5) / k
        fold[donor[np.argmin(np.abs(u[donor] - centre))]] = f
    return fold


def kfold(labels: pd.Series | None, keys, k: int, seed: int,
          y: np.ndarray | None = None) -> np.ndarray:
    """Fold 0..k-1 of each item (rows aligned with `keys`), for k-fold cross-validation of the
    training split (train/kfold.py).

    Single-label (`labels`): stratified and stable like `stratified`: within each class, an
    item's fold is floor(u * k) of its own hash (`hash_units` of its key, with a seed of its own,
    "folds:SEED", so the folds do not follow the train/valid hash band), with the fewest moves
    needed so that a class of at least k items has one in every fold. Adding images never moves
    an earlier image to another fold, except where such a fix-up applies.

    Multi-label (`y`, the N x L 0/1 matrix): iterative stratification into k folds (scikit-
    multilearn, seeded as `iterative` is), not stable when items are added.
    """
    if y is not None:
        from skmultilearn.model_selection import IterativeStratification

        state = np.random.get_state()
        np.random.seed(seed)
        try:
            splitter = IterativeStratification(n_splits=k, order=2)
            out = np.full(len(y), -1, dtype=int)
            for f, (_, held) in enumerate(splitter.split(np.zeros((len(y), 1)), np.asarray(y, dtype=int))):
                out[held] = f
        finally:
            np.random.set_state(state)
        return out
    values = labels.to_numpy()
    u = hash_units(keys, f"folds:{seed}")
    out = np.zeros(len(values), dtype=int)
    for label in pd.unique(values):
        idx = np.flatnonzero(values == label)
        out[idx] = _hash_folds(u[idx], k)
    return out
