"""The model bundle: `weights.safetensors` + `model.json`. Opening one never runs code.

model.json says everything needed to rebuild the model and run it: arch, head options,
classes, training size, normalisation, the inference spec (infer/spec.py: input size and
resize, TTA, precision, thresholds and provenance) and the library versions it was made with.
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
from . import spec as spec_mod

FORMAT = 4
"""2: model.json may hold test_size, which format-1 readers would ignore and predict wrong.
3: model.json says which items trained the model (trained_on): a format-2 reader would take a
`fit --full` model's validation split for evidence.
4: how the model is run lives in one `inference` object (infer/spec.py); bundles of formats
1-3 are read with the spec their fields always meant, marked inferred."""
WEIGHTS, META = "weights.safetensors", "model.json"
TRAIN, TRAIN_VALID, TRAINED_ON = spec_mod.TRAIN, spec_mod.TRAIN_VALID, spec_mod.TRAINED_ON
LEGACY_KEYS = ("resize", "tta_flips", "tta", "test_size", "thresholds", "trained_on")
"""model.json keys of formats 1-3 that the inference spec holds now."""


@dataclass
class BundleMeta:
    """model.json: how to rebuild the model (arch, head, classes, training size, normalisation)
    and how to run it (`inference`, the spec every command follows)."""
    arch: str
    classes: list[str]
    size: int
    """The size the model was trained at (its inference size is inference.size)."""
    mean: list[float]
    std: list[float]
    inference: spec_mod.InferenceSpec = field(default_factory=spec_mod.InferenceSpec)
    dropout: float = 0.5
    concat_pool: bool = True
    head_hidden: str = ""
    """model.head_hidden: "" = fastai's default head (also every bundle from before the field)."""
    cut_blocks: int = 0
    """model.cut_blocks: how many of the body's last blocks were cut off (0 = none)."""
    multi_label: bool = False
    label_delim: str = " "
    interpolation: str = "bicubic"
    pretrained_from: str = ""
    versions: dict = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT

    def __post_init__(self):
        if not self.inference.size:
            self.inference.size = self.size
        if not self.inference.resize:
            self.inference.resize = "squish"
        if not self.inference.tta_flips:
            self.inference.tta = False   # no mirror to average with: TTA is the image alone

    @property
    def input_size(self) -> int:
        """The size predict and evaluate resize images to (inference.size)."""
        return self.inference.size

    @property
    def resize(self) -> str:
        """How images are brought to that size (inference.resize)."""
        return self.inference.resize

    @property
    def thresholds(self) -> list[float] | None:
        """The multi-label decision thresholds (inference.thresholds; None = 0.5)."""
        return self.inference.thresholds

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _legacy_spec(raw: dict, where: str) -> spec_mod.InferenceSpec:
    """The spec a model.json of format 1-3 always meant (its keys are taken out of `raw`)."""
    old = {k: raw.pop(k) for k in LEGACY_KEYS if k in raw}
    return spec_mod.InferenceSpec.from_dict(dict(
        size=int(old.get("test_size") or raw.get("size") or 0), resize=old.get("resize", "squish"),
        tta=bool(old.get("tta", False)), tta_flips=old.get("tta_flips"),
        thresholds=old.get("thresholds"), trained_on=old.get("trained_on", TRAIN),
        chosen_by="inferred", inferred=True), where)


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
        (tmp / META).write_text(meta.to_json())
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
    where = str(folder / META)
    if "inference" in raw:
        inference = spec_mod.InferenceSpec.from_dict(raw.pop("inference"), where)
        stale = [k for k in LEGACY_KEYS if k in raw]
        if stale:
            raise UsageError(f"{where}: {', '.join(stale)} belong in its inference object")
    else:
        inference = _legacy_spec(raw, where)
    try:
        meta = BundleMeta(**raw, inference=inference)
    except TypeError as e:
        raise UsageError(f"{where} is not a valid clfapp model description: {e}")
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
    tmp.write_text(meta.to_json())
    os.replace(tmp, target)
