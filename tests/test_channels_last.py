"""train.channels_last through fastai's ChannelsLast callback (train._precision_callbacks): it
converts the model only, and the activations follow the weights into channels_last, in fp32 and
under CPU bf16 autocast alike; off, everything stays NCHW."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn


def _fit_recording(cbs) -> tuple[list, list]:
    """One training step of a tiny conv net on NCHW batches (as fastai's loaders give them):
    (each convolution's output during it, each conv weight after it)."""
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    import fastai.callback.progress  # noqa: F401  (adds no_bar)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(1)
    ds = list(zip(torch.randn(8, 3, 10, 10, generator=g), torch.randint(0, 3, (8,), generator=g)))
    dls = DataLoaders.from_dsets(ds, ds, bs=8, shuffle=False, drop_last=False, device="cpu",
                                 num_workers=0)   # TfmdDL's default forks a worker per CPU every epoch
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=cbs)
    outputs = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [c.register_forward_hook(lambda m, i, o: outputs.append(o)) for c in convs]
    try:
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 1e-3)
    finally:
        for h in hooks:
            h.remove()
    return outputs, [c.weight for c in convs]


def _nhwc(t) -> bool:
    """channels_last and not also NCHW-contiguous (as a tensor with C = 1 or H = W = 1 is)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_reaches_weights_and_activations(precision, channels_last):
    from fastai.callback.channelslast import ChannelsLast

    from clfapp.models.callbacks import CPUBFloat16
    from clfapp.train import _precision_callbacks

    cbs = _precision_callbacks(precision, channels_last)
    assert [type(c) for c in cbs] == ([CPUBFloat16] if precision == "bf16" else []) + (
        [ChannelsLast] if channels_last else [])
    outputs, weights = _fit_recording(cbs)
    assert len(outputs) == 3 * 2   # 3 convolutions, training and validation passes
    if precision == "bf16":
        assert {o.dtype for o in outputs} == {torch.bfloat16}
    for t in outputs + weights[:1]:   # (the depthwise and 1x1 weights are both layouts at once)
        assert _nhwc(t) if channels_last else t.is_contiguous(), (t.shape, t.stride())
    for w in weights:
        assert w.is_contiguous(memory_format=torch.channels_last if channels_last
                               else torch.contiguous_format), (w.shape, w.stride())
