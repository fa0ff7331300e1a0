"""The split has its own seed (data.seed), and a run can reuse another run's split
(data.splits_from): ensemble members and distilled students validate on the same images,
none of which another member trained on."""
from __future__ import annotations

import pandas as pd
from conftest import assert_usage_error, make_folder_dataset, write_recipe


def _split(tmp_path, name) -> pd.Series:
    df = pd.read_csv(tmp_path / "runs" / name / "splits.csv", dtype=str)
    return df.set_index("path")["split"].sort_index()


def _fit(cli, *args):
    result = cli("fit", "tiny.toml", *args)
    assert result.exit_code == 0, result.output
    return result


def test_training_seed_leaves_the_split_alone_and_split_seed_moves_it(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=12)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    _fit(cli, "--name", "a", "--seed", "1")
    _fit(cli, "--name", "b", "--seed", "2")
    _fit(cli, "--name", "c", "--seed", "1", "--split-seed", "7")
    assert _split(tmp_path, "a").equals(_split(tmp_path, "b"))
    assert not _split(tmp_path, "a").equals(_split(tmp_path, "c"))


def test_splits_from_reuses_another_runs_split_item_by_item(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=12)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    _fit(cli, "--name", "first", "--split-seed", "3")
    _fit(cli, "--name", "own", "--split-seed", "4")
    assert not _split(tmp_path, "first").equals(_split(tmp_path, "own"))
    _fit(cli, "--name", "second", "--split-seed", "4", "--splits-from", "runs/first")
    assert _split(tmp_path, "first").equals(_split(tmp_path, "second"))


def test_splits_from_a_run_on_other_data_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=6)
    make_folder_dataset(tmp_path / "data" / "other", n_per_class=6)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    _fit(cli, "--name", "first")
    result = cli("fit", "tiny.toml", "--data", "data/other", "--splits-from", "runs/first")
    assert_usage_error(result, "none of this dataset's images")
    result = cli("fit", "tiny.toml", "--splits-from", "runs/nowhere")
    assert_usage_error(result, "splits.csv")
