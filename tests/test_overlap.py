"""A model measured on items it was trained on is said so (issue 24, point 4): `evaluate --data`
on the training folder warns, `compare` warns and marks such a model (`--strict` refuses);
splits.csv names its images relative to the dataset folder, and neither splits.csv nor
ensemble.json can point clfapp outside its dataset or ensemble folder."""
from __future__ import annotations

import json
import os
import re
import shutil

import pandas as pd
import pytest
from conftest import assert_usage_error


def _copy_run(run, target):
    """A copy of the shared run (which tests must not modify) to edit."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("eval-*", "export-*"))
    return target


def _splits(run) -> pd.DataFrame:
    return pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False)


def test_evaluate_on_the_training_folder_warns(trained_run, cli, monkeypatch, tmp_path):
    # reproduced: evaluate --data on the folder the model trained on printed training-set
    # figures with no word about it
    work, shared = trained_run
    run = _copy_run(shared, tmp_path / "tiny-run")   # evaluate writes RUN/eval-N
    monkeypatch.chdir(work)
    result = cli("evaluate", run, "--data", "data/shapes")
    assert result.exit_code == 0, result.output
    n_train = int((_splits(run)["split"] == "train").sum())
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and f"{n_train} of the 30 items" in warnings[0], result.stderr
    assert "training items of tiny-run" in warnings[0] and ".png" in warnings[0]
    report = re.search(r"report: (\S+report\.md)", result.output).group(1)
    recorded = json.loads(open(os.path.join(os.path.dirname(report), "metrics.json")).read())
    assert recorded["training_overlap"]["n"] == n_train and recorded["training_overlap"]["of"] == 30
    assert "training items of this model" in open(report).read()


def test_evaluate_on_unseen_items_says_nothing(trained_run, cli, monkeypatch, tmp_path):
    work, shared = trained_run
    run = _copy_run(shared, tmp_path / "tiny-run")
    monkeypatch.chdir(work)
    valid = _splits(run)
    valid = valid[valid["split"] == "valid"]
    labels = work / "overlap-valid.csv"
    pd.DataFrame({"fname": [os.path.relpath(p, work) if os.path.isabs(p) else f"data/shapes/{p}"
                            for p in valid["path"]], "label": valid["label"]}).to_csv(labels, index=False)
    result = cli("evaluate", run, "--data", labels)
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.stderr, result.stderr
    report = re.search(r"report: (\S+report\.md)", result.output).group(1)
    m = json.loads(open(os.path.join(os.path.dirname(report), "metrics.json")).read())
    assert m["training_overlap"] == {"n": 0, "of": len(valid), "examples": []}
    labels.unlink()


@pytest.fixture
def leaky(trained_run, tmp_path):
    """A copy of the shared run whose splits.csv says it trained on the shared run's
    validation images (as a run fitted with another split would have)."""
    _, run = trained_run
    other = _copy_run(run, tmp_path / "leaky")
    s = _splits(other)
    s["split"] = s["split"].replace({"valid": "train"})
    s.loc[s.index[:2], "split"] = "valid"      # some validation of its own
    s.to_csv(other / "splits.csv", index=False)
    return other


def test_compare_warns_and_marks_a_model_trained_on_the_items(trained_run, leaky, cli, monkeypatch):
    # reproduced: compare scored every model on the first model's validation split, whatever
    # the others were trained on
    work, run = trained_run
    monkeypatch.chdir(leaky.parent)      # runs/compare-N here, not beside the shared run
    result = cli("compare", run, leaky, "--repeats", "1", "--threads", "1", "--name", "cmp-overlap")
    assert result.exit_code == 0, result.output
    mine, theirs = _splits(run), _splits(leaky)
    overlap = int(((mine["split"] == "valid") & (theirs["split"] == "train")).sum())
    assert overlap > 0
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "training items of leaky" in warnings[0], result.stderr
    table = pd.read_csv(leaky.parent / "runs" / "cmp-overlap" / "comparison.csv")
    assert list(table["model"]) == ["tiny-run", "leaky *"]
    assert list(table["overlap"]) == [0, overlap]
    assert f"{overlap} of the {int((mine['split'] == 'valid').sum())} items" in warnings[0]
    md = (leaky.parent / "runs" / "cmp-overlap" / "comparison.md").read_text()
    assert "| leaky * |" in md and "trained on some of these items" in md

    strict = cli("compare", run, leaky, "--repeats", "1", "--strict")
    assert_usage_error(strict, "--strict", "training items of leaky")
    assert not any(p.name.startswith("compare-") for p in (leaky.parent / "runs").iterdir())


def test_splits_csv_is_relative_and_old_absolute_ones_still_read(trained_run, cli, monkeypatch, tmp_path):
    work, shared = trained_run
    run = _copy_run(shared, tmp_path / "new")
    paths = _splits(run)["path"]
    assert not any(os.path.isabs(p) for p in paths), paths.head().tolist()
    assert all((work / "data" / "shapes" / p).is_file() for p in paths)
    assert set(_splits(run)["root"]) == {str(work / "data" / "shapes")}   # path = root/path

    from clfapp.data import splits
    read = splits.read(run / "splits.csv")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in read["path"])

    # a run written before the paths were relative: absolute paths, read the same
    old = _copy_run(run, tmp_path / "old")
    s = _splits(old)
    s["path"] = [str(work / "data" / "shapes" / p) for p in s["path"]]
    s.drop(columns="root").to_csv(old / "splits.csv", index=False)
    monkeypatch.chdir(work)
    new_figures = cli("evaluate", run)
    old_figures = cli("evaluate", old)
    assert new_figures.exit_code == 0 and old_figures.exit_code == 0, old_figures.output
    figures = [json.loads(open(os.path.join(os.path.dirname(
        re.search(r"report: (\S+report\.md)", r.output).group(1)), "metrics.json")).read())
        for r in (new_figures, old_figures)]
    assert figures[0]["n"] == figures[1]["n"] == int((s["split"] == "valid").sum())
    assert figures[0]["accuracy"] == figures[1]["accuracy"]


@pytest.mark.parametrize("escape", ["../../../../../../etc/passwd", "/etc/passwd"])
def test_a_splits_csv_path_outside_the_dataset_is_refused(trained_run, cli, monkeypatch, tmp_path, escape):
    work, run = trained_run
    bad = _copy_run(run, tmp_path / "bad")
    s = _splits(bad)
    s.loc[s.index[s["split"] == "valid"][0], "path"] = escape
    s.to_csv(bad / "splits.csv", index=False)
    monkeypatch.chdir(work)
    assert_usage_error(cli("evaluate", bad), "outside the dataset folder", escape)


def test_an_ensemble_member_outside_the_ensemble_folder_is_refused(trained_run, cli, monkeypatch, tmp_path):
    work, run = trained_run
    _copy_run(run, tmp_path / "victim")           # a model the ensemble.json points at
    ens = tmp_path / "ens"
    (ens / "members").mkdir(parents=True)
    classes = json.loads((run / "model" / "model.json").read_text())["classes"]
    (ens / "ensemble.json").write_text(json.dumps(
        {"format": 1, "kind": "ensemble", "vote": "soft", "weights": [1.0],
         "members": ["../../victim"], "classes": classes, "multi_label": False}))
    monkeypatch.chdir(work)
    assert_usage_error(cli("evaluate", ens, "--data", "data/shapes"), "outside its folder", "../../victim")
