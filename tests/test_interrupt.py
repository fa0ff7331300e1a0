"""Ctrl-C during fit: exit 130, and the best epoch so far is saved as a usable bundle."""
import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from clfapp.models import callbacks
from clfapp.cli.main import app


def _dataset(root, n=10, size=24):
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = np.clip(np.array(rgb) + rng.integers(-25, 25, (size, size, 3)), 0, 255)
            Image.fromarray(a.astype(np.uint8)).save(root / name / f"{i}.png")


def test_ctrl_c_after_first_epoch_saves_best_and_exits_130(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    _dataset(tmp_path / "colours")
    original = callbacks.ResultsCSV.after_epoch

    def interrupt_after_second_epoch(self):
        original(self)
        if self.epoch_total == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.ResultsCSV, "after_epoch", interrupt_after_second_epoch)
    result = CliRunner().invoke(app, ["fit", "digits", "--data", "colours", "--size", "16",
                                      "--epochs", "5", "--name", "cut"])
    assert result.exit_code == 130, result.output
    run = tmp_path / "runs" / "cut"
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + the two epochs that finished
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["best_epoch"] in (0, 1)
    predicted = CliRunner().invoke(app, ["predict", str(run), "colours"])
    assert predicted.exit_code == 0, predicted.output
