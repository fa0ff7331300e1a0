"""fastai callbacks clfapp adds to every fit: results.csv rows, best-epoch keeping, CPU bf16."""
from __future__ import annotations

import copy
import csv
import time
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import TrackerCallback


class ResultsCSV(Callback):
    """One row per epoch in `results.csv`, flushed at once so an interrupted run keeps its rows.

    Epochs are numbered across fine_tune's frozen and unfrozen phases.
    """
    order = 70  # after the Recorder and the trackers have seen the epoch

    def __init__(self, path: Path):
        self.path, self.epoch_total, self.header = Path(path), 0, None

    def before_fit(self):
        self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds")
        self.phase = "frozen" if self.learn.opt is not None and self._frozen() else "full"

    def _frozen(self) -> bool:
        return not all(p.requires_grad for p in self.learn.model.parameters())

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
        self.epoch_total += 1


class KeepBest(TrackerCallback):
    """Hold a copy of the weights of the best epoch by `monitor`, across several fits.

    `restore(model)` puts them back: the run ends with its best epoch, also after Ctrl-C.
    """
    order = TrackerCallback.order + 1

    def __init__(self, monitor: str = "accuracy"):
        super().__init__(monitor=monitor, reset_on_fit=False)
        self.state, self.best_epoch, self.seen = None, None, 0

    def after_epoch(self):
        super().after_epoch()
        if self.new_best:
            self.state = copy.deepcopy(self.learn.model.state_dict())
            self.best_epoch = self.seen
        self.seen += 1

    def restore(self, model) -> None:
        """Load the best weights into `model` (fastai detaches callbacks after fit)."""
        if self.state is not None:
            model.load_state_dict(self.state)


class CPUBFloat16(Callback):
    """Forward pass and loss under `torch.autocast("cpu", bfloat16)`, inputs in channels_last.

    fastai's MixedPrecision is CUDA-only; on CPUs with AMX/AVX512-BF16 this trains the
    convolutions several times faster. Weights and optimizer state stay fp32.
    """
    order = 10

    def before_fit(self):
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                              for x in self.learn.xb)
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


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AMX or AVX512-BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def bf16_enabled(precision: str) -> bool:
    if precision == "fp32" or torch.cuda.is_available():
        return False
    return precision == "bf16" or cpu_has_fast_bf16()
