"""fastai callbacks clfapp adds to every fit: results.csv rows, best-epoch keeping, stopping on a
non-finite loss, CPU bf16.

Order matters at the end of an epoch: fastai's Recorder (50) collects the epoch's figures, then
ResultsCSV (55) writes them and KeepBest (56) copies the weights, and only then may
EarlyStoppingCallback (60) or StopOnNonFinite (57) cancel the fit: the epoch that stops a run is
still in results.csv and still a candidate for best.
"""
from __future__ import annotations

import copy
import csv
import time
from pathlib import Path

import math

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import TrackerCallback


def unwrapped(model):
    """The model itself, also while a multi-process fit has it wrapped in DistributedDataParallel
    (whose state_dict keys get a "module." prefix and which timm's EMA must not copy)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def on_any_rank(flag: bool, device=None) -> bool:
    """`flag` of this process, or of any process of a multi-process fit: a stop that one rank
    takes alone leaves the others waiting for it in DDP's next gradient exchange."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class ResultsCSV(Callback):
    """One row per epoch in `results.csv`, flushed at once so an interrupted run keeps its rows.

    Epochs are numbered across fine_tune's frozen and unfrozen phases. Beside it, `steps.csv`
    gets the LR, momentum and smoothed training loss of every step (fastai's Recorder keeps
    them for one fit call only, and momentum only under a one-cycle schedule); with
    `tensorboard`, each epoch's figures also go to tensorboard/ next to results.csv.
    """
    order = 55  # after the Recorder (50), before anything that may cancel the fit (60)

    def __init__(self, path: Path, tensorboard: bool = False):
        self.path, self.epoch_total = Path(path), 0
        self.steps_path, self.steps, self.step_total = self.path.with_name("steps.csv"), [], 0
        self.board = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.board = SummaryWriter(log_dir=str(self.path.with_name("tensorboard")))

    def after_batch(self):
        if self.training:
            h = self.learn.opt.hypers[-1]
            self.steps.append([self.step_total, self.epoch_total, h["lr"], h.get("mom"),
                               float(getattr(self.learn, "smooth_loss", float("nan")))])
            self.step_total += 1

    def _write_steps(self) -> None:
        new = not self.steps_path.exists()
        with self.steps_path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "lr", "mom", "smooth_loss"])
            w.writerows(self.steps)
        self.steps = []

    def _write_board(self, names, values, lr) -> None:
        for n, v in zip(names, values):
            self.board.add_scalar(f"loss/{n[:-5]}" if n.endswith("_loss") else f"metrics/{n}",
                                  v, self.epoch_total)
        self.board.add_scalar("lr", lr, self.epoch_total)
        self.board.flush()

    def before_fit(self):
        self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds")
        self.phase = "frozen" if self._frozen() else "full"

    def _frozen(self) -> bool:
        """fastai's freeze / freeze_to left parameter groups frozen (head_only, last_fraction,
        the frozen phase); layers train.frozen_stride keeps in a full phase do not count."""
        return self.learn.opt is not None and getattr(self.learn.opt, "frozen_idx", 0) > 0

    def before_epoch(self):
        self.t0 = time.perf_counter()

    def after_epoch(self):
        names = list(self.recorder.metric_names[1:-1])  # train_loss, valid_loss, metrics
        values = [float(v) for v in self.recorder.values[-1]]
        lr = self.learn.opt.hypers[-1]["lr"]
        row = [self.epoch_total, self.phase, *values, lr, round(time.perf_counter() - self.t0, 2)]
        header = ["epoch", "phase", *names, "lr", "seconds"]
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerow(row)
        self._write_steps()
        if self.board is not None:
            self._write_board(names, values, lr)
        self.epoch_total += 1


def epoch_is_finite(recorder) -> bool:
    """False when the epoch's losses or metrics hold NaN or inf (e.g. a diverged bf16 run):
    its accuracy may still look like a number (argmax of NaN logits), so it is never a best."""
    return all(math.isfinite(float(v)) for v in recorder.values[-1])


class KeepBest(TrackerCallback):
    """Hold a copy of the weights of the best epoch by `monitor`, across several fits.

    `restore(model)` puts them back: the run ends with its best epoch, also after Ctrl-C, an
    error or a NaN loss. An epoch with a non-finite loss or metric is never the best.
    """
    order = 56

    def __init__(self, monitor: str = "accuracy"):
        super().__init__(monitor=monitor, reset_on_fit=False)
        self.state, self.best_epoch, self.seen = None, None, 0

    def after_epoch(self):
        if not epoch_is_finite(self.recorder):
            self.seen += 1
            return
        super().after_epoch()
        if self.new_best:
            self.state = copy.deepcopy(unwrapped(self.learn.model).state_dict())
            self.best_epoch = self.seen
        self.seen += 1

    def restore(self, model) -> None:
        """Load the best weights into `model` (fastai detaches callbacks after fit)."""
        if self.state is not None:
            model.load_state_dict(self.state)


class StopOnNonFinite(Callback):
    """Stop the fit when a training loss or an epoch's validation figures become NaN or inf.

    Training on would only burn time: the weights are already ruined. `reason` says where it
    happened; the caller keeps the best finite epoch (KeepBest).
    """
    order = 57

    def __init__(self):
        self.reason = ""

    def before_fit(self):
        self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds")

    def after_batch(self):
        if self.training and on_any_rank(not torch.isfinite(self.learn.loss).all(), self.learn.loss.device):
            self.reason = (f"the training loss became {float(self.learn.loss)} in epoch "
                           f"{self.learn.epoch} (batch {self.learn.iter}){self._hint()}")
            raise CancelFitException()

    def after_epoch(self):
        if not epoch_is_finite(self.recorder):
            names = self.recorder.metric_names[1:-1]
            bad = [n for n, v in zip(names, self.recorder.values[-1]) if not math.isfinite(float(v))]
            self.reason = f"{', '.join(bad)} became non-finite in epoch {self.learn.epoch}{self._hint()}"
            raise CancelFitException()

    def _hint(self) -> str:
        """The learning rate in force (of the head's group) and what usually helps."""
        try:
            lr = float(self.learn.opt.hypers[-1]["lr"])
        except (AttributeError, IndexError, KeyError, TypeError):
            return ""
        return (f" at learning rate {lr:.3g}; try a lower --lr (or --lr auto), or "
                "--set train.precision=fp32")


class CPUBFloat16(Callback):
    """Forward pass and loss under `torch.autocast("cpu", bfloat16)`.

    fastai's MixedPrecision is CUDA-only; on CPUs with AMX/AVX512-BF16 this trains the
    convolutions several times faster. Weights and optimizer state stay fp32. The memory
    format is fastai's ChannelsLast's job, added beside it (train._precision_callbacks).
    """
    order = 10   # after ProgressiveResize (5); before distill's loss (20), which reads a float pred

    def before_batch(self):
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self):
        self.learn.pred = self.learn.pred.float()

    def after_loss(self):
        self.close()

    def after_cancel_batch(self):
        self.close()

    def close(self):
        """Leave autocast if a batch was cut short (Ctrl-C skips fastai's after_* events)."""
        if getattr(self, "autocast", None) is not None and torch.is_autocast_enabled("cpu"):
            self.autocast.__exit__(None, None, None)
        self.autocast = None


FAST_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}   # /proc/cpuinfo names of the same units


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AMX or AVX512-BF16).

    Newer torch asks the CPU itself (torch.cpu._is_amx_tile_supported, ...); torch 2.4, the
    declared floor, has neither function, so there the kernel's CPU flags decide (Linux), and
    elsewhere the answer is False: fp32, slower but never wrong.
    """
    checks = [getattr(torch.cpu, c, None) for c in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    checks = [c for c in checks if c is not None]
    if checks:
        return any(c() for c in checks)
    return bool(cpu_flags() & FAST_BF16_FLAGS)


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(ln.split(":", 1)[1].split()) for ln in f if ln.startswith("flags")), set())
    except OSError:
        return set()


def bf16_enabled(precision: str) -> bool:
    """bf16 autocast on a CPU: when asked for, or ("auto") when the CPU has bf16 units."""
    if precision == "fp32" or torch.cuda.is_available():
        return False
    return precision == "bf16" or cpu_has_fast_bf16()


class WeightEMA(Callback):
    """Validate (and so choose and save) an exponential moving average of the weights.

    timm's ModelEmaV3 keeps the average, updated after every training step across fine_tune's
    frozen and full phases, with a warm-up (decay 1 - (1 + step)^-2/3, capped at `decay`) so a
    run of a few hundred steps is not dragged back to its start. Before validation the model's
    weights are swapped for the average; they are swapped back after KeepBest (56),
    StopOnNonFinite (57) and the budget guard (58) have seen the epoch, so results.csv, the best
    epoch and the saved bundle are all the average's; training goes on from its own weights. Buffers (BatchNorm statistics) are averaged too: it also
    smooths the running statistics small batches make noisy late in a run.
    """
    order = 59   # before EarlyStoppingCallback (60), which may cancel the fit

    def __init__(self, decay: float):
        self.decay, self.ema, self.step, self.saved = decay, None, 0, None

    def before_fit(self):
        self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds")
        if self.run and self.ema is None:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(unwrapped(self.learn.model), decay=self.decay, use_warmup=True)

    def after_batch(self):
        if self.training:
            self.step += 1
            self.ema.update(unwrapped(self.learn.model), step=self.step)

    def before_validate(self):
        self.saved = copy.deepcopy(unwrapped(self.learn.model).state_dict())
        unwrapped(self.learn.model).load_state_dict(self.ema.module.state_dict())

    def after_epoch(self):
        self._swap_back()

    def after_fit(self):
        self._swap_back()  # a fit cancelled after validation (StopOnNonFinite, early stopping)

    def _swap_back(self):
        if self.saved is not None:
            unwrapped(self.learn.model).load_state_dict(self.saved)
            self.saved = None
