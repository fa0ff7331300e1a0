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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import images, splits
from .config import Config, DataConfig
from .errors import UsageError

SPLIT_FOLDERS = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "test": "test"}


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


def _from_csv(root: Path, csv_name: str) -> pd.DataFrame:
    csv = Path(csv_name) if Path(csv_name).is_absolute() else root / csv_name
    if not csv.is_file():
        raise UsageError(f"label file {csv} not found (data.labels = 'csv:{csv_name}')")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if not {"fname", "label"} <= set(df.columns):
        raise UsageError(f"{csv} needs the columns fname,label (it has: {', '.join(df.columns)})")
    base = root / "images" if (root / "images").is_dir() else root

    def locate(name: str) -> str:
        p = Path(name)
        return str(p if p.is_absolute() else (base / p if (base / p).exists() else root / p))
    split = df["split"].map(lambda s: SPLIT_FOLDERS.get(s.lower())) if "split" in df else None
    return pd.DataFrame({"path": df["fname"].map(locate), "label": df["label"], "split": split})


def scan(cfg: DataConfig) -> pd.DataFrame:
    """All labelled items of the dataset: columns path, label, split (None where not given)."""
    # Absolute paths: splits.csv must still name the images when read from another folder.
    root = Path(cfg.path).expanduser().absolute()
    if not cfg.path or not root.exists():
        raise UsageError(f"data path {cfg.path!r} does not exist; pass --data PATH or set "
                         "[data] path in the recipe")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise UsageError(f"data path {root} is a file; give a folder of images or a CSV")
        items = _from_csv(root.parent, root.name)
    elif cfg.labels == "folder":
        items = _from_folders(root, _folder_label)
    elif cfg.labels.startswith("name:"):
        items = _from_folders(root, _name_label(cfg.labels[5:]))
    else:
        items = _from_csv(root, cfg.labels[4:])
    unlabelled = items["label"].isna() | (items["label"] == "")
    if unlabelled.all() and len(items):
        how = ("no image sits in a class folder (expected ROOT/CLASS/img.jpg)"
               if cfg.labels == "folder" else f"no file name matches {cfg.labels}")
        raise UsageError(f"no labelled images in {root}: {how}")
    items = items[~unlabelled].reset_index(drop=True)
    if len(items) == 0:
        raise UsageError(f"no images found in {root} (looked for {', '.join(sorted(images.IMAGE_EXTENSIONS))})")
    if items.loc[items["split"] != "test", "label"].nunique() < 2:
        raise UsageError(f"{root} has a single class ({items['label'].iloc[0]}); a classifier needs at least two")
    return items


@dataclass
class Dataset:
    """The items of a run with their images decoded once, held in memory."""
    items: pd.DataFrame          # path, label, split (train/valid/test), for splits.csv
    pixels: np.ndarray           # N x S x S x 3 uint8, rows aligned with items
    classes: list[str]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.items["split"].to_numpy() == split)


def load(cfg: Config) -> Dataset:
    """Scan, split, decode: every item's split is decided here and recorded in `items`."""
    items = splits.assign(scan(cfg.data), cfg.data.split, cfg.data.valid_pct, cfg.train.seed)
    used = items[items["split"] != "test"].reset_index(drop=True)
    pixels, kept = images.read_many(used["path"].tolist(), cfg.data.size, cfg.data.resize)
    if len(kept) < len(used):
        print(f"warning: {len(used) - len(kept)} unreadable image(s) left out", flush=True)
    used = used.iloc[kept].reset_index(drop=True)
    if not (used["split"] == "valid").any() or not (used["split"] == "train").any():
        raise UsageError("the split left no training or no validation images; add images or "
                         "change data.valid_pct")
    classes = sorted(used["label"].unique(), key=_natural_key)
    tests = items[items["split"] == "test"]
    return Dataset(pd.concat([used, tests], ignore_index=True), pixels, classes)


def _natural_key(label: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(label))]


def dataloaders(ds: Dataset, cfg: Config, stats: tuple):
    """fastai DataLoaders over the decoded images; augmentation runs on whole batches."""
    import torch
    from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
    from fastai.data.transforms import IndexSplitter, IntToFloatTensor, Normalize
    from fastai.torch_core import TensorImage
    from fastai.vision.augment import aug_transforms

    pixels = torch.from_numpy(ds.pixels).permute(0, 3, 1, 2)  # N,3,S,S view, no copy
    labels = ds.items["label"].to_numpy()
    train_idx, valid_idx = ds.indices("train"), ds.indices("valid")
    a = cfg.aug
    batch_tfms = []
    if a.enabled:
        batch_tfms += aug_transforms(
            do_flip=a.flip, flip_vert=a.flip_vert, max_rotate=a.max_rotate, min_zoom=a.min_zoom,
            max_zoom=a.max_zoom, max_lighting=a.max_lighting, max_warp=a.max_warp,
            p_affine=a.p_affine, p_lighting=a.p_lighting, min_scale=a.min_scale,
            size=cfg.data.size if a.min_scale < 1 else None)
    batch_tfms.append(Normalize.from_stats(*stats))
    order = np.concatenate([train_idx, valid_idx])
    block = DataBlock(
        blocks=(TransformBlock(type_tfms=lambda i: TensorImage(pixels[i]),
                               batch_tfms=IntToFloatTensor), CategoryBlock(vocab=ds.classes)),
        get_y=lambda i: labels[i],
        # The splitter indexes into `order`, whose tail is the validation items.
        splitter=IndexSplitter(np.arange(len(train_idx), len(order))),
        batch_tfms=batch_tfms)
    return block.dataloaders(order.tolist(), bs=cfg.train.bs, num_workers=cfg.train.workers,
                             seed=cfg.train.seed)
