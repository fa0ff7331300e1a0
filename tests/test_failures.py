"""Nothing lost on failure: whatever ends training early leaves the best epoch saved as a
loadable bundle, with results.csv, metrics.json and the report consistent with it."""
from __future__ import annotations

import json
import math
import os
import signal
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_recipe

from clfapp.infer import bundle

from clfapp.models import callbacks

from clfapp import models
from clfapp.errors import UsageError


@pytest.fixture
def work(cli, tmp_path, monkeypatch, tiny_data):
    """cwd = tmp_path with the tiny colour dataset and a 4-epoch from-scratch recipe."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "tiny.toml", "data/shapes", train={"epochs": 4})
    return tmp_path


def _at_epoch(monkeypatch, event: str, epoch: int, action):
    """Run `action(callback)` in ResultsCSV's `event` when `epoch` (0-based, counted across
    phases) is the current one; the original event runs first."""
    original = getattr(callbacks.ResultsCSV, event, None)

    def patched(self):
        if original is not None:
            original(self)
        current = self.epoch_total - (1 if event == "after_epoch" else 0)
        if current == epoch:
            action(self)
    monkeypatch.setattr(callbacks.ResultsCSV, event, patched, raising=False)


def _assert_saved_best(cli, run, finished_rows: int, stopped: str):
    rows = pd.read_csv(run / "results.csv")
    assert len(rows) == finished_rows, rows
    m = json.loads((run / "metrics.json").read_text())
    assert m["stopped"] == stopped
    assert m["best_epoch"] is not None and m["best_epoch"] < finished_rows
    assert math.isfinite(rows.iloc[m["best_epoch"]]["valid_loss"])
    model, _ = bundle.load(run)
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())
    assert "early" in (run / "report.md").read_text()
    pred = cli("predict", run, "data/shapes")
    assert pred.exit_code == 0, pred.output
    return m


def test_an_error_mid_run_saves_the_best_epoch_and_exits_1(cli, work, monkeypatch):
    def boom(cb):
        raise RuntimeError("injected failure")
    _at_epoch(monkeypatch, "after_epoch", 1, boom)   # after the second epoch's row is written
    result = cli("fit", "tiny.toml", "--name", "err")
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError) and "injected" in str(result.exception)
    assert "the best epoch so far" in result.output
    _assert_saved_best(cli, work / "runs" / "err", 2, "failed")


def test_a_nan_training_loss_stops_and_keeps_the_best_finite_epoch(cli, work, monkeypatch):
    def poison(cb):
        with torch.no_grad():
            next(cb.learn.model.parameters()).fill_(float("nan"))
    _at_epoch(monkeypatch, "before_epoch", 2, poison)
    result = cli("fit", "tiny.toml", "--name", "nan")
    assert result.exit_code == 1, result.output
    assert "training loss became nan" in result.output
    _assert_saved_best(cli, work / "runs" / "nan", 2, "diverged")


def test_a_nan_validation_epoch_is_written_but_never_best(cli, work, monkeypatch):
    def poison_head(cb):  # after training, before validation: only the epoch's figures are NaN
        with torch.no_grad():
            list(cb.learn.model.parameters())[-1].fill_(float("nan"))
    _at_epoch(monkeypatch, "before_validate", 2, poison_head)
    result = cli("fit", "tiny.toml", "--name", "vnan")
    assert result.exit_code == 1, result.output
    run = work / "runs" / "vnan"
    rows = pd.read_csv(run / "results.csv")
    assert len(rows) == 3 and math.isnan(rows.iloc[2]["valid_loss"])  # the NaN epoch is on record
    m = _assert_saved_best(cli, run, 3, "diverged")
    assert m["best_epoch"] in (0, 1)


def test_sigterm_saves_the_best_epoch_and_exits_143(cli, work, monkeypatch):
    _at_epoch(monkeypatch, "after_epoch", 1, lambda cb: os.kill(os.getpid(), signal.SIGTERM))
    result = cli("fit", "tiny.toml", "--name", "term")
    assert result.exit_code == 143, result.output
    _assert_saved_best(cli, work / "runs" / "term", 2, "terminated")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler put back


def test_ctrl_c_mid_batch_under_bf16_leaves_autocast_and_saves(cli, work, monkeypatch):
    """Interrupted between the forward pass and the loss: autocast was entered and not left."""
    def interrupt(cb):
        if cb.training:
            raise KeyboardInterrupt
    _at_epoch(monkeypatch, "after_pred", 1, interrupt)
    result = cli("fit", "tiny.toml", "--name", "cc", "--set", "train.precision=bf16")
    assert result.exit_code == 130, result.output
    assert not torch.is_autocast_enabled("cpu")
    m = _assert_saved_best(cli, work / "runs" / "cc", 1, "interrupted")
    assert m["interrupted"] is True and m["best_epoch"] == 0


def test_the_early_stopping_epoch_is_in_results_and_plots(cli, work):
    # lr so small nothing changes: accuracy never improves after epoch 0, patience 1 stops at 1.
    result = cli("fit", "tiny.toml", "--name", "es", "--lr", "1e-12", "--epochs", "5",
                 "--set", "train.early_stop=1")
    assert result.exit_code == 0, result.output
    run = work / "runs" / "es"
    rows = pd.read_csv(run / "results.csv")
    assert list(rows["epoch"]) == [0, 1]   # epoch 1 triggered the stop and is recorded
    assert (run / "plots" / "curves.png").is_file()


def test_best_epoch_not_last_is_the_one_saved_and_reported(cli, work, monkeypatch):
    """The last epoch is made bad on purpose: the bundle and metrics.json are the best one's."""
    def spoil(cb):
        last = [m for m in cb.learn.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()   # equal logits: every image becomes class 0
    _at_epoch(monkeypatch, "before_validate", 3, spoil)
    result = cli("fit", "tiny.toml", "--name", "best")
    assert result.exit_code == 0, result.output
    run = work / "runs" / "best"
    rows = pd.read_csv(run / "results.csv")
    m = json.loads((run / "metrics.json").read_text())
    assert len(rows) == 4 and rows.iloc[3]["accuracy"] < 0.5
    assert m["best_epoch"] == int(rows["accuracy"].idxmax()) != 3
    assert m["accuracy"] == pytest.approx(rows.iloc[m["best_epoch"]]["accuracy"], abs=1e-6)


def test_keep_best_skips_an_epoch_whose_loss_is_nan():
    """An epoch with NaN valid loss but a higher-looking accuracy (argmax of NaN logits)."""
    keep = callbacks.KeepBest("accuracy")
    recorder = SimpleNamespace(values=[])
    keep.learn = SimpleNamespace(recorder=recorder, model=torch.nn.Linear(2, 2))
    keep.idx, keep.comp, keep.best, keep.min_delta = 2, np.greater, -float("inf"), 0.0
    for values in ([0.5, 0.4, 0.80], [0.4, float("nan"), 0.95], [0.3, 0.35, 0.85]):
        recorder.values.append(values)
        keep.after_epoch()
    assert keep.best_epoch == 2 and keep.best == pytest.approx(0.85)


# --- the bundle -----------------------------------------------------------------------------

def _meta(arch):
    return bundle.BundleMeta(arch="test_resnet", classes=["a", "b"], size=16,
                             mean=list(arch.mean), std=list(arch.std))


def test_a_failed_bundle_swap_keeps_the_old_bundle(tmp_path, monkeypatch):
    arch = models.resolve("test_resnet")
    old, _ = models.build(arch, 2)
    bundle.save(tmp_path / "model", old, _meta(arch))
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("disk full")
        return real_replace(src, dst)
    monkeypatch.setattr(bundle.os, "replace", failing_replace)
    new, _ = models.build(arch, 2)
    with pytest.raises(OSError):
        bundle.save(tmp_path / "model", new, _meta(arch))
    monkeypatch.undo()
    loaded, _ = bundle.load(tmp_path)
    for k, v in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_newer_format_is_refused_before_its_fields_are_read(tmp_path):
    arch = models.resolve("test_resnet")
    m, _ = models.build(arch, 2)
    bundle.save(tmp_path / "model", m, _meta(arch))
    path = tmp_path / "model" / "model.json"
    raw = json.loads(path.read_text())
    raw.update(format=bundle.FORMAT + 1, a_field_from_the_future={"x": 1})
    path.write_text(json.dumps(raw))
    with pytest.raises(UsageError, match="newer clfapp"):
        bundle.read_meta(tmp_path)


def test_a_batch_larger_than_the_training_set_still_trains(cli, work):
    """fastai drops the last partial batch: bs 64 over ~23 images used to train on nothing."""
    result = cli("fit", "tiny.toml", "--name", "bigbs", "--bs", "64", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "using batches of" in result.output
    rows = pd.read_csv(work / "runs" / "bigbs" / "results.csv")
    assert rows["train_loss"].map(math.isfinite).all(), rows
