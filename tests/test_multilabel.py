"""Multi-label: label sources, iterative split, losses, MixUp/CutMix, metrics, thresholds kept
in the bundle, predict/evaluate agreement."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATASETS, write_recipe

from clfapp.infer import bundle, thresholds

from clfapp import data

from clfapp.models import losses

from clfapp.data import samples, splits
from clfapp.config import DataConfig, LossConfig
from clfapp.errors import UsageError

IDL = SHARED_DATASETS / "idl_multilabel"


# --- thresholds ---------------------------------------------------------------------------

def test_global_threshold_search_finds_the_known_best():
    # One label: positives score 0.9 and 0.35, negatives 0.3 and 0.1. Any threshold in
    # (0.30, 0.35] separates them perfectly; at 0.5 one positive is missed (F1 = 2/3).
    probs = np.array([[0.9], [0.35], [0.3], [0.1]])
    y = np.array([[1], [1], [0], [0]], dtype=bool)
    found = thresholds.search(probs, y, "f1_micro", "global")
    assert found.score == pytest.approx(1.0)
    assert found.score_at_half == pytest.approx(2 / 3)
    assert 0.30 < found.thresholds[0] <= 0.35


def test_per_label_search_beats_one_global_threshold_when_labels_need_different_ones():
    # Label a separates in (0.10, 0.22], label b only in (0.70, 0.85]: no single value fits both.
    probs = np.array([[0.25, 0.85], [0.22, 0.70], [0.10, 0.10]])
    y = np.array([[1, 1], [1, 0], [0, 0]], dtype=bool)
    glob = thresholds.search(probs, y, "f1_macro", "global")
    per = thresholds.search(probs, y, "f1_macro", "per-label")
    assert glob.score < 1.0
    assert per.score == pytest.approx(1.0)
    assert 0.10 < per.thresholds[0] <= 0.22 and 0.70 < per.thresholds[1] <= 0.85


@pytest.mark.parametrize("metric", ["f1_micro", "f1_macro", "f1_samples"])
def test_f1_matches_sklearn(metric):
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(3)
    y = rng.random((60, 5)) < 0.3
    pred = rng.random((60, 5)) < 0.4
    expected = f1_score(y, pred, average=metric[3:], zero_division=1.0)
    assert thresholds.f1(y, pred, metric) == pytest.approx(expected)


# --- data -----------------------------------------------------------------------------------

def _csv_dataset(root, text):
    samples_dir = root / "images"
    samples_dir.mkdir(parents=True)
    from PIL import Image
    names = [line.split(",")[0] for line in text.strip().splitlines()[1:]]
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(samples_dir / name)
    (root / "labels.csv").write_text(text)
    return root


def test_labels_column_with_empty_sets_and_custom_delimiter(tmp_path):
    root = _csv_dataset(tmp_path / "d", "fname,labels\na.png,cat|dog\nb.png,\nc.png,dog\n")
    items = data.scan(DataConfig(path=str(root), labels="csv:labels.csv", label_delim="|"))
    assert data.is_multi_label(items)
    assert list(items["labels"]) == ["cat|dog", "", "dog"]
    y = data.label_matrix(items["labels"], data.classes_of(items, "|"), "|")
    assert y.tolist() == [[True, True], [False, False], [False, True]]


def test_one_column_per_label(tmp_path):
    root = _csv_dataset(tmp_path / "d", "fname,sea,tree\na.png,1,0\nb.png,0,0\nc.png,1,1\n")
    items = data.scan(DataConfig(path=str(root), labels="csv:labels.csv"))
    assert list(items["labels"]) == ["sea", "", "sea tree"]


def test_a_label_the_model_does_not_know_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown to the model: owl"):
        data.label_matrix(["cat owl"], ["cat", "dog"])


def test_iterative_split_is_seeded_and_balanced():
    rng = np.random.default_rng(0)
    y = rng.random((400, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.2, 0.4])
    a, b = splits.iterative(y, 0.2, 1), splits.iterative(y, 0.2, 1)
    assert (a == b).all() and not (a == splits.iterative(y, 0.2, 2)).all()
    assert a.mean() == pytest.approx(0.2, abs=0.01)
    assert np.abs(y[a].mean(0) - y[~a].mean(0)).max() < 0.02


@pytest.mark.skipif(not IDL.is_dir(), reason=f"{IDL} not found (shared datasets absent)")
def test_iterative_split_of_idl_keeps_every_label_within_one_point():
    items = data.scan(DataConfig(path=str(IDL), labels="csv:labels.csv"))
    classes = data.classes_of(items)
    assert len(classes) == 14
    y = data.label_matrix(items["labels"], classes)
    items = splits.assign(items, "auto", 0.2, 42, y)
    freq = splits.label_frequencies(y, items["split"].to_numpy(), classes)
    assert (freq["train"] - freq["valid"]).abs().max() < 1.0
    assert (items["split"] == "valid").mean() == pytest.approx(0.2, abs=0.005)


# --- losses ---------------------------------------------------------------------------------

def test_bce_loss_equals_torch_and_auto_pos_weight_is_negatives_over_positives():
    logits, target = torch.randn(16, 3), (torch.rand(16, 3) < 0.3).float()
    plain = losses.make(LossConfig(name="auto"), multi_label=True)
    assert plain(logits, target).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)
    y = np.array([[1, 0], [0, 0], [0, 0], [1, 1]], dtype=bool)
    assert losses.pos_weights("auto", y).tolist() == [1.0, 3.0]
    assert losses.pos_weights("2,5", y).tolist() == [2.0, 5.0]


def test_focal_bce_weighs_easy_examples_down():
    target = torch.tensor([[1.0, 0.0]])
    easy = torch.tensor([[4.0, -4.0]])
    bce = losses.MultiLabelLoss(0.0)(easy, target)
    focal = losses.MultiLabelLoss(2.0)(easy, target)
    assert focal < bce / 10


def test_loss_for_the_wrong_kind_of_data_is_refused():
    with pytest.raises(UsageError, match="multi-label"):
        losses.make(LossConfig(name="cross_entropy"), multi_label=True)
    with pytest.raises(UsageError, match="single-label"):
        losses.make(LossConfig(name="bce"), multi_label=False)


# --- end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosaics") / "digits-multi"
    samples.make("digits-multi", root, quiet=True)
    # The fits below train on the first 480 mosaics (`csv:subset.csv`): what they check (mixed
    # targets, tuned thresholds, predict = evaluate) holds at any size, and 2000 took 4x longer.
    rows = (root / "labels.csv").read_text().splitlines()
    (root / "subset.csv").write_text("\n".join(rows[:481]) + "\n")
    return root


def test_digits_multi_sample_has_empty_and_several_label_sets(mosaics):
    df = pd.read_csv(mosaics / "labels.csv", dtype=str, keep_default_na=False)
    sizes = df["labels"].map(lambda s: len(s.split()))
    assert len(df) == 2000 and (sizes == 0).any() and (sizes >= 2).any()
    assert len(list((mosaics / "images").glob("*.png"))) == 2000


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixup_and_cutmix_mix_multilabel_targets(mix, cli, tmp_path, monkeypatch, mosaics):
    seen = []
    original = losses.MultiLabelLoss.forward

    def spy(self, logits, target):
        if torch.is_grad_enabled():  # training batches only
            seen.append(target.detach().clone())
        return original(self, logits, target)

    monkeypatch.setattr(losses.MultiLabelLoss, "forward", spy)
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "m.toml", mosaics, data={"labels": "csv:subset.csv", "size": 16},
                          aug={mix: 0.4}, train={"bs": 64})
    result = cli("fit", recipe, "--name", "m")
    assert result.exit_code == 0, result.output
    mixed = torch.cat(seen)
    fractional = (mixed > 0.01) & (mixed < 0.99)
    assert fractional.any(), "targets were not mixed"
    assert ((mixed >= 0) & (mixed <= 1)).all()


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, mosaics):
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    work = tmp_path_factory.mktemp("multi")
    recipe = write_recipe(work / "mm.toml", mosaics, data={"labels": "csv:subset.csv", "size": 16},
                          train={"epochs": 3, "bs": 32}, model={"arch": "resnet10t"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        result = CliRunner().invoke(app, ["fit", str(recipe), "--name", "mm"])
    assert result.exit_code == 0, result.output
    return work / "runs" / "mm"


def test_fit_tunes_thresholds_into_the_bundle_and_reports_before_and_after(multi_run):
    meta = json.loads((multi_run / "model" / "model.json").read_text())
    assert meta["multi_label"] is True and len(meta["inference"]["thresholds"]) == 10
    m = json.loads((multi_run / "metrics.json").read_text())
    assert m["f1_micro"] >= m["at_0_5"]["f1_micro"]
    assert m["thresholds"] == meta["inference"]["thresholds"]
    for key in ("f1_macro", "f1_samples", "subset_accuracy", "accuracy_multi", "map", "roc_auc_macro"):
        assert key in m and key in m["at_0_5"]
    report = (multi_run / "report.md").read_text()
    assert "Label frequency per split" in report and "thresholds.png" in report
    assert (multi_run / "plots" / "thresholds.png").is_file()
    splits_csv = pd.read_csv(multi_run / "splits.csv", dtype=str, keep_default_na=False)
    assert "labels" in splits_csv.columns and (splits_csv["labels"] == "").any()


def test_predict_matches_evaluate_and_uses_the_tuned_thresholds(cli, multi_run):
    items = splits.read(multi_run / "splits.csv")   # paths joined to the dataset root
    valid = items[items["split"] == "valid"]
    listing = multi_run.parent.parent / "valid.txt"
    listing.write_text("\n".join(valid["path"]) + "\n")
    r = cli("predict", multi_run, listing, "--out", multi_run.parent.parent / "p.csv")
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(multi_run.parent.parent / "p.csv", dtype=str, keep_default_na=False)
    meta = bundle.read_meta(multi_run)
    probs = pred[meta.classes].astype(float).to_numpy()
    expected_sets = [" ".join(c for c, p, t in zip(meta.classes, row, meta.thresholds) if p >= t)
                     for row in probs]
    assert list(pred["labels"]) == expected_sets
    truth = data.label_matrix(valid["labels"], meta.classes)
    predicted = data.label_matrix(pred["labels"], meta.classes)
    r = cli("evaluate", multi_run)
    assert r.exit_code == 0, r.output
    em = json.loads(sorted(multi_run.glob("eval-*"))[-1].joinpath("metrics.json").read_text())
    assert em["f1_micro"] == pytest.approx(thresholds.f1(truth, predicted, "f1_micro"), abs=1e-9)
    assert em["subset_accuracy"] == pytest.approx((truth == predicted).all(1).mean(), abs=1e-9)


def test_thresholds_command_updates_the_bundle_and_threshold_overrides(cli, multi_run):
    r = cli("thresholds", multi_run, "--metric", "f1_macro", "--mode", "per-label")
    assert r.exit_code == 0, r.output
    meta = bundle.read_meta(multi_run)
    report = json.loads(sorted(multi_run.glob("thresholds-*"))[-1].joinpath("metrics.json").read_text())
    assert meta.thresholds == report["thresholds"]
    assert report["f1_macro"] >= report["at_0_5"]["f1_macro"]
    r = cli("evaluate", multi_run, "--threshold", "0.5")
    assert r.exit_code == 0, r.output
    em = json.loads(sorted(multi_run.glob("eval-*"))[-1].joinpath("metrics.json").read_text())
    assert em["f1_macro"] == pytest.approx(report["at_0_5"]["f1_macro"], abs=1e-9)


def test_thresholds_on_a_single_label_run_is_a_usage_error(cli, trained_run):
    from conftest import assert_usage_error
    assert_usage_error(cli("thresholds", trained_run[1]), "single-label")
