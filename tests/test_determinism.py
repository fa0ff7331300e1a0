"""--seed and --deterministic (train/reproducible.py): two runs with the same seed give the same
run bit for bit on a CPU; another seed changes training but not the split; the seed and the
library versions are recorded in metrics.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_folder_dataset, write_recipe

SCRIPT = Path(sys.executable).parent / "clfapp"
BASE = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "clfapp"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("determinism")
    make_folder_dataset(w / "data" / "shapes", n_per_class=10)
    # augmentation on (fastai's defaults: flips, rotation, zoom, lighting, warp) and MixUp:
    # every random draw training makes is in play, and the batch order is shuffled
    write_recipe(w / "tiny.toml", "data/shapes", train={"epochs": 2}, aug={"mixup": 0.4})
    return w


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("seconds")
    return m


def _rows(run: Path) -> list[list[str]]:
    return [line.split(",")[:-1] for line in (run / "results.csv").read_text().splitlines()]


@pytest.mark.slow  # two training processes side by side
def test_two_deterministic_runs_are_identical(work):
    """Two processes (two commands, run side by side): the same metrics.json (minus its
    timing), epoch rows, per-step losses and weights, bit for bit."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen(BASE + ["fit", "tiny.toml", "--seed", "7", "--deterministic",
                                      "--name", name], cwd=work, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name in ("one", "two")]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    one, two = work / "runs" / "one", work / "runs" / "two"
    assert _metrics(one) == _metrics(two)
    assert _rows(one) == _rows(two)
    assert (one / "steps.csv").read_text() == (two / "steps.csv").read_text()
    assert (one / "model" / "weights.safetensors").read_bytes() == \
        (two / "model" / "weights.safetensors").read_bytes()
    rec = _metrics(one)["reproducibility"]
    assert rec["seed"] == 7 and rec["deterministic"] is True
    assert rec["threads"] == int(env.get("OMP_NUM_THREADS", rec["threads"]))
    assert set(rec["versions"]) >= {"python", "clfapp", "torch", "torchvision", "timm", "fastai",
                                    "numpy"}


def test_another_seed_trains_differently_on_the_same_split(work, cli, monkeypatch):
    import torch

    monkeypatch.chdir(work)
    for name, seed in (("s1", "1"), ("s2", "2")):
        result = cli("fit", "tiny.toml", "--seed", seed, "--deterministic", "--name", name)
        assert result.exit_code == 0, result.output
        assert torch.are_deterministic_algorithms_enabled()
    s1, s2 = work / "runs" / "s1", work / "runs" / "s2"
    assert (s1 / "splits.csv").read_text() == (s2 / "splits.csv").read_text()
    assert _rows(s1) != _rows(s2)   # initial weights, augmentation, batch order all differ
    assert (s1 / "model" / "weights.safetensors").read_bytes() != \
        (s2 / "model" / "weights.safetensors").read_bytes()
    assert "deterministic = true" in (s1 / "config.toml").read_text()


def test_a_fit_without_the_flag_turns_deterministic_mode_off_again():
    """One process may run several fits (tune, tests): each sets torch's mode as it asks."""
    import torch

    from clfapp.config import TrainConfig
    from clfapp.train import reproducible
    reproducible.seed(TrainConfig(deterministic=True))
    assert torch.are_deterministic_algorithms_enabled()
    reproducible.seed(TrainConfig())
    assert not torch.are_deterministic_algorithms_enabled()
