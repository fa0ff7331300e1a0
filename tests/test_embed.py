"""`clfapp embed`: penultimate-layer features (the input of the last Linear layer) to .npy + index."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clfapp.data import images
from clfapp.infer import bundle

from conftest import COLOURS, assert_usage_error, make_folder_dataset, make_tiny_bundle


def _bundle(folder: Path, seed: int = 0, size: int = 24, head_hidden: str = "") -> Path:
    """An untrained tiny model saved as a run's bundle."""
    return make_tiny_bundle(folder, seed=seed, size=size, head_hidden=head_hidden)


def _ensemble(folder: Path, runs: dict[str, Path]) -> Path:
    import shutil
    for name, run in runs.items():
        shutil.copytree(run / "model", folder / "members" / name / "model")
    (folder / "ensemble.json").write_text(json.dumps({
        "format": 1, "kind": "ensemble", "vote": "soft", "weights": [0.5, 0.5],
        "members": list(runs), "classes": sorted(COLOURS), "multi_label": False,
        "label_delim": " ", "thresholds": None}))
    return folder


def _direct(run: Path, paths: list[str]) -> np.ndarray:
    """What the model's last Linear layer reads for each image, one image at a time, through a
    forward hook: the features `embed` must give, computed without it."""
    model, meta = bundle.load(run)
    last = model[1][-1]
    assert isinstance(last, torch.nn.Linear)
    seen = []
    last.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (meta.mean, meta.std))
    with torch.no_grad():
        for p in paths:
            x = torch.from_numpy(images.read_image(p, meta.input_size, meta.resize))
            model(((x.permute(2, 0, 1)[None].float() / 255.0) - mean) / std)
    return torch.cat(seen).numpy()


def _files(folder: Path) -> list[str]:
    return [str(p) for p in images.find_images(folder)]


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture
def data(tmp_path):
    return make_folder_dataset(tmp_path / "imgs", n_per_class=3, size=24)   # 9 images


def test_features_are_what_the_last_linear_reads_and_rows_follow_the_index(cli, tmp_path, data):
    run = _bundle(tmp_path / "run")
    before = _listing(data)
    r = cli("embed", run, data, "--out", tmp_path / "emb", "--bs", "4")
    assert r.exit_code == 0, r.output
    feats = np.load(tmp_path / "emb.npy")
    index = pd.read_csv(tmp_path / "emb.csv")
    model, _ = bundle.load(run)
    assert feats.dtype == np.float32
    assert feats.shape == (9, model[1][-1].in_features) == (9, 512)
    assert list(index.columns) == ["row", "path"] and index["row"].tolist() == list(range(9))
    assert sorted(index["path"]) == sorted(_files(data))
    assert np.abs(feats[0] - feats[-1]).max() > 1e-2       # a blue and a red image differ
    np.testing.assert_allclose(feats, _direct(run, index["path"].tolist()), atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "emb.meta.json").read_text())
    assert record["dim"] == 512 and record["kind"] == "run"
    assert _listing(data) == before                       # nothing written into the data
    assert not list(tmp_path.glob("*.part"))


def test_without_hidden_layers_the_features_are_the_pooled_body(cli, tmp_path, data):
    run = _bundle(tmp_path / "run", head_hidden="none")
    r = cli("embed", run, data, "--out", tmp_path / "emb.npy")   # .npy: FILE's own suffix
    assert r.exit_code == 0, r.output
    feats = np.load(tmp_path / "emb.npy")
    model, _ = bundle.load(run)
    with torch.no_grad():
        channels = model[0](torch.zeros(1, 3, 24, 24)).shape[1]
    assert feats.shape == (9, 2 * channels)                # average and max pooled
    paths = pd.read_csv(tmp_path / "emb.csv")["path"].tolist()
    np.testing.assert_allclose(feats, _direct(run, paths), atol=1e-5, rtol=0)


def test_an_ensemble_gives_its_members_features_side_by_side(cli, tmp_path, data):
    a = _bundle(tmp_path / "a", seed=1, size=24)
    b = _bundle(tmp_path / "b", seed=2, size=32, head_hidden="none")
    ens = _ensemble(tmp_path / "ens", {"b": b, "a": a})    # member order: b, then a
    r = cli("embed", ens, data, "--out", tmp_path / "emb", "--bs", "4")
    assert r.exit_code == 0, r.output
    feats = np.load(tmp_path / "emb.npy")
    paths = pd.read_csv(tmp_path / "emb.csv")["path"].tolist()
    want = np.concatenate([_direct(b, paths), _direct(a, paths)], axis=1)
    assert feats.shape == want.shape == (9, 192 + 512)
    np.testing.assert_allclose(feats, want, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "emb.meta.json").read_text())["dims"] == [192, 512]


def test_an_unreadable_image_is_skipped_and_named(cli, tmp_path, data):
    bad = data / "red" / "broken.png"
    bad.write_bytes(b"not an image")
    run = _bundle(tmp_path / "run")
    r = cli("embed", run, data, "--out", tmp_path / "emb", "--bs", "4")
    assert r.exit_code == 0, r.output
    assert str(bad) in r.stderr
    index = pd.read_csv(tmp_path / "emb.csv")
    assert len(index) == 9 and str(bad) not in set(index["path"])
    assert np.load(tmp_path / "emb.npy").shape == (9, 512)


def test_interrupted_then_resumed_equals_one_run(cli, tmp_path, data, monkeypatch):
    from clfapp.infer import embed as em

    run = _bundle(tmp_path / "run")
    whole = cli("embed", run, data, "--out", tmp_path / "whole", "--bs", "4")
    assert whole.exit_code == 0, whole.output

    real, calls = em.Embedder.features, []

    def dies_on_the_second_batch(self, x):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(em.Embedder, "features", dies_on_the_second_batch)
    cut = cli("embed", run, data, "--out", tmp_path / "emb", "--bs", "4")
    assert cut.exit_code == 130
    assert not (tmp_path / "emb.npy").exists() and not (tmp_path / "emb.csv").exists()
    part = tmp_path / "emb.csv.part"
    assert len(part.read_text().splitlines()) == 1 + 4      # header and the first batch
    with open(part, "a") as f:
        f.write("4,half a lin")                             # a row cut short by the kill
    monkeypatch.setattr(em.Embedder, "features", real)

    other = _bundle(tmp_path / "other", seed=5)
    assert_usage_error(cli("embed", other, data, "--out", tmp_path / "emb", "--resume"),
                       "--resume", "digest")

    resumed = cli("embed", run, data, "--out", tmp_path / "emb", "--bs", "4", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "4 rows kept" in resumed.output
    a, b = pd.read_csv(tmp_path / "whole.csv"), pd.read_csv(tmp_path / "emb.csv")
    pd.testing.assert_frame_equal(a, b)                       # each file once, same order
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), np.load(tmp_path / "whole.npy"),
                               atol=1e-6, rtol=0)
    assert not list(tmp_path.glob("emb*.part"))

    again = cli("embed", run, data, "--out", tmp_path / "emb", "--resume")   # finished: kept
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(a, pd.read_csv(tmp_path / "emb.csv"))


def test_a_parquet_index_when_pyarrow_is_installed_else_one_line(cli, tmp_path, data):
    run = _bundle(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    r = cli("embed", run, data, "--out", out / "emb.parquet", "--bs", "4")
    if importlib.util.find_spec("pyarrow") is None:
        assert_usage_error(r, "pyarrow", "CSV index")
        assert list(out.iterdir()) == []
        return
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["emb.meta.json", "emb.npy", "emb.parquet"]
    index = pd.read_parquet(out / "emb.parquet")
    assert index["row"].tolist() == list(range(9))
    np.testing.assert_allclose(np.load(out / "emb.npy"), _direct(run, index["path"].tolist()),
                               atol=1e-5, rtol=0)
    again = cli("embed", run, data, "--out", out / "emb.parquet", "--resume")
    assert again.exit_code == 0 and "9 rows kept, 0 of 9" in again.output, again.output
    pd.testing.assert_frame_equal(index, pd.read_parquet(out / "emb.parquet"))
    assert sorted(p.name for p in out.iterdir()) == ["emb.meta.json", "emb.npy", "emb.parquet"]


def test_bad_input_is_one_line_and_leaves_no_file(cli, tmp_path, data):
    run = _bundle(tmp_path / "run")
    out = tmp_path / "out" / "emb"
    (tmp_path / "out").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "junk"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"junk")
    export = tmp_path / "run" / "export-1"
    export.mkdir()
    (export / "onnx.json").write_text("{}")
    (export / "model.onnx").write_bytes(b"")
    assert_usage_error(cli("embed", tmp_path / "nope", data, "--out", out), "nope")
    assert_usage_error(cli("embed", run, empty, "--out", out), "no images")
    assert_usage_error(cli("embed", run, data, "--out", tmp_path / "missing" / "emb"), "missing")
    assert_usage_error(cli("embed", run, data, "--out", out, "--bs", "0"), "--bs")
    assert_usage_error(cli("embed", run, data, "--out", out, "--bs=-3"), "--bs")
    assert_usage_error(cli("embed", export, data, "--out", out), "ONNX", "exported from")
    r = cli("embed", run, unreadable, "--out", out)
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "error: none of the images could be read")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "missing").exists()
