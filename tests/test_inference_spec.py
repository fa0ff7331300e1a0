"""One inference contract (issue 24): model.json carries the spec every command runs the model
by, thresholds are searched on the probabilities of the model as shipped, and a command told
to run it otherwise says so."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from clfapp.infer import bundle, spec
from conftest import as_older_model_json, assert_usage_error, make_stripes_multilabel, write_recipe


@pytest.fixture(scope="module")
def tta_multi(tmp_path_factory):
    """A multi-label run trained with horizontal flips and aug.tta on: its spec runs TTA. The
    stripes' labels depend on their left-to-right place, so a mirrored view disagrees and TTA
    moves the probabilities a lot (thresholds searched without it would not fit)."""
    from typer.testing import CliRunner

    from clfapp.cli.main import app

    work = tmp_path_factory.mktemp("spec")
    make_stripes_multilabel(work / "data" / "stripes", n=48)
    write_recipe(work / "m.toml", "data/stripes/labels.csv", data={"labels": "csv:labels.csv"},
                 aug={"flip": True, "tta": True}, train={"epochs": 2})
    import os
    here = os.getcwd()
    os.chdir(work)
    try:
        r = CliRunner().invoke(app, ["fit", "m.toml", "--name", "m"])
    finally:
        os.chdir(here)
    assert r.exit_code == 0, r.output
    return work


def _figure(text: str, name: str) -> float:
    return float(re.search(rf"{name}\S* (\d\.\d+)", text).group(1))


def test_model_json_carries_a_versioned_spec_with_provenance(tta_multi):
    run = tta_multi / "runs" / "m"
    raw = json.loads((run / "model" / "model.json").read_text())
    inf = raw["inference"]
    assert inf["version"] == spec.VERSION and not inf["inferred"]
    assert inf["tta"] is True and inf["tta_flips"] == ["horizontal"] and inf["precision"] == "fp32"
    assert inf["trained_on"] == "train"
    assert inf["split_digest"] == hashlib.sha256((run / "splits.csv").read_bytes()).hexdigest()[:16]
    # the thresholds say what they were searched on: the shipped model's probabilities
    under = inf["thresholds_under"]
    assert under["conditions"] == {"size": inf["size"], "resize": inf["resize"], "views": 2,
                                   "precision": "fp32"}
    assert "validation split" in under["on"]
    for legacy in bundle.LEGACY_KEYS:   # said once, in the spec
        assert legacy not in raw


def test_thresholds_then_evaluate_print_the_same_figure_on_a_tta_model(tta_multi, cli, monkeypatch):
    """Reproduced on b15d7cc: `thresholds` searched on probabilities without TTA and printed
    0.3835, `evaluate` (with the model's TTA) then printed 0.4165."""
    monkeypatch.chdir(tta_multi)
    shutil.copytree("runs/m", "runs/t")
    r = cli("thresholds", "runs/t", "--mode", "per-label")
    assert r.exit_code == 0, r.output
    searched = float(re.search(r"→ (\d\.\d+)", r.output).group(1))
    r = cli("evaluate", "runs/t")
    assert r.exit_code == 0, r.output
    assert "note:" not in r.stderr
    evaluated = json.loads(sorted(Path("runs/t").glob("eval-*/metrics.json"))[-1].read_text())
    assert round(evaluated["f1_micro"], 4) == searched
    assert evaluated["inference"]["as_shipped"] is True
    assert evaluated["inference"]["conditions"]["views"] == 2


def test_evaluate_told_to_differ_says_so_and_records_it(tta_multi, cli, monkeypatch):
    monkeypatch.chdir(tta_multi)
    r = cli("evaluate", "runs/m", "--no-tta")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("note:")]
    assert any("without TTA (--no-tta)" in ln and "not the shipped model's" in ln for ln in lines)
    assert any("thresholds were searched on probabilities made under" in ln for ln in lines)
    out = sorted(Path("runs/m").glob("eval-*"))[-1]
    m = json.loads((out / "metrics.json").read_text())
    assert m["inference"]["as_shipped"] is False and m["inference"]["conditions"]["views"] == 1
    assert "not as shipped" in (out / "report.md").read_text()


def test_compare_measures_the_model_as_shipped(tta_multi, cli, monkeypatch):
    """compare measured without TTA on b15d7cc, so its figure was not evaluate's."""
    monkeypatch.chdir(tta_multi)
    r = cli("evaluate", "runs/m")
    assert r.exit_code == 0, r.output
    evaluated = json.loads(sorted(Path("runs/m").glob("eval-*/metrics.json"))[-1].read_text())
    r = cli("compare", "runs/m", "runs/m", "--name", "cmp", "--repeats", "2")
    assert r.exit_code == 0, r.output
    row = pd.read_csv("runs/cmp/comparison.csv").iloc[0]
    assert row["f1_micro"] == pytest.approx(evaluated["f1_micro"])
    assert row["map"] == pytest.approx(evaluated["map"])   # threshold-free: any TTA change shows
    assert "2 views" in row["run_as"]


def test_an_older_bundle_reads_with_an_inferred_spec(tta_multi, cli, monkeypatch):
    monkeypatch.chdir(tta_multi)
    shutil.copytree("runs/m", "runs/old")
    path = Path("runs/old/model/model.json")
    path.write_text(json.dumps(as_older_model_json(json.loads(path.read_text()), 3)))
    meta = bundle.read_meta(Path("runs/old"))
    assert meta.inference.inferred and meta.inference.chosen_by == "inferred"
    assert meta.inference.tta and meta.inference.thresholds is not None
    assert "inferred" in meta.inference.describe()
    r = cli("evaluate", "runs/old")
    assert r.exit_code == 0, r.output
    m = json.loads(sorted(Path("runs/old").glob("eval-*/metrics.json"))[-1].read_text())
    assert m["inference"]["inferred_spec"] is True


@pytest.mark.parametrize("change, said", [
    ({"version": spec.VERSION + 1}, "upgrade clfapp"),
    ({"precision": "int3"}, "precision must be one of fp32"),
    ({"views_of_the_future": 3}, "unknown key(s) views_of_the_future"),
    ({"tta_flips": ["sideways"]}, "unknown tta_flips"),
])
def test_a_bad_spec_is_one_line(tta_multi, cli, monkeypatch, change, said):
    monkeypatch.chdir(tta_multi)
    name = f"bad-{abs(hash(said)) % 10000}"
    shutil.copytree("runs/m", f"runs/{name}")
    path = Path(f"runs/{name}/model/model.json")
    raw = json.loads(path.read_text())
    raw["inference"].update(change)
    path.write_text(json.dumps(raw))
    assert_usage_error(cli("evaluate", f"runs/{name}"), said)


def test_an_ensemble_of_tta_models_is_measured_and_tuned_as_shipped(tta_multi, cli, monkeypatch):
    """ensemble.json has its own spec: TTA when every member's says so, thresholds searched
    on the ensemble's probabilities under those conditions; evaluate then agrees."""
    monkeypatch.chdir(tta_multi)
    shutil.copytree("runs/m", "runs/m2")
    r = cli("ensemble", "runs/m", "runs/m2", "--name", "ens")
    assert r.exit_code == 0, r.output
    inf = json.loads(Path("runs/ens/ensemble.json").read_text())["inference"]
    assert inf["tta"] is True and inf["size"] == 0 and inf["trained_on"] == "train"
    assert inf["thresholds_under"]["conditions"] == {"members": {
        name: {"size": 32, "resize": "squish", "views": 2, "precision": "fp32"} for name in ("m", "m2")}}
    built = json.loads(Path("runs/ens/metrics.json").read_text())
    r = cli("evaluate", "runs/ens")
    assert r.exit_code == 0, r.output
    assert "note:" not in r.stderr
    evaluated = json.loads(sorted(Path("runs/ens").glob("eval-*/metrics.json"))[-1].read_text())
    assert evaluated["map"] == pytest.approx(built["map"])
    assert evaluated["f1_micro"] == pytest.approx(built["f1_micro"])
