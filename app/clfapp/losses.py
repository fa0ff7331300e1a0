"""Loss registry: the names a recipe's [loss] name may use."""
from __future__ import annotations

from .config import LossConfig


def _cross_entropy(cfg: LossConfig):
    from fastai.losses import CrossEntropyLossFlat
    return CrossEntropyLossFlat()


def _label_smoothing(cfg: LossConfig):
    from fastai.losses import LabelSmoothingCrossEntropyFlat
    return LabelSmoothingCrossEntropyFlat(eps=cfg.smoothing)


def _focal(cfg: LossConfig):
    from fastai.losses import FocalLossFlat
    return FocalLossFlat(gamma=cfg.gamma)


LOSSES = {"cross_entropy": _cross_entropy, "label_smoothing": _label_smoothing, "focal": _focal}


def make(cfg: LossConfig):
    return LOSSES[cfg.name](cfg)
