"""config.py: recipes, overrides, validation with suggestions, dump/load round trip."""
from __future__ import annotations

import dataclasses

import pytest

from clfapp import config, recipes
from clfapp.cli.common import resolve_config
from clfapp.config import Config
from clfapp.errors import UsageError

from conftest import TINY_ARCH, REPO, write_recipe


def test_defaults_without_recipe():
    cfg = config.load(None)
    assert cfg == Config()
    assert cfg.train.epochs == config.TrainConfig.epochs
    assert cfg.model.arch == config.ModelConfig.arch


def test_recipe_values_are_read_and_the_rest_defaults(tmp_path):
    path = write_recipe(tmp_path / "mine.toml", "some/where", train={"bs": 4, "lr": 3e-4},
                        aug={"flip_vert": True, "max_rotate": 45})
    cfg = config.load(path, recipe_name="mine")
    assert cfg.recipe == "mine"
    assert cfg.data.path == "some/where"
    assert cfg.data.size == 32
    assert cfg.model.arch == TINY_ARCH and cfg.model.pretrained is False
    assert cfg.train.bs == 4 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.aug.flip_vert is True
    assert cfg.aug.max_rotate == 45.0 and isinstance(cfg.aug.max_rotate, float)
    # untouched values keep the dataclass defaults
    assert cfg.data.valid_pct == config.DataConfig.valid_pct
    assert cfg.loss == config.LossConfig()


def test_config_is_frozen(tmp_path):
    cfg = config.load(write_recipe(tmp_path / "r.toml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3


@pytest.mark.parametrize("name", ["digits", "plants"])
def test_shipped_recipes_load(name):
    found, path = recipes.find(name)
    assert found == name and path == REPO / "recipes" / f"{name}.toml"
    cfg = config.load(path, recipe_name=name)
    assert cfg.recipe == name
    assert recipes.describe(path)  # a one-line description from the first comment


def test_recipe_by_path(tmp_path):
    path = write_recipe(tmp_path / "custom.toml")
    assert recipes.find(str(path)) == ("custom", path)
    with pytest.raises(UsageError, match="not found"):
        recipes.find(str(tmp_path / "missing.toml"))


def test_unknown_recipe_name_suggests():
    with pytest.raises(UsageError, match="digits"):
        recipes.find("digitz")


def test_flags_and_set_override_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "r.toml", "data/a", train={"epochs": 7, "bs": 16})
    cfg = resolve_config("r.toml", data="data/b", arch="resnet18", size=48, epochs=2, bs=None,
                         lr="auto", seed=3, pretrained=True,
                         sets=["aug.max_rotate=30", "loss.name=focal", "train.wd=0.1",
                               "aug.flip=false"])
    assert cfg.recipe == "r"
    assert cfg.data.path == "data/b" and cfg.data.size == 48
    assert cfg.model.arch == "resnet18" and cfg.model.pretrained is True
    assert cfg.train.epochs == 2 and cfg.train.seed == 3 and cfg.train.lr == "auto"
    assert cfg.train.bs == 16  # flag not given: the recipe's value stays
    assert cfg.aug.max_rotate == 30.0 and cfg.aug.flip is False
    assert cfg.loss.name == "focal" and cfg.train.wd == pytest.approx(0.1)


def test_set_value_types_are_coerced(tmp_path):
    cfg = config.load(write_recipe(tmp_path / "r.toml"), config.parse_set(
        ["train.epochs=3", "train.lr=1e-3", "model.pretrained=yes", "data.valid_pct=0.3"]))
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.model.pretrained is True
    assert cfg.data.valid_pct == pytest.approx(0.3)


@pytest.mark.parametrize("assignment, named, suggestion", [
    ("train.epoch=3", "train.epoch", "did you mean epochs"),
    ("train.batch_size=3", "train.batch_size", "known: epochs"),  # nothing close: list them
    ("trian.lr=0.1", "[trian]", "did you mean train"),
    ("model.archh=resnet18", "model.archh", "did you mean arch"),
])
def test_unknown_key_names_close_matches(tmp_path, assignment, named, suggestion):
    with pytest.raises(UsageError) as e:
        config.load(write_recipe(tmp_path / "r.toml"), config.parse_set([assignment]))
    msg = str(e.value)
    assert named in msg and suggestion in msg, msg


def test_unknown_key_in_recipe_file_names_the_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[train]\nepoch = 3\n")
    with pytest.raises(UsageError, match=r"train\.epoch.*r\.toml.*epochs"):
        config.load(path)


@pytest.mark.parametrize("assignment, fragment", [
    ("train.bs=abc", "whole number"),
    ("train.epochs=2.5", "whole number"),
    ("aug.flip=maybe", "true or false"),
    ("train.lr=fast", "number or 'auto'"),
    ("train.lr=-1", "positive"),
    ("data.valid_pct=lots", "number"),
    ("data.split=sideways", "not one of"),
    ("train.opt=adamx", "not one of"),
    ("train.precision=fp8", "not one of"),
    ("data.valid_pct=1.5", "between 0 and 1"),
    ("data.size=4", "at least 8"),
    ("train.bs=0", "at least 1"),
    ("data.labels=column", "folder"),
    ("train", "section.key=value"),
])
def test_bad_values_from_the_command_line(tmp_path, assignment, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        config.load(write_recipe(tmp_path / "r.toml"), config.parse_set([assignment]))


@pytest.mark.parametrize("line, fragment", [
    ("epochs = 2.5", "whole number"),
    ("epochs = true", "whole number"),      # a bool is not a count of epochs (nor 1)
    ("lr = [1, 2]", "number"),
])
def test_bad_value_types_in_recipe(tmp_path, line, fragment):
    path = tmp_path / "r.toml"
    path.write_text(f"[train]\n{line}\n")
    with pytest.raises(UsageError, match=fragment):
        config.load(path)


def test_invalid_toml_is_a_usage_error(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[train\nepochs = 3\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        config.load(path)


def test_section_must_be_a_table(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("train = 3\n")
    with pytest.raises(UsageError, match="table"):
        config.load(path)


ROUND_TRIPS = [
    Config(),
    config.load(None, config.parse_set([
        "data.path=C:\\data\\wood \"x\"", r"data.labels=name:^(\d{2})_[a-z]+\.jpg$",
        "data.split=random", "data.valid_pct=0.15", "data.size=96", "data.resize=pad",
        "aug.enabled=false", "aug.max_rotate=180", "aug.min_scale=0.35",
        "model.arch=timm:resnet34", "model.pretrained=true", "model.weights=/w/ü.safetensors",
        "model.dropout=0.25", "model.concat_pool=false", "loss.name=focal", "loss.gamma=1.5",
        "train.epochs=0", "train.freeze_epochs=2", "train.lr=1e-05", "train.bs=3",
        "train.opt=ranger", "train.monitor=valid_loss", "train.early_stop=4",
        "train.precision=bf16", "train.seed=123456789", "thresholds.metric=f1_samples",
        "thresholds.mode=per-label", "data.label_delim=;", "aug.mixup=0.4",
        "loss.pos_weight=auto"]), recipe_name="wood"),
    config.load(None, config.parse_set(["train.lr=auto"]), recipe_name="auto-lr"),
]


@pytest.mark.parametrize("cfg", ROUND_TRIPS)
def test_dumps_from_file_round_trip(tmp_path, cfg):
    path = tmp_path / "config.toml"
    path.write_text(config.dumps(cfg))
    back = config.from_file(path)
    assert back == cfg
    assert type(back.train.lr) is type(cfg.train.lr)
    # and the dumped file is itself a recipe `load` accepts to the same config
    assert config.load(path, recipe_name=cfg.recipe) == cfg


def test_round_trip_config_differs_from_defaults():
    # guard: the rich round-trip case really sets non-default values in every section
    rich = ROUND_TRIPS[1]
    for section in config.SECTIONS:
        assert getattr(rich, section) != getattr(Config(), section), section
