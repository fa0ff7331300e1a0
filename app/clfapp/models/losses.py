"""Loss registry: the names a recipe's [loss] name may use."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from ..errors import UsageError

MULTI_LABEL = ("bce", "focal_bce")
POS_WEIGHT_CAP = 50.0


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on logits, optionally focal (gamma > 0) and with per-label positive
    weights. Targets may be mixed label vectors (MixUp/CutMix): any value in [0, 1] works."""
    y_int = False  # fastai's MixUp then mixes targets instead of losses

    def __init__(self, gamma: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits, target):
        target = target.float()
        logits = logits.float()
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                                  pos_weight=self.pos_weight)
        if self.gamma:
            p = logits.sigmoid()
            p_true = p * target + (1 - p) * (1 - target)
            loss = loss * (1 - p_true).pow(self.gamma)
        return loss.mean()

    def activation(self, x):
        return torch.sigmoid(x)

    def decodes(self, x):
        return x > 0.5


def pos_weights(spec: str, y_train: np.ndarray | None) -> torch.Tensor | None:
    """"" → None; "auto" → negatives/positives of each label (capped); "a,b,..." → as given."""
    if not spec:
        return None
    if spec == "auto":
        pos = y_train.sum(axis=0).astype(float)
        w = (len(y_train) - pos) / np.maximum(pos, 1.0)
        return torch.tensor(np.clip(w, 1.0, POS_WEIGHT_CAP), dtype=torch.float32)
    try:
        w = [float(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"loss.pos_weight = {spec!r}: use 'auto' or numbers separated by commas")
    if y_train is not None and len(w) != y_train.shape[1]:
        raise UsageError(f"loss.pos_weight has {len(w)} values for {y_train.shape[1]} labels")
    return torch.tensor(w, dtype=torch.float32)


def make(cfg: LossConfig, multi_label: bool = False, y_train: np.ndarray | None = None):
    """The loss for `cfg`; "auto" is cross-entropy, or BCE for multi-label data."""
    from fastai.losses import CrossEntropyLossFlat, FocalLossFlat, LabelSmoothingCrossEntropyFlat

    name = cfg.name if cfg.name != "auto" else ("bce" if multi_label else "cross_entropy")
    if multi_label != (name in MULTI_LABEL):
        kind = "multi-label" if multi_label else "single-label"
        fit = "bce or focal_bce" if multi_label else "cross_entropy, label_smoothing or focal"
        raise UsageError(f"loss.name = {name!r} does not suit {kind} data; use {fit}")
    if name in MULTI_LABEL:
        return MultiLabelLoss(cfg.gamma if name == "focal_bce" else 0.0,
                              pos_weights(cfg.pos_weight, y_train))
    return {"cross_entropy": lambda: CrossEntropyLossFlat(),
            "label_smoothing": lambda: LabelSmoothingCrossEntropyFlat(eps=cfg.smoothing),
            "focal": lambda: FocalLossFlat(gamma=cfg.gamma)}[name]()
