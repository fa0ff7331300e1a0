"""Test-time augmentation mirrors only what training augmented with (model.json `tta_flips`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clfapp.infer import bundle

from clfapp.data import images

from clfapp.config import AugConfig
from clfapp.infer.predict import Predictor
from clfapp.infer.spec import tta_flips_for

from conftest import as_older_model_json, make_folder_dataset, make_tiny_bundle

SIZE = 24


def _bundle(folder: Path, tta_flips) -> Path:
    return make_tiny_bundle(folder, size=SIZE, tta_flips=tta_flips)


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.fixture
def counted(monkeypatch):
    """Every model bundle.load returns is wrapped in a CountingModel; the list collects them."""
    made = []
    original = bundle.load

    def load(path):
        model, meta = original(path)
        made.append(CountingModel(model))
        return made[-1], meta
    monkeypatch.setattr(bundle, "load", load)
    return made


def test_flips_follow_the_training_augmentation():
    assert tta_flips_for(AugConfig()) == ["horizontal"]
    assert tta_flips_for(AugConfig(flip_vert=True)) == ["horizontal", "vertical", "transpose"]
    assert tta_flips_for(AugConfig(flip=False)) == []
    assert tta_flips_for(AugConfig(flip=False, flip_vert=True)) == []   # fastai: no do_flip, no flips
    assert tta_flips_for(AugConfig(enabled=False)) == []


def test_fit_records_the_flips_it_trained_with(trained_run):
    _, run = trained_run   # default augmentation: horizontal flips
    assert json.loads((run / "model" / "model.json").read_text())["inference"]["tta_flips"] == ["horizontal"]


def test_bundle_from_before_tta_flips_keeps_the_horizontal_flip(tmp_path):
    run = _bundle(tmp_path / "run", ["vertical"])
    raw = as_older_model_json(json.loads((run / "model" / "model.json").read_text()), 1)
    del raw["tta_flips"]
    (run / "model" / "model.json").write_text(json.dumps(raw))
    assert Predictor(run).tta_flips == ["horizontal"]


def test_tta_on_a_model_trained_without_flips_is_a_no_op(cli, tmp_path, counted):
    data = make_folder_dataset(tmp_path / "imgs", n_per_class=3, size=SIZE)   # 9 images
    run = _bundle(tmp_path / "run", [])
    r = cli("predict", run, data, "--out", tmp_path / "plain.csv", "--bs", "4")
    assert r.exit_code == 0, r.output
    assert counted[-1].calls == 3                         # ceil(9 / 4) batches
    r = cli("predict", run, data, "--out", tmp_path / "tta.csv", "--bs", "4", "--tta")
    assert r.exit_code == 0, r.output
    assert counted[-1].calls == 3                         # still one call per batch
    assert r.stderr.count("--tta does nothing") == 1      # said once, not per batch
    plain, tta = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "tta.csv")
    pd.testing.assert_frame_equal(plain, tta, check_exact=True)

    predictor = Predictor(run)
    paths = [str(p) for p in sorted(data.rglob("*.png"))]
    a, _ = predictor.probabilities(paths, bs=4)
    b, _ = predictor.probabilities(paths, bs=4, tta=True)
    assert np.array_equal(a, b)


def _dihedral(x):
    """The 8 turns and mirrors of square images, made with rot90 (not with the flips under test)."""
    return [torch.rot90(v, k, dims=(2, 3)) for v in (x, x.flip(3)) for k in range(4)]


@pytest.mark.parametrize("flips, n_views", [(["horizontal"], 2),
                                            (["horizontal", "vertical", "transpose"], 8),
                                            (["horizontal", "vertical"], 8)])   # before "transpose"
def test_tta_averages_over_exactly_the_trained_mirrors(tmp_path, counted, flips, n_views):
    data = make_folder_dataset(tmp_path / "imgs", n_per_class=2, size=(30, 20))
    paths = [str(p) for p in sorted(data.rglob("*.png"))]
    run = _bundle(tmp_path / "run", flips)
    got, kept = Predictor(run).probabilities(paths, tta=True, bs=4)
    assert list(kept) == list(range(len(paths)))
    assert counted[-1].calls == 2 * n_views               # 2 batches, each seen once per view

    # computed independently: decode, normalise, the raw model on each view, softmax, mean
    model, meta = counted[-1].inner, bundle.read_meta(run)
    pixels = np.stack([images.read_image(p, meta.size, meta.resize) for p in paths])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    views = [x, x.flip(3)] if n_views == 2 else _dihedral(x)
    with torch.no_grad():
        outs = [model(v).softmax(1).numpy() for v in views]
    np.testing.assert_allclose(got, np.mean(outs, axis=0), atol=1e-5)
    # the mirrors matter: without them the answer is measurably different
    assert not np.allclose(outs[0], np.mean(outs, axis=0), atol=1e-4)


def _bundle_with_default(folder: Path, tta: bool) -> Path:
    _bundle(folder, ["horizontal"])
    meta = json.loads((folder / "model" / "model.json").read_text())
    meta["inference"]["tta"] = tta
    (folder / "model" / "model.json").write_text(json.dumps(meta))
    return folder


def test_predict_follows_the_models_tta_default_unless_told(cli, tmp_path, counted):
    """model.json `tta` (aug.tta) makes TTA the default of predict; --no-tta turns it off,
    and a model without it predicts plainly unless --tta."""
    data = make_folder_dataset(tmp_path / "imgs", n_per_class=3, size=SIZE)   # 9 images: 3 batches of 4
    on = _bundle_with_default(tmp_path / "on", True)
    off = _bundle_with_default(tmp_path / "off", False)
    for run, flag, calls in ((on, None, 6), (on, "--no-tta", 3), (off, None, 3), (off, "--tta", 6)):
        r = cli("predict", run, data, "--out", tmp_path / "p.csv", "--bs", "4", *([flag] if flag else []))
        assert r.exit_code == 0, r.output
        assert counted[-1].calls == calls, (run.name, flag)


def test_fit_with_aug_tta_measures_and_records_tta(cli, tmp_path, monkeypatch, tiny_data):
    """The end of fit measures with TTA when aug.tta is on, and evaluate (by default) agrees."""
    from conftest import write_recipe
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.toml", tiny_data, aug={"tta": True, "flip": True})
    r = cli("fit", str(recipe), "--name", "t")
    assert r.exit_code == 0, r.output
    meta = json.loads(Path("runs/t/model/model.json").read_text())
    assert meta["inference"]["tta"] is True and meta["inference"]["tta_flips"] == ["horizontal"]
    fitted = json.loads(Path("runs/t/metrics.json").read_text())
    assert "TTA" in Path("runs/t/report.md").read_text()
    r = cli("evaluate", "runs/t")
    assert r.exit_code == 0, r.output
    evaluated = json.loads(sorted(Path("runs/t").glob("eval-*/metrics.json"))[-1].read_text())
    assert evaluated["accuracy"] == pytest.approx(fitted["accuracy"])
    assert evaluated["f1_macro"] == pytest.approx(fitted["f1_macro"])
