"""fit(config) → a finished run folder; lr_find(config) → the LR finder's figures.

The run folder gets: config.toml, splits.csv, results.csv (one row per epoch), metrics.json,
report.md, plots/, and the model bundle in model/.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import bundle, config, data, evaluate, losses, models, optim, report, samples, weights
from .config import Config


def monitor_name(monitor: str, multi_label: bool) -> str:
    """The fastai metric name `train.monitor` refers to, for this kind of data."""
    if monitor == "auto":
        return "f1_micro" if multi_label else "accuracy"
    if monitor == "accuracy" and multi_label:
        return "accuracy_multi"
    if monitor == "f1_micro" and not multi_label:
        from .errors import UsageError
        raise UsageError("train.monitor = 'f1_micro' is for multi-label data; use accuracy or f1_macro")
    return monitor


@dataclass
class FitResult:
    folder: Path
    metrics: dict
    best_epoch: int | None
    seconds: float
    interrupted: bool
    lr: float


@dataclass
class Prepared:
    learn: object
    dataset: data.Dataset
    arch: models.Arch
    weights_source: str


def prepare_data_path(cfg: Config) -> None:
    """Materialise the recipe's embedded sample dataset when its folder is missing."""
    if cfg.data.sample:
        samples.ensure(cfg.data.sample, Path(cfg.data.path))


def _metrics(multi_label: bool):
    """Validation metrics shown each epoch (multi-label ones at threshold 0.5)."""
    from fastai.metrics import F1Score, F1ScoreMulti, accuracy, accuracy_multi
    if not multi_label:
        f1 = F1Score(average="macro")
        f1._name = "f1_macro"
        return [accuracy, f1]
    micro, macro = F1ScoreMulti(average="micro"), F1ScoreMulti(average="macro")
    micro._name, macro._name = "f1_micro", "f1_macro"
    return [accuracy_multi, micro, macro]


def _mixing_callbacks(aug) -> list:
    """MixUp / CutMix (fastai's): for BCE they mix the label vectors, for CE the losses."""
    from fastai.callback.mixup import CutMix, MixUp
    return ([MixUp(aug.mixup)] if aug.mixup > 0 else []) + ([CutMix(aug.cutmix)] if aug.cutmix > 0 else [])


def prepare(cfg: Config, folder: Path) -> Prepared:
    """Everything up to a ready Learner: weights, data (decoded once), model, callbacks."""
    import fastai.callback.progress  # noqa: F401  (adds the progress bars to every Learner)
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle, fine_tune, lr_find)
    from fastai.learner import Learner
    from fastai.torch_core import set_seed

    set_seed(cfg.train.seed)
    arch = models.resolve(cfg.model.arch)
    found = weights.resolve(arch.source, arch.name, cfg.model.weights) if cfg.model.pretrained else None
    if found:
        print(f"pretrained weights for {arch.name}: {found.source}")
    prepare_data_path(cfg)
    ds = data.load(cfg)
    ds.items.to_csv(folder / "splits.csv", index=False)
    counts = ds.items["split"].value_counts()
    print(f"{len(ds.classes)} {'labels' if ds.multi_label else 'classes'}; "
          f"{counts.get('train', 0)} train, {counts.get('valid', 0)} valid"
          + (f", {counts['test']} test (held out)" if "test" in counts else ""))
    y_train = ds.targets(ds.indices("train")) if ds.multi_label else None
    if ds.multi_label:
        print("label frequency (%) per split:\n" + label_frequencies(ds).round(1).to_string())
    dls = data.dataloaders(ds, cfg, (arch.mean, arch.std))
    model, splitter = models.build(arch, len(ds.classes), cfg.model.dropout, cfg.model.concat_pool,
                                   found.state if found else None, found.source if found else "")
    learn = Learner(dls, model, loss_func=losses.make(cfg.loss, ds.multi_label, y_train),
                    opt_func=optim.make(cfg.train.opt), splitter=splitter,
                    metrics=_metrics(ds.multi_label), wd=cfg.train.wd, path=folder,
                    cbs=_precision_callbacks(cfg.train.precision) + _mixing_callbacks(cfg.aug))
    if found:
        learn.freeze()
    return Prepared(learn, ds, arch, found.source if found else "")


def label_frequencies(ds: data.Dataset):
    """Each label's frequency (%) in every split of a multi-label dataset."""
    from .splits import label_frequencies as freqs
    idx = np.flatnonzero(ds.items["split"].isin(["train", "valid", "test"]).to_numpy())
    return freqs(ds.targets(idx), ds.items["split"].to_numpy()[idx], ds.classes)


def _precision_callbacks(precision: str) -> list:
    import torch

    from .callbacks import CPUBFloat16, bf16_enabled
    if torch.cuda.is_available() and precision != "fp32":
        from fastai.callback.fp16 import MixedPrecision
        return [MixedPrecision(amp_mode="bf16" if torch.cuda.is_bf16_supported() else "fp16")]
    return [CPUBFloat16()] if bf16_enabled(precision) else []


def find_lr(learn, folder: Path) -> dict:
    """Run fastai's LR finder; save lr_find.png and lr_find.json in `folder`; return figures."""
    from fastai.callback.schedule import minimum, slide, steep, valley

    (folder / "plots").mkdir(exist_ok=True)
    found = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=False)
    scratch = folder / learn.model_dir  # fastai's temporary checkpoint folder, empty by now
    if scratch.is_dir() and not any(scratch.iterdir()):
        scratch.rmdir()
    figures = {k: float(v) for k, v in found._asdict().items()}
    rec = learn.recorder
    lrs, losses = [float(x) for x in rec.lrs], [float(x) for x in rec.losses]
    report.lr_find_png(lrs, losses, figures, folder / "plots" / "lr_find.png")
    (folder / "lr_find.json").write_text(
        json.dumps({"suggestions": figures, "lr": lrs, "loss": losses}, indent=1) + "\n")
    return figures


def fit(cfg: Config, folder: Path) -> FitResult:
    """Train per `cfg` into `folder`; Ctrl-C stops training and still saves the best epoch."""
    from fastai.callback.tracker import EarlyStoppingCallback

    from .callbacks import CPUBFloat16, KeepBest, ResultsCSV

    t0 = time.perf_counter()
    (folder / "config.toml").write_text(config.dumps(cfg))
    prep = prepare(cfg, folder)
    learn, t = prep.learn, cfg.train
    lr = t.lr
    if lr == "auto":
        lr = find_lr(learn, folder)["valley"]
        print(f"LR finder: valley at {lr:.2e}; training with it")
        cfg = replace(cfg, train=replace(t, lr=lr))
        (folder / "config.toml").write_text(config.dumps(cfg))
    monitor = monitor_name(t.monitor, prep.dataset.multi_label)
    keep = KeepBest(monitor)
    cbs = [ResultsCSV(folder / "results.csv"), keep]
    if t.early_stop:
        cbs.append(EarlyStoppingCallback(monitor=monitor, patience=t.early_stop, reset_on_fit=False))
    interrupted = False
    try:
        if prep.weights_source and t.freeze_epochs:
            learn.fine_tune(t.epochs, base_lr=lr, freeze_epochs=t.freeze_epochs, cbs=cbs)
        else:
            learn.unfreeze()
            learn.fit_one_cycle(t.epochs + (0 if prep.weights_source else t.freeze_epochs), lr, cbs=cbs)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: saving the best epoch so far")
        for cb in learn.cbs.filter(lambda c: isinstance(c, CPUBFloat16)):
            cb.close()
    if keep.state is None:
        if interrupted:
            return FitResult(folder, {}, None, time.perf_counter() - t0, True, lr)
        raise RuntimeError("training finished no epoch")
    keep.restore(learn.model)
    return _finish(cfg, prep, folder, keep, lr, t0, interrupted)


def _finish(cfg, prep: Prepared, folder: Path, keep, lr: float, t0: float, interrupted: bool) -> FitResult:
    """Save the bundle, then measure it on the validation split, as `clfapp evaluate` would;
    multi-label runs also get their thresholds searched and stored in the bundle."""
    from . import thresholds
    from .predict import Predictor

    learn, ds = prep.learn, prep.dataset
    meta = bundle.BundleMeta(
        arch=cfg.model.arch, classes=list(ds.classes), size=cfg.data.size, resize=cfg.data.resize,
        mean=list(prep.arch.mean), std=list(prep.arch.std), dropout=cfg.model.dropout,
        concat_pool=cfg.model.concat_pool, pretrained_from=prep.weights_source,
        multi_label=ds.multi_label, label_delim=ds.delim)
    bundle.save(folder / "model", _contiguous(learn.model.float()), meta)
    valid = ds.indices("valid")
    probs = Predictor(folder).probabilities_of(ds.pixels[valid])
    y = ds.targets(valid)
    (folder / "plots").mkdir(exist_ok=True)
    if (folder / "results.csv").exists():
        report.curves_png(folder / "results.csv", folder / "plots" / "curves.png")
    seconds = time.perf_counter() - t0
    summary = (f"Recipe `{cfg.recipe}`, arch `{cfg.model.arch}`, {cfg.data.size} px, lr {lr:.2e}, "
               f"best epoch {keep.best_epoch} by {cfg.train.monitor}, {seconds:.0f} s"
               + (" (interrupted)" if interrupted else "") + ".")
    run_info = dict(best_epoch=keep.best_epoch, seconds=round(seconds, 1), interrupted=interrupted)
    if ds.multi_label:
        tuned = thresholds.tune(folder, probs, y, cfg.thresholds.metric, cfg.thresholds.mode)
        m = dict(tuned.after, **run_info)
        print(f"thresholds ({cfg.thresholds.mode}, {cfg.thresholds.metric}): "
              f"{tuned.search.score_at_half:.4f} at 0.5 → {tuned.search.score:.4f}")
        report.write_multilabel_metrics(folder, m, f"Run {folder.name}", before=tuned.before,
                                        search=tuned.search, freqs=label_frequencies(ds),
                                        extra=[summary, "", "Validation split:", ""])
    else:
        m = dict(evaluate.metrics(probs, y, ds.classes), **run_info)
        report.write_metrics(folder, m, ds.classes, f"Run {folder.name}",
                             extra=[summary, "", "Validation split:", ""])
    return FitResult(folder, m, keep.best_epoch, seconds, interrupted, lr)


def _contiguous(model):
    """Back to the default memory format: safetensors stores contiguous tensors."""
    import torch
    return model.to(memory_format=torch.contiguous_format)


def lr_find(cfg: Config, folder: Path) -> dict:
    (folder / "config.toml").write_text(config.dumps(cfg))
    prep = prepare(cfg, folder)
    return find_lr(prep.learn, folder)
