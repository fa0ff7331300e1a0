"""losses.py: the registry, class weights (auto from the training split, or a list), focal's
alpha, label smoothing with weights; each value checked against a hand computation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clfapp import config
from clfapp.config import CHOICES, LossConfig
from clfapp.errors import UsageError
from clfapp.models import losses

from conftest import assert_usage_error, make_folder_dataset, write_recipe

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.5, -0.5, 1.5]])
TARGET = torch.tensor([0, 2, 1, 2])
W = [1.0, 2.0, 4.0]


def _logp(i: int, c: int) -> float:
    """log softmax of LOGITS[i] at c, by hand."""
    row = [float(x) for x in LOGITS[i]]
    return row[c] - math.log(sum(math.exp(x) for x in row))


def _make(name: str, **kw):
    return losses.make(LossConfig(name=name, **kw), multi_label=False, n_classes=3)


def _imbalanced(root):
    """train/ 12 blue, 6 green, 3 red; valid/ 2 of each: the training counts differ from the
    whole dataset's (14/8/5), so weights from the wrong split would show."""
    for name, n in (("blue", 12), ("green", 6), ("red", 3)):
        make_folder_dataset(root / "train", n, [name])
        make_folder_dataset(root / "valid", 2, [name])
    return root


def test_registry_and_config_choices_agree():
    assert set(CHOICES[("loss", "name")]) == {"auto", *losses.LOSSES}


def test_unknown_loss_name_is_refused_with_close_matches(tmp_path):
    with pytest.raises(UsageError, match="did you mean focal"):
        config.load(write_recipe(tmp_path / "r.toml"), config.parse_set(["loss.name=focall"]))
    with pytest.raises(UsageError, match="did you mean focal"):
        _make("focall")


def test_weighted_cross_entropy_equals_a_hand_computation():
    loss = _make("cross_entropy", class_weights="1,2,4")
    num = sum(W[c] * -_logp(i, c) for i, c in enumerate(TARGET.tolist()))
    den = sum(W[c] for c in TARGET.tolist())
    assert loss(LOGITS, TARGET).item() == pytest.approx(num / den, rel=1e-6)
    plain = sum(-_logp(i, c) for i, c in enumerate(TARGET.tolist())) / 4
    assert _make("cross_entropy")(LOGITS, TARGET).item() == pytest.approx(plain, rel=1e-6)
    assert abs(num / den - plain) > 1e-3   # the weights change the value


@pytest.mark.parametrize("weights", [None, "1,2,4"])
def test_focal_alpha_and_gamma_equal_a_hand_computation(weights):
    gamma, alpha = 2.0, 0.25
    loss = _make("focal", gamma=gamma, alpha=alpha, class_weights=weights or "")
    w = W if weights else [1.0, 1.0, 1.0]
    terms = []
    for i, c in enumerate(TARGET.tolist()):
        p = math.exp(_logp(i, c))
        terms.append((w[c], alpha * (1 - p) ** gamma * -math.log(p)))
    expected = sum(wi * t for wi, t in terms) / sum(wi for wi, _ in terms)
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_focal_without_alpha_and_weights_is_fastais_focal_loss():
    from fastai.losses import FocalLossFlat
    ours = _make("focal", gamma=1.5)(LOGITS, TARGET)
    assert ours.item() == pytest.approx(FocalLossFlat(gamma=1.5)(LOGITS, TARGET).item(), rel=1e-6)


def test_focal_bce_alpha_weighs_positives_alpha_and_negatives_one_minus_alpha():
    logits, target = torch.tensor([[1.0, -2.0], [0.5, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = losses.make(LossConfig(name="focal_bce", gamma=2.0, alpha=0.25), multi_label=True)
    terms = []
    for z, y in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1 / (1 + math.exp(-z))
        p_t = p if y else 1 - p
        terms.append((0.25 if y else 0.75) * (1 - p_t) ** 2 * -math.log(p_t))
    assert loss(logits, target).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_label_smoothing_with_weights_equals_a_hand_computation():
    eps = 0.1
    loss = _make("label_smoothing", smoothing=eps, class_weights="1,2,4")
    uniform = sum(-sum(_logp(i, c) for c in range(3)) for i in range(4)) / 4
    nll = (sum(W[c] * -_logp(i, c) for i, c in enumerate(TARGET.tolist()))
           / sum(W[c] for c in TARGET.tolist()))
    expected = eps / 3 * uniform + (1 - eps) * nll
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    from fastai.losses import LabelSmoothingCrossEntropyFlat
    plain = _make("label_smoothing", smoothing=eps)(LOGITS, TARGET).item()
    assert plain == pytest.approx(LabelSmoothingCrossEntropyFlat(eps=eps)(LOGITS, TARGET).item(),
                                  rel=1e-6)


@pytest.mark.parametrize("name", ["cross_entropy", "label_smoothing", "focal"])
def test_class_weights_are_a_buffer_that_moves_with_the_loss(name):
    """The Learner moves the loss to the data's device (loss_func.to); a weight that is not a
    buffer (fastai's label smoothing and focal keep a plain attribute) would stay on the CPU."""
    loss = _make(name, class_weights="1,2,4")
    assert "weight" in dict(loss.func.named_buffers())
    assert losses.class_weights_of(loss).tolist() == W


def test_auto_class_weights_are_max_over_n_of_the_training_counts():
    y = np.array([0] * 12 + [1] * 6 + [2] * 3)
    assert losses.class_weights("auto", y, 3).tolist() == [1.0, 2.0, 4.0]
    assert losses.class_weights("auto", np.array([0, 0, 1]), 3).tolist() == [1.0, 2.0, 2.0]


def test_weights_for_the_wrong_kind_of_data_are_refused():
    with pytest.raises(UsageError, match="pos_weight"):
        losses.make(LossConfig(class_weights="auto"), multi_label=True, y_train=np.ones((4, 2)))
    with pytest.raises(UsageError, match="class_weights"):
        losses.make(LossConfig(pos_weight="auto"), multi_label=False, y_train=np.zeros(4), n_classes=2)
    with pytest.raises(UsageError, match="alpha"):
        _make("cross_entropy", alpha=0.5)


def test_prepare_gives_the_loss_auto_weights_of_the_training_split(tmp_path, capsys):
    from clfapp import train

    _imbalanced(tmp_path / "data" / "imb")
    cfg = config.load(write_recipe(tmp_path / "r.toml", tmp_path / "data" / "imb"),
                      config.parse_set(["loss.class_weights=auto", "loss.name=label_smoothing"]))
    (tmp_path / "run").mkdir()
    prep = train.prepare(cfg, tmp_path / "run")
    assert list(prep.dataset.classes) == ["blue", "green", "red"]
    assert losses.class_weights_of(prep.learn.loss_func).tolist() == [1.0, 2.0, 4.0]
    assert prep.class_weights == {"blue": 1.0, "green": 2.0, "red": 4.0}
    assert "class weights = max(n)/n_c of the training split: blue 1, green 2, red 4" in capsys.readouterr().out


def test_fit_with_auto_class_weights_prints_and_records_them(tmp_path, cli, monkeypatch):
    _imbalanced(tmp_path / "data" / "imb")
    write_recipe(tmp_path / "r.toml", "data/imb")
    monkeypatch.chdir(tmp_path)
    result = cli("fit", "r.toml", "--set", "loss.class_weights=auto", "--name", "cw")
    assert result.exit_code == 0, result.output
    assert [ln for ln in result.output.splitlines() if ln.startswith("class weights")] == [
        "class weights = max(n)/n_c of the training split: blue 1, green 2, red 4"]
    m = json.loads((tmp_path / "runs" / "cw" / "metrics.json").read_text())
    assert m["class_weights"] == {"blue": 1.0, "green": 2.0, "red": 4.0}


@pytest.mark.parametrize("spec, fragment", [
    ("1,2", "loss.class_weights has 2 values for 3 classes"),
    ("1,x,2", "loss.class_weights = '1,x,2'"),
])
def test_a_bad_class_weight_list_is_one_usage_error_line(tmp_path, cli, tiny_data, monkeypatch, spec, fragment):
    write_recipe(tmp_path / "r.toml", "data/shapes")
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", "r.toml", "--set", f"loss.class_weights={spec}"), fragment)
