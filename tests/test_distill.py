"""`clfapp distill`: the distillation loss, the teacher's view of the batch, the cached route,
ensemble teachers, and the run folder it leaves."""
from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_usage_error, make_folder_dataset, write_recipe
from typer.testing import CliRunner

from clfapp.infer import bundle

from clfapp.train import distill

from clfapp.data import images

from clfapp.models import losses
from clfapp.config import LossConfig
from clfapp.errors import UsageError


# --- the loss against hand-computed values -----------------------------------------------------

def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_single_label_loss_matches_a_hand_computed_value():
    s = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0]])      # student logits
    t = np.array([[2.0, 0.0, -1.0], [-0.5, 1.5, 0.5]])      # teacher logits
    y = np.array([0, 2])
    T, alpha = 2.0, 0.3
    ce = -np.mean([math.log(_softmax(s)[i, y[i]]) for i in range(2)])
    p, q = _softmax(t / T), _softmax(s / T)
    kl = np.sum(p * (np.log(p) - np.log(q))) / 2             # batchmean
    expected = alpha * ce + (1 - alpha) * T * T * kl

    loss = distill.DistillationLoss(losses.make(LossConfig()), False, T, alpha)
    loss.teacher = torch.tensor(p, dtype=torch.float32)
    got = loss(torch.tensor(s, dtype=torch.float32), torch.tensor(y))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    loss.teacher = None                                      # validation: the hard loss alone
    assert float(loss(torch.tensor(s, dtype=torch.float32), torch.tensor(y))) == pytest.approx(ce, rel=1e-5)


def test_multi_label_loss_matches_a_hand_computed_value():
    s = np.array([[1.0, -2.0, 0.5], [-0.3, 0.7, 2.0]])
    t = np.array([[3.0, -1.0, -0.5], [0.0, 2.0, 1.0]])
    y = np.array([[1, 0, 0], [0, 1, 1]], dtype=float)
    T, alpha = 2.0, 0.3
    sig = lambda z: 1 / (1 + np.exp(-z))                     # noqa: E731

    def bce(z, target):
        return -(target * np.log(sig(z)) + (1 - target) * np.log(1 - sig(z)))
    p = sig(t / T)
    expected = alpha * bce(s, y).mean() + (1 - alpha) * T * T * bce(s / T, p).mean()

    loss = distill.DistillationLoss(losses.make(LossConfig(), multi_label=True), True, T, alpha)
    loss.teacher = torch.tensor(p, dtype=torch.float32)
    got = loss(torch.tensor(s, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_under_mixup_the_hard_part_is_mixed_and_the_soft_part_kept():
    """fastai's MixUp calls the loss with reduction 'none' once per target set and lerps."""
    from fastai.callback.mixup import MixUp

    torch.manual_seed(0)
    s, p = torch.randn(4, 3), torch.randn(4, 3).softmax(1)
    y, y1 = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    lam = torch.tensor([0.9, 0.6, 0.7, 0.55])
    T, alpha = 2.0, 0.4
    loss = distill.DistillationLoss(losses.make(LossConfig()), False, T, alpha)
    loss.teacher = p
    assert loss.y_int                                        # so MixUp mixes losses, not labels
    mix = MixUp(0.4)
    mix.old_lf, mix.lam, mix.yb1 = loss, lam, (y1,)
    mix.learn = SimpleNamespace(training=True)
    got = mix.lf(s, y)
    ce = lambda target: F.cross_entropy(s, target, reduction="none")    # noqa: E731
    kd = T * T * (p * (p.log() - F.log_softmax(s / T, 1))).sum(1)
    expected = (alpha * torch.lerp(ce(y1), ce(y), lam) + (1 - alpha) * kd).mean()
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert loss.reduction == "mean"                          # put back


# --- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the tiny colour dataset and two tiny teacher runs (train seeds 42 and 7,
    one split): runs/teacher and runs/teacher2."""
    work = tmp_path_factory.mktemp("distill")
    make_folder_dataset(work / "data" / "shapes", n_per_class=10)
    write_recipe(work / "tiny.toml", "data/shapes", train={"epochs": 2})
    from clfapp.cli.main import app
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for name, seed in (("teacher", "42"), ("teacher2", "7")):
            r = CliRunner().invoke(app, ["fit", "tiny.toml", "--name", name, "--seed", seed])
            assert r.exit_code == 0, r.output
    return work


@pytest.fixture
def here(work, monkeypatch):
    monkeypatch.chdir(work)
    return work


def _valid(run) -> set[str]:
    s = pd.read_csv(run / "splits.csv")
    return set(s.loc[s["split"] == "valid", "path"])


def test_distill_a_tiny_run_into_another_arch_and_size(cli, here):
    result = cli("distill", "runs/teacher", "--arch", "resnet10t", "--no-pretrained",
                 "--size", "24", "--epochs", "1", "--set", "train.freeze_epochs=0",
                 "--name", "student")
    assert result.exit_code == 0, result.output
    run = here / "runs" / "student"
    for f in ("config.toml", "splits.csv", "results.csv", "metrics.json", "report.md",
              "model/weights.safetensors", "model/model.json", "distill.json"):
        assert (run / f).is_file(), f
    _, meta = bundle.load(run)
    assert (meta.arch, meta.size, meta.input_size) == ("resnet10t", 24, 24)  # --size: its own test size
    record = json.loads((run / "distill.json").read_text())
    assert record["kind"] == "run" and record["cached"] is False
    assert record["temperature"] == 1.5 and record["alpha"] == 0.5
    assert len(record["teacher_seconds_by_epoch"]) == 1 and record["teacher_seconds_per_epoch"] > 0
    assert _valid(run) == _valid(here / "runs" / "teacher")   # validates on the teacher's images
    rows = pd.read_csv(run / "results.csv")
    assert list(rows.columns)[:4] == ["epoch", "phase", "train_loss", "valid_loss"] and len(rows) == 1
    assert "the teacher cost" in (run / "report.md").read_text()
    pred = cli("predict", run, "data/shapes")
    assert pred.exit_code == 0, pred.output


def test_the_student_starts_from_its_archs_defaults_not_the_teachers_recipe(cli, here):
    """Issue 24 (7): the student takes from the teacher only the data and split, the
    augmentation and the size the teacher predicts at (model.json's test size); its model and
    training keys are config.py's defaults under the flags and --set."""
    import tomllib

    from clfapp import config

    odd = here / "runs" / "teacher-odd"
    shutil.rmtree(odd, ignore_errors=True)
    shutil.copytree(here / "runs" / "teacher", odd)
    cfg = config.from_file(odd / "config.toml")
    tables = config.to_dict(cfg)
    tables["model"].update(cut_blocks=1, head_hidden="16", dropout=0.1, concat_pool=False)
    tables["train"].update(lr=0.05, freeze_epochs=3, unfreeze_fraction=0.5, lr_mult=7.0, wd=0.3,
                           ema=0.9, bs=5)
    tables["loss"].update(name="label_smoothing")
    tables["aug"].update(max_rotate=33.0, flip_vert=True)
    (odd / "config.toml").write_text(config.dumps(config.build(tables)))
    meta = json.loads((odd / "model" / "model.json").read_text())
    meta["inference"]["size"] = 40                       # the size the teacher is shipped at
    (odd / "model" / "model.json").write_text(json.dumps(meta))

    result = cli("distill", odd, "--arch", "test_resnet", "--no-pretrained", "--epochs", "1",
                 "--set", "train.precision=fp32", "--set", "model.dropout=0.25",
                 "--name", "student-defaults")
    assert result.exit_code == 0, result.output
    run = here / "runs" / "student-defaults"
    got = tomllib.loads((run / "config.toml").read_text())
    default = config.to_dict(config.Config())
    for key in ("cut_blocks", "head_hidden", "concat_pool"):
        assert got["model"][key] == default["model"][key], key
    assert got["model"]["dropout"] == 0.25                       # --set
    assert got["model"]["arch"] == "test_resnet" and got["model"]["pretrained"] is False
    for key in ("freeze_epochs", "unfreeze_fraction", "lr_mult", "wd", "ema", "bs"):
        assert got["train"][key] == default["train"][key], key
    assert got["train"]["lr"] == default["train"]["lr"]
    assert got["train"]["epochs"] == 1 and got["train"]["precision"] == "fp32"   # the flags
    assert got["loss"] == default["loss"]
    # from the teacher: its data (and split), its augmentation, its inference size
    assert got["aug"] == tables["aug"]
    for key in ("path", "labels", "size", "resize", "valid_pct", "seed"):
        assert got["data"][key] == tables["data"][key], key
    assert got["data"]["test_size"] == 40
    assert bundle.load(run)[1].input_size == 40
    assert _valid(run) == _valid(odd)


@pytest.mark.parametrize("mixup", [False, True])
def test_the_teacher_sees_the_augmented_batch_the_student_sees(cli, here, monkeypatch, mixup):
    """Every training batch, the teacher's input (un-normalised with its stats, at its 32 px)
    is the student's augmented (and MixUp-mixed) batch (un-normalised, resized from 24 px)."""
    seen = {"student": [], "teacher": []}
    stats = {}
    original = distill.attach

    def spying_attach(prep, teacher, *args, **kwargs):
        cb = original(prep, teacher, *args, **kwargs)
        stats["student"] = prep.arch.mean, prep.arch.std
        stats["teacher"] = teacher.members[0].meta.mean, teacher.members[0].meta.std

        def student_hook(module, inputs):
            if module.training:
                seen["student"].append(inputs[0].detach().float().clone())
        prep.learn.model.register_forward_pre_hook(student_hook)
        teacher.members[0].model.register_forward_pre_hook(
            lambda m, inputs: seen["teacher"].append(inputs[0].detach().float().clone()))
        return cb
    monkeypatch.setattr(distill, "attach", spying_attach)
    extra = ["--set", "aug.mixup=0.4"] if mixup else []
    result = cli("distill", "runs/teacher", "--arch", "test_resnet", "--no-pretrained",
                 "--size", "24", "--epochs", "1", "--name", f"spy{int(mixup)}", *extra)
    assert result.exit_code == 0, result.output
    assert len(seen["teacher"]) == len(seen["student"]) > 0

    def unnorm(x, mean_std):
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
        return x * std + mean
    from clfapp.data import splits as recorded
    train = recorded.read(here / "runs" / "teacher" / "splits.csv").query("split == 'train'")
    raw, _ = images.read_many(train["path"].tolist(), 24, "squish")
    raw = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255
    changed = 0
    for s, t in zip(seen["student"], seen["teacher"]):
        assert t.shape[-1] == 32 and s.shape[-1] == 24
        s01 = unnorm(s, stats["student"])
        expected = F.interpolate(s01, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(unnorm(t, stats["teacher"]), expected, atol=1e-4)
        gap = (s01[:, None] - raw[None]).abs().flatten(2).amax(2).amin(1)  # to the nearest raw image
        changed += int((gap > 0.05).sum())
    assert changed > 0   # the batches were augmented: not the decoded images themselves


def test_the_cached_teacher_gives_the_live_loss_without_augmentation(cli, here, monkeypatch):
    record = []
    forward = distill.DistillationLoss.forward

    def recording(self, logits, targets):
        out = forward(self, logits, targets)
        if self.teacher is not None:
            record.append((self.teacher.detach().clone(), float(out)))
        return out
    monkeypatch.setattr(distill.DistillationLoss, "forward", recording)
    runs = {}
    for route in ("--live-teacher", "--cache-teacher"):
        record.clear()
        result = cli("distill", "runs/teacher", "--arch", "test_resnet", "--no-pretrained",
                     "--epochs", "2", "--set", "aug.enabled=false", route,
                     # NCHW: under channels_last the two routes' losses drift apart in the 4th digit
                     "--set", "train.channels_last=false", "--set", "train.precision=fp32",
                     "--bs", "8",
                     "--name", f"route{route}")
        assert result.exit_code == 0, result.output
        runs[route] = list(record)
    live, cached = runs["--live-teacher"], runs["--cache-teacher"]
    assert len(live) == len(cached) > 2
    for (t_live, l_live), (t_cache, l_cache) in zip(live, cached):
        assert torch.allclose(t_live, t_cache, atol=1e-5)
        assert l_live == pytest.approx(l_cache, rel=1e-4, abs=1e-6)
    record = json.loads((here / "runs" / "route--cache-teacher" / "distill.json").read_text())
    assert record["cached"] is True and record["cache_seconds"] > 0


def test_a_two_member_ensemble_teaches_with_its_weighted_mean(cli, here):
    ens = here / "ens"
    shutil.rmtree(ens, ignore_errors=True)
    for member in ("teacher", "teacher2"):
        shutil.copytree(here / "runs" / member / "model", ens / "members" / member / "model")
    shutil.copy(here / "runs" / "teacher" / "splits.csv", ens / "splits.csv")
    _, meta = bundle.load(here / "runs" / "teacher")
    (ens / "ensemble.json").write_text(json.dumps({
        "format": 1, "kind": "ensemble", "vote": "soft", "weights": [0.75, 0.25],
        "members": ["teacher", "teacher2"], "classes": meta.classes, "multi_label": False,
        "label_delim": " ", "thresholds": None}))

    teacher = distill.load_teacher(ens)
    x = torch.rand(5, 3, 32, 32)
    want = 0
    for w, member in ((0.75, "teacher"), (0.25, "teacher2")):
        model, m = bundle.load(ens / "members" / member)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (m.mean, m.std))
        with torch.no_grad():
            want = want + w * (model((x - mean) / std) / 2.0).softmax(1)
    assert torch.allclose(teacher.probabilities(x, 2.0), want, atol=1e-5)

    no_data = cli("distill", ens, "--arch", "test_resnet")
    assert_usage_error(no_data, "--data")
    result = cli("distill", ens, "--arch", "test_resnet", "--no-pretrained", "--data", "data/shapes",
                 "--epochs", "1", "--bs", "8", "--lr", "1e-2", "--set", "train.freeze_epochs=0",
                 "--set", "train.precision=fp32", "--name", "from-ens")
    assert result.exit_code == 0, result.output
    run = here / "runs" / "from-ens"
    record = json.loads((run / "distill.json").read_text())
    assert record["kind"] == "ensemble"
    assert [m["name"] for m in record["members"]] == ["teacher", "teacher2"]
    assert [m["weight"] for m in record["members"]] == [0.75, 0.25]
    assert _valid(run) == _valid(ens)
    assert bundle.load(run)[1].size == 32   # the first member's size


def test_an_ensemble_made_by_clfapp_teaches_without_data(cli, here):
    """`clfapp ensemble` keeps each member's config.toml: distill takes the data from it."""
    made = cli("ensemble", "runs/teacher", "runs/teacher2", "--name", "made")
    assert made.exit_code == 0, made.output
    ens = here / "runs" / "made"
    assert (ens / "members" / "teacher" / "config.toml").is_file()
    result = cli("distill", ens, "--arch", "test_resnet", "--no-pretrained", "--epochs", "1",
                 "--name", "from-made")
    assert result.exit_code == 0, result.output
    assert _valid(here / "runs" / "from-made") == _valid(ens)


def test_bad_teachers_and_options_exit_2_with_one_line(cli, here, tmp_path):
    assert_usage_error(cli("distill", tmp_path / "nowhere", "--arch", "test_resnet"), "not a folder")
    assert_usage_error(cli("distill", tmp_path, "--arch", "test_resnet"), "no model bundle")
    assert_usage_error(cli("distill", "runs/teacher", "--arch", "test_resnet", "--alpha", "1.5"), "--alpha")
    assert_usage_error(cli("distill", "runs/teacher", "--arch", "test_resnet", "--temperature", "0"),
                       "--temperature")
    assert_usage_error(cli("distill", "runs/teacher"), "--arch")
    assert_usage_error(cli("distill", "runs/teacher", "--arch", "test_resnet", "--no-pretrained",
                           "--cache-teacher", "--set", "aug.mixup=0.4", "--name", "cm"), "MixUp")
    assert not (here / "runs" / "cm").exists()


def test_a_teacher_with_other_classes_is_refused():
    t = distill.Teacher(folder=__import__("pathlib").Path("t"), kind="run", members=[],
                        classes=["a", "b"], multi_label=False)
    with pytest.raises(UsageError, match="classes"):
        t.match(["a", "c"], False)
    with pytest.raises(UsageError, match="multi-label"):
        t.match(["a", "b"], True)
