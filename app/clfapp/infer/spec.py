"""The inference spec: how a model is run, in one versioned object that model.json,
ensemble.json and onnx.json each carry as `inference`. Every command that measures, searches
thresholds or predicts runs a model as its spec says (predictors default to it), and a command
told to differ (`--no-tta`) says so: the figure a user reads is the model they ship.

    size, resize     the input images are brought to (0 / "": an ensemble's members' own)
    tta, tta_flips   whether the image is averaged with its mirrors, and which mirrors (those
                     training augmented with)
    precision        the arithmetic it runs in ("fp32"; "int8" for an INT8 ONNX export)
    thresholds       multi-label decision thresholds, with `thresholds_under`: the conditions
                     (`conditions`) of the probabilities they were searched on, and where
    trained_on       which items of the run's splits.csv trained it: train | train+valid
    split_digest     sha256 (16 hex) of that splits.csv when it was written
    chosen_by        how size and TTA were settled: measurement (fit scored the candidates on
                     validation, infer/choice.py), data.test_size / aug (the config left one
                     candidate), members (an ensemble), inferred
    inferred         true when read from a file written before the spec existed: its values
                     are what such files always meant, not a record

Plain data, numpy and torch free: the ONNX predictor reads it too.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import UsageError

VERSION = 1
PRECISIONS = ("fp32", "int8")
"""int8: an INT8 ONNX export (`clfapp export --int8`, infer/quantize.py); the rest run fp32."""
TRAIN, TRAIN_VALID = "train", "train+valid"
TRAINED_ON = (TRAIN, TRAIN_VALID)
MIRRORS = ("horizontal", "vertical", "transpose")
"""TTA mirror names: flip the width, flip the height, swap them (images are square here)."""
LEGACY_TTA_FLIPS = ("horizontal",)
"""TTA of bundles written before model.json recorded `tta_flips`: what TTA always did."""


def tta_views(flips) -> list[tuple[str, ...]]:
    """The views TTA averages: every combination of the mirrors, the image itself first. With
    all three, the dihedral group's 8; on plant seedlings' validation split 8 views gave
    0.898 accuracy where the image and each mirror alone (3 views) gave 0.890, and 0.771 vs
    0.749, 0.740 vs 0.694 for two shorter runs (`python bench/tta_views.py RUN`)."""
    return [c for k in range(len(flips) + 1) for c in itertools.combinations(flips, k)]


def tta_flips_for(aug) -> list[str]:
    """The mirrors training augmented with, from an AugConfig, in fastai's terms:
    aug_transforms flips only when `flip` is on, and `flip_vert` then uses fastai's Dihedral
    (vertical flips and transposes too: the 8 turns and mirrors of the square); nothing at
    all when augmentation is disabled."""
    if not (aug.enabled and aug.flip):
        return []
    return list(MIRRORS) if aug.flip_vert else ["horizontal"]


def checked_flips(flips, where: str = "model.json") -> list[str]:
    """`flips` as TTA uses them: None (a bundle older than tta_flips) is the horizontal flip
    TTA always was; "vertical" without "transpose" gains it (vertical flips only ever came with
    fastai's Dihedral, which transposes too); unknown names are refused."""
    flips = list(LEGACY_TTA_FLIPS if flips is None else flips)
    unknown = [f for f in flips if f not in MIRRORS]
    if unknown:
        raise UsageError(f"{where}: unknown tta_flips {unknown} (known: {', '.join(MIRRORS)})")
    if "vertical" in flips and "transpose" not in flips:
        flips.append("transpose")
    return flips


@dataclass
class InferenceSpec:
    size: int = 0
    resize: str = ""
    tta: bool = False
    tta_flips: list[str] = field(default_factory=list)
    precision: str = "fp32"
    thresholds: list[float] | None = None
    thresholds_under: dict | None = None
    trained_on: str = TRAIN
    split_digest: str = ""
    chosen_by: str = ""
    inferred: bool = False
    version: int = VERSION

    @property
    def views(self) -> list[tuple[str, ...]]:
        """The views this spec averages: the image alone, or it and its mirrors' combinations."""
        return tta_views(self.tta_flips) if self.tta else [()]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw, where: str) -> "InferenceSpec":
        """The spec stored at `where` (a file name, for the one-line errors)."""
        if not isinstance(raw, dict):
            raise UsageError(f"{where}: inference must be an object, got {type(raw).__name__}")
        version = raw.get("version", VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise UsageError(f"{where}: inference has an invalid version {version!r}")
        if version > VERSION:
            raise UsageError(f"{where}: inference spec version {version}; this clfapp reads up "
                             f"to {VERSION}; upgrade clfapp")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"{where}: inference has unknown key(s) {', '.join(unknown)}")
        spec = cls(**raw)
        spec.tta_flips = checked_flips(spec.tta_flips, where)
        if spec.precision not in PRECISIONS:
            raise UsageError(f"{where}: inference precision must be one of "
                             f"{', '.join(PRECISIONS)}, got {spec.precision!r}")
        if spec.trained_on not in TRAINED_ON:
            raise UsageError(f"{where}: trained_on must be one of {', '.join(TRAINED_ON)}, "
                             f"got {spec.trained_on!r}")
        return spec

    def describe(self) -> str:
        """One phrase: how a model with this spec is run."""
        size = f"{self.size} px ({self.resize}), " if self.size else ""
        n = len(self.views)
        tta = (f"TTA over {n} views (the image and its {', '.join(self.tta_flips)} mirrors)"
               if n > 1 else "no TTA")
        return f"{size}{tta}, {self.precision}" + (" (inferred: written before the inference "
                                                   "spec)" if self.inferred else "")


def split_digest(splits_csv) -> str:
    """sha256 (16 hex) of a splits.csv: which items trained and chose the model."""
    path = Path(splits_csv)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


# --- what a command runs, and how it differs from the spec -----------------------------------

def conditions(predictor, tta: bool | None = None) -> dict:
    """What probabilities of `predictor` are produced under, with `tta` (None: its spec's):
    {"size", "resize", "views", "precision"} for one model, {"members": {name: ...}} for an
    ensemble. Thresholds record this as `thresholds_under`; equal conditions, equal numbers.
    An ONNX export says its own (its views are fixed in the graph, per member for an ensemble)."""
    own = getattr(predictor, "conditions", None)
    if callable(own):
        return own(tta)
    members = getattr(predictor, "members", None)
    if members:
        return {"members": {name: conditions(m, tta) for name, m in zip(predictor.names, members)}}
    spec = predictor.spec
    on = spec.tta if tta is None else tta
    views = tta_views(spec.tta_flips) if on else [()]
    return {"size": int(spec.size), "resize": spec.resize,
            "views": len(views), "precision": spec.precision}


def tta_in_force(predictor, asked: bool | None) -> bool:
    """--tta / --no-tta when given, else the model's spec."""
    return predictor.spec.tta if asked is None else bool(asked)


def set_thresholds(spec: InferenceSpec, values, predictor, tta: bool | None, metric: str,
                   mode: str, on: str) -> None:
    """Store thresholds in `spec` with what they were searched under: the conditions of the
    probabilities (`predictor` run with `tta`), the metric, the mode and the items (`on`)."""
    spec.thresholds = [float(t) for t in values]
    spec.thresholds_under = {"conditions": conditions(predictor, tta), "metric": metric,
                             "mode": mode, "on": on}


def departures(predictor, tta: bool | None, threshold: float | None = None) -> list[str]:
    """The lines a command prints (and puts in its report) when it runs `predictor` other than
    its spec says: TTA switched, or thresholds applied to probabilities of other conditions
    than those they were searched on. [] when it runs the model as shipped."""
    spec, out = predictor.spec, []
    members = getattr(predictor, "members", None) or []
    mirrors = spec.tta_flips or any(m.spec.tta_flips for m in members)
    if tta is not None and bool(tta) != bool(spec.tta) and mirrors:
        runs = "with" if spec.tta else "without"
        now = "with" if tta else "without"
        out.append(f"note: run {now} TTA (--{'' if tta else 'no-'}tta); the model as shipped runs "
                   f"{runs} it ({spec.describe()}): these figures are not the shipped model's")
    under = spec.thresholds_under
    if (getattr(predictor.meta, "multi_label", False) and spec.thresholds and threshold is None
            and under and under.get("conditions") not in (None, conditions(predictor, tta))):
        out.append("note: the model's thresholds were searched on probabilities made under "
                   f"{describe_conditions(under.get('conditions'))}; these are made under "
                   f"{describe_conditions(conditions(predictor, tta))}: decisions at them are not tuned")
    return out


def describe_conditions(c: dict | None) -> str:
    """`conditions` in words: "160 px, 8 views, fp32" (per member for an ensemble)."""
    if not c:
        return "unknown conditions"
    if "members" in c:
        return "; ".join(f"{name}: {describe_conditions(m)}" for name, m in c["members"].items())
    return (f"{c.get('size')} px, {c.get('views')} view{'s' if c.get('views') != 1 else ''}, "
            f"{c.get('precision')}")
