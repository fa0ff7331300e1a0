"""`clfapp fit DATA --folds K` (train/kfold.py): K fold models in one run folder, every training
image once in oof.csv with its fold model's probabilities, fold figures with mean ± std, the
folds as an ensemble that predict accepts, resumable at the interrupted fold, and the refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_usage_error, make_folder_dataset, write_recipe

K = 2


def _cli(*args):
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny data (3 classes x 8, so 6 training images a class after the hash split), a 2-epoch
    recipe, and one uninterrupted deterministic k-fold run `ref` made once for the module."""
    w = tmp_path_factory.mktemp("kfold")
    make_folder_dataset(w / "data" / "shapes", n_per_class=8)
    write_recipe(w / "tiny.toml", "data/shapes", train={"epochs": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(w)
        result = _cli("fit", "tiny.toml", "--folds", K, "--deterministic", "--name", "ref")
    assert result.exit_code == 0, result.output
    return w


def _oof(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "oof.csv", keep_default_na=False)


def test_every_training_image_once_with_its_fold_models_probabilities(work):
    from clfapp.data import splits
    from clfapp.infer.ensemble import EnsemblePredictor
    from clfapp.infer.predict import Predictor

    run = work / "runs" / "ref"
    oof = _oof(run)
    classes = ["blue", "green", "red"]
    assert list(oof.columns) == ["path", "split", "label", *classes]
    dataset = splits.read(run / "splits.csv")
    train = oof[oof["split"] == "train"]
    assert not train["path"].duplicated().any()
    assert set(train["path"]) == set(dataset.loc[dataset["split"] == "train", "path"])
    assert (train["label"] == train["path"].map(lambda p: Path(p).parent.name)).all()
    held = []
    for k in range(1, K + 1):
        fold = splits.read(run / f"fold-{k}" / "splits.csv")
        valid = fold.loc[fold["split"] == "valid", "path"].tolist()
        assert set(fold.loc[fold["split"] == "train", "path"]).isdisjoint(valid)
        held += valid
        probs, kept = Predictor(run / f"fold-{k}").probabilities(valid, progress=False)
        assert len(kept) == len(valid)
        rows = train.set_index("path").loc[valid, classes].to_numpy()
        np.testing.assert_allclose(rows, probs, atol=1e-6)
    assert sorted(held) == sorted(train["path"])   # the folds are disjoint and cover training
    # the dataset's validation items: the fold ensemble's probabilities, listed with their split
    valid = oof[oof["split"] == "valid"]
    assert set(valid["path"]) == set(dataset.loc[dataset["split"] == "valid", "path"])
    probs, _ = EnsemblePredictor(run).probabilities(valid["path"].tolist(), progress=False)
    np.testing.assert_allclose(valid[classes].to_numpy(), probs, atol=1e-6)


def test_fold_figures_with_mean_and_std(work):
    run = work / "runs" / "ref"
    m = json.loads((run / "metrics.json").read_text())
    assert [f["fold"] for f in m["folds"]] == list(range(1, K + 1))
    acc = [f["accuracy"] for f in m["folds"]]
    assert m["mean"]["accuracy"] == pytest.approx(np.mean(acc))
    assert m["std"]["accuracy"] == pytest.approx(np.std(acc))
    n_train = int((_oof(run)["split"] == "train").sum())
    assert sum(f["n"] for f in m["folds"]) == n_train == m["n"]   # the out-of-fold figure's n
    oof = _oof(run)
    train = oof[oof["split"] == "train"]
    right = (train[["blue", "green", "red"]].to_numpy().argmax(1)
             == train["label"].map({"blue": 0, "green": 1, "red": 2}).to_numpy())
    assert m["accuracy"] == pytest.approx(right.mean())
    report = (run / "report.md").read_text()
    assert "mean ± std" in report and f"{m['mean']['accuracy']:.4f} ± {m['std']['accuracy']:.4f}" in report
    for k in range(1, K + 1):   # each fold is a whole run folder
        for f in ("config.toml", "splits.csv", "metrics.json", "model/model.json"):
            assert (run / f"fold-{k}" / f).is_file()


def test_the_run_is_the_folds_ensemble(work, monkeypatch):
    monkeypatch.chdir(work)
    run = Path("runs/ref")
    result = _cli("predict", run, "data/shapes/red", "--out", "preds.csv")
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(work / "preds.csv")
    assert len(preds) == 8
    result = _cli("evaluate", run)
    assert result.exit_code == 0, result.output
    assert "in none of its folds" in result.output
    # fold models overlap by design (each trains on the others' held-out folds): an ensemble
    # of them is measured on the items in no fold, not refused
    result = _cli("ensemble", run / "fold-1", run / "fold-2", "--name", "folds")
    assert result.exit_code == 0, result.output


def test_a_kill_during_fold_2_then_resume_ends_the_same(work, monkeypatch):
    from clfapp.models import callbacks
    monkeypatch.chdir(work)
    original = callbacks.ResultsCSV.after_batch

    def after_batch(self):   # Ctrl-C in fold 2's second epoch, after its first batch
        original(self)
        if (self.path.parent.name == "fold-2" and self.training and self.epoch_total == 1
                and len(self.steps) == 1):
            raise KeyboardInterrupt()
    with monkeypatch.context() as mp:
        mp.setattr(callbacks.ResultsCSV, "after_batch", after_batch)
        result = _cli("fit", "tiny.toml", "--folds", K, "--deterministic", "--name", "cut")
    assert result.exit_code == 130, result.output
    run = work / "runs" / "cut"
    assert not (run / "oof.csv").exists()
    assert (run / "fold-2" / "checkpoint.safetensors").is_file()
    first = (run / "fold-1" / "model" / "weights.safetensors").stat().st_mtime_ns
    result = _cli("fit", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "fold 1/2: finished earlier, kept" in result.output
    assert (run / "fold-1" / "model" / "weights.safetensors").stat().st_mtime_ns == first
    got, ref = _oof(run), _oof(work / "runs" / "ref")
    assert got["path"].tolist() == ref["path"].tolist()
    np.testing.assert_allclose(got[["blue", "green", "red"]].to_numpy(),
                               ref[["blue", "green", "red"]].to_numpy(), atol=1e-5)
    result = _cli("fit", "--resume", run)   # finished: said, exit 0
    assert result.exit_code == 0 and "nothing to resume" in result.output


@pytest.mark.parametrize("args,fragment", [
    (["--folds", "1"], "at least 2"),
    (["--folds", "7"], "more than the 6 training image(s) of class"),
    (["--folds", "2", "--full"], "--full"),
    (["--folds", "2", "--processes", "2"], "--processes"),
])
def test_refusals(work, monkeypatch, args, fragment):
    monkeypatch.chdir(work)
    result = _cli("fit", "tiny.toml", *args, "--name", "refused")
    assert_usage_error(result, fragment)
    assert not (work / "runs" / "refused").exists()


def test_resume_takes_no_folds(work, monkeypatch):
    monkeypatch.chdir(work)
    assert_usage_error(_cli("fit", "--resume", "runs/ref", "--folds", "3"), "drop --folds")


def test_folds_are_stratified_and_stable():
    from clfapp.data import splits
    labels = pd.Series(["a"] * 5 + ["b"] * 3)
    keys = [f"{c}/{i}.png" for i, c in enumerate(labels)]
    fold = splits.kfold(labels, keys, 3, seed=1)
    assert sorted(fold[labels == "b"]) == [0, 1, 2]          # every fold holds every class
    assert set(fold[labels == "a"]) == {0, 1, 2}
    bigger = splits.kfold(pd.concat([labels, pd.Series(["a"] * 20)], ignore_index=True),
                          keys + [f"new/{i}.png" for i in range(20)], 3, seed=1)
    b = (labels == "b").to_numpy()
    assert (bigger[:len(keys)][b] == fold[b]).all()   # class b untouched
    assert (bigger[:len(keys)] == fold).mean() >= 0.8   # images added move (almost) no one


@pytest.mark.slow  # a budgeted fit measures its speed first: a few seconds more
def test_the_budget_covers_the_whole_job(work, monkeypatch):
    import tomllib
    monkeypatch.chdir(work)
    result = _cli("fit", "tiny.toml", "--folds", K, "--budget", "40", "--name", "budget")
    assert result.exit_code == 0, result.output
    run = work / "runs" / "budget"
    shares = [float(tomllib.loads((run / f"fold-{k}" / "config.toml").read_text())["train"]["budget"])
              for k in range(1, K + 1)]
    assert shares[0] <= 40 / K                     # the first fold: its share of the whole
    seconds = [json.loads((run / f"fold-{k}" / "metrics.json").read_text())["seconds"]
               for k in range(1, K + 1)]
    assert shares[1] <= 40 - seconds[0]            # the last: what the others left


@pytest.mark.slow  # a multi-label k-fold fit: its threshold searches take a few seconds
def test_multi_label_folds(tmp_path, monkeypatch):
    from conftest import make_stripes_multilabel
    from clfapp.data import splits
    from clfapp.infer.predict import Predictor

    make_stripes_multilabel(tmp_path / "data" / "multi", n=24)
    write_recipe(tmp_path / "multi.toml", "data/multi/labels.csv")
    monkeypatch.chdir(tmp_path)
    result = _cli("fit", "multi.toml", "--folds", K, "--name", "m")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "m"
    oof = _oof(run)
    classes = ["blue", "green", "red"]
    assert list(oof.columns) == ["path", "split", "labels", *classes]
    given = pd.read_csv(tmp_path / "data" / "multi" / "labels.csv", keep_default_na=False)
    given = dict(zip([str(tmp_path / "data" / "multi" / f) for f in given["fname"]], given["labels"]))
    train = oof[oof["split"] == "train"]
    assert not train["path"].duplicated().any()
    assert (train["labels"] == train["path"].map(given)).all()
    fold = splits.read(run / "fold-2" / "splits.csv")
    valid = fold.loc[fold["split"] == "valid", "path"].tolist()
    probs, _ = Predictor(run / "fold-2").probabilities(valid, progress=False)
    np.testing.assert_allclose(train.set_index("path").loc[valid, classes].to_numpy(), probs, atol=1e-6)
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["folds"]) == K and "f1_micro" in m["mean"] and "f1_micro" in m["std"]
    assert m["n"] == len(train)
