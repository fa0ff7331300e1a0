"""Knowledge distillation: train a student on a teacher's softened outputs.

`clfapp distill TEACHER --arch ARCH` is an ordinary `fit` (same data pipeline, callbacks,
run folder, metrics and results.csv) with two additions, made through `train.fit`'s
`on_prepared` hook once the Learner exists:

* the loss becomes `DistillationLoss`: alpha x the run's own hard-label loss +
  (1 - alpha) x a soft term against the teacher's probabilities at temperature T:
    - single-label: T^2 x KL(teacher_T || student_T), softmax at T, batchmean;
    - multi-label: T^2 x BCE(student logits / T, teacher's sigmoid probabilities at T), mean
      over images and labels (the BCE against soft targets differs from a KL only by the
      teacher's entropy, a constant, so the gradients are those of a KL).
  The T^2 keeps the soft term's gradients the same size whatever T (Hinton et al. 2015).
  Validation batches get the hard loss alone: valid_loss in results.csv is the same figure a
  normal fit reports, so a student's curves compare with a plain run's.
* `TeacherSignal`, a fastai Callback, hands the teacher's probabilities for the current
  training batch to the loss (its `teacher` attribute) in `after_pred`, when `xb` is the
  batch the student just saw: augmented, and mixed by MixUp/CutMix when those are on.

The teacher (a run folder, or an ensemble folder per ensemble.py's format) sees each batch
through its own preprocessing: the student's batch is un-normalised with the student's
mean/std, resized with `F.interpolate` (bilinear, antialiased when shrinking) to each member's
input size when it differs, and normalised with the member's mean/std. (Pixels were decoded
with the student's `data.resize`; a teacher trained with another resize method sees them as
the student does, which is said on stderr.) An ensemble's signal is the weighted mean of its
members' probabilities, each at temperature T (at T = 1 exactly its soft vote); a hard-vote
ensemble is distilled from these soft probabilities as well, since a vote share carries no
more than the arg-max.

MixUp / CutMix: fastai's handlers mix `xb` in `before_batch`, so the live teacher sees the
mixed images. For single-label losses (`y_int`) MixUp swaps in a loss that calls ours twice
with reduction 'none' (once per target set) and interpolates by lambda; the soft term does not
depend on the targets, so the result is alpha x mixed hard loss + (1 - alpha) x KD against
the teacher's view of the mixed image, which is right. Multi-label: MixUp mixes the label
vectors and calls the loss once: also right. The cached route cannot know a mixed image's
teacher output and refuses MixUp/CutMix.

The cached route (`cache=True`, `--cache-teacher`): the teacher's probabilities are computed
once per training image on the un-augmented decoded pixels (data.Dataset.pixels, through the
same preprocessing as above) before training, and looked up per batch: the training
DataLoader's items are positions in the training split (position k is
`ds.indices("train")[k]`), and fastai keeps the epoch's (shuffled) order in the DataLoader
(compat.loader_order), batch i being positions [i*bs, (i+1)*bs). No teacher forward per batch,
at the price of fidelity: the teacher's target describes the un-augmented image while the
student sees a flipped, rotated, re-lit one. With augmentation off both routes give the same
loss (tests/test_distill.py).

Measured (bench/distill_cost.py, digits, 2 idle CPU cores; teacher resnet10t, student
test_resnet at 32 px, 8 epochs, T = 2, alpha = 0.5): student alone 1.42 s/epoch, accuracy
0.984; live teacher 1.87 s/epoch (0.53 s of it the teacher), 0.989; cached 1.35 s/epoch plus
0.54 s once, 0.987 (380 validation images: the accuracy gaps are within noise).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from torch import nn

from ..infer import bundle, members as model_members, model_io
from ..errors import UsageError
from ..config import INFER_BS
from ..models.pickles import refuse_pickle


# --- the teacher -----------------------------------------------------------------------------

@dataclass
class Member:
    name: str
    model: nn.Module
    meta: bundle.BundleMeta
    weight: float
    cols: list[int] | None = None   # teacher output column of each student class (None: same)


@dataclass
class Teacher:
    """A run's model, or an ensemble's members, with their own preprocessing and weights."""
    folder: Path
    kind: str                        # "run" | "ensemble"
    members: list[Member]
    classes: list[str]
    multi_label: bool
    vote: str = "soft"
    config: Path | None = None       # the config.toml the student starts from, if any
    splits: Path | None = None       # the folder holding the teacher's splits.csv, if any
    seconds: float = field(default=0.0)

    def to(self, device) -> "Teacher":
        for m in self.members:
            m.model.to(device)
        return self

    def match(self, classes: list[str], multi_label: bool) -> None:
        """Line the teacher's outputs up with the student's classes (same set, any order)."""
        if multi_label != self.multi_label:
            kinds = ("single-label", "multi-label")
            raise UsageError(f"the teacher {self.folder} is {kinds[self.multi_label]} and the "
                             f"student's data is {kinds[multi_label]}")
        if sorted(map(str, classes)) != sorted(map(str, self.classes)):
            raise UsageError(f"the teacher {self.folder} knows the classes "
                             f"{', '.join(self.classes[:8])}; the student's data has "
                             f"{', '.join(map(str, classes[:8]))}; distill on the teacher's data")
        for m in self.members:
            index = {c: i for i, c in enumerate(m.meta.classes)}
            cols = [index[str(c)] for c in classes]
            m.cols = None if cols == list(range(len(cols))) else cols

    def probabilities(self, x01: torch.Tensor, temperature: float) -> torch.Tensor:
        """The teacher's probabilities at `temperature` for images in [0, 1] (N,3,S,S, any S):
        the weighted mean of the members' softmax (sigmoid) of logits / T."""
        out = None
        with torch.no_grad():
            for m in self.members:
                logits = m.model(member_input(x01, m.meta)).float()
                if m.cols is not None:
                    logits = logits[:, m.cols]
                p = model_io.activate(logits / temperature, self.multi_label)
                out = p * m.weight if out is None else out + p * m.weight
        return out

    def describe(self) -> dict:
        return {"teacher": str(self.folder.absolute()), "kind": self.kind, "vote": self.vote,
                "members": [{"name": m.name, "arch": m.meta.arch, "size": m.meta.size,
                             "resize": m.meta.resize, "weight": round(m.weight, 6)}
                            for m in self.members]}


def member_input(x01: torch.Tensor, meta: bundle.BundleMeta) -> torch.Tensor:
    """A batch of images in [0, 1] as a member expects it: its size, its normalisation."""
    size = x01.shape[-1]
    if meta.size != size or x01.shape[-2] != meta.size:
        x01 = F.interpolate(x01, size=(meta.size, meta.size), mode="bilinear",
                            align_corners=False, antialias=meta.size < size)
    mean, std = model_io.channel_stats(meta.mean, like=x01), model_io.channel_stats(meta.std, like=x01)
    return model_io.normalise(x01, mean, std).contiguous(memory_format=torch.channels_last)


def load_teacher(folder) -> Teacher:
    """A teacher from a run folder (model/ bundle) or an ensemble folder (ensemble.json), its
    members read and checked as everywhere else (infer/members.py); anything else is a usage
    error."""
    folder = Path(folder)
    refuse_pickle(folder, "teacher ")
    if not folder.is_dir():
        raise UsageError(f"teacher {folder} is not a folder; give a run folder (runs/NAME) or "
                         "an ensemble folder")
    try:
        source = model_members.read(folder)
        members = [Member(m.name, _frozen(bundle.load(m.folder)[0]), m.meta, m.weight)
                   for m in source.members]
    except UsageError as e:
        raise UsageError(f"teacher {folder}: {e}")
    if source.ensemble is None:
        run = folder.parent if folder.name == "model" and not (folder / "model").is_dir() else folder
        return Teacher(folder, "run", members, source.classes, source.multi_label,
                       config=_first_file([run / "config.toml"]),
                       splits=run if (run / "splits.csv").is_file() else None)
    # the members share the ensemble's class order (checked): their columns line up as they are
    return Teacher(folder, "ensemble", members, source.classes, source.multi_label, source.vote,
                   config=_first_file([folder / "config.toml",
                                       source.members[0].folder / "config.toml"]),
                   splits=folder if (folder / "splits.csv").is_file() else None)


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(memory_format=torch.channels_last)


def _first_file(candidates) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


# --- the student's starting config ------------------------------------------------------------

FROM_TEACHER = ("data", "aug")
"""The config sections a student takes from its teacher's config.toml: the data (path, labels,
split, size, resize...) and the augmentation. Everything else (model.*: head, cut_blocks,
pretrained; train.*: LR, freeze policy, epochs, batch size; loss.*; thresholds.*) starts from
config.py's defaults for the student's arch: the teacher's recipe was tuned for the teacher's
arch. More comes only from the flags and --set."""


def student_base(teacher: Teacher, size_given: bool = False) -> dict:
    """The tables a student's config starts from (config.load's `base`): the teacher's data
    and augmentation (FROM_TEACHER) and the size the teacher predicts at (model.json's input
    size, as data.test_size; its first member's for an ensemble) so the student is measured
    and shipped at the teacher's inference size. A teacher without a config.toml (an ensemble
    of bare bundles) gives its first member's size and resize. `size_given` (--size or --set
    data.size): the student trains at another size, so its test size is its own (auto)."""
    from .. import config

    first = teacher.members[0].meta
    if teacher.config is not None:
        whole = config.to_dict(config.from_file(teacher.config))
        base = {"recipe": whole["recipe"], **{s: dict(whole[s]) for s in FROM_TEACHER}}
    else:
        base = {"data": {"size": first.size, "resize": first.resize}}
    base["data"]["test_size"] = 0 if size_given else first.input_size
    return base


# --- the loss --------------------------------------------------------------------------------

class DistillationLoss(nn.Module):
    """alpha x hard-label loss + (1 - alpha) x T^2 x soft term (see the module docstring).

    `forward(student_logits, targets)` reads the teacher's probabilities at T for the current
    batch from `self.teacher` (set by `TeacherSignal`); None (validation) gives the hard loss.
    `reduction = 'none'` (what fastai's MixUp asks for) gives one loss per image
    (single-label only).
    """

    def __init__(self, hard, multi_label: bool, temperature: float, alpha: float):
        super().__init__()
        self.hard, self.multi_label = hard, multi_label
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.teacher: torch.Tensor | None = None
        self.reduction = "mean"

    @property
    def y_int(self) -> bool:
        """As the hard loss: MixUp mixes the losses (True) or the targets (False)."""
        return getattr(self.hard, "y_int", False)

    def activation(self, x):
        return self.hard.activation(x)

    def decodes(self, x):
        return self.hard.decodes(x)

    def _hard_loss(self, logits, targets):
        if self.reduction == "mean":
            return self.hard(logits, targets)
        from fastai.layers import NoneReduce
        with NoneReduce(self.hard) as lf:
            return lf(logits, targets)

    def soft(self, logits: torch.Tensor) -> torch.Tensor:
        """T^2 x the soft term against `self.teacher` (per image when reduction is 'none')."""
        T, p = self.temperature, self.teacher.float()
        z = logits.float() / T
        if self.multi_label:
            per = F.binary_cross_entropy_with_logits(z, p, reduction="none").mean(dim=1)
        else:
            per = F.kl_div(F.log_softmax(z, dim=1), p, reduction="none").sum(dim=1)
        per = per * T * T
        return per if self.reduction == "none" else per.mean()

    def forward(self, logits, targets):
        hard = self._hard_loss(logits, targets)
        if self.teacher is None or self.alpha == 1.0:
            return hard
        if self.teacher.shape != logits.shape:
            raise RuntimeError(f"internal error: teacher output {tuple(self.teacher.shape)} for a "
                               f"student output {tuple(logits.shape)}")
        return self.alpha * hard + (1.0 - self.alpha) * self.soft(logits)


# --- the callback ----------------------------------------------------------------------------

class TeacherSignal(Callback):
    """Give `loss.teacher` the teacher's probabilities for each training batch.

    Live (`table` None): the teacher runs on the batch the student just saw (after
    augmentation and MixUp), under no_grad, through its own preprocessing. Cached: rows of
    `table` (one per training position) looked up by the DataLoader's order for this epoch.
    `seconds` holds the teacher's time in each training epoch.
    """
    order = 20   # after_pred: after CPUBFloat16 (10) has cast the prediction to float

    def __init__(self, teacher: Teacher, loss: DistillationLoss, mean, std, table=None):
        self.teacher, self.dloss, self.table = teacher, loss, table
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.seconds: list[float] = []
        self.epoch_seconds = 0.0

    def before_fit(self):
        self.finder = hasattr(self.learn, "lr_finder")

    def before_train(self):
        self.epoch_seconds = 0.0

    def after_train(self):
        if not self.finder:
            self.seconds.append(round(self.epoch_seconds, 3))

    def after_pred(self):
        if not self.training:
            self.dloss.teacher = None
            return
        t0 = time.perf_counter()
        self.dloss.teacher = self._cached() if self.table is not None else self._live()
        self.epoch_seconds += time.perf_counter() - t0

    def _live(self) -> torch.Tensor:
        x = self.learn.xb[0].as_subclass(torch.Tensor).float()
        x01 = x * self.std.to(x.device) + self.mean.to(x.device)
        return self.teacher.probabilities(x01, self.dloss.temperature)

    def _cached(self) -> torch.Tensor:
        dl = self.learn.dl
        from ..models.compat import loader_order
        order = loader_order(dl)
        n = len(self.learn.pred)
        pos = order[self.learn.iter * dl.bs: self.learn.iter * dl.bs + n]
        return self.table[torch.as_tensor(list(pos), dtype=torch.long)].to(self.learn.pred.device)

    def after_fit(self):
        self.dloss.teacher = None


def teacher_table(teacher: Teacher, pixels: np.ndarray, temperature: float, device=None,
                  bs: int = INFER_BS) -> torch.Tensor:
    """The teacher's probabilities at T for decoded images (N x S x S x 3 uint8), un-augmented."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    out = []
    for i in range(0, len(x), bs):
        xb = x[i:i + bs].to(device).float() / 255.0
        out.append(teacher.probabilities(xb, temperature).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(teacher.classes))


def attach(prep, teacher: Teacher, temperature: float, alpha: float, cache: bool = False) -> TeacherSignal:
    """Turn a prepared fit (train.Prepared) into a distillation: wrap its loss, add the
    teacher's callback, and (cache) compute the teacher's outputs on the training images."""
    learn, ds = prep.learn, prep.dataset
    teacher.match(list(ds.classes), ds.multi_label)
    device = learn.dls.device
    teacher.to(device)
    loss = DistillationLoss(learn.loss_func, ds.multi_label, temperature, alpha)
    learn.loss_func = loss
    table = None
    if cache:
        t0 = time.perf_counter()
        table = teacher_table(teacher, ds.pixels[ds.indices("train")], temperature, device)
        teacher.seconds = time.perf_counter() - t0
        print(f"teacher outputs cached for {len(table)} training images in {teacher.seconds:.1f} s",
              flush=True)
    cb = TeacherSignal(teacher, loss, prep.arch.mean, prep.arch.std, table)
    learn.add_cb(cb)
    return cb


# --- the whole run ---------------------------------------------------------------------------

def check_options(temperature: float, alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must be between 0 and 1 (the hard-label loss's share), got {alpha}")
    if not temperature > 0:
        raise UsageError(f"--temperature must be positive, got {temperature}")


def run(cfg, folder: Path, teacher: Teacher, temperature: float = 1.5, alpha: float = 0.5,
        cache: bool = False):
    """Fit the student per `cfg` into `folder` distilling from `teacher`; write distill.json
    and a report.md line. Returns train.FitResult."""
    from .. import train

    check_options(temperature, alpha)
    if cache and (cfg.aug.mixup > 0 or cfg.aug.cutmix > 0):
        raise UsageError("--cache-teacher holds the teacher's outputs for the un-mixed images; "
                         "MixUp/CutMix (aug.mixup / aug.cutmix) need the live teacher: drop one")
    if teacher.vote == "hard":
        print("note: the teacher ensemble votes hard; the student learns from its members' "
              "weighted mean probabilities (a vote share carries no more than the arg-max)",
              file=sys.stderr)
    for m in teacher.members:
        if m.meta.resize != cfg.data.resize:
            print(f"note: teacher {m.name} was trained with resize = {m.meta.resize}; it sees the "
                  f"student's {cfg.data.resize} pixels", file=sys.stderr)
    print(f"distilling from {teacher.folder} ({_kind(teacher)}), T = {temperature}, alpha = {alpha}, "
          f"teacher {'cached once' if cache else 'live on every augmented batch'}", flush=True)
    state = {}

    def on_prepared(prep):
        state["cb"] = attach(prep, teacher, temperature, alpha, cache)
    result = train.fit(cfg, folder, on_prepared=on_prepared)
    if "cb" in state:
        write_record(folder, teacher, state["cb"], temperature, alpha, cache)
    return result


def _kind(teacher: Teacher) -> str:
    if teacher.kind == "run":
        return f"run, {teacher.members[0].meta.arch}"
    return f"ensemble of {len(teacher.members)}, {teacher.vote} vote"


def write_record(folder: Path, teacher: Teacher, cb: TeacherSignal, temperature: float,
                 alpha: float, cache: bool) -> dict:
    """distill.json, and the teacher's cost as a line (section) of report.md."""
    import pandas as pd

    per_epoch = cb.seconds
    mean = float(np.mean(per_epoch)) if per_epoch else 0.0
    epoch_total = None
    if (folder / "results.csv").is_file():
        rows = pd.read_csv(folder / "results.csv")
        epoch_total = float(rows["seconds"].mean()) if len(rows) else None
    record = dict(teacher.describe(), temperature=temperature, alpha=alpha, cached=cache,
                  signal=("soft probabilities (weighted mean of the members')"
                          + ("; the ensemble votes hard" if teacher.vote == "hard" else "")),
                  teacher_seconds_per_epoch=round(mean, 3), teacher_seconds_by_epoch=per_epoch,
                  cache_seconds=round(teacher.seconds, 3) if cache else None,
                  epoch_seconds=round(epoch_total, 3) if epoch_total is not None else None,
                  teacher_metrics=_teacher_metrics(teacher.folder))
    (folder / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
    report = folder / "report.md"
    if report.is_file():
        whole = f" of {epoch_total:.2f} s per epoch in all" if epoch_total is not None else ""
        cost = (f"the teacher's outputs were cached once in {teacher.seconds:.2f} s (un-augmented "
                f"training images), so it cost ~{mean:.2f} s per epoch (look-ups){whole}"
                if cache else f"the teacher cost {mean:.2f} s per epoch (one forward per augmented "
                f"training batch){whole}")
        line = (f"Distilled from `{teacher.folder}` ({_kind(teacher)}), T = {temperature}, "
                f"alpha = {alpha}: {cost}. train_loss is the distillation loss; valid_loss and "
                f"the metrics are those of a normal fit.")
        report.write_text(report.read_text().rstrip("\n") + "\n\n## Distillation\n\n" + line + "\n")
    return record


def _teacher_metrics(folder: Path) -> dict | None:
    """The teacher's headline figures from its metrics.json, when it has one."""
    try:
        m = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    keys = ("accuracy", "f1_macro", "f1_micro", "split")
    if not isinstance(m, dict):
        return None
    return {k: m[k] for k in keys if k in m} or None
