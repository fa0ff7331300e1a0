"""Body and head options: model.head_hidden, model.cut_blocks, clfapp's own simple_cnn,
torchvision's alexnet, and the parameter-count line fit prints."""
from __future__ import annotations

import json
import re

import pytest
import torch

from clfapp import config, models
from clfapp.errors import UsageError
from clfapp.infer import bundle

from conftest import assert_usage_error, make_folder_dataset, write_recipe


def _linear_sizes(model):
    return [m.out_features for m in model[1].modules() if isinstance(m, torch.nn.Linear)]


def _fit(tmp_path, **sections):
    """train.fit on a tiny folder; returns (run folder, the trained Learner)."""
    from clfapp import train

    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=10)
    recipe = write_recipe(tmp_path / "r.toml", str(tmp_path / "data" / "shapes"), **sections)
    cfg = config.load(recipe)
    held = {}
    (tmp_path / "run").mkdir()
    train.fit(cfg, tmp_path / "run", on_prepared=lambda prep: held.setdefault("learn", prep.learn))
    return tmp_path / "run", held["learn"]


def _same_outputs(folder, learn, size=32):
    loaded, meta = bundle.load(folder)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        return meta, torch.allclose(loaded(x), learn.model.float().eval()(x), atol=1e-5)


@pytest.mark.parametrize("text,sizes", [("", [512, 3]), ("64", [64, 3]), ("64,32", [64, 32, 3]),
                                        ("none", [3])])
def test_head_hidden_sets_the_head_linear_sizes(text, sizes):
    model, _ = models.build(models.resolve("test_resnet"), 3, head_hidden=text)
    assert _linear_sizes(model) == sizes


def test_head_hidden_refuses_nonsense():
    with pytest.raises(UsageError, match="model.head_hidden"):
        config.load(None, {"model": {"head_hidden": "big"}})


def test_head_hidden_bundle_round_trip(tmp_path):
    folder, learn = _fit(tmp_path, model={"head_hidden": "48"})
    meta, same = _same_outputs(folder, learn)
    assert meta.head_hidden == "48" and same
    assert json.loads((folder / "model" / "model.json").read_text())["head_hidden"] == "48"
    assert _linear_sizes(bundle.load(folder)[0]) == [48, 3]


def test_old_bundle_without_new_fields_loads(tmp_path):
    folder, learn = _fit(tmp_path)
    meta_file = folder / "model" / "model.json"
    raw = json.loads(meta_file.read_text())
    del raw["head_hidden"], raw["cut_blocks"]
    meta_file.write_text(json.dumps(raw))
    assert _same_outputs(folder, learn)[1]


def test_densenet_cut_blocks_fewer_parameters():
    arch = models.resolve("densenet121")
    full, _ = models.build(arch, 8)
    cut1, split = models.build(arch, 8, cut_blocks=1)
    cut2, _ = models.build(arch, 8, cut_blocks=2)
    body = [models.n_parameters(m[0]) for m in (full, cut1, cut2)]
    # observed: 6.95 M, 4.27 M (no denseblock4 / transition3 conv / norm5), 1.30 M
    assert 6.9e6 < body[0] < 7.0e6 and 4.2e6 < body[1] < 4.4e6 and 1.2e6 < body[2] < 1.4e6
    assert models.n_parameters(cut1) < 6e6 < 7e6 < models.n_parameters(full)
    assert cut1.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
    assert len(split(cut1)) == 3 and all(len(g) for g in split(cut1))
    with pytest.raises(UsageError, match="densenet121 has 4 dense blocks"):
        models.build(arch, 8, cut_blocks=4)


def test_timm_cut_blocks_and_refusals():
    model, _ = models.build(models.resolve("test_resnet"), 3, cut_blocks=1)
    full, _ = models.build(models.resolve("test_resnet"), 3)
    assert models.n_parameters(model) < models.n_parameters(full)
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(UsageError, match="torchvision densenets .* resnet18 is not one of them"):
        models.resolve("resnet18", cut_blocks=1)
    with pytest.raises(UsageError, match="vit_tiny_patch16_224 has no such stages"):
        models.build(models.resolve("vit_tiny_patch16_224"), 3, cut_blocks=1)


def test_densenet_cut_fit_and_bundle_round_trip(tmp_path):
    folder, learn = _fit(tmp_path, model={"arch": "densenet121", "cut_blocks": 1})
    meta, same = _same_outputs(folder, learn)
    assert meta.cut_blocks == 1 and same


def test_simple_cnn_learns_and_prints_its_size(tmp_path, cli, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=10)
    write_recipe(tmp_path / "r.toml", "data/shapes", model={"arch": "simple_cnn"},
                 train={"epochs": 4})
    monkeypatch.chdir(tmp_path)
    result = cli("fit", "r.toml", "--name", "cnn")
    assert result.exit_code == 0, result.output
    assert re.search(r"^model: simple_cnn, 1\.\d\d M parameters$", result.output, re.M)
    acc = json.loads((tmp_path / "runs" / "cnn" / "metrics.json").read_text())["accuracy"]
    assert acc > 0.6  # chance is 1/3


def test_simple_cnn_refuses_pretrained(tmp_path, cli, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=3)
    write_recipe(tmp_path / "r.toml", "data/shapes", model={"arch": "simple_cnn"})
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", "r.toml", "--set", "model.pretrained=true"),
                       "simple_cnn", "--no-pretrained")


def test_alexnet_fits_from_scratch_at_64_px(tmp_path, cli, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=6, size=64)
    write_recipe(tmp_path / "r.toml", "data/shapes", data={"size": 64},
                 model={"arch": "alexnet"})
    monkeypatch.chdir(tmp_path)
    result = cli("fit", "r.toml", "--name", "alex", "--no-pretrained")
    assert result.exit_code == 0, result.output
    assert re.search(r"^model: alexnet, \d+\.\d\d M parameters$", result.output, re.M)
    assert (tmp_path / "runs" / "alex" / "model" / "model.json").is_file()


def test_alexnet_pretrained_missing_is_one_clean_line(tmp_path, cli, monkeypatch):
    import clfapp.models.weights as w

    monkeypatch.setattr(w, "network_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(w, "_torchvision_cached", lambda name: None)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=3)
    write_recipe(tmp_path / "r.toml", "data/shapes", model={"arch": "alexnet", "pretrained": True})
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", "r.toml"), "no pretrained weights for alexnet", "--no-pretrained")


def test_alexnet_too_small_input_is_one_clean_line(tmp_path, cli, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=3)
    write_recipe(tmp_path / "r.toml", "data/shapes", model={"arch": "alexnet"})  # 32 px
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", "r.toml"), "data.size = 32 is too small for alexnet")
