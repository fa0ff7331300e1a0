"""Settings chosen from the data (clfapp/auto.py) and `clfapp fit FOLDER|CSV`.

The rules are tested as a pure function of a summary, the summary on generated images, and the
whole path through the CLI: the one printed line, config.toml, the run folder's name.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from clfapp import auto, config
from clfapp.config import DataConfig, TrainConfig
from clfapp.errors import UsageError

from conftest import COLOURS, TINY_ARCH, assert_usage_error, make_folder_dataset, make_image

# a tiny from-scratch model that fits in seconds: the overrides of the end-to-end tests
FAST = ["--arch", TINY_ARCH, "--no-pretrained", "--size", "32", "--epochs", "1", "--bs", "8",
        "--set", "train.precision=fp32"]


def summary(n_train=100, side=100, n_classes=2, multi=False):
    return auto.Summary(n_images=n_train + n_train // 4, n_train=n_train, n_classes=n_classes,
                        multi_label=multi, median_side=side)


# --- the rules, a pure function ----------------------------------------------------------------

@pytest.mark.parametrize("side, size", [(500, 224), (224, 224), (150, 160), (100, 96), (90, 96),
                                        (70, 64), (24, 64), (8, 64)])
def test_size_is_the_median_side_rounded_to_32_and_clamped(side, size):
    assert auto.choose(summary(side=side))[("data", "size")] == size


def test_size_left_alone_without_a_readable_header():
    assert ("data", "size") not in auto.choose(summary(side=None))


def test_epochs_and_lr_grow_with_the_training_images():
    small = auto.choose(summary(n_train=300))
    medium = auto.choose(summary(n_train=1000))
    large = auto.choose(summary(n_train=10000))
    # small sets: smaller batches (more optimizer steps per epoch); larger: more epochs, higher lr
    assert small[("train", "bs")] < medium[("train", "bs")] < large[("train", "bs")]
    assert small[("train", "epochs")] <= medium[("train", "epochs")] < large[("train", "epochs")]
    assert small[("train", "lr")] <= medium[("train", "lr")] < large[("train", "lr")]
    assert all(c[("model", "arch")] == "tf_efficientnet_lite0" for c in (small, medium, large))


def test_tier_boundaries_follow_the_named_constants():
    for least, epochs, lr, bs in auto.EPOCH_TIERS:
        at = auto.choose(summary(n_train=least))
        assert (at[("train", "epochs")], at[("train", "lr")], at[("train", "bs")]) == (epochs, lr, bs)
        if least:
            below = auto.choose(summary(n_train=least - 1))
            assert (below[("train", "epochs")], below[("train", "lr")], below[("train", "bs")]) != (epochs, lr, bs)


def test_weight_average_only_for_small_sets():
    least, decay = auto.EMA_BELOW
    assert auto.choose(summary(n_train=least - 1))[("train", "ema")] == decay
    assert ("train", "ema") not in auto.choose(summary(n_train=least))


def test_progressive_resizing_only_for_larger_sets():
    least, fraction = auto.PROGRESSIVE_FROM
    assert auto.choose(summary(n_train=least))[("train", "progressive")] == fraction
    assert ("train", "progressive") not in auto.choose(summary(n_train=least - 1))


def test_apply_keeps_given_keys_and_values_that_differ_from_the_defaults():
    cfg = config.load(None, {"data": {"path": "x"}, "train": {"epochs": 9}})
    s = summary(n_train=100, side=100)
    out, line = auto.apply(cfg, given={("train", "lr")}, summary=s, where="CPU")
    assert out.data.size == 96                         # chosen: was the default
    assert out.train.epochs == 9                       # a recipe's value (not the default) wins
    assert out.train.lr == TrainConfig.lr              # given on the command line: kept
    assert line == ("defaults for this data (125 images, 2 classes, median short side 100 px): "
                    "size 96, batches of 16, body lr / 3, weight average (EMA 0.999), flip TTA, "
                    "tf_efficientnet_lite0 (CPU)")
    assert out.train.lr_mult == auto.LR_MULT and out.aug.tta is auto.TTA
    assert out.train.progressive == 1.0                # off below PROGRESSIVE_FROM's images
    everything = {("data", "size"), ("train", "epochs"), ("train", "lr"), ("model", "arch"),
                  ("train", "lr_mult"), ("aug", "tta"), ("train", "bs"), ("train", "ema")}
    same, none = auto.apply(cfg, given=everything, summary=s, where="CPU")
    assert same == cfg and none is None


# --- the summary, from generated images --------------------------------------------------------

def test_summarize_reads_sizes_counts_and_classes(tmp_path):
    root = tmp_path / "photos"
    for i in range(5):   # short sides 80 (x5) and 300 (x6): the median is 300
        make_image(root / "a" / f"a{i}.png", COLOURS["red"], (120, 80), seed=i)
    for i in range(6):
        make_image(root / "b" / f"b{i}.png", COLOURS["blue"], (300, 400), seed=10 + i)
    s = auto.summarize(DataConfig(path=str(root)))
    assert (s.n_images, s.n_classes, s.multi_label, s.median_side) == (11, 2, False, 300)
    assert s.n_train == round(11 * (1 - DataConfig.valid_pct))


def test_summarize_counts_a_train_folder_and_reads_at_most_the_sample(tmp_path, monkeypatch):
    root = tmp_path / "split"
    make_folder_dataset(root / "train", n_per_class=6, classes=["red", "blue"])
    make_folder_dataset(root / "valid", n_per_class=2, classes=["red", "blue"])
    opened = []
    real_open = Image.open

    def counting_open(fp, *a, **k):
        opened.append(fp)
        return real_open(fp, *a, **k)
    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(auto, "SAMPLE_FILES", 5)
    s = auto.summarize(DataConfig(path=str(root)))
    assert s.n_images == 16 and s.n_train == 12      # the train/ folder, not an estimate
    assert 0 < len(opened) <= 5 and s.median_side == 24


def test_summarize_detects_a_multi_label_csv(tmp_path):
    csv = _multilabel_csv(tmp_path / "tags")
    s = auto.summarize(DataConfig(path=str(csv)))
    assert s.multi_label and s.n_classes == 3 and s.n_images == 24
    assert "3 labels, multi-label" in s.describe()


def _multilabel_csv(root: Path) -> Path:
    """root/labels.csv: 24 images of 24 px, each tagged with one or two of red, green, blue."""
    rows = ["fname,labels"]
    names = list(COLOURS)
    for i in range(24):
        tags = [names[i % 3]] + ([names[(i + 1) % 3]] if i % 2 else [])
        make_image(root / f"img{i:02d}.png", COLOURS[tags[0]], 24, seed=i)
        rows.append(f"img{i:02d}.png,{' '.join(tags)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


# --- through the CLI --------------------------------------------------------------------------

@pytest.fixture
def stop_before_training(monkeypatch):
    """train.fit writes the resolved config.toml as real fit does, then stops as Ctrl-C would:
    the choice is checked without training at the chosen (large) settings."""
    from clfapp import train

    def fake_fit(cfg, folder, *args, **kwargs):
        (folder / "config.toml").write_text(config.dumps(cfg))
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "fit", fake_fit)


def test_fit_folder_prints_the_choice_and_records_it(cli, tmp_path, monkeypatch, stop_before_training):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "photos", n_per_class=10, size=(100, 130))
    result = cli("fit", "photos")
    assert result.exit_code == 130, result.output
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("defaults for this data")]
    assert lines == ["defaults for this data (30 images, 3 classes, median short side 100 px): "
                     "size 96, 6 epochs, lr 2e-3, batches of 16, body lr / 3, weight average (EMA 0.999), "
                     "flip TTA, tf_efficientnet_lite0 (CPU)"]
    cfg = config.from_file(tmp_path / "runs" / "photos-1" / "config.toml")
    assert cfg.recipe == "photos" and cfg.data.path == "photos"
    assert (cfg.data.size, cfg.train.epochs, cfg.train.lr) == (96, 6, 2e-3)
    assert cfg.model.arch == "tf_efficientnet_lite0"


def test_fit_folder_keeps_what_the_user_set(cli, tmp_path, monkeypatch, stop_before_training):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "photos", n_per_class=10, size=(100, 130))
    result = cli("fit", "photos/", "--epochs", "7", "--set", "train.lr=5e-3", "--arch", "resnet18")
    assert result.exit_code == 130, result.output
    assert ("defaults for this data (30 images, 3 classes, median short side 100 px): size 96, batches of 16, "
            "body lr / 3, weight average (EMA 0.999), flip TTA\n" in result.stdout)
    cfg = config.from_file(tmp_path / "runs" / "photos-1" / "config.toml")
    assert (cfg.data.size, cfg.train.epochs, cfg.train.lr, cfg.model.arch) == (96, 7, 5e-3, "resnet18")


def test_fit_folder_end_to_end(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "photos", n_per_class=10)
    result = cli("fit", "photos", *FAST, "--set", "train.freeze_epochs=0")
    assert result.exit_code == 0, result.output
    # only what was not overridden is chosen: the lr of a small dataset, body LR, TTA
    assert ("defaults for this data (30 images, 3 classes, median short side 24 px): lr 2e-3, "
            "body lr / 3, weight average (EMA 0.999), flip TTA\n") in result.stdout
    run = tmp_path / "runs" / "photos-1"
    cfg = config.from_file(run / "config.toml")
    assert cfg.train.lr == auto.EPOCH_TIERS[0][2] and cfg.data.size == 32 and cfg.model.arch == TINY_ARCH
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["classes"] == sorted(COLOURS) and meta["size"] == 32
    assert (run / "metrics.json").is_file()


def test_fit_multilabel_csv_end_to_end(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _multilabel_csv(tmp_path / "data" / "tags")
    result = cli("fit", "data/tags/labels.csv", *FAST, "--set", "train.freeze_epochs=0")
    assert result.exit_code == 0, result.output
    assert "(24 images, 3 labels, multi-label, median short side 24 px): lr 2e-3" in result.stdout
    run = tmp_path / "runs" / "tags-1"    # named after the CSV's folder
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["multi_label"] is True and meta["classes"] == sorted(COLOURS)
    assert config.from_file(run / "config.toml").data.path == "data/tags/labels.csv"


def test_a_recipe_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from clfapp.cli import common

    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "digits", n_per_class=3)
    cfg = common.resolve_config("digits")
    assert cfg.recipe == "digits" and cfg.data.sample == "digits"   # the shipped recipe


def test_data_argument_and_data_option_together_are_refused(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "photos", n_per_class=3)
    assert_usage_error(cli("fit", "photos", "--data", "photos"), "give the data once")


def test_unknown_name_says_a_folder_works_too(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", "photoz/"), "unknown recipe 'photoz/'", "folder of images")


def test_summarize_refuses_what_scan_refuses(tmp_path):
    (tmp_path / "flat").mkdir()
    make_image(tmp_path / "flat" / "a.png", COLOURS["red"])
    with pytest.raises(UsageError, match="class folder"):
        auto.summarize(DataConfig(path=str(tmp_path / "flat")))
