"""The test size (data.test_size, model.json test_size): predict, evaluate and the end of fit
resize images to it; by default data.size scaled by how much training's crops enlarged objects."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clfapp.config import AugConfig, Config, DataConfig
from clfapp.data import images
from clfapp.errors import UsageError
from clfapp.infer import bundle, test_size
from clfapp.infer.predict import Predictor

from conftest import assert_usage_error, write_recipe


@pytest.mark.parametrize("size, aug, expected", [
    (128, AugConfig(min_scale=0.5), 160),          # plants: x1.22
    (160, AugConfig(min_scale=0.35), 224),         # idl: x1.30
    (224, AugConfig(), 224),                       # fastai's zoom alone: x1.04, stays
    (144, AugConfig(), 144),                       # not a multiple of 32: not pushed up to one
    (224, AugConfig(min_scale=0.08, max_zoom=1.0), 352),  # torchvision's crops: x1.56
    (128, AugConfig(enabled=False, min_scale=0.5), 128),  # no augmentation, nothing to undo
    (128, AugConfig(min_scale=1.0, max_zoom=1.0), 128),
])
def test_auto_test_size(size, aug, expected):
    assert test_size.auto_test_size(size, aug) == expected


def test_magnification_grows_with_the_crops_and_zoom():
    assert test_size.magnification(AugConfig(min_scale=1.0, max_zoom=1.0)) == 1.0
    crops = [test_size.magnification(AugConfig(min_scale=s, max_zoom=1.0)) for s in (0.9, 0.5, 0.1)]
    assert crops == sorted(crops) and crops[0] > 1.0
    # the mean of 1/sqrt(s) over s ~ U[0.25, 1] is 2 / (1 + 0.5)
    assert test_size.magnification(AugConfig(min_scale=0.25, max_zoom=1.0)) == pytest.approx(4 / 3)
    # fastai's Zoom: U[1, 1.2] with probability p_affine 0.5 -> 1.05 on average
    assert test_size.magnification(AugConfig(max_zoom=1.2, p_affine=0.5)) == pytest.approx(1.05)


def test_an_explicit_test_size_wins():
    cfg = Config(data=DataConfig(size=128, test_size=96), aug=AugConfig(min_scale=0.5))
    assert test_size.test_size_for(cfg) == 96
    assert test_size.test_size_for(Config(data=DataConfig(size=128), aug=AugConfig(min_scale=0.5))) == 160


class OneSizeNet(torch.nn.Module):
    """Takes only `size` px inputs, as a ViT with a fixed patch grid does."""

    def __init__(self, size):
        super().__init__()
        self.size, self.lin = size, torch.nn.Linear(3, 2)

    def forward(self, x):
        if x.shape[-1] != self.size:
            raise AssertionError(f"Input width ({x.shape[-1]}) doesn't match model ({self.size}).")
        return self.lin(x.mean(dim=(2, 3)))


def test_resolved_keeps_the_training_size_for_a_one_size_arch():
    net = OneSizeNet(128).train()
    size, why = test_size.resolved(Config(data=DataConfig(size=128), aug=AugConfig(min_scale=0.5)), net)
    assert size == 128 and "takes no other input size" in why
    assert net.training   # the check put it back in train mode
    with pytest.raises(UsageError, match="takes only 128 px"):
        test_size.resolved(Config(data=DataConfig(size=128, test_size=160)), net)


def test_resolved_takes_the_larger_size_when_the_net_does():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    size, why = test_size.resolved(Config(data=DataConfig(size=128), aug=AugConfig(min_scale=0.5)), net)
    assert size == 160 and "1.22x" in why
    assert test_size.resolved(Config(data=DataConfig(size=128)), net)[0] == 128


def test_a_bundle_without_test_size_predicts_at_its_training_size(tmp_path):
    """model.json of format 1 has no test_size: its spec's size is the training size; a
    format-2 test_size is its inference size."""
    raw = {"arch": "a", "classes": ["x"], "size": 64, "resize": "squish", "mean": [0] * 3,
           "std": [1] * 3}
    (tmp_path / bundle.WEIGHTS).write_bytes(b"")
    (tmp_path / bundle.META).write_text(json.dumps(raw))
    meta = bundle.read_meta(tmp_path)
    assert meta.input_size == 64 and meta.inference.inferred
    (tmp_path / bundle.META).write_text(json.dumps(dict(raw, test_size=96, format=2)))
    assert bundle.read_meta(tmp_path).input_size == 96


def test_fit_records_and_uses_the_test_size(tmp_path, tiny_data, cli, monkeypatch):
    """fit writes test_size into model.json and config.toml and measures the validation split
    at it; predict decodes at it."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "t.toml", "data/shapes", data={"test_size": 48})
    decoded_sizes = []
    read_many = images.read_many

    def spy(paths, size, resize, progress=True):
        decoded_sizes.append(size)
        return read_many(paths, size, resize, progress)
    monkeypatch.setattr(images, "read_many", spy)
    result = cli("fit", "t.toml", "--name", "ts")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "ts"
    meta = json.loads((run / "model" / "model.json").read_text())
    assert (meta["size"], meta["inference"]["size"], meta["format"]) == (32, 48, bundle.FORMAT)
    assert "test_size = 48" in (run / "config.toml").read_text()
    assert 48 in decoded_sizes          # the end of fit measured at the test size
    assert "measured at 48 px" in (run / "report.md").read_text()

    paths = sorted(str(p) for p in (tiny_data / "red").iterdir())[:4]
    p = Predictor(run)
    probs, _ = p.probabilities(paths, progress=False)
    at = {s: p.probabilities_of(np.stack([images.read_image(f, s) for f in paths])) for s in (32, 48)}
    np.testing.assert_allclose(probs, at[48], rtol=1e-5, atol=1e-6)
    assert not np.allclose(at[32], at[48], atol=1e-6)


def test_a_test_size_too_small_is_a_usage_error(tmp_path, tiny_data, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "t.toml", "data/shapes")
    assert_usage_error(cli("fit", "t.toml", "--set", "data.test_size=4"), "data.test_size")


def test_the_budget_reserves_for_the_larger_test_images():
    from clfapp.train import budget
    base = budget.reserve_seconds(0.01, 100, views=2) - budget.END_FIXED_S
    larger = budget.reserve_seconds(0.01, 100, views=2, pixel_ratio=(160 / 128) ** 2) - budget.END_FIXED_S
    assert larger == pytest.approx(base * 1.5625)


def test_an_automatic_test_size_lands_in_model_json_and_config_keeps_the_rule(tmp_path, tiny_data, cli,
                                                                              monkeypatch):
    """config.toml keeps 0 (auto), so the run's config given another data.size follows it;
    the formula's size is a candidate the end of fit measures, and model.json holds the size
    it chose (predict's)."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "t.toml", "data/shapes", data={"size": 64}, aug={"min_scale": 0.08})
    result = cli("fit", "t.toml", "--name", "auto")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "auto"
    assert "test size 96 px" in result.output    # 64 x 1.62, the nearest multiple of 32
    chosen = json.loads((run / "metrics.json").read_text())["inference"]
    assert {r["size"] for r in chosen["candidates"]} == {64, 96}
    assert json.loads((run / "model" / "model.json").read_text())["inference"]["size"] == \
        chosen["chosen"]["size"]
    assert "test_size = 0" in (run / "config.toml").read_text()
