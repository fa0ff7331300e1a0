"""Optimizer registry: the names a recipe's train.opt may use (fastai optimizers)."""
from __future__ import annotations


def make(name: str):
    from fastai.optimizer import SGD, Adam, Lamb, ranger
    return {"adam": Adam, "sgd": SGD, "ranger": ranger, "lamb": Lamb}[name]
