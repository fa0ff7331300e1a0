"""Optimizer registry: the names a recipe's train.opt may use, each one of fastai's own
optimizers (fastai.optimizer), so that:

- weight decay is decoupled, p <- p * (1 - lr * wd) before the step (fastai's `weight_decay`;
  PyTorch's SGD would add wd * p to the gradient instead, plain L2);
- normalization and bias parameters are not decayed: a fastai `Learner` (wd_bn_bias=False)
  marks them with state `do_wd = False`, which fastai's optimizers honour;
- the hyper-parameters (lr, mom, sqr_mom, eps, wd) live in `opt.hypers`, the very dicts the
  step reads, so every fastai scheduler reaches the step: fit_one_cycle's ParamScheduler and
  plain `ReduceLROnPlateau` alike (schedules.py needs no patch);
- fastai's `Lookahead` wraps any of them, and their `state_dict` (Lookahead's slow weights
  included) is what train/checkpoint.py saves and a resumed run loads.

fastai's step is per-parameter Python (fastai 2.8 has no foreach path) where torch's foreach
kernels do a tensor list at once; until 2026-12 adam, sgd and radam were torch's foreach
optimizers under a hand-written wrapper (decay, do_wd, Lookahead) for that. A whole training
step does not notice. Measured 2026-12-07 with `bench/optimizer_step.py --threads 2` (torch
2.14.1, fastai 2.8.12; an AMD EPYC with AVX-512 and AVX512-BF16, no AMX; 2 cores shared with
other jobs, so the variants alternate step by step and the figures are medians):
tf_efficientnet_lite0 at 128 px, bs 32, channels_last, forward + backward + step + zero_grad,
the former adam 0.595 s vs fastai's Adam 0.588 s under bf16 autocast (60 rounds; median of the
round-by-round ratios 0.996), 0.481 vs 0.480 s in fp32 (30 rounds; 1.000); the optimizer step
alone 12.6 vs 13.2 ms and 9.5 vs 9.7 ms (sgd 5.5 vs 5.0, radam 13.4 vs 12.2). fastai's Adam
costs about 0.1 % of a step more, far below the 5 % that would justify a wrapper of our own.

The registry: one function per name (`@register("radam")`), taking the run's `TrainConfig` and
returning fastai's `opt_func`. Its hyper-parameters come from the config only (`train.momentum`
is SGD's momentum and the Adam family's beta1, fastai's `mom`; `train.beta2` is `sqr_mom`;
`train.eps`; `train.wd`, which the Learner sets at every fit); the defaults there are fastai's.

- adam, adamw: one optimizer under two names. fastai's Adam already decays decoupled (AdamW);
  "adamw" lets a recipe say what a study said. torch's default betas are (0.9, 0.999): set
  `train.beta2 = 0.999` to match one.
- sgd: fastai's SGD, momentum `train.momentum`.
- radam: fastai's RAdam. (Until 2026-12 it was torch's, which adds eps before the bias
  correction where fastai adds it after: the two agree for 5 steps, within 1 % after.)
- ranger: fastai's `ranger`, RAdam inside Lookahead (k = `train.lookahead_k`, or fastai's 6
  when that is 0).
- lamb: fastai's Lamb.

Lookahead (Zhang et al. 2019, `train.lookahead_k` > 0, `train.lookahead_alpha`) around adam,
sgd, radam and lamb: fastai's `Lookahead`. Every k steps the slow weights move alpha of the way
to the fast ones, slow += alpha * (fast - slow), and the fast weights restart from them.
"""
from __future__ import annotations

from functools import partial

OPTIMIZERS: dict = {}


def register(*names: str):
    """Decorator: the function (TrainConfig → fastai opt_func) builds the optimizer `names`."""
    def add(fn):
        for name in names:
            OPTIMIZERS[name] = fn
        return fn
    return add


def _with_lookahead(opt_func, t):
    """fastai's optimizer `opt_func`, inside fastai's `Lookahead` when train.lookahead_k > 0."""
    if not t.lookahead_k:
        return opt_func
    from fastai.optimizer import Lookahead

    def lookahead(params, **kwargs):
        return Lookahead(opt_func(params, **kwargs), k=t.lookahead_k, alpha=t.lookahead_alpha)
    return lookahead


@register("adam", "adamw")
def _adam(t):
    from fastai.optimizer import Adam
    return _with_lookahead(partial(Adam, mom=t.momentum, sqr_mom=t.beta2, eps=t.eps), t)


@register("sgd")
def _sgd(t):
    from fastai.optimizer import SGD
    return _with_lookahead(partial(SGD, mom=t.momentum), t)


@register("radam")
def _radam(t):
    from fastai.optimizer import RAdam
    return _with_lookahead(partial(RAdam, mom=t.momentum, sqr_mom=t.beta2, eps=t.eps), t)


@register("ranger")
def _ranger(t):
    from fastai.optimizer import ranger
    k = {"k": t.lookahead_k} if t.lookahead_k else {}   # else fastai's k = 6
    return partial(ranger, mom=t.momentum, sqr_mom=t.beta2, eps=t.eps,
                   alpha=t.lookahead_alpha, **k)


@register("lamb")
def _lamb(t):
    from fastai.optimizer import Lamb
    return _with_lookahead(partial(Lamb, mom=t.momentum, sqr_mom=t.beta2, eps=t.eps), t)


def make(name: str, train=None):
    """The optimizer factory (fastai's `opt_func`) for a recipe's train.opt name, with the
    hyper-parameters of `train` (a TrainConfig; None = the defaults)."""
    from ..config import TrainConfig, _suggest
    from ..errors import UsageError

    if name not in OPTIMIZERS:
        raise UsageError(f"train.opt = {name!r} is not an optimizer{_suggest(name, OPTIMIZERS)}")
    return OPTIMIZERS[name](train if train is not None else TrainConfig())
