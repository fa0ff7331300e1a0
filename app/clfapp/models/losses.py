"""Loss registry: the names a recipe's [loss] name may use.

Each loss is one function registered under its name (`@register("focal")`); `make` looks the
name up, refuses a name it does not know (with the close matches) and one that does not suit
the data (single- or multi-label), and hands the builder the config and the per-class weights.

Single-label (softmax) losses, all fastai's, flattened, with fastai's activation and decodes:

- cross_entropy: fastai's `CrossEntropyLossFlat` (torch's cross-entropy).
- label_smoothing: fastai's `LabelSmoothingCrossEntropyFlat`:
  eps/C * mean_i(-sum_c log p_ic) + (1 - eps) * NLL, with `loss.smoothing` as eps.
- focal: fastai's `FocalLossFlat` (Lin et al. 2017), (1 - p_t)^gamma * CE per image, plus the
  paper's alpha: alpha_t * (1 - p_t)^gamma * CE. In a softmax loss only the true class has a
  term, so a single `loss.alpha` scales every image alike (alpha_t = alpha; the wood study's
  alpha = 0.5 halves the loss, which Adam-family optimizers barely notice); the per-class alpha_c
  of the multi-class variant is `loss.class_weights`. fastai's `FocalLoss` takes class weights
  too but computes p_t as exp(-weighted CE), which is not the probability once a weight is not 1;
  here p_t comes from the unweighted CE.

Class weights (`loss.class_weights`): "" none; "auto" w_c = max(n) / n_c from the class counts
of the TRAINING split (the plants study; a class with no training image counts as 1); or one
number per class in the model's class order. With weights, each loss is the weighted mean
sum_i w_{y_i} l_i / sum_i w_{y_i} (torch's convention for a weighted cross-entropy, so weights
change the balance between classes, not the loss's scale); label smoothing weights its NLL term
only (fastai's `LabelSmoothingCrossEntropy` with `weight`): the uniform term is a regulariser
on every image alike.

Multi-label (sigmoid) losses: bce, and focal_bce with gamma and the paper's alpha (alpha on each
positive label's term, 1 - alpha on each negative's); per-label positive weights are
`loss.pos_weight`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig, _suggest
from ..errors import UsageError

POS_WEIGHT_CAP = 50.0


@dataclass(frozen=True)
class LossSpec:
    build: Callable[[LossConfig, "torch.Tensor | None"], nn.Module]
    """builder(cfg, weights): weights are the class weights (single-label) or the positive
    weights (multi-label), None when there are none."""
    multi_label: bool


LOSSES: dict[str, LossSpec] = {}


def register(name: str, multi_label: bool = False):
    """Decorator: the function builds the loss a recipe names `name`."""
    def add(fn):
        LOSSES[name] = LossSpec(fn, multi_label)
        return fn
    return add


# ---------------------------------------------------------------------------------------------
# the loss modules


class FocalLoss(nn.Module):
    """alpha * w_y * (1 - p_t)^gamma * CE, p_t from the unweighted CE; the weighted mean over
    the batch (plain mean without class weights). alpha < 0 means 1 (off)."""

    def __init__(self, gamma: float = 2.0, alpha: float = -1.0, weight: torch.Tensor | None = None,
                 reduction: str = "mean"):
        super().__init__()
        self.gamma, self.alpha, self.reduction = gamma, alpha, reduction
        self.register_buffer("weight", weight)

    def forward(self, inp, targ):
        ce = F.cross_entropy(inp, targ, reduction="none")
        loss = (1 - torch.exp(-ce)).pow(self.gamma) * ce
        if self.alpha >= 0:
            loss = self.alpha * loss
        if self.reduction == "none":
            return loss if self.weight is None else loss * self.weight[targ]
        if self.weight is None:
            return loss.mean() if self.reduction == "mean" else loss.sum()
        w = self.weight[targ]
        return (w * loss).sum() / (w.sum() if self.reduction == "mean" else 1)


@lru_cache(maxsize=None)
def _flat_classes():
    """fastai's flat losses around our modules; defined lazily (as optim.py's wrapper) so that
    importing this module does not import fastai."""
    from fastai.losses import BaseLoss, FocalLossFlat, LabelSmoothingCrossEntropy, \
        LabelSmoothingCrossEntropyFlat

    class AlphaFocalLossFlat(FocalLossFlat):
        """fastai's FocalLossFlat (flattening, softmax activation, argmax decodes) around
        `FocalLoss` above, which adds alpha and a correct p_t under class weights."""

        def __init__(self, gamma: float = 2.0, alpha: float = -1.0, weight=None):
            BaseLoss.__init__(self, FocalLoss, gamma=gamma, alpha=alpha, weight=weight, axis=-1)

    class BufferedSmoothing(LabelSmoothingCrossEntropy):
        """fastai's, with `weight` a buffer: the Learner then moves it to the GPU with the loss
        (fastai keeps it a plain attribute, left on the CPU)."""

        def __init__(self, eps: float = 0.1, weight=None):
            super().__init__(eps=eps)
            del self.weight
            self.register_buffer("weight", weight)

    class WeightedSmoothingFlat(LabelSmoothingCrossEntropyFlat):
        def __init__(self, eps: float = 0.1, weight=None):
            BaseLoss.__init__(self, BufferedSmoothing, eps=eps, weight=weight, axis=-1)

    return AlphaFocalLossFlat, WeightedSmoothingFlat


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on logits, optionally focal (gamma > 0, alpha >= 0) and with
    per-label positive weights. Targets may be mixed label vectors (MixUp/CutMix): any value in
    [0, 1] works."""
    y_int = False  # fastai's MixUp then mixes targets instead of losses

    def __init__(self, gamma: float = 0.0, pos_weight: torch.Tensor | None = None,
                 alpha: float = -1.0):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha
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
        if self.alpha >= 0:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return loss.mean()

    def activation(self, x):
        return torch.sigmoid(x)

    def decodes(self, x):
        return x > 0.5


# ---------------------------------------------------------------------------------------------
# the registry


@register("cross_entropy")
def _cross_entropy(cfg: LossConfig, weight):
    from fastai.losses import CrossEntropyLossFlat
    return CrossEntropyLossFlat(weight=weight)


@register("label_smoothing")
def _label_smoothing(cfg: LossConfig, weight):
    return _flat_classes()[1](cfg.smoothing, weight)


@register("focal")
def _focal(cfg: LossConfig, weight):
    return _flat_classes()[0](cfg.gamma, cfg.alpha, weight)


@register("bce", multi_label=True)
def _bce(cfg: LossConfig, pos_weight):
    return MultiLabelLoss(0.0, pos_weight)


@register("focal_bce", multi_label=True)
def _focal_bce(cfg: LossConfig, pos_weight):
    return MultiLabelLoss(cfg.gamma, pos_weight, cfg.alpha)


FOCAL = ("focal", "focal_bce")   # the losses that read loss.alpha (and loss.gamma)


# ---------------------------------------------------------------------------------------------
# weights


def _numbers(key: str, spec: str, n: int | None, what: str) -> list[float]:
    try:
        w = [float(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"{key} = {spec!r}: use 'auto' or numbers separated by commas")
    if n is not None and len(w) != n:
        raise UsageError(f"{key} has {len(w)} values for {n} {what}; give one per {what[:-1]}")
    if any(not np.isfinite(x) or x < 0 for x in w):
        raise UsageError(f"{key} = {spec!r}: weights must be finite and >= 0")
    return w


def pos_weights(spec: str, y_train: np.ndarray | None) -> torch.Tensor | None:
    """"" → None; "auto" → negatives/positives of each label (capped); "a,b,..." → as given."""
    if not spec:
        return None
    if spec == "auto":
        pos = y_train.sum(axis=0).astype(float)
        w = (len(y_train) - pos) / np.maximum(pos, 1.0)
        return torch.tensor(np.clip(w, 1.0, POS_WEIGHT_CAP), dtype=torch.float32)
    n = y_train.shape[1] if y_train is not None else None
    return torch.tensor(_numbers("loss.pos_weight", spec, n, "labels"), dtype=torch.float32)


def class_weights(spec: str, y_train: np.ndarray | None, n_classes: int | None) -> torch.Tensor | None:
    """"" → None; "auto" → max(n) / n_c from the training labels (class indices; a class absent
    from them counts as 1); "a,b,..." → as given, one per class in the model's order."""
    if not spec:
        return None
    if spec == "auto":
        if y_train is None or n_classes is None:
            raise ValueError("class_weights('auto') needs the training labels and the class count")
        n = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=n_classes).astype(float)
        return torch.tensor(n.max() / np.maximum(n, 1.0), dtype=torch.float32)
    return torch.tensor(_numbers("loss.class_weights", spec, n_classes, "classes"), dtype=torch.float32)


def class_weights_of(loss) -> torch.Tensor | None:
    """The class-weight tensor a single-label loss built by `make` applies (None if none)."""
    w = getattr(getattr(loss, "func", None), "weight", None)
    return w.detach().cpu() if isinstance(w, torch.Tensor) else None


# ---------------------------------------------------------------------------------------------


def resolve_name(cfg: LossConfig, multi_label: bool) -> str:
    """The registered name `cfg.name` stands for; "auto" is cross_entropy, or bce for
    multi-label data."""
    name = cfg.name if cfg.name != "auto" else ("bce" if multi_label else "cross_entropy")
    if name not in LOSSES:
        raise UsageError(f"loss.name = {name!r} is not a loss{_suggest(name, ['auto', *LOSSES])}")
    return name


def make(cfg: LossConfig, multi_label: bool = False, y_train: np.ndarray | None = None,
         n_classes: int | None = None):
    """The loss for `cfg`. `y_train`: the training split's targets (class indices, or the 0/1
    label matrix for multi-label data), which "auto" weights are computed from; `n_classes`:
    the model's class count (single-label), which a weight list must match."""
    name = resolve_name(cfg, multi_label)
    spec = LOSSES[name]
    if spec.multi_label != multi_label:
        kind = "multi-label" if multi_label else "single-label"
        fit = ", ".join(n for n, s in LOSSES.items() if s.multi_label == multi_label)
        raise UsageError(f"loss.name = {name!r} does not suit {kind} data; use {fit}")
    if cfg.alpha >= 0 and name not in FOCAL:
        raise UsageError(f"loss.alpha is set but loss.name is {name!r}; alpha is for "
                         f"{' and '.join(FOCAL)} (per-class weights: loss.class_weights)")
    if multi_label:
        if cfg.class_weights:
            raise UsageError("loss.class_weights is for single-label data; multi-label runs "
                             "weigh each label's positives with loss.pos_weight")
        return spec.build(cfg, pos_weights(cfg.pos_weight, y_train))
    if cfg.pos_weight:
        raise UsageError("loss.pos_weight is for multi-label data; single-label runs use "
                         "loss.class_weights")
    return spec.build(cfg, class_weights(cfg.class_weights, y_train, n_classes))
