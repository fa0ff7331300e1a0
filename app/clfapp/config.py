"""The run configuration: the one place every default lives.

A recipe (TOML) is read into these dataclasses, command-line overrides are applied on top, and
the result is validated and frozen. Everything else in clfapp reads a `Config`; nothing else
holds a default of its own.
"""
from __future__ import annotations

import dataclasses
import difflib
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
    seed: int = 42
    """Seed of the train/valid split, apart from train.seed: runs trained with different seeds
    (an ensemble's members) then share one split, and none trains on another's validation
    images."""
    splits_from: str = ""
    """A run folder (or its splits.csv) whose train/valid/test assignment this run reuses, item
    by item (matched by path); items it does not list are split by the usual rule."""
    size: int = 224
    """Square input size in pixels."""
    resize: str = "squish"
    """How images are brought to `size`: squish | crop (centre) | pad."""
    sample: str = ""
    """Name of an embedded dataset (`clfapp data sample NAME`) made at `path` when missing."""


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
    """adam | sgd | ranger | lamb."""
    seed: int = 42
    monitor: str = "auto"
    """Metric that picks the best epoch, which the run ends with: auto (accuracy, or f1_micro
    for multi-label) | accuracy | f1_macro | f1_micro | valid_loss."""
    early_stop: int = 0
    """Stop after this many epochs without improvement of `monitor` (0 = off)."""
    precision: str = "auto"
    """auto (bf16 on CPUs with native bf16, else fp32) | bf16 | fp32."""
    workers: int = 0
    """DataLoader worker processes. Images are decoded once and held in memory, so 0 is fastest."""


@dataclass(frozen=True)
class ThresholdsConfig:
    """Multi-label decision thresholds, searched on the validation split at the end of fit."""
    metric: str = "f1_micro"
    """f1_micro | f1_macro | f1_samples."""
    mode: str = "global"
    """global (one threshold) | per-label."""


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
    ("loss", "name"): ("auto", "cross_entropy", "label_smoothing", "focal", "bce", "focal_bce"),
    ("train", "opt"): ("adam", "sgd", "ranger", "lamb"),
    ("train", "monitor"): ("auto", "accuracy", "f1_macro", "f1_micro", "valid_loss"),
    ("thresholds", "metric"): ("f1_micro", "f1_macro", "f1_samples"),
    ("thresholds", "mode"): ("global", "per-label"),
    ("train", "precision"): ("auto", "bf16", "fp32"),
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
        if lr <= 0:
            raise UsageError(f"{where} must be positive, got {value!r}")
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
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where} must be a number, got {value!r}")
    value = str(value)
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise UsageError(f"{where} = {value!r} is not one of: {', '.join(choices)}")
    return value


def _check_ranges(cfg: Config) -> None:
    d, t = cfg.data, cfg.train
    if not 0 < d.valid_pct < 1:
        raise UsageError(f"data.valid_pct must be between 0 and 1, got {d.valid_pct}")
    if d.size < 8:
        raise UsageError(f"data.size must be at least 8 pixels, got {d.size}")
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


def load(recipe_file: Path | None, overrides: dict | None = None, recipe_name: str = "") -> Config:
    """Read a recipe file (or only defaults when None), apply overrides, validate."""
    tables: dict = {"recipe": recipe_name}
    if recipe_file is not None:
        try:
            raw = tomllib.loads(Path(recipe_file).read_text())
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"recipe {recipe_file} is not valid TOML: {e}")
        tables = merge(tables, raw, str(recipe_file))
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
    raw = tomllib.loads(Path(path).read_text())
    return build(merge({"recipe": raw.pop("recipe", "")}, raw, str(path)))
