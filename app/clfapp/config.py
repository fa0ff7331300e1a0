"""The run configuration: the one place every default lives.

A recipe (TOML) is read into these dataclasses, command-line overrides are applied on top, and
the result is validated and frozen. Everything else in clfapp reads a `Config`; nothing else
holds a default of its own.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """Dataset folder (or CSV file). Relative paths are read from the current directory."""
    labels: str = "folder"
    """Where labels come from: "folder" (ImageNet layout), "csv:FILE", or "name:REGEX" (first
    group of REGEX matched against the file name). The CSV has fname plus `label` (one class),
    `labels` (multi-label: a set separated by `label_delim`, empty allowed), or one 0/1 column
    per label (multi-label)."""
    label_delim: str = " "
    """Separator of the label sets in a multi-label CSV."""
    split: str = "auto"
    """auto (folders if present, else stratified; iterative for multi-label) | folder |
    stratified | iterative | random."""
    valid_pct: float = 0.2
    test_pct: float = 0.0
    """Fraction held out as a test split (0 = none), for datasets without split folders: same
    hash rule as valid_pct (an item's hash u < test_pct → test, then < test_pct + valid_pct →
    valid); measured once at the end of fit, never trained on. Plants study: 0.2 + 0.1."""
    seed: int = 42
    """Seed of the train/valid split, apart from train.seed: runs trained with different seeds
    (an ensemble's members) then share one split, and none trains on another's validation
    images."""
    splits_from: str = ""
    """A run folder (or its splits.csv) whose train/valid/test assignment this run reuses, item
    by item (matched by path); items it does not list are split by the usual rule."""
    size: int = 224
    """Square input size in pixels."""
    test_size: int = 0
    """Input size predict and evaluate use (model.json inference.size). Given, it is the only
    size; 0 = auto: a formula proposes data.size scaled by how much training's crops and zoom
    enlarged objects (infer/test_size.py, FixRes; data.size itself without crops), and the end
    of fit measures the model at it and at data.size on validation and ships another than the
    proposal only when it measures better with confidence (infer/choice.py)."""
    resize: str = "squish"
    """How images are brought to `size`: squish | crop (centre) | pad."""
    sample: str = ""
    """Name of an embedded dataset (`clfapp data sample NAME`) made at `path` when missing."""
    cache: str = "auto"
    """The on-disk image cache (data/cache.py; `clfapp data prepare` builds it ahead): auto
    (used when one exists for these files, built when the data is not small:
    IMAGE_CACHE_MIN_BYTES) | on (always built and used) | off (decode into memory)."""


@dataclass(frozen=True)
class AugConfig:
    """Arguments of fastai's `aug_transforms`, applied to training batches only."""
    enabled: bool = True
    flip: bool = True
    flip_vert: bool = False
    max_rotate: float = 10.0
    min_zoom: float = 1.0
    max_zoom: float = 1.1
    max_lighting: float = 0.2
    max_warp: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75
    min_scale: float = 1.0
    """Random-resized-crop lower bound on the area kept (1.0 = off)."""
    mixup: float = 0.0
    """MixUp's Beta(alpha, alpha) parameter (0 = off). Multi-label targets are mixed too."""
    cutmix: float = 0.0
    """CutMix's Beta(alpha, alpha) parameter (0 = off); labels mixed by patch area."""
    saturation: float = 0.0
    """fastai's `Saturation`: scale saturation by up to this much, in [0, 1) (0 = off)."""
    hue: float = 0.0
    """fastai's `Hue`: shift hue by up to about this fraction of the colour circle, [0, 1)
    (0 = off)."""
    brightness: float = 0.0
    """fastai's `Brightness`, its own range in [0, 1) (0 = off); on top of `max_lighting`'s."""
    contrast: float = 0.0
    """fastai's `Contrast`, its own range in [0, 1) (0 = off); on top of `max_lighting`'s.
    The four colour knobs fire with probability `p_lighting`, on training batches only."""
    tta: bool = False
    """true: TTA is proposed, and dropped when no TTA measures better with confidence. The end
    of fit measures the saved model with and without it on validation (infer/choice.py) and
    the bundle records the choice (model.json inference.tta) as what every command does
    unless told --tta / --no-tta. TTA: the mean over the image and every combination of the mirrors it was
    trained with (tta_flips; with flip_vert the 8 turns and mirrors of the square).
    false: never TTA by default."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "tf_efficientnet_lite0"
    """Any timm or torchvision architecture name."""
    pretrained: bool = True
    weights: str = ""
    """A weights file (safetensors or a torch state_dict) for the backbone; overrides lookup."""
    dropout: float = 0.5
    """Dropout of fastai's head (its `ps`)."""
    concat_pool: bool = True
    head_hidden: str = ""
    """Hidden sizes of fastai's head (its `lin_ftrs`), e.g. "512" or "1024,256"; "" = fastai's
    default (one hidden layer of 512); "none" = no hidden layer (pooled features → classes)."""
    cut_blocks: int = 0
    """Drop this many of the body's last blocks (0 = none): torchvision densenets (dense
    blocks, 1-3) and timm models with feature stages (resnets, efficientnets, convnexts, ...)."""


@dataclass(frozen=True)
class LossConfig:
    name: str = "auto"
    """auto (cross_entropy, or bce for multi-label) | cross_entropy | label_smoothing | focal |
    bce | focal_bce."""
    smoothing: float = 0.1
    gamma: float = 2.0
    pos_weight: str = ""
    """Multi-label positive weights: "" (none), "auto" (negatives/positives per label, from the
    training split, at most 50), or one number per label separated by commas."""
    alpha: float = -1.0
    """Focal loss's alpha (focal, focal_bce): focal_bce weighs positive terms by alpha and
    negative ones by 1 - alpha; focal (softmax) scales the loss by alpha (per-class alphas are
    `class_weights`). -1 = off (torchvision's convention)."""
    class_weights: str = ""
    """Single-label class weights, combined with cross_entropy, label_smoothing or focal: ""
    (none), "auto" (max(n) / n_c from the training split's class counts), or one number per
    class, in the model's class order, separated by commas."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    """Epochs with the whole net trainable (after the frozen ones)."""
    freeze_epochs: int = 1
    """Epochs training the head alone first (pretrained backbones only)."""
    lr: float | str = 2e-3
    """Peak learning rate, or "auto" to run the LR finder and take its valley."""
    bs: int = 64
    wd: float = 0.01
    opt: str = "adam"
    """adam (= adamw: decoupled weight decay, as fastai's Adam) | sgd | radam | ranger | lamb."""
    momentum: float = 0.9
    """SGD's momentum and the Adam family's beta1 (fastai's `mom`). fit_one_cycle cycles it
    through 0.95-0.85-0.95 as fastai does, overriding this value."""
    beta2: float = 0.99
    """The Adam family's second-moment decay (fastai's `sqr_mom`; torch's default is 0.999)."""
    eps: float = 1e-5
    """The Adam family's epsilon (fastai's default; torch's is 1e-8)."""
    lookahead_k: int = 0
    """Lookahead (Zhang et al. 2019) around the optimizer: sync every k steps (0 = off)."""
    lookahead_alpha: float = 0.5
    """Lookahead's slow-weight step: slow += alpha * (fast - slow) at each sync."""
    seed: int = 42
    """Seeds the initial weights, the augmentation and the batch order (train/reproducible.py);
    the split has its own, data.seed."""
    deterministic: bool = False
    """Bit-for-bit reruns (--deterministic): torch's deterministic algorithms, and a resumed
    run keeps the thread count it started with (train/reproducible.py)."""
    monitor: str = "auto"
    """Metric that picks the best epoch, which the run ends with: auto (accuracy, or f1_micro
    for multi-label) | accuracy | f1_macro | f1_micro | valid_loss."""
    early_stop: int = 0
    """Stop after this many epochs without improvement of `monitor` (0 = off)."""
    precision: str = "auto"
    """auto (bf16 on CPUs with native bf16, else fp32) | bf16 | fp32."""
    channels_last: bool = True
    """The model in channels_last memory format (fastai's ChannelsLast callback), and so every
    activation from the first convolution on: faster convolutions on CPUs (oneDNN) and GPUs.
    Its kernels round differently from NCHW's, so two runs that differ only in it drift apart
    in the last digits."""
    progressive: float = 1.0
    """Progressive resizing (train/progressive.py): training batches start at this fraction of
    data.size (the frozen phase throughout) and grow to the full size by 3/4 of the main phase;
    validation is always at full size. 1 = off."""
    ema: float = 0.0
    """Exponential moving average of the weights (models/callbacks.py WeightEMA): the decay
    ceiling, e.g. 0.999; 0 = off. Validation, the best-epoch choice and the saved model use
    the averaged weights. The decay warms up (timm's ModelEmaV3, power 2/3), so a short run
    averages over its last ~10% of steps rather than its untrained start."""
    workers: int = 0
    """DataLoader worker processes. Images are decoded once and held in memory, so 0 is fastest."""
    schedule: str = "one_cycle"
    """LR schedule of the main phase (train/schedules.py; a pretrained model's frozen phase is
    always one-cycle): one_cycle | flat_cos | plateau | sgdr."""
    moms: str = ""
    """one_cycle's momentum cycle "start,low,end", e.g. "0.95,0.85,0.95" ("" = fastai's)."""
    plateau_monitor: str = "valid_loss"
    """plateau: the figure watched (auto = train.monitor) | valid_loss | train_loss | accuracy |
    f1_macro | f1_micro."""
    plateau_patience: int = 3
    """plateau: epochs without improvement before the LR is cut."""
    plateau_factor: float = 0.1
    """plateau: the LR is multiplied by this at each cut."""
    sgdr_cycles: int = 0
    """sgdr: cosine cycles; 0 = as many whole cycles as fit in `epochs`. The run's epoch count
    is the cycles' total, cycle_len * (1 + mult + mult^2 + ...), not the recipe's `epochs`;
    epochs given on the command line refit the cycles to them (fit_sgdr_to_epochs)."""
    sgdr_cycle_len: int = 1
    """sgdr: epochs of the first cycle."""
    sgdr_mult: int = 2
    """sgdr: each cycle this many times longer than the one before (1 = equal cycles)."""
    freeze: str = "frozen_then_full"
    """What trains after a pretrained model's frozen phase: frozen_then_full (everything) |
    head_only (the body never unfreezes) | last_fraction (the body's last `unfreeze_fraction`
    of layers, at `unfreeze_lr_mult` x lr)."""
    train_bn: bool = False
    """Frozen layers' norm layers (BatchNorm) train too: fastai's train_bn, its default. Off,
    a frozen body gets no gradients at all, so a frozen-phase step is forward-only through it:
    5.3x cheaper for tf_efficientnet_lite0 at 128 px on a 2-core CPU (bench/epoch_speed.py).
    The norm layers still use and track batch statistics in either case."""
    frozen_stride: int = 0
    """frozen_then_full: when the body unfreezes, its first layers, those whose outputs are
    at most this many times smaller than the input, stay frozen (train/schedules.py
    early_layers; 0 = none). At 4 that is the stem and first stage of most CNNs (detectron2's
    FREEZE_AT = 2): generic edge and colour filters, where a step's backward pass costs most
    (full-resolution maps). A pretrained body only."""
    lr_mult: float = 100.0
    """frozen_then_full, after the frozen phase: discriminative LRs, fastai's slice(lr/lr_mult,
    lr) over the parameter groups (fine_tune's lr_mult; 1 = one LR for all)."""
    unfreeze_fraction: float = 0.3
    """last_fraction: the share of the body's layers (modules holding weights) unfrozen."""
    unfreeze_lr_mult: float = 0.1
    """last_fraction: the unfrozen body layers train at this times the head's LR."""
    tensorboard: bool = False
    """Also log each epoch's losses, metrics and LR for TensorBoard in RUN/tensorboard/
    (`tensorboard --logdir runs`); needs the tensorboard package: pip install clfapp[tb]."""
    budget: str = ""
    """Wall-time budget of the whole `fit` command ("" = none): seconds ("900") or a duration
    ("90s", "15m", "1h30m", "2h"). The epochs are planned from the measured speed so the run
    ends within it (train/budget.py); the budget is a ceiling: the recipe's epochs are kept
    when they fit (ask for more epochs to fill it)."""
    folds: int = 0
    """k-fold cross-validation (`fit --folds K`, train/kfold.py): K models, each trained on
    all but one of K disjoint folds of the training split, in RUN/fold-1 ... RUN/fold-K, with
    out-of-fold probabilities in RUN/oof.csv; 0 = off (one model), else at least 2."""


@dataclass(frozen=True)
class ThresholdsConfig:
    """Multi-label decision thresholds, searched on the validation split at the end of fit."""
    metric: str = "f1_micro"
    """f1_micro | f1_macro | f1_samples."""
    mode: str = "global"
    """global (one threshold) | per-label."""


IMAGE_CACHE_MIN_BYTES = 256 * 2**20
"""data.cache = auto builds the on-disk image cache from this size, of the image files (their
decoding is what the cache saves) or of the decoded array (what in-memory decoding would
hold): below both, decoding into memory is quick and small."""
IMAGE_CACHE_SUBDIR = "images"
"""The image cache lives in $CLFAPP_CACHE/images (default ~/.cache/clfapp/images)."""
CACHE_POOL = "thread"
"""What decodes images into the cache: thread | process (measured: bench/scale_cache.py)."""
CACHE_WORKERS = 0
"""Decoders building the cache (0 = one per core, at most 8)."""

@dataclass(frozen=True)
class TuneConfig:
    """`clfapp tune`'s settings (train/tune.py): the plain keys of a recipe's [tune] table, whose
    dotted keys ("train.lr" = {low = 1e-4, high = 1e-2, log = true}, "aug.max_rotate" = [0, 10])
    are the search space; the command's flags override them. Not part of a run's Config: fit
    ignores the [tune] table."""
    trials: int = 20
    """Trials the study holds in all (finished, pruned and running ones count, failed ones not):
    run again with more to search further; several workers share the count."""
    sampler: str = "tpe"
    """tpe | random | grid (every combination of the space's lists, in a seeded order)."""
    pruner: str = "median"
    """median (stop a trial whose epoch figure is below the median of earlier trials at the
    same epoch) | hyperband | none."""
    startup_trials: int = 4
    """The first trials: sampled at random (tpe) and never pruned (median), they set the bar."""
    warmup_epochs: int = 1
    """Epochs every trial runs before the median pruner may stop it."""
    budget: str = ""
    """Wall time of the whole command ("" = none; "90m", "2h"): no trial starts after it, and
    the one running then stops at its next epoch end (recorded as pruned, stopped = budget)."""
    keep: int = 0
    """Keep the run folders of the best N finished trials only (0 = all)."""


TUNE_SPACE = {"train.lr": {"low": 5e-4, "high": 1e-2, "log": True},
              "train.wd": [0.001, 0.01, 0.1],
              "model.dropout": {"low": 0.1, "high": 0.6},
              "aug.max_rotate": [0.0, 10.0, 30.0]}
"""The search space of `clfapp tune` on a folder, or on a recipe without a [tune] table."""
TUNE_FIXED_DATA = ("path", "labels", "label_delim", "split", "valid_pct", "test_pct", "seed",
                   "splits_from", "sample")
"""data keys a search space may not vary: every trial of a study validates on one split."""

INFER_BS = 64
"""Images per batch when a trained model predicts: predict, evaluate, thresholds, ensembles,
export parity, teacher outputs (training batches are train.bs)."""
INFER_WORKERS = 0
"""predict --workers: processes decoding images ahead of the model (0 = in the main one)."""


@dataclass(frozen=True)
class Config:
    recipe: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)


SECTIONS = {f.name: f.type for f in fields(Config) if f.name != "recipe"}
CHOICES = {
    ("data", "split"): ("auto", "folder", "stratified", "iterative", "random"),
    ("data", "resize"): ("squish", "crop", "pad"),
    ("data", "cache"): ("auto", "on", "off"),
    ("loss", "name"): ("auto", "cross_entropy", "label_smoothing", "focal", "bce", "focal_bce"),
    ("train", "opt"): ("adam", "adamw", "sgd", "radam", "ranger", "lamb"),
    ("train", "monitor"): ("auto", "accuracy", "f1_macro", "f1_micro", "valid_loss"),
    ("thresholds", "metric"): ("f1_micro", "f1_macro", "f1_samples"),
    ("thresholds", "mode"): ("global", "per-label"),
    ("train", "precision"): ("auto", "bf16", "fp32"),
    # the registries of train/schedules.py (a test keeps them equal)
    ("train", "schedule"): ("one_cycle", "flat_cos", "plateau", "sgdr"),
    ("train", "freeze"): ("frozen_then_full", "head_only", "last_fraction"),
    ("train", "plateau_monitor"): ("valid_loss", "train_loss", "auto", "accuracy", "f1_macro", "f1_micro"),
}


def _section_class(name: str):
    return {"data": DataConfig, "aug": AugConfig, "model": ModelConfig, "loss": LossConfig,
            "train": TrainConfig, "thresholds": ThresholdsConfig}[name]


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(options)})"


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Convert `value` to the type of the field's default; strings from the command line too."""
    where = f"{section}.{key}"
    if section == "train" and key == "lr":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            lr = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where} must be a number or 'auto', got {value!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise UsageError(f"{where} must be a positive number or 'auto', got {value!r}")
        return lr
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if isinstance(value, bool):  # TOML true/false is no number, though int(True) == 1
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise UsageError(f"{where} must be {kind}, got {str(value).lower()}")
    if isinstance(default, int):
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where} must be a whole number, got {value!r}")
    if isinstance(default, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(number):  # nan, inf: no setting means them (TOML and --set allow them)
            raise UsageError(f"{where} must be a finite number, got {value!r}")
        return number
    value = str(value)
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        close = difflib.get_close_matches(value, choices, n=3, cutoff=0.5)
        raise UsageError(f"{where} = {value!r} is not one of: {', '.join(choices)}"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return value


def _check_ranges(cfg: Config) -> None:
    d, t = cfg.data, cfg.train
    if not (0 < d.valid_pct < 1 and 0 <= d.test_pct < 1 and d.valid_pct + d.test_pct < 1):
        raise UsageError(f"data.valid_pct and data.test_pct must be between 0 and 1 (test_pct "
                         f"may be 0 = no test split) with a sum below 1, training keeps the rest; "
                         f"got valid_pct {d.valid_pct}, test_pct {d.test_pct}")
    if d.size < 8:
        raise UsageError(f"data.size must be at least 8 pixels, got {d.size}")
    if d.test_size and d.test_size < 8:
        raise UsageError(f"data.test_size must be 0 (auto) or at least 8 pixels, got {d.test_size}")
    if not (d.labels == "folder" or d.labels.startswith(("csv:", "name:"))):
        raise UsageError(f"data.labels = {d.labels!r}: use 'folder', 'csv:FILE' or 'name:REGEX'")
    if t.epochs < 0 or t.freeze_epochs < 0 or t.epochs + t.freeze_epochs == 0:
        raise UsageError("train.epochs and train.freeze_epochs must be >= 0 and not both 0")
    if cfg.model.weights and not cfg.model.pretrained:
        raise UsageError("model.weights is set but model.pretrained is false; drop one of "
                         "--weights and --no-pretrained")
    if cfg.aug.mixup > 0 and cfg.aug.cutmix > 0:
        raise UsageError("aug.mixup and aug.cutmix are both set; choose one of them")
    if cfg.aug.mixup < 0 or cfg.aug.cutmix < 0:
        raise UsageError("aug.mixup and aug.cutmix take a Beta alpha > 0, or 0 for off")
    if t.bs < 1:
        raise UsageError(f"train.bs must be at least 1, got {t.bs}")
    _check_schedule(t, cfg.model.pretrained)
    if not (0 <= t.momentum < 1 and 0 <= t.beta2 < 1 and t.eps > 0):
        raise UsageError("train.momentum and train.beta2 must be in [0, 1) and train.eps > 0")
    if not 0.25 <= t.progressive <= 1:
        raise UsageError(f"train.progressive must be in [0.25, 1] (1 = off), got {t.progressive}")
    if t.lookahead_k < 0 or not 0 < t.lookahead_alpha <= 1:
        raise UsageError("train.lookahead_k must be >= 0 (0 = off) and train.lookahead_alpha "
                         "in (0, 1]")
    if cfg.loss.alpha >= 0 and not 0 < cfg.loss.alpha <= 1:
        raise UsageError(f"loss.alpha must be in (0, 1], or -1 for off, got {cfg.loss.alpha}")
    for key in ("saturation", "hue", "brightness", "contrast"):
        if not 0 <= getattr(cfg.aug, key) < 1:
            raise UsageError(f"aug.{key} must be in [0, 1) (0 = off), got {getattr(cfg.aug, key)}")
    parse_head_hidden(cfg.model.head_hidden)
    budget_seconds(t.budget)
    if t.folds < 0 or t.folds == 1:
        raise UsageError(f"train.folds (--folds) must be at least 2 (0 = no cross-validation), "
                         f"got {t.folds}")
    if t.tensorboard and not tensorboard_installed():
        raise UsageError("train.tensorboard = true needs the tensorboard package: "
                         "pip install clfapp[tb] (or pip install tensorboard)")
    if cfg.model.cut_blocks < 0:
        raise UsageError(f"model.cut_blocks must be >= 0, got {cfg.model.cut_blocks}")


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def budget_seconds(text: str) -> float | None:
    """train.budget → seconds: "900" or "900s", "15m", "1h30m", "2h"; "" → None (no budget)."""
    s = str(text).strip().lower().replace(" ", "")
    if not s:
        return None
    try:
        seconds = float(s)
    except ValueError:
        m = _DURATION.fullmatch(s)
        seconds = (sum(float(v or 0) * k for v, k in zip(m.groups(), (3600, 60, 1)))
                   if m and any(m.groups()) else float("nan"))
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"train.budget = {text!r}: give a positive duration like 900 (seconds), "
                         f"90s, 15m, 1h30m or 2h")
    return seconds


def tensorboard_installed() -> bool:
    """Whether train.tensorboard can work (found without importing it: config stays light)."""
    import importlib.util
    return importlib.util.find_spec("tensorboard") is not None


def parse_head_hidden(text: str) -> list[int] | None:
    """model.head_hidden → fastai's `lin_ftrs`: None (fastai's default), [] or sizes."""
    text = text.strip().lower()
    if not text:
        return None
    if text == "none":
        return []
    try:
        sizes = [int(x) for x in text.replace(" ", "").split(",")]
    except ValueError:
        sizes = [0]
    if any(n < 1 for n in sizes):
        raise UsageError(f"model.head_hidden = {text!r}: give sizes like \"512\" or \"1024,256\", "
                         f"\"\" for fastai's default or \"none\"")
    return sizes


def _check_schedule(t: TrainConfig, pretrained: bool) -> None:
    """train.schedule / train.freeze and their knobs (train/schedules.py)."""
    if t.moms:
        try:
            moms = [float(x) for x in t.moms.split(",")]
        except ValueError:
            moms = []
        if len(moms) != 3 or not all(0 <= m < 1 for m in moms):
            raise UsageError(f"train.moms = {t.moms!r}: give three momentums in [0, 1), "
                             f"start,low,end, e.g. \"0.95,0.85,0.95\"")
        if t.schedule != "one_cycle":
            raise UsageError(f"train.moms is for train.schedule = 'one_cycle', not {t.schedule!r}")
    if not 0 < t.plateau_factor < 1:
        raise UsageError(f"train.plateau_factor must be between 0 and 1, got {t.plateau_factor}")
    if t.plateau_patience < 1:
        raise UsageError(f"train.plateau_patience must be at least 1, got {t.plateau_patience}")
    if t.sgdr_cycles < 0 or t.sgdr_cycle_len < 1 or t.sgdr_mult < 1:
        raise UsageError("train.sgdr_cycles must be >= 0 (0 = from epochs), train.sgdr_cycle_len "
                         "and train.sgdr_mult >= 1")
    if not 0 <= t.ema < 1:
        raise UsageError(f"train.ema must be in [0, 1) (a decay such as 0.999; 0 = off), got {t.ema}")
    if t.lr_mult < 1:
        raise UsageError(f"train.lr_mult must be at least 1 (1 = one LR for all), got {t.lr_mult}")
    if not 0 < t.unfreeze_fraction <= 1:
        raise UsageError(f"train.unfreeze_fraction must be in (0, 1], got {t.unfreeze_fraction}")
    if t.frozen_stride < 0:
        raise UsageError(f"train.frozen_stride must be >= 0 (0 = every layer trains), got {t.frozen_stride}")
    if t.unfreeze_lr_mult <= 0:
        raise UsageError(f"train.unfreeze_lr_mult must be positive, got {t.unfreeze_lr_mult}")
    if t.freeze != "frozen_then_full" and not pretrained:
        raise UsageError(f"train.freeze = {t.freeze!r} needs a pretrained body; "
                         "model.pretrained is false")


def sgdr_epochs(cycles: int, cycle_len: int, mult: int) -> int:
    """Epochs of `cycles` cosine cycles, the first `cycle_len` long, each `mult` times the last."""
    return cycles * cycle_len if mult == 1 else cycle_len * (mult ** cycles - 1) // (mult - 1)


def _lengths(cycles: int, cycle_len: int, mult: int) -> str:
    return ", ".join(str(cycle_len * mult ** i) for i in range(cycles))


def fit_sgdr_to_epochs(cfg: Config, given: set[str]) -> tuple[Config, str | None]:
    """Explicit epochs win over the recipe's SGDR cycles (issue 24): with train.epochs given on
    the command line (`--epochs`, `--set train.epochs=`; from scratch train.freeze_epochs too,
    whose epochs join the main phase) and `train.sgdr_cycles` set, the cycles are refitted so
    the main phase lasts exactly those epochs: sgdr_mult kept, the most cycles (at most the
    recipe's) whose lengths cycle_len·(1, mult, mult², ...) sum to it, with the cycle_len that
    makes them sum (one cycle of all of them at worst). Returns the config and the line saying
    how the epochs were split (None: nothing to fit). Keys given on the command line too are
    kept; when they cannot be with those epochs, a usage error names the key to change.
    `given`: the train keys the command line set. sgdr_cycles = 0 already means "as many whole
    cycles as fit in epochs" (the schedule prints the split), so it is left alone."""
    t = cfg.train
    asked = "epochs" in given or ("freeze_epochs" in given and not cfg.model.pretrained)
    if t.schedule != "sgdr" or not t.sgdr_cycles or not asked:
        return cfg, None
    n = t.epochs + (0 if cfg.model.pretrained else t.freeze_epochs)   # the main phase
    total = sgdr_epochs(t.sgdr_cycles, t.sgdr_cycle_len, t.sgdr_mult)
    if total == n or n == 0:   # 0: no main phase, so no cycles
        return cfg, None
    what = f"train.epochs = {t.epochs}" + ("" if cfg.model.pretrained or not t.freeze_epochs else
                                            f" (+ freeze_epochs {t.freeze_epochs} from scratch)")
    keys = f"train.sgdr_cycles = {t.sgdr_cycles}, sgdr_cycle_len = {t.sgdr_cycle_len}, " \
           f"sgdr_mult = {t.sgdr_mult}"
    for cycles in ([t.sgdr_cycles] if "sgdr_cycles" in given else range(t.sgdr_cycles, 0, -1)):
        unit = sgdr_epochs(cycles, 1, t.sgdr_mult)
        if n % unit == 0 and ("sgdr_cycle_len" not in given or n // unit == t.sgdr_cycle_len):
            break
    else:
        also = " and ".join(f"train.{k}" for k in ("sgdr_cycles", "sgdr_cycle_len") if k in given)
        raise UsageError(f"{what} contradicts {keys} ({total} epochs; {also} given too); set "
                         f"train.sgdr_cycles=0 (as many whole cycles as fit in {n}), or make "
                         f"the epochs {total}")
    cycle_len = n // unit
    line = (f"sgdr: {what} split into {cycles} cycle(s) of {_lengths(cycles, cycle_len, t.sgdr_mult)} "
            f"epochs, in place of the recipe's {keys} ({_lengths(t.sgdr_cycles, t.sgdr_cycle_len, t.sgdr_mult)}"
            f" = {total})")
    if cycles < t.sgdr_cycles:
        line += (f"; {t.sgdr_cycles} cycles x{t.sgdr_mult} need a multiple of "
                 f"{sgdr_epochs(t.sgdr_cycles, 1, t.sgdr_mult)} epochs")
    train = dataclasses.replace(t, sgdr_cycles=cycles, sgdr_cycle_len=cycle_len)
    return dataclasses.replace(cfg, train=train), line


def merge(base: dict, updates: dict, origin: str) -> dict:
    """Apply `{section: {key: value}}` onto `base`, refusing unknown sections and keys."""
    out = {s: (dict(v) if isinstance(v, dict) else v) for s, v in base.items()}
    for section, table in updates.items():
        if section == "recipe":
            out["recipe"] = table
            continue
        if section not in SECTIONS:
            raise UsageError(f"unknown config section [{section}] in {origin}{_suggest(section, SECTIONS)}")
        if not isinstance(table, dict):
            raise UsageError(f"[{section}] in {origin} must be a table of key = value")
        known = {f.name: f.default for f in fields(_section_class(section))}
        for key, value in table.items():
            if key not in known:
                raise UsageError(f"unknown config key {section}.{key} in {origin}{_suggest(key, known)}")
            out.setdefault(section, {})[key] = _coerce(section, key, value, known[key])
    return out


def build(tables: dict) -> Config:
    sections = {name: _section_class(name)(**tables.get(name, {})) for name in SECTIONS}
    cfg = Config(recipe=tables.get("recipe", ""), **sections)
    _check_ranges(cfg)
    return cfg


def load(recipe_file: Path | None, overrides: dict | None = None, recipe_name: str = "",
         base: dict | None = None, base_origin: str = "") -> Config:
    """Read a recipe file (or only defaults when None), apply overrides, validate. `base`
    (tables like a recipe's, e.g. what a distilled student takes from its teacher) goes on the
    defaults before the overrides, in place of a recipe file."""
    tables: dict = {"recipe": recipe_name}
    if base:
        tables = merge(tables, base, base_origin or "the base config")
    if recipe_file is not None:
        try:
            raw = tomllib.loads(Path(recipe_file).read_text())
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"recipe {recipe_file} is not valid TOML: {e}")
        # [tune] is `clfapp tune`'s search space (train/tune.py), no setting of a run
        tables = merge(tables, {k: v for k, v in raw.items() if k != "tune"}, str(recipe_file))
    if overrides:
        tables = merge(tables, overrides, "the command line")
    return build(tables)


def parse_set(assignments: list[str]) -> dict:
    """`["train.lr=3e-3", ...]` → `{"train": {"lr": "3e-3"}}` (values are coerced later)."""
    out: dict = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--set {item!r}: write it as section.key=value, e.g. train.lr=3e-3")
        out.setdefault(section, {})[name] = value.strip()
    return out


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def dumps(cfg: Config) -> str:
    """The resolved config as TOML that `load` reads back to an equal `Config`."""
    d = to_dict(cfg)
    lines = [f"recipe = {_toml_value(d.pop('recipe'))}"]
    for section, table in d.items():
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def from_file(path: Path) -> Config:
    """Load a resolved config saved in a run folder."""
    return load(Path(path))   # its recipe key names the recipe; bad TOML is a UsageError
