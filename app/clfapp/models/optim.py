"""Optimizer registry: the names a recipe's train.opt may use.

adam and sgd are PyTorch's own multi-tensor ("foreach") AdamW and SGD, wrapped so that they
behave as fastai's `Adam` and `SGD` do:

- fastai's hyper-parameters: Adam betas (0.9, 0.99) and eps 1e-5 (not PyTorch's 0.999, 1e-8);
  SGD momentum 0.9;
- decoupled weight decay for both, p <- p * (1 - lr * wd) before the step (fastai's
  `weight_decay`; PyTorch's SGD would add wd * p to the gradient instead, plain L2);
- no decay of normalization and bias parameters: a fastai `Learner` (wd_bn_bias=False) marks
  them with state `do_wd = False`, which fastai's own optimizers honour and PyTorch's ignore.
  (timm's `param_groups_weight_decay` exempts every 1-d tensor by splitting each group in two;
  here fastai's groups stay whole, because `freeze_to(-1)` freezes all groups but the last.)

Why not fastai's own `Adam`: its step is per-parameter Python; torch's foreach kernels do a
tensor list at once. Measured 2026-11-23 (`bench/optimizer_step.py --repeats 100`: 2 threads,
torch 2.14.1, an AMD EPYC with AVX2 and no AVX-512/AMX, tf_efficientnet_lite0 with 12 classes,
3.39 M parameters in 149 tensors, two fastai groups, fixed gradients from one real backward
pass; median of 100 steps after 3 warm-up steps, the optimizers taking turns): fastai `Adam`
13.6 ms per step, this `adam` 11.2 ms (plain foreach AdamW 11.1 ms: the decay costs nothing
measurable), this `sgd` 4.9 ms. A modest gain, not the 20x once noted here (366 vs 18 ms),
which did not reproduce; under load from other processes both medians rose 1.5-2x.

The registry: one function per name (`@register("radam")`), taking the run's `TrainConfig` and
returning fastai's `opt_func`. Its hyper-parameters come from the config only (`train.momentum`
is SGD's momentum and the Adam family's beta1, fastai's `mom`; `train.beta2`, `train.eps`,
`train.wd`); the defaults there are fastai's, so `adam` and `sgd` step as before.

- adam, adamw: one optimizer under two names. fastai's Adam already decays decoupled (AdamW);
  "adamw" lets a recipe say what a study said. torch's default betas are (0.9, 0.999): set
  `train.beta2 = 0.999` to match one.
- radam: torch's foreach `RAdam` (weight_decay=0) under the same `DecoupledWD` wrapper, which
  decays decoupled and leaves norm/bias alone. Not torch's own `decoupled_weight_decay=True`: it
  decays every parameter, norm and bias too (it cannot see fastai's do_wd flags). Not fastai's
  `RAdam`: correct (it honours do_wd) but per-parameter Python, as fastai's Adam above; and
  radam then takes the same code path, Lookahead included, as adam and sgd.
- ranger, lamb: fastai's own (they honour do_wd). ranger is fastai's RAdam inside fastai's
  `Lookahead` (k = `train.lookahead_k`, or fastai's 6 when that is 0).

Lookahead (Zhang et al. 2019, `train.lookahead_k` > 0, `train.lookahead_alpha`): every k steps
the slow weights move alpha of the way to the fast ones, slow += alpha * (fast - slow), and
the fast weights restart from them. For the wrapped torch optimizers it is part of
`DecoupledWD` (two foreach kernels per group at a sync); for fastai's optimizers it is fastai's
`Lookahead`. fastai's `Lookahead` cannot wrap an `OptimWrapper`: it sets hyper-parameters
(lr, mom) in `hypers`, which an `OptimWrapper` computes afresh from torch's param groups on
every read, so the schedules would silently stop reaching the optimizer.
"""
from __future__ import annotations

from functools import lru_cache, partial

WD_KEY = "decoupled_wd"   # the torch param-group key that holds fastai's `wd`


def _hp_map() -> dict:
    """fastai's PyTorch name map, except that `wd` is ours: torch's own weight_decay stays 0."""
    from fastai.optimizer import pytorch_hp_map
    return {**pytorch_hp_map, "weight_decay": "torch_weight_decay", WD_KEY: "wd"}


def _groups(params, wd: float) -> list[dict]:
    """fastai's parameter groups (a splitter's list of lists, or one flat list) as torch
    param-group dicts, each carrying its own decoupled wd, so the schedulers can set it."""
    from fastcore.foundation import L

    params = list(params)
    lists = [list(g) for g in params] if isinstance(params[0], (list, tuple, L)) else [params]
    return [{"params": g, WD_KEY: wd} for g in lists]


@lru_cache(maxsize=None)
def _wrapper_class():
    """Defined lazily so that importing clfapp.optim does not import torch or fastai."""
    import torch
    from fastai.optimizer import OptimWrapper

    class DecoupledWD(OptimWrapper):
        """A torch optimizer (built with weight_decay=0) under fastai's `OptimWrapper`, plus
        fastai's decoupled weight decay that skips parameters whose state says do_wd=False,
        and optionally Lookahead (k > 0)."""

        def __init__(self, params, opt, wd: float = 0.0, lookahead_k: int = 0,
                     lookahead_alpha: float = 0.5, **kwargs):
            super().__init__(_groups(params, wd), opt=opt, hp_map=_hp_map(), convert_groups=False,
                             weight_decay=0.0, **kwargs)
            self.lookahead_k, self.lookahead_alpha = lookahead_k, lookahead_alpha
            self._reset_lookahead()

        def _reset_lookahead(self) -> None:
            self.lookahead_count, self.slow_weights = 0, None

        @torch.no_grad()
        def decay(self) -> None:
            """p <- p * (1 - lr * wd) for every parameter about to be stepped (it has a grad)
            unless the Learner marked it do_wd=False; one foreach kernel per group."""
            for pg in self.opt.param_groups:
                lr, wd = pg["lr"], pg[WD_KEY]
                if wd == 0:
                    continue
                ps = [p for p in pg["params"]
                      if p.grad is not None and self.state.get(p, {}).get("do_wd", True)]
                if ps:
                    torch._foreach_mul_(ps, 1 - lr * wd)

        @torch.no_grad()
        def lookahead(self) -> None:
            """Every k-th step: slow += alpha * (fast - slow); fast <- slow."""
            self.lookahead_count += 1
            if self.lookahead_count % self.lookahead_k:
                return
            for slow, pg in zip(self.slow_weights, self.opt.param_groups):
                torch._foreach_lerp_(slow, pg["params"], self.lookahead_alpha)
                torch._foreach_copy_(pg["params"], slow)

        def step(self, closure=None):
            if self.lookahead_k and self.slow_weights is None:   # the weights before step 1
                self.slow_weights = [[p.detach().clone() for p in pg["params"]]
                                     for pg in self.opt.param_groups]
            self.decay()
            loss = self.opt.step(closure)
            if self.lookahead_k:
                self.lookahead()
            return loss

        def clear_state(self) -> None:
            super().clear_state()
            self._reset_lookahead()

        def state_dict(self) -> dict:
            sd = self.opt.state_dict()
            if self.lookahead_k:
                sd["lookahead"] = {"count": self.lookahead_count, "slow": self.slow_weights}
            return sd

        def load_state_dict(self, sd: dict) -> None:
            sd = dict(sd)
            la = sd.pop("lookahead", None)
            if la is not None:
                self.lookahead_count, self.slow_weights = la["count"], la["slow"]
            self.opt.load_state_dict(sd)

    return DecoupledWD


OPTIMIZERS: dict = {}


def register(*names: str):
    """Decorator: the function (TrainConfig → fastai opt_func) builds the optimizer `names`."""
    def add(fn):
        for name in names:
            OPTIMIZERS[name] = fn
        return fn
    return add


def _torch(opt_cls, t, **hypers):
    """A torch foreach optimizer under `DecoupledWD`, with Lookahead when train.lookahead_k."""
    return partial(_wrapper_class(), opt=opt_cls, foreach=True, lookahead_k=t.lookahead_k,
                   lookahead_alpha=t.lookahead_alpha, **hypers)


def _fastai_lookahead(opt_func, t):
    """fastai's own optimizer, inside fastai's `Lookahead` when train.lookahead_k > 0."""
    if not t.lookahead_k:
        return opt_func
    from fastai.optimizer import Lookahead

    def lookahead(params, **kwargs):
        return Lookahead(opt_func(params, **kwargs), k=t.lookahead_k, alpha=t.lookahead_alpha)
    return lookahead


@register("adam", "adamw")
def _adam(t):
    import torch
    return _torch(torch.optim.AdamW, t, betas=(t.momentum, t.beta2), eps=t.eps)


@register("sgd")
def _sgd(t):
    import torch
    return _torch(torch.optim.SGD, t, momentum=t.momentum)


@register("radam")
def _radam(t):
    import torch
    return _torch(torch.optim.RAdam, t, betas=(t.momentum, t.beta2), eps=t.eps)


@register("ranger")
def _ranger(t):
    from fastai.optimizer import ranger
    k = {"k": t.lookahead_k} if t.lookahead_k else {}   # else fastai's k = 6
    return partial(ranger, mom=t.momentum, sqr_mom=t.beta2, eps=t.eps,
                   alpha=t.lookahead_alpha, **k)


@register("lamb")
def _lamb(t):
    from fastai.optimizer import Lamb
    return _fastai_lookahead(partial(Lamb, mom=t.momentum, sqr_mom=t.beta2, eps=t.eps), t)


def make(name: str, train=None):
    """The optimizer factory (fastai's `opt_func`) for a recipe's train.opt name, with the
    hyper-parameters of `train` (a TrainConfig; None = the defaults)."""
    from ..config import TrainConfig, _suggest
    from ..errors import UsageError

    if name not in OPTIMIZERS:
        raise UsageError(f"train.opt = {name!r} is not an optimizer{_suggest(name, OPTIMIZERS)}")
    return OPTIMIZERS[name](train if train is not None else TrainConfig())
