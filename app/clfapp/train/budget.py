"""`fit --budget 15m` (train.budget): plan the epochs so the whole command ends within a
wall-time budget, and stop cleanly if it would not.

The budget counts from the moment the `fit` command started (data decoding, the model build and
an LR finder are spent from it) to its end (saving the bundle, measuring every candidate of the
shipped configuration on validation and the chosen one on the test split, the report).

1. `measure`: a few real training steps on the real learner (two warm-up, then up to four
   timed, the batches' loading and augmentation included), then a few validation batches; the
   model, the optimizer and the random state are put back afterwards, so nothing of it counts
   as training. A pretrained model's frozen phase (head only) is timed apart: its backward is
   much cheaper. With progressive resizing, each phase is timed at its start size too.
2. `plan_epochs`: the recipe's epochs when they fit (the budget is a ceiling, never a target:
   to fill a budget, ask for more epochs than fit, `--epochs 100 --budget 15m`); else the most
   epochs that fit, frozen:main in the recipe's proportion, so the one-cycle (which needs its
   length up front) is a whole one that ends within the budget.
3. `Plan.replan_main`: when the frozen phase has ended later than planned, the main phase
   gets fewer epochs, planned from the time really left: its one-cycle has not started yet, so
   it can still be a whole one, where the guard would cut its low-LR tail. Never more epochs:
   the probe's main-phase speed is off by up to about 20% either way (idl at 176 px: 1.14
   s/batch timed, 1.30 over the phase), and the frozen phase's over-estimate is what covered
   that when it ended early (re-planned up to 1+5, that run ended 2 minutes past its 29m).
4. `BudgetGuard`: after each epoch, if the next one (at the speed just measured) would end past
   the budget, less the reserve for the end, the fit stops there; KeepBest keeps the best epoch.

The pure functions take plain numbers, so the planning is tested without training.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..models import compat
from ..config import budget_seconds
from ..errors import UsageError

WARMUP_BATCHES = 2
"""Training batches run before timing starts: the first ones pay for one-off allocations and
for the loader's workers filling their prefetch queue. With one, the first phase timed (the
process's first training) measured 1.67x its steady speed on idl, with two 1.22x
(`python bench/budget_probe.py idl`), and the plan gave away an epoch."""
TIMED_BATCHES = 4
"""Training batches timed after the warm-up (validation: up to this many, after one warm-up)."""
SAFETY = 1.1
"""Planned epochs are estimated 10% slower than measured: speed drifts, and an epoch has costs
the batches do not show (metrics, copying the best weights)."""
END_FIXED_S = 4.0
"""Seconds the end of fit costs whatever the data: rebuilding the model from the bundle, the
plots (matplotlib), report.md."""
END_PASSES = 1.5
"""The end measures the saved bundle on valid (and test) images: this many passes at the
measured validation speed (it also decodes nothing: images are held in memory)."""


def fmt_duration(seconds: float) -> str:
    """90 → "1m30s", 45.2 → "45s", 5400 → "1h30m"."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h"] if h else []
    parts += [f"{m}m"] if m else []
    parts += [f"{s}s"] if s or not parts else []
    return "".join(parts)


def _secs(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 else f"{x:.1f} s"


@dataclass
class Speeds:
    """Measured seconds per batch; `frozen_s` is None when no frozen phase was timed."""
    train_s: float
    valid_s: float
    frozen_s: float | None = None
    overhead_s: float = 0.0
    """Per-epoch cost beyond the batches: the first batch of each pass minus a steady one
    (data loader start, caches), measured."""
    ramp_s: list[float] | None = None
    """With progressive resizing: the main phase's (or the only phase's) seconds per batch as
    timed at the start size and at full size, from which `train_s` is estimated."""


def epoch_seconds(s_per_batch: float, valid_s: float, n_train: int, n_valid: int,
                  overhead_s: float = 0.0) -> float:
    """One epoch: every training batch, then every validation batch, plus its fixed costs."""
    return n_train * s_per_batch + n_valid * valid_s + overhead_s


def reserve_seconds(valid_s_per_item: float, n_eval_items: int, views: int = 1,
                    pixel_ratio: float = 1.0, n_choice_items: int = 0,
                    other_ratios: float = 0.0) -> float:
    """What the end of fit costs: measuring the saved bundle on the validation (and test)
    images, each seen in `views` views with TTA (aug.tta), at `pixel_ratio` times the
    training size's pixels (the largest candidate size), plus fixed costs (END_FIXED_S).
    The choice of the shipped configuration (infer/choice.py) also runs the `n_choice_items`
    validation images in every view at each other candidate size: `other_ratios`, the sum of
    their pixel ratios."""
    return END_FIXED_S + valid_s_per_item * (
        (END_PASSES - 1 + views) * n_eval_items * pixel_ratio
        + views * n_choice_items * other_ratios)


def plan_epochs(frozen: int, main: int, frozen_epoch_s: float, main_epoch_s: float,
                available_s: float, effective=lambda m: m):
    """(frozen, main) epochs to train in `available_s` seconds, or None when not even one epoch
    fits.

    The recipe's (frozen, main) when they fit; otherwise the most main epochs that fit, with
    the frozen phase scaled in proportion (rounded, at least one when the recipe has one), so
    both phases stay whole schedules. `effective(m)`: the epochs a main phase asked for m
    epochs really runs (sgdr rounds down to whole cycles)."""
    def cost(f, m):
        return f * frozen_epoch_s + effective(m) * main_epoch_s

    if cost(frozen, main) <= available_s:
        return frozen, main
    for m in range(main, -1, -1):
        f = min(frozen, max(1, round(frozen * m / main))) if frozen and main else frozen
        if m == 0 and main:
            f = 1 if frozen else 0      # the head's phase alone, the shortest plan
        if f + effective(m) == 0:
            continue
        if cost(f, m) <= available_s:
            return f, m
    if frozen and not main:             # only a frozen phase: fewer of its epochs
        for f in range(frozen - 1, 0, -1):
            if cost(f, 0) <= available_s:
                return f, 0
    return None


def smallest_plan(frozen: int, main: int) -> tuple[int, int]:
    """The plan of one epoch: the frozen phase's when the recipe has one, else the main's."""
    return (1, 0) if frozen else (0, 1)


def should_stop(now: float, next_epoch_s: float, reserve_s: float, deadline: float) -> bool:
    """True when an epoch of `next_epoch_s` started `now`, plus the end's reserve, would end
    after `deadline` (all in perf_counter seconds)."""
    return now + next_epoch_s + reserve_s > deadline


@dataclass
class Plan:
    """The budget's plan for one fit, and afterwards how it went."""
    text: str
    """train.budget as given ("15m")."""
    budget_s: float
    started: float
    """perf_counter() when the command started."""
    speeds: Speeds
    recipe: tuple[int, int]
    planned: tuple[int, int]
    frozen_epoch_s: float
    main_epoch_s: float
    spent_s: float
    """Seconds gone before training (data, model, LR finder, the measurement itself)."""
    reserve_s: float
    pretrained: bool
    changes: dict = field(default_factory=dict)
    """The TrainConfig fields the plan changes (epochs, freeze_epochs, sgdr_cycles)."""
    guard: object = None
    first_planned: tuple[int, int] | None = None
    """`planned` before `replan_main` changed it (None: it did not)."""
    valid_epoch_s: float = 0.0
    """The part of an epoch that is not training batches: validation and per-epoch overhead."""
    ramp: tuple[int, float] | None = None
    """Progressive resizing's (full size, start fraction), or None: epochs then cost more as
    the phase goes on."""

    def epoch_s(self, i: int) -> float:
        """The estimated seconds of epoch `i` (0-based, counted over both phases)."""
        f, m = self.planned
        frozen = i < f
        phase_s, k, n = (self.frozen_epoch_s, i, f) if frozen else (self.main_epoch_s, i - f, m)
        if self.ramp is None or n <= 0:
            return phase_s
        from .progressive import cost_fraction, epoch_cost_fraction
        full, start = self.ramp
        share = epoch_cost_fraction(full, start, k, n) / cost_fraction(full, start)
        return self.valid_epoch_s + (phase_s - self.valid_epoch_s) * share

    @property
    def deadline(self) -> float:
        return self.started + self.budget_s

    def epochs_text(self, fm: tuple[int, int]) -> str:
        return f"{fm[0]}+{fm[1]}" if self.pretrained else str(fm[0] + fm[1])

    def line(self) -> str:
        """The one line fit prints before training."""
        sp = self.speeds
        speed = f"{sp.train_s:.3g} s/batch measured" + (
            f" ({sp.frozen_s:.3g} frozen)" if sp.frozen_s is not None else "")
        if sp.ramp_s and self.ramp:
            from .progressive import size_at
            full, start = self.ramp
            speed += (f" over the size ramp ({sp.ramp_s[0]:.3g} at {size_at(full, start, 0.0)} "
                      f"px, {sp.ramp_s[1]:.3g} at {full} px)")
        f, m = self.planned
        total = self.spent_s + f * self.frozen_epoch_s + m * self.main_epoch_s + self.reserve_s
        kept = ", the recipe's" if self.planned == self.recipe else \
            f" of the recipe's {self.epochs_text(self.recipe)}"
        return (f"budget {self.text}: {speed}, planned {self.epochs_text(self.planned)} epochs"
                f"{kept} (≈ {fmt_duration(total)} in all), {_secs(self.spent_s)} spent before "
                f"training, reserve {_secs(self.reserve_s)}")

    def replan_main(self, now: float, sgdr: bool) -> int | None:
        """Fewer main epochs when the frozen phase, ended at `now` (perf_counter seconds),
        left less time than planned: the most that fit, with the safety margin, in what is
        really left. Returns them when they are fewer than planned (and records the change),
        else None; None also when not even one fits (the guard then stops the fit after the
        frozen phase) and for sgdr, whose whole cycles were planned together."""
        f, m = self.planned
        if sgdr:
            return None
        left = self.deadline - now - self.reserve_s
        fits = [k for k in range(1, m + 1) if k * self.main_epoch_s * SAFETY <= left]
        if not fits or fits[-1] == m:
            return None
        self.first_planned, self.planned = self.planned, (f, fits[-1])
        return fits[-1]

    def replan_line(self, frozen_s: float) -> str:
        """The line fit prints when `replan_main` changed the plan."""
        return (f"budget {self.text}: the frozen phase took {frozen_s:.0f} s "
                f"(≈ {self.planned[0] * self.frozen_epoch_s:.0f} s planned); the main phase "
                f"now gets {self.planned[1]} epochs (was {self.first_planned[1]}), "
                f"{fmt_duration(max(0.0, self.deadline - time.perf_counter()))} left")

    def record(self, epochs_run: int) -> dict:
        """metrics.json's "budget" entry; `used_s` runs from the command's start to now."""
        stopped = bool(self.guard is not None and self.guard.stopped_after is not None)
        return dict(budget=self.text, budget_s=round(self.budget_s, 1),
                    planned_epochs=sum(self.planned), planned=self.epochs_text(self.planned),
                    recipe_epochs=self.epochs_text(self.recipe),
                    first_planned=(None if self.first_planned is None
                                   else self.epochs_text(self.first_planned)),
                    measured_s_per_batch=round(self.speeds.train_s, 4),
                    measured_s_per_batch_frozen=(None if self.speeds.frozen_s is None
                                                 else round(self.speeds.frozen_s, 4)),
                    measured_valid_s_per_batch=round(self.speeds.valid_s, 4),
                    spent_before_training_s=round(self.spent_s, 1),
                    reserve_s=round(self.reserve_s, 1), epochs_run=epochs_run,
                    stopped_by_budget=stopped,
                    used_s=round(time.perf_counter() - self.started, 1))


def report_line(rec: dict) -> str:
    """report.md's line on how the budget was spent."""
    how = (f"stopped by the budget after {rec['epochs_run']} of {rec['planned_epochs']} planned "
           f"epochs (the next would have ended past it)" if rec["stopped_by_budget"]
           else f"{rec['epochs_run']} epochs ran")
    plan = ("the recipe's epochs fit" if rec["planned"] == rec["recipe_epochs"]
            else f"the recipe asked {rec['recipe_epochs']}")
    if rec.get("first_planned"):
        plan += f"; {rec['first_planned']} until the frozen phase ran late"
    return (f"Budget {rec['budget']} ({rec['budget_s']:.0f} s): planned {rec['planned']} epochs "
            f"({plan}) at {rec['measured_s_per_batch']:.3g} s/batch measured; {how}; "
            f"{fmt_duration(rec['used_s'])} used ({rec['spent_before_training_s']:.0f} s before "
            f"training).")


# ---- on the real learner ---------------------------------------------------------------------

def _probe_callback(n_train: int, n_valid: int, valid: bool):
    import torch
    from fastai.callback.core import Callback, CancelFitException, CancelTrainException

    class BudgetProbe(Callback):
        """Time the first training (and validation) batches of a fit, then end it."""
        order = 100   # after_batch last: the batch is complete when it is stamped

        @property
        def name(self) -> str:
            """Named like fastai's LR finder, so the learner has `lr_finder` while the probe
            runs: callbacks that skip the finder skip the probe too (progressive resizing
            trains full-size batches and does not count the probe as a phase; a distillation
            teacher, progress bars). fastai takes a callback's name from this property only
            (a `_name` attribute is ignored), so it is overridden here."""
            return "lr_finder"

        def before_train(self):
            self.t_train = [time.perf_counter()]

        def before_validate(self):
            self.t_valid = [time.perf_counter()]

        def after_batch(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()   # time the work, not its queueing
            if self.training:
                self.t_train.append(time.perf_counter())
                if len(self.t_train) > n_train:
                    raise CancelTrainException()
            else:
                self.t_valid.append(time.perf_counter())
                if len(self.t_valid) > n_valid:
                    raise CancelFitException()

        def after_train(self):
            if not valid:
                raise CancelFitException()
    return BudgetProbe()


def _per_batch(stamps: list[float]) -> tuple[float, float]:
    """(steady seconds per batch, extra seconds of the first batch) from [start, batch ends]."""
    n = len(stamps) - 1
    if n >= 1 + WARMUP_BATCHES:
        steady = (stamps[-1] - stamps[1 + WARMUP_BATCHES - 1]) / (n - WARMUP_BATCHES)
    else:
        steady = (stamps[-1] - stamps[0]) / max(n, 1)
    return steady, max(0.0, (stamps[1] - stamps[0]) - steady)


def _time_batches(learn, lr: float, valid: bool) -> tuple[float, float, float, float]:
    """Seconds per training batch, per validation batch (nan unless `valid`) and the extra
    cost of each pass's first batch, on `learn` as it stands; the model's weights, the
    optimizer and the random state are restored afterwards."""
    import torch

    n_train = min(len(learn.dls.train), WARMUP_BATCHES + TIMED_BATCHES)
    n_valid = min(len(learn.dls.valid), 1 + TIMED_BATCHES)
    frozen = not all(p.requires_grad for p in learn.model.parameters())
    weights = copy.deepcopy(learn.model.state_dict())
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           compat.loader_rng_state(learn.dls.train))   # fastai's DataLoader shuffles with it
    probe = _probe_callback(n_train, n_valid, valid)
    try:
        with learn.no_logging(), learn.no_bar():
            learn.fit(1, lr, cbs=[probe])
    finally:
        learn.model.load_state_dict(weights)
        learn.opt = None                 # a fresh optimizer, as before any step
        if frozen:
            learn.freeze()               # builds it again, the body frozen as it was
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        compat.set_loader_rng_state(learn.dls.train, rng[3])
    train_s, train_extra = _per_batch(probe.t_train)
    valid_s, valid_extra = _per_batch(probe.t_valid) if valid else (float("nan"), 0.0)
    return train_s, valid_s, train_extra, valid_extra


def ramp_batch_seconds(full_s: float, small_s: float, small_pixels: float,
                       mean_pixels: float) -> float:
    """Seconds per training batch over a progressive-resizing phase, from a batch timed at full
    size (`full_s`) and one at the ramp's start size (`small_s`, `small_pixels` of the full
    size's pixel count): a fixed part (the optimizer step, the batch's augmentation, the
    loader) plus a part proportional to the pixels, averaged over the ramp (`mean_pixels`).
    Taken as all proportional, plants' 80 px batches were planned at 0.39 of a 128 px one;
    timed, they take 0.54 (0.822 s against 1.52, frozen_stride 4), and a 1+18 plan ran 23%
    long. Noise that makes the small batch look dearer than the full one leaves the full
    size's seconds."""
    if small_pixels >= 1:
        return full_s
    per_pixel = max(0.0, (full_s - small_s) / (1 - small_pixels))
    return max(full_s - per_pixel + per_pixel * mean_pixels, full_s * mean_pixels)


def measure(learn, t, lr: float, pretrained: bool) -> Speeds:
    """Time the phases this fit will run (see the module's docstring). With progressive
    resizing each phase is timed at full size and at the ramp's start size too
    (`ramp_batch_seconds`)."""
    frozen_phase = pretrained and t.freeze_epochs > 0
    main_phase = t.epochs > 0 or not pretrained
    resize = _progressive(learn)

    def timed_as(set_state, valid: bool):
        """(full-size timings, seconds per batch at the start size or None) in one state."""
        set_state()
        full = _time_batches(learn, lr, valid=valid)
        if resize is None:
            return full, None
        set_state()   # _time_batches leaves the body frozen when any part of it was
        resize.probe_size = resize.start_size
        try:
            return full, _time_batches(learn, lr, valid=False)[0]
        finally:
            resize.probe_size = None

    def main_state():
        # everything trains but train.frozen_stride's first layers, except under head_only
        # (last_fraction is timed as that: an upper bound)
        if pretrained and t.freeze == "head_only":
            learn.freeze()
        else:
            learn.unfreeze()
            if pretrained:
                from .schedules import freeze_early
                freeze_early(learn, t.frozen_stride)

    frozen_s = frozen_small = train_small = None
    if frozen_phase:
        timed, frozen_small = timed_as(learn.freeze, valid=not main_phase)
        frozen_s = timed[0]
    if main_phase:
        timed, train_small = timed_as(main_state, valid=True)
    if pretrained:
        learn.freeze()   # as prepare left it: schedules.run sets each phase's own state
    train_s, valid_s, train_extra, valid_extra = timed
    ramp = None
    if resize is not None:   # the phases train smaller batches than the full size
        from .progressive import cost_fraction
        mean = cost_fraction(resize.full, resize.start_fraction)
        small = (resize.start_size / resize.full) ** 2
        if frozen_s is not None:
            frozen_s = ramp_batch_seconds(frozen_s, frozen_small, small, mean)
        ramp = [train_small if main_phase else frozen_small, train_s]
        train_s = ramp_batch_seconds(train_s, ramp[0], small, mean) if main_phase else frozen_s
    return Speeds(train_s, valid_s, frozen_s, train_extra + valid_extra, ramp)


def _progressive(learn):
    """The fit's ProgressiveResize callback (train.progressive < 1), or None."""
    from .progressive import ProgressiveResize
    found = [cb for cb in learn.cbs if isinstance(cb, ProgressiveResize)]
    return found[0] if found else None


def plan(learn, t, lr: float, pretrained: bool, started: float, n_eval_items: int,
         views: int = 1, pixel_ratio: float = 1.0, n_choice_items: int = 0,
         other_ratios: float = 0.0) -> Plan:
    """Measure, then choose the epochs (see the module's docstring); prints the plan's line.
    `views`: how many times the end sees each image (TTA), `pixel_ratio`: (largest candidate
    test size / training size)^2; `n_choice_items`, `other_ratios`: the validation images the
    end's choice also runs at the other candidate sizes, and the sum of those sizes' pixel
    ratios (`reserve_seconds`). Raises UsageError when not even one epoch fits in what is
    left of the budget."""
    from . import schedules

    text, budget_s = t.budget, budget_seconds(t.budget)
    speeds = measure(learn, t, lr, pretrained)
    n_train, n_valid = len(learn.dls.train), len(learn.dls.valid)
    valid_items = max(1, len(learn.dls.valid.dataset))
    main_e = epoch_seconds(speeds.train_s, speeds.valid_s, n_train, n_valid, speeds.overhead_s)
    frozen_e = (epoch_seconds(speeds.frozen_s, speeds.valid_s, n_train, n_valid, speeds.overhead_s)
                if speeds.frozen_s is not None else main_e)
    reserve = reserve_seconds(speeds.valid_s * n_valid / valid_items, n_eval_items, views,
                              pixel_ratio, n_choice_items, other_ratios)
    spent = time.perf_counter() - started
    available = budget_s - spent - reserve
    if pretrained:
        recipe = (t.freeze_epochs, t.epochs)
    else:                          # from scratch: one phase of epochs + freeze_epochs
        recipe = (0, t.epochs + t.freeze_epochs)

    def effective(m: int, tt=t) -> int:
        if tt.schedule != "sgdr":
            return m
        return schedules.sgdr_epochs(schedules.sgdr_cycles(tt, m), tt.sgdr_cycle_len, tt.sgdr_mult) if m else 0

    fits = recipe[0] * frozen_e + effective(recipe[1]) * main_e <= available / SAFETY
    if fits:
        planned = recipe
    else:
        loose = replace(t, sgdr_cycles=0)   # scaled down: as many whole sgdr cycles as fit
        planned = plan_epochs(*recipe, frozen_e * SAFETY, main_e * SAFETY, available,
                              lambda m: effective(m, loose))
        if planned is None:
            # only refused when one epoch, as measured (no safety margin), clearly cannot fit
            one = smallest_plan(*recipe)
            one_s = one[0] * frozen_e + one[1] * main_e
            if one_s > available:
                need = spent + one_s + reserve
                raise UsageError(
                    f"budget {text} is too small: {_secs(spent)} were spent before training, one "
                    f"epoch takes about {_secs(one_s)} here ({n_train} batches at "
                    f"{(speeds.frozen_s if one[0] else speeds.train_s):.3g} s/batch measured, "
                    f"then validation) and the end needs about {_secs(reserve)}; give at least "
                    f"{fmt_duration(need * 1.2)}, or fewer images, a smaller data.size or arch")
            planned = one
    changes = {}
    if planned != recipe:
        if pretrained:
            changes = dict(freeze_epochs=planned[0], epochs=planned[1])
        else:
            changes = dict(freeze_epochs=0, epochs=planned[1])
        if t.schedule == "sgdr":
            changes["sgdr_cycles"] = 0
            planned = (planned[0], effective(planned[1], replace(t, sgdr_cycles=0)))
    elif t.schedule == "sgdr":
        planned = (planned[0], effective(planned[1]))
    resize = _progressive(learn)
    p = Plan(text, budget_s, started, speeds, (recipe[0], effective(recipe[1])), planned,
             frozen_e, main_e, spent, reserve, pretrained, changes,
             valid_epoch_s=epoch_seconds(0.0, speeds.valid_s, n_train, n_valid, speeds.overhead_s),
             ramp=None if resize is None else (resize.full, resize.start_fraction))
    p.guard = BudgetGuard(p)
    print(p.line(), flush=True)
    return p


def BudgetGuard(p: Plan):
    """The fastai callback that ends a budgeted fit after an epoch when the next one would end
    past the budget (made here so this module imports without fastai)."""
    from fastai.callback.core import Callback, CancelFitException

    class _BudgetGuard(Callback):
        # after ResultsCSV (55), KeepBest (56) and StopOnNonFinite (57): the last epoch is
        # written and may be the best before the fit ends; before EarlyStopping (60)
        order = 58

        def __init__(self):
            self.done, self.stopped_after, self.last = 0, None, None

        def before_fit(self):
            self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds")
            if self.stopped_after is not None:
                raise CancelFitException()    # the main phase after a stopped frozen phase
            self.last = time.perf_counter()

        def after_epoch(self):
            now = time.perf_counter()
            took, self.last = now - self.last, now
            self.done += 1
            total = sum(p.planned)
            if self.done >= total:
                return
            this, nxt = p.epoch_s(self.done - 1), p.epoch_s(self.done)
            # the next epoch at the speed the last one really ran (drift); with progressive
            # resizing the next is dearer than the last by the ramp's share
            next_s = nxt * took / this if this > 0 else took
            if should_stop(now, next_s, p.reserve_s, p.deadline):
                self.stopped_after = self.done
                print(f"budget {p.text}: stopping after epoch {self.done - 1}: the next "
                      f"(≈ {next_s:.0f} s) would end past the budget "
                      f"({max(0.0, p.deadline - now - p.reserve_s):.0f} s left before the "
                      f"end's reserve)", flush=True)
                raise CancelFitException()
    return _BudgetGuard()
