"""The model bundle: `weights.safetensors` + `model.json`. Opening one never runs code.

model.json says everything needed to rebuild the model and feed it: arch, head options,
classes, input size and resize method, normalisation, thresholds (multi-label) and the library
versions it was made with.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UsageError
from ..models.pickles import WHY_NO_PICKLE, is_pickle, refuse_pickle

FORMAT = 3
"""2: model.json may hold test_size, which format-1 readers would ignore and predict wrong.
3: model.json says which items trained the model (trained_on): a format-2 reader would take a
`fit --full` model's validation split for evidence."""
WEIGHTS, META = "weights.safetensors", "model.json"
TRAIN, TRAIN_VALID = "train", "train+valid"
TRAINED_ON = (TRAIN, TRAIN_VALID)


@dataclass
class BundleMeta:
    arch: str
    classes: list[str]
    size: int
    resize: str
    mean: list[float]
    std: list[float]
    dropout: float = 0.5
    concat_pool: bool = True
    head_hidden: str = ""
    """model.head_hidden: "" = fastai's default head (also every bundle from before the field)."""
    cut_blocks: int = 0
    """model.cut_blocks: how many of the body's last blocks were cut off (0 = none)."""
    multi_label: bool = False
    thresholds: list[float] | None = None
    label_delim: str = " "
    interpolation: str = "bicubic"
    pretrained_from: str = ""
    tta_flips: list[str] | None = None
    """Mirrors test-time augmentation may average over ("horizontal", "vertical"): those the
    model was trained with. [] = trained without flips (TTA is a no-op). None = a bundle from
    before this field: TTA keeps its old behaviour, a horizontal flip."""
    tta: bool = False
    """Whether predict and evaluate use TTA when neither --tta nor --no-tta is given (aug.tta)."""
    test_size: int = 0
    """The size images are resized to for prediction (data.test_size, FixRes); 0 = `size`
    (also every bundle from before the field)."""
    trained_on: str = TRAIN
    """Which items of the run's splits.csv trained the weights: "train", or "train+valid" after
    `fit --full` (its validation images are then no evidence). Bundles from before the field
    were all trained on "train"."""
    versions: dict = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT

    @property
    def input_size(self) -> int:
        """The size predict and evaluate resize images to: test_size, else the training size."""
        return self.test_size or self.size


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("clfapp", "torch", "torchvision", "timm", "fastai"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def save(folder: Path, model, meta: BundleMeta) -> Path:
    """Write the bundle into `folder` via a temporary folder, so it is whole or absent."""
    from safetensors.torch import save_model

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta.versions = meta.versions or library_versions()
    meta.created = meta.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written bundle behind
        raise
    _swap_in(tmp, folder)
    return folder


def _swap_in(new: Path, folder: Path) -> None:
    """Put the finished folder `new` at `folder`. A bundle already there stays whole until the
    new one is in place: it is renamed aside (one rename), the new one renamed in, then the old
    one deleted. Killed in between, `folder.old` holds the previous bundle."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    try:
        os.replace(new, folder)
    except OSError:
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def find(path: Path) -> Path:
    """The bundle folder for a run folder or a bundle folder."""
    path = Path(path)
    for candidate in (path / "model", path):
        if (candidate / META).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    if not path.exists():
        raise UsageError(f"{path} does not exist; give a run folder (runs/NAME) or a model folder")
    refuse_pickle(path)
    pickles = sorted(p.name for c in (path / "model", path) if c.is_dir() for p in c.iterdir()
                     if p.is_file() and is_pickle(p))
    if pickles:
        raise UsageError(f"{path} holds no model bundle ({META} + {WEIGHTS}), only "
                         f"{', '.join(pickles[:3])}: {WHY_NO_PICKLE}")
    raise UsageError(f"{path} holds no model bundle ({META} + {WEIGHTS}); was its fit finished?")


def read_meta(path: Path) -> BundleMeta:
    folder = find(path)
    try:
        raw = json.loads((folder / META).read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{folder / META} is not valid JSON: {e}")
    if not isinstance(raw, dict):
        raise UsageError(f"{folder / META} is not a clfapp model description (not a JSON object)")
    # The format number first: a newer bundle may have fields this version does not know, and
    # "upgrade clfapp" is the useful answer then, not "unexpected field".
    version = raw.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(f"{folder / META} has an invalid format number {version!r}")
    if version > FORMAT:
        raise UsageError(f"{folder} was written by a newer clfapp (bundle format {version}; this "
                         f"clfapp reads up to {FORMAT}); upgrade clfapp")
    try:
        meta = BundleMeta(**raw)
    except TypeError as e:
        raise UsageError(f"{folder / META} is not a valid clfapp model description: {e}")
    if meta.trained_on not in TRAINED_ON:
        raise UsageError(f"{folder / META}: trained_on must be one of {', '.join(TRAINED_ON)}, "
                         f"got {meta.trained_on!r}")
    return meta


def load(path: Path):
    """(model in eval mode, meta), rebuilt from model.json and strictly loaded weights."""
    from safetensors.torch import load_model

    from .. import models

    meta = read_meta(path)
    model, _ = models.build(models.resolve(meta.arch), len(meta.classes), meta.dropout,
                            meta.concat_pool, head_hidden=meta.head_hidden,
                            cut_blocks=meta.cut_blocks)
    weights = find(path) / WEIGHTS
    try:
        load_model(model, str(weights), strict=True)
    except Exception as e:  # SafetensorError (not a safetensors file), RuntimeError (shapes, keys)
        lines = [ln.strip() for ln in str(e).splitlines()
                 if ln.strip() and not ln.startswith("Error(s) in loading")]
        why = lines[0] if lines else type(e).__name__
        raise UsageError(f"{weights} does not match {META} ({meta.arch}, {len(meta.classes)} "
                         f"classes): {why[:200]}; the model folder was changed or damaged after "
                         "it was written; use the files fit wrote, or train again")
    return model.eval(), meta


def write_meta(path: Path, meta: BundleMeta) -> None:
    """Update model.json in place (atomically), e.g. after a threshold search."""
    target = find(path) / META
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(meta), indent=2) + "\n")
    os.replace(tmp, target)
