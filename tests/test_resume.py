"""`clfapp fit --resume RUN` (train/checkpoint.py): a run killed or stopped at any point ends
with the same epochs, figures and weights as one never stopped (bit for bit under
--deterministic), and a run whose config or data changed is refused."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, assert_usage_error, make_folder_dataset, make_image, write_recipe

# A "pretrained" tiny net (its own random weights given as --weights): fine_tune's two phases,
# 2 frozen epochs then 3 with everything trainable; 2 training batches per epoch.
PRE = {"model": {"weights": "body.safetensors", "pretrained": True},
       "train": {"freeze_epochs": 2, "epochs": 3}}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with tiny data, a body weights file and recipes, and the reference runs (never
    stopped) made in it once for the module: {"pre": run folder, ...}."""
    import timm
    import torch
    from safetensors.torch import save_file

    w = tmp_path_factory.mktemp("resume")
    make_folder_dataset(w / "data" / "shapes", n_per_class=10)
    torch.manual_seed(0)
    body = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, str(w / "body.safetensors"))
    write_recipe(w / "pre.toml", "data/shapes", **PRE)
    # plateau cutting the LR, Lookahead around Adam, progressive resizing, the weight average
    write_recipe(w / "mixed.toml", "data/shapes", model=PRE["model"], train={
        **PRE["train"], "epochs": 4, "schedule": "plateau", "plateau_patience": 1,
        "plateau_monitor": "train_loss", "lookahead_k": 2, "progressive": 0.5, "ema": 0.9})
    # from scratch: cosine restarts, fastai's own Lamb + Lookahead, MixUp, early stopping
    write_recipe(w / "scratch.toml", "data/shapes", train={
        "epochs": 7, "schedule": "sgdr", "sgdr_cycles": 0, "sgdr_mult": 1, "opt": "lamb",
        "lookahead_k": 2, "early_stop": 2, "monitor": "accuracy"}, aug={"mixup": 0.4})
    return w


def _cli(*args):
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def refs(work):
    """Reference runs, never stopped, made lazily: refs(recipe) → run folder."""
    made = {}

    def ref(recipe: str) -> Path:
        if recipe not in made:
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(work)
                result = _cli("fit", f"{recipe}.toml", "--deterministic", "--name", f"ref-{recipe}")
            assert result.exit_code == 0, result.output
            made[recipe] = work / "runs" / f"ref-{recipe}"
        return made[recipe]
    return ref


def _stop_mid_epoch(monkeypatch, epoch: int, exc=KeyboardInterrupt):
    """Raise `exc` after the first training batch of `epoch` (counted across phases): the
    checkpoint of epoch-1 is written, `epoch` is half done."""
    from clfapp.models import callbacks
    original = callbacks.ResultsCSV.after_batch

    def after_batch(self):
        original(self)
        if self.training and self.epoch_total == epoch and len(self.steps) == 1:
            raise exc()
    monkeypatch.setattr(callbacks.ResultsCSV, "after_batch", after_batch)


def _rows(run: Path) -> list[list[str]]:
    """results.csv without its seconds column (timings differ)."""
    return [line.split(",")[:-1] for line in (run / "results.csv").read_text().splitlines()]


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("seconds")
    return m


def assert_same_run(run: Path, ref: Path) -> None:
    """Same epochs and figures, same weights bit for bit, same per-step LR/momentum/loss, the
    same files, and no checkpoint left."""
    assert _rows(run) == _rows(ref)
    assert _metrics(run) == _metrics(ref)
    assert (run / "model" / "weights.safetensors").read_bytes() == \
        (ref / "model" / "weights.safetensors").read_bytes()
    assert (run / "steps.csv").read_text() == (ref / "steps.csv").read_text()
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert not (run / "checkpoint.safetensors").exists()


def _header(run: Path) -> dict:
    from clfapp.train import checkpoint
    return checkpoint.read(run / checkpoint.FILE)[0]


# ---- a SIGKILL in the middle of an epoch ----------------------------------------------------

KILLABLE = """
import sys, time
from pathlib import Path
from clfapp.models import callbacks
original = callbacks.ResultsCSV.after_batch
def after_batch(self):  # an epoch made long: the test kills the process during it
    original(self)
    if self.training and self.epoch_total == {epoch} and len(self.steps) == 1:
        Path("mid-epoch").write_text(str(self.epoch_total))
        time.sleep(120)
callbacks.ResultsCSV.after_batch = after_batch
from clfapp.cli.main import app
sys.argv = ["clfapp", "fit", "pre.toml", "--deterministic", "--name", "killed"]
app()
"""


@pytest.mark.slow  # kills a run mid-epoch: timing-sensitive
def test_sigkill_mid_epoch_then_resume_ends_as_an_uninterrupted_run(work, refs, monkeypatch):
    monkeypatch.chdir(work)
    kill_in = 3   # the second epoch of the unfrozen phase: resumes inside a one-cycle
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "app"))
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE.format(epoch=kill_in)], cwd=work,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (work / "mid-epoch").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the run never reached epoch 3"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    run = work / "runs" / "killed"
    assert not (run / "metrics.json").exists() and not (run / "model").exists()
    header = _header(run)   # the last whole checkpoint: epochs 0-2, inside the one-cycle
    assert header["epochs_done"] == kill_in and header["mid_fit"] and not header["training_done"]
    assert len(_rows(run)) == 1 + kill_in

    result = _cli("fit", "--resume", "killed")
    assert result.exit_code == 0, result.output
    assert f"resuming runs/killed after epoch {kill_in - 1} ({kill_in} of 5 epochs done" in result.output
    assert_same_run(run, refs("pre"))
    assert len(_rows(run)) == 1 + 5


# ---- Ctrl-C at every kind of place, then --resume ---------------------------------------------

@pytest.mark.parametrize("epoch", [1, 2], ids=["in-frozen-phase", "at-phase-change"])
def test_ctrl_c_keeps_the_run_resumable(work, refs, monkeypatch, epoch):
    monkeypatch.chdir(work)
    name = f"cut-{epoch}"
    with monkeypatch.context() as mp:
        _stop_mid_epoch(mp, epoch)
        result = _cli("fit", "pre.toml", "--deterministic", "--name", name)
    assert result.exit_code == 130, result.output
    run = work / "runs" / name
    assert json.loads((run / "metrics.json").read_text())["stopped"] == "interrupted"
    assert _header(run)["epochs_done"] == epoch
    result = _cli("fit", "--resume", run)
    assert result.exit_code == 0, result.output
    assert_same_run(run, refs("pre"))


@pytest.mark.parametrize("recipe,epoch", [("mixed", 3), ("scratch", 2)])
def test_resume_restores_every_callbacks_state(work, refs, monkeypatch, recipe, epoch):
    """plateau's LR cuts, Lookahead's slow weights, progressive resizing's phase, the weight
    average; sgdr's position, fastai's own optimizer, MixUp's draws, early stopping's counter
    (the scratch run stops early, after 2 epochs without a better accuracy: the resumed one,
    which waited one of them before the stop, stops at the same epoch)."""
    ref = refs(recipe)
    if recipe == "scratch":
        assert len(_rows(ref)) < 1 + 7, "early stopping did not fire: this case tests nothing of it"
    monkeypatch.chdir(work)
    with monkeypatch.context() as mp:
        _stop_mid_epoch(mp, epoch, exc=lambda: OSError(5, "simulated I/O error"))
        result = _cli("fit", f"{recipe}.toml", "--deterministic", "--name", f"cb-{recipe}")
    assert result.exit_code == 1   # an error: the best epoch is saved, the checkpoint kept
    run = work / "runs" / f"cb-{recipe}"
    assert (run / "checkpoint.safetensors").exists()
    result = _cli("fit", "--resume", run)
    assert result.exit_code == 0, result.output
    assert_same_run(run, ref)


def test_killed_while_writing_its_end_only_redoes_the_end(work, refs, monkeypatch):
    from clfapp import train
    monkeypatch.chdir(work)
    with monkeypatch.context() as mp:
        def dies(*args, **kwargs):
            raise SystemExit(137)   # as a kill after training, before model/ and metrics.json
        mp.setattr(train, "_finish", dies)
        _cli("fit", "pre.toml", "--deterministic", "--name", "end")
    run = work / "runs" / "end"
    assert _header(run)["epochs_done"] == 5 and not (run / "model").exists()
    (run / "checkpoint.safetensors.tmp").write_bytes(b"half a checkpoint")   # a kill mid-write
    result = _cli("fit", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "its training had ended (5 epochs)" in result.output
    assert "train_loss" not in result.output   # no epoch trained again
    assert_same_run(run, refs("pre"))


# ---- what --resume refuses or says ----------------------------------------------------------

@pytest.fixture
def stopped_run(tmp_path, monkeypatch):
    """A run of its own data, stopped by Ctrl-C in its third epoch: (work folder, run)."""
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=8)
    write_recipe(tmp_path / "tiny.toml", "data/shapes", train={"epochs": 4})
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as mp:
        _stop_mid_epoch(mp, 2)
        assert _cli("fit", "tiny.toml", "--name", "s").exit_code == 130
    return tmp_path, tmp_path / "runs" / "s"


def _snapshot(run: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def test_refuses_a_changed_config_or_data_and_says_what_changed(stopped_run):
    """Each change is refused in one line naming it, leaves the run folder untouched, and once
    undone the run resumes (and a second --resume says it has finished)."""
    work, run = stopped_run
    shapes = work / "data" / "shapes"

    def refused(*said):
        before = _snapshot(run)
        assert_usage_error(_cli("fit", "--resume", run), *said)
        assert _snapshot(run) == before, "a refused resume changed the run folder"

    config_text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(config_text.replace("epochs = 4", "epochs = 6"))
    refused("config of", "train.epochs 4 → 6", "undo the change")
    (run / "config.toml").write_text(config_text)

    new = make_image(shapes / "red" / "red_new.png", (220, 30, 30), 24, seed=999)
    refused("data of", "1 image(s) were added, e.g.", "red_new.png")
    new.unlink()

    gone = shapes / "green" / "green_03.png"
    kept = gone.read_bytes()
    gone.unlink()
    refused("data of", "1 image(s) are gone, e.g.", "green_03.png")
    shutil.move(shapes / "blue" / "blue_02.png", shapes / "red" / "blue_02.png")   # relabelled
    gone.write_bytes(kept)
    refused("data of", "1 image(s) are gone, e.g.", "blue/blue_02.png")
    shutil.move(shapes / "red" / "blue_02.png", shapes / "blue" / "blue_02.png")

    edited = shapes / "blue" / "blue_01.png"
    kept = edited.read_bytes()
    img = Image.open(edited).convert("RGB")
    img.putpixel((5, 5), (0, 0, 0))
    img.save(edited)
    refused("data of", "1 image(s) have other contents, e.g.", "blue_01.png")
    edited.write_bytes(kept)

    # a checkpoint of an earlier clfapp, whose optimizer state was torch's (param_groups)
    from clfapp.train import checkpoint
    kept = (run / checkpoint.FILE).read_bytes()
    header, tensors = checkpoint.read(run / checkpoint.FILE)
    header["optimizer"] = checkpoint.pack({"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
                                          tensors)
    checkpoint.write(run / checkpoint.FILE, header, tensors)
    refused("checkpointed by an earlier clfapp", "start the run again")
    (run / checkpoint.FILE).write_bytes(kept)

    # unreadable images are left out when a run starts: one more of them changes nothing
    (shapes / "red" / "broken.png").write_bytes(b"not an image")
    result = _cli("fit", "--resume", run)
    assert result.exit_code == 0, result.output
    result = _cli("fit", "--resume", run)
    assert result.exit_code == 0
    assert "has finished: best epoch" in result.output and "nothing to resume" in result.output


def test_resume_takes_no_other_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(_cli("fit", "tiny.toml", "--resume", "some-run", "--epochs", "9"),
                       "--resume continues some-run", "drop RECIPE, --epochs")


def test_a_damaged_or_foreign_checkpoint_is_one_line(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    import torch

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": trunc")
    assert_usage_error(_cli("fit", "--resume", "r"), "not a readable clfapp checkpoint")
    save_file({"w": torch.zeros(2)}, str(run / "checkpoint.safetensors"))   # not clfapp's
    assert_usage_error(_cli("fit", "--resume", "r"), "not a readable clfapp checkpoint")


def test_nothing_to_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(_cli("fit", "--resume", "nope"), "run nope not found")
    (tmp_path / "runs" / "early").mkdir(parents=True)
    (tmp_path / "runs" / "early" / "config.toml").write_text("")
    assert_usage_error(_cli("fit", "--resume", "early"), "stopped before its first epoch ended")


def test_a_run_still_training_is_not_resumed(tmp_path, monkeypatch):
    """The process training a run holds its lock: --resume of it is refused meanwhile, and
    goes ahead once that process is gone (here, to find the checkpoint unreadable)."""
    from clfapp.train import checkpoint
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "busy"
    run.mkdir(parents=True)
    (run / checkpoint.FILE).write_bytes(b"")
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run / checkpoint.LOCK)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_usage_error(_cli("fit", "--resume", "busy"), "being trained by another clfapp process")
    finally:
        holder.kill()
        holder.wait()
    assert_usage_error(_cli("fit", "--resume", "busy"), "not a readable clfapp checkpoint")


def test_the_optimizer_state_is_loaded_onto_the_models_device():
    """The checkpoint holds CPU tensors and fastai's load_state_dict keeps them where they are
    (torch's moved them): a resumed CUDA run would step with CPU moments. Checked here with
    the meta device; types and non-tensor entries are kept."""
    import torch
    from fastcore.foundation import L

    from clfapp.train.checkpoint import on_device
    t = torch.ones(2)
    state = {"state": [{"grad_avg": t, "step": 3, "do_wd": False}], "hypers": L([{"lr": 1e-3}]),
             "count": 1, "slow_weights": L([L([t])]), "pair": (t, 1)}
    moved = on_device(state, "meta")
    assert moved["state"][0]["grad_avg"].is_meta and moved["state"][0]["step"] == 3
    assert moved["state"][0]["do_wd"] is False and moved["count"] == 1
    assert isinstance(moved["hypers"], L) and moved["hypers"][0] == {"lr": 1e-3}
    assert isinstance(moved["slow_weights"], L) and isinstance(moved["slow_weights"][0], L)
    assert moved["slow_weights"][0][0].is_meta
    assert isinstance(moved["pair"], tuple) and moved["pair"][0].is_meta and moved["pair"][1] == 1
