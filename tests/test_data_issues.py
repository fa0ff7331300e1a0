"""`clfapp data issues`: label issues from a k-fold run's oof.csv (cleanlab), near-duplicates and
outliers of the data's images, issues.csv / issues.html in a new folder, a cleaned label CSV
that `fit` takes, the user's files untouched, one-line errors.

The oof.csv here is written by the test (the interface agreed with `fit --folds K`): every
image once, confident, right probabilities, except a planted flip. The pretrained features of
the outlier finder are replaced by a cheap stand-in (each image's mean colour): the finders
have their own tests; here it is the command around them."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import altered_copy, assert_usage_error, make_stripes_multilabel, write_recipe

CLASSES = {"a": (220, 40, 40), "b": (40, 200, 40), "c": (40, 40, 220)}
FLIPPED = "train/a/flip.png"      # filed under a, the probabilities say c
COPY = "valid/a/copy_of_a0.jpg"   # an altered copy of train/a/a0.png, across the split
ODD = "train/c/odd.png"           # unlike every class


def picture(path: Path, rgb, seed: int, size: int = 64, tint: float = 0.35) -> Path:
    """A smooth random picture (8x8 random colours, upscaled) tinted with a colour: unrelated
    to every other picture, yet of its class's colour."""
    rng = np.random.default_rng(seed)
    grid = tint * np.array(rgb, float) + (1 - tint) * rng.integers(0, 256, (8, 8, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def colour_features(pixels: np.ndarray) -> np.ndarray:
    """Stand-in for the pretrained features: the image's mean colour less its grey level
    (weighted 3) beside its 2x2 colour thumbnail, mean removed."""
    b, s = len(pixels), pixels.shape[1]
    x = pixels.astype(np.float32)
    hue = x.reshape(b, -1, 3).mean(1)
    coarse = x.reshape(b, 2, s // 2, 2, s // 2, 3).mean((2, 4)).reshape(b, -1)
    return np.concatenate([3 * (hue - hue.mean(1, keepdims=True)),
                           coarse - coarse.mean(1, keepdims=True)], 1)


@pytest.fixture(autouse=True)
def cheap_features(monkeypatch):
    from clfapp.infer import features
    monkeypatch.setattr(features, "pretrained_feature_fn", lambda *a, **k: colour_features)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def data(tmp_path) -> Path:
    """tmp_path/data/shapes: train/ and valid/ folders, 3 classes; a flipped, a copied and an
    odd image planted."""
    root = tmp_path / "data" / "shapes"
    seed = 0
    for c, rgb in CLASSES.items():
        for split, n in (("train", 8), ("valid", 3)):
            for i in range(n):
                picture(root / split / c / f"{c}{i if split == 'train' else 10 + i}.png", rgb, seed)
                seed += 1
    picture(root / FLIPPED, CLASSES["c"], 999)
    altered_copy(root / "train/a/a0.png", root / COPY)
    picture(root / ODD, (255, 255, 0), 4242, tint=0.6)   # yellow: no class is
    return root


def write_oof(run: Path, root: Path, flipped_to: str = "c", seed: int = 0) -> Path:
    """run/oof.csv as `fit --folds K` writes it: path, split, label, one column per class;
    each image's probabilities favour its given class (0.55-0.95), the flipped image's
    confidently `flipped_to`."""
    rng = np.random.default_rng(seed)
    names = list(CLASSES)
    rows = []
    for p in sorted(root.rglob("*.*")):
        rel = p.relative_to(root).as_posix()
        split, label = rel.split("/")[:2]
        k = names.index(flipped_to if rel == FLIPPED else label)
        probs = rng.dirichlet(np.ones(len(names))) * 0.1
        probs[k] += 0.97 - 0.1 if rel == FLIPPED else rng.uniform(0.45, 0.85)
        probs /= probs.sum()
        rows.append({"path": str(p), "split": split, "label": label, **dict(zip(names, probs))})
    run.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run / "oof.csv", index=False)
    return run


def test_label_flip_copy_and_odd_image_flagged_data_unchanged(cli, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = write_oof(tmp_path / "runs" / "kfold-1", data)
    before = tree_hash(data)
    r = cli("data", "issues", data, "--run", run)
    assert r.exit_code == 0, r.output
    assert tree_hash(data) == before
    folder = tmp_path / "runs" / "issues-1"
    t = pd.read_csv(folder / "issues.csv", keep_default_na=False)
    assert list(t.columns) == ["path", "split", "kind", "given", "suggested", "score", "group"]
    rel = t.assign(path=[Path(p).relative_to(data).as_posix() for p in t["path"]])
    labels = rel[rel["kind"] == "label"]
    assert labels.iloc[0][["path", "given", "suggested"]].tolist() == [FLIPPED, "a", "c"]
    assert labels["score"].is_monotonic_decreasing
    dups = rel[rel["kind"] == "near_duplicate"]
    assert set(dups["path"]) == {"train/a/a0.png", COPY}
    assert dups["group"].nunique() == 1 and dups["group"].iloc[0] != ""
    assert (dups["suggested"] == "").all() and set(dups["split"]) == {"train", "valid"}
    odd = rel[rel["kind"] == "outlier"]
    assert odd.iloc[0][["path", "split", "given"]].tolist() == [ODD, "train", "c"]
    assert odd["score"].is_monotonic_decreasing and len(odd) <= 2
    # most suspicious first within each kind; kinds in order label, near_duplicate, outlier
    assert rel["kind"].tolist() == sorted(rel["kind"], key=["label", "near_duplicate", "outlier"].index)
    page = (folder / "issues.html").read_text()
    for sid in ("label", "near-duplicate", "outlier"):
        assert f'id="{sid}"' in page
    assert page.count("data:image/png;base64,") == len(t) and "flip.png" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert "1/3 label issues" in r.output and "3/3 outliers" in r.output
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("fix", ["drop", "relabel"])
def test_write_clean_csv_that_fit_accepts(cli, data, tmp_path, monkeypatch, fix):
    monkeypatch.chdir(tmp_path)
    run = write_oof(tmp_path / "runs" / "kfold-1", data)
    before = tree_hash(data)
    clean = tmp_path / "data" / "shapes-clean.csv"
    r = cli("data", "issues", data, "--run", run, "--out", tmp_path / "found",
            "--write-clean", clean, "--fix", fix)
    assert r.exit_code == 0, r.output
    assert tree_hash(data) == before and (tmp_path / "found" / "issues.csv").is_file()
    df = pd.read_csv(clean, keep_default_na=False)
    assert list(df.columns) == ["fname", "label", "split"]
    by = dict(zip(df["fname"], df["label"]))
    everything = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.*"))
    # the extra copy (the valid one: the training original is kept) and the odd image go
    found = pd.read_csv(tmp_path / "found" / "issues.csv", keep_default_na=False)
    outliers = {Path(p).relative_to(data).as_posix() for p in found.loc[found["kind"] == "outlier", "path"]}
    assert ODD in outliers
    dropped = {COPY} | outliers | ({FLIPPED} if fix == "drop" else set())
    assert sorted(f.removeprefix("shapes/") for f in by) == sorted(set(everything) - dropped)
    assert "shapes/train/a/a0.png" in by
    if fix == "relabel":
        assert by["shapes/" + FLIPPED] == "c"
    assert all(by[f] == f.split("/")[2] for f in by if f != "shapes/" + FLIPPED)
    assert ("shapes/" + FLIPPED in by) == (fix == "relabel")
    assert dict(zip(df["fname"], df["split"]))["shapes/train/a/a1.png"] == "train"
    assert set(df["split"]) == {"train", "valid"}
    write_recipe(tmp_path / "clean.toml", clean.relative_to(tmp_path))
    fit = cli("fit", "clean.toml", "--name", f"clean-{fix}")
    assert fit.exit_code == 0, fit.output
    splits = pd.read_csv(tmp_path / "runs" / f"clean-{fix}" / "splits.csv")
    used = {(Path(p).relative_to(tmp_path / "data") if Path(p).is_absolute() else Path(p)).as_posix(): s
            for p, s in zip(splits["path"], splits["split"])}
    assert used == dict(zip(df["fname"], df["split"]))   # fit kept the split the CSV gives


def test_write_clean_on_a_symlinked_data_folder(cli, data, tmp_path, monkeypatch):
    """data/shapes a symlink to the images elsewhere (a big disk): --write-clean data/x.csv is
    above it as written, and the CSV names shapes/..., which `fit` reads inside its folder
    (the paths resolved through the link would point outside and be refused)."""
    monkeypatch.chdir(tmp_path)
    real = tmp_path / "disk" / "shapes"
    real.parent.mkdir()
    data.rename(real)
    data.symlink_to(real, target_is_directory=True)
    run = write_oof(tmp_path / "runs" / "kfold-1", data)
    clean = tmp_path / "data" / "shapes-clean.csv"
    r = cli("data", "issues", data, "--run", run, "--out", tmp_path / "found",
            "--write-clean", clean, "--fix", "relabel")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(clean, keep_default_na=False)
    assert df["fname"].str.startswith("shapes/").all() and "shapes/train/a/a1.png" in set(df["fname"])
    from clfapp.data import _from_csv
    items = _from_csv(clean.parent, clean.name)   # refused if a name left the folder
    assert len(items) == len(df)
    # inside the data through the link is still refused
    assert_usage_error(cli("data", "issues", data, "--run", run, "--out", tmp_path / "found2",
                           "--write-clean", data / "x.csv"), "above the data")


def write_multi_oof(run: Path, root: Path, truth: dict, altered: set) -> None:
    """oof.csv of multi-label data: each label 0.85-0.97 when truly present, 0.02-0.12 when not,
    and confidently right (0.99 / 0.01) on the `altered` (fname, label) pairs; the labels
    column is the data's (altered) label set."""
    rng = np.random.default_rng(0)
    names = ["blue", "green", "red"]
    given = pd.read_csv(root / "labels.csv", keep_default_na=False)
    rows = []
    for fname, labels in zip(given["fname"], given["labels"]):
        on = set(truth[fname].split())
        probs = [(0.99 if c in on else 0.01) if (fname, c) in altered else
                 rng.uniform(0.85, 0.97) if c in on else rng.uniform(0.02, 0.12) for c in names]
        rows.append({"path": str(root / fname), "split": "train", "labels": labels, **dict(zip(names, probs))})
    run.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run / "oof.csv", index=False)


def test_multi_label_names_the_altered_labels(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_stripes_multilabel(tmp_path / "stripes", n=48)
    csv = root / "labels.csv"
    df = pd.read_csv(csv, keep_default_na=False)
    truth = dict(zip(df["fname"], df["labels"]))
    one, two = "images/m03.png", "images/m04.png"   # "blue green" and "red" in truth
    assert truth[one] == "blue green" and truth[two] == "red"
    df.loc[df["fname"] == one, "labels"] = "blue"           # green left out
    df.loc[df["fname"] == two, "labels"] = "blue red"       # blue added
    df.to_csv(csv, index=False)
    write_multi_oof(tmp_path / "kfold", root, truth, {(one, "green"), (two, "blue")})
    before = tree_hash(root)
    r = cli("data", "issues", csv, "--run", tmp_path / "kfold", "--out", tmp_path / "found")
    assert r.exit_code == 0, r.output
    assert tree_hash(root) == before
    t = pd.read_csv(tmp_path / "found" / "issues.csv", keep_default_na=False)
    labels = t[t["kind"] == "label"].set_index("path")
    assert set(labels.index) == {str(root / one), str(root / two)}
    # given minus suggested: the labels that look wrong; suggested minus given: look present
    assert labels.loc[str(root / one), ["given", "suggested"]].tolist() == ["blue", "blue green"]
    assert labels.loc[str(root / two), ["given", "suggested"]].tolist() == ["blue red", "red"]
    page = (tmp_path / "found" / "issues.html").read_text()
    assert "looks present: green" in page and "looks wrong: blue" in page


def test_bad_input_one_line(cli, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree_hash(data)
    assert_usage_error(cli("data", "issues", tmp_path / "nowhere", "--run", tmp_path), "not found")
    assert_usage_error(cli("data", "issues", data, "--folds", "1"), "--folds")
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    assert_usage_error(cli("data", "issues", data, "--run", empty), "has no oof.csv")
    run = write_oof(tmp_path / "runs" / "kfold-1", data)
    assert_usage_error(cli("data", "issues", data, "--run", run, "--fix", "drop"), "--write-clean")
    assert_usage_error(cli("data", "issues", data, "--run", run, "--write-clean",
                           tmp_path / "x.csv", "--fix", "burn"), "--fix")
    (tmp_path / "taken").mkdir()
    assert_usage_error(cli("data", "issues", data, "--run", run, "--out", tmp_path / "taken"),
                       "already exists")
    (tmp_path / "clean.csv").write_text("x\n")
    assert_usage_error(cli("data", "issues", data, "--run", run, "--write-clean", tmp_path / "clean.csv"),
                       "already exists")
    assert_usage_error(cli("data", "issues", data, "--run", run, "--write-clean",
                           data / "clean.csv"), "above the data")
    other = write_oof(tmp_path / "runs" / "kfold-2", data)
    oof = pd.read_csv(other / "oof.csv").rename(columns={"c": "zebra"})
    oof.to_csv(other / "oof.csv", index=False)
    assert_usage_error(cli("data", "issues", data, "--run", other), "classes do not match", "zebra")
    relabelled = write_oof(tmp_path / "runs" / "kfold-3", data)
    oof = pd.read_csv(relabelled / "oof.csv")
    oof.loc[0, "label"] = "b" if oof.loc[0, "label"] != "b" else "a"
    oof.to_csv(relabelled / "oof.csv", index=False)
    assert_usage_error(cli("data", "issues", data, "--run", relabelled), "other labels")
    assert_usage_error(cli("data", "issues", data, "--run", run, "--folds", 3), "--folds")
    assert tree_hash(data) == before
    assert not (tmp_path / "runs" / "issues-1").exists()


def test_oof_paths_relative_to_the_data_folder(data, tmp_path):
    """oof.csv may name images relative to the data's folder: they are the same images."""
    from clfapp.data import scan
    from clfapp.config import load
    from clfapp.infer import issues as iss

    run = write_oof(tmp_path / "kfold", data)
    oof = pd.read_csv(run / "oof.csv")
    oof["path"] = [Path(p).relative_to(data).as_posix() for p in oof["path"]]
    oof.to_csv(run / "oof.csv", index=False)
    items = scan(load(None, {"data": {"path": str(data)}}).data)
    read = iss.read_oof(run, items, list(CLASSES), False, root=data)
    assert sorted(read.rows["path"]) == sorted(str(p) for p in data.rglob("*.*"))
    assert iss.label_issues(read)["path"].iloc[0] == str(data / FLIPPED)


def test_extra_copies_judged_pair_by_pair():
    """Of a chain A~B~C (A and C not alike) only B goes; of a train/valid pair the valid copy;
    of three copies of one picture two go, the training one stays."""
    from clfapp.infer.issues import copies_to_drop

    split = {"A": "train", "B": "train", "C": "train", "T": "valid", "U": "train", "V": "test"}
    assert copies_to_drop([("A", "B", 0.99), ("B", "C", 0.97)], split) == {"B"}
    assert copies_to_drop([("T", "U", 0.98), ("V", "T", 0.97)], split) == {"T"}
    assert copies_to_drop([("T", "U", 0.96), ("V", "T", 0.99), ("U", "V", 0.95)], split) == {"V", "T"}


TINY_FIT = ["--set", "model.arch=test_resnet", "--set", "model.pretrained=false", "--set",
            "data.size=32", "--set", "train.epochs=1", "--set", "train.freeze_epochs=0",
            "--set", "train.bs=8", "--set", "train.lr=0.01", "--set", "train.precision=fp32"]


def test_without_a_run_it_fits_the_folds_first(cli, data, tmp_path, monkeypatch):
    """No --run: `clfapp fit DATA --folds K` runs first (its run folder is kept, resumable and
    reusable with --run), then its oof.csv is read."""
    monkeypatch.chdir(tmp_path)
    before = tree_hash(data)
    r = cli("data", "issues", data, "--folds", "2", *TINY_FIT)
    assert r.exit_code == 0, r.output
    assert "0/3 out-of-fold probabilities: clfapp fit" in r.output
    kfold_runs = [f for f in (tmp_path / "runs").iterdir() if (f / "oof.csv").is_file()]
    assert len(kfold_runs) == 1
    oof = pd.read_csv(kfold_runs[0] / "oof.csv")
    assert (oof["split"] == "train").sum() == len(list((data / "train").rglob("*.png")))
    t = pd.read_csv(tmp_path / "runs" / "issues-1" / "issues.csv", keep_default_na=False)
    assert {"near_duplicate", "outlier"} <= set(t["kind"])
    assert tree_hash(data) == before
