"""`clfapp runs`: the table of finished runs, --sort, unfinished folders skipped with a note,
--compare's side-by-side page."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_usage_error


def fake_run(root: Path, name: str, accuracy: float, seconds: float, epochs: int, arch: str = "resnet18",
             lr: float = 1e-3, hidden: int = 10) -> Path:
    """A finished run folder as fit leaves it, with made-up figures (no training)."""
    from safetensors.numpy import save_file
    f = root / name
    (f / "model").mkdir(parents=True)
    (f / "config.toml").write_text(f'recipe = "{name.split("-")[0]}"\n\n[data]\nsize = 64\n\n'
                                   f'[model]\narch = "{arch}"\n\n[train]\nlr = {lr}\nepochs = {epochs}\n')
    (f / "metrics.json").write_text(json.dumps({
        "n": 10, "accuracy": accuracy, "f1_macro": accuracy - 0.05, "seconds": seconds,
        "split": "valid", "per_class": {}, "confusion_matrix": [[1]]}))
    rows = ["epoch,phase,train_loss,valid_loss,accuracy,f1_macro,lr,seconds"]
    rows += [f"{e},full,{1 / (e + 1):.3f},{1.2 / (e + 1):.3f},{accuracy * (e + 1) / epochs:.3f},0.5,{lr},1.0"
             for e in range(epochs)]
    (f / "results.csv").write_text("\n".join(rows) + "\n")
    steps = ["step,epoch,lr,mom,smooth_loss"] + [f"{s},{s // 3},{lr * (s + 1)},0.9,1.0" for s in range(3 * epochs)]
    (f / "steps.csv").write_text("\n".join(steps) + "\n")
    save_file({"0.weight": np.zeros((hidden, 3), np.float32), "0.bias": np.zeros(hidden, np.float32),
               "1.running_mean": np.zeros(1000, np.float32)}, str(f / "model" / "weights.safetensors"))
    return f


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    fake_run(root, "plants-1", 0.70, 300.0, 2, hidden=10)
    fake_run(root, "plants-2", 0.90, 100.0, 4, lr=3e-3, hidden=1000)
    fake_run(root, "wood-1", 0.80, 200.0, 3, arch="densenet121", hidden=100)
    (root / "wood-2").mkdir()                                  # fit still running: config only
    (root / "wood-2" / "config.toml").write_text('recipe = "wood"\n')
    (root / "compare-1").mkdir()                               # a comparison, not a run
    (root / "compare-1" / "comparison.csv").write_text("model\n")
    return root


def table(output: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("run "))
    body = []
    for ln in lines[start + 2:]:
        if not ln.strip() or ln.startswith(("skipped", "written")):
            break
        body.append(ln.split())
    return [lines[start].split(), *body]


def test_the_table_lists_finished_runs_and_notes_the_unfinished(cli, runs_dir):
    r = cli("runs")
    assert r.exit_code == 0, r.output
    head, *rows = table(r.output)
    assert head[:11] == ["run", "recipe", "arch", "size", "epochs", "metric", "best", "on", "seconds",
                         "date", "params_m"]
    by_name = {row[0]: dict(zip(head, row[:3] + row[3:9] + [" ".join(row[9:11])] + row[11:])) for row in rows}
    assert set(by_name) == {"plants-1", "plants-2", "wood-1"}
    p2 = by_name["plants-2"]
    assert (p2["recipe"], p2["arch"], p2["size"], p2["epochs"]) == ("plants", "resnet18", "64", "4")
    assert (p2["metric"], p2["best"], p2["on"], p2["seconds"]) == ("accuracy", "0.9000", "valid", "100.0")
    # parameters from the safetensors header, BatchNorm statistics left out: 1000 x 3 + 1000
    assert p2["params_m"] == "0.00" and by_name["wood-1"]["params_m"] == "0.00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", p2["date"])
    note = [ln for ln in r.output.splitlines() if ln.startswith("skipped")]
    assert len(note) == 1 and "wood-2" in note[0] and "unfinished" in note[0]
    assert "compare-1" not in r.output


def test_parameter_count_reads_the_safetensors_header(runs_dir):
    from clfapp.report import history
    assert history.parameters(runs_dir / "plants-2" / "model" / "weights.safetensors") == 1000 * 3 + 1000
    assert history.parameters(runs_dir / "plants-1" / "model" / "weights.safetensors") == 10 * 3 + 10


@pytest.mark.parametrize("key, order", [
    ("accuracy", ["plants-2", "wood-1", "plants-1"]),     # figures: best first
    ("best", ["plants-2", "wood-1", "plants-1"]),
    ("seconds", ["plants-2", "wood-1", "plants-1"]),      # seconds: fastest first
    ("epochs", ["plants-1", "wood-1", "plants-2"]),
    ("f1_macro", ["plants-2", "wood-1", "plants-1"]),
])
def test_sort(cli, runs_dir, key, order):
    r = cli("runs", "--sort", key)
    assert r.exit_code == 0, r.output
    assert [row[0] for row in table(r.output)[1:]] == order


def test_an_unknown_sort_key_is_one_line_with_suggestions(cli, runs_dir):
    assert_usage_error(cli("runs", "--sort", "acuracy"), "acuracy", "did you mean accuracy")


def test_no_runs_folder_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("runs"), "runs does not exist")


def test_compare_writes_curves_and_a_self_contained_page(cli, runs_dir):
    r = cli("runs", "--compare", "plants-1", "plants-2")
    assert r.exit_code == 0, r.output
    out = runs_dir / "compare-runs-1"
    assert f"written to {Path('runs') / 'compare-runs-1' / 'report.html'}" in r.output
    for name in ("curves.png", "report.html", "report.md", "runs.csv"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["table", "curves", "config-diff"]
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))).verify()
    diff = re.search(r'<section id="config-diff">(.*?)</section>', page, re.S).group(1)
    assert "train.lr" in diff and "train.epochs" in diff and "model.arch" not in diff
    assert [row[0] for row in table(r.output)[1:]] == ["plants-1", "plants-2"]
    assert not list(out.glob("*.tmp"))
    # a second comparison gets its own folder; the first stays
    assert cli("runs", "--compare", "plants-1", "wood-1").exit_code == 0
    assert (runs_dir / "compare-runs-2" / "report.html").is_file() and (out / "report.html").is_file()


def test_compare_refuses_unfinished_and_lone_runs(cli, runs_dir):
    r = cli("runs", "--compare", "plants-1", "wood-2")
    assert r.exit_code == 2 and "wood-2" in r.output and "finished runs only" in r.stderr
    assert_usage_error(cli("runs", "--compare", "plants-1"), "at least two runs")
    assert_usage_error(cli("runs", "--compare"), "needs the runs to compare")
    assert_usage_error(cli("runs", "--compare", "plants-1", "nope"), "nope not found")
    assert not list(runs_dir.glob("compare-runs-*"))


def test_a_real_run_and_its_ensemble_are_listed(cli, trained_run, monkeypatch, tmp_path):
    import shutil
    work, folder = trained_run
    shutil.copytree(work, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    shutil.copytree(Path("runs") / folder.name, Path("runs/second"))
    assert cli("ensemble", folder.name, "second", "--name", "ens").exit_code == 0
    r = cli("runs", "--sort", "accuracy")
    assert r.exit_code == 0, r.output
    head, *rows = table(r.output)
    names = {row[0]: row for row in rows}
    assert set(names) == {folder.name, "second", "ens"}
    assert names[folder.name][1:3] == ["tiny", "test_resnet"]
    assert names["ens"][1:4] == ["ensemble", "2", "members"]
    m = json.loads((Path("runs") / folder.name / "metrics.json").read_text())
    assert names[folder.name][6] == f"{m['accuracy']:.4f}"    # best = the headline accuracy
    r = cli("runs", "--compare", folder.name, "ens")
    assert_usage_error(r, "ensemble has no training curves")
