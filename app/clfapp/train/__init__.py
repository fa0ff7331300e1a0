"""fit(config) → a finished run folder; lr_find(config) → the LR finder's figures.

The run folder gets: config.toml, splits.csv, results.csv (one row per epoch), metrics.json,
report.md, plots/, and the model bundle in model/.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..infer import bundle, evaluate

from .. import config, data, models, report

from ..models import losses, optim, weights

from . import distributed, schedules

from ..data import samples, splits
from ..config import Config


def monitor_name(monitor: str, multi_label: bool) -> str:
    """The fastai metric name `train.monitor` refers to, for this kind of data."""
    if monitor == "auto":
        return "f1_micro" if multi_label else "accuracy"
    if monitor == "accuracy" and multi_label:
        return "accuracy_multi"
    if monitor == "f1_micro" and not multi_label:
        from ..errors import UsageError
        raise UsageError("train.monitor = 'f1_micro' is for multi-label data; use accuracy or f1_macro")
    return monitor


@dataclass
class FitResult:
    folder: Path
    metrics: dict
    best_epoch: int | None
    seconds: float
    stopped: str      # "" when training ran to its end; else interrupted, terminated, failed, diverged
    lr: float

    @property
    def interrupted(self) -> bool:
        return self.stopped in ("interrupted", "terminated")


@dataclass
class Prepared:
    learn: object
    dataset: data.Dataset
    arch: models.Arch
    weights_source: str
    class_weights: dict | None = None
    """{class: weight} the loss applies (loss.class_weights), or None."""
    test_size: int = 0
    """The size the end of fit measures at and model.json records (infer/test_size.py),
    set by fit before training; 0 = data.size."""


def _metrics(multi_label: bool):
    """Validation metrics shown each epoch, in results.csv and watched by `train.monitor`.

    Each accumulates the whole validation set's probabilities (softmax, or sigmoid decided at
    0.5) and calls clfapp.metrics, so an epoch's figure is the one `clfapp evaluate` reports
    for the same weights (fastai's own metrics differ on absent classes and empty sets).
    """
    from functools import partial

    from fastai.metrics import AccumMetric, ActivationType

    from ..infer import metrics
    act = ActivationType.Sigmoid if multi_label else ActivationType.Softmax
    return [AccumMetric(partial(metrics.epoch_score, name=name, multi_label=multi_label),
                        dim_argmax=-1, activation=act, flatten=False, to_np=True, name=name)
            for name in metrics.EPOCH_METRICS[multi_label]]


def _mixing_callbacks(aug) -> list:
    """MixUp / CutMix (fastai's): for BCE they mix the label vectors, for CE the losses."""
    from fastai.callback.mixup import CutMix, MixUp
    return ([MixUp(aug.mixup)] if aug.mixup > 0 else []) + ([CutMix(aug.cutmix)] if aug.cutmix > 0 else [])


def prepare(cfg: Config, folder: Path, dataset: data.Dataset | None = None) -> Prepared:
    """Everything up to a ready Learner: weights, data (decoded once), model, callbacks.

    `dataset`: items already loaded and split (full.py's train+valid retraining), used as
    they are; splits.csv is then left as the first training wrote it."""
    import fastai.callback.progress  # noqa: F401  (adds the progress bars to every Learner)
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle, fine_tune, lr_find)
    from fastai.learner import Learner
    from . import reproducible

    arch = models.resolve(cfg.model.arch, cfg.model.pretrained, cfg.model.cut_blocks)
    # several processes: rank 0 converts/caches weights and loads the data (image cache,
    # embedded samples) first, the others then find them made (train/distributed.py)
    found = distributed.rank0_first(lambda: weights.resolve(arch.source, arch.name, cfg.model.weights)
                                    if cfg.model.pretrained else None)
    if found:
        print(f"pretrained weights for {arch.name}: {found.source}")
    # Seeded after the weights are found: converting pip-shipped weights on a machine's first
    # run builds a timm model (random init), which would shift every draw after it.
    reproducible.seed(cfg.train)   # and train.deterministic's settings
    ds = distributed.rank0_first(lambda: (samples.materialise(cfg.data), data.load(cfg))[1]) if dataset is None else dataset
    if dataset is None:
        splits.write(ds.items, folder / "splits.csv", data.dataset_root(cfg.data))
    counts = ds.items["split"].value_counts()
    print(f"{len(ds.classes)} {'labels' if ds.multi_label else 'classes'}; "
          f"{len(ds.indices('train'))} train, {len(ds.indices('valid'))} valid"
          + (f", {counts['test']} test (held out)" if "test" in counts else ""))
    y_train = ds.targets(ds.indices("train"))   # class weights and pos_weight "auto" count them
    if ds.multi_label:
        print("label frequency (%) per split:\n" + label_frequencies(ds).round(1).to_string())
    dls = data.dataloaders(ds, cfg, (arch.mean, arch.std))
    model, splitter = models.build(arch, len(ds.classes), cfg.model.dropout, cfg.model.concat_pool,
                                   found.state if found else None, found.source if found else "",
                                   head_hidden=cfg.model.head_hidden, cut_blocks=cfg.model.cut_blocks)
    print(models.describe(model, cfg.model.arch, cfg.model.cut_blocks), flush=True)
    models.check_input(model, cfg.model.arch, cfg.data.size)
    loss = losses.make(cfg.loss, ds.multi_label, y_train, len(ds.classes))
    class_weights = _class_weights(loss, ds.classes, cfg.loss.class_weights)
    learn = Learner(dls, model, loss_func=loss,
                    opt_func=optim.make(cfg.train.opt, cfg.train), splitter=splitter,
                    metrics=_metrics(ds.multi_label), wd=cfg.train.wd, path=folder,
                    train_bn=cfg.train.train_bn,
                    cbs=_precision_callbacks(cfg.train.precision, cfg.train.channels_last)
                    + _mixing_callbacks(cfg.aug)
                    + _resize_callbacks(cfg))
    if found:
        learn.freeze()
    return Prepared(learn, ds, arch, found.source if found else "", class_weights)


def _class_weights(loss, classes: list[str], spec: str) -> dict | None:
    """The class weights the loss applies, {class: weight}, printed in one line (and later
    recorded in metrics.json); None without weights."""
    w = losses.class_weights_of(loss)
    if w is None:
        return None
    named = {str(c): round(float(x), 6) for c, x in zip(classes, w)}
    how = " = max(n)/n_c of the training split" if spec == "auto" else ""
    print(f"class weights{how}: " + ", ".join(f"{c} {x:.4g}" for c, x in named.items()))
    return named


def label_frequencies(ds: data.Dataset):
    """Each label's frequency (%) in every split of a multi-label dataset."""
    from ..data.splits import label_frequencies as freqs
    idx = np.flatnonzero(ds.items["split"].isin(["train", "valid", "test"]).to_numpy())
    return freqs(ds.targets(idx), ds.items["split"].to_numpy()[idx], ds.classes)


def _resize_callbacks(cfg: Config) -> list:
    """train.progressive below 1: smaller training batches first (train/progressive.py)."""
    if cfg.train.progressive >= 1:
        return []
    from .progressive import ProgressiveResize
    return [ProgressiveResize(cfg.data.size, cfg.train.progressive)]


def _precision_callbacks(precision: str, channels_last: bool = True) -> list:
    """Mixed precision (CUDA: fastai's MixedPrecision; CPU: CPUBFloat16 where bf16 is fast) and,
    with train.channels_last, fastai's ChannelsLast.

    fastai's ChannelsLast only puts the model in channels_last (before_fit); batches stay NCHW.
    That is enough on CPU as on CUDA: a convolution whose weights are channels_last returns
    channels_last (oneDNN and cuDNN choose NHWC when the input or the weight is), so from the
    first convolution on every activation is. Converting the batch first, as clfapp's own copy
    of the callback did, saves nothing: bench/optimizer_step.py times both (lite0, 128 px, bs
    32, bf16, 2 threads, 60 alternating rounds: 0.588 s a step vs 0.598 s with the batch left
    NCHW, a median round-by-round ratio of 0.987; fp32 0.480 vs 0.471 s)."""
    import torch
    from fastai.callback.channelslast import ChannelsLast

    from ..models.callbacks import CPUBFloat16, bf16_enabled
    layout = [ChannelsLast()] if channels_last else []
    if torch.cuda.is_available() and precision != "fp32":
        from fastai.callback.fp16 import MixedPrecision
        return [MixedPrecision(amp_mode="bf16" if torch.cuda.is_bf16_supported() else "fp16")] + layout
    if bf16_enabled(precision):
        return [CPUBFloat16()] + layout
    return layout


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


@dataclass
class Stop:
    """How training ended early: "" (it did not), interrupted, terminated, failed, diverged."""
    how: str = ""
    message: str = ""
    error: Exception | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM during fit: handled like Ctrl-C (the best epoch so far is saved)."""


@contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM (a scheduler's kill, `timeout`) into `Terminated` while training runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_vocab(learn, ds: data.Dataset) -> None:
    """The learner's output order must be the classes the bundle will name: a mismatch would
    silently permute every prediction (fastai sorts a vocab unless told not to)."""
    vocab = [str(c) for c in learn.dls.vocab]
    if vocab != [str(c) for c in ds.classes]:
        raise RuntimeError(f"internal error: the learner's classes {vocab[:6]} differ from the "
                           f"dataset's {ds.classes[:6]}; refusing to save a permuted model")


def fit(cfg: Config, folder: Path, on_prepared=None, started: float | None = None,
        dataset: data.Dataset | None = None, checkpoints: bool = False, resume=None) -> FitResult:
    """Train per `cfg` into `folder`. Whatever ends training early (Ctrl-C, SIGTERM, an error,
    a NaN or inf loss) still leaves the best epoch so far saved as a bundle, with the run
    folder's metrics and report consistent with it, and the result says how it ended.

    `on_prepared(prep)`, when given, is called with the ready `Prepared` before training
    (and before `lr = auto`'s finder): the one extension point, e.g. distill.attach wraps
    the loss and adds its teacher callback there. `started`: perf_counter() when the command
    began, from which train.budget counts (default: now). `dataset`: items already loaded,
    split and decoded (tune.py's trials share one), as prepare takes it. `checkpoints`: write
    RUN/checkpoint.safetensors after every epoch (`clfapp fit`; removed when the run finishes);
    `resume`: a checkpoint.Resumed to continue from (`clfapp fit --resume`, checkpoint.py)."""
    from fastai.callback.tracker import EarlyStoppingCallback

    from ..models.callbacks import CPUBFloat16, KeepBest, ResultsCSV, StopOnNonFinite, WeightEMA

    t0 = time.perf_counter() - (resume.seconds if resume is not None else 0.0)
    if resume is None:   # a resumed run keeps the config.toml it started with (its finder's LR)
        (folder / "config.toml").write_text(config.dumps(cfg))
    if distributed.active():   # each process takes bs // N: the global batch stays train.bs
        prep = prepare(distributed.per_process(cfg), folder, dataset)
        print(distributed.describe(cfg), flush=True)
    else:
        prep = prepare(cfg, folder, resume.dataset if resume is not None else dataset)
    _check_vocab(prep.learn, prep.dataset)
    from ..infer import test_size
    # config.toml keeps the rule (0 = auto), so a run's config given a new data.size follows
    # it; the value lands in model.json, and a resumed run resolves the same one again
    prep.test_size, why = test_size.resolved(cfg, prep.learn.model)
    if why and resume is None:
        print(why, flush=True)
    if on_prepared is not None:
        on_prepared(prep)
    learn, t = prep.learn, cfg.train
    lr = t.lr
    if lr == "auto":
        lr = distributed.from_rank0(lambda: find_lr(learn, folder)["valley"])  # rank 0 alone
        print(f"LR finder: valley at {lr:.2e}; training with it")
        cfg = replace(cfg, train=replace(t, lr=lr))
        (folder / "config.toml").write_text(config.dumps(cfg))
    monitor = monitor_name(t.monitor, prep.dataset.multi_label)
    distributed.attach(learn)   # several processes: every fit from here is data-parallel
    keep, nan_guard = KeepBest(monitor), StopOnNonFinite()
    cbs = [ResultsCSV(folder / "results.csv", tensorboard=t.tensorboard), keep, nan_guard]
    if t.ema:  # validated, kept and saved: the weights' moving average
        cbs.append(WeightEMA(t.ema))
    if t.early_stop:
        cbs.append(EarlyStoppingCallback(monitor=monitor, patience=t.early_stop, reset_on_fit=False))
    plan = None
    if t.budget and resume is not None:  # planned when the run started; counts on from there
        from .checkpoint import restore_plan
        plan = restore_plan(resume.header["budget"], t0 if started is None else started)
        cbs.append(plan.guard)
    elif t.budget:  # epochs planned from the measured speed to end within it (budget.py)
        from . import budget
        ds = prep.dataset
        from ..infer import choice
        from ..infer.spec import tta_flips_for, tta_views
        # the end measures every candidate of the shipped configuration on validation (each
        # size in every view), then the chosen one on the test split (infer/choice.py)
        options = choice.candidates(cfg.data.size, prep.test_size or cfg.data.size,
                                    bool(cfg.data.test_size), cfg.aug.tta, tta_flips_for(cfg.aug))
        ratios = sorted((s / cfg.data.size) ** 2 for s in {s for s, _ in options})
        plan = budget.plan(learn, t, lr, bool(prep.weights_source), t0 if started is None else started,
                           len(ds.indices("valid")) + int((ds.items["split"] == "test").sum()),
                           views=max(len(tta_views(tta_flips_for(cfg.aug))) if tta else 1
                                     for _, tta in options),
                           pixel_ratio=ratios[-1], n_choice_items=len(ds.indices("valid")),
                           other_ratios=sum(ratios[:-1]))
        if plan.changes:
            t = replace(t, **plan.changes)
            cfg = replace(cfg, train=replace(cfg.train, **plan.changes))
            (folder / "config.toml").write_text(config.dumps(cfg))
        cbs.append(plan.guard)
    saver = None
    if checkpoints:  # after every epoch, for `fit --resume` (checkpoint.py)
        from .checkpoint import Checkpoints
        saver = Checkpoints(folder, cfg, prep.dataset, cbs, t0, plan, resume)
        cbs.append(saver)
    done = saver.before_run(learn) if saver is not None else 0  # resumed: its state put back

    def replan(tt):
        """Fewer main epochs when the frozen phase ran later than the budget planned."""
        nonlocal cfg
        now = time.perf_counter()
        if plan.guard.stopped_after is not None:   # the guard ends the fit after the frozen phase
            return tt
        m = plan.replan_main(now, tt.schedule == "sgdr")
        if m is None:
            return tt
        print(plan.replan_line(now - training_began), flush=True)
        plan.changes = dict(plan.changes, freeze_epochs=plan.planned[0], epochs=m)
        cfg = replace(cfg, train=replace(cfg.train, epochs=m))
        (folder / "config.toml").write_text(config.dumps(cfg))
        if saver is not None:
            saver.config_changed(cfg)
        return replace(tt, epochs=m)
    training_began = time.perf_counter()
    stop = Stop()
    try:
        with _sigterm_as_interrupt():
            # the frozen phase, then train.schedule under train.freeze (schedules.py); the
            # defaults are fine_tune for pretrained models, fit_one_cycle from scratch
            if resume is None or not resume.training_done:
                schedules.run(learn, t, lr, bool(prep.weights_source), cbs, plateau_monitor=(
                    monitor if t.plateau_monitor == "auto"
                    else monitor_name(t.plateau_monitor, prep.dataset.multi_label)), done=done,
                    before_main=replan if plan is not None and resume is None else None)
                if saver is not None:
                    saver.training_ended()
    except Terminated:
        stop = Stop("terminated", "terminated (SIGTERM)")
    except KeyboardInterrupt:
        stop = Stop("interrupted", "interrupted (Ctrl-C)")
    except Exception as e:  # noqa: BLE001 (saved below, then raised again)
        stop = Stop("failed", f"failed: {type(e).__name__}: {e}", e)
    if saver is not None:
        saver.release()   # however training ended, another process may resume it from now on
    distributed.detach(learn)   # the plain model again, also after an exception
    if nan_guard.reason and not stop.how:
        stop = Stop("diverged", f"stopped: {nan_guard.reason}")
    if stop.how:
        for cb in learn.cbs.filter(lambda c: isinstance(c, CPUBFloat16)):
            cb.close()  # a batch cut short leaves autocast on
        print(f"\ntraining {stop.message}", flush=True)
    if keep.state is None:
        if stop.error is not None:
            raise stop.error
        if stop.how:
            print("no epoch had finished: nothing to save", flush=True)
            return FitResult(folder, {}, None, time.perf_counter() - t0, stop.how, lr)
        raise RuntimeError("training finished no epoch")
    if not distributed.is_main():   # rank 0 saves and reports; this rank's folder is scratch
        if stop.error is not None:
            raise stop.error
        return FitResult(folder, {}, keep.best_epoch, time.perf_counter() - t0, stop.how, lr)
    keep.restore(learn.model)
    result = _finish(cfg, prep, folder, keep, lr, t0, stop.how, plan)
    if saver is not None and stop.how in ("", "diverged"):
        saver.remove()   # the run has ended: nothing is left to resume
    if stop.how:
        print(f"the best epoch so far ({keep.best_epoch}) is saved in {folder / 'model'}", flush=True)
    if stop.error is not None:
        raise stop.error
    return result


def _finish(cfg, prep: Prepared, folder: Path, keep, lr: float, t0: float, stopped: str = "",
            budget=None) -> FitResult:
    """Save the bundle, then measure it as `clfapp evaluate` would; multi-label runs also get
    their thresholds searched and stored in the bundle.

    The best epoch and the thresholds were chosen on the validation split, so its figures are
    optimistic; with a held-out test split the headline figures (top level of metrics.json,
    report.md, the summary) are the saved bundle's on it, and validation moves under "valid".
    """
    from ..infer import choice, spec, thresholds
    from ..infer.predict import Predictor
    from ..infer.spec import tta_flips_for

    learn, ds = prep.learn, prep.dataset
    flips = tta_flips_for(cfg.aug)
    test_size = prep.test_size or cfg.data.size
    options = choice.candidates(cfg.data.size, test_size, bool(cfg.data.test_size), cfg.aug.tta, flips)
    inference = spec.InferenceSpec(
        size=test_size, resize=cfg.data.resize, tta=cfg.aug.tta, tta_flips=flips,
        trained_on=spec.TRAIN, split_digest=spec.split_digest(folder / "splits.csv"),
        chosen_by=_chosen_by(cfg, options))
    meta = bundle.BundleMeta(
        arch=cfg.model.arch, classes=list(ds.classes), size=cfg.data.size,
        mean=list(prep.arch.mean), std=list(prep.arch.std), inference=inference,
        dropout=cfg.model.dropout, concat_pool=cfg.model.concat_pool,
        pretrained_from=prep.weights_source, head_hidden=cfg.model.head_hidden,
        cut_blocks=cfg.model.cut_blocks, multi_label=ds.multi_label, label_delim=ds.delim)
    bundle.save(folder / "model", _contiguous(learn.model.float()), meta)
    predictor = Predictor(folder)
    # the shipped configuration, measured: each candidate size and TTA on validation, in fp32
    # as the bundle runs (infer/choice.py); the formula's test size and aug.tta only propose
    valid, by_size = _valid_at(ds, sorted({s for s, _ in options}), cfg.data.resize, cfg.data.size)
    y = ds.targets(valid)
    views = {(s, t): len(spec.tta_views(flips)) if t else 1 for s, t in options}
    chosen = choice.choose(choice.measured(predictor, by_size, options), y, ds.multi_label, views,
                           (test_size, bool(cfg.aug.tta and flips)), cfg.thresholds.metric,
                           cfg.thresholds.mode, list(ds.classes))
    chosen.record["chosen_by"] = inference.chosen_by
    predictor.meta.inference.size, predictor.meta.inference.tta = chosen.size, chosen.tta
    bundle.write_meta(folder / "model", predictor.meta)   # what predict, evaluate & co. run
    meta, pixels, probs = predictor.meta, by_size[chosen.size], chosen.probs
    if len(options) > 1:
        c = chosen.record["chosen"]
        print(f"shipped configuration, measured on validation: {choice.said(c)}, "
              f"{chosen.record['metric']} {c[chosen.record['metric']]:.4f} (of {len(options)} "
              "candidates; metrics.json `inference`)", flush=True)
    (folder / "plots").mkdir(exist_ok=True)
    if (folder / "results.csv").exists():
        report.curves_png(folder / "results.csv", folder / "plots" / "curves.png")
    seconds = time.perf_counter() - t0
    sizes = (f"{cfg.data.size} px" if meta.input_size == cfg.data.size
             else f"trained at {cfg.data.size} px, measured at {meta.input_size} px ("
             + ("data.test_size" if cfg.data.test_size else "chosen on validation") + ")")
    summary = (f"Recipe `{cfg.recipe}`, arch `{cfg.model.arch}`, {sizes}, lr {lr:.2e}, "
               f"best epoch {keep.best_epoch} by {cfg.train.monitor}, {seconds:.0f} s"
               + (f" (training {stopped} early)" if stopped else "")
               + (f"; figures with TTA (mean over {len(meta.inference.views)} views: the "
                  f"image and every combination of its {', '.join(meta.inference.tta_flips)} mirrors)"
                  if meta.inference.tta else "") + ".")
    run_info = dict(best_epoch=keep.best_epoch, seconds=round(seconds, 1),
                    interrupted=stopped in ("interrupted", "terminated"), stopped=stopped,
                    inference=chosen.record)
    from .reproducible import record
    run_info["reproducibility"] = record(cfg)   # seeds, deterministic, threads, versions
    if prep.class_weights:
        run_info["class_weights"] = prep.class_weights
    if ds.multi_label:
        tuned = thresholds.tune(folder, probs, y, cfg.thresholds.metric, cfg.thresholds.mode,
                                predictor, on=f"the validation split of {folder.name}")
        print(f"thresholds ({cfg.thresholds.mode}, {cfg.thresholds.metric}) on the validation split: "
              f"{tuned.search.score_at_half:.4f} at 0.5 → {tuned.search.score:.4f}")
        valid_m, valid_before = tuned.after, tuned.before
    else:
        valid_m, valid_before = evaluate.metrics(probs, y, ds.classes), None
    test = evaluate.held_out(folder, ds.items)  # (at the bundle's thresholds, at 0.5) or None
    split = "test" if test else "valid"
    head, before = test if test else (valid_m, valid_before)
    m = dict(head, **run_info, split=split, split_note=report.split_note(split, ds.multi_label))
    if test:
        m["valid"] = dict(valid_m, at_0_5=valid_before) if valid_before else valid_m
    extra = [summary, "", *choice.lines(chosen.record, len(valid)),
             f"Measured on the {m['split_note']}.", ""]
    if budget is not None:  # how train.budget was spent (budget.Plan)
        from .budget import report_line
        m["budget"] = budget.record(keep.seen)
        extra += [report_line(m["budget"]), ""]
    from ..report.html import Evidence  # report.html's curves, top losses, Grad-CAM
    evidence = Evidence(probs, y, list(ds.classes), ds.multi_label, ds.items["path"].iloc[valid].tolist(),
                        tuned.search.thresholds if ds.multi_label else None, pixels,
                        predictor=predictor, described="the validation split")
    if ds.multi_label:
        report.write_multilabel_metrics(folder, m, f"Run {folder.name}", before=before,
                                        search=tuned.search, freqs=label_frequencies(ds), extra=extra,
                                        evidence=evidence)
    else:
        report.write_metrics(folder, m, ds.classes, f"Run {folder.name}", extra=extra, evidence=evidence)
    return FitResult(folder, m, keep.best_epoch, seconds, stopped, lr)


def _chosen_by(cfg, options) -> str:
    """model.json's inference.chosen_by: measurement when fit had candidates to measure, else
    the config key that left a single one."""
    if len(options) > 1:
        return "measurement"
    return "data.test_size" if cfg.data.test_size else "aug"


def _valid_at(ds, sizes: list[int], resize: str, trained: int) -> tuple[np.ndarray, dict]:
    """(validation indices, {size: their pixels}) for each candidate size: training's decoded
    pixels at the training size `trained`, the others decoded again (a few ms an image); an
    image gone unreadable since is left out at every size, with a warning, so every
    candidate is measured on the same items."""
    from ..data import images
    valid = ds.indices("valid")
    keep = np.ones(len(valid), dtype=bool)
    decoded = {}
    paths = ds.items["path"].iloc[valid].tolist()
    for size in sizes:
        if size == trained:
            continue
        pixels, ok = images.read_many(paths, size, resize, progress=False)
        ok = np.asarray(ok, dtype=int)
        decoded[size] = (pixels, ok)
        here = np.zeros(len(valid), dtype=bool)
        here[ok] = True
        keep &= here
    if not keep.all():
        print(f"warning: {int((~keep).sum())} validation image(s) could not be read again at "
              f"{', '.join(str(s) for s in decoded)} px; measured without them", file=sys.stderr)
    out = {}
    for size in sizes:
        if size in decoded:
            pixels, ok = decoded[size]
            out[size] = pixels[keep[ok]]
        else:
            out[size] = ds.pixels[valid[keep]]
    return valid[keep], out


def _contiguous(model):
    """Back to the default memory format: safetensors stores contiguous tensors."""
    import torch
    return model.to(memory_format=torch.contiguous_format)


def lr_find(cfg: Config, folder: Path) -> dict:
    (folder / "config.toml").write_text(config.dumps(cfg))
    prep = prepare(cfg, folder)
    return find_lr(prep.learn, folder)
