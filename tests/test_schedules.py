"""train.schedule and train.freeze (train/schedules.py): what each actually did to the learning
rates, the momentum and the trainable parameters, read from the optimizer during real fits."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import assert_usage_error, make_folder_dataset, write_recipe

PRETRAINED = "tf_efficientnet_lite0"


def _recorder():
    """A fastai callback that logs, for every fit (phase) of a run: every training batch's LR
    and momentum per parameter group as the optimizer steps with them, which parameters were
    trainable, and the weights at the phase's end (before KeepBest puts the best epoch back)."""
    from fastai.callback.core import Callback

    class PhaseLog(Callback):
        order = 99

        def __init__(self):
            self.phases, self.start = [], None

        def before_fit(self):
            if hasattr(self.learn, "lr_finder"):
                return
            named = dict(self.learn.model.named_parameters())
            if self.start is None:
                self.start = {n: p.detach().clone() for n, p in named.items()}
            self.phases.append(dict(lrs=[], moms=[], end=None,
                                    trainable={n for n, p in named.items() if p.requires_grad}))

        def after_batch(self):
            if self.training and self.phases:
                groups = self.learn.opt.hypers   # fastai's optimizer steps with these dicts
                self.phases[-1]["lrs"].append([g["lr"] for g in groups])
                self.phases[-1]["moms"].append([g["mom"] for g in groups if "mom" in g])

        def after_fit(self):
            if self.phases:
                self.phases[-1]["end"] = {n: p.detach().clone()
                                          for n, p in self.learn.model.named_parameters()}
    return PhaseLog()


def _fit(tmp_path, monkeypatch, pretrained=False, **train):
    """Fit the tiny data with these train keys through train.fit; return (log, model, results)."""
    from clfapp import config
    from clfapp import train as training

    monkeypatch.chdir(tmp_path)
    model = ({"arch": PRETRAINED, "pretrained": True} if pretrained else {})
    recipe = write_recipe(tmp_path / "s.toml", "data/shapes", model=model,
                          train={"bs": 4, **train})
    cfg = config.load(recipe, recipe_name="s")
    folder = tmp_path / "run"
    folder.mkdir()
    log, held = _recorder(), {}

    def hook(prep):
        prep.learn.add_cb(log)
        held["learn"] = prep.learn
    training.fit(cfg, folder, on_prepared=hook)
    return log, held["learn"].model, pd.read_csv(folder / "results.csv")


def _steps(lrs, epochs):
    """Training batches per epoch (the hashed split gives about 24 train images; bs 4)."""
    assert len(lrs) % epochs == 0 and len(lrs) >= 3 * epochs, len(lrs)
    return len(lrs) // epochs


def _head_lrs(phase):
    return [row[-1] for row in phase["lrs"]]


def test_registries_are_the_config_choices():
    from clfapp.config import CHOICES
    from clfapp.train import schedules
    assert set(schedules.SCHEDULES) == set(CHOICES[("train", "schedule")])
    assert set(schedules.FREEZES) == set(CHOICES[("train", "freeze")])


def test_one_cycle_rises_then_falls_and_its_momentum_reaches_the_optimizer(tmp_path, monkeypatch, tiny_data):
    log, _, results = _fit(tmp_path, monkeypatch, epochs=3, lr=1e-2, moms="0.9,0.8,0.9")
    (phase,) = log.phases
    lrs, moms = _head_lrs(phase), [m[-1] for m in phase["moms"]]
    assert len(results) == 3 and len(lrs) == 3 * _steps(lrs, 3)
    top = lrs.index(max(lrs))
    assert 0 < top < len(lrs) - 1
    assert max(lrs) == pytest.approx(1e-2, rel=0.05)
    assert lrs[0] == pytest.approx(1e-2 / 25)                  # from lr/div
    assert lrs[-1] < lrs[0]                                      # towards lr/div_final
    assert all(a <= b for a, b in zip(lrs[:top], lrs[1:top + 1]))          # rises
    assert all(a >= b for a, b in zip(lrs[top:], lrs[top + 1:]))           # then falls
    # momentum (Adam's beta1) runs the other way, through the given range, in the optimizer
    # (fastai's default would be 0.95 / 0.85)
    assert moms[0] == pytest.approx(0.9) and 0.89 < moms[-1] <= 0.9
    assert min(moms) == pytest.approx(0.8, abs=0.005) and moms.index(min(moms)) == top
    assert all(a >= b for a, b in zip(moms[:top], moms[1:top + 1]))
    assert all(a <= b for a, b in zip(moms[top:], moms[top + 1:]))


def test_flat_cos_is_flat_then_decays(tmp_path, monkeypatch, tiny_data):
    log, _, _ = _fit(tmp_path, monkeypatch, epochs=4, lr=1e-2, schedule="flat_cos")
    lrs = _head_lrs(log.phases[0])
    flat = int(0.75 * len(lrs))
    assert lrs[:flat] == pytest.approx([1e-2] * flat)
    tail = lrs[flat:]
    assert tail[0] <= 1e-2 and tail[-1] < 1e-2 / 5           # annealing towards lr/1e5
    assert all(a > b for a, b in zip(tail, tail[1:]))


def test_plateau_cuts_the_lr_by_the_factor_after_patience_epochs(tmp_path, monkeypatch, tiny_data):
    """Validation accuracy over 7 images of these colours reaches 1.0 at once and so cannot
    improve (fastai's tracker wants strictly better): the LR must be cut x factor after every
    `patience` epochs without a new best, exactly where the rule replayed on results.csv says."""
    log, _, results = _fit(tmp_path, monkeypatch, epochs=7, lr=1e-2, schedule="plateau",
                           plateau_monitor="accuracy", plateau_patience=2, plateau_factor=0.5)
    lrs = _head_lrs(log.phases[0])
    n = _steps(lrs, 7)
    per_epoch = [lrs[i * n:(i + 1) * n] for i in range(7)]
    assert all(len(set(e)) == 1 for e in per_epoch)             # a constant LR within each epoch
    assert [e[0] for e in per_epoch] == pytest.approx(list(results["lr"]))
    expected, best, wait, lr = [], -math.inf, 0, 1e-2
    for acc in results["accuracy"]:
        expected.append(lr)
        if acc > best:
            best, wait = acc, 0
        else:
            wait += 1
            if wait >= 2:
                lr, wait = lr * 0.5, 0
    assert list(results["lr"]) == pytest.approx(expected, rel=1e-6)
    assert list(results["lr"][:3]) == pytest.approx([1e-2] * 3)     # never before patience
    assert results["lr"].iloc[-1] <= 1e-2 / 4                        # and it did cut, twice+


@pytest.mark.parametrize("cycles,mult,epochs,restarts", [
    (0, 2, 4, [1]),          # cycles from epochs: 1 + 2 = 3 epochs fit in 4, 1 + 2 + 4 do not
    (3, 1, 5, [1, 2]),       # three equal cycles: 3 epochs whatever train.epochs says
])
def test_sgdr_restarts_at_cycle_boundaries(tmp_path, monkeypatch, tiny_data, cycles, mult, epochs, restarts):
    log, _, results = _fit(tmp_path, monkeypatch, epochs=epochs, lr=1e-2, schedule="sgdr",
                           sgdr_cycles=cycles, sgdr_cycle_len=1, sgdr_mult=mult)
    lrs = _head_lrs(log.phases[0])
    assert len(results) == 3
    n = _steps(lrs, 3)
    jumps = [i for i in range(1, len(lrs)) if lrs[i] > lrs[i - 1]]
    assert jumps == [n * e for e in restarts]                   # back up only at a new cycle
    for i in [0] + jumps:
        assert lrs[i] == pytest.approx(1e-2)
    assert all(lrs[i - 1] < 1e-2 / 5 for i in jumps)            # each cycle annealed first


def _body_layers(model):
    return [(name, m) for name, m in model[0].named_modules()
            if any(True for _ in m.parameters(recurse=False))]


def _is_norm(module) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def _params(model, layers):
    """Parameter names (as model.named_parameters gives them) of these body layers."""
    return {f"0.{name}.{p}" for name, m in layers for p, _ in m.named_parameters(recurse=False)}


def _changed(a, b, names):
    return {n for n in names if not torch.equal(a[n], b[n])}


@pytest.mark.parametrize("train_bn", [False, True])
def test_head_only_never_trains_the_body(tmp_path, monkeypatch, tiny_data, train_bn):
    """The body's weights never move; its norm layers' weights train only with train_bn
    (fastai's default); without it the frozen body gets no gradient at all."""
    log, model, _ = _fit(tmp_path, monkeypatch, pretrained=True, freeze="head_only",
                         epochs=1, freeze_epochs=1, lr=1e-2, train_bn=train_bn)
    layers = _body_layers(model)
    weights = _params(model, [(n, m) for n, m in layers if not _is_norm(m)])
    norms = _params(model, [(n, m) for n, m in layers if _is_norm(m)])
    head = {n for n, _ in model.named_parameters() if n.startswith("1.")}
    assert len(log.phases) == 2 and weights and norms and head
    for phase in log.phases:
        assert phase["trainable"] == head | (norms if train_bn else set())
    assert not _changed(log.start, log.phases[-1]["end"], weights)     # the body never moved
    moved_norms = _changed(log.start, log.phases[-1]["end"], norms)
    assert moved_norms == (norms if train_bn else set())
    assert _changed(log.phases[0]["end"], log.phases[1]["end"], head) == head


def test_last_fraction_unfreezes_the_bodys_last_layers_at_a_lower_lr(tmp_path, monkeypatch, tiny_data):
    log, model, _ = _fit(tmp_path, monkeypatch, pretrained=True, freeze="last_fraction",
                         unfreeze_fraction=0.3, unfreeze_lr_mult=0.1, epochs=1, freeze_epochs=1, lr=1e-2)
    layers = _body_layers(model)
    k = math.ceil(0.3 * len(layers))
    first = _params(model, layers[:-k])                 # norm layers too: train_bn is off
    last = _params(model, layers[-k:])
    head = {n for n, _ in model.named_parameters() if n.startswith("1.")}
    frozen, main = log.phases
    assert frozen["trainable"] == head                      # train_bn off: norms stay too
    assert main["trainable"] == head | last
    assert not _changed(log.start, main["end"], first)                  # the first 70% stayed put
    assert _changed(frozen["end"], main["end"], last) == last            # the last 30% trained
    # the body's group at unfreeze_lr_mult x the head's, every step (after fine_tune's lr/2)
    lrs = main["lrs"]
    assert len(lrs[0]) == 2
    assert all(body == pytest.approx(0.1 * head_lr) for body, head_lr in lrs)
    assert max(h for _, h in lrs) == pytest.approx(1e-2 / 2, rel=0.05)


def test_frozen_then_full_uses_discriminative_lrs(tmp_path, monkeypatch, tiny_data):
    log, model, results = _fit(tmp_path, monkeypatch, pretrained=True, lr_mult=10.0,
                               epochs=1, freeze_epochs=1, lr=1e-2)
    frozen, main = log.phases
    every = {n for n, _ in model.named_parameters()}
    assert frozen["trainable"] == {n for n in every if n.startswith("1.")}   # the head alone
    assert main["trainable"] == every
    assert list(results["phase"]) == ["frozen", "full"]
    body = _params(model, [(n, m) for n, m in _body_layers(model) if not _is_norm(m)])
    assert not _changed(log.start, frozen["end"], body)                 # frozen first
    assert _changed(frozen["end"], main["end"], body) == body           # then all of it
    # fine_tune's second phase: slice(lr/2/lr_mult, lr/2) over the two groups (body, head)
    assert all(b == pytest.approx(h / 10) for b, h in main["lrs"])
    assert max(h for _, h in main["lrs"]) == pytest.approx(1e-2 / 2, rel=0.05)


def test_the_defaults_are_fine_tune_step_for_step(tmp_path, monkeypatch, tiny_data):
    """one_cycle + frozen_then_full on a pretrained body = fastai's fine_tune, as before."""
    from clfapp.models import weights
    from clfapp.train import schedules

    # convert the pip-shipped weights into the cache first: a cache miss builds a model, which
    # draws from the RNG after the seed is set, so the first run would differ from the second
    weights.resolve("timm", PRETRAINED, "")
    runs = []
    for old in (False, True):
        where = tmp_path / str(old)
        make_folder_dataset(where / "data" / "shapes")
        with monkeypatch.context() as mp:
            if old:
                mp.setattr(schedules, "run", lambda learn, t, lr, pretrained, cbs, **_:
                           learn.fine_tune(t.epochs, base_lr=lr, freeze_epochs=t.freeze_epochs, cbs=cbs))
            log, _, results = _fit(where, mp, pretrained=True, epochs=1, freeze_epochs=1, lr=1e-2)
        runs.append((results.drop(columns=["seconds"]), [(p["lrs"], p["moms"]) for p in log.phases]))
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def _layer_names(model, layers) -> list[str]:
    names = {m: n for n, m in model[0].named_modules()}
    return [names[m] for m in layers]


@pytest.mark.parametrize("stride,expected", [
    (2, ["0", "1"]),                         # fastai's body: conv1, bn1, relu, maxpool, layer1..
    (4, ["0", "1"] + [f"4.{b}.{c}" for b in (0, 1) for c in ("conv1", "bn1", "conv2", "bn2")]),
])
def test_early_layers_are_the_stem_and_first_stage_by_output_stride(stride, expected):
    """ResNet18: the stem ends at stride 2 (its max-pool holds no weights), layer1 runs at 4,
    layer2 at 8: what detectron2's FREEZE_AT counts as stages 1 and 2."""
    from clfapp import models
    from clfapp.train.schedules import early_layers

    model, _ = models.build(models.resolve("resnet18", False, 0), 3)
    model.train()
    assert _layer_names(model, early_layers(model, stride)) == expected
    assert model.training                                   # left in the mode it was in


def test_early_layers_keep_a_1x1_branch_inside_and_stop_at_tokens():
    """lite0 at stride 4: the stem, stage 0 and 1 and stage 2's expansion conv (still at 4); a
    vision transformer has no image-shaped maps after its patch embedding: nothing."""
    from clfapp import models
    from clfapp.train.schedules import body_layers, early_layers

    model, _ = models.build(models.resolve("tf_efficientnet_lite0", False, 0), 3)
    names = _layer_names(model, early_layers(model, 4))
    assert names[:2] == ["model.conv_stem", "model.bn1"]
    assert names[-2:] == ["model.blocks.2.0.conv_pw", "model.blocks.2.0.bn1"]
    assert {n.split(".")[2] for n in names[2:]} == {"0", "1", "2"}
    assert len(names) < len(body_layers(model)) // 4
    vit, _ = models.build(models.resolve("vit_tiny_patch16_224", False, 0), 3)
    assert early_layers(vit, 4) == []


def test_frozen_stride_keeps_the_early_layers_frozen_in_the_main_phase(tmp_path, monkeypatch, tiny_data):
    log, model, results = _fit(tmp_path, monkeypatch, pretrained=True, frozen_stride=4,
                               epochs=1, freeze_epochs=1, lr=1e-2)
    assert list(results["phase"]) == ["frozen", "full"]
    from clfapp.train.schedules import early_layers

    early = {f"0.{n}" for n, p in model[0].named_parameters()
             if any(p is q for m in early_layers(model, 4) for q in m.parameters(recurse=False))}
    every = {n for n, _ in model.named_parameters()}
    frozen, main = log.phases
    assert early and main["trainable"] == every - early
    assert not _changed(log.start, main["end"], early)                  # stayed as pretrained
    rest = every - early - {n for n in every if n.startswith("1.")}      # the body's others
    assert _changed(frozen["end"], main["end"], rest) == rest


@pytest.mark.parametrize("setting,fragment", [
    ("train.frozen_stride=-1", "train.frozen_stride must be >= 0"),
    ("train.schedule=platau", "did you mean plateau"),
    ("train.freeze=head_onyl", "did you mean head_only"),
    ("train.moms=0.95,0.85", "three momentums"),
    ("train.freeze=last_fraction", "needs a pretrained body"),
])
def test_bad_schedule_or_freeze_is_one_line_exit_2(cli, tmp_path, monkeypatch, tiny_data, setting, fragment):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "s.toml", "data/shapes")
    assert_usage_error(cli("fit", recipe, "--set", setting), fragment)


def test_moms_only_with_one_cycle(cli, tmp_path, monkeypatch, tiny_data):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "s.toml", "data/shapes")
    assert_usage_error(cli("fit", recipe, "--set", "train.schedule=sgdr", "--set",
                           "train.moms=0.95,0.85,0.95"), "train.moms is for")


# --- explicit epochs win over the recipe's SGDR cycles (issue 24) ------------------------------

def test_epochs_flag_refits_a_recipes_sgdr_cycles(cli, tmp_path, monkeypatch, tiny_data):
    """`clfapp fit cifar10 --epochs 1` trained the recipe's 7 (sgdr_cycles = 3 won, the flag was
    ignored): the epochs asked for are the epochs trained, and one line says how they were split."""
    from clfapp import config
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "s.toml", "data/shapes",
                          train={"epochs": 3, "schedule": "sgdr", "sgdr_cycles": 2,
                                 "sgdr_cycle_len": 1, "sgdr_mult": 2})     # 1 + 2 epochs
    result = cli("fit", recipe, "--epochs", "1", "--name", "one")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "runs" / "one" / "results.csv")) == 1
    assert "sgdr: train.epochs = 1 split into 1 cycle(s) of 1 epochs, in place of the recipe's " \
           "train.sgdr_cycles = 2, sgdr_cycle_len = 1, sgdr_mult = 2 (1, 2 = 3)" in result.stdout
    t = config.from_file(tmp_path / "runs" / "one" / "config.toml").train
    assert (t.epochs, t.sgdr_cycles, t.sgdr_cycle_len, t.sgdr_mult) == (1, 1, 1, 2)


@pytest.mark.parametrize("epochs,cycles,cycle_len", [
    (7, 3, 1),     # the recipe's own total: unchanged
    (14, 3, 2),    # 2, 4, 8: every cycle twice as long
    (3, 2, 1),     # 1, 2: the cycles that fit exactly
    (10, 1, 10),   # no sum of 1-2-4 cycles makes 10: one cosine cycle of all of them
    (1, 1, 1),
])
def test_sgdr_cycles_fitted_to_explicit_epochs(epochs, cycles, cycle_len):
    from clfapp import config
    train = {"schedule": "sgdr", "sgdr_cycles": 3, "sgdr_cycle_len": 1, "sgdr_mult": 2,
             "epochs": epochs, "freeze_epochs": 1}
    cfg = config.load(None, {"train": train, "model": {"pretrained": True}})
    fitted, line = config.fit_sgdr_to_epochs(cfg, {"epochs"})
    t = fitted.train
    assert (t.sgdr_cycles, t.sgdr_cycle_len, t.sgdr_mult, t.epochs) == (cycles, cycle_len, 2, epochs)
    assert config.sgdr_epochs(t.sgdr_cycles, t.sgdr_cycle_len, t.sgdr_mult) == epochs
    assert (line is None) == (epochs == 7)
    # epochs from the recipe alone: the recipe's cycles stand (their total is the run's length)
    assert config.fit_sgdr_to_epochs(cfg, set())[0].train.sgdr_cycles == 3
    # from scratch the frozen epochs join the one phase: the cycles fill epochs + freeze_epochs
    scratch = config.load(None, {"train": train, "model": {"pretrained": False}})
    t = config.fit_sgdr_to_epochs(scratch, {"epochs"})[0].train
    assert config.sgdr_epochs(t.sgdr_cycles, t.sgdr_cycle_len, t.sgdr_mult) == epochs + 1


def test_epochs_and_sgdr_cycles_both_given_and_contradicting_is_one_line(cli, tmp_path, monkeypatch, tiny_data):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "s.toml", "data/shapes", train={"schedule": "sgdr"})
    assert_usage_error(cli("fit", recipe, "--epochs", "2", "--set", "train.sgdr_cycles=3"),
                       "train.epochs = 2", "train.sgdr_cycles", "train.sgdr_cycles=0")
    assert not (tmp_path / "runs").exists()
    # consistent: 3 cycles x2 of 1 epoch = 7 = --epochs 7, nothing to refit
    from clfapp import config
    cfg = config.load(recipe, {"train": {"epochs": 7, "sgdr_cycles": 3}})
    assert config.fit_sgdr_to_epochs(cfg, {"epochs", "sgdr_cycles"})[1] is None
