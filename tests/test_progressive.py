"""Progressive resizing (train.progressive): the size rule, and what a fit really trains on."""
from __future__ import annotations

import pytest

from clfapp.train import progressive
from clfapp.train.progressive import size_at

from conftest import assert_usage_error, write_recipe


def test_size_ramps_from_the_start_fraction_to_full_and_stays_full():
    assert size_at(128, 0.75, 0.0) == 96
    assert size_at(128, 0.75, 0.375) == 112          # half-way up the ramp
    assert size_at(128, 0.75, progressive.FULL_AT) == 128
    assert size_at(128, 0.75, 1.0) == 128
    sizes = [size_at(224, 0.5, p / 100) for p in range(101)]
    assert sizes == sorted(sizes) and sizes[0] == 112 and sizes[-1] == 224
    assert all(s % progressive.STEP == 0 for s in sizes)


def test_off_and_tiny_sizes():
    assert size_at(128, 1.0, 0.0) == 128
    assert size_at(20, 0.5, 0.0) == 16      # never below one step
    assert size_at(24, 0.9, 0.5) <= 24      # never above full


def test_a_fit_trains_small_batches_first_and_validates_at_full_size(cli, tmp_path, monkeypatch, tiny_data):
    """The sizes the model really saw, per phase: the frozen phase at the start size, the
    main phase ramping to full, validation always full."""
    import clfapp.train.progressive as prog

    seen = []
    real = prog.ProgressiveResize.before_batch

    def spy(self):
        real(self)
        seen.append((self.training, self.learn.xb[0].shape[-1]))
    monkeypatch.setattr(prog.ProgressiveResize, "before_batch", spy)
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.toml", tiny_data,
                          data={"size": 64}, train={"epochs": 2, "progressive": 0.5, "bs": 4})
    result = cli("fit", str(recipe), "--name", "p")
    assert result.exit_code == 0, result.output
    train_sizes = [s for training, s in seen if training]
    assert train_sizes[0] == 32 and train_sizes[-1] == 64
    assert train_sizes == sorted(train_sizes)
    assert {s for training, s in seen if not training} == {64}


def test_out_of_range_is_refused(cli, tmp_path, monkeypatch, tiny_data):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.toml", tiny_data)
    result = cli("fit", str(recipe), "--set", "train.progressive=0.1")
    assert_usage_error(result, "train.progressive")


def test_cost_fraction_the_budget_scales_its_full_size_timing_by():
    from clfapp.train.progressive import cost_fraction
    assert cost_fraction(128, 1.0) == 1.0
    main = cost_fraction(128, 0.75)
    assert (96 / 128) ** 2 < main < 1.0
    assert cost_fraction(128, 0.5) < main
