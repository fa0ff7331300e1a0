"""Class order: the classes a model names must be the order its outputs come in.

Class names whose alphabetical and natural orders differ (1, 2, 10) once made fastai's vocab
(sorted: 1, 10, 2) disagree with the bundle's (natural: 1, 2, 10): the training table said 1.0
while evaluate said 0.33 and predict called every `10` a `2`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_image, write_recipe

# Names whose alphabetical order (1, 10, 2) differs from their natural order (1, 2, 10).
NUMBERED = {"1": (220, 30, 30), "2": (30, 200, 40), "10": (30, 40, 220)}


def _numbered_folders(root: Path, n: int = 10) -> Path:
    for k, (name, rgb) in enumerate(NUMBERED.items()):
        for i in range(n):
            make_image(root / name / f"img_{i}.png", rgb, 24, seed=100 * k + i)
    return root


def _written(result) -> Path:
    m = re.search(r"written to (\S+)", result.output)
    assert m, result.output
    return Path(m.group(1))


def test_numbered_classes_train_evaluate_and_predict_alike(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _numbered_folders(tmp_path / "numbers")
    write_recipe(tmp_path / "tiny.toml", "numbers", train={"epochs": 3})
    fit = cli("fit", "tiny.toml", "--name", "num")
    assert fit.exit_code == 0, fit.output
    run = tmp_path / "runs" / "num"

    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["classes"] == ["1", "2", "10"]
    results = pd.read_csv(run / "results.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    best = results.iloc[metrics["best_epoch"]]
    assert best["accuracy"] >= 0.9, results  # colours: trivially learnable
    # The run's own figure, the training table's and evaluate's: one model, one answer.
    assert metrics["accuracy"] == pytest.approx(best["accuracy"], abs=1e-6)
    ev = cli("evaluate", run)
    assert ev.exit_code == 0, ev.output
    assert f"accuracy {metrics['accuracy']:.4f}" in ev.output

    pred = cli("predict", run, "numbers")
    assert pred.exit_code == 0, pred.output
    df = pd.read_csv(_written(pred), dtype=str)
    truth = df["path"].map(lambda p: Path(p).parent.name)
    assert (df["label"] == truth).mean() >= 0.9
    assert (df.loc[truth == "10", "label"] == "10").mean() >= 0.9  # not read as "2"


def test_numbered_labels_multilabel_predict_like_training(cli, tmp_path, monkeypatch):
    """Multi-label with labels l1, l2, l10: each image shows one colour and carries its label."""
    monkeypatch.chdir(tmp_path)
    rows = ["fname,labels"]
    for k, (name, rgb) in enumerate(NUMBERED.items()):
        for i in range(10):
            fname = f"l{name}_{i}.png"
            make_image(tmp_path / "ml" / "images" / fname, rgb, 24, seed=100 * k + i)
            rows.append(f"{fname},l{name}")
    (tmp_path / "ml" / "labels.csv").write_text("\n".join(rows) + "\n")
    write_recipe(tmp_path / "tiny.toml", "ml", data={"labels": "csv:labels.csv"},
                 train={"epochs": 4})
    fit = cli("fit", "tiny.toml", "--name", "ml")
    assert fit.exit_code == 0, fit.output
    run = tmp_path / "runs" / "ml"
    assert json.loads((run / "model" / "model.json").read_text())["classes"] == ["l1", "l2", "l10"]

    pred = cli("predict", run, "ml/images", "--threshold", "0.5")
    assert pred.exit_code == 0, pred.output
    df = pd.read_csv(_written(pred))
    truth = df["path"].map(lambda p: Path(p).name.split("_")[0])
    # The label with the highest probability is the one the image carries.
    top = df[["l1", "l2", "l10"]].idxmax(axis=1)
    assert (top == truth).mean() >= 0.9, df
