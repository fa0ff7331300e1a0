"""Ensemble members, read and checked in one place: the models of a model folder (a run's one
bundle, or an ensemble's members/NAME/model with their weights), and the runs a new ensemble
is made of (`check_runs`).

What is read here is model.json and ensemble.json only (no weights): the ensemble predictor,
the ONNX export and distillation each load the members' weights their own way from
`Member.folder`, after the same checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import bundle, ensemble_meta
from ..errors import UsageError


@dataclass
class Member:
    name: str
    folder: Path            # a folder bundle.find understands (run folder or members/NAME)
    meta: bundle.BundleMeta
    weight: float           # the members' weights sum to 1 (a run's one member: 1)


@dataclass
class ModelFolder:
    """A run or an ensemble folder: its members, and what it decides with."""
    folder: Path
    members: list[Member]
    ensemble: ensemble_meta.EnsembleMeta | None = None   # None: a run

    @property
    def kind(self) -> str:
        return "run" if self.ensemble is None else "ensemble"

    @property
    def _described(self):
        """What says the classes, thresholds and label delimiter: ensemble.json or model.json."""
        return self.ensemble if self.ensemble is not None else self.members[0].meta

    @property
    def classes(self) -> list[str]:
        return list(self._described.classes)

    @property
    def multi_label(self) -> bool:
        return bool(self._described.multi_label)

    @property
    def thresholds(self) -> list[float] | None:
        return self._described.thresholds

    @property
    def label_delim(self) -> str:
        return self._described.label_delim

    @property
    def vote(self) -> str | None:
        """The ensemble's vote (soft | hard); None for a run."""
        return None if self.ensemble is None else self.ensemble.vote


def read(folder) -> ModelFolder:
    """The run or ensemble folder `folder` (an ensemble iff it holds ensemble.json)."""
    folder = Path(folder)
    return read_ensemble(folder) if ensemble_meta.is_ensemble(folder) else read_run(folder)


def read_run(folder) -> ModelFolder:
    """A run or bundle folder as its one member, weight 1."""
    folder = Path(folder)
    return ModelFolder(folder, [Member(folder.name, folder, bundle.read_meta(folder), 1.0)])


def read_ensemble(folder) -> ModelFolder:
    """An ensemble folder's members, each checked: present, a readable bundle, and the
    ensemble's classes (in the same order) and multi-label flag, so that their outputs can be
    averaged column by column."""
    folder = Path(folder)
    ens = ensemble_meta.read_meta(folder)
    total = float(sum(ens.weights))
    members = []
    for name, weight in zip(ens.members, ens.weights):
        where = folder / ensemble_meta.MEMBERS / str(name)
        if not where.is_dir():
            raise UsageError(f"{folder}: member {name} is missing ({where})")
        meta = bundle.read_meta(where)
        if list(meta.classes) != list(ens.classes) or bool(meta.multi_label) != bool(ens.multi_label):
            raise UsageError(f"{where}: its classes (in order) or multi-label flag differ from those "
                             f"in {folder / ensemble_meta.FILE}")
        members.append(Member(str(name), where, meta, float(weight) / total))
    return ModelFolder(folder, members, ens)


def check_runs(runs: list[Path]) -> list:
    """The bundle metas of the runs a new ensemble is made of; nested ensembles, and runs that
    differ in kind or in classes, are refused with one line naming the difference."""
    if len(runs) < 2:
        raise UsageError("an ensemble needs at least two runs")
    for r in runs:
        if ensemble_meta.is_ensemble(r):
            raise UsageError(f"{r} is itself an ensemble; nesting ensembles is not supported: "
                             "give its member runs instead")
    metas = [bundle.read_meta(r) for r in runs]
    a, first = runs[0], metas[0]
    kind = {True: "multi-label", False: "single-label"}
    for b, meta in zip(runs[1:], metas[1:]):
        if meta.multi_label != first.multi_label:
            raise UsageError(f"{a.name} is {kind[first.multi_label]} but {b.name} is "
                             f"{kind[meta.multi_label]}; members must be the same kind of model")
        if meta.classes != first.classes:
            what = "label sets" if first.multi_label else "classes"
            only_a = [c for c in first.classes if c not in meta.classes]
            only_b = [c for c in meta.classes if c not in first.classes]
            if not only_a and not only_b:
                raise UsageError(f"{a.name} and {b.name} have the same {what} in a different "
                                 f"order ({', '.join(first.classes[:8])} vs {', '.join(meta.classes[:8])})")
            raise UsageError(f"{a.name} and {b.name} have different {what}: only in {a.name}: "
                             f"{', '.join(only_a[:8]) or '-'}; only in {b.name}: {', '.join(only_b[:8]) or '-'}")
    return metas
