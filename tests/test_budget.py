"""`fit --budget`: parsing train.budget, planning epochs from measured speeds, and real tiny fits
that end within their budget with the best epoch kept (train/budget.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from clfapp import config
from clfapp.errors import UsageError
from clfapp.train import budget, schedules

from conftest import assert_usage_error, make_folder_dataset, write_recipe


# ---- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("900", 900), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2h", 7200), ("1m30s", 90),
    (" 15M ", 900), ("2.5", 2.5), ("0.5m", 30), ("", None)])
def test_budget_seconds(text, seconds):
    assert config.budget_seconds(text) == seconds


@pytest.mark.parametrize("text", ["15x", "0", "-5", "-3m", "m", "1h30", "15 minutes", "nan", "inf"])
def test_budget_seconds_refuses(text):
    with pytest.raises(UsageError, match="train.budget"):
        config.budget_seconds(text)


def test_budget_round_trips_through_config_toml(tmp_path):
    cfg = config.load(None, {"train": {"budget": "1h30m"}})
    assert cfg.train.budget == "1h30m"
    (tmp_path / "c.toml").write_text(config.dumps(cfg))
    assert config.from_file(tmp_path / "c.toml") == cfg


@pytest.mark.parametrize("args", [["--budget", "15x"], ["--budget", "0"], ["--budget", "-1m"],
                                  ["--set", "train.budget=soon"]])
def test_bad_budget_is_a_usage_error(cli, tiny_recipe, monkeypatch, args):
    monkeypatch.chdir(tiny_recipe.parent)
    result = cli("fit", tiny_recipe, *args, "--name", "bad")
    assert_usage_error(result, "train.budget", "15m")
    assert not Path("runs/bad").exists()


def test_budget_with_full_is_refused(cli, tiny_recipe, monkeypatch):
    monkeypatch.chdir(tiny_recipe.parent)
    assert_usage_error(cli("fit", tiny_recipe, "--budget", "10m", "--full"), "--full")


# ---- planning (pure) -------------------------------------------------------------------------

def test_recipe_epochs_kept_when_they_fit():
    assert budget.plan_epochs(1, 5, 10, 20, available_s=110) == (1, 5)     # exactly fits
    assert budget.plan_epochs(1, 5, 10, 20, available_s=10_000) == (1, 5)  # a ceiling, no more
    assert budget.plan_epochs(0, 8, 0, 3, available_s=24) == (0, 8)


def test_planned_epochs_from_speeds():
    # 10 s per frozen epoch, 20 s per full one, 150 s left: 1 + 7 (10 + 140)
    assert budget.plan_epochs(1, 9, 10, 20, available_s=150) == (1, 7)
    assert budget.plan_epochs(1, 9, 10, 20, available_s=149) == (1, 6)
    # from scratch: one phase
    assert budget.plan_epochs(0, 50, 0, 2.5, available_s=20) == (0, 8)


def test_frozen_to_main_ratio_kept():
    assert budget.plan_epochs(3, 9, 10, 10, available_s=80) == (2, 6)
    assert budget.plan_epochs(2, 8, 10, 10, available_s=50) == (1, 4)
    f, m = budget.plan_epochs(5, 20, 4, 8, available_s=100)
    assert (f, m) == (3, 11) and 4 * f + 8 * m <= 100   # 5:20 ≈ 3:11
    # the frozen phase never drops to 0 while the recipe has one
    assert budget.plan_epochs(1, 30, 5, 5, available_s=15)[0] == 1


def test_smallest_plans_and_nothing_fits():
    assert budget.plan_epochs(1, 9, 10, 20, available_s=12) == (1, 0)   # the head's phase alone
    assert budget.plan_epochs(1, 9, 10, 20, available_s=9) is None
    assert budget.plan_epochs(0, 5, 0, 20, available_s=19) is None
    assert budget.plan_epochs(4, 0, 10, 0, available_s=25) == (2, 0)     # only a frozen phase
    assert budget.smallest_plan(1, 9) == (1, 0) and budget.smallest_plan(0, 9) == (0, 1)


def test_sgdr_plans_whole_cycles():
    t = config.TrainConfig(schedule="sgdr", sgdr_cycle_len=1, sgdr_mult=2)   # cycles 1, 2, 4, 8

    def effective(m):
        return schedules.sgdr_epochs(schedules.sgdr_cycles(t, m), 1, 2)
    f, m = budget.plan_epochs(0, 15, 0, 1.0, available_s=10, effective=effective)
    assert effective(m) == 7    # 3 cycles: 4 would be 15 epochs


def test_should_stop_and_durations():
    assert budget.should_stop(now=100, next_epoch_s=10, reserve_s=5, deadline=114)
    assert not budget.should_stop(now=100, next_epoch_s=10, reserve_s=5, deadline=115)
    assert budget.fmt_duration(820) == "13m40s" and budget.fmt_duration(45.2) == "45s"
    assert budget.fmt_duration(5400) == "1h30m" and budget.fmt_duration(0) == "0s"
    assert budget.reserve_seconds(0.01, 100) == pytest.approx(budget.END_FIXED_S + 1.5)
    # with TTA over 8 views the end sees every image 8 times
    assert budget.reserve_seconds(0.01, 100, views=8) == pytest.approx(budget.END_FIXED_S + 8.5)


def test_per_batch_leaves_the_warm_up_batches_out():
    """The slow first batches (allocations, the loader filling its queue) are not the speed."""
    warm = budget.WARMUP_BATCHES
    slow = [0.0] + [5.0 * (i + 1) for i in range(warm)]          # warm-up batches of 5 s each
    stamps = slow + [slow[-1] + 1.0 * (i + 1) for i in range(budget.TIMED_BATCHES)]
    steady, extra = budget._per_batch(stamps)
    assert steady == pytest.approx(1.0)
    assert extra == pytest.approx(4.0)                             # the first batch's excess
    # too few batches to leave any out (a tiny dataset): the mean over all of them
    assert budget._per_batch([0.0, 2.0, 3.0])[0] == pytest.approx(1.5)


def _plan(planned=(1, 2), recipe=(1, 8), main_epoch_s=10.0, budget_s=100.0, reserve_s=5.0):
    return budget.Plan("100s", budget_s, started=0.0, speeds=budget.Speeds(1, 1, 1), recipe=recipe,
                       planned=planned, frozen_epoch_s=50.0, main_epoch_s=main_epoch_s,
                       spent_s=0.0, reserve_s=reserve_s, pretrained=True)


def test_replan_main_when_the_frozen_phase_ran_late():
    # planned 1+6 (50 s frozen, 10 s main epochs x 1.1, 5 s reserve, 100 s budget): the frozen
    # phase ended at 60 s, not 50: 35 s left, 3 epochs fit
    p = _plan(planned=(1, 6), recipe=(1, 8))
    assert p.replan_main(now=60.0, sgdr=False) == 3
    assert p.planned == (1, 3) and p.first_planned == (1, 6)
    assert p.record(0)["first_planned"] == "1+6" and p.record(0)["planned"] == "1+3"
    assert "until the frozen phase ran late" in budget.report_line(p.record(4))
    # early or on time: the plan stands (never more: the main phase's speed is an estimate)
    p = _plan(planned=(1, 2))
    assert p.replan_main(now=20.0, sgdr=False) is None and p.planned == (1, 2)
    assert p.first_planned is None and "ran late" not in budget.report_line(p.record(3))
    assert _plan(planned=(1, 3)).replan_main(now=50.0, sgdr=False) is None
    # not even one epoch fits (the guard stops the fit), sgdr's cycles: the plan stands
    assert _plan(planned=(1, 6)).replan_main(now=90.0, sgdr=False) is None
    assert _plan(planned=(1, 6)).replan_main(now=60.0, sgdr=True) is None


def test_ramp_batch_seconds_keeps_the_fixed_cost():
    """A batch's cost is a fixed part plus a part proportional to its pixels, both read off
    the two timed sizes."""
    # 1.0 s at full size, 0.6 s at 0.25 of its pixels: 0.4667 fixed + 0.5333 per full image
    assert budget.ramp_batch_seconds(1.0, 0.6, 0.25, 0.5) == pytest.approx(0.4667 + 0.5333 * 0.5, abs=1e-3)
    # all proportional: the pixel share alone
    assert budget.ramp_batch_seconds(1.0, 0.25, 0.25, 0.5) == pytest.approx(0.5)
    # noise (the small batch timed dearer): the full size's seconds, never more
    assert budget.ramp_batch_seconds(1.0, 1.2, 0.25, 0.5) == pytest.approx(1.0)
    # never below the all-proportional estimate (a small batch timed too cheap)
    assert budget.ramp_batch_seconds(1.0, 0.05, 0.25, 0.5) == pytest.approx(0.5)
    assert budget.ramp_batch_seconds(1.0, 0.3, 1.0, 1.0) == 1.0   # no ramp


def test_the_plan_line_shows_both_timed_sizes():
    p = _plan()
    p.speeds, p.ramp = budget.Speeds(0.66, 0.1, 0.5, 0.0, [0.52, 1.1]), (128, 0.625)
    assert "0.66 s/batch measured (0.5 frozen) over the size ramp (0.52 at 80 px, 1.1 at 128 px)" in p.line()
    p.ramp = None
    assert "ramp" not in p.line()


def test_epoch_estimates_follow_the_progressive_ramp():
    """With progressive resizing the guard must not predict the next, larger epoch from the
    last, smaller one: each epoch's estimate grows along the ramp and they average the phase's."""
    p = _plan(planned=(1, 4), main_epoch_s=100.0)
    p.valid_epoch_s, p.ramp = 10.0, (128, 0.625)
    main = [p.epoch_s(i) for i in range(1, 5)]
    assert main == sorted(main) and main[0] < 80 < 110 < main[-1]
    assert sum(main) / 4 == pytest.approx(100.0, rel=0.02)
    assert p.epoch_s(0) == pytest.approx(50.0)    # a phase of one epoch is its whole ramp
    p.ramp = None
    assert [p.epoch_s(i) for i in range(5)] == [50.0] + [100.0] * 4


# ---- real tiny fits --------------------------------------------------------------------------

@pytest.fixture
def work(tmp_path, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _timed(cli, *args):
    t0 = time.perf_counter()
    result = cli(*args)
    return result, time.perf_counter() - t0


def _check_best_kept(run: Path) -> tuple[dict, pd.DataFrame]:
    """metrics.json's best epoch is results.csv's best row (first maximum of accuracy), and
    the saved figures are that epoch's."""
    m = json.loads((run / "metrics.json").read_text())
    results = pd.read_csv(run / "results.csv")
    assert m["best_epoch"] == int(results["accuracy"].idxmax())
    assert m["accuracy"] == pytest.approx(results["accuracy"].iloc[m["best_epoch"]], abs=1e-6)
    return m, results


@pytest.mark.slow  # wall-clock budget: timing-sensitive
def test_fit_fills_a_tiny_budget_and_ends_within_it(cli, work):
    write_recipe(work / "tiny.toml", "data/shapes", train={"epochs": 1000})
    result, wall = _timed(cli, "fit", "tiny.toml", "--budget", "25s", "--name", "b")
    assert result.exit_code == 0, result.output
    assert wall < 25, f"the command took {wall:.1f} s with a 25 s budget"
    run = Path("runs/b")
    m, results = _check_best_kept(run)
    b = m["budget"]
    assert b["budget"] == "25s" and b["budget_s"] == 25 and b["recipe_epochs"] == "1000"
    assert 1 <= b["planned_epochs"] < 1000 and b["measured_s_per_batch"] > 0
    assert b["epochs_run"] == len(results) and b["used_s"] <= 25
    assert b["stopped_by_budget"] == (b["epochs_run"] < b["planned_epochs"])
    # the one-cycle was planned for the epochs that fit, and the config says so
    assert config.from_file(run / "config.toml").train.epochs == b["planned_epochs"]
    assert "budget 25s: " in result.output and "planned" in result.output
    assert "Budget 25s" in (run / "report.md").read_text()


def test_recipe_epochs_kept_and_the_measurement_leaves_no_trace(cli, work, trained_run):
    """A budget the recipe fits in changes nothing: same epochs, same losses as the session's
    run of the same recipe without a budget (the timed batches are undone)."""
    write_recipe(work / "tiny.toml", "data/shapes", train={"epochs": 2})
    result = cli("fit", "tiny.toml", "--budget", "10m", "--name", "kept")
    assert result.exit_code == 0, result.output
    m, results = _check_best_kept(Path("runs/kept"))
    assert m["budget"]["planned"] == m["budget"]["recipe_epochs"] == "2"
    assert not m["budget"]["stopped_by_budget"] and len(results) == 2
    plain = pd.read_csv(trained_run[1] / "results.csv")
    cols = ["train_loss", "valid_loss", "accuracy"]
    assert results[cols].to_numpy() == pytest.approx(plain[cols].to_numpy(), rel=1e-5)


def _underestimate(monkeypatch):
    """Make the measurement see a far faster machine: the plan keeps every epoch the recipe
    asks for, so only the guard can keep the run within its budget (speed drift)."""
    monkeypatch.setattr(budget, "measure", lambda *a, **k: budget.Speeds(1e-5, 1e-5, 1e-5, 0.0))


@pytest.mark.slow  # wall-clock budget: timing-sensitive
def test_guard_stops_when_the_speed_was_misjudged(cli, work, monkeypatch):
    _underestimate(monkeypatch)
    write_recipe(work / "tiny.toml", "data/shapes", train={"epochs": 500})
    result, wall = _timed(cli, "fit", "tiny.toml", "--budget", "14s", "--name", "g")
    assert result.exit_code == 0, result.output
    assert wall < 14, f"the command took {wall:.1f} s with a 14 s budget"
    m, results = _check_best_kept(Path("runs/g"))
    b = m["budget"]
    assert b["planned_epochs"] == 500 and b["stopped_by_budget"]
    assert 1 <= b["epochs_run"] == len(results) < 500
    assert "stopping after epoch" in result.output and (Path("runs/g") / "model" / "weights.safetensors").is_file()
    assert "stopped by the budget" in (Path("runs/g") / "report.md").read_text()


@pytest.mark.slow  # wall-clock budget: timing-sensitive
def test_guard_stop_in_the_frozen_phase_skips_the_main_phase(cli, work, monkeypatch):
    _underestimate(monkeypatch)
    write_recipe(work / "tiny.toml", "data/shapes",
                 model={"arch": "tf_efficientnet_lite0", "pretrained": True},
                 train={"freeze_epochs": 400, "epochs": 3})
    result, wall = _timed(cli, "fit", "tiny.toml", "--budget", "16s", "--name", "f")
    assert result.exit_code == 0, result.output
    assert wall < 16, f"the command took {wall:.1f} s with a 16 s budget"
    m, results = _check_best_kept(Path("runs/f"))
    assert m["budget"]["stopped_by_budget"] and m["budget"]["planned"] == "400+3"
    assert set(results["phase"]) == {"frozen"} and len(results) == m["budget"]["epochs_run"] < 400


def test_main_phase_replanned_when_the_frozen_phase_ran_late(cli, work, monkeypatch):
    """Main epochs measured at 10 s: 1+4 fit a 120 s budget. The frozen phase is made to end
    75 s later than it did: the main phase gets the 2 or 3 epochs left (as the time before
    training allows), a whole one-cycle, instead of being cut short by the guard."""
    monkeypatch.setattr(budget, "measure", lambda *a, **k: budget.Speeds(10.0, 1e-5, 1.0, 0.0))
    monkeypatch.setattr(budget, "epoch_seconds", lambda s_per_batch, *a, **k: s_per_batch)
    replan = budget.Plan.replan_main
    monkeypatch.setattr(budget.Plan, "replan_main", lambda self, now, sgdr: replan(self, now + 75, sgdr))
    write_recipe(work / "tiny.toml", "data/shapes",
                 model={"arch": "tf_efficientnet_lite0", "pretrained": True},
                 train={"freeze_epochs": 1, "epochs": 4})
    result, wall = _timed(cli, "fit", "tiny.toml", "--budget", "120s", "--name", "r")
    assert result.exit_code == 0, result.output
    b = json.loads(Path("runs/r/metrics.json").read_text())["budget"]
    assert b["first_planned"] == "1+4" and b["planned"] in ("1+2", "1+3"), result.output
    main = int(b["planned"][-1])
    assert f"the main phase now gets {main} epochs (was 4)" in result.output
    results = pd.read_csv("runs/r/results.csv")
    assert list(results["phase"]) == ["frozen"] + ["full"] * main and not b["stopped_by_budget"]
    assert config.from_file(Path("runs/r/config.toml")).train.epochs == main
    assert "ran late" in Path("runs/r/report.md").read_text() and wall < 120


def test_budget_too_small_for_one_epoch_is_refused(cli, work):
    write_recipe(work / "tiny.toml", "data/shapes")
    result = cli("fit", "tiny.toml", "--budget", "1s", "--name", "small")
    assert_usage_error(result, "budget 1s is too small", "give at least")
    assert not Path("runs/small").exists()


def test_the_probe_is_skipped_by_callbacks_that_skip_the_lr_finder(work):
    """Progressive resizing must not shrink the timed batches (the plan would read the speed
    of small images as the full size's, then scale it down again): it tells the probe apart by
    the learner's `lr_finder` attribute."""
    from fastai.callback.core import Callback

    from clfapp import train
    from clfapp.train.progressive import ProgressiveResize

    write_recipe(work / "tiny.toml", "data/shapes", train={"epochs": 2, "progressive": 0.5})
    cfg = config.load(work / "tiny.toml")
    (work / "run").mkdir()
    learn = train.prepare(cfg, work / "run").learn

    class Sizes(Callback):
        order = 50   # after ProgressiveResize (5)
        seen: list = []

        def before_batch(self):
            if self.training:
                self.seen.append((self.learn.xb[0].shape[-1], hasattr(self.learn, "lr_finder")))
    learn.add_cb(Sizes())
    budget.measure(learn, cfg.train, 1e-2, pretrained=False)
    assert Sizes.seen and all(named for _, named in Sizes.seen), Sizes.seen
    # timed at full size, then at the ramp's start size (0.5 x 32), nothing in between
    sizes = [size for size, _ in Sizes.seen]
    assert set(sizes) == {32, 16} and sizes.index(16) > sizes.index(32), sizes
    assert any(isinstance(cb, ProgressiveResize) for cb in learn.cbs)
