"""train.ema: validation, the best epoch and the saved weights are the moving average's."""
import copy

import pytest
import torch
from fastai.callback.core import Callback
from fastai.test_utils import synth_learner

from clfapp.models.callbacks import KeepBest, WeightEMA


class SeenAtEpochEnd(Callback):
    """Copies the weights the model holds when KeepBest looks at them (order 56 < 57 < 58)."""
    order = 57

    def __init__(self):
        self.states = []

    def after_epoch(self):
        self.states.append(copy.deepcopy(self.learn.model.state_dict()))


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_validation_and_best_use_the_average_training_does_not():
    learn = synth_learner(n_trn=8, n_val=2, lr=0.1)
    ema, seen, keep = WeightEMA(0.9), SeenAtEpochEnd(), KeepBest("valid_loss")
    learn.fit(3, cbs=[ema, seen, keep])
    average = ema.ema.module.state_dict()
    # at the end of the last epoch the model held the average (KeepBest copies what it holds) ...
    assert _same(seen.states[-1], average)
    # ... and the training weights came back afterwards, which differ from the average
    assert not _same(learn.model.state_dict(), average)
    # the recorded valid_loss is the average's loss on the validation set
    with torch.no_grad():  # synth data: equal batches, so the mean of batch means
        batches = [torch.nn.functional.mse_loss(ema.ema.module(x), y) for x, y in learn.dls.valid]
    loss = torch.stack(batches).mean()
    assert float(learn.recorder.values[-1][1]) == pytest.approx(float(loss), rel=1e-4)


def test_average_warms_up_then_lags_the_weights():
    learn = synth_learner(n_trn=8, n_val=2, lr=0.1)
    ema = WeightEMA(0.99)
    learn.fit(1, cbs=[ema])
    # the first step copies the weights (decay 0), so the average is not the random start
    assert ema.step == len(learn.dls.train)
    assert ema.ema.get_decay(1) == 0.0 and 0 < ema.ema.get_decay(ema.step) < 0.99


def test_lr_finder_leaves_no_average():
    learn = synth_learner(n_trn=8, n_val=2)
    ema = WeightEMA(0.9)
    learn.add_cb(ema)
    import fastai.callback.schedule  # noqa: F401
    learn.lr_find(show_plot=False, num_it=5)
    assert ema.ema is None and ema.step == 0
