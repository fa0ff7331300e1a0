"""Test-time augmentation inside the exported ONNX graph: an export follows the model's inference
spec (model.json / ensemble.json `inference.tta`), so model.onnx alone gives clfapp's
probabilities; `export --no-tta` gives the plain model; predict --backend onnx runs the graph
as exported and refuses the other TTA with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import COLOURS, assert_usage_error, make_folder_dataset, make_tiny_bundle

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = 24
EXACT = 1e-5
DIHEDRAL = ["horizontal", "vertical"]   # read as the 3 mirrors (transpose added): 8 views


def _bundle(folder: Path, tta_flips, tta: bool, size: int = SIZE, seed: int = 0) -> Path:
    """An untrained tiny model saved as a run folder whose inference spec runs TTA or not."""
    return make_tiny_bundle(folder, seed=seed, size=size, tta_flips=tta_flips, tta=tta)


def _splits(run: Path, data: Path) -> None:
    rows = ["path,label,split,root"] + [f"{p.relative_to(data)},{p.parent.name},valid,{data}"
                                        for p in sorted(data.rglob("*.png"))]
    (run / "splits.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # not square: resizing differs by method, and no image equals its mirrors
    return make_folder_dataset(tmp_path_factory.mktemp("tta-data") / "shapes", n_per_class=3,
                               size=(30, 20))


def _paths(data: Path) -> list[str]:
    return [str(p) for p in sorted(data.rglob("*.png"))]


def _run(tmp_path: Path, data: Path, flips, tta: bool, name: str = "run", **kw) -> Path:
    run = _bundle(tmp_path / name, flips, tta, **kw)
    _splits(run, data)
    return run


@pytest.mark.parametrize("flips, n_views", [(["horizontal"], 2), (DIHEDRAL, 8)])
def test_a_tta_models_graph_averages_its_views_as_clfapp_does(tmp_path, data, cli, flips, n_views):
    from clfapp.infer import spec
    from clfapp.infer.onnx_predict import OnnxPredictor
    from clfapp.infer.predict import Predictor
    run = _run(tmp_path, data, flips, tta=True)
    r = cli("export", run)
    assert r.exit_code == 0, r.output
    assert f"inside the graph, the mean over {n_views} views" in r.output
    folder = run / "export-1"
    paths = _paths(data)
    want, _ = Predictor(run).probabilities(paths)              # the spec: TTA on
    got, kept = OnnxPredictor(run).probabilities(paths)        # the graph as it is
    assert len(kept) == len(paths)
    np.testing.assert_allclose(got, want, rtol=0, atol=EXACT)
    plain, _ = Predictor(run).probabilities(paths, tta=False)
    assert np.abs(plain - want).max() > 1e-4                   # the views really matter

    # a consumer with ONNX Runtime alone, on clfapp's pixels, gets the same
    from clfapp.data import images
    px = np.stack([images.read_image(p, SIZE, "squish") for p in paths])
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    alone = sess.run(None, {"image": px.transpose(0, 3, 1, 2).astype(np.float32) / 255})[0]
    np.testing.assert_allclose(alone, want, rtol=0, atol=EXACT)

    # onnx.json says so: the spec, the views, the steps inside the graph; parity ran with TTA
    info = json.loads((folder / "onnx.json").read_text())
    model_spec = json.loads((run / "model" / "model.json").read_text())["inference"]
    assert info["inference"] == model_spec and info["inference"]["tta"] is True
    assert info["tta"] == {"inside_graph": True, "set_by": "the inference spec", "spec_tta": True}
    assert len(info["members"][0]["views"]) == n_views and info["members"][0]["views"][0] == "image"
    line = next(s for s in info["preprocessing"]["inside_graph"] if s.startswith("test-time"))
    assert f"the mean over {n_views} views (image, horizontal" in line
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] < EXACT
    assert info["parity"]["images"].startswith(f"{len(paths)} validation images")
    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(props["clfapp"])["inference"] == info["inference"]
    assert json.loads(props["inference"]) == info["inference"]
    # read back: the predictor's spec is the export's, and measures as the PyTorch model does
    p = OnnxPredictor(folder)
    assert p.spec == spec.InferenceSpec.from_dict(model_spec, "model.json") and not p.spec.inferred
    assert spec.conditions(p) == spec.conditions(Predictor(run)) == \
        {"size": SIZE, "resize": "squish", "views": n_views, "precision": "fp32"}


def test_export_no_tta_gives_the_plain_model_and_says_so(tmp_path, data, cli):
    from clfapp.infer.onnx_predict import OnnxPredictor
    from clfapp.infer.predict import Predictor
    run = _run(tmp_path, data, ["horizontal"], tta=True)
    r = cli("export", run, "--no-tta")
    assert r.exit_code == 0, r.output
    assert "none in the graph (--no-tta)" in r.output and "averages 2 views" in r.output
    info = json.loads((run / "export-1" / "onnx.json").read_text())
    assert info["inference"]["tta"] is False and info["members"][0]["views"] == ["image"]
    assert info["tta"] == {"inside_graph": False, "set_by": "--no-tta", "spec_tta": True}
    assert any(s.startswith("test-time augmentation: none") for s in info["preprocessing"]["inside_graph"])
    paths = _paths(data)
    got, _ = OnnxPredictor(run).probabilities(paths)
    want, _ = Predictor(run).probabilities(paths, tta=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=EXACT)
    # and --tta puts TTA in a graph whose model's spec runs without it
    off = _run(tmp_path, data, ["horizontal"], tta=False, name="off")
    r = cli("export", off, "--tta")
    assert r.exit_code == 0, r.output
    assert "inside the graph, the mean over 2 views (--tta)" in r.output
    got, _ = OnnxPredictor(off).probabilities(paths)
    want, _ = Predictor(off).probabilities(paths, tta=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=EXACT)


def test_predict_onnx_runs_the_graphs_tta_and_refuses_the_other(tmp_path, data, cli):
    import pandas as pd
    run = _run(tmp_path, data, ["horizontal"], tta=True)
    assert cli("export", run).exit_code == 0                  # export-1: TTA inside
    assert cli("export", run, "--no-tta").exit_code == 0      # export-2: the plain model
    # the views call the same weights: stored once, not once per view
    sizes = [(run / f"export-{i}" / "model.onnx").stat().st_size for i in (1, 2)]
    assert sizes[0] < 1.2 * sizes[1]
    torch_csv = tmp_path / "t.csv"
    assert cli("predict", run, data, "--out", torch_csv).exit_code == 0
    want = pd.read_csv(torch_csv)
    for flag in ([], ["--tta"]):
        out = tmp_path / f"o{len(flag)}.csv"
        r = cli("predict", run / "export-1", data, "--backend", "onnx", "--out", out, *flag)
        assert r.exit_code == 0, r.output
        got = pd.read_csv(out)
        assert (got["label"] == want["label"]).all()
        assert np.abs(got["probability"] - want["probability"]).max() < EXACT
    line = assert_usage_error(cli("predict", run / "export-1", data, "--backend", "onnx", "--no-tta",
                                  "--out", tmp_path / "x.csv"), "--no-tta", "export again")
    assert f"clfapp export {run} --no-tta" in line
    line = assert_usage_error(cli("predict", run / "export-2", data, "--backend", "onnx", "--tta",
                                  "--out", tmp_path / "y.csv"), "--tta", "export again")
    assert f"clfapp export {run} --tta" in line
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()
    # the plain export without a flag, or --no-tta, runs (and differs from the TTA model)
    r = cli("predict", run / "export-2", data, "--backend", "onnx", "--no-tta", "--out", tmp_path / "z.csv")
    assert r.exit_code == 0, r.output
    assert np.abs(pd.read_csv(tmp_path / "z.csv")["probability"] - want["probability"]).max() > 1e-4


def test_an_ensemble_with_tta_exports_each_members_own_views(tmp_path, data, cli):
    from clfapp.infer import ensemble_meta, spec
    from clfapp.infer.ensemble import EnsemblePredictor
    from clfapp.infer.onnx_predict import OnnxPredictor
    a = _bundle(tmp_path / "a", ["horizontal"], tta=True)
    b = _bundle(tmp_path / "b", DIHEDRAL, tta=True, size=32, seed=1)
    ens = tmp_path / "ens"
    for name, run in (("h", a), ("d", b)):
        shutil.copytree(run / "model", ens / "members" / name / "model")
    ensemble_meta.write_meta(ens, ensemble_meta.EnsembleMeta(
        vote="soft", weights=[0.4, 0.6], members=["h", "d"], classes=sorted(COLOURS),
        inference=spec.InferenceSpec(tta=True)))
    _splits(ens, data)
    r = cli("export", ens)
    assert r.exit_code == 0, r.output
    assert "the mean over 2/8 views" in r.output
    info = json.loads((ens / "export-1" / "onnx.json").read_text())
    assert [len(m["views"]) for m in info["members"]] == [2, 8]
    assert info["inference"]["tta"] is True and info["parity"]["max_abs_diff"] < EXACT
    paths = _paths(data)
    torch_side = EnsemblePredictor(ens)
    want, _ = torch_side.probabilities(paths)
    got, _ = OnnxPredictor(ens).probabilities(paths)
    np.testing.assert_allclose(got, want, rtol=0, atol=EXACT)
    plain, _ = torch_side.probabilities(paths, tta=False)
    assert np.abs(plain - want).max() > 1e-4
    # measured under the same conditions as the PyTorch ensemble (thresholds' `under`)
    assert spec.conditions(OnnxPredictor(ens)) == spec.conditions(torch_side)
    assert_usage_error(cli("predict", ens, data, "--backend", "onnx", "--no-tta",
                           "--out", tmp_path / "e.csv"), "--no-tta", "export again")


def test_an_export_without_the_inference_spec_still_loads_as_inferred(tmp_path, data):
    """onnx.json from before `inference` (format 1 still): read with an inferred spec, no TTA."""
    from clfapp.infer import export as ex
    from clfapp.infer.onnx_predict import OnnxPredictor
    run = _run(tmp_path, data, ["horizontal"], tta=False)
    folder, _ = ex.export(run)
    assert OnnxPredictor(folder).spec.inferred is False
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    dropped = ("inference", "tta")

    def older(facts):
        for k in dropped:
            del facts[k]
        for m in facts["members"]:
            del m["tta_flips"], m["views"]
        return facts
    info = older(json.loads((old / "onnx.json").read_text()))
    (old / "onnx.json").write_text(json.dumps(info))
    model = onnx.load(str(old / "model.onnx"))
    for p in model.metadata_props:
        if p.key == "clfapp":
            p.value = json.dumps(older(json.loads(p.value)), sort_keys=True)
    onnx.save(model, str(old / "model.onnx"))
    assert info["format"] == 1
    p = OnnxPredictor(old)
    assert p.spec.inferred and p.spec.tta is False and p.spec.size == SIZE
    got, kept = p.probabilities(_paths(data))
    want, _ = OnnxPredictor(folder).probabilities(_paths(data))
    assert len(kept) == len(_paths(data)) and np.array_equal(got, want)
    with pytest.raises(Exception, match="--tta"):
        p.probabilities(_paths(data), tta=True)   # its model had mirrors, the graph has none
