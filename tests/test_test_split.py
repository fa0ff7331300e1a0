"""data.test_pct (train/valid/test by the hash rule) and `fit --full` (retrain on train+valid)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clfapp.data import splits
from conftest import assert_usage_error, make_folder_dataset, write_recipe


def _keys(labels):
    return [f"{l}/{l}_{i:02d}.png" for i, l in enumerate(labels)]


def test_three_way_split_follows_the_hash_rule_and_keeps_train_and_valid():
    labels = pd.Series(["a"] * 30 + ["b"] * 30 + ["c"] * 30 + ["tiny"] * 2)
    keys = _keys(labels)
    parts = splits.stratified_parts(labels, keys, 0.2, 0.1, seed=3)
    u = splits.hash_units(keys, 3)
    for label in ("a", "b", "c"):
        idx = np.flatnonzero(labels == label)
        want = np.where(u[idx] < 0.1, "test", np.where(u[idx] < 0.3, "valid", "train"))
        p = parts[idx]
        assert {"train", "valid"} <= set(p), label
        if {"train", "valid"} <= set(want) and (want != "test").sum() >= 2:
            assert (p == want).all(), label      # exactly the rule where no fix-up was needed
    # ~10 % test overall (the hash: on average, not exactly)
    assert 3 <= (parts == "test").sum() <= 18
    # a class of 2: one train, one valid, no test (documented)
    tiny = parts[np.flatnonzero(labels == "tiny")]
    assert sorted(tiny) == ["train", "valid"]
    # test_pct = 0 is the old two-way split, item for item
    two = splits.stratified_parts(labels, keys, 0.2, 0.0, seed=3)
    assert ((two == "valid") == splits.stratified(labels, keys, 0.2, seed=3)).all()


def test_three_way_split_is_stable_when_images_are_added():
    labels = pd.Series(["a"] * 20 + ["b"] * 20)
    keys = _keys(labels)
    before = splits.stratified_parts(labels, keys, 0.2, 0.1, seed=5)
    more = pd.Series(list(labels) + ["a"] * 10 + ["b"] * 10)
    more_keys = keys + [f"{l}/new_{i}.png" for i, l in enumerate(more[40:])]
    after = splits.stratified_parts(more, more_keys, 0.2, 0.1, seed=5)
    assert (after[:40] == before).all()


def test_test_pct_on_a_dataset_with_its_own_split_is_refused(tmp_path):
    from clfapp.errors import UsageError
    items = pd.DataFrame({"path": ["a", "b", "c", "d"], "label": ["x", "x", "y", "y"],
                          "split": ["train", "test", "train", "test"]})
    with pytest.raises(UsageError, match="test_pct"):
        splits.assign(items, "auto", 0.2, 0, test_pct=0.1)


def test_iterative_split_with_test(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.random((200, 4)) < 0.3
    parts = splits.iterative_parts(y, 0.2, 0.1, seed=1)
    assert (parts == splits.iterative_parts(y, 0.2, 0.1, seed=1)).all()   # seeded
    n = {p: (parts == p).sum() for p in ("train", "valid", "test")}
    assert 14 <= n["test"] <= 26 and 34 <= n["valid"] <= 46, n


@pytest.mark.parametrize("sets", [["data.test_pct=0.9"], ["data.test_pct=-0.1"],
                                  ["data.valid_pct=0.5", "data.test_pct=0.5"]])
def test_bad_fractions_are_one_usage_error(tmp_path, cli, monkeypatch, sets):
    make_folder_dataset(tmp_path / "data" / "shapes")
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    monkeypatch.chdir(tmp_path)
    args = [a for s in sets for a in ("--set", s)]
    assert_usage_error(cli("fit", "tiny.toml", *args), "test_pct")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture
def split_data(tmp_path, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=12)
    write_recipe(tmp_path / "tiny.toml", "data/shapes", data={"test_pct": 0.1},
                 train={"epochs": 2})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_with_test_pct_measures_the_test_part_and_never_decodes_it_before(
        split_data, cli, monkeypatch):
    from clfapp.data import images
    from clfapp.infer import evaluate

    decoded, measuring = [], []
    real_read, real_held_out = images.read_many, evaluate.held_out

    def read_many(paths, *a, **k):
        if not measuring:
            decoded.extend(str(p) for p in paths)
        return real_read(paths, *a, **k)

    def held_out(*a, **k):
        measuring.append(True)
        return real_held_out(*a, **k)
    monkeypatch.setattr(images, "read_many", read_many)
    monkeypatch.setattr(evaluate, "held_out", held_out)

    result = cli("fit", "tiny.toml", "--name", "three")
    assert result.exit_code == 0, result.output
    run = split_data / "runs" / "three"
    s = pd.read_csv(run / "splits.csv")
    assert set(s["split"]) == {"train", "valid", "test"}
    for label, g in s.groupby("label"):
        assert {"train", "valid"} <= set(g["split"]), label
    test = s[s["split"] == "test"]
    assert 1 <= len(test) <= 10
    assert decoded and not set(test["path"]) & set(decoded)   # never decoded for training
    m = json.loads((run / "metrics.json").read_text())
    assert m["split"] == "test" and m["n"] == len(test)
    assert m["valid"]["n"] == (s["split"] == "valid").sum()


def test_fit_full_retrains_on_train_and_valid(split_data, cli):
    from safetensors.numpy import load_file

    result = cli("fit", "tiny.toml", "--name", "full", "--full")
    assert result.exit_code == 0, result.output
    run = split_data / "runs" / "full"
    assert "trained on train+valid" in result.output
    # the first model is kept aside; the final one differs
    first = load_file(str(run / "model-valid" / "weights.safetensors"))
    final = load_file(str(run / "model" / "weights.safetensors"))
    assert first.keys() == final.keys()
    assert any(not np.array_equal(first[k], final[k]) for k in first)
    # the second training: same epoch count, on every non-test item
    s = pd.read_csv(run / "splits.csv")
    n_train_valid = int(s["split"].isin(["train", "valid"]).sum())
    rows_first = pd.read_csv(run / "results.csv")
    rows_full = pd.read_csv(run / "results_full.csv")
    assert len(rows_full) == len(rows_first) == 2
    m = json.loads((run / "metrics.json").read_text())
    assert m["full"]["n_train"] == n_train_valid and m["full"]["epochs"] == 2
    assert f"{n_train_valid} images" in result.output
    assert m["full"]["test"]["n"] == (s["split"] == "test").sum()
    assert m["split"] == "test"       # the first model's figures stay at the top
    report = (run / "report.md").read_text()
    assert ("final model trained on train+valid; the validation figures above are the "
            "estimate from the first training") in report
    pred = cli("predict", run, "data/shapes/red")
    assert pred.exit_code == 0, pred.output
    assert "red" in pred.output
