"""Learning-rate schedules and freezing policies: the registries behind `train.schedule` and
`train.freeze`, built from fastai's own pieces (fit_one_cycle, fit_flat_cos, fit_sgdr,
ReduceLROnPlateau, Learner.freeze / unfreeze).

A fit of a pretrained model has up to two phases, as fastai's `fine_tune`:

1. the frozen phase, `train.freeze_epochs` epochs of the head alone (fastai's freeze; the
   body's norm layers train too only with `train.train_bn`, off by default: a body without
   gradients costs a forward pass alone), always `fit_one_cycle(pct_start=0.99)` at
   `slice(lr)`, exactly fine_tune's first call, whatever the schedule;
2. the main phase, `train.epochs` epochs with the chosen schedule at half the LR (fine_tune's
   `base_lr /= 2`), with what `train.freeze` makes trainable and at the per-group LRs it sets.

With the default one_cycle + frozen_then_full this is `learn.fine_tune(epochs, lr,
freeze_epochs)` call for call. A model trained from scratch (or a pretrained one with
freeze_epochs = 0) has only the main phase: all of it trainable, at `lr`, for epochs (+
freeze_epochs from scratch), as before.

Names must match config.CHOICES (config.py cannot import this module: it would pull in torch).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from ..config import sgdr_epochs  # noqa: F401 (budget and tune use it from here)
from ..errors import UsageError


@dataclass
class Phase:
    """What a schedule needs to run the main phase."""
    learn: object
    epochs: int
    lr: object            # a float, or one LR per parameter group (a list)
    t: object             # the TrainConfig
    cbs: list
    after_frozen: bool    # a frozen phase ran first (fine_tune's second call)
    plateau_monitor: str  # the fastai metric name plateau watches (resolved by fit)


SCHEDULES: dict[str, Callable[[Phase], None]] = {}
FREEZES: dict[str, Callable] = {}


def schedule(name: str):
    def register(fn):
        SCHEDULES[name] = fn
        return fn
    return register


def freeze_policy(name: str):
    def register(fn):
        FREEZES[name] = fn
        return fn
    return register


def parse_moms(text: str) -> tuple | None:
    """train.moms "0.95,0.85,0.95" → (0.95, 0.85, 0.95); "" → None (fastai's default)."""
    return tuple(float(x) for x in text.split(",")) if text.strip() else None


# ---- schedules: each runs the main phase --------------------------------------------------

@schedule("one_cycle")
def one_cycle(p: Phase) -> None:
    """fastai's 1cycle: warm up to the peak LR, then cosine down; momentum the other way
    (`train.moms`: start, low at the LR peak, end). After a frozen phase with fine_tune's
    pct_start 0.3 and div 5, else fit_one_cycle's defaults (0.25, 25)."""
    kw = dict(pct_start=0.3, div=5.0) if p.after_frozen else {}
    p.learn.fit_one_cycle(p.epochs, p.lr, moms=parse_moms(p.t.moms), cbs=p.cbs, **kw)


@schedule("flat_cos")
def flat_cos(p: Phase) -> None:
    """fastai's fit_flat_cos: the LR flat for 75% of the steps, then cosine annealed to ~0."""
    p.learn.fit_flat_cos(p.epochs, p.lr, cbs=p.cbs)


@schedule("plateau")
def plateau(p: Phase) -> None:
    """A constant LR (Learner.fit), multiplied by `plateau_factor` by fastai's ReduceLROnPlateau
    whenever `plateau_monitor` has not improved for `plateau_patience` epochs. fastai's own
    callback as it is: it writes the cut into `opt.hypers`, which fastai's optimizers step with
    (models/optim.py)."""
    from fastai.callback.tracker import ReduceLROnPlateau
    t = p.t
    cut = ReduceLROnPlateau(monitor=p.plateau_monitor, patience=t.plateau_patience,
                            factor=1 / t.plateau_factor)   # fastai divides by its factor
    p.learn.fit(p.epochs, p.lr, cbs=p.cbs + [cut])


def sgdr_cycles(t, epochs: int) -> int:
    """train.sgdr_cycles, or (0) as many whole cycles as fit in `epochs` (at least one)."""
    if t.sgdr_cycles:
        return t.sgdr_cycles
    n = 1
    while sgdr_epochs(n + 1, t.sgdr_cycle_len, t.sgdr_mult) <= epochs:
        n += 1
    return n


@schedule("sgdr")
def sgdr(p: Phase) -> None:
    """Cosine annealing with warm restarts (fastai's fit_sgdr): cycles of cycle_len,
    cycle_len*mult, ... epochs, each from the peak LR down to 0. The epoch count is derived
    from the cycles, not taken from train.epochs (see sgdr_cycles)."""
    t = p.t
    n = sgdr_cycles(t, p.epochs)
    total = sgdr_epochs(n, t.sgdr_cycle_len, t.sgdr_mult)
    lengths = [t.sgdr_cycle_len * t.sgdr_mult ** i for i in range(n)]
    print(f"sgdr: {n} cycle(s) of {', '.join(map(str, lengths))} epochs = {total} epochs"
          + (f" (train.epochs asked {p.epochs})" if total != p.epochs else ""))
    # fastai's fit_sgdr, put together from its own pieces: it divides by cycle_mult - 1, so it
    # cannot make equal cycles (mult 1); one path for every mult.
    import numpy as np
    from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds
    learn = p.learn
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", p.lr)
    lr_max = np.array([h["lr"] for h in learn.opt.hypers])
    # the last share is what the others leave: fastai asserts they sum to exactly 1.0, which
    # seven shares of 1/7 do not (0.9999999999999998)
    pcts = [length / total for length in lengths[:-1]]
    pcts.append(1 - sum(pcts))
    scheds = {"lr": combine_scheds(pcts, [SchedCos(lr_max, 0) for _ in range(n)])}
    learn.fit(total, cbs=[ParamScheduler(scheds)] + p.cbs)


# ---- freezing policies: what trains in the main phase, at which LR per group ----------------

def _groups(learn) -> int:
    if learn.opt is None:
        learn.create_opt()
    return len(learn.opt.param_lists)


@freeze_policy("frozen_then_full")
def frozen_then_full(learn, lr: float, t, after_frozen: bool):
    """Unfreeze everything but the first layers `train.frozen_stride` keeps (freeze_early);
    after a frozen phase, discriminative LRs as fine_tune: fastai's slice(lr / lr_mult, lr),
    spread geometrically from the first group to the head."""
    learn.unfreeze()
    n = freeze_early(learn, t.frozen_stride)
    if n:
        print(f"frozen_stride {t.frozen_stride}: the body's first {n} layers stay frozen")
    return slice(lr / t.lr_mult, lr) if after_frozen else lr


def early_layers(model, max_stride: int, probe_size: int = 224) -> list:
    """The body's leading layers (body_layers order) whose outputs are at most `max_stride`
    times smaller than the input, found by one forward pass of a blank image with hooks
    reading each layer's output size. The run ends at the first layer with a coarser map, or
    with an output that is not an image-shaped map (a transformer's tokens); a 1x1 map inside
    the run (squeeze-and-excitation's pooled branch) neither ends it nor leaves it."""
    import torch

    from ..models import blank_pass
    layers = body_layers(model)
    widths = {}

    def record(module, _inputs, out):
        widths[module] = out.shape[-1] if torch.is_tensor(out) and out.dim() == 4 else None
    hooks = [m.register_forward_hook(record) for m in layers]
    try:
        blank_pass(model[0], probe_size)
    finally:
        for h in hooks:
            h.remove()
    run = []
    for m in layers:
        w = widths.get(m)
        if w is None or (w > 1 and probe_size / w > max_stride):
            break
        run.append(m)
    return run


def freeze_early(learn, max_stride: int) -> int:
    """Freeze early_layers(max_stride) (their norm layers too); returns how many (0: none)."""
    if max_stride <= 0:
        return 0
    layers = early_layers(learn.model, max_stride)
    for m in layers:
        for prm in m.parameters(recurse=False):
            prm.requires_grad_(False)
    return len(layers)


@freeze_policy("head_only")
def head_only(learn, lr: float, t, after_frozen: bool):
    """Never unfreeze: the body stays as pretrained (its norm layers' weights train only with
    train.train_bn; their batch statistics adapt either way)."""
    learn.freeze()
    return lr


def body_layers(model) -> list:
    """The body's layers, in order: its modules that hold parameters of their own (each conv,
    norm, linear), as the model registers them (input to output for a CNN)."""
    return [m for m in model[0].modules() if any(True for _ in m.parameters(recurse=False))]


@freeze_policy("last_fraction")
def last_fraction(learn, lr: float, t, after_frozen: bool):
    """Unfreeze the last `unfreeze_fraction` of the body's layers (counted by body_layers,
    rounded up, at least one) at `unfreeze_lr_mult` x lr; the head trains at lr.

    fastai's freeze_to works on parameter groups, and the splitters give the body one or two
    groups, too coarse for a fraction: so freeze() first, then requires_grad on the layers."""
    learn.freeze()
    layers = body_layers(learn.model)
    k = max(1, math.ceil(t.unfreeze_fraction * len(layers)))
    for m in layers[len(layers) - k:]:
        for prm in m.parameters(recurse=False):
            prm.requires_grad_(True)
    print(f"last_fraction: {k} of the body's {len(layers)} layers trainable, "
          f"at {t.unfreeze_lr_mult:g} x lr")
    n = _groups(learn)
    return [lr * t.unfreeze_lr_mult] * (n - 1) + [lr]


# ---- the whole fit ---------------------------------------------------------------------------

def phases(t, pretrained: bool) -> list[int]:
    """The epochs of each fit call `run` makes: [frozen, main] for a pretrained model with
    freeze_epochs, else [main] (sgdr: its cycles' total)."""
    main = t.epochs + (0 if pretrained else t.freeze_epochs)
    if t.schedule == "sgdr" and main:
        main = sgdr_epochs(sgdr_cycles(t, main), t.sgdr_cycle_len, t.sgdr_mult)
    if pretrained and t.freeze_epochs:
        return [t.freeze_epochs] + ([main] if main else [])
    return [main]


@contextmanager
def starting_at(learn, epoch: int):
    """The next fit call of `learn` runs its epochs from `epoch` on (0 = all of them), as if
    the earlier ones had run: fastai's pct_train, which every schedule reads, is set from the
    epoch number at each epoch's start (TrainEvalCallback.before_train), so a one-cycle or
    cosine schedule continues at the same position.

    Not fastai's own `fit(start_epoch=)`: its SkipToEpoch cancels the skipped epochs in
    before_epoch, and fastai still calls every after_epoch for them (an empty Recorder row:
    results.csv, KeepBest and early stopping would see epochs that never ran; fastai issue
    #3780), and fit_flat_cos drops start_epoch. Here the epoch loop itself starts later."""
    if not epoch:
        yield
        return
    from ..models.compat import fit_from_epoch
    with fit_from_epoch(learn, epoch):
        yield


def run(learn, t, lr: float, pretrained: bool, cbs: list, plateau_monitor: str = "valid_loss",
        done: int = 0, before_main=None) -> None:
    """Train `learn` per `t` (TrainConfig): the frozen phase for pretrained models, then the
    main phase with `t.schedule` under `t.freeze`. `plateau_monitor`: the fastai metric name
    `train.plateau_monitor` stands for. `done`: epochs (counted across both phases) a resumed
    run has already trained (train/checkpoint.py restores their state): those are skipped, a
    phase that ended is not run again, the phase they stopped in continues from there.
    `before_main(t)`: called when a frozen phase run here has ended, before the main phase;
    it returns the TrainConfig the main phase runs (the budget re-plans its epochs there)."""
    sched, policy = SCHEDULES[t.schedule], FREEZES[t.freeze]
    if not pretrained:
        if t.freeze != "frozen_then_full":
            raise UsageError(f"train.freeze = {t.freeze!r} needs a pretrained body; "
                             "this model trains from scratch")
        learn.unfreeze()
        with starting_at(learn, done):
            sched(Phase(learn, t.epochs + t.freeze_epochs, lr, t, cbs, False, plateau_monitor))
        return
    after_frozen = t.freeze_epochs > 0
    if after_frozen:
        if done < t.freeze_epochs:
            learn.freeze()
            with starting_at(learn, done):
                learn.fit_one_cycle(t.freeze_epochs, slice(lr), pct_start=0.99,
                                    moms=parse_moms(t.moms), cbs=cbs)
            if before_main is not None:
                t = before_main(t)
        lr = lr / 2
    if t.epochs:
        group_lr = policy(learn, lr, t, after_frozen)
        with starting_at(learn, max(0, done - t.freeze_epochs)):
            sched(Phase(learn, t.epochs, group_lr, t, cbs, after_frozen, plateau_monitor))
