"""Every fastai / fastprogress internal clfapp names (clfapp/models/compat.py), tried against the
installed release on a tiny real DataLoader and Learner (16 rows of 3 numbers, a linear model,
a few steps).

A failure names the internal and the installed version: the cue to adapt clfapp/models/compat.py
before widening pyproject.toml's fastai range. Each function is also handed an object without
its internal, and must say which one is missing rather than carry on.
"""
from __future__ import annotations

import random
from importlib.metadata import version
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import fastai
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback  # noqa: F401  (bars on every Learner)
from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner

from clfapp.models import compat
from clfapp.models.compat import FastaiChanged

N, BS = 16, 4


def broke(attribute: str, feature: str) -> str:
    return f"fastai {fastai.__version__}: {attribute} is gone or changed; clfapp's {feature} needs it"


def items():
    """Item k is the pair (a vector holding k, a label): the order a loader yields is visible."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g)
    x[:, 0] = torch.arange(N, dtype=torch.float32)
    return [(x[k], torch.tensor(k % 2)) for k in range(N)]


def loader(shuffle=True):
    return DataLoader(items(), bs=BS, shuffle=shuffle)


def positions(batch) -> list[int]:
    return batch[0][:, 0].long().tolist()


@pytest.fixture
def learn():
    torch.manual_seed(0)
    dls = DataLoaders(loader(), loader(shuffle=False))
    return Learner(dls, nn.Linear(3, 2), loss_func=nn.CrossEntropyLoss())


class Epochs(Callback):
    """Records each epoch number fastai runs, the pct_train it starts at, and the master bar."""
    order = 70

    def __init__(self):
        self.epochs, self.pct, self.bars, self.fits = [], [], [], 0

    def before_fit(self):
        self.fits += 1

    def before_epoch(self):
        self.epochs.append(self.epoch)
        self.bars.append(vars(self.learn.progress).get("mbar") if hasattr(self.learn, "progress") else None)

    def before_train(self):
        self.pct.append(round(float(self.pct_train), 6))


# ---- Learner._do_fit, _with_events, _do_epoch; ProgressCallback.mbar ----------------------

def test_fit_from_epoch_runs_only_the_later_epochs(learn):
    rec = Epochs()
    with compat.fit_from_epoch(learn, 2):
        learn.fit(4, 1e-2, cbs=[rec])
    assert rec.epochs == [2, 3], broke("Learner._do_fit (the epoch loop fit runs)", compat.RESUME)
    assert rec.pct == [0.5, 0.75], broke("Learner.epoch -> pct_train", compat.RESUME)
    assert rec.fits == 1 and len(learn.recorder.values) == 2, \
        broke("Learner._with_events / _do_epoch", compat.RESUME)
    assert "_do_fit" not in vars(learn), "fit_from_epoch left its loop on the Learner"
    learn.fit(2, 1e-2, cbs=[rec])   # fastai's own loop again: every epoch
    assert rec.epochs[2:] == [0, 1]


def test_fit_from_epoch_restarts_the_epoch_bar(learn):
    rec = Epochs()
    with compat.fit_from_epoch(learn, 1):
        learn.fit(2, 1e-2, cbs=[rec])
    assert rec.bars and rec.bars[0] is not None, broke("ProgressCallback.mbar", compat.RESUME)


def test_fit_from_epoch_names_what_is_missing():
    with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*Learner\._do_fit"):
        with compat.fit_from_epoch(SimpleNamespace(), 1):
            pass


# ---- DataLoader.rng ------------------------------------------------------------------------

def epoch_order(dl) -> list[int]:
    return [k for b in dl for k in positions(b)]


def test_loader_rng_state_replays_the_next_epochs_order():
    dl = loader()
    epoch_order(dl)
    state = compat.loader_rng_state(dl)
    first = epoch_order(dl)
    compat.set_loader_rng_state(dl, state)
    assert epoch_order(dl) == first, broke("DataLoader.rng (the shuffle of the next epoch)",
                                           compat.SHUFFLE)
    compat.set_loader_rng_state(dl, random.Random(12345).getstate())
    assert epoch_order(dl) != first, broke("DataLoader.rng (what the shuffle draws from)",
                                           compat.SHUFFLE)


def test_loader_rng_state_of_a_distributed_loader_is_its_inner_loaders():
    from fastai.distributed import DistributedDL
    dl = loader()
    wrapped = DistributedDL(dl)
    assert compat.loader_rng_state(wrapped) == compat.loader_rng_state(dl), \
        broke("DistributedDL.dl (the loader whose rng shuffles)", compat.SHUFFLE)


def test_loader_rng_state_names_what_is_missing():
    for call in (lambda: compat.loader_rng_state(SimpleNamespace()),
                 lambda: compat.set_loader_rng_state(SimpleNamespace(), random.getstate())):
        with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*DataLoader\.rng"):
            call()


# ---- DataLoader.__idxs -----------------------------------------------------------------------

def test_loader_order_is_the_order_batches_come_in():
    dl = loader()
    for epoch in range(2):
        for i, b in enumerate(dl):
            got = list(compat.loader_order(dl))[i * BS:(i + 1) * BS]
            assert got == positions(b), broke("DataLoader.__idxs (_DataLoader__idxs)", compat.ORDER)
    assert sorted(compat.loader_order(dl)) == list(range(N))


def test_loader_order_names_what_is_missing():
    with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*_DataLoader__idxs"):
        compat.loader_order(loader())   # not iterated yet: no order


# ---- callbacks' state keys, tracker patience, smoothed loss --------------------------------

# fastai callbacks whose state clfapp's checkpoints save, by the class name they are saved under
SAVED_BY_NAME = {"EarlyStoppingCallback": "fastai.callback.tracker"}


@pytest.mark.parametrize("name,module", SAVED_BY_NAME.items())
def test_callback_state_keys_are_fastais_class_names(name, module):
    import importlib
    cls = getattr(importlib.import_module(module), name, None)
    assert cls is not None, (f"fastai {fastai.__version__}: {module}.{name} is gone; checkpoints "
                             f"written before keep its state under that name ({compat.PATIENCE})")
    assert compat.callback_state_key(cls()) == name


def test_callback_state_key_refuses_what_is_no_callback():
    with pytest.raises(TypeError, match="SimpleNamespace is not a fastai Callback"):
        compat.callback_state_key(SimpleNamespace())


@pytest.mark.parametrize("tracker", [EarlyStoppingCallback, ReduceLROnPlateau])
def test_tracker_wait_counts_epochs_without_improvement(learn, tracker):
    cb = tracker(patience=10)
    learn.fit(3, 0.0, cbs=[cb])   # lr 0: the loss of epoch 0 is never beaten
    assert compat.tracker_wait(cb) == 2, broke(f"{tracker.__name__}.wait", compat.PATIENCE)


def test_set_tracker_wait_is_what_early_stopping_counts_on(learn):
    es = EarlyStoppingCallback(patience=3, reset_on_fit=False)

    class Restore(Callback):   # as train/checkpoint.py does, at the first epoch trained again
        def before_epoch(self):
            if self.epoch == 0:
                es.best = -float("inf")   # nothing beats it
                compat.set_tracker_wait(es, 2)

    learn.fit(5, 0.0, cbs=[es, Restore()])
    assert len(learn.recorder.values) == 1, broke("EarlyStoppingCallback.wait", compat.PATIENCE)


def test_tracker_wait_without_patience_and_its_error():
    assert compat.tracker_wait(SaveModelCallback()) is None
    with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*SimpleNamespace\.patience"):
        compat.set_tracker_wait(SimpleNamespace(), 1)


def test_smooth_loss_state_round_trips(learn):
    learn.fit(1, 1e-2)
    state = compat.smooth_loss_state(learn)
    assert state["count"] == N // BS and torch.is_tensor(state["val"]), \
        broke("AvgSmoothLoss.count / .val", compat.SMOOTH)
    compat.set_smooth_loss_state(learn, 5, torch.tensor(2.0))
    assert float(learn.recorder.smooth_loss.value) == pytest.approx(2.0 / (1 - 0.98 ** 5)), \
        broke("AvgSmoothLoss.count / .val (its debiased value)", compat.SMOOTH)


def test_smooth_loss_state_names_what_is_missing():
    bare = SimpleNamespace(recorder=SimpleNamespace(smooth_loss=SimpleNamespace()))
    for call in (lambda: compat.smooth_loss_state(bare),
                 lambda: compat.set_smooth_loss_state(bare, 1, torch.tensor(0.0))):
        with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*AvgSmoothLoss\.count"):
            call()


# ---- DistributedDL._broadcast, DistributedTrainer._wrap_dl / old_dls ------------------------

@pytest.fixture
def gloo(tmp_path, monkeypatch):
    """A process group of one (gloo), for DistributedDL's broadcast."""
    import torch.distributed as dist
    monkeypatch.setenv("WORLD_SIZE", "1")   # fastai's num_distrib reads it (unset: 0)
    monkeypatch.setenv("RANK", "0")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_distributed_loaders_broadcast_through_ours(learn, gloo):
    base = compat.distributed_trainer_base()
    trainer = base(sync_bn=False, cpu=True)
    trainer.learn = learn
    plain = list(learn.dls.loaders)
    wrap = broke("DistributedTrainer._wrap_dl (called by before_fit)", compat.PROCESSES)
    try:
        trainer.before_fit()   # fastai's: keeps the plain loaders, wraps them with _wrap_dl
    except Exception as e:  # noqa: BLE001 (any failure here is that hook's)
        pytest.fail(f"{wrap}: {type(e).__name__}: {e}")
    try:
        wrapped = learn.dls.loaders
        assert all(type(d).__name__ == "GlooDistributedDL" for d in wrapped), wrap
        assert all(a is b for a, b in zip(trainer.old_dls, plain)), \
            broke("DistributedTrainer.old_dls", compat.PROCESSES)
        calls = []
        train = wrapped[0]
        ours = train._broadcast
        train._broadcast = lambda t, rank: calls.append(rank) or ours(t, rank)
        broadcast = broke("DistributedDL._broadcast (called by get_idxs)", compat.PROCESSES)
        try:
            seen = sorted(k for b in train for k in positions(b))
        except Exception as e:  # noqa: BLE001 (fastai's own broadcast needs CUDA)
            pytest.fail(f"{broadcast}: {type(e).__name__}: {e}")
        assert calls == [0], broadcast
        assert seen == list(range(N))
    finally:
        trainer.restore_loaders()
    assert all(a is b for a, b in zip(learn.dls.loaders, plain)) and trainer.old_dls is None


def test_distributed_trainer_base_names_what_is_missing(monkeypatch):
    from fastai.distributed import DistributedDL
    monkeypatch.delattr(DistributedDL, "_broadcast")
    compat.distributed_trainer_base.cache_clear()
    try:
        with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*DistributedDL\._broadcast"):
            compat.distributed_trainer_base()
    finally:
        compat.distributed_trainer_base.cache_clear()


# ---- fastai.vision.learner._default_meta, TimmBody.needs_pool --------------------------------

def test_torchvision_meta_listed_and_default():
    import torchvision
    from fastai.vision.learner import default_split
    listed = compat.torchvision_meta(torchvision.models.resnet18)
    assert listed["cut"] == -2 and callable(listed["split"])
    unlisted = compat.torchvision_meta(lambda **kw: None)
    assert unlisted.get("cut", "gone") is None and unlisted.get("split") is default_split, \
        broke("fastai.vision.learner._default_meta (cut None, default_split)", compat.ARCHS)


def test_torchvision_meta_names_what_is_missing(monkeypatch):
    import fastai.vision.learner as fl
    monkeypatch.delattr(fl, "_default_meta")
    with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*learner\._default_meta"):
        compat.torchvision_meta(lambda **kw: None)


def test_timm_body_needs_pool_says_whether_its_output_is_a_feature_map():
    import timm
    from fastai.vision.learner import TimmBody
    net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    body = TimmBody(net, False, None, 3)
    with torch.no_grad():
        out = body.eval()(torch.zeros(1, 3, 32, 32))
    assert compat.timm_body_needs_pool(body) is (out.dim() == 4), \
        broke("TimmBody.needs_pool", compat.ARCHS)
    with pytest.raises(FastaiChanged, match=rf"fastai {fastai.__version__}.*TimmBody\.needs_pool"):
        compat.timm_body_needs_pool(nn.Linear(1, 1))


# ---- fastprogress ConsoleProgressBar.__init__ ------------------------------------------------

def test_quiet_console_bar_sets_what_fastprogress_sets(monkeypatch, capsys):
    import fastprogress.fastprogress as fp
    from clfapp.report import progress
    patched = fp.ConsoleProgressBar   # clfapp may have patched it (report/progress.py)

    class cls(patched):   # fastprogress's own methods
        __init__ = progress._ORIGINAL.get("init", patched.__init__)
        on_update = progress._ORIGINAL.get("on_update", patched.on_update)

    monkeypatch.setattr(fp, "NO_BAR", False)
    real = cls(range(5))
    ours = cls.__new__(cls)
    compat.init_console_bar_quietly(ours, range(5))
    fastprogress = f"fastprogress {version('fastprogress')}"
    missing = set(vars(real)) - set(vars(ours))
    assert not missing, (f"{fastprogress}: ConsoleProgressBar.__init__ now also sets {sorted(missing)}; "
                         f"clfapp's {compat.BARS} must set them too (compat.init_console_bar_quietly)")
    assert set(compat.CONSOLE_BAR_FIELDS) <= set(vars(real)), \
        f"{fastprogress}: ConsoleProgressBar no longer sets {compat.CONSOLE_BAR_FIELDS}; {compat.BARS}"
    capsys.readouterr()
    monkeypatch.setattr(fp, "NO_BAR", True)
    quiet = cls.__new__(cls)
    compat.init_console_bar_quietly(quiet, range(5))
    assert list(quiet) == list(range(5))   # fastprogress's own methods run on those fields
    assert quiet.max_len > 0 and cls.fill not in capsys.readouterr().out   # no probe print


# ---- public names clfapp keys on (not private, but a rename would silently change fits) -----

def test_lr_finder_and_get_preds_show_on_the_learner(learn):
    """Callbacks tell the LR finder's and get_preds's passes from training by the attributes
    fastai's LRFinder and GatherPredsCallback put on the Learner (models/callbacks.py,
    train/checkpoint.py, budget.py, distill.py, progressive.py, tune.py)."""
    from fastai.callback.schedule import LRFinder  # noqa: F401  (adds Learner.lr_find)
    seen = []

    class Look(Callback):
        def before_fit(self):
            seen.append((hasattr(self.learn, "lr_finder"), hasattr(self, "gather_preds")))

    learn.add_cb(Look())
    learn.lr_find(num_it=3, show_plot=False, suggest_funcs=())
    learn.get_preds(dl=learn.dls.valid)
    learn.fit(1, 1e-2)
    assert seen == [(True, False), (False, True), (False, False)], \
        f"fastai {fastai.__version__}: learn.lr_finder / gather_preds no longer mark those passes"
