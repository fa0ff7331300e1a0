"""report.html: written by fit (single- and multi-label), evaluate, ensemble and compare; every
section there, every image embedded, written atomically; Grad-CAM; steps.csv; TensorBoard;
plain progress lines off a terminal."""
from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import COLOURS, TINY_ARCH, assert_usage_error, make_stripes_multilabel, write_recipe

from clfapp.report import html

RUN_SECTIONS = ["summary", "config", "data", "curves", "schedule", "lr-find", "metrics", "confusion",
                "roc-pr", "per-class", "top-losses", "confused", "gradcam"]


def sections(page: str) -> dict[str, str]:
    """{section id: its html}."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


def assert_self_contained(page: str) -> int:
    """Every src is a base64 PNG data URI that decodes; no link leaves the page. Returns the
    number of images."""
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs, "no images at all"
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:60]
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    return len(srcs)


def images_in(body: str) -> int:
    return body.count('src="data:image/png;base64,')


@pytest.fixture
def run(trained_run, tmp_path, monkeypatch):
    work, folder = trained_run
    shutil.copytree(work, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return Path("runs") / folder.name


def test_a_single_label_run_has_every_section_with_its_pictures(run):
    page = (run / "report.html").read_text()
    s = sections(page)
    assert list(s) == RUN_SECTIONS
    assert_self_contained(page)
    assert "tiny" in s["config"] and "[train]" in s["config"]                  # config.toml
    for c in COLOURS:                                                            # counts per class
        assert re.search(rf"<td class=t>{c}</td><td>\d+</td><td>\d+</td>", s["data"]), c
    assert "train <b>" in s["data"] and "valid <b>" in s["data"]
    assert images_in(s["curves"]) == 1 and "train_loss" in s["curves"]
    assert images_in(s["schedule"]) == 1
    assert "not run" in s["lr-find"]                                             # lr was given
    assert images_in(s["confusion"]) == 2                                       # counts, normalised
    assert images_in(s["roc-pr"]) == 1
    assert all(f"<td class=t>{c}</td>" in s["per-class"] for c in COLOURS) and "ROC AUC" in s["per-class"]
    n_valid = int((pd.read_csv(run / "splits.csv")["split"] == "valid").sum())
    assert s["top-losses"].count("<figure") == min(n_valid, html.TOP_LOSSES)
    assert "true: " in s["top-losses"] and "predicted: " in s["top-losses"]
    assert "<table>" in s["confused"] or "No image was given a wrong class" in s["confused"]
    assert 1 <= s["gradcam"].count("<figure") <= 2 * html.GRADCAM_EACH
    assert images_in(s["gradcam"]) == 2 * s["gradcam"].count("<figure")        # image + overlay
    assert not list(run.glob("*.tmp"))
    md = (run / "report.md").read_text()
    for link in ("plots/roc_pr.png", "plots/schedule.png", "plots/confusion_matrix_norm.png",
                 "plots/top_losses.png", "plots/gradcam.png"):
        assert f"({link})" in md and (run / link).is_file(), link
    assert "## Top losses" in md and "## Most confused pairs" in md


def test_steps_csv_has_the_lr_and_momentum_of_every_step(run):
    steps = pd.read_csv(run / "steps.csv")
    results = pd.read_csv(run / "results.csv")
    n_train = int((pd.read_csv(run / "splits.csv")["split"] == "train").sum())
    per_epoch = n_train // 8           # bs 8, fastai drops the last partial training batch
    assert list(steps["step"]) == list(range(len(steps)))
    assert len(steps) == per_epoch * len(results)
    assert sorted(set(steps["epoch"])) == list(results["epoch"])
    # one-cycle: the LR rises then falls, momentum the other way round
    peak = int(steps["lr"].idxmax())
    assert 0 < peak < len(steps) - 1
    assert steps["mom"].iloc[peak] < steps["mom"].iloc[0]
    assert steps["lr"].iloc[-1] == pytest.approx(results["lr"].iloc[-1])


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    work = tmp_path_factory.mktemp("multi")
    make_stripes_multilabel(work / "data" / "multi")
    write_recipe(work / "multi.toml", "data/multi", data={"labels": "csv:labels.csv"},
                 thresholds={"mode": "per-label"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        r = CliRunner().invoke(app, ["fit", "multi.toml", "--name", "m"])
    assert r.exit_code == 0, r.output
    return work, work / "runs" / "m"


def test_a_multilabel_run_has_its_sections_and_threshold_curves(multi_run):
    _, run = multi_run
    page = (run / "report.html").read_text()
    s = sections(page)
    assert list(s) == RUN_SECTIONS + ["thresholds"]
    assert_self_contained(page)
    for c in COLOURS:
        assert f"<td class=t>{c}</td>" in s["data"] and f"<td class=t>{c}</td>" in s["per-class"]
    assert "TP rate" in s["confusion"]                        # one 2 x 2 matrix per label
    assert images_in(s["roc-pr"]) == 1 and "per label" in s["roc-pr"]
    assert "at tuned thresholds" in s["metrics"]
    assert s["top-losses"].count("<figure") >= 1 and "predicted: " in s["top-losses"]
    assert s["gradcam"].count("<figure") >= 1
    assert images_in(s["thresholds"]) == 2                   # global curve + one per label
    assert (run / "plots" / "thresholds_per_label.png").is_file()
    assert "(plots/thresholds_per_label.png)" in (run / "report.md").read_text()


def test_evaluate_writes_a_report_html_with_gradcam(cli, run):
    r = cli("evaluate", run)
    assert r.exit_code == 0, r.output
    out = run / "eval-1"
    page = (out / "report.html").read_text()
    s = sections(page)
    assert_self_contained(page)
    assert "no training here" in s["curves"] and "no training here" in s["schedule"]
    assert "of the run measured" in s["config"]
    assert s["gradcam"].count("<figure") >= 1 and images_in(s["roc-pr"]) == 1
    assert s["top-losses"].count("<figure") >= 1


def test_an_ensemble_and_a_comparison_write_a_report_html(cli, run):
    shutil.copytree(run, Path("runs/copy"))
    r = cli("ensemble", run, "runs/copy", "--name", "ens")
    assert r.exit_code == 0, r.output
    page = (Path("runs/ens") / "report.html").read_text()
    s = sections(page)
    assert_self_contained(page)
    assert "Members and ensemble" in s["summary"] and "<table>" in s["summary"]
    assert "an ensemble has several" in s["gradcam"]
    assert s["top-losses"].count("<figure") >= 1
    r = cli("compare", run, "runs/ens", "--repeats", "1")
    assert r.exit_code == 0, r.output
    page = (Path("runs/compare-1") / "report.html").read_text()
    assert set(sections(page)) == {"table", "charts"} and assert_self_contained(page) == 1
    assert "latency_ms_bs1" in page


# ---- atomic writing --------------------------------------------------------------------------

def test_a_failure_mid_write_keeps_the_previous_report_and_leaves_no_tmp(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("previous")
    # a lone surrogate cannot be encoded: the write fails after part of the text is out
    with pytest.raises(UnicodeEncodeError):
        html.atomic_write(target, "<html>" + "x" * 100_000 + "\ud800")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    html.atomic_write(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_the_report_is_written_through_a_temporary_file(run, monkeypatch):
    replaced = []
    real = html.os.replace

    def spy(src, dst):
        replaced.append((Path(src).name, Path(dst).name, Path(src).read_text()[:15]))
        real(src, dst)
    monkeypatch.setattr(html.os, "replace", spy)
    import json
    m = json.loads((run / "metrics.json").read_text())
    html.write(run, m, sorted(COLOURS), "again", keys=("accuracy",))
    assert replaced == [("report.html.tmp", "report.html", "<!DOCTYPE html>")]
    assert not list(run.glob("*.tmp"))


# ---- Grad-CAM --------------------------------------------------------------------------------

def test_gradcam_points_at_the_evidence():
    import torch
    from torch import nn

    from clfapp.report import gradcam
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0                        # the feature map is the red channel
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[-1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, :, :8] = 1.0                                 # red on the left half only
    heat = gradcam.heatmaps(model, x, [0])
    assert heat.shape == (1, 16, 16) and heat.min() >= 0 and heat.max() <= 1
    assert heat[0, :, :6].mean() > 0.9 and heat[0, :, 10:].mean() < 0.1


@pytest.mark.parametrize("arch", [TINY_ARCH, "resnet18", "simple_cnn"])
def test_gradcam_works_on_the_archs_clfapp_builds(arch):
    import torch

    from clfapp import models
    from clfapp.report import gradcam
    model, _ = models.build(models.resolve(arch), 3)
    model.eval()
    heat = gradcam.heatmaps(model, torch.randn(2, 3, 64, 64), [0, 2])
    assert heat is not None and heat.shape == (2, 64, 64)
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1


# ---- TensorBoard -----------------------------------------------------------------------------

def test_tensorboard_logs_every_epoch(cli, tmp_path, monkeypatch, tiny_recipe):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.chdir(tmp_path)
    r = cli("fit", tiny_recipe, "--epochs", "2", "--name", "tb", "--set", "train.tensorboard=true")
    assert r.exit_code == 0, r.output
    acc = EventAccumulator(str(tmp_path / "runs" / "tb" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/valid", "metrics/accuracy", "metrics/f1_macro", "lr"} <= tags
    results = pd.read_csv(tmp_path / "runs" / "tb" / "results.csv")
    valid = acc.Scalars("loss/valid")
    assert [e.step for e in valid] == list(results["epoch"])
    assert [e.value for e in valid] == pytest.approx(list(results["valid_loss"]), rel=1e-5)


def test_tensorboard_without_the_package_is_one_line(cli, tmp_path, monkeypatch, tiny_recipe):
    from clfapp import config
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "tensorboard_installed", lambda: False)
    r = cli("fit", tiny_recipe, "--set", "train.tensorboard=true")
    assert_usage_error(r, "pip install clfapp[tb]")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---- progress in a log -----------------------------------------------------------------------

def test_fit_into_a_log_prints_plain_epoch_rows(trained_run, tmp_path, monkeypatch, cli, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    r = cli("fit", tiny_recipe, "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output and "█" not in r.output
    rows = [ln for ln in r.output.splitlines() if re.match(r"^\d+\s+\d+\.\d+\s+\d+\.\d+", ln)]
    assert len(rows) == 2


def test_a_long_loop_off_a_terminal_prints_a_line_per_ten_percent(capsys):
    import fastprogress.fastprogress as fp

    from clfapp.report import progress
    assert progress.plain_lines_off_terminal(io.StringIO())
    for _ in fp.progress_bar(range(200)):
        pass
    mb = fp.master_bar(range(2))
    for _ in mb:                                   # training's nested bars print nothing
        for _ in fp.progress_bar(range(30), parent=mb):
            pass
    out = capsys.readouterr().out
    assert "\r" not in out and "█" not in out
    lines = out.splitlines()
    assert len(lines) == 10 and all(ln.startswith("progress ") for ln in lines)
    assert "100.00% [200/200" in lines[-1]


def test_on_a_terminal_the_bars_stay_live():
    import fastprogress.fastprogress as fp

    from clfapp.report import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True
    try:
        assert not progress.plain_lines_off_terminal(Tty())
        assert fp.NO_BAR is False
    finally:
        progress.plain_lines_off_terminal(io.StringIO())
