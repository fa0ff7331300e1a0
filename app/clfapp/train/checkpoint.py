"""A checkpoint at the end of every epoch, and `clfapp fit --resume RUN`.

`RUN/checkpoint.safetensors` holds everything the rest of the fit depends on, as of the end of
the last finished epoch: the weights, the optimiser's state, the random states (python, numpy,
torch, the data loaders' own), the position in the schedule (epochs done; within which fit
call), the rows of results.csv so far, and the state of the callbacks that carry one (KeepBest's
best weights and score, early stopping's and plateau's counters, the budget guard, progressive
resizing's phase, the weight average, the smoothed training loss). Tensors are safetensors;
everything else is one JSON document in the file's header (nothing is pickled: opening a
checkpoint never runs code). It is written to a .tmp file, flushed to disk, then renamed over
the last one (os.replace), so a kill at any instant leaves either the previous epoch's or this
one's, whole. It is removed when the run finishes (kept after Ctrl-C, SIGTERM or an error: those
runs can be resumed).

`clfapp fit --resume RUN` rebuilds the learner from RUN's config.toml and splits.csv (the split
is read, never recomputed), refuses when the config or the data no longer match what the run
started with, loads the checkpoint and trains the remaining epochs: the same epochs, the same
files, and under train.deterministic the same numbers bit for bit, as a run that was never
stopped. fastai's own resume (SaveModelCallback(with_opt=True) + `fit(start_epoch=)`) pickles the
optimiser with torch.save and replays skipped epochs through every callback's after_epoch
(schedules.starting_at says why that is not used).

A callback of clfapp's with state of its own that a resumed run needs is listed in `_SAVE` /
`_RESTORE` below, or defines `checkpoint_state() -> (dict, {name: tensor})` and
`load_checkpoint_state(dict, tensors)`; anything else is assumed to hold none.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..models import compat
from ..errors import UsageError

FILE = "checkpoint.safetensors"
FORMAT = 1
HEADER_KEY = "clfapp.checkpoint"
LOCK = ".fit.lock"
"""Held (flock) by the process training a run: a `--resume` of a run that is still training
is refused. The kernel drops the lock when its process dies, so a killed run resumes."""


# ---- nested states (optimisers, RNGs) as JSON + named tensors ------------------------------

def pack(obj, tensors: dict):
    """`obj` as JSON-able data; each tensor moves to `tensors` (named t0, t1, ...) and is
    referenced by name. Tuples, fastcore Ls and dicts with non-string keys keep their type, and
    tensors their memory layout (channels_last): an optimiser's moments in another layout than
    its weights give the same values through another kernel path, which can round differently
    (measured: fastai's Lamb + Lookahead drifted in the 8th digit after a resume)."""
    import torch
    from fastcore.foundation import L

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        if obj.dim() == 4 and not obj.is_contiguous() and obj.is_contiguous(
                memory_format=torch.channels_last):
            return {"__tensor__": name, "layout": "channels_last"}
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {"__dict__": [[pack(k, tensors), pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, L):
        return {"__L__": [pack(x, tensors) for x in obj]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [pack(x, tensors) for x in obj]
    raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def unpack(obj, tensors: dict):
    """The inverse of `pack`."""
    if isinstance(obj, list):
        return [unpack(x, tensors) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        t = tensors[obj["__tensor__"]]
        if obj.get("layout") == "channels_last":
            import torch
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__dict__" in obj:
        return {_hashable(unpack(k, tensors)): unpack(v, tensors) for k, v in obj["__dict__"]}
    if "__L__" in obj:
        from fastcore.foundation import L
        return L([unpack(x, tensors) for x in obj["__L__"]])
    if "__tuple__" in obj:
        return tuple(unpack(x, tensors) for x in obj["__tuple__"])
    raise ValueError(f"unknown entry in a checkpoint: {sorted(obj)[:3]}")


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


# ---- random states ---------------------------------------------------------------------------

def rng_state(learn) -> dict:
    """Every random state the next epoch draws from: python's, numpy's, torch's (CPU and CUDA)
    and the fastai data loaders' own (they shuffle with a random.Random of their own)."""
    import torch
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(),
             "loaders": [compat.loader_rng_state(dl) for dl in learn.dls.loaders]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(learn, state: dict) -> None:
    import torch
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for dl, s in zip(learn.dls.loaders, state["loaders"]):
        if s is not None:   # None: a checkpoint written before every loader's state was kept
            compat.set_loader_rng_state(dl, s)


# ---- callbacks' state --------------------------------------------------------------------------
# Each saver returns what its callback holds; restoring runs at one of two moments:
#   "before": before training resumes (the state carried across fit calls), so it also holds
#             for a run whose training had ended and only its end is redone;
#   "epoch":  at the start of the first epoch trained again, after every before_fit has reset
#             what it resets ("mid_fit": the state of one fit call is only restored when the
#             checkpoint was taken inside that call, not at its last epoch).

def _keep_best(cb, tensors):
    return {"best": _num(cb.best), "best_epoch": cb.best_epoch, "seen": cb.seen,
            "state": pack(cb.state, tensors)}


def _restore_keep_best(cb, s, tensors, mid_fit):
    cb.best, cb.best_epoch, cb.seen = s["best"], s["best_epoch"], s["seen"]
    cb.state = unpack(s["state"], tensors)


def _tracker(cb, tensors):
    return {"best": _num(cb.best), "wait": compat.tracker_wait(cb)}


def _restore_tracker(cb, s, tensors, mid_fit):
    """fastai's TrackerCallbacks (early stopping, plateau): `best` carries across fit calls
    unless reset_on_fit; `wait` is reset at every fit call (EarlyStoppingCallback.before_fit)."""
    if mid_fit or not cb.reset_on_fit:
        cb.best = s["best"]
    if mid_fit and s["wait"] is not None:
        compat.set_tracker_wait(cb, s["wait"])


def _ema(cb, tensors):
    return {"step": cb.step, "ema": pack(cb.ema.module.state_dict() if cb.ema is not None else None, tensors)}


def _restore_ema(cb, s, tensors, mid_fit):
    cb.step = s["step"]
    if s["ema"] is not None:
        cb.ema.module.load_state_dict(unpack(s["ema"], tensors))


_SAVE = {
    "KeepBest": _keep_best,
    "ResultsCSV": lambda cb, t: {"epoch_total": cb.epoch_total, "step_total": cb.step_total},
    "_BudgetGuard": lambda cb, t: {"done": cb.done, "stopped_after": cb.stopped_after},
    "WeightEMA": _ema,
}
_RESTORE = {
    "KeepBest": ("before", _restore_keep_best),
    "ResultsCSV": ("before", lambda cb, s, t, mid: _set(cb, s)),
    "_BudgetGuard": ("before", lambda cb, s, t, mid: _set(cb, s)),
    "WeightEMA": ("epoch", _restore_ema),   # its average is made in before_fit
}


def _set(cb, s: dict) -> None:
    for k, v in s.items():
        setattr(cb, k, v)


def _num(x):
    return None if x is None else float(x)


def _is_tracker(cb) -> bool:
    from fastai.callback.tracker import TrackerCallback
    return isinstance(cb, TrackerCallback)


def _keyed(cbs) -> dict:
    """{"ClassName#i": callback}: the i-th callback of that class, in fastai's order."""
    seen, out = {}, {}
    for cb in cbs:
        name = compat.callback_state_key(cb)
        i = seen[name] = seen.get(name, -1) + 1
        out[f"{name}#{i}"] = cb
    return out


def callbacks_state(cbs, tensors: dict) -> dict:
    out = {}
    for key, cb in _keyed(cbs).items():
        name = compat.callback_state_key(cb)
        if name in _SAVE:
            out[key] = _SAVE[name](cb, tensors)
        elif hasattr(cb, "checkpoint_state"):
            js, ts = cb.checkpoint_state()
            out[key] = {"json": js, "tensors": pack(ts, tensors)}
        elif _is_tracker(cb):
            out[key] = _tracker(cb, tensors)
    return out


def restore_callbacks(cbs, saved: dict, tensors: dict, when: str, mid_fit: bool) -> None:
    for key, cb in _keyed(cbs).items():
        s, name = saved.get(key), compat.callback_state_key(cb)
        if s is None:
            continue
        if name in _RESTORE:
            moment, fn = _RESTORE[name]
            if moment == when:
                fn(cb, s, tensors, mid_fit)
        elif hasattr(cb, "load_checkpoint_state"):
            if when == "epoch":
                cb.load_checkpoint_state(s["json"], unpack(s["tensors"], tensors))
        elif _is_tracker(cb) and when == "epoch":
            _restore_tracker(cb, s, tensors, mid_fit)


# ---- what a run was started with -----------------------------------------------------------

def _label_column(items) -> str:
    return "labels" if "labels" in items.columns else "label"


def pixel_digests(pixels) -> list[str]:
    """One short digest per decoded image: what training reads, so any change of a file that
    changes its pixels (or of how it decodes) shows."""
    import hashlib
    return [hashlib.blake2b(np.ascontiguousarray(pixels[i]).tobytes(), digest_size=8).hexdigest()
            for i in range(len(pixels))]


def versions() -> dict:
    from . import reproducible
    return reproducible.library_versions()


# ---- one process per run at a time ----------------------------------------------------------

_held: dict = {}


def lock(folder: Path) -> None:
    """Take RUN's lock for this process (again: no-op); UsageError when another process holds
    it. Without fcntl (Windows) there is no lock."""
    key = str(Path(folder).resolve())
    if key in _held:
        return
    try:
        import fcntl
    except ImportError:
        return
    f = open(Path(folder) / LOCK, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(f"{folder} is being trained by another clfapp process right now; let it "
                         f"finish, or stop it first (Ctrl-C keeps it resumable)")
    _held[key] = f


def unlock(folder: Path, remove: bool = False) -> None:
    f = _held.pop(str(Path(folder).resolve()), None)
    if f is not None:
        f.close()
    if remove:
        (Path(folder) / LOCK).unlink(missing_ok=True)


# ---- writing ----------------------------------------------------------------------------------

def write(path: Path, header: dict, tensors: dict) -> None:
    """One safetensors file: the tensors, and `header` as JSON in its metadata; written to a
    .tmp beside it, synced, then renamed over `path` (atomic on POSIX and Windows)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path: Path) -> tuple[dict, dict]:
    """(header, tensors) of a checkpoint; a damaged or foreign file is a UsageError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        header = json.loads(meta[HEADER_KEY])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise UsageError(f"{path} is not a readable clfapp checkpoint ({type(e).__name__}: {e}); "
                         "the run cannot be resumed from it")
    if header.get("format", 0) > FORMAT:
        raise UsageError(f"{path} was written by a newer clfapp (checkpoint format "
                         f"{header.get('format')}); update clfapp to resume it")
    return header, tensors


@lru_cache(maxsize=None)
def _callback_class():
    from fastai.callback.core import Callback

    class Checkpoints(Callback):
        """Writes the checkpoint after every epoch (last among the after_epoch callbacks, so
        it records what they decided); in a resumed run, puts the saved state back."""
        order = 64   # after ResultsCSV, KeepBest, the guards, plateau (62), early stopping (63)

        def __init__(self, folder: Path, cfg, dataset, cbs: list, t0: float, plan=None,
                     resume: Resumed | None = None):
            from .. import config
            # (not `self.cbs`, `self.learn`: a callback reads the Learner's attributes through
            # its own, and fastai sets `learn` to None when a fit ends)
            self.path, self.fit_cbs, self.t0, self.plan = Path(folder) / FILE, cbs, t0, plan
            self.owner = None
            self.results = Path(folder) / "results.csv"
            self.steps = Path(folder) / "steps.csv"
            self.calls, self.done, self.failed = 0, 0, False
            self.ran = 0   # epochs begun (done: those checkpointed)
            from .schedules import phases
            self.total = sum(phases(cfg.train, bool(cfg.model.pretrained)))
            self.folder = Path(folder)
            lock(self.folder)
            self.resume, self.pending = resume, None
            items = dataset.items
            self.started = {
                "config": config.dumps(cfg),
                "items": {"path": items["path"].tolist(),
                          "label": items[_label_column(items)].astype(str).tolist(),
                          "split": items["split"].astype(str).tolist()},
                "pixels": (resume.header["started"]["pixels"] if resume is not None
                           else pixel_digests(dataset.pixels)),
                "versions": versions(), "threads": _threads(),
                "created": resume.header["started"]["created"] if resume is not None
                else time.strftime("%Y-%m-%d %H:%M:%S")}

        def config_changed(self, cfg) -> None:
            """The budget re-planned the main phase (config.toml was rewritten): the
            checkpoints record the config the run now follows, so --resume accepts it."""
            from .. import config
            from .schedules import phases
            self.started["config"] = config.dumps(cfg)
            self.total = sum(phases(cfg.train, bool(cfg.model.pretrained)))

        # -- saving --
        def before_fit(self):
            self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds")
            if self.run:
                self.calls += 1

        def before_epoch(self):
            self.ran += 1
            self._restore_pending()

        def after_epoch(self):
            self.done += 1
            self.save(mid_fit=self.epoch + 1 < self.n_epoch)

        def save(self, mid_fit: bool, training_done: bool = False, cbs=None) -> None:
            """Write the checkpoint; a failure (a full disk) is said once and training goes
            on: the run itself is still good, only its resume point is older."""
            if self.failed:
                return
            try:
                self._write(mid_fit, training_done, self.owner.cbs if cbs is None else cbs)
            except Exception as e:  # noqa: BLE001 (a resume point lost never stops a run)
                self.failed = True
                print(f"warning: the checkpoint could not be written ({type(e).__name__}: {e}); "
                      f"this run can only be resumed from an earlier epoch", flush=True)

        def _write(self, mid_fit, training_done, cbs) -> None:
            tensors: dict = {}
            learn = self.owner
            header = {
                "format": FORMAT, "epochs_done": self.done, "mid_fit": mid_fit,
                "training_done": training_done, "fit_calls": self.calls,
                "seconds": time.perf_counter() - self.t0,
                "budget": _plan_state(self.plan),
                "model": pack(learn.model.state_dict(), tensors),
                "optimizer": pack(learn.opt.state_dict(), tensors) if learn.opt is not None else None,
                "smooth_loss": {k: pack(v, tensors) for k, v in compat.smooth_loss_state(learn).items()},
                "callbacks": callbacks_state(cbs, tensors),
                "rng": pack(rng_state(learn), tensors),
                "results_csv": self.results.read_text() if self.results.exists() else "",
                "steps_csv_bytes": self.steps.stat().st_size if self.steps.exists() else 0,
                "started": self.started, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write(self.path, header, tensors)

        def training_ended(self) -> None:
            """Training is over. Stopped early by a callback (early stopping, the budget, a
            NaN), one last checkpoint says so, with the state as it ended, so a run killed
            while it writes its end only redoes the end; after all its epochs the last one
            already says all that (a resume finds no epoch left)."""
            if self.done == self.total and self.done == self.ran:
                return
            learn = self.owner
            self.save(mid_fit=False, training_done=True, cbs=list(learn.cbs) + [
                cb for cb in self.fit_cbs if not any(cb is c for c in learn.cbs)])

        def release(self) -> None:
            """Training is over, however it ended: another process may resume the run now."""
            unlock(self.folder)

        def remove(self) -> None:
            """The run has finished: nothing is left to resume."""
            for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
                p.unlink(missing_ok=True)
            unlock(self.folder, remove=True)

        # -- resuming --
        def before_run(self, learn) -> int:
            """Put the saved state back that holds across fit calls; returns the epochs done.
            The rest waits for the first epoch trained again (before_epoch)."""
            self.owner = learn
            r = self.resume
            if r is None:
                return 0
            h, ts = r.header, r.tensors
            learn.model.load_state_dict(unpack(h["model"], ts))
            if h["optimizer"] is not None and not h["mid_fit"]:
                # at a phase's end: the next phase starts from it (its freeze policy may clear
                # the moments, as fine_tune's unfreeze does, keeping the hyper-parameters)
                _load_optimizer(learn, unpack(h["optimizer"], ts))
            restore_callbacks(list(learn.cbs) + self.fit_cbs, h["callbacks"], ts, "before", h["mid_fit"])
            self.done = self.ran = h["epochs_done"]
            self.calls = h["fit_calls"] - int(h["mid_fit"])
            _restore_files(self.results, h["results_csv"], self.steps, h["steps_csv_bytes"])
            self.pending = r
            return self.done

        def _restore_pending(self):
            r, self.pending = self.pending, None
            if r is None:
                return
            h, ts = r.header, r.tensors
            learn = self.owner
            if h["mid_fit"]:
                if h["optimizer"] is not None:
                    _load_optimizer(learn, unpack(h["optimizer"], ts))
                compat.set_smooth_loss_state(learn, h["smooth_loss"]["count"],
                                             unpack(h["smooth_loss"]["val"], ts))
            restore_callbacks(learn.cbs, h["callbacks"], ts, "epoch", h["mid_fit"])
            set_rng_state(learn, unpack(h["rng"], ts))   # last: nothing draws after it

    return Checkpoints


def Checkpoints(*args, **kwargs):
    """The fastai callback that checkpoints a fit (made here so this module imports without
    fastai; see _callback_class)."""
    return _callback_class()(*args, **kwargs)


def _load_optimizer(learn, state: dict) -> None:
    """The optimizer's saved state, its tensors on the model's device: the checkpoint holds CPU
    tensors, and fastai's load_state_dict (unlike torch's) keeps them where they are."""
    if learn.opt is None:
        learn.create_opt()
    learn.opt.load_state_dict(on_device(state, next(learn.model.parameters()).device))


def on_device(obj, device):
    """`obj` (an unpacked state: dicts, lists, tuples, Ls) with every tensor moved to `device`."""
    import torch
    from fastcore.foundation import L

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: on_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (L, tuple, list)):
        return type(obj)(on_device(x, device) for x in obj)
    return obj


def _restore_files(results: Path, text: str, steps: Path, steps_bytes: int) -> None:
    """results.csv and steps.csv as they were at the checkpoint: rows of an epoch that ran past
    it (killed before its checkpoint was written) would otherwise appear twice."""
    tmp = results.with_name(results.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, results)
    if steps.exists() and steps.stat().st_size > steps_bytes:
        with open(steps, "r+b") as f:
            f.truncate(steps_bytes)


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _plan_state(plan) -> dict | None:
    """A budget plan (budget.Plan) as data, `used_s` so far instead of its perf_counter start."""
    if plan is None:
        return None
    d = {k: v for k, v in asdict(replace(plan, guard=None)).items() if k not in ("guard", "started")}
    d["used_s"] = time.perf_counter() - plan.started
    return d


def restore_plan(saved: dict, started: float):
    """The budget plan of a resumed run: the budget counts on from what the first command used
    (the time between the kill and the resume is not counted)."""
    from . import budget
    d = dict(saved)
    used = d.pop("used_s")
    d["speeds"] = budget.Speeds(**d["speeds"])
    d["recipe"], d["planned"] = tuple(d["recipe"]), tuple(d["planned"])
    for key in ("first_planned", "ramp"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    p = budget.Plan(started=started - used, **d)
    p.guard = budget.BudgetGuard(p)
    return p


# ---- resuming a run -----------------------------------------------------------------------------

@dataclass
class Resumed:
    """A checkpoint checked against its run folder, with the run's config and data loaded."""
    folder: Path
    cfg: object
    dataset: object
    header: dict
    tensors: dict
    total: int = 0
    """Epochs the run's schedule has in all (schedules.phases)."""

    @property
    def seconds(self) -> float:
        return float(self.header["seconds"])

    @property
    def training_done(self) -> bool:
        """Stopped by a callback, or every epoch done: only the end of fit is left."""
        return bool(self.header["training_done"]) or self.header["epochs_done"] >= self.total


def state_of(folder: Path) -> str:
    """What `--resume` finds in a run folder: "checkpoint" (resumable), "finished" (ended and
    measured, nothing to resume), or "none" (never finished an epoch, or a kind of run that
    writes no checkpoint)."""
    if (folder / FILE).is_file():
        return "checkpoint"
    if (folder / "metrics.json").is_file():
        try:
            stopped = json.loads((folder / "metrics.json").read_text()).get("stopped", "")
        except (OSError, ValueError):
            stopped = "?"
        return "finished" if stopped in ("", "diverged") else "none"
    return "none"


def finished_line(folder: Path) -> str:
    m = json.loads((folder / "metrics.json").read_text())
    how = " (it diverged)" if m.get("stopped") == "diverged" else ""
    return (f"{folder} has finished{how}: best epoch {m.get('best_epoch')}, metrics.json and the "
            f"model are written; nothing to resume")


def open_run(folder: Path) -> Resumed:
    """Read RUN's checkpoint and check that its config and data are what it started with
    (UsageError naming what changed otherwise); the data comes back loaded, split as
    splits.csv says."""
    from .. import config
    if state_of(folder) != "checkpoint":
        if (folder / "metrics.json").is_file():
            raise UsageError(f"{folder} has no checkpoint to resume from (it was made by `clfapp "
                             f"distill` or `fit --full`, or by a clfapp before checkpoints)")
        raise UsageError(f"{folder} has no checkpoint: it stopped before its first epoch ended; "
                         f"start it again (its config is {folder / 'config.toml'})")
    header, tensors = read(folder / FILE)
    _refuse_torch_optimizer_state(header, folder)
    started = header["started"]
    if not (folder / "config.toml").is_file():
        raise UsageError(f"{folder / 'config.toml'} is missing; the run cannot be resumed without it")
    cfg = config.from_file(folder / "config.toml")
    changed = config_changes(started["config"], config.dumps(cfg))
    if changed:
        raise UsageError(f"the config of {folder} changed since the run started: {changed}; "
                         f"--resume continues a run exactly as it started (undo the change in "
                         f"config.toml, or start a new run)")
    dataset = load_data(cfg, folder, started)
    _note_differences(started)
    return Resumed(folder, cfg, dataset, header, tensors)


def _refuse_torch_optimizer_state(header: dict, folder: Path) -> None:
    """A checkpoint written before clfapp's optimizers became fastai's own (models/optim.py)
    holds torch's optimizer state (param_groups, no hypers), which they cannot load: refused
    in one line before anything is restored, rather than failing in the first resumed epoch."""
    opt = header.get("optimizer")
    keys = {k for k, _ in opt.get("__dict__", [])} if isinstance(opt, dict) else set()
    if opt is not None and "hypers" not in keys:
        raise UsageError(f"{folder} was checkpointed by an earlier clfapp whose optimizer state "
                         f"this one cannot load; start the run again (its config is "
                         f"{folder / 'config.toml'})")


def config_changes(before: str, now: str) -> str:
    """"train.epochs 5 → 8, ..." for the keys whose values differ; "" when none does."""
    import tomllib
    a, b = tomllib.loads(before), tomllib.loads(now)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    a, b = flat(a), flat(b)
    diffs = [f"{k} {a.get(k, '(absent)')!r} → {b.get(k, '(absent)')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return ", ".join(diffs[:3]) + more


def load_data(cfg, folder: Path, started: dict):
    """The run's data, split as its splits.csv says; refuses (UsageError) when images were
    added, removed or relabelled, or decode to other pixels, since the run started."""
    from .. import data
    from ..data import images, samples

    samples.materialise(cfg.data)
    rec = started["items"]
    rec_label = dict(zip(rec["path"], rec["label"]))
    scanned = data.scan(cfg.data)
    col = _label_column(scanned)
    now_label = dict(zip(scanned["path"], scanned[col].astype(str)))
    missing = [p for p in rec["path"] if p not in now_label]
    if missing:
        raise UsageError(f"the data of {folder} changed since the run started: {len(missing)} "
                         f"image(s) are gone, e.g. {missing[0]}; --resume needs the same images")
    added = [p for p in scanned["path"] if p not in rec_label and _readable(p, images)]
    if added:
        raise UsageError(f"the data of {folder} changed since the run started: {len(added)} "
                         f"image(s) were added, e.g. {added[0]}; --resume needs the same images "
                         f"(train a new run to use them)")
    relabelled = [p for p in rec["path"] if now_label[p] != rec_label[p]]
    if relabelled:
        p = relabelled[0]
        raise UsageError(f"the data of {folder} changed since the run started: {len(relabelled)} "
                         f"image(s) have another label, e.g. {p} ({rec_label[p]!r} → {now_label[p]!r})")
    ds = data.load(replace(cfg, data=replace(cfg.data, splits_from=str(folder / "splits.csv"))))
    split_now = dict(zip(ds.items["path"], ds.items["split"].astype(str)))
    moved = [p for p, s in zip(rec["path"], rec["split"]) if split_now.get(p) != s]
    if moved or list(ds.items["path"]) != list(rec["path"]):
        raise UsageError(f"the data of {folder} changed since the run started: its images no "
                         f"longer load as splits.csv lists them"
                         + (f" (e.g. {moved[0]})" if moved else ""))
    changed = [p for p, a, b in zip(ds.items["path"], pixel_digests(ds.pixels), started["pixels"])
               if a != b]
    if changed:
        raise UsageError(f"the data of {folder} changed since the run started: {len(changed)} "
                         f"image(s) have other contents, e.g. {changed[0]}; --resume needs the "
                         f"same images")
    return ds


def _readable(path: str, images) -> bool:
    """Whether an image that is not in splits.csv would have been used (an unreadable one was
    left out when the run started too)."""
    try:
        images.read_image(path, 8, "squish")
        return True
    except Exception:  # noqa: BLE001 (anything that stops decoding: left out, as load does)
        return False


def _note_differences(started: dict) -> None:
    """Other library versions or thread counts are no reason to refuse, but resumed epochs may
    then differ in their last digits from an uninterrupted run: said in one line."""
    now = versions()
    diff = [f"{k} {v} → {now.get(k)}" for k, v in started["versions"].items() if now.get(k) != v]
    if diff:
        print(f"note: resumed with other versions than the run started with ({', '.join(diff)}); "
              f"its remaining epochs may differ in the last digits", flush=True)
