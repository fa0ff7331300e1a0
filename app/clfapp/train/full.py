"""`clfapp fit RECIPE --full`: choose on train/valid, then retrain on train+valid.

1. `fit(cfg, folder)` as usual: the estimate. Its metrics (validation, and test when the data
   has a test split) stay the run's figures; its bundle moves to `model-valid/`.
2. A second model, same config, seed, schedule and epochs, and the LR the first one used (the
   finder's if `lr = auto`), trains on every non-test item (train + valid). Early stopping is
   off and no best epoch is chosen: nothing unseen is left to choose on, so the LAST epoch is
   kept (with train.ema, the weights' moving average, as the estimate kept it). It becomes
   `model/`; its epochs go to `results_full.csv`.

fastai's loop needs a validation set: the second training is given the former validation
items as a placeholder. They are also in its training set, so the valid_* columns of
results_full.csv are figures on images it trains on: a sanity check, never an estimate (and
nothing is chosen on them). The test split, when there is one, is not touched until the final
model is measured on it once, at the end.

The inference spec the estimate chose on validation (input size, TTA; infer/choice.py) and
its multi-label thresholds are copied into the final bundle: the final model has no unseen
validation data to choose or tune them on. Its model.json
says `trained_on = "train+valid"`: `evaluate`, `thresholds`, `compare` and `ensemble` then
refuse the run's validation split as evidence (or measure on its test split).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import data, report
from ..config import Config
from ..errors import UsageError
from ..infer import bundle, evaluate

NOTE = ("final model trained on train+valid; the validation figures above are the estimate "
        "from the first training")


class TrainValid(data.Dataset):
    """A loaded dataset whose training part is train + valid; "valid" (fastai's placeholder
    validation set) stays the former validation items, test stays apart."""

    def indices(self, split: str) -> np.ndarray:
        if split == "train":
            return np.flatnonzero(self.items["split"].isin(["train", "valid"]).to_numpy())
        return super().indices(split)


def check(cfg: Config) -> None:
    """Refuse what a fixed-length retraining without validation cannot honour (before any
    training)."""
    t = cfg.train
    if t.schedule == "plateau" and t.plateau_monitor != "train_loss":
        raise UsageError("--full retrains without a validation split, but train.schedule = "
                         f"'plateau' cuts the LR on {t.plateau_monitor}; use another schedule or "
                         "train.plateau_monitor = 'train_loss'")


def fit_full(cfg: Config, folder: Path):
    """The estimate (`fit`), then the final model on train+valid; returns the FitResult of the
    run (the first one's if the second did not finish: its model stays in model/)."""
    from . import fit

    check(cfg)
    seen = []
    first = fit(cfg, folder, on_prepared=lambda prep: seen.append(prep.dataset))
    if first.stopped or not first.metrics:
        print("the final training on train+valid was skipped: the first training did not finish",
              flush=True)
        return first
    return retrain(cfg, folder, first, seen[0])


def retrain(cfg: Config, folder: Path, first, ds0: data.Dataset):
    from . import FitResult, Terminated, _check_vocab, _contiguous, _sigterm_as_interrupt, \
        monitor_name, prepare, schedules
    from ..models.callbacks import CPUBFloat16, ResultsCSV, StopOnNonFinite, WeightEMA

    t0 = time.perf_counter()
    cfg = replace(cfg, train=replace(cfg.train, lr=first.lr, early_stop=0))
    ds = TrainValid(ds0.items, ds0.pixels, ds0.classes, ds0.delim)
    n_train = len(ds.indices("train"))
    print(f"\nfinal model: training on train+valid, {n_train} images, same schedule, lr "
          f"{first.lr:.2e}, seed {cfg.train.seed}; the last epoch is kept (fastai's validation set "
          f"is a placeholder: the {len(ds.indices('valid'))} former validation images, now also "
          "trained on)", flush=True)
    prep = prepare(cfg, folder, dataset=ds)
    _check_vocab(prep.learn, ds)
    learn, t = prep.learn, cfg.train
    nan_guard = StopOnNonFinite()
    results = folder / "results_full.csv"
    results.unlink(missing_ok=True)
    # train.ema: the estimate shipped the weights' moving average; so does the final model
    ema = WeightEMA(t.ema) if t.ema else None
    stopped = ""
    try:
        with _sigterm_as_interrupt():
            schedules.run(learn, t, first.lr, bool(prep.weights_source),
                          [ResultsCSV(results), nan_guard] + ([ema] if ema else []), plateau_monitor=(
                              "train_loss" if t.schedule == "plateau" else
                              monitor_name(t.monitor, ds.multi_label)))
    except Terminated:
        stopped = "terminated"
    except KeyboardInterrupt:
        stopped = "interrupted"
    if nan_guard.reason and not stopped:
        stopped = "diverged"
    if stopped:
        for cb in learn.cbs.filter(lambda c: isinstance(c, CPUBFloat16)):
            cb.close()
        print(f"the final training on train+valid was {stopped}: the run keeps the first "
              f"model in {folder / 'model'}", flush=True)
        return replace(first, stopped=stopped)

    if ema is not None and ema.ema is not None:   # the last epoch's average, as the estimate kept
        learn.model.load_state_dict(ema.ema.module.state_dict())
    # Save the final bundle beside, then swap: model/ is whole at every moment.
    meta = bundle.read_meta(folder / "model")  # thresholds tuned on validation come along
    meta = replace(meta, pretrained_from=prep.weights_source, versions={}, created="",
                   inference=replace(meta.inference, trained_on=bundle.TRAIN_VALID))
    # evaluate & co. refuse its validation split; size, TTA and thresholds are the estimate's
    bundle.save(folder / "model-full", _contiguous(learn.model.float()), meta)
    shutil.rmtree(folder / "model-valid", ignore_errors=True)
    os.replace(folder / "model", folder / "model-valid")
    os.replace(folder / "model-full", folder / "model")
    if results.exists():
        (folder / "plots").mkdir(exist_ok=True)
        report.curves_png(results, folder / "plots" / "curves_full.png")

    epochs = sum(1 for _ in results.open()) - 1 if results.exists() else 0
    full = dict(note=NOTE, trained_on="train+valid", n_train=n_train, epochs=epochs,
                lr=first.lr, seed=cfg.train.seed, kept="last epoch (no validation left to choose on)",
                estimate_model="model-valid", results="results_full.csv",
                seconds=round(time.perf_counter() - t0, 1))
    test = evaluate.held_out(folder, ds.items)
    if test:
        full["test"] = dict(test[0], at_0_5=test[1]) if test[1] else test[0]
    m = dict(first.metrics, full=full)
    (folder / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    _append_report(folder / "report.md", full, ds.multi_label)
    return FitResult(folder, m, first.best_epoch, first.seconds + full["seconds"], "", first.lr)


def _append_report(path: Path, full: dict, multi_label: bool) -> None:
    lines = ["", "## Final model (--full)", "", NOTE + ".", "",
             f"It trained on {full['n_train']} images (train+valid) for {full['epochs']} epochs at "
             f"lr {full['lr']:.2e}, seed {full['seed']}, and is the run's `model/`; the first "
             "training's model (the one the figures above measure) is in `model-valid/`. The last "
             "epoch is kept. Its epochs are in `results_full.csv` (its valid columns are "
             "measured on images it trained on: a sanity check, not an estimate)."
             + (" Its decision thresholds are those tuned on validation in the first training."
                if multi_label else ""), ""]
    if "test" in full:
        keys = [k for k in (report.MULTI_KEYS if multi_label else report.SINGLE_KEYS)
                if k in full["test"]]
        lines += [f"Final model on the test split ({full['test'].get('n', '?')} images, never "
                  "trained on nor chosen on):", "", "| metric | value |", "|---|---|",
                  *(f"| {k} | {report.fmt(full['test'][k])} |" for k in keys), ""]
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
