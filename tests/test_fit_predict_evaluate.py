"""End to end through the CLI: fit → run folder → predict / evaluate; lr-find; recipes; samples."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clfapp import config, models, recipes

from conftest import TINY_ARCH, COLOURS, assert_usage_error, make_folder_dataset

PRED_COLUMNS = ["path", "label", "probability", "top1", "top1_prob", "top2", "top2_prob",
                "top3", "top3_prob"]


@pytest.fixture
def run(trained_run, tmp_path, monkeypatch):
    """A private copy of the session's trained run (and its data), with cwd at its root."""
    work, folder = trained_run
    shutil.copytree(work, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return Path("runs") / folder.name


def _written(result) -> Path:
    m = re.search(r"written to (\S+)", result.output)
    assert m, result.output
    return Path(m.group(1))


def test_run_folder_contents(run):
    for name in ("config.toml", "splits.csv", "results.csv", "metrics.json", "report.md",
                 "plots/curves.png", "plots/confusion_matrix.png",
                 "model/weights.safetensors", "model/model.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert not list(Path("runs").glob("*.tmp")) and not list(run.glob("*.tmp"))

    cfg = config.from_file(run / "config.toml")
    assert cfg.recipe == "tiny" and cfg.model.arch == TINY_ARCH and cfg.data.size == 32
    assert cfg.train.epochs == 2 and cfg.train.precision == "fp32"

    splits = pd.read_csv(run / "splits.csv", dtype=str)
    assert len(splits) == 30 and set(splits["split"]) == {"train", "valid"}
    valid = splits[splits["split"] == "valid"]

    results = pd.read_csv(run / "results.csv")
    assert len(results) == cfg.train.epochs  # one row per epoch
    assert list(results["epoch"]) == list(range(cfg.train.epochs))
    for col in ("train_loss", "valid_loss", "accuracy", "f1_macro", "lr", "seconds"):
        assert col in results.columns and results[col].notna().all(), col

    m = json.loads((run / "metrics.json").read_text())
    assert m["n"] == len(valid)
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["f1_macro"] <= 1
    assert set(m["per_class"]) == set(COLOURS)
    assert sum(v["support"] for v in m["per_class"].values()) == len(valid)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == len(valid)
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    # the run ends with its best epoch: the saved metrics are that epoch's validation metrics
    assert m["best_epoch"] in results["epoch"].tolist()
    assert results["accuracy"].iloc[m["best_epoch"]] == pytest.approx(m["accuracy"], abs=1e-6)
    assert m["accuracy"] == pytest.approx(results["accuracy"].max(), abs=1e-6)

    meta = json.loads((run / "model" / "model.json").read_text())
    arch = models.resolve(TINY_ARCH)
    assert meta["arch"] == TINY_ARCH
    assert meta["classes"] == sorted(COLOURS)
    assert meta["size"] == 32 and meta["inference"]["resize"] == "squish"
    assert meta["mean"] == pytest.approx(list(arch.mean)) and meta["std"] == pytest.approx(list(arch.std))
    assert {"torch", "timm", "fastai", "clfapp"} <= set(meta["versions"])
    import torch
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or \
        meta["versions"]["torch"] == torch.__version__

    report = (run / "report.md").read_text()
    assert f"{m['accuracy']:.4f}" in report and "confusion_matrix.png" in report


def test_predict_folder_csv_and_json(cli, run):
    folder = Path("data/shapes")
    n = len(list(folder.rglob("*.png")))
    result = cli("predict", run, folder)
    assert result.exit_code == 0, result.output
    out = _written(result)
    assert out == run / "predict-1" / "predictions.csv"
    df = pd.read_csv(out)
    assert list(df.columns) == PRED_COLUMNS
    assert len(df) == n and set(df["path"]) == {str(p) for p in folder.rglob("*.png")}
    assert (df["label"] == df["top1"]).all()
    assert np.allclose(df["probability"], df["top1_prob"])
    probs = df[["top1_prob", "top2_prob", "top3_prob"]].to_numpy()
    assert (np.diff(probs, axis=1) <= 1e-9).all()          # ranked
    assert np.allclose(probs.sum(1), 1, atol=1e-4)          # 3 classes: top-3 is everything
    assert set(df[["top1", "top2", "top3"]].to_numpy().ravel()) <= set(COLOURS)
    assert (df[["top1", "top2", "top3"]].nunique(axis=1) == 3).all()

    result = cli("predict", run, folder, "--format", "json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    out_json = _written(result)
    assert out_json == run / "predict-2" / "predictions.json"
    records = json.loads(out_json.read_text())
    assert len(records) == n
    assert set(records[0]) == {"path", "label", "probability", "top1", "top1_prob", "top2", "top2_prob"}
    by_path = {r["path"]: r for r in records}
    for row in df.itertuples():
        r = by_path[row.path]
        assert r["label"] == row.label and r["probability"] == pytest.approx(row.probability, abs=1e-5)

    # an explicit --out, and single files as arguments
    one = sorted(folder.rglob("*.png"))[:2]
    result = cli("predict", run, *one, "--out", "mine/p.csv")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv("mine/p.csv")) == 2


def test_predict_and_evaluate_agree_with_fit_on_the_validation_split(cli, run):
    from clfapp.data import splits as recorded
    splits = recorded.read(run / "splits.csv")   # paths relative to the dataset: made absolute
    valid = splits[splits["split"] == "valid"]
    valid[["path", "label"]].to_csv("valid.csv", index=False)   # a list of paths for predict

    result = cli("predict", run, "valid.csv", "--out", "valid_pred.csv")
    assert result.exit_code == 0, result.output
    pred = pd.read_csv("valid_pred.csv", dtype={"label": str})
    assert len(pred) == len(valid)
    merged = pred.merge(valid, on="path", suffixes=("_pred", "_true"))
    assert len(merged) == len(valid)
    predict_accuracy = float((merged["label_pred"] == merged["label_true"]).mean())

    result = cli("evaluate", run)
    assert result.exit_code == 0, result.output
    ev = run / "eval-1"
    for name in ("metrics.json", "report.md", "plots/confusion_matrix.png"):
        assert (ev / name).is_file(), name
    em = json.loads((ev / "metrics.json").read_text())
    fm = json.loads((run / "metrics.json").read_text())
    assert em["n"] == len(valid)
    assert em["accuracy"] == pytest.approx(predict_accuracy, abs=1e-9)
    assert em["accuracy"] == pytest.approx(fm["accuracy"], abs=1e-9)
    assert em["confusion_matrix"] == fm["confusion_matrix"]
    assert em["f1_macro"] == pytest.approx(fm["f1_macro"], abs=1e-9)
    assert f"{em['accuracy']:.4f}" in result.output

    # a second evaluation gets its own folder
    result = cli("evaluate", run.name, "--tta")   # by name under runs/
    assert result.exit_code == 0, result.output
    assert (run / "eval-2" / "metrics.json").is_file()
    assert (run / "eval-1" / "metrics.json").read_text() == json.dumps(em, indent=2) + "\n"


def test_evaluate_on_another_labelled_folder(cli, run, tmp_path):
    other = make_folder_dataset(tmp_path / "other", n_per_class=3, size=40)
    result = cli("evaluate", run, "--data", other)
    assert result.exit_code == 0, result.output
    em = json.loads((run / "eval-1" / "metrics.json").read_text())
    assert em["n"] == 9

    result = cli("predict", run, other, "--out", "o.csv")
    assert result.exit_code == 0, result.output
    pred = pd.read_csv("o.csv")
    truth = pred["path"].map(lambda p: Path(p).parent.name)
    assert em["accuracy"] == pytest.approx(float((pred["label"] == truth).mean()))

    # labels the model never saw are refused, naming them
    make_folder_dataset(tmp_path / "alien", n_per_class=2, classes=["red", "purple"])
    result = cli("evaluate", run, "--data", tmp_path / "alien")
    assert result.exit_code == 2 and "purple" in result.stderr


def test_evaluate_data_refuses_an_unknown_split_value(cli, run, tmp_path):
    # issue 24: a label CSV's `holdout` rows were evaluated as if they had no split
    other = make_folder_dataset(tmp_path / "other", n_per_class=2)
    rows = [f"{p.relative_to(other).as_posix()},{p.parent.name},{('valid', 'holdout')[i % 2]}"
            for i, p in enumerate(sorted(other.rglob("*.png")))]
    (other / "labels.csv").write_text("fname,label,split\n" + "\n".join(rows) + "\n")
    assert_usage_error(cli("evaluate", run, "--data", other / "labels.csv"),
                       "'holdout' (3 rows)", "accepted: train, valid")
    assert not (run / "eval-1").exists()


def test_evaluate_with_class_names_pandas_reads_as_missing(cli, tmp_path, monkeypatch, tiny_recipe):
    # class folders named "None" and "NA" are ordinary labels
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "na"
    for name, rgb in (("None", COLOURS["red"]), ("NA", COLOURS["green"]), ("blue", COLOURS["blue"])):
        make_folder_dataset(root, n_per_class=8, classes=[name])
        for p in (root / name).glob("*.png"):   # recolour (COLOURS has no such keys)
            Image.new("RGB", (24, 24), rgb).save(p)
    result = cli("fit", tiny_recipe, "--data", "data/na", "--name", "na")
    assert result.exit_code == 0, result.output
    result = cli("evaluate", "na")
    assert result.exit_code == 0, result.output
    em = json.loads((tmp_path / "runs" / "na" / "eval-1" / "metrics.json").read_text())
    fm = json.loads((tmp_path / "runs" / "na" / "metrics.json").read_text())
    assert em["accuracy"] == pytest.approx(fm["accuracy"])


def test_lr_find(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    result = cli("lr-find", tiny_recipe)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "tiny-lr-1"
    assert (folder / "plots" / "lr_find.png").stat().st_size > 0
    assert (folder / "config.toml").is_file()
    found = json.loads((folder / "lr_find.json").read_text())
    s = found["suggestions"]
    assert set(s) == {"valley", "slide", "minimum", "steep"}
    lrs, losses = np.array(found["lr"]), np.array(found["loss"])
    assert len(lrs) == len(losses) > 10
    assert (np.diff(lrs) > 0).all()   # the finder sweeps upwards
    for name, v in s.items():
        assert lrs.min() <= v <= lrs.max(), name
        assert f"{v:.2e}" in result.output, name
    # no run folder of a fit was made: lr-find only explores
    assert not (tmp_path / "runs" / "tiny-1").exists()
    assert not (folder / "model").exists()


def test_fit_with_lr_auto_uses_the_finders_valley(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    result = cli("fit", tiny_recipe, "--lr", "auto", "--name", "auto")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "auto"
    valley = json.loads((folder / "lr_find.json").read_text())["suggestions"]["valley"]
    cfg = config.from_file(folder / "config.toml")
    assert cfg.train.lr == pytest.approx(valley)   # the resolved config records the lr used
    assert (folder / "model" / "weights.safetensors").is_file()


def test_recipes_lists_the_shipped_recipes(cli):
    result = cli("recipes")
    assert result.exit_code == 0, result.output
    lines = {ln.split()[0]: ln for ln in result.output.splitlines() if ln.strip()}
    assert {"digits", "plants"} <= set(lines)
    for name, path in recipes.available().items():
        assert recipes.describe(path) in lines[name]
    assert len(lines) == len(recipes.available())


def test_data_sample_digits(cli, tmp_path):
    out = tmp_path / "digits"
    result = cli("data", "sample", "digits", "--out", out)
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in out.iterdir())
    assert folders == [str(d) for d in range(10)]
    files = list(out.rglob("*.png"))
    assert len(files) == 1797
    counts = {d: len(list((out / d).glob("*.png"))) for d in folders}
    assert all(170 <= c <= 190 for c in counts.values()), counts
    img = Image.open(files[0])
    assert img.size == (8, 8)
    assert not (tmp_path / "digits.tmp").exists()
    # never over an existing folder
    result = cli("data", "sample", "digits", "--out", out)
    assert result.exit_code == 2 and "not empty" in result.stderr
