"""The model bundle: what the learner predicts is what a loaded bundle predicts; no pickles."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from clfapp.infer import bundle

from clfapp import config, models, train
from clfapp.errors import UsageError
from clfapp.infer.predict import Predictor
from clfapp.infer.spec import InferenceSpec

from conftest import make_folder_dataset, write_recipe


def _meta_for(cfg, prep) -> bundle.BundleMeta:
    return bundle.BundleMeta(
        arch=cfg.model.arch, classes=list(prep.dataset.classes), size=cfg.data.size,
        mean=list(prep.arch.mean), std=list(prep.arch.std),
        inference=InferenceSpec(resize=cfg.data.resize),
        dropout=cfg.model.dropout, concat_pool=cfg.model.concat_pool)


@pytest.mark.parametrize("resize, concat_pool", [("squish", True), ("pad", False), ("crop", True)])
def test_learner_and_loaded_bundle_agree(tmp_path, monkeypatch, resize, concat_pool):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=8, size=(40, 22))
    recipe = write_recipe(tmp_path / "b.toml", "data/shapes",
                          data={"resize": resize}, model={"concat_pool": concat_pool})
    cfg = config.load(recipe, recipe_name="b")
    folder = tmp_path / "run"
    folder.mkdir()
    prep = train.prepare(cfg, folder)
    learn = prep.learn
    learn.fit(1, 1e-2)  # moves weights and BatchNorm statistics away from their init
    probs, y = learn.get_preds(dl=learn.dls.valid)
    valid = prep.dataset.items.iloc[prep.dataset.indices("valid")]

    bundle.save(folder / "model", learn.model, _meta_for(cfg, prep))
    predictor = Predictor(folder)
    assert predictor.classes == prep.dataset.classes

    # every tensor comes back, bit for bit (BatchNorm buffers included)
    theirs = learn.model.state_dict()
    ours = predictor.model.state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k

    # the same probabilities from the image files as the learner got from its pipeline
    got, kept = predictor.probabilities(valid["path"].tolist())
    assert list(kept) == list(range(len(valid)))
    np.testing.assert_allclose(got, probs.numpy(), atol=1e-5)
    assert (got.argmax(1) == probs.numpy().argmax(1)).all()

    # and on one and the same input tensor
    x = torch.from_numpy(prep.dataset.pixels[prep.dataset.indices("valid")]).permute(0, 3, 1, 2)
    mean = torch.tensor(prep.arch.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.arch.std).view(1, 3, 1, 1)
    learn.model.eval()
    with torch.no_grad():
        expected = learn.model((x.float() / 255 - mean) / std).softmax(1)
    np.testing.assert_allclose(predictor.forward(x).numpy(), expected.numpy(), atol=1e-5)


def test_torchvision_arch_round_trip(tmp_path):
    arch = models.resolve("mobilenet_v3_small")
    assert arch.source == "torchvision"
    model, _ = models.build(arch, 4, dropout=0.3, concat_pool=True)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32) * 2 + 1)
    meta = bundle.BundleMeta(arch="mobilenet_v3_small", classes=list("abcd"), size=32,
                             mean=list(arch.mean), std=list(arch.std),
                             dropout=0.3, concat_pool=True)
    bundle.save(tmp_path / "model", model, meta)
    loaded, meta2 = bundle.load(tmp_path)
    assert meta2.classes == list("abcd") and meta2.arch == "mobilenet_v3_small"
    assert not loaded.training
    x = torch.randn(5, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


def test_loading_never_unpickles(trained_run, monkeypatch):
    work, run = trained_run
    monkeypatch.chdir(work)
    files = sorted(str(p.relative_to(work)) for p in (work / "data" / "shapes").rglob("*.png"))[:6]
    before, _ = Predictor(run).probabilities(files)

    def refuse(*a, **k):
        raise AssertionError("a pickle was opened")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)

    model, meta = bundle.load(run)
    predictor = Predictor(run)
    after, _ = predictor.probabilities(files)
    np.testing.assert_allclose(after, before, atol=1e-6)

    # the bundle is exactly the two safe files
    assert sorted(p.name for p in (run / "model").iterdir()) == ["model.json", "weights.safetensors"]
    assert not list(run.rglob("*.pkl")) and not list(run.rglob("*.pth"))
    from safetensors import safe_open
    with safe_open(str(run / "model" / "weights.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())


def test_bundle_found_from_run_or_model_folder(trained_run):
    _, run = trained_run
    assert bundle.find(run) == run / "model"
    assert bundle.find(run / "model") == run / "model"
    assert bundle.read_meta(run).classes == bundle.read_meta(run / "model").classes


def _copy_bundle(run, tmp_path):
    import shutil
    shutil.copytree(run / "model", tmp_path / "model")
    return tmp_path / "model"


def test_bundle_from_a_newer_clfapp_is_refused(trained_run, tmp_path):
    _, run = trained_run
    model_dir = _copy_bundle(run, tmp_path)
    meta = json.loads((model_dir / "model.json").read_text())
    meta["format"] = bundle.FORMAT + 1
    (model_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="newer"):
        bundle.load(model_dir)


def test_damaged_model_json_is_a_usage_error(trained_run, tmp_path):
    _, run = trained_run
    model_dir = _copy_bundle(run, tmp_path)
    (model_dir / "model.json").write_text("{not json")
    with pytest.raises(UsageError, match="model.json"):
        bundle.read_meta(model_dir)
    (model_dir / "model.json").write_text(json.dumps({"arch": "x", "surprise": 1}))
    with pytest.raises(UsageError, match="model.json"):
        bundle.read_meta(model_dir)


def test_save_replaces_a_bundle_whole(tmp_path):
    arch = models.resolve("test_resnet")
    meta = bundle.BundleMeta(arch="test_resnet", classes=["a", "b"], size=16,
                             mean=list(arch.mean), std=list(arch.std))
    m1, _ = models.build(arch, 2)
    m2, _ = models.build(arch, 2)
    bundle.save(tmp_path / "model", m1, meta)
    bundle.save(tmp_path / "model", m2, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .tmp left over
    loaded, meta2 = bundle.load(tmp_path)
    for k, v in m2.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert meta2.versions["torch"] and meta2.created
