"""`clfapp data check`: counts, sizes and modes, unreadable files, duplicates (also across the
split fit makes), classes too small, missing files; and the quick part `fit` runs first."""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import COLOURS, make_folder_dataset, make_image, make_stripes_multilabel, write_recipe


def _messy(root: Path) -> dict:
    """A folder dataset with every problem data check looks for; returns the odd files."""
    make_folder_dataset(root, n_per_class=12)
    odd = {"empty": root / "red" / "empty.png", "truncated": root / "blue" / "cut.jpg",
           "text": root / "green" / "notes.jpg", "png_as_jpg": root / "green" / "really_png.jpg"}
    odd["empty"].write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 10, 200)).save(buf, "JPEG")
    odd["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    odd["text"].write_text("this is not an image")
    make_image(root / "green" / "tmp.png", COLOURS["green"], size=(30, 20), seed=7)
    (root / "green" / "tmp.png").rename(odd["png_as_jpg"])
    # ten identical copies in one class: the hash split puts some in train, some in valid
    for i in range(10):
        shutil.copy(root / "red" / "red_00.png", root / "red" / f"copy_{i}.png")
    make_image(root / "lonely" / "only.png", (128, 128, 128), mode="L")
    return odd


def test_data_check_finds_every_problem(cli, tmp_path):
    root = tmp_path / "messy"
    odd = _messy(root)
    result = cli("data", "check", root, "--json")
    assert result.exit_code == 0, result.output   # fit would accept it (with warnings)
    r = json.loads(result.stdout)
    assert r["images"] == 3 * 12 + 4 + 10 + 1 and not r["multi_label"]
    assert r["counts"]["lonely"] == {"train": 1}
    assert sum(r["counts"]["red"].values()) == 12 + 1 + 10
    reasons = {Path(u["path"]).name: u["reason"] for u in r["unreadable"]}
    assert reasons == {"empty.png": "empty file (0 bytes)", "cut.jpg": "truncated",
                       "notes.jpg": "not an image"}
    kinds = {f["kind"]: f for f in r["findings"]}
    assert str(odd["png_as_jpg"]) in kinds["wrong_extension"]["paths"]
    assert "PNG" in kinds["wrong_extension"]["message"]
    assert "lonely" in kinds["single_image"]["message"]
    assert r["modes"]["L"] == 1 and r["formats"]["PNG"] >= 3 * 12
    assert r["sizes"]["24x24"] == 3 * 12 + 10 + 1 and r["short_side"]["min"] == 20
    # one duplicate group: red_00 and its ten copies
    assert len(r["duplicates"]) == 1 and len(r["duplicates"][0]) == 11
    # across the split: the very split fit makes (data.load), not a split of its own
    from clfapp import config, data
    cfg = config.load(None, {"data": {"path": str(root), "size": 16}})
    made = dict(zip(data.load(cfg).items["path"], data.load(cfg).items["split"]))
    group = {Path(p).name: made[p] for p in r["duplicates"][0]}
    assert len(set(group.values())) == 2, group   # the copies do sit on both sides
    assert len(r["cross_split"]) == 1
    assert {Path(e["path"]).name: e["split"] for e in r["cross_split"][0]} == group
    assert r["errors"] == 0 and r["warnings"] == len(r["findings"])


def test_data_check_human_report(cli, tmp_path):
    root = tmp_path / "messy"
    _messy(root)
    result = cli("data", "check", root)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "images per class: train / valid" in out
    assert "unreadable: 3" in out and "cut.jpg: truncated" in out
    assert "exact duplicates: 1 group(s)" in out and "duplicates across train/valid/test: 1" in out
    assert "warning: 1 identical image(s) sit on both sides" in out
    assert out.strip().splitlines()[-1].startswith("verdict: ok for fit")


def test_duplicates_across_split_folders(cli, tmp_path):
    root = tmp_path / "split"
    make_folder_dataset(root / "train", n_per_class=4)
    for k, (name, rgb) in enumerate(COLOURS.items()):  # other seeds: no copy of a train image
        for i in range(2):
            make_image(root / "valid" / name / f"v_{i}.png", rgb, seed=1000 + 10 * k + i)
    shutil.copy(root / "train" / "red" / "red_03.png", root / "valid" / "red" / "leaked.png")
    r = json.loads(cli("data", "check", root, "--json").stdout)
    assert r["layout"] == "split folders"
    assert [{Path(e["path"]).name: e["split"] for e in g} for g in r["cross_split"]] == [
        {"red_03.png": "train", "leaked.png": "valid"}]


def test_multi_label_counts_per_label(cli, tmp_path):
    root = make_stripes_multilabel(tmp_path / "ml", n=48)
    (root / "images" / "m00.png").write_bytes(b"")
    r = json.loads(cli("data", "check", root, "--json", "--set", "data.labels=csv:labels.csv").stdout)
    assert r["multi_label"] and r["layout"] == "csv" and set(r["classes"]) == set(COLOURS)
    csv = (root / "labels.csv").read_text().splitlines()[1:]
    for label in COLOURS:
        expected = sum(label in row.split(",")[1].split() for row in csv)
        assert sum(r["counts"][label].values()) == expected
        assert set(r["counts"][label]) == {"train", "valid"}  # the iterative split fit makes
    assert [Path(u["path"]).name for u in r["unreadable"]] == ["m00.png"]


def test_a_recipe_is_checked_and_fit_refusals_exit_2(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=3)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    ok = cli("data", "check", "tiny.toml")
    assert ok.exit_code == 0 and "3 classes, 9 images" in ok.stdout
    (tmp_path / "data" / "shapes" / "labels.csv").write_text("fname,label\nx/a.png,red\nx/b.png,blue\n")
    bad = cli("data", "check", "tiny.toml", "--set", "data.labels=csv:labels.csv")
    assert bad.exit_code == 2
    assert "error: all 2 of 2 file(s) named in the label file do not exist" in bad.stdout
    assert bad.stdout.strip().splitlines()[-1] == "verdict: fit would refuse this data"


def test_fit_runs_the_quick_check_first_and_it_is_cheap(tmp_path, capsys):
    """3,000 files: the quick check lists them and reads none (the files here are not even
    images), so it costs a fraction of a second; and a class with no training image is said."""
    from clfapp import config
    from clfapp.data import check

    root = tmp_path / "big"
    for c in range(12):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(250):
            (root / f"class{c}" / f"img_{i:03d}.jpg").write_bytes(b"")
    cfg = config.load(None, {"data": {"path": str(root)}})
    t0 = time.perf_counter()
    report = check.before_fit(cfg)
    seconds = time.perf_counter() - t0
    assert report.images == 3000 and not report.findings
    assert seconds < 1.5, f"the quick check took {seconds:.2f} s on 3000 files"
    # split folders where a class has no training image
    split = tmp_path / "split"
    make_folder_dataset(split / "train", n_per_class=2, classes=["red", "blue"])
    make_folder_dataset(split / "valid", n_per_class=2, classes=["red", "blue", "green"])
    capsys.readouterr()
    check.before_fit(config.load(None, {"data": {"path": str(split)}}))
    err = capsys.readouterr().err
    assert "1 class(es) have no training image" in err and "green" in err


def test_progress_is_shown_on_long_work(cli, tmp_path):
    root = make_folder_dataset(tmp_path / "many", n_per_class=70, size=8)
    result = cli("data", "check", root, "--json")
    assert result.exit_code == 0
    assert "checking images: 100% (210/210" in result.stderr
    json.loads(result.stdout)  # the progress stays out of the JSON
