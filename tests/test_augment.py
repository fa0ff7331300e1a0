"""The colour knobs of [aug] (fastai's Saturation, Hue, Brightness, Contrast) and the random
resized crop: they change training batches and leave validation batches untouched."""
from __future__ import annotations

import pytest
import torch

from clfapp import config, data
from clfapp.errors import UsageError

from conftest import make_folder_dataset

# Every aug_transforms effect off, so the only difference between two loaders is the knob.
NEUTRAL = {"flip": False, "max_rotate": 0.0, "max_zoom": 1.0, "max_lighting": 0.0,
           "max_warp": 0.0, "p_lighting": 1.0}


def _batches(root, **aug):
    from fastai.torch_core import set_seed

    cfg = config.load(None, {"data": {"path": str(root), "size": 32},
                             "aug": {**NEUTRAL, **aug}, "train": {"bs": 8, "seed": 0}})
    ds = data.load(cfg)
    dls = data.dataloaders(ds, cfg, ((0.5,) * 3, (0.25,) * 3))
    set_seed(0)  # the same random draws; the same items (no shuffle)
    xt, _ = dls.train.new(shuffle=False).one_batch()
    xv, _ = dls.valid.one_batch()
    return dls, xt.clone(), xv.clone()


def _stats(x):
    """Per-channel mean and std of a batch."""
    return torch.cat([x.mean((0, 2, 3)), x.std((0, 2, 3))])


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("aug") / "colours", n_per_class=8)


@pytest.fixture(scope="module")
def plain(colours):
    return _batches(colours)


@pytest.mark.parametrize("knob,tfm", [("saturation", "Saturation"), ("hue", "Hue"),
                                      ("brightness", "Brightness"), ("contrast", "Contrast")])
def test_colour_knob_changes_training_batches_only(colours, plain, knob, tfm):
    _, xt0, xv0 = plain
    dls, xt, xv = _batches(colours, **{knob: 0.5})
    # fastai's own transform, in the training pipeline only (split_idx 0)
    found = [t for t in dls.train.after_batch.fs if type(t).__name__ == tfm]
    assert len(found) == 1 and found[0].split_idx == 0
    assert (_stats(xt) - _stats(xt0)).abs().max() > 0.01, f"{knob} did not change the train batch"
    assert torch.equal(xv, xv0), f"{knob} changed a validation batch"


def test_neutral_loaders_are_reproducible(colours, plain):
    """The comparison above means something: without a knob, the same seed gives the same batch."""
    _, xt0, xv0 = plain
    _, xt, xv = _batches(colours)
    assert torch.equal(xt, xt0) and torch.equal(xv, xv0)


def test_random_resized_crop_min_scale(colours, plain):
    _, xt0, xv0 = plain
    dls, xt, xv = _batches(colours, min_scale=0.3)
    assert any(type(t).__name__ == "RandomResizedCropGPU" for t in dls.train.after_batch.fs)
    assert xt.shape == xt0.shape == (8, 3, 32, 32)
    assert not torch.allclose(xt, xt0)
    # validation: fastai's crop takes the whole (already size x size) image, a resample at the
    # same size that moves pixels by float noise only (measured 1.4e-6), no crop, no zoom
    assert torch.allclose(xv, xv0, atol=1e-5)


@pytest.mark.parametrize("key,value", [("saturation", 1.0), ("hue", -0.1), ("brightness", 1.5)])
def test_colour_knob_range_refused(key, value):
    with pytest.raises(UsageError, match=f"aug.{key} must be in"):
        config.load(None, {"aug": {key: value}})
