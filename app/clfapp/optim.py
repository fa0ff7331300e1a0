"""Optimizer registry: the names a recipe's train.opt may use.

adam and sgd are PyTorch's own (multi-tensor "foreach" kernels) wrapped for fastai's schedules:
fastai's pure-Python Adam step costs ~20x more per batch on a CPU (366 vs 18 ms for
tf_efficientnet_lite0 on 2 cores), a tenth of a whole training epoch. PyTorch's AdamW
decouples weight decay as fastai's Adam does; unlike fastai it also decays norm and bias
weights, which at clfapp's default wd (0.01) moves them by 1e-5 of their size per step.
"""
from __future__ import annotations

from functools import partial


def make(name: str):
    import torch
    from fastai.optimizer import Lamb, OptimWrapper, ranger

    return {
        # fastai's Adam defaults (sqr_mom 0.99, eps 1e-5), not PyTorch's (0.999, 1e-8).
        "adam": partial(OptimWrapper, opt=torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5,
                        foreach=True),
        "sgd": partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9, foreach=True),
        "ranger": ranger,
        "lamb": Lamb,
    }[name]
