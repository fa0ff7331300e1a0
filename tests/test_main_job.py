"""The README's main job: `clfapp fit digits` on the embedded data, offline."""
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clfapp.cli.main import app

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # trains the README's main job to its accuracy (about 35 s)
def test_fit_digits_recipe_reaches_097(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["fit", "digits"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "data" / "digits").rglob("*.png"))) == 1797
    run = tmp_path / "runs" / "digits-1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.97
    for name in ("config.toml", "splits.csv", "results.csv", "report.md",
                 "model/weights.safetensors", "model/model.json",
                 "plots/curves.png", "plots/confusion_matrix.png"):
        assert (run / name).is_file(), name
