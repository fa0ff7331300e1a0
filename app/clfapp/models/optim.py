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
        fastai's decoupled weight decay that skips parameters whose state says do_wd=False."""

        def __init__(self, params, opt, wd: float = 0.0, **kwargs):
            super().__init__(_groups(params, wd), opt=opt, hp_map=_hp_map(), convert_groups=False,
                             weight_decay=0.0, **kwargs)

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

        def step(self, closure=None):
            self.decay()
            return self.opt.step(closure)

    return DecoupledWD


def make(name: str):
    """The optimizer factory (fastai's `opt_func`) for a recipe's train.opt name."""
    if name in ("ranger", "lamb"):
        from fastai.optimizer import Lamb, ranger
        return {"ranger": ranger, "lamb": Lamb}[name]   # fastai's own: they honour do_wd
    import torch

    wrapper = _wrapper_class()
    return {
        "adam": partial(wrapper, opt=torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5, foreach=True),
        "sgd": partial(wrapper, opt=torch.optim.SGD, momentum=0.9, foreach=True),
    }[name]
