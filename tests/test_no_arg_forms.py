"""The forms people type first: `clfapp fit` / `clfapp lr-find` with no argument (./clfapp.toml),
`clfapp lr-find FOLDER`, and `clfapp predict photos/` with no run (the newest finished run)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from clfapp import auto, config
from clfapp.models import runs

from conftest import TINY_ARCH, assert_usage_error, make_folder_dataset, write_recipe


# --- fit / lr-find with no argument ------------------------------------------------------------

def test_fit_with_no_argument_uses_clfapp_toml(cli, tmp_path, monkeypatch, tiny_data):
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "clfapp.toml", "data/shapes")
    result = cli("fit")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "using the project's recipe: ./clfapp.toml"
    run = tmp_path / "runs" / "clfapp-1"
    assert (run / "model" / "model.json").is_file()
    assert config.from_file(run / "config.toml").model.arch == TINY_ARCH   # the recipe's own
    assert "defaults for this data" not in result.stdout   # a recipe is not given chosen values


def test_lr_find_with_no_argument_uses_clfapp_toml(cli, tmp_path, monkeypatch, tiny_data):
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "clfapp.toml", "data/shapes")
    result = cli("lr-find")
    assert result.exit_code == 0, result.output
    assert "using the project's recipe: ./clfapp.toml" in result.stdout
    assert (tmp_path / "runs" / "clfapp-lr-1" / "plots" / "lr_find.png").is_file()


@pytest.mark.parametrize("command", ["fit", "lr-find"])
def test_no_argument_and_no_clfapp_toml_is_one_usage_line(cli, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli(command), "no recipe given", "clfapp.toml", "folder")
    assert not (tmp_path / "runs").exists()


def test_lr_find_folder_works_like_fit_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "photos", n_per_class=10)
    result = cli("lr-find", "photos", "--arch", TINY_ARCH, "--no-pretrained", "--bs", "8",
                 "--set", "train.precision=fp32")
    assert result.exit_code == 0, result.output
    # size chosen for the 24 px images (the lower clamp); the arch was given, so not chosen
    assert "defaults for this data (30 images, 3 classes, median short side 24 px): size 64," \
        in result.stdout
    folder = tmp_path / "runs" / "photos-lr-1"
    cfg = config.from_file(folder / "config.toml")
    assert cfg.data.size == 64 and cfg.data.path == "photos" and cfg.model.arch == TINY_ARCH
    assert (folder / "plots" / "lr_find.png").is_file()


# --- predict with no run ---------------------------------------------------------------------

@pytest.fixture
def runs_here(trained_run, tmp_path, monkeypatch):
    """A copy of the session's trained run and its data, cwd at its root; returns runs/."""
    work, _ = trained_run
    shutil.copytree(work, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return Path("runs")


def _age(folder: Path, seconds_ago: float) -> None:
    t = (folder / "metrics.json").stat().st_mtime - seconds_ago
    os.utime(folder / "metrics.json", (t, t))


def test_predict_with_no_run_uses_the_newest_finished_run(cli, runs_here):
    old = runs_here / "tiny-old"
    shutil.copytree(runs_here / "tiny-run", old)
    _age(old, 3600)
    _age(runs_here / "tiny-run", 60)
    unfinished = runs_here / "tiny-newer"        # newer, but it never wrote metrics.json
    shutil.copytree(runs_here / "tiny-run", unfinished)
    (unfinished / "metrics.json").unlink()
    result = cli("predict", "data/shapes")
    assert result.exit_code == 0, result.output
    m = re.search(r"^using the newest finished run: (\S+) \((\d{4}-\d\d-\d\d \d\d:\d\d)\)$",
                  result.stdout, re.M)
    assert m and Path(m.group(1)) == runs_here / "tiny-run", result.stdout
    out = runs_here / "tiny-run" / "predict-1" / "predictions.csv"
    assert len(pd.read_csv(out)) == len(list(Path("data/shapes").rglob("*.png")))
    assert not (unfinished / "predict-1").exists() and not (old / "predict-1").exists()


def test_predict_with_run_and_paths_is_unchanged(cli, runs_here):
    result = cli("predict", "tiny-run", "data/shapes")
    assert result.exit_code == 0, result.output
    assert "newest finished run" not in result.stdout
    assert (runs_here / "tiny-run" / "predict-1" / "predictions.csv").is_file()


def test_predict_with_no_finished_run_is_one_usage_line(cli, runs_here):
    (runs_here / "tiny-run" / "model" / "model.json").unlink()   # not finished any more
    assert_usage_error(cli("predict", "data/shapes"), "no finished run", "clfapp fit")
    shutil.rmtree(runs_here)
    assert_usage_error(cli("predict", "data/shapes"), "no finished run")


def test_predict_with_only_a_run_asks_for_the_images(cli, runs_here):
    assert_usage_error(cli("predict", "tiny-run"), "is a run", "PATH")
    assert_usage_error(cli("predict", "runs/tiny-run"), "is a run")


def test_predict_with_no_run_takes_an_absolute_folder_of_images(cli, runs_here):
    # issue 24: `runs/` joined with an absolute path is that path, so every absolute folder of
    # images was refused as "a run"
    photos = Path("data/shapes").resolve()
    result = cli("predict", str(photos))
    assert result.exit_code == 0, result.output
    assert "using the newest finished run: runs/tiny-run (" in result.stdout
    out = runs_here / "tiny-run" / "predict-1" / "predictions.csv"
    assert len(pd.read_csv(out)) == len(list(photos.rglob("*.png")))


def test_predict_with_an_absolute_run_folder(cli, runs_here):
    run = (runs_here / "tiny-run").resolve()
    result = cli("predict", str(run), str(Path("data/shapes").resolve()))
    assert result.exit_code == 0, result.output
    assert "newest finished run" not in result.stdout
    assert (run / "predict-1" / "predictions.csv").is_file()
    assert_usage_error(cli("predict", str(run)), "is a run", "PATH")   # alone: images missing


def test_predict_with_a_missing_single_argument(cli, runs_here):
    assert_usage_error(cli("predict", "no/such/photos"), "no/such/photos", "neither a run")


def test_a_finished_ensemble_counts_and_the_newest_wins(tmp_path):
    parent = tmp_path / "runs"
    run, ens, half = parent / "a-1", parent / "ensemble-1", parent / "b-1"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text("{}")
    (run / "metrics.json").write_text("{}")
    ens.mkdir()
    (ens / "ensemble.json").write_text("{}")
    (ens / "metrics.json").write_text("{}")
    (half / "model").mkdir(parents=True)          # a bundle but no metrics.json: unfinished
    (half / "model" / "model.json").write_text("{}")
    _age(run, 100)
    assert runs.newest_finished_run(parent) == ens
    _age(ens, 1000)
    assert runs.newest_finished_run(parent) == run
    assert not runs.is_finished(half)
    assert runs.newest_finished_run(tmp_path / "nothing") is None
