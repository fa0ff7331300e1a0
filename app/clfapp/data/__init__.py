"""Datasets on disk → a table of items (path, label, split) → fastai DataLoaders.

Layouts understood:
  * ImageNet layout: one folder per class, optionally inside train/, valid/ (val/, validation/)
    and test/ folders;
  * a CSV of `fname,label` (`labels = "csv:FILE"`), file names relative to the dataset folder
    or its images/ folder, an optional `split` column;
  * labels from file names by a regex (`labels = "name:REGEX"`, first group, or whole match).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import images, splits
from ..config import Config, DataConfig
from ..errors import UsageError

SPLIT_FOLDERS = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "test": "test"}
# The values a label CSV's `split` column accepts: SPLIT_FOLDERS' names, in any case, or empty.
SPLIT_NAMES = "train, valid (or val, validation), test, in any case; an empty cell gives no split"


def _split_folders(root: Path) -> dict[str, Path]:
    found = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in SPLIT_FOLDERS:
            found.setdefault(SPLIT_FOLDERS[child.name.lower()], child)
    return found if "train" in found else {}


def _from_folders(root: Path, label_of) -> pd.DataFrame:
    """Walk `root` (and its split folders, if any); `label_of(path, base)` names each image."""
    parts = _split_folders(root) or {None: root}
    rows = []
    for split, base in parts.items():
        for p in images.find_images(base):
            rows.append((str(p), label_of(p, base), split))
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def _folder_label(path: Path, base: Path) -> str | None:
    rel = path.relative_to(base).parts
    return rel[0] if len(rel) > 1 else None


def _name_label(pattern: str):
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise UsageError(f"data.labels regex {pattern!r} is invalid: {e}")

    def label_of(path: Path, base: Path) -> str | None:
        m = regex.search(path.name)
        if not m:
            return None
        return m.group(1) if regex.groups else m.group(0)
    return label_of


def _from_csv(root: Path, csv_name: str, delim: str = " ",
              unknown_split: dict | None = None) -> pd.DataFrame:
    """Items of a label CSV. Single-label frames have a `label` column; multi-label frames a
    `labels` column instead (the set joined by `delim`, "" for none). `unknown_split`: see
    `split_column`."""
    csv = Path(csv_name) if Path(csv_name).is_absolute() else root / csv_name
    if not csv.is_file():
        raise UsageError(f"label file {csv} not found (data.labels = 'csv:{csv_name}')")
    df = read_label_csv(csv)
    if "fname" not in df.columns:
        raise UsageError(f"{csv} needs a fname column (it has: {', '.join(df.columns)})")
    base = root / "images" if (root / "images").is_dir() else root
    outside = [n for n in df["fname"] if escapes(n)]
    if outside:
        # A label file is data, often downloaded: it must not point clfapp at other files on
        # the machine (../../etc/x, /home/...). Symlinks inside the folder are still followed.
        raise UsageError(f"{csv} names {len(outside)} file(s) outside the dataset folder "
                         f"{root}, e.g. {outside[0]!r}; give paths relative to that folder")

    def locate(name: str) -> str:
        p = Path(name)
        return str(base / p if (base / p).exists() else root / p)
    out = pd.DataFrame({"path": df["fname"].map(locate)})
    if "label" in df.columns:
        out["label"] = df["label"]
    elif "labels" in df.columns:
        out["labels"] = df["labels"].map(lambda s: delim.join(split_labels(s, delim)))
    else:
        onehot = [c for c in df.columns if c not in ("fname", "split")]
        if not onehot or not df[onehot].isin(["0", "1"]).all().all():
            raise UsageError(f"{csv} needs a label column, a labels column, or 0/1 columns "
                             f"(one per label); it has: {', '.join(df.columns)}")
        out["labels"] = [delim.join(c for c in onehot if row[c] == "1") for _, row in df.iterrows()]
    out["split"] = split_column(df["split"], out["path"], csv, unknown_split) if "split" in df else None
    return _merge_duplicates(out, df["fname"], csv, delim)


def split_column(values: pd.Series, paths: pd.Series, csv: Path,
                 unknown: dict | None = None) -> pd.Series:
    """A label CSV's `split` column as train/valid/test (None where the cell is empty).

    A value clfapp does not know (`holdout`, `testing`, ` test`) is a usage error listing the
    accepted names: left as it is, its rows would silently become training images. With
    `unknown` given (`clfapp data check`, which reports it as a finding), the message and the
    offending rows' paths are put there instead and those rows get no split."""
    text = values.map(lambda v: v if isinstance(v, str) else "")
    mapped = text.map(lambda v: SPLIT_FOLDERS.get(v.lower()) if v else None)
    bad = (text != "") & mapped.isna()
    if bad.any():
        counts = text[bad].value_counts()
        shown = ", ".join(f"{v!r} ({n} row{'s' if n > 1 else ''})" for v, n in counts.head(4).items())
        more = f" and {len(counts) - 4} more value(s)" if len(counts) > 4 else ""
        message = (f"{csv}: the split column has values clfapp does not know: {shown}{more}; "
                   f"accepted: {SPLIT_NAMES}")
        if unknown is None:
            raise UsageError(message)
        unknown.update(message=message, paths=paths[bad].tolist())
    return mapped


def read_label_csv(csv: Path) -> pd.DataFrame:
    """A label CSV as strings ("" for empty cells); an empty, undecodable or malformed file is
    a usage error naming it."""
    try:
        return pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UsageError(f"label file {csv} is empty; it needs a header (fname,label) and one row per image")
    except UnicodeDecodeError as e:
        raise UsageError(f"label file {csv} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
    except (pd.errors.ParserError, ValueError) as e:
        raise UsageError(f"label file {csv} is not a valid CSV: {str(e).strip().splitlines()[0]}")


def escapes(name: str) -> bool:
    """Whether a CSV file name leaves the dataset folder: absolute, or `..` climbing out of it
    (judged on the text, so a symlink inside the folder is not refused)."""
    import os
    if not name or Path(name).is_absolute() or Path(name).drive:
        return bool(name)
    return os.path.normpath(name).replace("\\", "/").split("/")[0] == ".."


def _merge_duplicates(out: pd.DataFrame, fnames: pd.Series, csv: Path, delim: str) -> pd.DataFrame:
    """One item per image file when the CSV lists a file on several rows.

    Left as they are, duplicates become duplicate items: the image weighs double in training
    and can sit in train and valid at once. Multi-label rows are merged into the union of
    their labels (one row per (fname, label) is a common CSV shape); single-label rows with the
    same label are merged, with different labels refused: which one is right is the user's call.
    """
    dup = out["path"].duplicated(keep=False)
    if not dup.any():
        return out
    rows = out[dup].assign(fname=fnames[dup])
    n_files, n_rows = rows["path"].nunique(), int(dup.sum())
    _refuse_conflicts(rows, "split", csv, "give each file one split")
    if "label" in out.columns:
        _refuse_conflicts(rows, "label", csv, "give each file one label, or name the column "
                          "`labels` for images with several labels")
        what = f"more than once with the same label; each is used once ({n_rows - n_files} " \
               "duplicate row(s) dropped)"
    else:
        what = f"on several rows; their labels are merged ({n_rows} rows into {n_files} images)"
    print(f"warning: {csv} lists {n_files} file(s) {what}", file=sys.stderr)
    merged = out.drop_duplicates("path").reset_index(drop=True)
    for column in ("label", "split"):  # a row's given value wins over another row's empty one
        if column in rows.columns:
            first = _given(rows, column).groupby("path", sort=False)[column].first()
            merged[column] = [first.get(p, v) for p, v in zip(merged["path"], merged[column])]
    if "labels" in rows.columns:
        union = rows.groupby("path", sort=False)["labels"].agg(lambda texts: delim.join(
            dict.fromkeys(l for t in texts for l in split_labels(t, delim))))
        merged["labels"] = [union.get(p, v) for p, v in zip(merged["path"], merged["labels"])]
    return merged


def _given(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows where `column` has a value (not None, NaN or "")."""
    return rows[rows[column].notna() & (rows[column] != "")]


def _refuse_conflicts(rows: pd.DataFrame, column: str, csv: Path, fix: str) -> None:
    """UsageError naming one file whose rows disagree on `column` (empty values ignored)."""
    given = _given(rows, column)
    values = given.groupby("path", sort=False)[column].unique()
    clash = values[values.map(len) > 1]
    if len(clash):
        path = clash.index[0]
        fname = given.loc[given["path"] == path, "fname"].iloc[0]
        also = f" (and {len(clash) - 1} more file(s))" if len(clash) > 1 else ""
        raise UsageError(f"{csv} gives {fname} different {column}s: "
                         f"{', '.join(map(str, clash.iloc[0]))}{also}; {fix}")


def split_labels(text, delim: str = " ") -> list[str]:
    """A label set from its joined text ("" or NaN: the empty set)."""
    if not isinstance(text, str):
        return []
    return [t.strip() for t in (text.split(delim) if delim.strip() else text.split()) if t.strip()]


def is_multi_label(items: pd.DataFrame) -> bool:
    return "labels" in items.columns


def class_indices(labels, classes: list[str]) -> np.ndarray:
    """Class indices of single labels; a label the model does not know is a usage error."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(l) for l in labels if str(l) not in index})
    if unknown:
        raise UsageError(f"labels unknown to the model: {', '.join(unknown[:8])} "
                         f"(it knows: {', '.join(classes[:14])})")
    return np.array([index[str(l)] for l in labels], dtype=int)


def label_matrix(label_texts, classes: list[str], delim: str = " ") -> np.ndarray:
    """N x L boolean matrix of label sets; a label the model does not know is a usage error."""
    index = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(label_texts), len(classes)), dtype=bool)
    unknown = set()
    for i, text in enumerate(label_texts):
        for label in split_labels(text, delim):
            if label in index:
                y[i, index[label]] = True
            else:
                unknown.add(label)
    if unknown:
        raise UsageError(f"labels unknown to the model: {', '.join(sorted(unknown)[:8])} "
                         f"(it knows: {', '.join(classes[:14])})")
    return y


def dataset_root(cfg: DataConfig) -> Path:
    """The folder the items live under (for a CSV given as data.path, the CSV's folder).

    The split names items by their path relative to it, so that moving the dataset does not
    change which images are validation images.
    """
    root = Path(cfg.path).expanduser().absolute()
    return root.parent if root.is_file() else root


def scan(cfg: DataConfig, unknown_split: dict | None = None) -> pd.DataFrame:
    """All labelled items of the dataset: path, label (or labels for multi-label), split
    (None where the dataset does not give one). A label CSV's split value clfapp does not know
    is refused, or with `unknown_split` given, described there (`split_column`)."""
    # Absolute paths: splits.csv must still name the images when read from another folder.
    root = Path(cfg.path).expanduser().absolute()
    if not cfg.path or not root.exists():
        raise UsageError(f"data path {cfg.path!r} does not exist; pass --data PATH or set "
                         "[data] path in the recipe")
    from_csv = root.is_file() or cfg.labels.startswith("csv:")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise UsageError(f"data path {root} is a file; give a folder of images or a CSV")
        items = _from_csv(root.parent, root.name, cfg.label_delim, unknown_split)
    elif cfg.labels == "folder":
        items = _from_folders(root, _folder_label)
    elif cfg.labels.startswith("name:"):
        items = _from_folders(root, _name_label(cfg.labels[5:]))
    else:
        items = _from_csv(root, cfg.labels[4:], cfg.label_delim, unknown_split)
    if is_multi_label(items):
        return _check_multi_label(items, root, cfg.label_delim)
    unlabelled = items["label"].isna() | (items["label"] == "")
    if unlabelled.all() and len(items):
        how = ("every row's label is empty" if from_csv
               else "no image sits in a class folder (expected ROOT/CLASS/img.jpg)"
               if cfg.labels == "folder" else f"no file name matches {cfg.labels}")
        raise UsageError(f"no labelled images in {root}: {how}")
    if from_csv and unlabelled.any():
        print(f"warning: {int(unlabelled.sum())} row(s) of the label file have an empty label and "
              f"are left out, e.g. {Path(items.loc[unlabelled, 'path'].iloc[0]).name}", file=sys.stderr)
    items = items[~unlabelled].reset_index(drop=True)
    if len(items) == 0:
        raise UsageError(f"no images found in {root} (looked for {', '.join(sorted(images.IMAGE_EXTENSIONS))})")
    if items.loc[items["split"] != "test", "label"].nunique() < 2:
        raise UsageError(f"{root} has a single class ({items['label'].iloc[0]}); a classifier needs at least two")
    return items


def _check_multi_label(items: pd.DataFrame, root: Path, delim: str) -> pd.DataFrame:
    if len(items) == 0:
        raise UsageError(f"the label file of {root} lists no images")
    if not any(split_labels(t, delim) for t in items["labels"]):
        raise UsageError(f"no image in {root} carries a label")
    return items


def classes_of(items: pd.DataFrame, delim: str = " ") -> list[str]:
    if is_multi_label(items):
        found = {l for t in items["labels"] for l in split_labels(t, delim)}
    else:
        found = set(items["label"].unique())
    return sorted(found, key=_natural_key)


@dataclass
class Dataset:
    """The items of a run with their images decoded once, held in memory."""
    items: pd.DataFrame          # path, label, split (train/valid/test), for splits.csv
    pixels: np.ndarray           # N x S x S x 3 uint8, rows aligned with items (in memory,
                                 # or an np.memmap over the image cache: index it by rows)
    classes: list[str]
    delim: str = " "

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.items)

    def targets(self, idx: np.ndarray) -> np.ndarray:
        """Class indices (single-label) or the boolean label matrix (multi-label) of `idx`."""
        if self.multi_label:
            return label_matrix(self.items["labels"].iloc[idx], self.classes, self.delim)
        return class_indices(self.items["label"].iloc[idx], self.classes)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.items["split"].to_numpy() == split)


def split_items(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the items training decodes: train + valid, in order; the held-out test items), as
    `load` and `clfapp data prepare` (which builds their image cache ahead) both need them."""
    items = scan(cfg.data)
    y = (label_matrix(items["labels"], classes_of(items, cfg.data.label_delim), cfg.data.label_delim)
         if is_multi_label(items) else None)
    items = splits.assign(items, cfg.data.split, cfg.data.valid_pct, cfg.data.seed, y,
                          root=dataset_root(cfg.data), test_pct=cfg.data.test_pct)
    if cfg.data.splits_from:
        items = splits.reuse(items, cfg.data.splits_from, root=dataset_root(cfg.data))
    return (items[items["split"] != "test"].reset_index(drop=True),
            items[items["split"] == "test"])


def load(cfg: Config) -> Dataset:
    """Scan, split, decode: every item's split is decided here and recorded in `items`.

    Decoded pixels come from the on-disk image cache (a memory map, data/cache.py) when one
    exists or the data is large, else they are decoded into memory."""
    from . import cache

    used, tests = split_items(cfg)
    pixels, kept = cache.pixels_for(used["path"].tolist(), cfg.data.size, cfg.data.resize,
                                    cfg.data.cache)
    if len(kept) < len(used):
        print(f"warning: {len(used) - len(kept)} unreadable image(s) left out", flush=True)
    used = used.iloc[kept].reset_index(drop=True)
    if not (used["split"] == "valid").any() or not (used["split"] == "train").any():
        raise UsageError("the split left no training or no validation images; add images or "
                         "change data.valid_pct")
    return Dataset(pd.concat([used, tests], ignore_index=True), pixels,
                   classes_of(used, cfg.data.label_delim), cfg.data.label_delim)


def _natural_key(label: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(label))]


def dataloaders(ds: Dataset, cfg: Config, stats: tuple):
    """fastai DataLoaders over the decoded images; augmentation runs on whole batches."""
    import torch
    from fastai.data.block import CategoryBlock, DataBlock, MultiCategoryBlock, TransformBlock
    from fastai.data.transforms import IndexSplitter, IntToFloatTensor, Normalize
    from fastai.torch_core import TensorImage
    from fastai.vision.augment import Brightness, Contrast, Hue, Saturation, aug_transforms

    pixels = torch.from_numpy(ds.pixels).permute(0, 3, 1, 2)  # N,3,S,S view, no copy
    if ds.multi_label:
        sets = [split_labels(t, ds.delim) for t in ds.items["labels"]]
        target_block, get_y = MultiCategoryBlock(vocab=ds.classes), lambda i: sets[i]
    else:
        labels = ds.items["label"].to_numpy()
        # sort=False: fastai would sort the vocab alphabetically ("1", "10", "2") while
        # ds.classes, the bundle and predict use the natural order ("1", "2", "10").
        target_block, get_y = CategoryBlock(vocab=ds.classes, sort=False), lambda i: labels[i]
    train_idx, valid_idx = ds.indices("train"), ds.indices("valid")
    a = cfg.aug
    batch_tfms = []
    if a.enabled:
        batch_tfms += aug_transforms(
            do_flip=a.flip, flip_vert=a.flip_vert, max_rotate=a.max_rotate, min_zoom=a.min_zoom,
            max_zoom=a.max_zoom, max_lighting=a.max_lighting, max_warp=a.max_warp,
            p_affine=a.p_affine, p_lighting=a.p_lighting, min_scale=a.min_scale,
            size=cfg.data.size if a.min_scale < 1 else None)
        # Colour knobs of their own (fastai's lighting transforms; split_idx 0 = training only).
        batch_tfms += [tfm(v, p=a.p_lighting) for tfm, v in ((Saturation, a.saturation),
                       (Hue, a.hue), (Brightness, a.brightness), (Contrast, a.contrast)) if v > 0]
    batch_tfms.append(Normalize.from_stats(*stats))
    order = np.concatenate([train_idx, valid_idx])
    block = DataBlock(
        blocks=(TransformBlock(type_tfms=lambda i: TensorImage(pixels[i]),
                               batch_tfms=IntToFloatTensor), target_block),
        get_y=get_y,
        # The splitter indexes into `order`, whose tail is the validation items.
        splitter=IndexSplitter(np.arange(len(train_idx), len(order))),
        batch_tfms=batch_tfms)
    # fastai drops the last partial training batch: with fewer images than a batch, an epoch
    # would train on nothing (and report a NaN loss).
    bs = min(cfg.train.bs, len(train_idx))
    if bs < cfg.train.bs:
        print(f"note: train.bs {cfg.train.bs} is more than the {len(train_idx)} training images; "
              f"using batches of {bs}", flush=True)
    return block.dataloaders(order.tolist(), bs=bs, num_workers=cfg.train.workers,
                             seed=cfg.train.seed)
