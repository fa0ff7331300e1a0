"""Every command checks its numbers and its output places before any work (issue 24.8).

A number that is NaN, infinite or out of its range, and an output path whose folder is missing,
that is a file where a folder goes (or a folder where a file goes), that is taken, or that
cannot be written, is refused in one `error:` line, exit 2, naming the option: before a model
loads, data is read or a folder is made. Before, these were accepted silently (a NaN threshold,
an infinite --tolerance or --temperature, --lr nan), failed late after the work (compare's
--name, predict's --out), or ended in a traceback (--threads -1, data sample --out under a file).

Each case runs with the commands' work replaced by a function that fails the test: a refusal
that comes only after a model was loaded, data scanned or training started does not pass.
"""
from __future__ import annotations

import os
import pathlib

import pytest

from conftest import assert_usage_error, make_folder_dataset, write_recipe

# What the commands do once their options are accepted; none of it may start in these tests.
WORK = ["clfapp.infer.loader.load", "clfapp.infer.export.export", "clfapp.infer.compare.compare",
        "clfapp.train.fit", "clfapp.train.lr_find", "clfapp.train.distill.load_teacher",
        "clfapp.train.tune.run_study", "clfapp.data.check.full", "clfapp.data.samples.make"]


@pytest.fixture
def no_work(monkeypatch):
    import importlib

    for target in WORK:
        module, name = target.rsplit(".", 1)

        def started(*a, _what=target, **k):
            raise AssertionError(f"work started ({_what}) before the options were checked")
        monkeypatch.setattr(importlib.import_module(module), name, started)


def _files(*roots) -> set:
    return {(str(r), str(p.relative_to(r))) for r in roots for p in pathlib.Path(r).rglob("*")}


@pytest.fixture
def place(tmp_path, monkeypatch, trained_run):
    """cwd = tmp_path with tiny.toml, data/shapes, imgs/, a file `afile`, a taken runs/taken/."""
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=2)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    make_folder_dataset(tmp_path / "imgs", n_per_class=1)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    return tmp_path


# (command line with RUN for the trained run, fragments of the error line)
NUMBERS = {
    "predict --threshold nan": (["predict", "RUN", "imgs", "--threshold", "nan"], ["--threshold", "[0, 1]", "nan"]),
    "predict --threshold 1.5": (["predict", "RUN", "imgs", "--threshold", "1.5"], ["--threshold", "1.5"]),
    "evaluate --threshold -0.5": (["evaluate", "RUN", "--threshold", "-0.5"], ["--threshold", "-0.5"]),
    "evaluate --threshold inf": (["evaluate", "RUN", "--threshold", "inf"], ["--threshold", "inf"]),
    "export --tolerance inf": (["export", "RUN", "--tolerance", "inf"], ["--tolerance", ">= 0", "inf"]),
    "compare --threads -1": (["compare", "RUN", "--threads", "-1"], ["--threads", "0 or more"]),
    "distill --temperature inf": (["distill", "RUN", "--arch", "test_resnet", "--no-pretrained", "--temperature", "inf"],
                                  ["--temperature", "positive number", "inf"]),
    "data check --threads -2": (["data", "check", "data/shapes", "--threads", "-2"], ["--threads", "0 or more"]),
    "fit --lr nan": (["fit", "tiny.toml", "--lr", "nan"], ["train.lr", "nan"]),
    "fit --set train.wd=inf": (["fit", "tiny.toml", "--set", "train.wd=inf"], ["train.wd", "finite"]),
    "lr-find --set aug.max_rotate=nan": (["lr-find", "tiny.toml", "--set", "aug.max_rotate=nan"],
                                         ["aug.max_rotate", "finite"]),
}

PATHS = {
    "predict --out under a file": (["predict", "RUN", "imgs", "--out", "afile/p.csv"], ["--out", "is a file"]),
    "predict --out two folders missing": (["predict", "RUN", "imgs", "--out", "no/such/p.csv"],
                                          ["--out", "no", "does not exist"]),
    "predict --out a folder": (["predict", "RUN", "imgs", "--out", "imgs"], ["--out", "is a folder"]),
    "export --out folder missing": (["export", "RUN", "--out", "no/x"], ["--out", "does not exist"]),
    "compare --name taken": (["compare", "RUN", "--name", "taken"], ["taken", "already exists"]),
    "compare runs/ is a file": (["compare", "RUN"], ["runs", "is a file"]),
    "distill --name taken": (["distill", "RUN", "--arch", "test_resnet", "--no-pretrained", "--name", "taken"],
                             ["taken", "already exists"]),
    "tune runs/ is a file": (["tune", "tiny.toml"], ["runs", "is a file"]),
    "data sample --out under a file": (["data", "sample", "digits", "--out", "afile/digits"], ["--out", "is a file"]),
    "data sample --out folder missing": (["data", "sample", "digits", "--out", "no/digits"],
                                         ["--out", "does not exist"]),
}


@pytest.mark.parametrize("case", [*NUMBERS, *PATHS])
def test_refused_in_one_line_before_any_work(cli, place, trained_run, no_work, case):
    _, run = trained_run
    args, fragments = NUMBERS.get(case) or PATHS[case]
    if "runs/ is a file" in case:
        (place / "runs" / "taken").rmdir()
        (place / "runs").rmdir()
        (place / "runs").write_text("not a folder")
    before = _files(place, run)
    line = assert_usage_error(cli(*[run if a == "RUN" else a for a in args]), *fragments)
    assert "Traceback" not in line
    assert _files(place, run) == before, "a folder or file was made before the refusal"


@pytest.mark.parametrize("command", [["evaluate", "RUN"], ["thresholds", "RUN"],
                                     ["predict", "RUN", "imgs"], ["export", "RUN"]])
def test_unwritable_run_folder_is_refused_before_the_model_loads(cli, place, trained_run, no_work,
                                                                monkeypatch, command):
    """RUN/eval-N (predict-N, export-N, thresholds-N) cannot be made: said first, not after the
    measuring. (The suite may run as root, whom permissions do not stop: os.access says no.)"""
    _, run = trained_run
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k:
                        False if pathlib.Path(p).resolve() == run.resolve() else real(p, mode, *a, **k))
    before = _files(place, run)
    assert_usage_error(cli(*[run if a == "RUN" else a for a in command]), str(run), "not writable")
    assert _files(place, run) == before


def test_the_forms_that_work_still_do(tmp_path, monkeypatch):
    """The checks refuse only what cannot work: a missing runs/ is made, predict's --out may
    name one new folder, an existing empty folder takes an export."""
    from clfapp.cli import checks

    monkeypatch.chdir(tmp_path)
    checks.new_folder("runs")                              # runs/ is made by the command
    checks.new_folder("runs", "fresh")
    checks.output_file("--out", "mine/p.csv", may_make=1)  # predict makes mine/
    (tmp_path / "empty").mkdir()
    checks.output_folder("--out", "empty")
    checks.number("--threshold", 0.0, 0, 1)
    checks.number("--threshold", 1.0, 0, 1)
    checks.number("--workers", 0, 0)
    assert checks.numbers_list("--weights", "2,1", 0, low_open=True) == [2.0, 1.0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mine").exists()
