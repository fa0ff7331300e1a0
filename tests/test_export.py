"""`clfapp export RUN --format onnx` and `clfapp predict ... --backend onnx`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from conftest import COLOURS, assert_usage_error, make_folder_dataset, write_recipe

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4


def _fit(work: Path, recipe: Path, name: str) -> Path:
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        r = CliRunner().invoke(app, ["fit", str(recipe), "--name", name])
    assert r.exit_code == 0, r.output
    return work / "runs" / name


def _export(run: Path, *extra):
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    return CliRunner().invoke(app, ["export", str(run), "--format", "onnx", *map(str, extra)])


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """A copy of the tiny trained run (the shared fixture stays untouched), exported once."""
    work, run = trained_run
    copy = tmp_path_factory.mktemp("exp") / "tiny-run"
    shutil.copytree(run, copy)
    r = _export(copy)
    assert r.exit_code == 0, r.output
    return work, copy, copy / "export-1"


def test_export_writes_onnx_with_metadata_and_passes_parity_on_validation_images(exported):
    work, run, folder = exported
    assert (folder / "model.onnx").is_file()
    info = json.loads((folder / "onnx.json").read_text())
    meta = json.loads((run / "model" / "model.json").read_text())
    assert info["classes"] == meta["classes"] == sorted(COLOURS)
    assert info["size"] == meta["size"] and info["resize"] == meta["inference"]["resize"]
    assert info["mean"] == meta["mean"] and info["std"] == meta["std"]
    assert info["multi_label"] is False and info["opset"] == 17
    assert info["inputs"][0]["name"] == "image" and info["output"]["activation"] == "softmax"
    assert {"torch", "onnx", "onnxruntime"} <= set(info["versions"])
    # parity on the run's own validation images, recorded
    n_valid = (pd.read_csv(run / "splits.csv")["split"] == "valid").sum()
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] < TOL
    assert info["parity"]["images"].startswith(f"{n_valid} validation images")
    # the same facts in the ONNX file itself
    model = onnx.load(str(folder / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == info["classes"]
    embedded = json.loads(props["clfapp"])
    assert embedded["thresholds"] is None and embedded["mean"] == meta["mean"]
    assert {k: v for k, v in info.items() if k != "parity"} == embedded


def test_exported_graph_has_a_dynamic_batch_and_normalises_inside(exported):
    import torch

    from clfapp.infer import bundle
    _, run, folder = exported
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    model, meta = bundle.load(run)
    rng = np.random.default_rng(1)
    for n in (1, 5):
        x = rng.random((n, 3, meta.size, meta.size), dtype=np.float32)
        got = sess.run(None, {"image": x})[0]
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (meta.mean, meta.std))
        with torch.no_grad():
            want = model((torch.from_numpy(x) - mean) / std).softmax(1).numpy()
        assert got.shape == (n, 3)
        np.testing.assert_allclose(got, want, atol=TOL)


def test_predict_with_the_onnx_backend_matches_pytorch(exported, cli, tmp_path):
    work, run, _ = exported
    data = work / "data" / "shapes"
    r1 = cli("predict", run, data, "--out", tmp_path / "torch.csv")
    r2 = cli("predict", run, data, "--out", tmp_path / "onnx.csv", "--backend", "onnx")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert list(a.columns) == list(b.columns) and len(a) == 30
    assert (a["path"] == b["path"]).all() and (a["label"] == b["label"]).all()
    assert np.abs(a["probability"] - b["probability"]).max() < TOL
    # the export folder itself works as well, and writes where it is told
    r3 = cli("predict", run / "export-1", data / "red", "--out", tmp_path / "e.csv", "--backend", "onnx")
    assert r3.exit_code == 0, r3.output
    assert len(pd.read_csv(tmp_path / "e.csv")) == 10


def test_onnx_predictor_serves_evaluate_too(exported):
    from clfapp.infer import evaluate as ev
    from clfapp.infer.onnx_predict import OnnxPredictor
    from clfapp.infer.predict import Predictor
    _, run, _ = exported
    items, _ = ev.labelled_items(run)
    m_onnx, p_onnx, _ = ev.measure(OnnxPredictor(run), items)
    m_torch, p_torch, _ = ev.measure(Predictor(run), items)
    assert m_onnx["accuracy"] == m_torch["accuracy"]
    assert np.abs(p_onnx - p_torch).max() < TOL


def test_predict_onnx_without_an_export_is_a_usage_error(trained_run, cli, tmp_path):
    work, run = trained_run
    line = assert_usage_error(cli("predict", run, work / "data" / "shapes" / "red", "--backend", "onnx",
                                  "--out", tmp_path / "p.csv"), "no ONNX export", "clfapp export")
    assert str(run) in line
    assert not list(run.glob("export-*"))


def test_bad_options_are_usage_errors(exported, cli, tmp_path):
    work, run, _ = exported
    red = work / "data" / "shapes" / "red"
    assert_usage_error(cli("predict", run, red, "--backend", "onnx", "--tta"), "--tta")
    assert_usage_error(cli("predict", run, red, "--backend", "tflite"), "--backend")
    assert_usage_error(cli("export", run, "--format", "tflite"), "--format")
    assert_usage_error(cli("export", run, "--opset", "7"), "--opset")
    assert sorted(p.name for p in run.glob("export-*")) == ["export-1"]


def test_tampered_or_broken_exports_are_refused_cleanly(exported, cli, tmp_path):
    work, run, folder = exported
    red = work / "data" / "shapes" / "red"
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    info = json.loads((edited / "onnx.json").read_text())
    info["classes"] = list(reversed(info["classes"]))
    (edited / "onnx.json").write_text(json.dumps(info))
    assert_usage_error(cli("predict", edited, red, "--backend", "onnx", "--out", tmp_path / "a.csv"),
                       "does not match", "classes")

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    raw = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(raw[: len(raw) // 2])
    assert_usage_error(cli("predict", broken, red, "--backend", "onnx", "--out", tmp_path / "b.csv"),
                       "not a readable ONNX model")

    stripped = tmp_path / "stripped"   # a valid ONNX file, but not one clfapp made
    shutil.copytree(folder, stripped)
    model = onnx.load(str(stripped / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(stripped / "model.onnx"))
    assert_usage_error(cli("predict", stripped, red, "--backend", "onnx", "--out", tmp_path / "c.csv"),
                       "no clfapp metadata")
    assert not any((tmp_path / f).exists() for f in ("a.csv", "b.csv", "c.csv"))


def test_a_failed_parity_check_exits_1_and_leaves_no_export(trained_run, tmp_path, monkeypatch):
    from clfapp.infer import onnx_predict
    _, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    original = onnx_predict.OnnxPredictor.probabilities_of
    monkeypatch.setattr(onnx_predict.OnnxPredictor, "probabilities_of",
                        lambda self, *a, **k: original(self, *a, **k) + 1e-3)
    r = _export(copy)
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: parity check failed"), r.stderr
    assert not list(copy.glob("export-*"))
    monkeypatch.undo()
    r = _export(copy, "--tolerance", "1e-4")   # the same run exports fine without the fault
    assert r.exit_code == 0 and "parity on" in r.output, r.output
    assert f"preprocessing: {copy / 'export-1' / 'preprocess.py'}" in r.output


# ---------------------------------------------------------------- the reference preprocessing


def _awkward_images(folder: Path) -> list[Path]:
    """Images that decoding turns into more than `convert("RGB")` gives: an EXIF-rotated JPEG
    large enough for the reduced-scale decode at 32 px (400 x 240: libjpeg at 1/2), an RGBA PNG
    with graded transparency, a 16-bit grey PNG using the whole range, a palette PNG with a
    transparent colour."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    a = np.zeros((240, 400, 3), dtype=np.int16)
    a[:, :200], a[:, 200:], a[:60] = COLOURS["red"], COLOURS["blue"], COLOURS["green"]
    img = Image.fromarray(np.clip(a + rng.integers(-15, 16, a.shape), 0, 255).astype(np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6   # stored sideways: turn 90 degrees clockwise to view
    img.save(folder / "rotated.jpg", exif=exif, quality=92)

    rgba = np.zeros((40, 56, 4), dtype=np.uint8)
    rgba[..., :3] = COLOURS["green"]
    rgba[:, :28, :3] = COLOURS["red"]
    rgba[..., 3] = np.linspace(0, 255, 56).astype(np.uint8)   # transparent left, opaque right
    Image.fromarray(rgba).save(folder / "rgba.png")             # RGBA

    grey = np.tile(np.linspace(0, 65535, 48), (36, 1)).astype(np.uint16)
    grey[:12] = 40000
    Image.fromarray(grey).save(folder / "grey16.png")           # 16-bit grey (I;16)

    pal = np.zeros((30, 30, 3), dtype=np.uint8)
    pal[:, :], pal[10:20, 10:20] = COLOURS["blue"], COLOURS["red"]
    Image.fromarray(pal).quantize(2).save(folder / "palette.png", transparency=0)
    return [folder / n for n in ("rotated.jpg", "rgba.png", "grey16.png", "palette.png")]


def _naive(path: Path, size: int, resize: str) -> np.ndarray:
    """What a consumer gets who only converts to RGB and resizes (no reduced-scale JPEG decode,
    no EXIF orientation, no white under transparency, 16-bit clipped)."""
    from clfapp.infer import onnx_reference as ref
    with Image.open(path) as img:
        return np.asarray(ref.resized(img.convert("RGB"), size, resize))


@pytest.mark.parametrize("resize", ["squish", "crop", "pad"])
def test_reference_preprocessing_gives_clfapp_pixels_exactly(tmp_path, resize):
    from clfapp.data import images
    from clfapp.infer import onnx_reference as ref
    paths = _awkward_images(tmp_path)
    with Image.open(paths[2]) as img:
        assert img.mode.startswith("I")   # Pillow keeps the 16 bits
    for path in paths:
        want = images.read_image(path, 32, resize)
        assert np.array_equal(ref.pixels(path, 32, resize), want), path.name
        with Image.open(path) as img:   # a PIL image fresh from Image.open: the same pixels
            assert np.array_equal(ref.pixels(img, 32, resize), want), path.name
        # the images need every step: skipping them changes the pixels a lot
        assert np.abs(_naive(path, 32, resize).astype(int) - want).max() > 40, path.name
        x = ref.preprocess(path, 32, resize)
        assert x.dtype == np.float32 and x.shape == (3, 32, 32)
        assert np.array_equal(x, want.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    # the JPEG's reduced-scale decode is reproduced: a full decode gives other pixels
    with Image.open(paths[0]) as img:
        img.load()
        full = np.asarray(ref.resized(ref.to_rgb(ImageOps.exif_transpose(img)), 32, resize))
    assert not np.array_equal(full, images.read_image(paths[0], 32, resize))
    with pytest.raises(ValueError, match="resize"):
        ref.preprocess(paths[1], 32, "stretch")


def _standalone(path: Path):
    """Import an exported preprocess.py with clfapp made unimportable."""
    import importlib.util
    import sys
    with pytest.MonkeyPatch.context() as mp:
        for name in [m for m in sys.modules if m == "clfapp" or m.startswith("clfapp.")]:
            mp.setitem(sys.modules, name, None)
        spec = importlib.util.spec_from_file_location("exported_preprocess", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_the_export_ships_its_preprocessing_and_it_gives_clfapps_probabilities(exported, tmp_path, capsys):
    import ast

    from clfapp.infer.onnx_predict import OnnxPredictor
    from clfapp.infer.predict import Predictor
    _, run, folder = exported
    info = json.loads((folder / "onnx.json").read_text())
    pre = info["preprocessing"]
    assert [s["step"] for s in pre["steps"]] == ["decode", "exif_transpose", "to_rgb", "resize", "to_tensor"]
    assert pre["per_input"] == [{"input": "image", "size": info["size"], "resize": info["resize"],
                                 "interpolation": "bicubic"}]
    assert pre["reference"]["file"] == "preprocess.py" and pre["reference"]["needs"] == ["Pillow", "numpy"]
    text = json.dumps(pre["steps"])
    for fact in ("draft('RGB', (2 * size, 2 * size))", "exif_transpose", "(255, 255, 255)", "/ 257",
                 "BICUBIC", "divided by 255"):
        assert fact in text, fact
    assert any(s.startswith("normalisation") for s in pre["inside_graph"])
    assert any(s.startswith("activation: softmax") for s in pre["inside_graph"])

    # preprocess.py: Pillow, numpy and the standard library only
    source = (folder / "preprocess.py").read_text()
    tree = ast.parse(source)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "json", "sys", "pathlib", "numpy", "PIL", "onnxruntime"}, imported
    reference = _standalone(folder / "preprocess.py")

    paths = [str(p) for p in _awkward_images(tmp_path / "imgs")]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = reference.feed(paths)                       # reads the export's onnx.json
    x = np.stack([reference.preprocess(p, info["size"], info["resize"]) for p in paths])
    assert list(feed) == ["image"] and np.array_equal(feed["image"], x)
    got = session.run(None, feed)[0]

    predictor = Predictor(run)                          # what `clfapp predict RUN` gives
    want, kept = predictor.probabilities(paths)       # as its spec says
    assert list(kept) == list(range(len(paths)))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    by_onnx, _ = OnnxPredictor(folder).probabilities(paths)   # `clfapp predict --backend onnx`
    np.testing.assert_allclose(got, by_onnx, rtol=0, atol=1e-6)
    # and a consumer who skips the steps would not get them
    naive = np.stack([_naive(Path(p), info["size"], info["resize"]) for p in paths])
    naive = session.run(None, {"image": naive.transpose(0, 3, 1, 2).astype(np.float32) / 255})[0]
    assert np.abs(naive - want).max() > 100 * TOL

    reference.main(paths[:1])                           # python preprocess.py IMAGE...
    line = json.loads(capsys.readouterr().out)
    assert line["path"] == paths[0] and list(line["probabilities"]) == info["classes"]
    np.testing.assert_allclose(list(line["probabilities"].values()), got[0], rtol=0, atol=1e-6)


def test_an_export_from_before_the_preprocessing_facts_still_loads(exported, tmp_path):
    """Exports written before onnx.json had `preprocessing` (and preprocess.py) keep format 1."""
    from clfapp.infer.onnx_predict import OnnxPredictor
    work, _, folder = exported
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    (old / "preprocess.py").unlink()
    info = json.loads((old / "onnx.json").read_text())
    del info["preprocessing"]
    (old / "onnx.json").write_text(json.dumps(info))
    model = onnx.load(str(old / "model.onnx"))
    for p in model.metadata_props:
        if p.key == "clfapp":
            facts = json.loads(p.value)
            del facts["preprocessing"]
            p.value = json.dumps(facts, sort_keys=True)
    onnx.save(model, str(old / "model.onnx"))
    assert info["format"] == 1
    red = sorted((work / "data" / "shapes" / "red").iterdir())[:3]
    got, kept = OnnxPredictor(old).probabilities([str(p) for p in red])
    want, _ = OnnxPredictor(folder).probabilities([str(p) for p in red])
    assert len(kept) == 3 and np.array_equal(got, want)


# ---------------------------------------------------------------- multi-label


def _multilabel_dataset(root: Path) -> Path:
    """Two-colour images: left half one colour, right half another; labels = the colours."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    names, rows = list(COLOURS), []
    for i in range(36):
        a, b = names[i % 3], names[(i // 3) % 3]
        img = np.zeros((24, 24, 3), dtype=np.int16)
        img[:, :12], img[:, 12:] = COLOURS[a], COLOURS[b]
        img += rng.integers(-20, 21, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"m{i:02d}.png")
        rows.append({"fname": f"m{i:02d}.png", "labels": " ".join(sorted({a, b}))})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_multilabel_export_keeps_thresholds_and_label_sets(tmp_path, cli):
    data = _multilabel_dataset(tmp_path / "data" / "ml")
    recipe = write_recipe(tmp_path / "ml.toml", "data/ml", data={"labels": "csv:labels.csv"},
                          train={"epochs": 2})
    run = _fit(tmp_path, recipe, "ml")
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["multi_label"] and meta["inference"]["thresholds"]
    r = _export(run)
    assert r.exit_code == 0, r.output
    info = json.loads((run / "export-1" / "onnx.json").read_text())
    assert info["multi_label"] is True and info["output"]["activation"] == "sigmoid"
    assert any(s.startswith("activation: sigmoid") for s in info["preprocessing"]["inside_graph"])
    assert info["thresholds"] == meta["inference"]["thresholds"] and info["parity"]["max_abs_diff"] < TOL
    props = {p.key: p.value for p in onnx.load(str(run / "export-1" / "model.onnx")).metadata_props}
    assert json.loads(props["thresholds"]) == meta["inference"]["thresholds"]
    r1 = cli("predict", run, data, "--out", tmp_path / "t.csv")
    r2 = cli("predict", run, data, "--out", tmp_path / "o.csv", "--backend", "onnx")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    b = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False)
    assert list(a.columns) == list(b.columns) == ["path", "labels", *meta["classes"]]
    assert (a["labels"] == b["labels"]).all()
    for c in meta["classes"]:
        assert np.abs(a[c].astype(float) - b[c].astype(float)).max() < TOL


# ---------------------------------------------------------------- ensembles


def _ensemble(folder: Path, runs: dict[str, Path], weights, vote="soft") -> Path:
    """An ensemble folder in the lead's format, built by hand from run folders."""
    members = folder / "members"
    for name, run in runs.items():
        shutil.copytree(run / "model", members / name / "model")
    first = json.loads((next(iter(runs.values())) / "model" / "model.json").read_text())
    shutil.copy(next(iter(runs.values())) / "splits.csv", folder / "splits.csv")
    (folder / "ensemble.json").write_text(json.dumps({
        "format": 1, "kind": "ensemble", "vote": vote, "weights": weights, "members": list(runs),
        "classes": first["classes"], "multi_label": first["multi_label"], "label_delim": " ",
        "thresholds": None, "created": "2026-01-01T00:00:00+00:00", "versions": {}}))
    return folder


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny runs on the same data: different input size (32 vs 24 px) and resize method."""
    work = tmp_path_factory.mktemp("ens")
    make_folder_dataset(work / "data" / "shapes", n_per_class=8)
    a = _fit(work, write_recipe(work / "a.toml", "data/shapes"), "a")
    b = _fit(work, write_recipe(work / "b.toml", "data/shapes", data={"size": 24, "resize": "crop"},
                                train={"seed": 7}), "b")
    return work, a, b


def test_ensemble_exports_as_one_graph_giving_the_weighted_mean_of_its_members(two_runs, tmp_path, cli):
    from clfapp.data import images
    from clfapp.infer.onnx_predict import OnnxPredictor
    from clfapp.infer.predict import Predictor
    work, a, b = two_runs
    ens = _ensemble(tmp_path / "ens", {"small": b, "big": a}, [0.3, 0.7])
    r = _export(ens)
    assert r.exit_code == 0, r.output
    info = json.loads((ens / "export-1" / "onnx.json").read_text())
    assert info["kind"] == "ensemble" and info["vote"] == "soft" and info["weights"] == [0.3, 0.7]
    assert [(i["name"], i["size"], i["members"]) for i in info["inputs"]] == \
        [("image_24", 24, ["small"]), ("image_32", 32, ["big"])]
    assert info["parity"]["max_abs_diff"] < TOL and info["parity"]["images"].endswith("(splits.csv)")
    sess = ort.InferenceSession(str(ens / "export-1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [x.name for x in sess.get_inputs()] == ["image_24", "image_32"]
    assert len(sess.get_outputs()) == 1   # one graph, one answer

    paths = [str(p) for p in images.find_images(work / "data" / "shapes")]
    px24, _ = images.read_many(paths, 24, "crop", progress=False)
    px32, _ = images.read_many(paths, 32, "squish", progress=False)
    want = 0.3 * Predictor(ens / "members" / "small").probabilities_of(px24) \
        + 0.7 * Predictor(ens / "members" / "big").probabilities_of(px32)
    feed = {"image_24": px24.transpose(0, 3, 1, 2).astype(np.float32) / 255,
            "image_32": px32.transpose(0, 3, 1, 2).astype(np.float32) / 255}
    got = sess.run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=TOL)
    # the export's own preprocess.py builds the same feed, one array per input
    pre = info["preprocessing"]
    assert [(i["input"], i["size"], i["resize"]) for i in pre["per_input"]] == \
        [("image_24", 24, "crop"), ("image_32", 32, "squish")]
    assert any(s.startswith("ensemble: the weighted mean") for s in pre["inside_graph"])
    theirs = _standalone(ens / "export-1" / "preprocess.py").feed(paths)
    assert list(theirs) == ["image_24", "image_32"]
    assert all(np.array_equal(theirs[k], feed[k]) for k in feed)
    # and the two members really differ, so the weights matter
    assert np.abs(Predictor(a).probabilities_of(px32) - Predictor(b).probabilities_of(px24)).max() > 1e-3

    # predict --backend onnx decodes each input its own way
    p, kept = OnnxPredictor(ens).probabilities(paths)
    assert len(kept) == len(paths)
    np.testing.assert_allclose(p, want, atol=TOL)
    r = cli("predict", ens, work / "data" / "shapes", "--backend", "onnx", "--out", tmp_path / "e.csv")
    assert r.exit_code == 0, r.output
    labels = pd.read_csv(tmp_path / "e.csv")["label"].tolist()
    assert labels == [sorted(COLOURS)[i] for i in want.argmax(1)]


def test_members_sharing_preprocessing_share_one_input(two_runs, tmp_path):
    _, a, _ = two_runs
    ens = _ensemble(tmp_path / "same", {"x": a, "y": a}, [0.5, 0.5])
    r = _export(ens)
    assert r.exit_code == 0, r.output
    info = json.loads((ens / "export-1" / "onnx.json").read_text())
    assert [i["name"] for i in info["inputs"]] == ["image"] and info["size"] == 32


def test_a_hard_vote_ensemble_is_refused_with_one_line(two_runs, tmp_path, cli):
    _, a, b = two_runs
    ens = _ensemble(tmp_path / "hard", {"a": a, "b": b}, [0.5, 0.5], vote="hard")
    assert_usage_error(cli("export", ens), "hard", "soft")
    assert not list(ens.glob("export-*"))
