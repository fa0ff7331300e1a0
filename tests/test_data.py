"""data.py / splits.py / images.py: layouts, label sources, image modes, splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clfapp import data

from clfapp.data import images, splits
from clfapp.config import DataConfig
from clfapp.errors import UsageError

from conftest import COLOURS, make_folder_dataset, make_image


def _rel(items: pd.DataFrame, root: Path) -> set:
    return {(str(Path(p).relative_to(root)), lab, s) for p, lab, s in
            items[["path", "label", "split"]].itertuples(index=False)}


def test_imagenet_layout_without_split_folders(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", n_per_class=3)
    (root / "notes.txt").write_text("not an image")
    (root / "red" / ".hidden.png").write_bytes(b"")
    items = data.scan(DataConfig(path=str(root)))
    assert len(items) == 9
    assert items["split"].isna().all()
    assert sorted(items["label"].unique()) == sorted(COLOURS)
    for p, label in zip(items["path"], items["label"]):
        assert Path(p).parent.name == label


@pytest.mark.parametrize("valid_name", ["valid", "val", "validation"])
def test_imagenet_layout_with_split_folders(tmp_path, valid_name):
    root = tmp_path / "ds"
    make_folder_dataset(root / "train", n_per_class=4)
    make_folder_dataset(root / valid_name, n_per_class=2)
    make_folder_dataset(root / "test", n_per_class=1)
    items = data.scan(DataConfig(path=str(root)))
    assert items["split"].value_counts().to_dict() == {"train": 12, "valid": 6, "test": 3}
    # class = the folder under the split folder, never the split folder's name
    assert sorted(items["label"].unique()) == sorted(COLOURS)
    for p, split in zip(items["path"], items["split"]):
        top = Path(p).relative_to(root).parts[0]
        assert {"valid": valid_name}.get(split, split) == top

    assigned = splits.assign(items, "auto", 0.2, seed=0)
    assert (assigned["split"] == items["split"]).all()  # the dataset's own split is kept


def test_train_and_test_folders_only_get_a_stratified_valid(tmp_path):
    root = tmp_path / "ds"
    make_folder_dataset(root / "train", n_per_class=10)
    make_folder_dataset(root / "test", n_per_class=2)
    items = data.scan(DataConfig(path=str(root)))
    assigned = splits.assign(items, "auto", 0.2, seed=0, root=root)
    counts = assigned["split"].value_counts().to_dict()
    assert counts["test"] == 6 and counts["train"] + counts["valid"] == 30
    # every class is in both train and valid (hash split: ~20 % per class, at least one)
    pool = assigned[assigned["split"] != "test"]
    per_class = pool.groupby("label")["split"].apply(lambda s: (s == "valid").sum())
    assert per_class.between(1, 9).all() and sorted(per_class.index) == sorted(COLOURS), per_class
    # test items never move into train or valid
    assert (assigned.loc[items["split"] == "test", "split"] == "test").all()


def test_split_folder_method_without_valid_folder_is_an_error(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", n_per_class=3)
    items = data.scan(DataConfig(path=str(root)))
    with pytest.raises(UsageError, match="valid"):
        splits.assign(items, "folder", 0.2, 0)


def test_csv_labels(tmp_path):
    root = tmp_path / "ds"
    rows = []
    for k, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(3):
            fname = f"img_{k}{i}.png"
            make_image(root / "images" / fname, rgb, seed=k * 10 + i)
            rows.append((fname, f"class {name}", "valid" if i == 0 else "train"))
    pd.DataFrame(rows, columns=["fname", "label", "split"]).to_csv(root / "labels.csv", index=False)
    items = data.scan(DataConfig(path=str(root), labels="csv:labels.csv"))
    assert len(items) == 9
    assert all(Path(p).is_file() for p in items["path"])  # found in images/
    assert set(items["label"]) == {f"class {c}" for c in COLOURS}
    assert items["split"].value_counts().to_dict() == {"train": 6, "valid": 3}
    got = dict(zip(items["path"].map(lambda p: Path(p).name), items["label"]))
    assert got == {f: lab for f, lab, _ in rows}

    # the CSV file itself as the data path (fname relative to its folder), no split column
    flat = tmp_path / "flat"
    make_image(flat / "a.png", COLOURS["red"])
    make_image(flat / "sub" / "b.png", COLOURS["blue"])
    (flat / "list.csv").write_text("fname,label\na.png,r\nsub/b.png,b\n")
    items = data.scan(DataConfig(path=str(flat / "list.csv")))
    assert _rel(items, flat) == {("a.png", "r", None), ("sub/b.png", "b", None)}


def test_csv_without_the_columns(tmp_path):
    (tmp_path / "l.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(UsageError, match="needs a fname column"):
        data.scan(DataConfig(path=str(tmp_path), labels="csv:l.csv"))
    (tmp_path / "m.csv").write_text("fname,kind\na.png,x\n")  # neither label(s) nor 0/1 columns
    with pytest.raises(UsageError, match="a label column, a labels column, or 0/1 columns"):
        data.scan(DataConfig(path=str(tmp_path), labels="csv:m.csv"))
    with pytest.raises(UsageError, match="not found"):
        data.scan(DataConfig(path=str(tmp_path), labels="csv:missing.csv"))


def _csv_dataset(root: Path, text: str) -> Path:
    """root/labels.csv with `text`, and a small image for every file name it lists."""
    for k, line in enumerate(text.strip().splitlines()[1:]):
        fname = line.split(",")[0]
        if not (root / fname).exists():
            make_image(root / fname, list(COLOURS.values())[k % 3], seed=k)
    (root / "labels.csv").write_text(text)
    return root


def test_csv_duplicate_rows_with_the_same_label_become_one_item(tmp_path, capsys):
    root = _csv_dataset(tmp_path / "ds", "fname,label\na.png,cat\nb.png,dog\na.png,cat\n"
                                          "c.png,dog\nb.png,dog\na.png,cat\n")
    items = data.scan(DataConfig(path=str(root), labels="csv:labels.csv"))
    names = items["path"].map(lambda p: Path(p).name).tolist()
    assert names == ["a.png", "b.png", "c.png"]  # one item each, in first-seen order
    assert items["label"].tolist() == ["cat", "dog", "dog"]
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1
    assert "2 file(s)" in warnings[0] and "3 duplicate row(s)" in warnings[0]


def test_csv_duplicate_rows_with_different_labels_are_refused(tmp_path, cli, monkeypatch):
    root = _csv_dataset(tmp_path / "ds", "fname,label\na.png,cat\nb.png,dog\n"
                                          "c.png,cat\nb.png,cow\n")
    with pytest.raises(UsageError, match=r"b\.png different labels: dog, cow") as e:
        data.scan(DataConfig(path=str(root), labels="csv:labels.csv"))
    assert "one label" in str(e.value) and "`labels`" in str(e.value)  # how to fix it
    # the same CSV as the data path, through the CLI: one error line, exit 2
    from conftest import assert_usage_error, write_recipe
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.toml", "ds/labels.csv")
    assert_usage_error(cli("fit", recipe), "b.png", "dog, cow")
    # rows that disagree on the split are refused too
    _csv_dataset(tmp_path / "sp", "fname,label,split\na.png,cat,train\na.png,cat,valid\n"
                                  "b.png,dog,train\n")
    with pytest.raises(UsageError, match=r"a\.png different splits: train, valid"):
        data.scan(DataConfig(path=str(tmp_path / "sp" / "labels.csv")))


def test_csv_multi_label_rows_of_one_file_are_merged(tmp_path, capsys):
    # one row per (fname, label): a common export shape
    root = _csv_dataset(tmp_path / "ds", "fname,labels\na.png,cat\nb.png,dog\na.png,dog\n"
                                          "a.png,cat\nc.png,\nc.png,owl\n")
    items = data.scan(DataConfig(path=str(root), labels="csv:labels.csv"))
    got = dict(zip(items["path"].map(lambda p: Path(p).name), items["labels"]))
    assert got == {"a.png": "cat dog", "b.png": "dog", "c.png": "owl"}
    err = capsys.readouterr().err
    assert "2 file(s)" in err and "5 rows into 2 images" in err
    # 0/1 columns: the union of the rows' ones
    (root / "onehot.csv").write_text("fname,cat,dog,owl\na.png,1,0,0\nb.png,0,1,0\n"
                                     "a.png,0,0,1\n")
    items = data.scan(DataConfig(path=str(root), labels="csv:onehot.csv"))
    got = dict(zip(items["path"].map(lambda p: Path(p).name), items["labels"]))
    assert got == {"a.png": "cat owl", "b.png": "dog"}


def test_labels_from_file_name_regex(tmp_path):
    root = tmp_path / "wood"
    names = {"0107.jpg": "01", "0199.jpg": "01", "0203.jpg": "02", "0211.jpg": "02",
             "1001.jpg": "10", "1002.jpg": "10"}
    for i, n in enumerate(names):
        make_image(root / n, list(COLOURS.values())[i % 3], seed=i)
    make_image(root / "x_readme.png", COLOURS["red"])  # no match: left out
    items = data.scan(DataConfig(path=str(root), labels=r"name:^(\d{2})"))
    assert dict(zip(items["path"].map(lambda p: Path(p).name), items["label"])) == names

    # without a group, the whole match is the label
    items = data.scan(DataConfig(path=str(root), labels=r"name:^\d{3}"))
    assert set(items["label"]) == {"010", "019", "020", "021", "100"}

    with pytest.raises(UsageError, match="no file name matches"):
        data.scan(DataConfig(path=str(root), labels=r"name:^zz(\d)"))
    with pytest.raises(UsageError, match="invalid"):
        data.scan(DataConfig(path=str(root), labels=r"name:^(\d{2}"))


def test_labels_keep_leading_zeros_through_load(tmp_path):
    from clfapp.config import Config, TrainConfig
    root = tmp_path / "wood"
    for i in range(12):
        make_image(root / f"{(i % 2) + 1:02d}{i:02d}.jpg", list(COLOURS.values())[i % 2], seed=i)
    cfg = Config(data=DataConfig(path=str(root), labels=r"name:^(\d{2})", size=16),
                 train=TrainConfig(seed=0))
    ds = data.load(cfg)
    assert ds.classes == ["01", "02"]


# --- image modes -----------------------------------------------------------------------------

def test_read_image_modes(tmp_path):
    size = 20
    gray = Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (25, 1)), mode="L")
    gray.save(tmp_path / "gray.png")
    pal = Image.new("RGB", (30, 30), COLOURS["green"]).quantize(colors=4)
    assert pal.mode == "P"
    pal.save(tmp_path / "pal.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :8, 3] = 255   # left half opaque red, right half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")

    for name in ("gray.png", "pal.png", "rgba.png", "cmyk.jpg"):
        for resize in ("squish", "crop", "pad"):
            a = images.read_image(tmp_path / name, size, resize)
            assert a.shape == (size, size, 3) and a.dtype == np.uint8, (name, resize)

    g = images.read_image(tmp_path / "gray.png", 25)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert g[0, 0, 0] < 20 and g[0, -1, 0] > 220  # the gradient survives
    p = images.read_image(tmp_path / "pal.png", 10)
    assert np.abs(p.astype(int) - COLOURS["green"]).max() <= 8
    r = images.read_image(tmp_path / "rgba.png", 16)
    assert tuple(r[8, 2]) == (200, 0, 0)          # opaque part keeps its colour
    assert tuple(r[8, 13]) == (255, 255, 255)     # transparency over white, not black
    c = images.read_image(tmp_path / "cmyk.jpg", 10)
    assert c[5, 5, 0] > 200 and c[5, 5, 1] < 50 and c[5, 5, 2] < 50


def test_read_image_16_bit_grayscale_keeps_its_range(tmp_path):
    # 16-bit PNGs (scanners, microscopes) must be scaled to 8 bits, not clipped at 255
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a = images.read_image(tmp_path / "g16.png", 32)
    assert a.shape == (32, 32, 3)
    row = a[16, :, 0].astype(int)
    assert len(np.unique(row)) > 16, f"only {len(np.unique(row))} grey levels left: {row}"
    assert row[0] < 20 and 100 < row[16] < 160 and row[-1] > 235


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = COLOURS["red"]
    a[:, 10:] = COLOURS["blue"]
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 3  # rotated 180°
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    r = images.read_image(tmp_path / "rot.jpg", 20)
    assert r[10, 2, 2] > 150 and r[10, 2, 0] < 100   # left is now blue
    assert r[10, 17, 0] > 150 and r[10, 17, 2] < 100  # right is now red


def test_read_many_skips_unreadable(tmp_path, capsys):
    good = make_image(tmp_path / "good.png", COLOURS["red"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    stack, kept = images.read_many([str(bad), str(good), str(tmp_path / "gone.png")], 16, "squish")
    assert kept == [1] and stack.shape == (1, 16, 16, 3)
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "gone.png" in err


# --- splits ----------------------------------------------------------------------------------

def _keys(labels: pd.Series) -> list[str]:
    """Item names like a folder dataset's relative paths: CLASS/CLASS_i.png."""
    return [f"{lab}/{lab}_{i}.png" for i, lab in enumerate(labels)]


def test_stratified_split_is_seeded_and_follows_the_hash_rule():
    labels = pd.Series(["a"] * 12 + ["b"] * 12 + ["c"] * 12)
    keys = _keys(labels)
    m1 = splits.stratified(labels, keys, 0.25, seed=1)
    assert (m1 == splits.stratified(labels, keys, 0.25, seed=1)).all()
    assert (m1 != splits.stratified(labels, keys, 0.25, seed=2)).any()
    # valid iff the item's own hash is below valid_pct, unless a class would lose a side
    u = splits.hash_units(keys, 1)
    for label in "abc":
        idx = np.flatnonzero(labels == label)
        rule = u[idx] < 0.25
        if 0 < rule.sum() < len(idx):
            assert (m1[idx] == rule).all(), label
        assert 1 <= m1[idx].sum() <= len(idx) - 1, label


def test_hash_units_are_the_documented_sha1_of_seed_and_key():
    # a fixed contract: changing it would silently re-split every existing dataset
    import hashlib
    u = splits.hash_units(["red/red_00.png", "a b/ü.jpg"], 7)
    for key, got in zip(["red/red_00.png", "a b/ü.jpg"], u):
        want = int(hashlib.sha1(f"7:{key}".encode()).hexdigest()[:12], 16) / 16**12
        assert got == want and 0 <= got < 1


def test_stratified_split_keeps_every_class_in_valid():
    # imbalanced: 50 / 3 / 3 / 3 / 2 at 20 %: every class with two or more images must have
    # validation images (and keep training images), whatever the seed
    labels = pd.Series(["a"] * 50 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3 + ["e"] * 2)
    for seed in range(20):
        mask = splits.stratified(labels, _keys(labels), 0.2, seed)
        assert set(labels[~mask]) == set(labels), seed
        missing = set(labels) - set(labels[mask])
        assert not missing, f"seed {seed}: no validation image for class(es) {sorted(missing)}"


def test_stratified_single_image_class_stays_in_training(capsys):
    labels = pd.Series(["a"] * 5 + ["b"] * 5 + ["lonely"])
    mask = splits.stratified(labels, _keys(labels), 0.2, 0)
    assert not mask[10]
    assert "lonely" in capsys.readouterr().err


def test_random_split_is_seeded():
    keys = [f"img_{i}.png" for i in range(50)]
    m = splits.random(keys, 0.2, 3)
    assert (m == splits.random(keys, 0.2, 3)).all() and (m != splits.random(keys, 0.2, 4)).any()
    assert (m == (splits.hash_units(keys, 3) < 0.2)).all()
    # never an empty side, even when the hash rule would leave one
    for seed in range(20):
        tiny = splits.random(keys[:3], 0.05, seed)
        assert tiny.sum() == 1, seed
        assert not splits.random(keys[:3], 0.95, seed).all(), seed


def test_every_class_keeps_a_training_image():
    labels = pd.Series(["a", "a", "b", "b"])
    for seed in range(10):
        for pct in (0.05, 0.5, 0.9):
            mask = splits.stratified(labels, _keys(labels), pct, seed)
            # two images per class: exactly one valid, one train, whatever the hash says
            assert sorted(labels[mask]) == ["a", "b"], (seed, pct)
            assert sorted(labels[~mask]) == ["a", "b"], (seed, pct)


def test_load_decodes_and_aligns(tmp_path):
    from clfapp.config import Config, TrainConfig
    root = make_folder_dataset(tmp_path / "ds", n_per_class=5, size=20)
    cfg = Config(data=DataConfig(path=str(root), size=16), train=TrainConfig(seed=0))
    ds = data.load(cfg)
    assert ds.classes == sorted(COLOURS)
    assert ds.pixels.shape == (15, 16, 16, 3) and ds.pixels.dtype == np.uint8
    for i, (p, label) in enumerate(zip(ds.items["path"], ds.items["label"])):
        assert Path(p).parent.name == label
        # the pixel rows belong to their items: mean colour matches the class colour
        assert np.abs(ds.pixels[i].reshape(-1, 3).mean(0) - COLOURS[label]).max() < 20
    assert len(ds.indices("train")) + len(ds.indices("valid")) == 15
    assert set(ds.items.loc[ds.indices("valid"), "label"]) == set(COLOURS)


def test_splits_csv_written_by_fit_has_every_item(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "split"
    make_folder_dataset(root / "train", n_per_class=8)
    make_folder_dataset(root / "test", n_per_class=2)
    result = cli("fit", tiny_recipe, "--data", "data/split", "--name", "s", "--split-seed", "5")
    assert result.exit_code == 0, result.output
    raw = pd.read_csv(tmp_path / "runs" / "s" / "splits.csv", dtype=str)
    assert list(raw.columns[:3]) == ["path", "label", "split"]
    # stored relative to the dataset root (its `root` column), read back absolute
    assert set(raw["path"]) == {str(p.relative_to(root)) for p in root.rglob("*.png")}
    df = splits.read(tmp_path / "runs" / "s" / "splits.csv")
    on_disk = {str(p) for p in root.rglob("*.png")}
    assert len(df) == len(on_disk) == 30
    assert set(df["path"]) == on_disk
    counts = df["split"].value_counts().to_dict()
    assert counts["test"] == 6 and counts["train"] + counts["valid"] == 24
    assert (df["label"] == df["path"].map(lambda p: Path(p).parent.name)).all()
    # each class: its own hash decides (~20 % of 8 on average), never an empty side
    pool = df[df["split"] != "test"]
    assert set(pool.loc[pool["split"] == "valid", "label"]) == set(COLOURS)
    assert set(pool.loc[pool["split"] == "train", "label"]) == set(COLOURS)
    # the split recorded is the one the documented rule gives for (seed, relative path)
    rel = [Path(p).relative_to(root).as_posix() for p in pool["path"]]
    want = splits.stratified(pool["label"].reset_index(drop=True), rel, 0.2, 5)
    assert ((pool["split"] == "valid").to_numpy() == want).all()
    # the same seed gives the same split: a second run agrees item for item
    result = cli("fit", tiny_recipe, "--data", "data/split", "--name", "s2", "--split-seed", "5")
    assert result.exit_code == 0, result.output
    df2 = splits.read(tmp_path / "runs" / "s2" / "splits.csv")
    assert df.sort_values("path").reset_index(drop=True).equals(
        df2.sort_values("path").reset_index(drop=True))
