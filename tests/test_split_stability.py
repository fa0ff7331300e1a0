"""The train/valid split of a growing or moved dataset: each item's side is its own hash.

A seeded shuffle re-deals every item when one image is added, so images that were validation
images in one run become training images in the next (a silent leak). These tests pin the
properties that replace it (splits.py): stable under additions and moves, seeded, never an
empty side for a class, valid_pct on average.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from clfapp import data

from clfapp.data import splits
from clfapp.config import Config, DataConfig, TrainConfig

from conftest import COLOURS, make_folder_dataset


def _touch_dataset(root: Path, counts: dict[str, int], start: int = 0) -> Path:
    """ImageNet layout with empty .png files (scan looks at names only): fast, many items."""
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            (root / label / f"{label}_{i:04d}.png").write_bytes(b"")
    return root


def _split_of(root: Path, method: str, seed: int, valid_pct: float = 0.2) -> dict[str, str]:
    """relative path -> train/valid, as data.load would assign it."""
    cfg = DataConfig(path=str(root))
    items = splits.assign(data.scan(cfg), method, valid_pct, seed, root=data.dataset_root(cfg))
    return {Path(p).relative_to(root).as_posix(): s for p, s in zip(items["path"], items["split"])}


@pytest.mark.parametrize("method", ["stratified", "random"])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_adding_images_and_a_class_moves_no_existing_image(tmp_path, method, seed):
    root = _touch_dataset(tmp_path / "ds", {"cat": 40, "dog": 30, "owl": 25})
    before = _split_of(root, method, seed)
    assert set(before.values()) == {"train", "valid"}
    _touch_dataset(root, {"cat": 15, "dog": 1, "owl": 7}, start=100)  # more of each class
    _touch_dataset(root, {"yak": 12})                                  # and a new class
    after = _split_of(root, method, seed)
    assert len(after) == len(before) + 15 + 1 + 7 + 12
    moved = {k: (v, after[k]) for k, v in before.items() if after[k] != v}
    assert not moved, f"{len(moved)} existing image(s) changed split: {list(moved.items())[:5]}"


def test_moving_the_dataset_folder_keeps_the_split(tmp_path):
    # through data.load, which must name items relative to the dataset root, not by absolute path
    def load(root: Path) -> dict[str, str]:
        ds = data.load(Config(data=DataConfig(path=str(root), size=8), train=TrainConfig(seed=3)))
        return {Path(p).relative_to(root).as_posix(): s
                for p, s in zip(ds.items["path"], ds.items["split"])}

    first = make_folder_dataset(tmp_path / "a" / "photos", n_per_class=12, size=8)
    before = load(first)
    moved = tmp_path / "elsewhere" / "deeper" / "renamed"
    shutil.move(str(first), str(moved))
    after = load(moved)
    assert after == before
    assert set(before.values()) == {"train", "valid"}


def test_a_csv_dataset_moved_keeps_its_split(tmp_path):
    # labels from a CSV given as data.path: the root is the CSV's folder
    root = _touch_dataset(tmp_path / "a", {"images": 60})
    rows = [f"images_{i:04d}.png,{'xy'[i % 2]}" for i in range(60)]
    (root / "labels.csv").write_text("fname,label\n" + "\n".join(rows) + "\n")

    def split(folder: Path) -> dict[str, str]:
        cfg = DataConfig(path=str(folder / "labels.csv"))
        items = splits.assign(data.scan(cfg), "auto", 0.2, 0, root=data.dataset_root(cfg))
        return {Path(p).name: s for p, s in zip(items["path"], items["split"])}

    before = split(root)
    shutil.move(str(root), str(tmp_path / "b"))
    assert split(tmp_path / "b") == before


def test_a_different_seed_gives_a_different_split(tmp_path):
    root = _touch_dataset(tmp_path / "ds", {"cat": 30, "dog": 30})
    for method in ("stratified", "random"):
        a, b = _split_of(root, method, 0), _split_of(root, method, 1)
        assert a.keys() == b.keys()
        assert sum(a[k] != b[k] for k in a) > 5, method
        assert _split_of(root, method, 0) == a  # and the same seed, the same split


def test_every_class_of_two_or_more_has_both_sides():
    sizes = {"two": 2, "three": 3, "four": 4, "five": 5, "nine": 9, "big": 60}
    labels = pd.Series([lab for lab, n in sizes.items() for _ in range(n)])
    keys = [f"{lab}/{i}.jpg" for i, lab in enumerate(labels)]
    for pct in (0.02, 0.2, 0.5, 0.98):
        for seed in range(25):
            mask = splits.stratified(labels, keys, pct, seed)
            for lab in sizes:
                valid = mask[(labels == lab).to_numpy()]
                assert valid.any() and not valid.all(), (lab, pct, seed, valid)


@pytest.mark.parametrize("pct", [0.1, 0.2, 0.35])
def test_valid_fraction_of_a_large_class_is_close_to_valid_pct(pct):
    n = 2000  # binomial sd of the fraction: sqrt(p(1-p)/n) <= 0.011
    labels = pd.Series(["big"] * n + ["small"] * 300)
    keys = [f"{lab}/img_{i:05d}.jpg" for i, lab in enumerate(labels)]
    for seed in (0, 7):
        mask = splits.stratified(labels, keys, pct, seed)
        big = mask[:n].mean()
        assert abs(big - pct) < 0.035, (seed, big)
        assert abs(splits.random(keys, pct, seed).mean() - pct) < 0.035, seed
    # per-item decisions, not a fixed count: the exact number varies between seeds
    counts = {int(splits.stratified(labels, keys, pct, s)[:n].sum()) for s in range(6)}
    assert len(counts) > 1


def test_items_outside_the_root_keep_their_full_path_as_key(tmp_path):
    keys = splits.split_keys([str(tmp_path / "a" / "x.png"), "/elsewhere/y.png"], tmp_path)
    assert keys == ["a/x.png", "/elsewhere/y.png"]
    assert splits.split_keys(["a/x.png"], None) == ["a/x.png"]
