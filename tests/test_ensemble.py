"""Ensembles: voting, refusals (classes, overlapping splits, weights, nesting), predict /
evaluate / thresholds through an ensemble folder, a moved ensemble, multi-label thresholds."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import COLOURS, assert_usage_error, make_folder_dataset, make_stripes_multilabel, write_recipe

from clfapp.infer import ensemble


# --- voting (unit) --------------------------------------------------------------------------

def test_soft_vote_is_the_weighted_mean():
    a = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    b = np.array([[0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
    w = ensemble.normalise_weights([3, 1], 2)
    assert w == [0.75, 0.25]
    np.testing.assert_allclose(ensemble.soft_vote([a, b], w), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(ensemble.soft_vote([a, b], [0.5, 0.5]).sum(1), 1.0)


def test_hard_vote_takes_the_weighted_majority_not_the_mean():
    # Two members say class 0 barely, one says class 1 very confidently: the mean picks 1,
    # the majority 0.
    m1 = np.array([[0.51, 0.49]])
    m2 = np.array([[0.52, 0.48]])
    m3 = np.array([[0.01, 0.99]])
    soft = ensemble.soft_vote([m1, m2, m3], [1 / 3] * 3)
    hard = ensemble.hard_vote([m1, m2, m3], [1 / 3] * 3)
    assert soft.argmax(1)[0] == 1 and hard.argmax(1)[0] == 0
    np.testing.assert_allclose(hard, [[2 / 3, 1 / 3]], atol=1e-9)   # vote shares
    np.testing.assert_allclose(hard.sum(1), 1.0, atol=1e-9)
    # A weight can outvote two members.
    heavy = ensemble.hard_vote([m1, m2, m3], ensemble.normalise_weights([1, 1, 3], 3))
    assert heavy.argmax(1)[0] == 1


def test_hard_vote_ties_are_broken_by_the_mean_probability():
    # Two equal members disagree: 0.5 / 0.5 of the votes. Row 0: the mean favours class 1
    # (0.45 vs 0.55); row 1 the same votes but the mean favours class 0.
    a = np.array([[0.60, 0.40, 0.00], [0.90, 0.10, 0.00]])
    b = np.array([[0.30, 0.70, 0.00], [0.20, 0.60, 0.20]])
    hard = ensemble.hard_vote([a, b], [0.5, 0.5])
    assert hard.argmax(1).tolist() == [1, 0]
    np.testing.assert_allclose(hard, [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], atol=1e-9)
    # Weights 2,1,1 make an exact tie of 0.5 (one member) against 0.25 + 0.25 (two members).
    c = np.array([[0.00, 0.90, 0.10], [0.00, 0.90, 0.10]])
    w = ensemble.normalise_weights([2, 1, 1], 3)
    tie = ensemble.hard_vote([a, b, c], w)
    mean = ensemble.soft_vote([a, b, c], w)
    assert tie.argmax(1).tolist() == [1, 0]
    assert mean.argmax(1).tolist() == [1, 0]   # ... because the mean prefers those classes


def test_multilabel_hard_vote_is_a_majority_at_each_members_thresholds():
    # 3 labels, 3 equal members; member 3 has threshold 0.9 on label 0.
    p1 = np.array([[0.8, 0.6, 0.1]])
    p2 = np.array([[0.7, 0.4, 0.2]])
    p3 = np.array([[0.8, 0.7, 0.9]])
    thr = [np.full(3, 0.5), np.full(3, 0.5), np.array([0.9, 0.5, 0.5])]
    out = ensemble.hard_vote([p1, p2, p3], [1 / 3] * 3, multi_label=True, thresholds=thr)
    on = out >= 0.5
    # label 0: members 1, 2 on (member 3 off at 0.9) -> on; label 1: members 1, 3 -> on;
    # label 2: only member 3 -> off
    assert on.tolist() == [[True, True, False]]
    np.testing.assert_allclose(out, [[2 / 3, 2 / 3, 1 / 3]], atol=1e-9)
    # An exact half: broken by the weighted mean margin over the thresholds.
    q1, q2 = np.array([[0.9, 0.55]]), np.array([[0.45, 0.05]])
    half = ensemble.hard_vote([q1, q2], [0.5, 0.5], multi_label=True,
                              thresholds=[np.full(2, 0.5)] * 2)
    assert (half >= 0.5).tolist() == [[True, False]]   # mean margins +0.175, -0.2


# --- fixtures: tiny runs fitted once --------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A work folder with runs a (seed 1), b (seed 2, 48 px, pad), c (another split seed) and
    two (two classes only), fitted on 3 colour classes x 10 images."""
    from typer.testing import CliRunner

    from clfapp.cli.main import app

    work = tmp_path_factory.mktemp("ens")
    make_folder_dataset(work / "data" / "shapes", n_per_class=10)
    make_folder_dataset(work / "data" / "two", n_per_class=8, classes=["blue", "green"])
    write_recipe(work / "tiny.toml", "data/shapes")
    fits = [["--name", "a", "--seed", "1"],
            ["--name", "b", "--seed", "2", "--size", "48", "--set", "data.resize=pad"],
            ["--name", "c", "--seed", "3", "--split-seed", "7"],
            ["--name", "two", "--data", "data/two"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for args in fits:
            result = CliRunner().invoke(app, ["fit", "tiny.toml", *args])
            assert result.exit_code == 0, result.output
    return work


@pytest.fixture
def here(work, monkeypatch):
    monkeypatch.chdir(work)
    return work


def _probs(cli, run, images, out) -> pd.DataFrame:
    """`clfapp predict RUN` as a path x class table of every class's probability."""
    r = cli("predict", run, images, "--out", out)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    k = sum(c.startswith("top") and c.endswith("_prob") for c in df.columns)
    assert k == len(COLOURS)
    rows = [{row[f"top{j}"]: row[f"top{j}_prob"] for j in range(1, k + 1)}
            for _, row in df.iterrows()]
    return pd.DataFrame(rows, index=df["path"])[sorted(COLOURS)]


def _make(cli, *args):
    r = cli("ensemble", *args)
    assert r.exit_code == 0, r.output
    return r


# --- refusals -------------------------------------------------------------------------------

def test_members_with_different_classes_are_refused(cli, here):
    line = assert_usage_error(cli("ensemble", "a", "two"), "different classes")
    assert "red" in line
    assert not (here / "runs" / "ensemble-1").exists()


def test_overlapping_splits_are_refused_and_accepted_with_data(cli, here):
    sa = pd.read_csv(here / "runs" / "a" / "splits.csv").set_index("path")["split"]
    sc = pd.read_csv(here / "runs" / "c" / "splits.csv").set_index("path")["split"]
    overlap = ((sa == "valid") & (sc.reindex(sa.index) == "train")).sum() + \
              ((sc == "valid") & (sa.reindex(sc.index) == "train")).sum()
    assert overlap > 0   # the premise: another split seed, another split
    line = assert_usage_error(cli("ensemble", "a", "c", "--name", "ac"),
                              "trained on", "validation images", "--splits-from", "--data")
    assert "a" in line and "c" in line
    assert not (here / "runs" / "ac").exists()
    r = _make(cli, "a", "c", "--name", "ac-data", "--data", "data/shapes")
    folder = here / "runs" / "ac-data"
    shared = pd.read_csv(folder / "splits.csv")
    assert len(shared) == 30 and (shared["split"] == "valid").all()
    m = json.loads((folder / "metrics.json").read_text())
    assert m["n"] == 30 and set(m["members"]) == {"a", "c"}
    assert "training images" in r.stderr   # measured partly on the members' own training data


def test_weights_must_match_and_be_positive(cli, here):
    assert_usage_error(cli("ensemble", "a", "b", "--weights", "1"), "one per member")
    assert_usage_error(cli("ensemble", "a", "b", "--weights", "1,0"), "positive")
    assert_usage_error(cli("ensemble", "a", "b", "--weights", "1,x"), "numbers")
    assert_usage_error(cli("ensemble", "a"), "at least two")


def test_nested_ensembles_and_folders_that_are_not_runs_are_refused(cli, here, tmp_path):
    _make(cli, "a", "b", "--name", "nest-inner")
    assert_usage_error(cli("ensemble", "runs/nest-inner", "a"), "is itself an ensemble")
    (tmp_path / "empty").mkdir()
    assert_usage_error(cli("ensemble", "a", tmp_path / "empty"), "no model bundle")
    img = next((here / "data" / "shapes" / "red").iterdir())
    assert_usage_error(cli("predict", tmp_path / "empty", img), "no model bundle")


# --- predict / evaluate through an ensemble -------------------------------------------------

def test_soft_ensemble_predicts_the_weighted_mean_of_its_members(cli, here):
    r = _make(cli, "a", "b", "--weights", "2,1", "--name", "ab")
    folder = here / "runs" / "ab"
    meta = json.loads((folder / "ensemble.json").read_text())
    assert meta["kind"] == "ensemble" and meta["vote"] == "soft"
    assert meta["members"] == ["a", "b"] and meta["weights"] == pytest.approx([2 / 3, 1 / 3])
    assert meta["inference"]["thresholds"] is None and meta["multi_label"] is False
    for name in ("a", "b"):
        assert (folder / "members" / name / "model" / "weights.safetensors").is_file()
        assert (folder / "members" / name / "splits.csv").is_file()
    assert "ensemble" in r.output and "| a |" in r.output
    images = here / "data" / "shapes"
    pa = _probs(cli, "a", images, here / "pa.csv")
    pb = _probs(cli, "b", images, here / "pb.csv")
    pe = _probs(cli, folder, images, here / "pe.csv")
    expected = 2 / 3 * pa + 1 / 3 * pb
    # b sees its own 48 px padded images: fed a's 32 px squished ones, its probabilities differ
    np.testing.assert_allclose(pe.to_numpy(), expected.loc[pe.index].to_numpy(), atol=3e-6)
    labels = pd.read_csv(here / "pe.csv").set_index("path")["label"]
    assert (labels == expected.idxmax(axis=1).loc[labels.index]).all()


def test_hard_ensemble_predicts_the_majority_with_ties_by_mean(cli, here):
    _make(cli, "a", "b", "--vote", "hard", "--name", "ab-hard")
    images = here / "data" / "shapes"
    pa = _probs(cli, "a", images, here / "ha.csv")
    pb = _probs(cli, "b", images, here / "hb.csv")
    r = cli("predict", "runs/ab-hard", images, "--out", here / "he.csv")
    assert r.exit_code == 0, r.output
    pe = pd.read_csv(here / "he.csv").set_index("path")
    la, lb = pa.idxmax(axis=1), pb.idxmax(axis=1)
    mean = (pa + pb) / 2
    # agree: that class; a 1-1 tie: of the two voted classes, the one with the higher mean
    ma = pd.Series([mean.loc[p, c] for p, c in la.items()], index=la.index)
    mb = pd.Series([mean.loc[p, c] for p, c in lb.items()], index=lb.index)
    expected = la.where((la == lb) | (ma >= mb), lb)
    assert (pe["label"] == expected.loc[pe.index]).all()
    agree = (la == lb).loc[pe.index]
    np.testing.assert_allclose(pe.loc[agree, "probability"], 1.0, atol=1e-6)
    np.testing.assert_allclose(pe.loc[~agree, "probability"], 0.5, atol=1e-6)


def test_moved_ensemble_predicts_without_its_source_runs(cli, here, tmp_path):
    src = tmp_path / "sources"
    for name in ("a", "b"):
        shutil.copytree(here / "runs" / name, src / name)
    _make(cli, src / "a", src / "b", "--name", "to-move")
    images = here / "data" / "shapes"
    before = _probs(cli, "runs/to-move", images, tmp_path / "before.csv")
    moved = tmp_path / "elsewhere" / "ens"
    moved.parent.mkdir()
    shutil.move(str(here / "runs" / "to-move"), str(moved))
    shutil.rmtree(src)
    after = _probs(cli, moved, images, tmp_path / "after.csv")
    pd.testing.assert_frame_equal(before, after)
    r = cli("evaluate", moved)
    assert r.exit_code == 0, r.output


def test_evaluate_an_ensemble_prints_each_member_and_the_ensemble(cli, here):
    _make(cli, "a", "b", "--name", "ab-eval")
    r = cli("evaluate", "runs/ab-eval")
    assert r.exit_code == 0, r.output
    for row in ("| a |", "| b |", "| ensemble |"):
        assert row in r.output, r.output
    em = json.loads(sorted((here / "runs" / "ab-eval").glob("eval-*"))[-1]
                    .joinpath("metrics.json").read_text())
    assert set(em["members"]) == {"a", "b"}
    assert "| ensemble |" in sorted((here / "runs" / "ab-eval").glob("eval-*"))[-1] \
        .joinpath("report.md").read_text()
    # a member's figure is the member's own evaluation on the same (shared validation) images
    ra = cli("evaluate", "a")
    assert ra.exit_code == 0, ra.output
    own = json.loads(sorted((here / "runs" / "a").glob("eval-*"))[-1]
                     .joinpath("metrics.json").read_text())
    assert em["members"]["a"]["n"] == own["n"]
    assert em["members"]["a"]["accuracy"] == pytest.approx(own["accuracy"])
    assert em["members"]["a"]["f1_macro"] == pytest.approx(own["f1_macro"])
    # the ensemble's metrics.json written at build time says the same
    built = json.loads((here / "runs" / "ab-eval" / "metrics.json").read_text())
    assert built["accuracy"] == pytest.approx(em["accuracy"])


def test_thresholds_on_a_single_label_ensemble_is_refused(cli, here):
    _make(cli, "a", "b", "--name", "ab-thr")
    assert_usage_error(cli("thresholds", "runs/ab-thr"), "single-label")


# --- multi-label ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multi(work):
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    make_stripes_multilabel(work / "data" / "multi")
    write_recipe(work / "multi.toml", "data/multi", data={"labels": "csv:labels.csv"},
                 train={"epochs": 2}, thresholds={"metric": "f1_macro"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for args in (["--name", "m1", "--seed", "1"], ["--name", "m2", "--seed", "2", "--size", "40"]):
            result = CliRunner().invoke(app, ["fit", "multi.toml", *args])
            assert result.exit_code == 0, result.output
    return work


def test_multilabel_ensemble_searches_its_thresholds_and_predict_uses_them(cli, multi, monkeypatch):
    monkeypatch.chdir(multi)
    assert_usage_error(cli("ensemble", "a", "m1"), "single-label", "multi-label")
    r = _make(cli, "m1", "m2", "--name", "mm", "--mode", "per-label")
    assert "thresholds" in r.output
    folder = multi / "runs" / "mm"
    meta = json.loads((folder / "ensemble.json").read_text())
    assert meta["multi_label"] is True and len(meta["inference"]["thresholds"]) == 3
    m = json.loads((folder / "metrics.json").read_text())
    assert m["thresholds"] == meta["inference"]["thresholds"]
    assert m["f1_macro"] >= m["at_0_5"]["f1_macro"]          # metric from m1's config.toml
    assert set(m["members"]) == {"m1", "m2"}
    assert "Threshold search" in (folder / "report.md").read_text()

    def predicted(thresholds):
        r = cli("predict", folder, multi / "data" / "multi" / "images", "--out", multi / "mp.csv")
        assert r.exit_code == 0, r.output
        df = pd.read_csv(multi / "mp.csv", dtype={"labels": str}, keep_default_na=False)
        probs = df[meta["classes"]].to_numpy(dtype=float)
        expect = [" ".join(c for c, p, t in zip(meta["classes"], row, thresholds) if p >= t)
                  for row in probs]
        return df, expect

    df, expect = predicted(meta["inference"]["thresholds"])
    assert list(df["labels"]) == expect
    # other thresholds in ensemble.json change predict's label sets accordingly
    meta["inference"]["thresholds"] = [0.0, 1.01, 0.5]
    (folder / "ensemble.json").write_text(json.dumps(meta))
    df, expect = predicted(meta["inference"]["thresholds"])
    assert list(df["labels"]) == expect
    assert all("green" not in s.split() and "blue" in s.split() for s in df["labels"])
    # `clfapp thresholds` searches again and stores them in ensemble.json
    r = cli("thresholds", folder, "--metric", "f1_micro")
    assert r.exit_code == 0, r.output
    again = json.loads((folder / "ensemble.json").read_text())
    assert again["inference"]["thresholds"] != [0.0, 1.01, 0.5] and len(set(again["inference"]["thresholds"])) == 1
