"""Ensembles: several trained runs that vote, kept in one self-contained folder.

```
ENSEMBLE/
  ensemble.json   format, kind = "ensemble", vote (soft | hard), weights (sum 1, one per member),
                  members (folder names under members/), classes, multi_label, label_delim,
                  thresholds (multi-label soft vote: searched on the ensemble's own averaged
                  probabilities; null = 0.5), created, versions
  members/NAME/model/   each member's own bundle (weights.safetensors + model.json)
  members/NAME/splits.csv   each member's recorded split (provenance, overlap check)
  members/NAME/config.toml  each member's resolved config (provenance; `distill` takes the
                  student's data settings from the first member's)
  splits.csv      the items the members share; the shared validation items have split == "valid"
  metrics.json, report.md   each member and the ensemble on the shared validation items
```

A folder is an ensemble iff it holds ensemble.json. The members' bundles are copied in, so the
folder can be moved alone. Every member keeps its own preprocessing (input size, resize,
normalisation, TTA mirrors): an image is decoded once per distinct (size, resize) and each
member is fed its own pixels.

Votes (the weights are normalised to sum 1):

* soft: the weighted mean of the members' probabilities.
* hard, single-label: each member votes for its top class with its weight. The output row is
  the vote shares (they sum to 1), rounded to 1e-9, plus 1e-10 x the weighted mean probability:
  the share decides, and a tie between shares is broken by the mean probability, while every
  consumer still reads a probability-like matrix (the arg-max is the voted class).
* hard, multi-label: each member decides each label at its own thresholds; the output is the
  weighted share of members that say "on" (rounded to 1e-9) plus 1e-10 x the weighted mean of
  (probability - member threshold), read at 0.5: a label is on when a weighted majority says so,
  an exact half is broken by that mean margin (on when >= 0). No threshold is searched (null).

Nested ensembles are refused (a member must be a trained run), not flattened: the weights of a
flattened ensemble would silently change meaning.

Prediction code only: nothing here imports training code.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..config import INFER_BS
from . import members as model_members, spec
from .decoding import Input, decode_per_input, distinct, gathered, input_of
from .ensemble_meta import MEMBERS, VOTES, EnsembleMeta, write_meta

SHARE_DECIMALS = 9      # vote shares are compared at this precision ...
TIE_BREAK = 1e-10       # ... and a tie is broken by this much of the mean probability (margin)


# --- voting ----------------------------------------------------------------------------------

def normalise_weights(weights, n: int) -> list[float]:
    """`weights` (None = equal) as n positive numbers summing to 1; wrong count or a weight
    that is not positive is a usage error."""
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise UsageError(f"--weights has {len(w)} value(s) for {n} members; give one per member")
    if not all(np.isfinite(x) and x > 0 for x in w):
        raise UsageError(f"--weights must all be positive numbers, got {','.join(map(str, weights))}")
    total = sum(w)
    return [x / total for x in w]


def soft_vote(member_probs: list[np.ndarray], weights) -> np.ndarray:
    """The weighted mean of the members' probabilities (weights summing to 1)."""
    w = np.asarray(weights, dtype=float)
    return np.tensordot(w / w.sum(), np.stack(member_probs), axes=1)


def hard_vote(member_probs: list[np.ndarray], weights, multi_label: bool = False,
              thresholds: list | None = None) -> np.ndarray:
    """Weighted majority vote as a probability-like matrix (see the module docstring).

    Single-label: vote shares of the members' top classes, ties broken by the weighted mean
    probability. Multi-label: the weighted share of members that decide a label on (each at its
    own `thresholds`, one array per member, default 0.5), read at 0.5, an exact half broken by
    the weighted mean of (probability - threshold).
    """
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    stack = np.stack(member_probs)                     # M x N x C
    if multi_label:
        thr = np.stack([np.broadcast_to(np.asarray(t if t is not None else 0.5, dtype=float),
                                        stack.shape[2]) for t in
                        (thresholds if thresholds is not None else [None] * len(stack))])
        on = stack >= thr[:, None, :]
        share = np.tensordot(w, on.astype(float), axes=1)
        margin = np.tensordot(w, stack - thr[:, None, :], axes=1)
        return np.round(share, SHARE_DECIMALS) + TIE_BREAK * margin
    top = stack.argmax(axis=2)                          # M x N
    share = np.zeros(stack.shape[1:])
    rows = np.arange(stack.shape[1])
    for m in range(len(stack)):
        share[rows, top[m]] += w[m]
    mean = np.tensordot(w, stack, axes=1)
    return np.round(share, SHARE_DECIMALS) * (1 - TIE_BREAK) + TIE_BREAK * mean


# --- prediction ------------------------------------------------------------------------------

class EnsemblePredictor:
    """An ensemble folder's members with their own preprocessing, voting as ensemble.json says.

    Same interface as predict.Predictor where callers use it: `meta` (classes, multi_label,
    thresholds, label_delim), `classes`, `probabilities(paths, tta, bs) -> (probs, kept)`;
    plus `member_probabilities` for per-member figures.
    """

    kind = "ensemble"

    def __init__(self, folder):
        from .predict import Predictor

        self.folder = Path(folder)
        read = model_members.read_ensemble(self.folder)   # members present, classes checked
        self.meta = read.ensemble
        self.names = [m.name for m in read.members]
        self.weights = np.asarray(self.meta.weights, dtype=float)
        self.members = [Predictor(m.folder) for m in read.members]

    @property
    def spec(self):
        """How the ensemble is run (ensemble.json `inference`): TTA for every member or none
        (each over its own mirrors, at its own size), and the ensemble's thresholds."""
        return self.meta.inference

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def inputs(self) -> list[Input]:
        """The members' distinct (size, resize): each image is decoded once per input."""
        return distinct(input_of(m.meta) for m in self.members)

    def combine(self, member_probs: list[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities (or hard-vote matrix) from the members'."""
        if self.meta.vote == "hard":
            from ..models.decisions import decision_thresholds
            return hard_vote(member_probs, self.weights, self.meta.multi_label,
                             [decision_thresholds(m.meta) for m in self.members])
        return soft_vote(member_probs, self.weights)

    def each_member_on(self, pixels: dict, tta: bool | None = None, bs: int = INFER_BS) -> list[np.ndarray]:
        """Each member's probabilities for decoded images given per input, on its own pixels;
        `tta` None: as the ensemble's spec says."""
        tta = self.spec.tta if tta is None else tta
        return [m.probabilities_of(pixels[input_of(m.meta)], tta, bs) for m in self.members]

    def probabilities_by_input(self, pixels: dict, bs: int = INFER_BS) -> np.ndarray:
        """The ensemble's probabilities for decoded images given per input
        ({(size, resize): N x S x S x 3})."""
        return self.combine(self.each_member_on(pixels, bs=bs))

    def member_probabilities(self, paths: list[str], tta: bool | None = None, bs: int = INFER_BS,
                             progress: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
        """([probs N'xC of each member], kept indices into `paths`). Each image is decoded once
        per distinct (size, resize) of the members, in batches of `bs`; unreadable images are
        skipped with a warning."""
        from fastprogress.fastprogress import progress_bar

        pieces, kept = [], []
        starts = range(0, len(paths), bs)
        batches = progress_bar(starts) if progress and len(starts) > 3 else starts
        for start in batches:
            pixels, ok = decode_per_input(paths[start:start + bs], self.inputs)
            if not len(ok):
                continue
            pieces.append(np.stack(self.each_member_on(pixels, tta, bs), axis=1))  # N x M x C
            kept.append(ok + start)
        stacked, kept = gathered(pieces, kept, len(paths))
        return [np.ascontiguousarray(stacked[:, i]) for i in range(len(self.members))], kept

    def probabilities(self, paths: list[str], tta: bool | None = None, bs: int = INFER_BS,
                      workers: int = 0, progress: bool = True):
        """(probs N'xC, kept indices into `paths`), as predict.Predictor.probabilities."""
        member_probs, kept = self.member_probabilities(paths, tta, bs, progress)
        return self.combine(member_probs), kept


# --- measuring -------------------------------------------------------------------------------

def measure(predictor: EnsemblePredictor, items, tta: bool | None = None, bs: int = INFER_BS,
            threshold: float | None = None):
    """(ensemble figures, {member name: figures}, ensemble probs, truth) on labelled `items`,
    every member and the ensemble on the same (readable) images; multi-label members at their
    own thresholds, the ensemble at its own (`threshold` overrides both)."""
    from . import evaluate as ev

    member_probs, kept = predictor.member_probabilities(items["path"].tolist(), tta, bs)
    probs = predictor.combine(member_probs)
    rows = items.iloc[kept]
    figures, y = ev.score(probs, rows, predictor.meta, threshold)
    members = {name: ev.score(p, rows, m.meta, threshold)[0]
               for name, m, p in zip(predictor.names, predictor.members, member_probs)}
    return figures, members, probs, y


# --- building an ensemble folder -----------------------------------------------------------

def fold_members(runs: list[Path]) -> bool:
    """Whether `runs` are fold models of one k-fold job (`fit --folds`: RUN/fold-1 ... RUN/fold-K
    beside RUN/folds.csv, train/kfold.py)."""
    import re
    parents = {Path(os.path.abspath(r)).parent for r in runs}
    return (len(runs) >= 2 and len(parents) == 1 and (next(iter(parents)) / "folds.csv").is_file()
            and all(re.fullmatch(r"fold-\d+", Path(os.path.abspath(r)).name) for r in runs))


def shared_items(runs: list[Path], data_given: bool):
    """The items every member lists with the same split (a DataFrame like splits.csv), after
    refusing members where one's training items are another's validation items (unless
    `data_given`: the ensemble is then measured on other data). None when `data_given` and
    some member has no splits.csv.

    Fold models of one k-fold job (`fold_members`) overlap so by design: each trains on the
    others' held-out folds. They pass the check; the items they share with one split are the
    dataset's validation and test items (split "test" in every fold's splits.csv: no fold
    trained on them nor chose its epoch on them), so a fold ensemble is measured there (or on
    --data), never on a fold's held-out items."""
    import pandas as pd

    from ..data import splits

    recorded = {}
    for r in runs:
        if not (r / "splits.csv").is_file():
            if data_given:
                return None
            raise UsageError(f"{r} has no splits.csv, so its validation images are unknown; "
                             "pass --data PATH to measure the ensemble on labelled data")
        recorded[r] = splits.recorded(r)
    if not data_given and not fold_members(runs):
        overlaps = []
        for a in runs:
            for b in runs:
                if a is not b:
                    train = set(recorded[a].index[recorded[a] == "train"])
                    n = int(sum(p in train for p in recorded[b].index[recorded[b] == "valid"]))
                    if n:
                        overlaps.append((a, b, n))
        if overlaps:
            pairs = "; ".join(f"{a.name} trained on {n} of {b.name}'s validation images"
                              for a, b, n in overlaps[:4]) + ("; ..." if len(overlaps) > 4 else "")
            raise UsageError(f"the members do not share one split ({pairs}): the ensemble's "
                             f"validation figures would be inflated; refit them with --splits-from "
                             f"{runs[0]}, or pass --data PATH to measure on other labelled data")
    first = splits.read(runs[0] / "splits.csv")
    first = first.drop_duplicates("path")
    same = pd.Series(True, index=first.index)
    for r in runs[1:]:
        same &= first["path"].map(recorded[r]).eq(first["split"])
    return first[same].reset_index(drop=True)


def _member_names(runs: list[Path]) -> list[str]:
    """Folder names under members/: the source run folders' names, made unique."""
    names: list[str] = []
    for r in runs:
        base = Path(os.path.abspath(r)).name or "run"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _thresholds_config(run: Path) -> tuple[str, str]:
    """(metric, mode) of a run's config.toml [thresholds], or the defaults."""
    import tomllib

    from ..config import ThresholdsConfig
    try:
        table = tomllib.loads((run / "config.toml").read_text()).get("thresholds", {})
    except (OSError, tomllib.TOMLDecodeError):
        table = {}
    return (table.get("metric", ThresholdsConfig.metric), table.get("mode", ThresholdsConfig.mode))


@dataclass
class Built:
    folder: Path
    meta: EnsembleMeta
    figures: dict            # the ensemble's (at its thresholds when tuned)
    members: dict            # member name -> figures
    source: str              # what it was measured on
    before: dict | None = None   # multi-label soft: the ensemble's figures at 0.5
    search: object = None        # thresholds.Search
    evidence: object = None      # report.html.Evidence: the predictions behind its curves


def build(runs: list[Path], parent: Path, name: str | None = None, vote: str = "soft",
          weights=None, data_path: str | None = None, labels: str = "folder",
          metric: str | None = None, mode: str | None = None, bs: int = INFER_BS) -> Built:
    """Make parent/NAME (or parent/ensemble-N): copy the members in, write ensemble.json and
    the shared splits.csv, measure each member and the ensemble, search multi-label thresholds
    (soft vote) on the ensemble's own probabilities, write metrics.json and report.md."""
    from . import bundle
    from ..models import runs as runfolders
    from .. import data
    from ..config import DataConfig
    from ..data import splits
    from . import thresholds as th

    runs = [Path(r) for r in runs]
    if vote not in VOTES:
        raise UsageError(f"--vote must be one of {', '.join(VOTES)}, got {vote!r}")
    metas = model_members.check_runs(runs)
    w = normalise_weights(weights, len(runs))
    first = metas[0]
    search_metric, search_mode = _thresholds_config(runs[0])
    search_metric, search_mode = metric or search_metric, mode or search_mode
    if first.multi_label and search_metric not in th.METRICS:
        raise UsageError(f"--metric must be one of {', '.join(th.METRICS)}, got {search_metric!r}")
    if first.multi_label and search_mode not in th.MODES:
        raise UsageError(f"--mode must be one of {', '.join(th.MODES)}, got {search_mode!r}")
    shared = shared_items(runs, data_given=bool(data_path))
    if data_path:
        from .evaluate import labelled_items
        items, source = labelled_items(None, data_path, labels, first.label_delim)
        _warn_trained_on(runs, items)
        shared = items.assign(split="valid")
    else:
        if fold_members(runs) and (shared["split"] == "test").any():
            # fold models: the dataset's validation and test items, in no fold (shared_items)
            items = shared[shared["split"] == "test"]
            source = ("the dataset's validation and test items, in none of the folds (no fold "
                      "model trained on them or chose its epoch on them)")
        else:
            if not (shared["split"] == "valid").any():
                raise UsageError("the members share no validation images (trained on other "
                                 "data?); pass --data PATH to measure the ensemble on labelled data")
            # a member trained on them (fit --full) makes them no evidence: the shared test
            # split, or refused; refused outright where thresholds are searched (the test split
            # stays unseen)
            from .evaluate import evidence_split
            items, split = evidence_split(shared, "the members' shared split", runs,
                                          tune=first.multi_label and vote == "soft")
            source = ("the members' shared validation split (it chose their best epochs: "
                      "optimistic)" if split == "valid" else "the members' shared test split (a "
                      "member was trained on the validation images by fit --full)")

    folder = runfolders.new_folder(parent, "ensemble", name)
    try:
        names = _member_names(runs)
        for run, member in zip(runs, names):
            target = folder / MEMBERS / member
            (target / "model").mkdir(parents=True)
            src = bundle.find(run)
            for f in (bundle.WEIGHTS, bundle.META):
                shutil.copy2(src / f, target / "model" / f)
            for record in ("splits.csv", "config.toml"):  # provenance; distill reads the config
                if (run / record).is_file():
                    shutil.copy2(run / record, target / record)
        # relative to the dataset measured on: --data's, or the members'
        root = (data.dataset_root(DataConfig(path=data_path)) if data_path
                else splits.record_root(runs[0] / "splits.csv"))
        splits.write(shared, folder / "splits.csv", root)
        trained_on = (spec.TRAIN_VALID if any(m.inference.trained_on == spec.TRAIN_VALID
                                              for m in metas) else spec.TRAIN)
        inference = spec.InferenceSpec(tta=all(m.inference.tta for m in metas), chosen_by="members",
                                       trained_on=trained_on,
                                       split_digest=spec.split_digest(folder / "splits.csv"))
        meta = EnsembleMeta(vote=vote, weights=w, members=names, classes=list(first.classes),
                            multi_label=first.multi_label, label_delim=first.label_delim,
                            data_root=str(root), inference=inference,
                            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            versions=bundle.library_versions())
        write_meta(folder, meta)
        predictor = EnsemblePredictor(folder)
        figures, members, probs, y = measure(predictor, items, bs=bs)
        built = Built(folder, meta, figures, members, source)
        if meta.multi_label and vote == "soft":
            from .metrics import multi_label
            built.search = th.search(probs, y, search_metric, search_mode)
            spec.set_thresholds(meta.inference, built.search.thresholds, predictor, None,
                                search_metric, search_mode, source)
            write_meta(folder, meta)
            built.before = multi_label(probs, y, meta.classes, 0.5)
            built.figures = multi_label(probs, y, meta.classes, meta.thresholds)
        from ..report.html import evidence_of
        built.evidence = evidence_of(predictor, items, probs, y, source)
        write_report(built)
        return built
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)   # never a half-made ensemble
        raise


def _warn_trained_on(runs: list[Path], items) -> None:
    """Say on stderr when members trained on some of the images the ensemble is measured on."""
    from ..data import splits
    import os
    paths = {os.path.normpath(p) for p in items["path"]}
    for r in runs:
        if (r / "splits.csv").is_file():
            rec = splits.recorded(r)
            n = sum(p in paths for p in rec.index[rec == "train"])
            if n:
                print(f"warning: {n} of these images were training images of {r.name}: its "
                      "figures (and the ensemble's) are optimistic", file=sys.stderr)


def write_report(built: Built, folder: Path | None = None, title: str | None = None) -> None:
    """metrics.json (the ensemble's figures plus "members") and report.md with a table of each
    member and the ensemble."""
    from .. import report

    meta = built.meta
    folder = folder or built.folder
    table = report.members_table(built.members, built.figures, meta.multi_label)
    weights = ", ".join(f"{n} {w:.3g}" for n, w in zip(meta.members, meta.weights))
    extra = [f"{meta.vote.capitalize()} vote of {len(meta.members)} members (weights: {weights}).", "",
             f"Data: {built.source}.", "", "## Members and ensemble", "", *table, "",
             "## Ensemble", ""]
    record = dict(built.figures, vote=meta.vote, weights=meta.weights,
                  members=report.headline(built.members, meta.multi_label))
    title = title or f"Ensemble {built.folder.name}"
    if meta.multi_label:
        report.write_multilabel_metrics(folder, record, title, extra=extra, before=built.before,
                                        search=built.search, evidence=built.evidence)
    else:
        report.write_metrics(folder, record, meta.classes, title, extra=extra, evidence=built.evidence)
