"""The shipped recipes: every one loads, says what it is and which study it follows, tells where
its data goes when the data is missing, and (wood, scenes) runs end to end on a tiny stand-in.

The five study recipes' real-data runs are bench/recipes_smoke.py (too slow for the suite)."""
from __future__ import annotations

import json

import pytest

from clfapp import config, recipes

from conftest import COLOURS, TINY_ARCH, assert_usage_error, make_folder_dataset, make_image

STUDIES = ("wood", "idl", "plants", "scenes", "cifar10")
# A tiny, fast, from-scratch run of a study recipe: what every stand-in run overrides.
TINY = ["--epochs", "1", "--no-pretrained", "--set", "data.size=32", "--set", f"model.arch={TINY_ARCH}",
        "--set", "train.freeze_epochs=0", "--set", "train.bs=8", "--set", "train.precision=fp32",
        # last_fraction / head_only need a pretrained body; cut_blocks is for densenets here
        "--set", "train.freeze=frozen_then_full", "--set", "model.cut_blocks=0"]


@pytest.mark.parametrize("name", sorted(recipes.available()))
def test_every_shipped_recipe_loads(name):
    path = recipes.find(name)[1]
    cfg = config.load(path, recipe_name=name)   # every key valid, every value in range
    assert cfg.recipe == name
    assert recipes.describe(path).startswith(f"{name}:"), "first line: the one-line description"


@pytest.mark.parametrize("name", STUDIES)
def test_study_recipes_name_their_study_and_layout(name):
    path = recipes.find(name)[1]
    head = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    assert any(ln.startswith(f"# study: {name} (REFERENCES.md)") for ln in head), head
    assert any(ln.startswith("# departs: ") for ln in head), "where the recipe departs from its study"
    cfg = config.load(path)
    assert recipes.layout_hint(path) and cfg.data.path in recipes.layout_hint(path)


@pytest.mark.parametrize("name", STUDIES)
def test_missing_data_names_the_expected_layout(cli, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)   # no data/ here, no ../shared/datasets beside it
    hint = recipes.layout_hint(recipes.find(name)[1])
    for command in ("fit", "lr-find"):
        result = cli(command, name)
        assert_usage_error(result, "does not exist", hint, "--data")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_layout_hint_is_empty_without_the_comment(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("# r: a recipe\n[data]\npath = \"x\"\n")
    assert recipes.layout_hint(p) == ""
    assert recipes.layout_hint(recipes.find("digits")[1]) == ""


def _wood_standin(root):
    """wood's layout: one flat folder, the class = the file name's first two digits."""
    for k, rgb in enumerate(COLOURS.values()):
        for i in range(8):
            make_image(root / f"{k + 1:02d}{i:02d}.jpg", rgb, 24, seed=10 * k + i)
    return root


@pytest.mark.parametrize("name", ["wood", "scenes"])
def test_study_recipe_runs_end_to_end_on_a_standin(cli, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    data = _wood_standin(tmp_path / "wood") if name == "wood" else \
        make_folder_dataset(tmp_path / "scenes", n_per_class=8, ext="jpg")
    result = cli("fit", name, "--data", data, "--name", "r", *TINY)
    assert result.exit_code == 0, result.output
    cfg = config.from_file(tmp_path / "runs" / "r" / "config.toml")
    assert cfg.recipe == name and cfg.model.arch == TINY_ARCH
    m = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert 0 <= m["accuracy"] <= 1
    if name == "wood":   # the recipe's own settings survive the overrides
        assert (cfg.loss.name, cfg.train.schedule, cfg.train.lookahead_k) == ("focal", "plateau", 5)
        assert sorted(json.loads((tmp_path / "runs" / "r" / "model" / "model.json").read_text())
                      ["classes"]) == ["01", "02", "03"]
