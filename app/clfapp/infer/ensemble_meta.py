"""ensemble.json: what an ensemble folder says about itself (vote, weights, members, classes,
the inference spec with its thresholds), with its one reader and writer. Apart from infer/ensemble.py so that member
loading (infer/members.py), threshold tuning and export read it without the predictor."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import UsageError
from . import spec as spec_mod

FORMAT = 2
"""2: thresholds and TTA live in `inference` (infer/spec.py; size and resize there are 0 and
"": each member's own, in its model.json). Format 1 is read with the spec it always meant:
TTA when every member's model says so, marked inferred."""
FILE = "ensemble.json"
MEMBERS = "members"
VOTES = ("soft", "hard")


def is_ensemble(folder) -> bool:
    """A folder is an ensemble iff it holds ensemble.json."""
    return (Path(folder) / FILE).is_file()


@dataclass
class EnsembleMeta:
    """ensemble.json. Has what callers of a bundle's meta read: classes, multi_label,
    thresholds, label_delim."""
    vote: str
    weights: list[float]
    members: list[str]
    classes: list[str]
    multi_label: bool = False
    label_delim: str = " "
    inference: spec_mod.InferenceSpec = field(default_factory=spec_mod.InferenceSpec)
    created: str = ""
    versions: dict = field(default_factory=dict)
    data_root: str = ""     # the dataset folder its splits.csv's relative paths are under
    format: int = FORMAT
    kind: str = "ensemble"

    @property
    def thresholds(self) -> list[float] | None:
        """The ensemble's multi-label thresholds (inference.thresholds; None = 0.5)."""
        return self.inference.thresholds

    def to_json(self) -> str:
        d = asdict(self)
        order = ("format", "kind", "vote", "weights", "members", "classes", "multi_label",
                 "label_delim", "inference", "created", "versions", "data_root")
        return json.dumps({k: d[k] for k in order}, indent=2) + "\n"


def read_meta(folder) -> EnsembleMeta:
    """ensemble.json of `folder`, checked: its format, vote, and one positive weight per member."""
    path = Path(folder) / FILE
    if not path.is_file():
        raise UsageError(f"{folder} is not an ensemble (no {FILE})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}")
    if not isinstance(raw, dict) or raw.get("kind") != "ensemble":
        raise UsageError(f"{path} is not a clfapp ensemble description (kind is not 'ensemble')")
    version = raw.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT:
        raise UsageError(f"{path} has ensemble format {version!r}; this clfapp reads up to "
                         f"{FORMAT}; upgrade clfapp")
    known = {f.name for f in fields(EnsembleMeta)}
    if "inference" in raw:
        inference = spec_mod.InferenceSpec.from_dict(raw.pop("inference"), str(path))
    else:
        inference = spec_mod.InferenceSpec(thresholds=raw.pop("thresholds", None),
                                           tta=_members_all_tta(folder, raw.get("members")),
                                           chosen_by="inferred", inferred=True)
    try:
        meta = EnsembleMeta(**{k: v for k, v in raw.items() if k in known}, inference=inference)
    except TypeError as e:
        raise UsageError(f"{path} is not a valid clfapp ensemble description: {e}")
    if meta.vote not in VOTES:
        raise UsageError(f"{path}: vote must be one of {', '.join(VOTES)}, got {meta.vote!r}")
    if len(meta.weights) != len(meta.members) or not meta.members:
        raise UsageError(f"{path}: {len(meta.weights)} weights for {len(meta.members)} members")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
               for w in meta.weights):
        raise UsageError(f"{path}: weights must be one positive number per member, got {meta.weights}")
    # a member is a folder under members/: a name that leaves it (../../x, /elsewhere) would
    # load weights from anywhere on the machine
    bad = [m for m in meta.members if not _member_name_ok(m)]
    if bad:
        raise UsageError(f"{path} names member {bad[0]!r} outside its folder {Path(folder) / MEMBERS}; "
                         "a member is one folder name under it")
    return meta


def _members_all_tta(folder, names) -> bool:
    """What a format-1 ensemble did by default: TTA when every member's model said so."""
    from . import bundle
    try:
        return bool(names) and all(bundle.read_meta(Path(folder) / MEMBERS / str(n)).inference.tta
                                   for n in names if _member_name_ok(n))
    except UsageError:
        return False   # a member missing or damaged: members.read_ensemble says which


def _member_name_ok(name) -> bool:
    """A member is one plain folder name (no '/', '\\', '..', absolute path or empty)."""
    return (isinstance(name, str) and name.strip() not in ("", ".", "..")
            and "/" not in name and "\\" not in name and not Path(name).is_absolute())


def write_meta(folder, meta: EnsembleMeta) -> None:
    """Write ensemble.json atomically (e.g. after a threshold search)."""
    target = Path(folder) / FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(meta.to_json())
    os.replace(tmp, target)
