"""`clfapp --help` is instant: no torch import at CLI start-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "clfapp"
BASE = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "clfapp"]
COMMANDS = [[], ["fit"], ["lr-find"], ["evaluate"], ["predict"], ["embed"], ["recipes"], ["data"],
            ["data", "sample"], ["ensemble"], ["compare"], ["export"], ["distill"], ["thresholds"],
            ["tune"], ["serve"]]


def _run(args, timeout=30):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_is_fast(cmd):
    proc, seconds = _run(BASE + cmd + ["--help"])
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert seconds < 1.5, f"{' '.join(cmd)} --help took {seconds:.2f} s"


def test_main_help_lists_every_command():
    proc, _ = _run(BASE + ["--help"])
    for name in ("fit", "lr-find", "evaluate", "predict", "recipes", "data"):
        assert name in proc.stdout, name


def test_module_entry_point_is_the_same_app():
    proc, _ = _run([sys.executable, "-m", "clfapp", "--help"])
    assert proc.returncode == 0 and "lr-find" in proc.stdout


def test_cli_import_does_not_import_torch():
    code = ("import clfapp.cli.main, sys; "
            "heavy = [m for m in ('torch', 'fastai', 'timm', 'torchvision', 'pandas', 'sklearn') "
            "if m in sys.modules]; assert not heavy, heavy")
    proc, _ = _run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, said", [
    (["evaluate", "runs/x", "--bs", "abc"], "error: Invalid value for '--bs'"),
    (["predict", "runs/x", "photos", "--threshold", "high"], "error: Invalid value for '--threshold'"),
    (["fit", "--epochs", "inf"], "error: Invalid value for '--epochs'"),
    (["evaluate", "--nope"], "error: No such option: --nope"),
    (["thresholds"], "error: Missing argument"),
    (["nosuch"], "error: No such command 'nosuch'"),
], ids=["bs", "threshold", "epochs", "option", "argument", "command"])
def test_a_command_line_mistake_is_one_line_and_exit_2(args, said):
    """Not a number, an unknown option or a missing argument: one stderr line naming the
    command's --help, exit 2 (it was click's framed box of five lines)."""
    proc, _ = _run(BASE + args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(said), proc.stderr
    assert "--help'" in lines[0] and not proc.stdout


def test_no_command_still_shows_the_help():
    proc, _ = _run(BASE)
    assert proc.returncode == 2 and "Usage:" in proc.stdout and not proc.stderr.strip()
