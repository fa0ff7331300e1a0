"""clfapp compare: runs and ensembles side by side on the same items, quality from the same
code as evaluate, parameters and size from the bundles, speed measured."""
from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
from conftest import assert_usage_error, make_folder_dataset, write_recipe


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two tiny runs on one split (different sizes) and a soft ensemble of them."""
    from typer.testing import CliRunner

    from clfapp.cli.main import app

    root = tmp_path_factory.mktemp("compare")
    make_folder_dataset(root / "data" / "shapes", n_per_class=10)
    write_recipe(root / "tiny.toml", "data/shapes", train={"epochs": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        runner = CliRunner()
        for args in (["--name", "a"], ["--name", "b", "--size", "40", "--seed", "3"]):
            r = runner.invoke(app, ["fit", "tiny.toml", *args])
            assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["ensemble", "runs/a", "runs/b", "--name", "ab"])
        assert r.exit_code == 0, r.output
    return root


def _table(result) -> pd.DataFrame:
    m = re.search(r"written to (\S+comparison\.csv)", result.output)
    assert m, result.output
    return pd.read_csv(m.group(1))


def test_compare_runs_and_an_ensemble(cli, work, monkeypatch):
    from clfapp.infer import bundle

    monkeypatch.chdir(work)
    result = cli("compare", "runs/a", "runs/b", "runs/ab", "--repeats", "3", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "1 thread(s), fp32" in result.output
    df = _table(result).set_index("model")
    assert list(df.index) == ["a", "b", "ab"] and list(df["kind"]) == ["run", "run", "ensemble"]

    # quality: the same figures `clfapp evaluate` gives on the first run's validation split
    for name in ("a", "b"):
        ev = json.loads((work / "runs" / name / "metrics.json").read_text())
        assert df.loc[name, "accuracy"] == pytest.approx(ev["accuracy"], abs=1e-9), name
        assert df.loc[name, "n"] == ev["n"]
    # size: parameters and bytes of the bundles; the ensemble is the sum of its members
    for name in ("a", "b"):
        model, _ = bundle.load(work / "runs" / name)
        assert df.loc[name, "parameters_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
        size = (work / "runs" / name / "model" / "weights.safetensors").stat().st_size
        assert df.loc[name, "size_mb"] == pytest.approx(size / 1e6)
    assert df.loc["ab", "parameters_m"] == pytest.approx(df.loc["a", "parameters_m"] + df.loc["b", "parameters_m"])
    # speed: measured, and the ensemble (two forward passes) is not faster than its members
    assert (df["latency_ms_bs1"] > 0).all() and (df["images_per_s_bs32"] > 0).all()
    assert df.loc["ab", "latency_ms_bs1"] > min(df.loc["a", "latency_ms_bs1"], df.loc["b", "latency_ms_bs1"])
    assert df["latency_vs_fastest"].min() == pytest.approx(1.0)
    md = next((work / "runs").glob("compare-*")) / "comparison.md"
    assert md.read_text().startswith("# Model comparison")


def test_compare_refuses_models_of_different_tasks(cli, work, monkeypatch, tmp_path):
    monkeypatch.chdir(work)
    other = tmp_path / "other"
    make_folder_dataset(other / "data", n_per_class=6, classes=["cat", "dog"])
    write_recipe(other / "two.toml", str(other / "data"))
    fit = cli("fit", other / "two.toml", "--name", "two-classes")
    assert fit.exit_code == 0, fit.output
    result = cli("compare", "runs/a", "runs/two-classes", "--repeats", "1")
    assert_usage_error(result, "same classes")
    shutil.rmtree(work / "runs" / "two-classes")


def test_compare_an_onnx_export_beside_its_run(cli, work, monkeypatch):
    monkeypatch.chdir(work)
    exported = cli("export", "runs/a", "--format", "onnx")
    assert exported.exit_code == 0, exported.output
    export = max((work / "runs" / "a").glob("export-*"))
    result = cli("compare", "runs/a", export, "--repeats", "3", "--threads", "1")
    assert result.exit_code == 0, result.output
    df = _table(result)
    assert list(df["kind"]) == ["run", "onnx"]
    run, onnx = df.iloc[0], df.iloc[1]
    assert onnx["accuracy"] == pytest.approx(run["accuracy"]) and onnx["n"] == run["n"]
    assert onnx["parameters_m"] == pytest.approx(run["parameters_m"], rel=0.02)  # + BN stats
    assert onnx["size_mb"] > 0 and onnx["latency_ms_bs1"] > 0
