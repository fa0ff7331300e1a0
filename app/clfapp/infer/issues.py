"""Data issues: label issues, near-duplicates and outliers of a data set, as one table.

  * Label issues come from out-of-fold probabilities (a `clfapp fit DATA --folds K` run's
    oof.csv: every training image predicted by the fold model that never saw it, valid/test
    images by the fold ensemble), judged by cleanlab's confident learning
    (`cleanlab.filter.find_label_issues`, ranked by `cleanlab.rank.get_label_quality_scores`;
    for multi-label data `cleanlab.multilabel_classification`'s find_label_issues and
    get_label_quality_scores, and its find_multilabel_issues_per_class to name the suspect
    labels). No rule of our own: Northcutt et al.'s method as cleanlab ships it.
  * Near-duplicates: infer/near_duplicates.py on every image of the data, splits mixed (a group
    across train/valid shows by its members' splits); the exact duplicates `data check` finds
    are in the groups too.
  * Outliers: infer/outliers.py (pretrained features, the mean distance to the nearest images)
    on every image; an image is flagged when its score stands out from the data set's own
    scores (OUTLIER_Z).

The table (`COLUMNS`) has one row per flagged image and kind: `score` is "how suspicious",
higher first, within each kind: for a label issue 1 - cleanlab's label quality (0..1), for a
near-duplicate the similarity to its closest copy (1 for identical files), for an outlier its
distance score. `given`/`suggested` are label texts (multi-label: the label set joined by the
data set's delimiter; the labels in `given` but not in `suggested` look wrong, those in
`suggested` but not in `given` look present); `group` ties the members of a duplicate set.

Nothing here writes beside the user's images: the outputs go where the caller says.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import label_matrix, split_labels
from ..errors import UsageError

COLUMNS = ["path", "split", "kind", "given", "suggested", "score", "group"]
KINDS = ("label", "near_duplicate", "outlier")
OOF = "oof.csv"
SPLIT_ORDER = {"train": 0, "valid": 1, "test": 2}

OUTLIER_Z = 4.5
"""An image is listed as an outlier when its score's modified z-score (the distance from the
median in units of 1.4826 x the median absolute deviation: Iglewicz and Hoaglin's robust rule,
3.5 their cut) is above this: a fixed share (the top 1 %) would list images in every data set,
clean ones included, and a fixed distance would not carry over between data sets whose images
are more or less alike."""


@dataclass
class OutOfFold:
    """oof.csv as read: the rows (path, split, given label text), their probabilities (N x C,
    columns in `classes` order) and whether the data is multi-label."""
    rows: pd.DataFrame
    probs: np.ndarray
    classes: list[str]
    multi_label: bool


def _key(path) -> str:
    return os.path.normpath(os.path.abspath(str(path)))


def read_oof(run: Path, items: pd.DataFrame, classes: list[str], multi_label: bool,
             delim: str = " ", root: Path | None = None) -> OutOfFold:
    """RUN/oof.csv checked against the data's `items` (path, label(s), split) and `classes`:
    a run of other data, other classes or other labels is a usage error naming the mismatch.
    A relative path in it is taken relative to the data's folder `root` (when given)."""
    csv = Path(run) / OOF
    if not csv.is_file():
        raise UsageError(f"{run} has no {OOF}; give --run RUN of a `clfapp fit DATA --folds K` run")
    try:
        df = pd.read_csv(csv, dtype={"path": str, "split": str, "label": str, "labels": str},
                         keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{csv} is not a readable CSV: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    given_col = "labels" if multi_label else "label"
    missing = [c for c in ("path", "split", given_col) if c not in df.columns]
    if missing:
        other = "label" if multi_label else "labels"
        why = (f"; it has a {other} column: it was made on {'single' if multi_label else 'multi'}"
               "-label data" if other in df.columns else "")
        raise UsageError(f"{csv} lacks the column(s) {', '.join(missing)}{why}")
    oof_classes = [c for c in df.columns if c not in ("path", "split", "label", "labels")]
    if sorted(oof_classes) != sorted(classes):
        extra = sorted(set(oof_classes) - set(classes))
        lacking = sorted(set(classes) - set(oof_classes))
        said = "; ".join(s for s in (f"not in the data: {', '.join(extra[:6])}" if extra else "",
                                     f"missing: {', '.join(lacking[:6])}" if lacking else "") if s)
        raise UsageError(f"{csv}'s classes do not match the data's ({said}); give the run of a "
                         "`clfapp fit DATA --folds K` on this data")
    try:
        probs = df[oof_classes].to_numpy(dtype=float)
    except ValueError:
        raise UsageError(f"{csv}: the class columns must hold probabilities (numbers)")
    if len(df) == 0:
        raise UsageError(f"{csv} has no rows")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise UsageError(f"{csv}: the class columns must hold probabilities between 0 and 1")
    keys = df["path"].map(lambda p: _key(Path(root) / p if root is not None and not Path(p).is_absolute() else p))
    if keys.duplicated().any():
        raise UsageError(f"{csv} lists {keys[keys.duplicated()].iloc[0]} more than once; "
                         "each image must appear once")
    known = dict(zip(items["path"].map(_key), items[given_col]))
    unknown = [p for p in keys if p not in known]
    if unknown:
        raise UsageError(f"{csv} names {len(unknown)} image(s) not in the data, e.g. {unknown[0]}; "
                         "give the run of a `clfapp fit DATA --folds K` on this data")

    def norm(text) -> str:
        return delim.join(sorted(split_labels(text, delim))) if multi_label else str(text)

    differ = [p for p, g in zip(keys, df[given_col]) if norm(g) != norm(known[p])]
    if differ:
        raise UsageError(f"{csv} was made with other labels than the data's now ({len(differ)} "
                         f"image(s) differ, e.g. {differ[0]}); run the k-fold fit again")
    rows = pd.DataFrame({"path": keys, "split": df["split"], "given": [known[p] for p in keys]})
    return OutOfFold(rows, probs, list(oof_classes), multi_label)


def label_issues(oof: OutOfFold, delim: str = " ") -> pd.DataFrame:
    """Rows (COLUMNS, kind "label") of the images cleanlab finds mislabelled, most suspicious
    first (score = 1 - cleanlab's label quality)."""
    probs, classes = oof.probs, oof.classes
    if oof.multi_label:
        return _multi_label_issues(oof, delim)
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[str(g)] for g in oof.rows["given"]])
    if len(classes) < 2 or len(y) < 2:
        return _empty()
    flagged = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    rows = [(oof.rows["path"].iloc[i], oof.rows["split"].iloc[i], "label", classes[y[i]],
             classes[int(np.argmax(probs[i]))], float(1 - quality[i]), "") for i in flagged]
    return _sorted(pd.DataFrame(rows, columns=COLUMNS))


def _multi_label_issues(oof: OutOfFold, delim: str) -> pd.DataFrame:
    from cleanlab.multilabel_classification import filter as mfilter
    from cleanlab.multilabel_classification import rank as mrank

    classes, probs = oof.classes, oof.probs
    y = label_matrix(oof.rows["given"], classes, delim)
    labels = [list(np.flatnonzero(r)) for r in y]
    if len(labels) < 2:
        return _empty()
    flagged = mfilter.find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = mrank.get_label_quality_scores(labels, probs)
    per_class = np.asarray(mfilter.find_multilabel_issues_per_class(labels, probs), dtype=bool)
    per_class_quality = mrank.get_label_quality_scores_per_class(labels, probs)
    rows = []
    for i in flagged:
        suspect = per_class[i].copy()
        if not suspect.any():   # flagged as a whole: its least trustworthy label, by cleanlab's score
            suspect[int(np.argmin(per_class_quality[i]))] = True
        suggested = y[i] ^ suspect
        rows.append((oof.rows["path"].iloc[i], oof.rows["split"].iloc[i], "label",
                     delim.join(c for c, on in zip(classes, y[i]) if on),
                     delim.join(c for c, on in zip(classes, suggested) if on),
                     float(1 - quality[i]), ""))
    return _sorted(pd.DataFrame(rows, columns=COLUMNS))


def duplicate_rows(result, items: pd.DataFrame, given_col: str) -> pd.DataFrame:
    """Rows (kind "near_duplicate") of the groups of a near_duplicates.Result: each member
    with its best similarity to another member, groups numbered by their highest score."""
    split = dict(zip(items["path"].map(_key), items["split"]))
    given = dict(zip(items["path"].map(_key), items[given_col]))
    best: dict = {}
    for p in result.pairs:
        for a in (p.a, p.b):
            best[_key(a)] = max(best.get(_key(a), -1.0), float(p.score))
    groups = [[_key(m) for m in g] for g in result.groups]
    groups.sort(key=lambda g: (-max(best.get(m, 0.0) for m in g), g[0]))
    rows = []
    for n, g in enumerate(groups, 1):
        members = sorted(g, key=lambda m: (-best.get(m, 0.0), SPLIT_ORDER.get(split.get(m), 3), m))
        rows += [(m, split.get(m, ""), "near_duplicate", given.get(m, ""), "",
                  best.get(m, 0.0), f"dup-{n}") for m in members]
    return pd.DataFrame(rows, columns=COLUMNS)


def outlier_rows(table: pd.DataFrame, items: pd.DataFrame, given_col: str,
                 z: float = OUTLIER_Z) -> pd.DataFrame:
    """Rows (kind "outlier") of the images of an outliers.find table whose score stands out
    (see OUTLIER_Z), highest score first."""
    if len(table) < 3:
        return _empty()
    s = table["score"].to_numpy(dtype=float)
    med = np.median(s)
    mad = np.median(np.abs(s - med))
    if mad <= 0:
        return _empty()
    out = table[(s - med) / (1.4826 * mad) > z]
    split = dict(zip(items["path"].map(_key), items["split"]))
    given = dict(zip(items["path"].map(_key), items[given_col]))
    rows = [(_key(p), split.get(_key(p), ""), "outlier", given.get(_key(p), ""), "", float(sc), "")
            for p, sc in zip(out["path"], out["score"])]
    return _sorted(pd.DataFrame(rows, columns=COLUMNS))


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=COLUMNS)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def combine(*parts: pd.DataFrame) -> pd.DataFrame:
    """One table: label issues, then near-duplicates, then outliers, each in its own order."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty()
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def write_table(path: Path, table: pd.DataFrame) -> None:
    """issues.csv, through a .part file renamed at the end."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    table.to_csv(part, index=False, float_format="%.4f")
    os.replace(part, path)


# ---- the cleaned label file ---------------------------------------------------------------

FIXES = ("drop", "relabel")


def copies_to_drop(pairs, split: dict) -> set:
    """The extra copies among near-duplicate `pairs` ((a, b, score), paths as `_key`s): from the
    most similar pair down, of two images not yet dropped one stays and the other goes (the
    training image stays, so no copy of one is left in valid or test; then the one already
    kept, then the first by path). Judged pair by pair, not by whole sets: in a chain A~B~C
    where A and C are not alike, dropping B keeps both A and C."""
    dropped, kept = set(), set()
    for a, b, _ in sorted(pairs, key=lambda t: (-t[2], t[0], t[1])):
        if a in dropped or b in dropped:
            continue
        keep, go = sorted((a, b), key=lambda m: (SPLIT_ORDER.get(split.get(m), 3), m not in kept, m))
        kept.add(keep)
        dropped.add(go)
    return dropped


def clean_items(items: pd.DataFrame, table: pd.DataFrame, fix: str, given_col: str,
                pairs=None) -> tuple[pd.DataFrame, dict]:
    """The data's items (path, label(s), split) after the fix, and what was done (counts).

    Both fixes drop the outliers and the extra copies of near-duplicates (`copies_to_drop` on
    `pairs`, the finder's (a, b, score); without them, all but one member of each set of the
    table). "drop" also drops the images with a label issue; "relabel" gives them cleanlab's
    suggested label(s) instead."""
    if fix not in FIXES:
        raise UsageError(f"--fix must be one of {', '.join(FIXES)}, got {fix!r}")
    out = items.copy()
    out["_key"] = out["path"].map(_key)
    split = dict(zip(out["_key"], out["split"]))
    odd = set(table.loc[table["kind"] == "outlier", "path"])
    if pairs is not None:
        copies = copies_to_drop([(_key(a), _key(b), float(sc)) for a, b, sc in pairs], split)
    else:
        copies = set()
        for _, g in table[table["kind"] == "near_duplicate"].groupby("group", sort=False):
            copies |= set(sorted(g["path"], key=lambda m: (SPLIT_ORDER.get(split.get(m), 3), m))[1:])
    labels = table[table["kind"] == "label"]
    drop = odd | copies
    relabelled = 0
    if fix == "drop":
        drop |= set(labels["path"])
    else:
        new = {p: s for p, s in zip(labels["path"], labels["suggested"]) if p not in drop}
        hit = out["_key"].isin(new)
        out.loc[hit, given_col] = out.loc[hit, "_key"].map(new)
        relabelled = int(hit.sum())
    present = set(out["_key"])
    kept = out[~out["_key"].isin(drop)]
    done = {"dropped": len(out) - len(kept), "relabelled": relabelled, "kept": len(kept),
            "outliers": len(odd & present), "copies": len((copies - odd) & present),
            "label": len((set(labels["path"]) - odd - copies) & present) if fix == "drop" else 0}
    return kept.drop(columns="_key").reset_index(drop=True), done


def check_clean_place(file: Path, root: Path) -> None:
    """--write-clean FILE must sit above the data's folder: a label CSV names its images
    relative to its own folder and may not point outside it (data._from_csv), and nothing is
    written into the data. "Above" as the paths are written (a data folder that is a symlink,
    data/plants -> /disk/plants, has data/ above it) or as they resolve; never inside the data
    the links lead to."""
    folder, real_folder = _lexical(file).parent, Path(file).expanduser().absolute().parent.resolve()
    shown, real_root = _lexical(root), Path(root).resolve()
    above = _strictly_above(folder, shown) or _strictly_above(real_folder, real_root)
    if not above or _under(real_folder, real_root):
        where = "inside" if _under(folder, shown) or _under(real_folder, real_root) else "beside"
        raise UsageError(f"--write-clean {file}: a label CSV names its images relative to its "
                         f"own folder, so it must sit in a folder above the data's {shown} (not "
                         f"{where} it), e.g. {shown.parent / (shown.name + '-clean.csv')}")


def _lexical(path) -> Path:
    """`path` absolute and normalised as written: symlinks not followed."""
    return Path(os.path.normpath(os.path.abspath(os.path.expanduser(str(path)))))


def _strictly_above(folder: Path, root: Path) -> bool:
    return _under(root, folder) and root != folder


def _under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def write_clean(file: Path, items: pd.DataFrame, given_col: str) -> None:
    """The label CSV (fname relative to FILE's folder, label or labels, split) `fit FILE`
    reads, through a .part file renamed at the end."""
    file = Path(file).expanduser().absolute()
    folder = _lexical(file).parent

    def fname(p) -> str:   # as the paths are written (a symlinked data folder stays one)
        rel = Path(os.path.relpath(_lexical(p), folder))
        if ".." in rel.parts:   # written through another link than FILE: as they resolve
            rel = Path(os.path.relpath(Path(p).resolve(), folder.resolve()))
        return rel.as_posix()
    fnames = [fname(p) for p in items["path"]]
    df = pd.DataFrame({"fname": fnames, given_col: items[given_col].fillna(""),
                       "split": items["split"].fillna("")})
    part = file.with_name(file.name + ".part")
    df.to_csv(part, index=False)
    os.replace(part, file)
