"""weights.py: offline pretrained weights from pip packages, explicit files, clear failures."""
from __future__ import annotations

import json

import pytest
import torch

from clfapp import config, models, train

from clfapp.models import weights
from clfapp.errors import UsageError

from conftest import TINY_ARCH, assert_usage_error, write_recipe

ESPRESSO = 967


# The ImageNet net each pip package holds must call scikit-image's coffee photo espresso, with a
# probability above this floor. Observed (timm 1.0.31, torch 2.14.1; timm's data config for
# each: 224/240/260 px, crop 0.875/0.882/0.89, bicubic, mean = std = 0.5):
# lite0 espresso 0.951 (then cup 0.015), lite1 0.544 (cup 0.040), lite2 0.885 (cup 0.012).
ESPRESSO_FLOOR = {"tf_efficientnet_lite0": 0.8, "tf_efficientnet_lite1": 0.4,
                  "tf_efficientnet_lite2": 0.7}


def _convert_afresh(name: str, tmp_path_factory):
    """Convert the pip-shipped weights of `name` into a new, empty cache (not a stale file);
    a second call must reuse the converted file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLFAPP_CACHE", str(tmp_path_factory.mktemp(f"{name}-cache")))
        path = weights._from_pip_package(name)
        assert path is not None and path.is_file()
        assert weights._from_pip_package(name) == path
        return path


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    """The pip-shipped lite0 weights converted afresh (not a stale cache) to timm naming."""
    return _convert_afresh("tf_efficientnet_lite0", tmp_path_factory)


@pytest.fixture(scope="module", params=sorted(ESPRESSO_FLOOR))
def pip_weights(request, tmp_path_factory):
    """(arch, converted file) for each of lite0/1/2, each converted afresh once per module."""
    return request.param, _convert_afresh(request.param, tmp_path_factory)


def _coffee_batch(model):
    import skimage.data
    import timm.data
    from PIL import Image

    cfg = timm.data.resolve_data_config({}, model=model)
    tf = timm.data.create_transform(**cfg)
    return tf(Image.fromarray(skimage.data.coffee())).unsqueeze(0)


def test_pip_weights_know_espresso(pip_weights):
    """Converted weights reproduce the ImageNet net: right class, confident (a wrong key map or
    a random layer gives near-uniform or wrong predictions)."""
    import timm
    import timm.data
    from safetensors.torch import load_file

    arch, path = pip_weights
    net = timm.create_model(arch, pretrained=False, num_classes=1000)
    net.load_state_dict(load_file(str(path)), strict=True)
    net.eval()
    cfg = timm.data.resolve_data_config({}, model=net)
    assert (cfg["mean"], cfg["std"], cfg["interpolation"]) == ((0.5,) * 3, (0.5,) * 3, "bicubic")
    with torch.no_grad():
        probs = net(_coffee_batch(net)).softmax(1)[0]
    top5 = [(int(i), round(float(p), 3)) for p, i in zip(*probs.topk(5))]
    assert int(probs.argmax()) == ESPRESSO, top5
    assert float(probs[ESPRESSO]) > ESPRESSO_FLOOR[arch], top5


def test_resolve_gives_the_body_without_classifier(lite0_file, monkeypatch):
    import timm
    from safetensors.torch import load_file

    monkeypatch.setenv("CLFAPP_CACHE", str(lite0_file.parents[1]))
    found = weights.resolve("timm", "tf_efficientnet_lite0")
    assert str(lite0_file) in found.source
    full = load_file(str(lite0_file))
    assert set(full) - set(found.state) == {"classifier.weight", "classifier.bias"}

    # clfapp's model body gets exactly these tensors (strict load, nothing random left)
    arch = models.resolve("tf_efficientnet_lite0")
    assert arch.mean == (0.5, 0.5, 0.5) and arch.std == (0.5, 0.5, 0.5)
    model, _ = models.build(arch, 3, backbone_state=found.state, weights_source=found.source)
    body = model[0].model.state_dict()
    assert set(body) == set(found.state)
    for k, v in found.state.items():
        assert torch.equal(body[k], v), k

    # body features + the original classifier = the ImageNet net: still espresso
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    net.load_state_dict(found.state, strict=True)
    net.eval()
    with torch.no_grad():
        feats = net(_coffee_batch(net))
        logits = feats @ full["classifier.weight"].T + full["classifier.bias"]
    assert int(logits.argmax()) == ESPRESSO


def test_wrong_shapes_are_a_usage_error(lite0_file, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(lite0_file))
    state["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)   # lite0 has 32 stem filters
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    found = weights.resolve("timm", "tf_efficientnet_lite0", str(bad))
    with pytest.raises(UsageError, match="conv_stem"):
        models.build(models.resolve("tf_efficientnet_lite0"), 3, backbone_state=found.state,
                     weights_source=found.source)


def test_weights_of_another_arch_are_a_usage_error(tmp_path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    f = tmp_path / "other.safetensors"
    save_file(other, str(f))
    found = weights.resolve("timm", TINY_ARCH, str(f))
    with pytest.raises(UsageError, match="do not fit"):
        models.build(models.resolve(TINY_ARCH), 3, backbone_state=found.state,
                     weights_source=found.source)


def test_wrong_shapes_through_the_cli(cli, tmp_path, monkeypatch, tiny_recipe):
    import timm
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    state = timm.create_model(TINY_ARCH, num_classes=0).state_dict()
    first = next(k for k, v in state.items() if v.dim() == 4)
    state[first] = torch.zeros(3, 3, 1, 1)
    save_file(state, str(tmp_path / "w.safetensors"))
    assert_usage_error(cli("fit", tiny_recipe, "--pretrained", "--weights", "w.safetensors"),
                       "do not fit", first)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_is_used(cli, tmp_path, monkeypatch, tiny_recipe, suffix):
    """`--weights FILE` (safetensors or a plain torch state_dict) is what the body starts from."""
    import timm

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(123)
    net = timm.create_model(TINY_ARCH, num_classes=1000)   # a classifier too: it is stripped
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / f"mine{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)   # a checkpoint dict holding the state_dict

    # prepare (no training): the learner's body holds exactly the file's tensors
    cfg = config.load(tiny_recipe, config.parse_set(
        ["model.pretrained=true", f"model.weights={path}"]), recipe_name="tiny")
    folder = tmp_path / "prep"
    folder.mkdir()
    prep = train.prepare(cfg, folder)
    assert prep.weights_source == f"file {path}"
    body = prep.learn.model[0].model.state_dict()
    for k, v in body.items():
        assert torch.equal(v, state[k]), k

    # the CLI accepts the file and records where the weights came from
    result = cli("fit", tiny_recipe, "--pretrained", "--weights", path, "--name", "w")
    assert result.exit_code == 0, result.output
    assert f"file {path}" in result.output
    meta = json.loads((tmp_path / "runs" / "w" / "model" / "model.json").read_text())
    assert meta["pretrained_from"] == f"file {path}"


def test_pretrained_fit_freezes_then_fine_tunes(cli, tmp_path, monkeypatch, tiny_data):
    """With pretrained lite0: freeze_epochs head-only epochs, then epochs of the whole net."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "p.toml", "data/shapes",
                          model={"arch": "tf_efficientnet_lite0", "pretrained": True},
                          train={"epochs": 1, "freeze_epochs": 1})
    result = cli("fit", recipe, "--name", "p")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "p"
    results = pd.read_csv(run / "results.csv")
    assert list(results["phase"]) == ["frozen", "full"]
    assert list(results["epoch"]) == [0, 1]
    meta = json.loads((run / "model" / "model.json").read_text())
    assert "tf_efficientnet_lite0" in meta["pretrained_from"]
    assert meta["mean"] == [0.5, 0.5, 0.5]


def test_a_machines_first_pretrained_run_reproduces_the_next(cli, tmp_path, monkeypatch, tiny_data):
    """The first run converts the pip-shipped weights (building a randomly initialised timm
    model); the seed is set after that, so the same seed gives the same training both times."""
    import pandas as pd

    monkeypatch.setenv("CLFAPP_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "p.toml", "data/shapes",
                 model={"arch": "tf_efficientnet_lite0", "pretrained": True},
                 train={"epochs": 1, "freeze_epochs": 1})
    for name in ("first", "second"):
        result = cli("fit", "p.toml", "--name", name)
        assert result.exit_code == 0, result.output
    first, second = (pd.read_csv(tmp_path / "runs" / n / "results.csv") for n in ("first", "second"))
    cols = ["train_loss", "valid_loss", "accuracy"]
    assert first[cols].equals(second[cols]), (first, second)
