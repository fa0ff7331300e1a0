"""The one place clfapp names fastai's (and fastprogress's) private internals.

fastai documents its Learner, DataLoader and callbacks; clfapp also needs a few attributes that
are not part of that contract, and an upgrade may rename or drop any of them without notice.
They are named here only, each behind a small function that raises `FastaiChanged` (naming the
attribute and the installed fastai) when it is gone, and tests/test_fastai_compat.py exercises
every one against the installed fastai. pyproject.toml admits only the fastai releases those
tests passed on.

  attribute (where the library defines it)                clfapp feature that needs it
  ---------------------------------------------------------------------------------------------
  Learner._do_fit, Learner._with_events,                  fit --resume, budget re-plans:
  Learner._do_epoch (fastai/learner.py)                   a fit call that starts at epoch k
                                                          (fit_from_epoch; train/schedules.py)
  ProgressCallback.mbar (fastai/callback/progress.py)     the same: the epoch bar restarts at 0
  DataLoader.rng, replaced by DataLoader.randomize        fit --resume and the budget probe:
  (fastai/data/load.py); a DistributedDL's is its         the loaders' shuffle state
  inner loader's (DistributedDL.dl)
                                                          (train/checkpoint.py, train/budget.py)
  DataLoader.__idxs, i.e. _DataLoader__idxs               distill --cache-teacher: the epoch's
  (fastai/data/load.py, DataLoader.__iter__)              shuffled item order (train/distill.py)
  AvgSmoothLoss.count, .val (fastai/learner.py),          fit --resume mid-fit: the smoothed
  the Recorder's smooth_loss                              training loss (train/checkpoint.py)
  EarlyStoppingCallback.wait, ReduceLROnPlateau.wait      fit --resume: early stopping's and
  (fastai/callback/tracker.py)                            plateau's patience counters
  a callback's class name (fastai's own, e.g.             fit --resume: the key a callback's
  EarlyStoppingCallback)                                  state is saved under
  DistributedDL._broadcast (fastai/distributed.py)        fit --processes on CPUs (gloo; fastai's
                                                          moves the index tensor to CUDA)
  DistributedTrainer._wrap_dl, .old_dls                   the same; and unwrapping after a fit
  (fastai/distributed.py)                                 that failed (train/distributed.py)
  fastai.vision.learner._default_meta                     torchvision archs fastai's model_meta
                                                          does not list: their cut and splitter
                                                          (models/__init__.py build)
  TimmBody.needs_pool (fastai/vision/learner.py)          timm archs: whether the head pools
                                                          (models/__init__.py build)
  fastprogress ConsoleProgressBar.__init__'s fields       plain progress lines off a terminal,
  (cols, length, max_len, prefix; fastprogress.py)        without the bar's probe print
                                                          (report/progress.py)

Not here yet: models/optim.py's use of fastai's OptimWrapper (being replaced by fastai's own
optimisers) and the ReduceLROnPlateau subclass in train/schedules.py, whose `wait` is the one
test_tracker_wait checks.

In models/ (the layer below infer, report and train): it imports nothing from clfapp, and
fastai only inside functions (`clfapp --help` stays instant).
"""
from __future__ import annotations

import random
import shutil
from contextlib import contextmanager
from functools import lru_cache


class FastaiChanged(RuntimeError):
    """An installed fastai (or fastprogress) no longer has an internal clfapp relies on."""


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for pkg in ("fastai", "fastprogress"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def changed(attribute: str, feature: str) -> FastaiChanged:
    """The error for an internal that is gone or behaves otherwise: which one, in which
    release, and what in clfapp needs it."""
    return FastaiChanged(f"{_versions()}: {attribute} is gone or changed; clfapp's {feature} "
                         f"needs it (see clfapp/models/compat.py; pyproject.toml lists the fastai "
                         f"releases clfapp was tested on)")


def _require(obj, attribute: str, owner: str, feature: str):
    if not hasattr(obj, attribute):
        raise changed(f"{owner}.{attribute}", feature)
    return getattr(obj, attribute)


# ---- the fit loop ------------------------------------------------------------------------

RESUME = "fit --resume (train/schedules.py starting_at)"


@contextmanager
def fit_from_epoch(learn, epoch: int):
    """Inside this block, `learn`'s next fit call runs its epochs `epoch`..n_epoch-1 only, as
    if the earlier ones had run (fastai's pct_train follows learn.epoch). It replaces the
    Learner's `_do_fit` (the epoch loop inside fit's before/after_fit events) on this instance
    with one that starts later."""
    from fastai.callback.core import CancelEpochException

    for name in ("_do_fit", "_with_events", "_do_epoch"):
        _require(type(learn), name, "Learner", RESUME)

    def do_fit():   # fastai's Learner._do_fit, from `epoch`
        progress = getattr(learn, "progress", None)   # fastai's ProgressCallback, if any
        if progress is not None and learn.create_mbar:
            # its before_fit has made the epoch bar: it must see 0 before a later epoch number
            _require(progress, "mbar", "ProgressCallback", RESUME).update(0)
        for e in range(epoch, learn.n_epoch):
            learn.epoch = e
            learn._with_events(learn._do_epoch, "epoch", CancelEpochException)

    learn._do_fit = do_fit
    try:
        yield
    finally:
        del learn._do_fit


# ---- the data loaders ----------------------------------------------------------------------

SHUFFLE = "fit --resume and the budget probe (the loaders' shuffle state)"


def _shuffling_loader(dl):
    """The DataLoader whose `rng` shuffles `dl`'s items: `dl` itself, or for a wrapper (fastai's
    DistributedDL, whose randomize() is its inner loader's) the loader it wraps. Read from the
    instance's own attributes: a DataLoader hands unknown names on to its dataset."""
    from fastai.data.load import DataLoader
    while "rng" not in vars(dl) and isinstance(vars(dl).get("dl"), DataLoader):
        dl = vars(dl)["dl"]
    if not isinstance(vars(dl).get("rng"), random.Random):
        raise changed("DataLoader.rng (the random.Random it shuffles with)", SHUFFLE)
    return dl


def loader_rng_state(dl):
    """The state of the random.Random a fastai DataLoader shuffles with (DataLoader.rng)."""
    return _shuffling_loader(dl).rng.getstate()


def set_loader_rng_state(dl, state) -> None:
    """Put back what loader_rng_state returned. A new object, not `setstate` on the current
    one: fastai's randomize() replaces DataLoader.rng at every epoch's start (drawing the new
    one's seed from the old), so the object itself is never kept."""
    rng = random.Random()
    rng.setstate(state)
    _shuffling_loader(dl).rng = rng


ORDER = "distill --cache-teacher (train/distill.py)"


def loader_order(dl) -> list:
    """The item positions of the epoch a fastai DataLoader is iterating, in the order it
    yields them (DataLoader.__idxs, set by __iter__ from get_idxs())."""
    order = getattr(dl, "_DataLoader__idxs", None)
    if order is None:
        raise changed("DataLoader.__idxs (_DataLoader__idxs, set while it iterates)", ORDER)
    return order


# ---- callbacks' state ----------------------------------------------------------------------

def callback_state_key(cb) -> str:
    """The name a callback's state is saved under in a checkpoint: its class's name (fastai's
    for its own callbacks, e.g. EarlyStoppingCallback; `cb.name`, snake case without
    "Callback", would make KeepBest and keep_best one key). A checkpoint written before a
    fastai release renamed a class would not find that callback's state."""
    from fastai.callback.core import Callback
    if not isinstance(cb, Callback):
        raise TypeError(f"callback_state_key: {type(cb).__name__} is not a fastai Callback")
    return type(cb).__name__


PATIENCE = "fit --resume (early stopping's and plateau's patience, train/checkpoint.py)"


def tracker_wait(cb):
    """Epochs without improvement so far of early stopping or plateau (their `wait`, set in
    before_fit); None for a tracker without patience (SaveModelCallback, KeepBest) and for one
    that has not started a fit yet."""
    return getattr(cb, "wait", None) if hasattr(cb, "patience") else None


def set_tracker_wait(cb, wait: int) -> None:
    _require(cb, "patience", type(cb).__name__, PATIENCE)
    cb.wait = wait


SMOOTH = "fit --resume (the smoothed training loss, train/checkpoint.py)"


def smooth_loss_state(learn) -> dict:
    """{"count", "val"} of the Recorder's smoothed training loss (fastai's AvgSmoothLoss: an
    exponential average `val` of `count` losses, debiased when read)."""
    sl = learn.recorder.smooth_loss
    return {name: _require(sl, name, "AvgSmoothLoss", SMOOTH) for name in ("count", "val")}


def set_smooth_loss_state(learn, count: int, val) -> None:
    sl = learn.recorder.smooth_loss
    for name in ("count", "val"):
        _require(sl, name, "AvgSmoothLoss", SMOOTH)
    sl.count, sl.val = count, val


# ---- several processes ---------------------------------------------------------------------

PROCESSES = "fit --processes (train/distributed.py)"


@lru_cache(maxsize=None)
def distributed_trainer_base():
    """fastai's DistributedTrainer with two changes: its data loaders broadcast the epoch's
    order on gloo too (fastai's DistributedDL._broadcast moves it to CUDA: nccl only), and
    `restore_loaders()` puts the plain loaders back after a fit that failed (fastai's after_fit,
    which does, runs only when a fit ends or is cancelled)."""
    import torch
    import torch.distributed as dist
    from fastai.distributed import DistributedDL, DistributedTrainer

    _require(DistributedDL, "_broadcast", "DistributedDL", PROCESSES)
    _require(DistributedTrainer, "_wrap_dl", "DistributedTrainer", PROCESSES)

    class GlooDistributedDL(DistributedDL):
        def _broadcast(self, t, rank):
            t = torch.LongTensor(t)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.broadcast(t, rank)
            return t.cpu().tolist()

    class DistributedTrainerBase(DistributedTrainer):
        def _wrap_dl(self, dl):
            return dl if isinstance(dl, DistributedDL) else GlooDistributedDL(dl, device=self.learn.dls.device)

        def restore_loaders(self) -> None:
            old = getattr(self, "old_dls", None)   # set by DistributedTrainer.before_fit
            if old is not None:
                self.learn.dls.loaders = old
                self.old_dls = None

    return DistributedTrainerBase


# ---- model building ------------------------------------------------------------------------

ARCHS = "model building (models/__init__.py build)"


def torchvision_meta(fn) -> dict:
    """fastai's cut and splitter for a torchvision model constructor (its public model_meta), or
    for one it does not list its default (`_default_meta`: cut at the last pooling layer,
    default_split)."""
    import fastai.vision.learner as fl
    return fl.model_meta.get(fn, _require(fl, "_default_meta", "fastai.vision.learner", ARCHS))


def timm_body_needs_pool(body) -> bool:
    """Whether a fastai TimmBody's output is still a feature map the head must pool (its
    `needs_pool`, as fastai's create_timm_model reads it)."""
    return _require(body, "needs_pool", "TimmBody", ARCHS)


# ---- fastprogress --------------------------------------------------------------------------

BARS = "plain progress lines off a terminal (report/progress.py)"
CONSOLE_BAR_FIELDS = ("cols", "length", "max_len", "prefix")
"""What fastprogress's ConsoleProgressBar.__init__ sets before ProgressBar.__init__."""


def init_console_bar_quietly(bar, gen, total=None, display=True, leave=True, parent=None,
                             master=None, txt_len=60) -> None:
    """ConsoleProgressBar.__init__ without its probe print of the fill character: the same
    fields, then ProgressBar.__init__."""
    import fastprogress.fastprogress as fp
    bar.cols = min(shutil.get_terminal_size((100, 40))[0], fp.MAX_COLS)
    bar.length, bar.max_len, bar.prefix = bar.cols - txt_len, 0, ""
    fp.ProgressBar.__init__(bar, gen, total, display, leave, parent, master)
