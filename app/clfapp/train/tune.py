"""Hyper-parameter search on Optuna: `clfapp tune RECIPE`.

A study is a folder, runs/tune-RECIPE/ (or runs/NAME with --study NAME):

  study.db          Optuna's SQLite storage (unless --storage URL): running `clfapp tune` again
                    continues the study, and several processes can work on one at once
  splits.csv        the one train/valid split every trial uses (its digest is stored with the
                    study; a worker whose data splits differently is refused)
  trial-N/          each trial's ordinary run folder (a normal `fit`; --keep N: the best N only)
  leaderboard.csv   every trial: state, figure, epochs, seconds, pruned, parameters (best first)
  best.toml         the best trial's config as a recipe: `clfapp fit runs/tune-RECIPE/best.toml`
  plots/            optimization_history.png, param_importances.png, intermediate_values.png

The search space is the recipe's [tune] table: dotted keys are config keys, each given a list
(categorical: every value a choice, what the grid sampler walks) or a range
{low = ..., high = ..., log = true, step = ...} (numeric keys only); plain keys are the study's
settings (config.TuneConfig). Every key and value is checked, and a config built with it, before
the first trial. Each trial is `train.fit` on images decoded once per study (once per input size
and resize method the space tries) and is reported to the pruner after every epoch (pruning
stays per epoch). A finished trial's objective is the figure of its model as shipped: the end
of fit measures the kept epoch at each candidate size and TTA in fp32 and ships the better
(infer/choice.py); that configuration's validation figure is what the study maximises.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import socket
import time
import tomllib
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .. import config
from ..config import Config, TuneConfig
from ..errors import UsageError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S = 60
"""A worker's running trial writes a heartbeat this often; one silent for 3x as long (a killed
process) is marked failed by the next worker to start a trial, and its parameters tried again."""


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a config key and its choices or range."""
    name: str                  # "train.lr": the config key, also Optuna's parameter name
    choices: tuple = ()        # categorical
    low: float | None = None   # numeric range
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def _tables(cfg: Config) -> dict:
    """A resolved Config as merge()'s {section: {key: value}} tables."""
    return config.to_dict(cfg)


def with_params(base: Config, params: dict) -> Config:
    """The base config with a trial's parameters {"train.lr": 3e-3, ...}, validated."""
    updates: dict = {}
    for name, value in params.items():
        section, key = name.split(".", 1)
        updates.setdefault(section, {})[key] = value
    return config.build(config.merge(_tables(base), updates, "the search space"))


def parse_space(table: dict, base: Config, where: str) -> tuple[list[Param], dict]:
    """[tune] → (the space's Params, the study settings given there). Every key, choice and
    range end is checked against the config, and a config is built with each, so a mistake
    stops the command before any training (UsageError)."""
    settings_known = {f.name: f.default for f in fields(TuneConfig)}
    params, settings = [], {}
    for name, spec in table.items():
        if "." not in name:
            if name not in settings_known:
                raise UsageError(f"unknown [tune] setting {name!r} in {where} (settings: "
                                 f"{', '.join(settings_known)}; search keys are section.key, "
                                 f"e.g. \"train.lr\")")
            settings[name] = config._coerce("tune", name, spec, settings_known[name])
            continue
        section, key = name.split(".", 1)
        if section not in config.SECTIONS:
            raise UsageError(f"unknown config section [{section}] in [tune] of {where}"
                             f"{config._suggest(section, config.SECTIONS)}")
        known = [f.name for f in fields(config._section_class(section))]
        if key not in known:
            raise UsageError(f"unknown config key {name} in [tune] of {where}{config._suggest(key, known)}")
        if section == "data" and key in config.TUNE_FIXED_DATA:
            raise UsageError(f"[tune] of {where}: {name} cannot be searched: every trial of a "
                             f"study validates on one split of one dataset (data.size and "
                             f"data.resize can vary)")
        if name == "train.monitor":
            raise UsageError(f"[tune] of {where}: train.monitor is the study's objective; it "
                             f"cannot vary between trials")
        default = getattr(getattr(Config(), section), key)
        if isinstance(spec, list):
            if not spec or any(isinstance(v, (list, dict)) for v in spec):
                raise UsageError(f"[tune] of {where}: {name} = {spec!r}: give a non-empty list "
                                 f"of values, e.g. [0, 10, 30]")
            p = Param(name, choices=tuple(spec))
            candidates = list(spec)
        elif isinstance(spec, dict):
            extra = set(spec) - {"low", "high", "log", "step"}
            numeric = (isinstance(default, (int, float)) and not isinstance(default, bool)) or name == "train.lr"
            if extra or "low" not in spec or "high" not in spec or not numeric:
                raise UsageError(f"[tune] of {where}: {name} = {spec!r}: a range is "
                                 f"{{low = ..., high = ..., log = true|false, step = ...}} of a "
                                 f"numeric key" + ("" if numeric else f"; {name} is not numeric: "
                                                   f"give a list of choices"))
            integer = isinstance(default, int) and not isinstance(default, float)
            try:
                low, high = float(spec["low"]), float(spec["high"])
                step = float(spec["step"]) if "step" in spec else None
            except (TypeError, ValueError):
                raise UsageError(f"[tune] of {where}: {name}: low, high and step must be numbers")
            log = bool(spec.get("log", False))
            if not low < high or (log and low <= 0) or (log and step) or (step is not None and step <= 0):
                raise UsageError(f"[tune] of {where}: {name}: need low < high (both > 0 with "
                                 f"log = true, which takes no step) and a positive step; got {spec!r}")
            if integer and not (low.is_integer() and high.is_integer()):
                raise UsageError(f"[tune] of {where}: {name} is a whole number: give whole low and high")
            p = Param(name, low=low, high=high, log=log, step=step, integer=integer)
            candidates = [int(low), int(high)] if integer else [low, high]
        else:
            raise UsageError(f"[tune] of {where}: {name} = {spec!r}: give a list of choices "
                             f"([a, b, c]) or a range ({{low = 1e-4, high = 1e-2, log = true}})")
        for value in candidates:   # each choice builds a valid config on its own
            try:
                with_params(base, {name: value})
            except UsageError as e:
                raise UsageError(f"[tune] of {where}: {name} = {value!r} gives a bad config: {e}")
        params.append(p)
    if not params:
        raise UsageError(f"[tune] of {where} names no key to search (e.g. \"train.lr\" = "
                         f"{{low = 1e-4, high = 1e-2, log = true}})")
    return params, settings


def grid_points(params: list[Param], seed: int) -> list[dict]:
    """Every combination of the space's lists, in a seeded shuffled order (a study cut short
    still covers every key's values)."""
    if any(not p.choices for p in params):
        ranges = ", ".join(p.name for p in params if not p.choices)
        raise UsageError(f"the grid sampler needs a list of values for every key; {ranges} "
                         f"{'is a range' if ',' not in ranges else 'are ranges'}")
    points = [dict(zip([p.name for p in params], combo))
              for combo in itertools.product(*[p.choices for p in params])]
    random.Random(seed).shuffle(points)
    return points


def check_combinations(base: Config, params: list[Param], limit: int = 4096) -> None:
    """Build the config of every combination of choices and range ends (when there are at
    most `limit`): keys that are fine alone can clash (aug.mixup and aug.cutmix both on)."""
    ends = [list(p.choices) if p.choices else [p.low, p.high] for p in params]
    if math.prod(len(e) for e in ends) > limit:
        return
    for combo in itertools.product(*ends):
        point = {p.name: (int(v) if p.integer else v) for p, v in zip(params, combo)}
        try:
            with_params(base, point)
        except UsageError as e:
            raise UsageError(f"the search space has a combination that is no valid config "
                             f"({', '.join(f'{k}={v}' for k, v in point.items())}): {e}")


def space_of(recipe_file: Path | None) -> tuple[dict, bool]:
    """(the [tune] table of a recipe file, whether it had one); config.TUNE_SPACE otherwise."""
    if recipe_file is not None:
        raw = tomllib.loads(Path(recipe_file).read_text())
        if "tune" in raw:
            if not isinstance(raw["tune"], dict):
                raise UsageError(f"[tune] in {recipe_file} must be a table")
            return raw["tune"], True
    return dict(config.TUNE_SPACE), False


def resolve_settings(table_settings: dict, flags: dict) -> TuneConfig:
    """TuneConfig defaults ← the recipe's [tune] settings ← the command's flags."""
    s = replace(TuneConfig(), **{**table_settings, **{k: v for k, v in flags.items() if v is not None}})
    if s.sampler not in SAMPLERS:
        raise UsageError(f"sampler {s.sampler!r} is not one of: {', '.join(SAMPLERS)}")
    if s.pruner not in PRUNERS:
        raise UsageError(f"pruner {s.pruner!r} is not one of: {', '.join(PRUNERS)}")
    if s.trials < 1 or s.keep < 0 or s.startup_trials < 0 or s.warmup_epochs < 0:
        raise UsageError("trials must be at least 1; keep, startup_trials and warmup_epochs >= 0")
    config.budget_seconds(s.budget)   # a bad duration: one line, exit 2
    return s


# ---- the study -------------------------------------------------------------------------------

def planned_epochs(cfg: Config) -> int:
    """Epochs a full trial runs: the frozen ones (pretrained), then the main phase."""
    from .schedules import sgdr_cycles, sgdr_epochs
    t = cfg.train   # as schedules.run: from scratch, one phase of epochs + freeze_epochs
    frozen, main = (t.freeze_epochs, t.epochs) if cfg.model.pretrained else (0, t.epochs + t.freeze_epochs)
    if t.schedule == "sgdr" and main:
        main = sgdr_epochs(sgdr_cycles(t, main), t.sgdr_cycle_len, t.sgdr_mult)
    return frozen + main


def storage_url(folder: Path, url: str | None) -> str:
    return url or f"sqlite:///{(folder / 'study.db').resolve()}"


def open_study(name: str, url: str, direction: str, sampler, pruner):
    import optuna
    kwargs = {}
    if url.startswith("sqlite"):
        # two workers on one file wait for each other's writes instead of failing at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=3 * HEARTBEAT_S, **kwargs)
            return optuna.create_study(study_name=name, storage=storage, direction=direction,
                                       sampler=sampler, pruner=pruner, load_if_exists=True)
        except (ImportError, ValueError) as e:
            raise UsageError(f"study storage {url}: {e}")
        except Exception as e:  # sqlalchemy's errors: a URL that leads nowhere, or (retried)
            if not type(e).__module__.startswith("sqlalchemy"):   # workers on other machines
                raise                                             # creating the schema at once
            if attempt == 2 or "IntegrityError" not in type(e).__name__:
                raise UsageError(f"study storage {url}: cannot open it ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0]})")
            time.sleep(1 + attempt)


def make_sampler(kind: str, startup: int):
    import optuna
    # Unseeded (time and process): two workers on one study must not propose the same points.
    if kind == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=max(startup, 1))
    return optuna.samplers.RandomSampler()   # grid: its points are enqueued (run_study)


def make_pruner(kind: str, startup: int, warmup: int, max_epochs: int):
    import optuna
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def split_digest(items, root: Path) -> str:
    """A digest of which image is in which split (paths relative to the dataset folder)."""
    rows = sorted(f"{os.path.relpath(p, root)}\t{s}" for p, s in zip(items["path"], items["split"]))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def _epoch_callback(trial, column: str, deadline: float | None, prune: bool):
    """Reports each epoch's figure to the trial and stops the fit when the pruner says so (or
    the study's budget is spent): the fit then ends normally with its best epoch."""
    from fastai.callback.core import Callback, CancelFitException

    class TrialEpochs(Callback):
        order = 64   # after the Recorder, ResultsCSV, KeepBest and the other trackers (<= 63)

        def __init__(self):
            self.step, self.stopped, self.seconds = 0, "", []

        def before_fit(self):
            if hasattr(self.learn, "lr_finder"):   # the LR finder, budget probes
                return
            if self.stopped:   # pruned in the frozen phase: the main phase does not start
                raise CancelFitException()

        def before_epoch(self):
            self.t0 = time.perf_counter()

        def after_epoch(self):
            if hasattr(self.learn, "lr_finder"):
                return
            self.seconds.append(time.perf_counter() - self.t0)
            names = list(self.recorder.metric_names[1:-1])
            value = float(self.recorder.values[-1][names.index(column)])
            if math.isfinite(value):
                trial.report(value, self.step)
            self.step += 1
            if prune and trial.should_prune():
                self.stopped = "pruned"
            elif deadline is not None and time.time() >= deadline:
                self.stopped = "budget"
            if self.stopped:
                raise CancelFitException()
    return TrialEpochs()


def run_study(base: Config, params: list[Param], settings: TuneConfig, folder: Path, name: str,
              url: str | None = None, trials_given: bool = False, started: float | None = None):
    """Run trials until the study holds `settings.trials` (or the grid is done, or the budget is
    spent), then write the leaderboard, plots and best.toml. Returns the Optuna study."""
    import optuna

    from .. import data
    from ..data import samples, splits
    from . import monitor_name

    optuna.logging.set_verbosity(optuna.logging.ERROR)   # our own lines; no tracebacks
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    started = time.time() if started is None else started
    budget = config.budget_seconds(settings.budget)
    deadline = started + budget if budget else None
    folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(folder, url)

    grid = grid_points(params, base.train.seed) if settings.sampler == "grid" else None
    target = settings.trials if trials_given or grid is None else len(grid)
    if grid is not None:
        target = min(target, len(grid))

    # The images, once: every trial at the base size reuses these (other sizes: dataset_for).
    samples.materialise(base.data)
    print(f"study {name}: loading the data once for every trial", flush=True)
    datasets = {(base.data.size, base.data.resize): data.load(base)}
    ds = datasets[(base.data.size, base.data.resize)]
    root = data.dataset_root(base.data)
    digest = split_digest(ds.items, root)
    column = monitor_name(base.train.monitor, ds.multi_label)
    direction = "minimize" if column == "valid_loss" else "maximize"

    sampler = make_sampler(settings.sampler, settings.startup_trials)
    pruner = make_pruner(settings.pruner, settings.startup_trials, settings.warmup_epochs,
                         planned_epochs(base))
    lock = StudyLock(folder)
    lock.acquire()   # two workers creating one SQLite schema at once collide (alembic_version)
    try:
        study = open_study(name, url, direction, sampler, pruner)
        _record_or_check(study, base, params, digest, column, name)
    finally:
        lock.release()
    _write_once(folder / "splits.csv", lambda tmp: splits.write(ds.items, tmp, root))

    def dataset_for(cfg: Config):
        key = (cfg.data.size, cfg.data.resize)
        if key not in datasets:   # a size the space tries: decoded once, same split
            print(f"decoding the images at {key[0]} px ({key[1]}) for the trials that use it", flush=True)
            datasets[key] = data.load(replace(cfg, data=replace(cfg.data, splits_from=str(folder / "splits.csv"))))
        return datasets[key]

    failures_in_row = 0
    while True:
        lock.acquire()
        try:
            optuna.storages.fail_stale_trials(study)   # a killed worker's trial
            _enqueue(study, grid, params)
            counts = _counts(study)
            if counts["counted"] >= target:
                print(f"study {name} holds {counts['counted']} trials (--trials {target}): done", flush=True)
                break
            if grid is not None and counts["waiting"] == 0:
                print(f"study {name}: every grid point has run", flush=True)
                break
            if deadline is not None and time.time() >= deadline:
                print(f"study {name}: the budget ({settings.budget}) is spent", flush=True)
                break
            outcome = {"failed": False}

            def objective(trial):
                lock.release()   # the trial is registered: other workers may start theirs
                try:
                    return _run_trial(trial, base, params, folder, dataset_for, column, deadline,
                                      settings.pruner != "none", counts["counted"] + 1, target)
                except TrialFailed:
                    outcome["failed"] = True
                    raise
            try:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,))
            except KeyboardInterrupt:   # Ctrl-C, SIGTERM: the trial is recorded as failed
                write_outputs(study, base, params, folder, column, settings.keep, plots=False)
                raise
        finally:
            lock.release()
        failures_in_row = failures_in_row + 1 if outcome["failed"] else 0
        write_outputs(study, base, params, folder, column, settings.keep, plots=False)
        if failures_in_row >= 3:
            raise StudyFailed("3 trials in a row failed; stopping (see their lines above)")
    write_outputs(study, base, params, folder, column, settings.keep, plots=True)
    return study


class StudyLock:
    """This machine's workers take turns at counting and starting trials, so --trials N ends
    with N between them (processes on other machines sharing a database URL can overshoot by
    one trial each: a race of milliseconds). Released as soon as a trial is registered."""

    def __init__(self, folder: Path):
        self.path, self.file = folder / ".lock", None

    def acquire(self) -> None:
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


class StudyFailed(Exception):
    """Trial after trial fails: the command stops (exit 1) rather than burn the budget."""


class TrialFailed(Exception):
    """A trial that failed (an error, no finished epoch): recorded, and the study goes on."""


def _run_trial(trial, base: Config, params: list[Param], folder: Path, dataset_for, column: str,
               deadline: float | None, prune: bool, n: int, target: int):
    """One trial: a normal fit in folder/trial-N on the study's images, pruned per epoch."""
    import optuna

    from .. import data, train
    from ..data import splits

    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    point = {p.name: p.suggest(trial) for p in params}
    shown = "  ".join(f"{k}={_fmt(v)}" for k, v in point.items())
    run_dir = folder / f"trial-{trial.number}"
    trial.set_user_attr("folder", str(run_dir))
    print(f"\n=== trial {trial.number} ({n} of {target}): {shown} → {run_dir}", flush=True)
    try:
        cfg = with_params(base, point)
    except UsageError as e:   # a combination the checks could not reach (a range's inside)
        trial.set_user_attr("error", str(e))
        print(f"trial {trial.number}: not a valid config: {e}", flush=True)
        raise TrialFailed(str(e))
    trial.set_user_attr("epochs_planned", planned_epochs(cfg))
    if run_dir.exists():   # left by a deleted study of the same name
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    ds = dataset_for(cfg)
    splits.write(ds.items, run_dir / "splits.csv", data.dataset_root(cfg.data))   # fit writes it only for data it loads
    cb = _epoch_callback(trial, column, deadline, prune)
    t0 = time.perf_counter()
    try:
        result = train.fit(cfg, run_dir, on_prepared=lambda prep: prep.learn.add_cb(cb),
                           started=t0, dataset=ds)
    except KeyboardInterrupt:
        raise
    except UsageError as e:   # the config and data are the user's: the command stops (exit 2)
        trial.set_user_attr("error", str(e))
        raise
    except Exception as e:  # noqa: BLE001 (one trial's error: recorded, the study goes on)
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        print(f"trial {trial.number} failed: {type(e).__name__}: {e}", flush=True)
        raise TrialFailed(str(e))
    seconds = time.perf_counter() - t0
    trial.set_user_attr("seconds", round(seconds, 1))
    trial.set_user_attr("epochs_run", len(cb.seconds))
    trial.set_user_attr("epoch_seconds", round(sum(cb.seconds) / max(len(cb.seconds), 1), 2))
    trial.set_user_attr("best_epoch", result.best_epoch)
    if result.stopped in ("interrupted", "terminated"):
        trial.set_user_attr("stopped", result.stopped)
        raise (train.Terminated() if result.stopped == "terminated" else KeyboardInterrupt())
    if not result.metrics:
        trial.set_user_attr("error", "no epoch finished")
        raise TrialFailed("no epoch finished")
    value = _best_value(run_dir / "results.csv", column, result.best_epoch)
    trial.set_user_attr("value_at_best_epoch", value)
    if cb.stopped:
        trial.set_user_attr("stopped", cb.stopped)
        why = ("pruned: below the pruner's bar" if cb.stopped == "pruned" else "stopped: the study's budget is spent")
        print(f"trial {trial.number} {why} after {len(cb.seconds)} of {planned_epochs(cfg)} epochs "
              f"({column} {value:.4f} at its best epoch), {seconds:.0f} s", flush=True)
        raise optuna.TrialPruned()
    shipped = shipped_value(result.metrics, column)
    trial.set_user_attr("shipped", shipped)
    print(f"trial {trial.number}: {column} {shipped:.4f} as shipped ({_said(result.metrics)}; "
          f"{value:.4f} at epoch {result.best_epoch}), {seconds:.0f} s", flush=True)
    return shipped


def shipped_value(m: dict, column: str) -> float:
    """A finished trial's objective: the monitored figure of the model as the end of fit ships
    it (the size and TTA it chose on validation, fp32; multi-label at its tuned thresholds),
    on the validation split: metrics.json's validation figures (under "valid" when the data
    has a test split, never the test figures). valid_loss: the chosen configuration's log
    loss (infer/choice.py)."""
    if column == "valid_loss":
        return float(m["inference"]["chosen"]["log_loss"])
    valid = m["valid"] if m.get("split") == "test" else m
    return float(valid[column])


def _said(m: dict) -> str:
    c = (m.get("inference") or {}).get("chosen")
    if not c:
        return "as trained"
    return f"{c['size']} px, " + (f"TTA over {c['views']} views" if c["tta"] else "no TTA")


def _best_value(results_csv: Path, column: str, best_epoch: int | None) -> float:
    """The monitored figure of the epoch the run kept (its per-epoch validation figure)."""
    with results_csv.open() as f:
        rows = list(csv.DictReader(f))
    row = next((r for r in rows if int(r["epoch"]) == best_epoch), rows[-1])
    return float(row[column])


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _counts(study) -> dict:
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return {"counted": sum(s in ("COMPLETE", "PRUNED", "RUNNING") for s in states),
            "waiting": states.count("WAITING")}


def _enqueue(study, grid: list[dict] | None, params: list[Param]) -> None:
    """Queue what has to run: the grid points no trial holds yet; otherwise the parameters of
    trials cut off without an error of their own (Ctrl-C, SIGTERM, a killed worker), once."""
    trials = study.get_trials(deepcopy=False)
    if grid is not None:
        held = {_key(t.params) for t in trials if t.state.name in ("COMPLETE", "PRUNED", "RUNNING")}
        held |= {_key(t.params or t.system_attrs.get("fixed_params", {})) for t in trials
                 if t.state.name == "WAITING"}
        for point in grid:
            if _key(point) not in held:
                study.enqueue_trial(point)
                held.add(_key(point))
        return
    retried = {t.user_attrs.get("retry_of") for t in trials}
    names = {p.name for p in params}
    for t in trials:
        if (t.state.name == "FAIL" and "error" not in t.user_attrs and t.number not in retried
                and set(t.params) == names):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _key(point: dict) -> str:
    return json.dumps({k: point[k] for k in sorted(point)}, sort_keys=True, default=str)


def _record_or_check(study, base: Config, params: list[Param], digest: str, column: str, name: str) -> None:
    """The first worker records the study's base config, space and split; every later one
    (a continued study, a second worker) must match them."""
    mine = {"base_config": config.dumps(base), "space": json.dumps([p.__dict__ for p in params],
                                                                   default=str, sort_keys=True),
            "split_digest": digest, "monitor": column}
    have = study.user_attrs
    if not have:
        for k, v in mine.items():
            study.set_user_attr(k, v)
        return
    what = {"base_config": "recipe (with its flags and --set values)", "space": "search space",
            "split_digest": "train/valid split (the data changed?)", "monitor": "train.monitor"}
    for k, v in mine.items():
        if k in have and have[k] != v:
            raise UsageError(f"study {name} was started with another {what[k]}; continue it with "
                             f"the same one, or start a new study with --study NAME")


def _write_once(path: Path, write) -> None:
    if not path.exists():
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, path)


# ---- outputs -----------------------------------------------------------------------------------

def leaderboard(study, params: list[Param], column: str) -> list[dict]:
    """Every trial as a row, best first: finished ones by their figure, then pruned ones, then
    running and failed ones."""
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        a = t.user_attrs
        # finished: the shipped figure (its objective); pruned: its best epoch's, not its last
        value = t.value if t.state.name == "COMPLETE" else a.get("value_at_best_epoch", t.value)
        row = {"trial": t.number, "state": t.state.name.lower(), column: value,
               "best_epoch": a.get("best_epoch"), "epochs": a.get("epochs_run"),
               "planned": a.get("epochs_planned"), "seconds": a.get("seconds"),
               "pruned": t.state.name == "PRUNED", "stopped": a.get("stopped", ""),
               **{p.name: t.params.get(p.name) for p in params},
               "error": a.get("error", ""), "folder": a.get("folder", "")}
        rows.append(row)
    rank = {"complete": 0, "pruned": 1, "running": 2, "fail": 3}
    rows.sort(key=lambda r: (rank.get(r["state"], 4),
                             sign * r[column] if r[column] is not None else math.inf, r["trial"]))
    return rows


def saved_minutes(study) -> tuple[int, float]:
    """(pruned trials, minutes of training they did not spend): each one's remaining epochs at
    its own mean epoch time (an estimate)."""
    n, seconds = 0, 0.0
    for t in study.get_trials(deepcopy=False, states=None):
        a = t.user_attrs
        if t.state.name == "PRUNED" and a.get("epochs_planned") and a.get("epochs_run") is not None:
            n += 1
            seconds += max(a["epochs_planned"] - a["epochs_run"], 0) * a.get("epoch_seconds", 0.0)
    return n, seconds / 60


def best_trial(study):
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def best_recipe_text(study, base: Config, params: list[Param], column: str, name: str) -> str | None:
    """The best finished trial's config as a recipe `clfapp fit` takes (a header says where
    it came from), or None before any trial finished."""
    best = best_trial(study)
    if best is None:
        return None
    cfg = with_params(base, {p.name: best.params[p.name] for p in params if p.name in best.params})
    cfg = replace(cfg, recipe=f"{base.recipe or 'tune'}-tuned")
    shown = ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())
    head = (f"# {cfg.recipe}: the best trial of study {name} (trial {best.number}, validation "
            f"{column} {best.value:.4f}): {shown}\n"
            f"# every other value is the study's base recipe {base.recipe!r}; "
            f"train it with: clfapp fit THIS_FILE\n")
    return head + config.dumps(cfg)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(study, base: Config, params: list[Param], folder: Path, column: str,
                  keep: int = 0, plots: bool = True) -> list[dict]:
    """leaderboard.csv, best.toml, (plots/), and with `keep` the best N trial folders only."""
    rows = leaderboard(study, params, column)
    if rows:
        tmp = folder / f"leaderboard.csv.{os.getpid()}.tmp"
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, folder / "leaderboard.csv")
    text = best_recipe_text(study, base, params, column, study.study_name)
    if text is not None:
        _atomic_text(folder / "best.toml", text)
    if keep:   # rows are best first; running trials' folders are in use
        kept = [r["trial"] for r in rows if r["state"] == "complete"][:keep]
        kept += [r["trial"] for r in rows if r["state"] == "running"]
        for d in folder.glob("trial-*"):
            n = d.name.split("-", 1)[1]
            if n.isdigit() and int(n) not in kept:
                shutil.rmtree(d, ignore_errors=True)
    if plots:
        write_plots(study, folder / "plots")
    return rows


def write_plots(study, folder: Path) -> list[str]:
    """Optuna's matplotlib plots: optimisation history, parameter importances (from 2 finished
    trials whose parameters vary), intermediate values (each trial's epochs: where pruning cut)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("intermediate_values", ovm.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            tmp = folder / f"{name}.{os.getpid()}.tmp.png"
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, folder / f"{name}.png")
            plt.close(fig)
            written.append(name)
        except Exception as e:  # noqa: BLE001 (too few trials for that plot: say so, go on)
            notes.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            plt.close("all")
    if notes:
        print("plots not drawn: " + "; ".join(notes), flush=True)
    return written


def table(rows: list[dict], params: list[Param], column: str, limit: int = 20) -> str:
    """The leaderboard as text: trial, state, figure, epochs, seconds, pruned, parameters."""
    head = ["trial", "state", column, "epochs", "seconds", "pruned"] + [p.name for p in params]
    body = []
    for r in rows[:limit]:
        epochs = f"{r['epochs']}/{r['planned']}" if r["epochs"] is not None else ""
        body.append([str(r["trial"]), r["state"] + (f" ({r['stopped']})" if r["stopped"] and r["stopped"] != "pruned" else ""),
                     f"{r[column]:.4f}" if r[column] is not None else "", epochs,
                     f"{r['seconds']:.0f}" if r["seconds"] is not None else "",
                     "yes" if r["pruned"] else "", *[_fmt(r[p.name]) if r[p.name] is not None else "" for p in params]])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head] + body]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in leaderboard.csv")
    return "\n".join(lines)
