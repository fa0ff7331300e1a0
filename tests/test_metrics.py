"""One definition of every metric (clfapp.metrics), used alike by the per-epoch fastai metrics,
the threshold search and evaluate; and every figure of a run says which split it is from."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from clfapp.infer import bundle, evaluate, metrics, thresholds

from clfapp import models, train
from clfapp.infer.predict import Predictor

from conftest import COLOURS, TINY_ARCH, make_folder_dataset, make_image, write_recipe


# --- the convention, checked against scikit-learn ----------------------------------------------

def test_single_label_figures_equal_sklearn_with_all_classes_and_zero_division_one():
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 50)          # class 4 is never true
    probs = rng.random((50, 5))
    probs[:, 3] = 0                      # class 3 is never predicted
    pred, labels = probs.argmax(1), list(range(5))
    m = metrics.single_label(probs, y, list("abcde"))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=1.0)
    assert [v["precision"] for v in m["per_class"].values()] == pytest.approx(p)
    assert [v["recall"] for v in m["per_class"].values()] == pytest.approx(r)
    assert [v["f1"] for v in m["per_class"].values()] == pytest.approx(f)
    assert [v["support"] for v in m["per_class"].values()] == list(s)
    for average in ("macro", "weighted"):
        assert m[f"f1_{average}"] == pytest.approx(
            f1_score(y, pred, labels=labels, average=average, zero_division=1.0))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    assert m["accuracy"] == pytest.approx((pred == y).mean())


@pytest.mark.parametrize("average", ["micro", "macro", "samples"])
def test_multilabel_f1_equals_sklearn_with_empty_rows_and_columns(average):
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(2)
    y, pred = rng.random((40, 6)) < 0.3, rng.random((40, 6)) < 0.3
    y[:8], pred[:5] = False, False       # images with no labels, some predicted empty too
    y[:, 5], pred[:, 5] = False, False   # a label absent and never predicted
    expected = f1_score(y, pred, average=average, zero_division=1.0)
    assert metrics.f1(y, pred, f"f1_{average}") == pytest.approx(expected)
    assert thresholds.f1(y, pred, f"f1_{average}") == metrics.f1(y, pred, f"f1_{average}")


def test_rank_metrics_leave_out_classes_without_positives():
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.6, 0.2]])
    y = np.array([[1, 0], [0, 0], [1, 0]], dtype=bool)   # label 2 has no positive
    m = metrics.multi_label(probs, y, ["a", "b"])
    assert m["per_label"]["b"]["ap"] is None
    assert m["map"] == pytest.approx(1.0) and m["roc_auc_macro"] == pytest.approx(1.0)
    assert metrics.multi_label(probs, np.zeros((3, 2), bool), ["a", "b"])["map"] is None


# --- per epoch == metrics.py == evaluate, where the old implementations disagreed ----------------

def _run_epoch_metrics(metric_objects, logits: torch.Tensor, target: torch.Tensor, bs: int = 3):
    """Feed the validation set batch by batch to fastai metric objects, as a Learner does."""
    from fastai.torch_core import to_detach
    out = {}
    for m in metric_objects:
        m.reset()
        for i in range(0, len(logits), bs):
            m.accumulate(SimpleNamespace(pred=logits[i:i + bs], y=target[i:i + bs],
                                         to_detach=to_detach))
        out[m.name] = m.value
    return out


def test_single_label_epoch_metric_equals_evaluate_when_a_class_is_absent_from_validation():
    # 3 classes; class "c" has no validation item and is never predicted.
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
                          [0.3, 0.6, 0.1], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    y = torch.tensor([0, 0, 1, 1, 1, 0, 0])
    logits = probs.log()
    epoch = _run_epoch_metrics(train._metrics(multi_label=False), logits, y)
    assert list(epoch) == ["accuracy", "f1_macro"]          # results.csv / train.monitor names

    p = logits.softmax(1).numpy()                           # what a Predictor hands evaluate
    ev = evaluate.metrics(p, y.numpy(), ["a", "b", "c"])
    pred = p.argmax(1)
    assert epoch["accuracy"] == ev["accuracy"] == metrics.accuracy(y.numpy(), pred)
    assert epoch["f1_macro"] == ev["f1_macro"] == metrics.f1_macro(y.numpy(), pred, 3)
    assert ev["per_class"]["c"]["f1"] == 1.0                # nothing to find, nothing claimed

    # the case discriminates: fastai's F1Score (sklearn, absent classes left out) and the old
    # evaluate (zero_division=0) each gave another figure
    from sklearn.metrics import f1_score
    assert f1_score(y.numpy(), pred, average="macro") != pytest.approx(ev["f1_macro"])
    assert f1_score(y.numpy(), pred, labels=[0, 1, 2], average="macro",
                    zero_division=0) != pytest.approx(ev["f1_macro"])


def test_multilabel_epoch_metrics_equal_evaluate_and_the_search_with_empty_label_sets():
    # 3 labels; images 0-2 have no labels and none is predicted at 0.5; label z never occurs.
    probs = torch.tensor([[0.1, 0.2, 0.1], [0.3, 0.1, 0.2], [0.2, 0.4, 0.1],
                          [0.9, 0.2, 0.1], [0.7, 0.6, 0.3], [0.4, 0.8, 0.2], [0.5, 0.1, 0.4]])
    y = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 0],
                      [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=torch.float)
    logits = torch.logit(probs)
    epoch = _run_epoch_metrics(train._metrics(multi_label=True), logits, y)
    assert list(epoch) == ["accuracy_multi", "f1_micro", "f1_macro"]

    p, truth = logits.sigmoid().numpy(), y.numpy().astype(bool)
    ev = evaluate.multilabel_metrics(p, truth, ["x", "y", "z"], 0.5)
    pred = metrics.decide(p, 0.5)
    for name in ("accuracy_multi", "f1_micro", "f1_macro"):
        direct = (metrics.accuracy_multi(truth, pred) if name == "accuracy_multi"
                  else metrics.f1(truth, pred, name))
        assert epoch[name] == ev[name] == direct, name
    # the search's figure at 0.5 is the same definition
    for name in ("f1_micro", "f1_macro", "f1_samples"):
        assert thresholds.search(p, truth, name).score_at_half == ev[name]

    # the case discriminates: fastai's F1ScoreMulti (zero_division "warn" = 0) and
    # accuracy_multi (strictly > 0.5; image 6 sits exactly at 0.5) gave other figures
    from fastai.metrics import F1ScoreMulti, accuracy_multi
    old_macro = F1ScoreMulti(average="macro")
    assert _run_epoch_metrics([old_macro], logits, y)[old_macro.name] != pytest.approx(ev["f1_macro"])
    assert accuracy_multi(logits, y).item() != pytest.approx(ev["accuracy_multi"])


# --- thresholds tuned on one split, scored on another ---------------------------------------------

def _multilabel_bundle(folder: Path, classes: list[str]) -> Path:
    model, _ = models.build(models.resolve(TINY_ARCH), len(classes), 0.0, True)
    arch = models.resolve(TINY_ARCH)
    meta = bundle.BundleMeta(arch=TINY_ARCH, classes=classes, size=16,
                             mean=list(arch.mean), std=list(arch.std), dropout=0.0,
                             multi_label=True)
    bundle.save(folder / "model", model, meta)
    return folder


def _csv_data(root: Path, rows: list[tuple[str, str]]) -> Path:
    for name, _ in rows:
        make_image(root / "images" / name, (100, 100, 100), 16)
    pd.DataFrame(rows, columns=["fname", "labels"]).to_csv(root / "labels.csv", index=False)
    return root


def test_thresholds_and_evaluate_score_the_data_they_are_given(cli, tmp_path, monkeypatch):
    # One label. Split A: positives at 0.35/0.40, negatives at 0.10/0.20 -> best threshold in
    # (0.20, 0.35], F1 = 1 on A. Split B: a negative at 0.45 and a positive at 0.15, which that
    # threshold gets wrong both ways.
    prob = {"a1.png": 0.40, "a2.png": 0.35, "a3.png": 0.20, "a4.png": 0.10,
            "b1.png": 0.90, "b2.png": 0.45, "b3.png": 0.15, "b4.png": 0.05}
    a = _csv_data(tmp_path / "A", [("a1.png", "x"), ("a2.png", "x"), ("a3.png", ""), ("a4.png", "")])
    b = _csv_data(tmp_path / "B", [("b1.png", "x"), ("b2.png", ""), ("b3.png", "x"), ("b4.png", "")])
    run = _multilabel_bundle(tmp_path / "run", ["x"])

    def fake_probabilities(self, paths, tta=False, bs=64, workers=0, progress=True):
        return np.array([[prob[Path(p).name]] for p in paths]), np.arange(len(paths))
    monkeypatch.setattr(Predictor, "probabilities", fake_probabilities)

    r = cli("thresholds", run, "--data", a)
    assert r.exit_code == 0, r.output
    t = bundle.read_meta(run).thresholds[0]
    assert 0.20 < t <= 0.35

    def evaluated(data) -> dict:
        r = cli("evaluate", run, "--data", data, "--labels", "csv:labels.csv")
        assert r.exit_code == 0, r.output
        return json.loads(sorted(run.glob("eval-*"), key=lambda p: int(p.name[5:]))[-1]
                          .joinpath("metrics.json").read_text())

    on_a, on_b = evaluated(a), evaluated(b)
    # expected by hand at threshold t: on A all four right; on B b1 TP, b2 FP, b3 FN, b4 TN
    assert on_a["f1_micro"] == 1.0 and on_a["subset_accuracy"] == 1.0
    assert on_b["f1_micro"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert on_b["subset_accuracy"] == pytest.approx(0.5)
    assert on_b["thresholds"] == [t] and on_b["n"] == 4


# --- which split a run's figures are from -------------------------------------------------------

def test_run_without_test_split_reports_the_validation_split_as_optimistic(trained_run):
    _, run = trained_run
    m = json.loads((run / "metrics.json").read_text())
    splits = pd.read_csv(run / "splits.csv", dtype=str)
    assert m["split"] == "valid" and m["n"] == (splits["split"] == "valid").sum()
    assert "valid" not in m   # the headline already is the validation split
    assert "validation split (also used to choose the best epoch: optimistic)" in \
        (run / "report.md").read_text()


def test_fit_with_a_test_folder_headlines_the_held_out_test_split(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "tvt"
    make_folder_dataset(root / "train", n_per_class=6)
    make_folder_dataset(root / "valid", n_per_class=2)
    for k, name in enumerate(COLOURS):  # test images of their own, 3 + 2 + 2 = 7
        for i in range(3 if k == 0 else 2):
            make_image(root / "test" / name / f"t{i}.png", COLOURS[name], 24, seed=900 + 10 * k + i)
    recipe = write_recipe(tmp_path / "tvt.toml", "data/tvt")
    r = cli("fit", recipe, "--name", "tvt")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "tvt"
    m = json.loads((run / "metrics.json").read_text())
    assert m["split"] == "test" and m["n"] == 7
    assert m["valid"]["n"] == 6
    assert "test split (held out" in m["split_note"]
    assert "on the test split (held out" in r.output

    # the headline is the saved bundle measured on the test images, independently recomputed
    tests = sorted((root / "test").rglob("*.png"))
    probs, kept = Predictor(run).probabilities([str(p) for p in tests])
    truth = np.array([sorted(COLOURS).index(p.parent.name) for p in tests])
    expected = metrics.single_label(probs, truth[kept], sorted(COLOURS))
    assert m["accuracy"] == expected["accuracy"] and m["confusion_matrix"] == expected["confusion_matrix"]
    # and validation stays what the epochs measured
    results = pd.read_csv(run / "results.csv")
    assert results["accuracy"].iloc[m["best_epoch"]] == pytest.approx(m["valid"]["accuracy"], abs=1e-6)
    report_md = (run / "report.md").read_text()
    assert "Measured on the test split" in report_md and "## Validation split" in report_md


def test_multilabel_fit_measures_the_test_split_at_the_tuned_thresholds(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "ml"
    rows = []
    for i in range(48):
        labels = [c for c in ("red", "blue") if rng.random() < 0.5]
        rgb = (220 if "red" in labels else 30, 30, 220 if "blue" in labels else 30)
        make_image(root / "images" / f"i{i}.png", rgb, 16, seed=i)
        rows.append((f"i{i}.png", " ".join(labels), "test" if i < 10 else "valid" if i < 20 else "train"))
    pd.DataFrame(rows, columns=["fname", "labels", "split"]).to_csv(root / "labels.csv", index=False)
    recipe = write_recipe(tmp_path / "ml.toml", "data/ml", data={"labels": "csv:labels.csv", "size": 16})
    r = cli("fit", recipe, "--name", "ml")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "ml"
    m = json.loads((run / "metrics.json").read_text())
    meta = bundle.read_meta(run)
    assert m["split"] == "test" and m["n"] == 10 and m["valid"]["n"] == 10
    assert m["thresholds"] == meta.thresholds == m["valid"]["thresholds"]

    tests = [str(root / "images" / f"i{i}.png") for i in range(10)]
    probs, _ = Predictor(run).probabilities(tests)
    truth = np.array([[c in lab.split() for c in meta.classes] for _, lab, _ in rows[:10]])
    expected = metrics.multi_label(probs, truth, meta.classes, meta.thresholds)
    assert m["f1_micro"] == expected["f1_micro"] and m["subset_accuracy"] == expected["subset_accuracy"]
    assert m["at_0_5"]["f1_micro"] == metrics.multi_label(probs, truth, meta.classes, 0.5)["f1_micro"]
