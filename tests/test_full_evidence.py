"""`fit --full`: model.json says the model trained on train+valid, and evaluate, thresholds,
compare and ensemble never take that run's validation split for evidence (issue 24, point 3).

Reproduced: `clfapp fit digits --full` then `clfapp evaluate RUN` reported 0.9868 on "the
validation split", images the shipped model was trained on."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import (as_older_model_json, assert_usage_error, make_folder_dataset,
                      make_stripes_multilabel, write_recipe)

from clfapp.infer import bundle


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny runs (1 epoch each): `full` (--full, no test split), `full-test` (--full with
    data.test_pct), `plain` (an ordinary run on full's split), `mfull` (multi-label, --full)."""
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    work = tmp_path_factory.mktemp("full-evidence")
    make_folder_dataset(work / "data" / "shapes", n_per_class=12)
    make_stripes_multilabel(work / "data" / "multi")
    write_recipe(work / "tiny.toml", "data/shapes")
    write_recipe(work / "tiny-test.toml", "data/shapes", data={"test_pct": 0.1})
    write_recipe(work / "multi.toml", "data/multi", data={"labels": "csv:labels.csv"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for args in (["tiny.toml", "--name", "full", "--full"],
                     ["tiny-test.toml", "--name", "full-test", "--full"],
                     ["tiny.toml", "--name", "plain", "--splits-from", "runs/full"],
                     ["multi.toml", "--name", "mfull", "--full"]):
            result = CliRunner().invoke(app, ["fit", *args])
            assert result.exit_code == 0, result.output
    return work


def _split(run, name):
    s = pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False)
    return s[s["split"] == name]


def test_full_bundle_says_it_trained_on_train_and_valid(work):
    runs = work / "runs"
    assert json.loads((runs / "full" / "model" / "model.json").read_text())["inference"]["trained_on"] == "train+valid"
    assert json.loads((runs / "full" / "model-valid" / "model.json").read_text())["inference"]["trained_on"] == "train"
    assert json.loads((runs / "plain" / "model" / "model.json").read_text())["inference"]["trained_on"] == "train"
    assert bundle.read_meta(runs / "mfull").inference.trained_on == "train+valid"


def test_a_bundle_without_trained_on_reads_as_train_and_a_bad_value_is_refused(work, tmp_path):
    from clfapp.errors import UsageError
    old = tmp_path / "old"
    shutil.copytree(work / "runs" / "plain" / "model", old)
    raw = as_older_model_json(json.loads((old / "model.json").read_text()), 2)
    del raw["trained_on"]
    (old / "model.json").write_text(json.dumps(raw))
    assert bundle.read_meta(old).inference.trained_on == "train"
    assert bundle.read_meta(old).inference.inferred
    (old / "model.json").write_text(json.dumps(dict(raw, trained_on="everything")))
    with pytest.raises(UsageError, match="trained_on"):
        bundle.read_meta(old)


def test_evaluate_refuses_the_validation_split_of_a_full_run_without_a_test_split(
        work, cli, monkeypatch):
    monkeypatch.chdir(work)
    assert_usage_error(cli("evaluate", "full"), "full's model was trained on its validation "
                       "images (fit --full)", "--data FOLDER")
    assert not list((work / "runs" / "full").glob("eval-*"))
    ok = cli("evaluate", "full", "--data", "data/shapes")   # --data still works
    assert ok.exit_code == 0, ok.output
    assert cli("evaluate", "plain").exit_code == 0           # an ordinary run: as before


def test_evaluate_on_a_full_run_with_a_test_split_measures_the_test_split(work, cli, monkeypatch):
    monkeypatch.chdir(work)
    run = work / "runs" / "full-test"
    r = cli("evaluate", "full-test")
    assert r.exit_code == 0, r.output
    assert "test split of full-test" in r.output and "validation split" not in r.output
    m = json.loads(sorted(run.glob("eval-*"))[-1].joinpath("metrics.json").read_text())
    test = _split(run, "test")
    assert 1 <= m["n"] == len(test)
    full = json.loads((run / "metrics.json").read_text())["full"]["test"]
    assert m["accuracy"] == pytest.approx(full["accuracy"])   # fit's figure of the final model


def test_thresholds_refuse_the_validation_split_of_a_full_run(work, cli, monkeypatch):
    monkeypatch.chdir(work)
    before = (work / "runs" / "mfull" / "model" / "model.json").read_text()
    assert_usage_error(cli("thresholds", "mfull"), "mfull's model was trained on its "
                       "validation images (fit --full)", "--data FOLDER")
    assert (work / "runs" / "mfull" / "model" / "model.json").read_text() == before
    ok = cli("thresholds", "mfull", "--data", "data/multi")
    assert ok.exit_code == 0, ok.output


def test_compare_refuses_a_split_a_compared_model_trained_on(work, cli, monkeypatch):
    monkeypatch.chdir(work)
    # plain's validation images are full's (--splits-from): full trained on them
    assert_usage_error(cli("compare", "plain", "full", "--repeats", "1"),
                       "full's model was trained on the validation images of plain", "--data")
    assert_usage_error(cli("compare", "full", "--repeats", "1"), "fit --full", "--data")
    r = cli("compare", "full-test", "--repeats", "1", "--name", "cmp")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(work / "runs" / "cmp" / "comparison.csv")
    assert table["n"].tolist() == [len(_split(work / "runs" / "full-test", "test"))]
    assert "test split of full-test" in (work / "runs" / "cmp" / "comparison.md").read_text()


def test_ensemble_refuses_a_members_validation_split_it_trained_on(work, cli, monkeypatch):
    monkeypatch.chdir(work)
    assert_usage_error(cli("ensemble", "plain", "full"), "full's model was trained on the "
                       "validation images of the members' shared split", "--data")
    assert not (work / "runs" / "ensemble-1").exists()
    ok = cli("ensemble", "plain", "full", "--data", "data/shapes", "--name", "e-data")
    assert ok.exit_code == 0, ok.output
    # with a test split the ensemble is measured on it, and so is its evaluate later
    r = cli("ensemble", "full-test", "full-test", "--name", "e-test")
    assert r.exit_code == 0, r.output
    assert "shared test split" in r.output
    n_test = len(_split(work / "runs" / "full-test", "test"))
    assert json.loads((work / "runs" / "e-test" / "metrics.json").read_text())["n"] == n_test
    ev = cli("evaluate", "e-test")
    assert ev.exit_code == 0, ev.output
    assert "test split of e-test" in ev.output
