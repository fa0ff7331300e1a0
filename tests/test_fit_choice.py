"""The end of fit chooses the shipped configuration (input size, TTA) by measuring the kept
epoch on validation, in fp32 as the bundle runs (infer/choice.py); the formula and aug.tta only
propose candidates. Issue 24, point 2: the automatic test size was a formula never checked on
validation (on two small folders it cost 6-10 points), and tune's objective and `--full`'s
final model did not follow what the estimate shipped."""
import json

import numpy as np
import pytest

from clfapp.infer import choice

from conftest import make_folder_dataset, make_stripes_multilabel, write_recipe


# --- the choice on constructed probabilities ---------------------------------------------------

def _onehot(pred, n=3, p=0.8):
    out = np.full((len(pred), n), (1 - p) / (n - 1), dtype=np.float32)
    out[np.arange(len(pred)), pred] = p
    return out


def _wrong_first(y, k):
    """Predictions with the first k images wrong."""
    return np.where(np.arange(len(y)) < k, (y + 1) % 3, y)


def test_a_confidently_better_candidate_replaces_the_proposal():
    y = np.arange(60) % 3
    probs = {(32, False): _onehot(y),                       # 60/60
             (64, False): _onehot(_wrong_first(y, 18)),     # 42/60
             (32, True): _onehot(_wrong_first(y, 6)),       # 54/60
             (64, True): _onehot(_wrong_first(y, 12))}      # 48/60: the proposal
    views = {k: 2 if k[1] else 1 for k in probs}
    c = choice.choose(probs, y, False, views, formula=(64, True))
    assert (c.size, c.tta) == (32, False)
    np.testing.assert_array_equal(c.probs, probs[(32, False)])
    rec = c.record
    assert rec["metric"] == "accuracy" and rec["chosen"]["accuracy"] == 1.0
    assert (rec["formula"]["size"], rec["formula"]["tta"], rec["formula"]["accuracy"]) == (64, True, 0.8)
    assert rec["chosen"]["p_better"] == 1.0 and rec["formula"].get("p_better") is None
    assert next(r for r in rec["candidates"] if r["size"] == 64 and not r["tta"])["p_better"] == 0.0
    text = "\n".join(choice.lines(rec, 60))
    assert "32 px, no TTA, accuracy 1.0000" in text and "the proposal (64 px, TTA (2 views)" in text
    assert "0.8000" in text and "100% of paired bootstrap resamples" in text


def test_a_gain_within_the_noise_keeps_the_proposal():
    """Reproduced by bench/inference_choice.py: on 45 validation images no TTA scored 3 images
    higher than the proposal (TTA), and 3 lower on the 67 held-out ones; the plain maximum
    shipped it."""
    y = np.arange(45) % 3
    proposal = _onehot(np.where(np.isin(np.arange(45), [0, 1, 2, 3, 4, 5, 6, 7]), (y + 1) % 3, y))
    other = _onehot(np.where(np.isin(np.arange(45), [0, 1, 2, 3, 40]), (y + 1) % 3, y))  # 3 more right
    c = choice.choose({(32, True): proposal, (32, False): other}, y, False,
                      {(32, True): 2, (32, False): 1}, formula=(32, True))
    assert (c.size, c.tta) == (32, True)
    assert 0.5 < c.record["candidates"][1]["p_better"] < choice.CONFIDENCE
    assert "no candidate scored higher in 95%" in "\n".join(choice.lines(c.record, 45))


def test_among_confident_winners_the_lower_log_loss_then_the_cheaper():
    y = np.arange(60) % 3
    poor = _onehot(_wrong_first(y, 20))
    sure, unsure = _onehot(y, p=0.9), _onehot(y, p=0.5)
    c = choice.choose({(32, False): unsure, (64, True): sure, (48, False): poor}, y, False,
                      {(32, False): 1, (64, True): 2, (48, False): 1}, formula=(48, False))
    assert (c.size, c.tta) == (64, True)   # same accuracy, lower log loss
    c = choice.choose({(32, True): sure, (64, False): sure.copy(), (32, False): sure.copy(),
                       (48, False): poor}, y, False,
                      {(32, True): 2, (64, False): 1, (32, False): 1, (48, False): 1},
                      formula=(48, False))
    assert (c.size, c.tta) == (32, False)  # all equal: fewer views, then the smaller size


def test_multi_label_candidates_are_scored_at_their_own_thresholds():
    rng = np.random.default_rng(0)
    y = rng.random((40, 3)) < 0.5
    # low but perfectly ranked: at its own thresholds (0.3) F1 = 1, at 0.5 nothing is predicted
    low = np.where(y, 0.35, 0.1).astype(np.float32)
    noisy = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, 0.25, y.shape), 0, 1).astype(np.float32)
    c = choice.choose({(32, False): noisy, (48, False): low}, y, True,
                      {(32, False): 1, (48, False): 1}, formula=(32, False), metric="f1_micro",
                      classes=["a", "b", "c"])
    assert (c.size, c.tta) == (48, False)
    assert c.record["chosen"]["f1_micro"] == 1.0 and c.record["metric"] == "f1_micro"
    assert 0.1 < c.search.thresholds[0] <= 0.35 and c.record["chosen"]["thresholds"] == c.search.thresholds
    assert c.record["formula"]["f1_micro"] < 1.0 and c.record["formula"]["map"] is not None


def test_candidates_follow_the_config():
    assert choice.candidates(32, 64, False, True, ["horizontal"]) == [
        (32, False), (64, False), (32, True), (64, True)]
    assert choice.candidates(32, 48, True, True, ["horizontal"]) == [(48, False), (48, True)]
    assert choice.candidates(32, 64, False, False, ["horizontal"]) == [(32, False), (64, False)]
    assert choice.candidates(32, 64, False, True, []) == [(32, False), (64, False)]   # no mirror
    assert choice.candidates(32, 32, False, False, []) == [(32, False)]


# --- fit ----------------------------------------------------------------------------------------

AUTO = dict(data={"size": 32}, aug={"min_scale": 0.08, "tta": True})
"""x1.62 crops: the formula proposes 64 px, and TTA (horizontal flips): four candidates."""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    work = tmp_path_factory.mktemp("fit-choice")
    make_folder_dataset(work / "data" / "shapes", n_per_class=10)
    write_recipe(work / "auto.toml", "data/shapes", train={"epochs": 2}, **AUTO)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        result = CliRunner().invoke(app, ["fit", "auto.toml", "--name", "auto"])
    assert result.exit_code == 0, result.output
    return work


def test_fit_measures_every_candidate_and_ships_the_one_it_records(work, cli, monkeypatch):
    run = work / "runs" / "auto"
    m = json.loads((run / "metrics.json").read_text())
    rec = m["inference"]
    got = {(r["size"], r["tta"]): r for r in rec["candidates"]}
    print("candidates (size, tta): accuracy, log loss:",
          {k: (r["accuracy"], round(r["log_loss"], 4)) for k, r in got.items()})
    assert set(got) == {(32, False), (64, False), (32, True), (64, True)}
    assert (rec["formula"]["size"], rec["formula"]["tta"]) == (64, True)
    proposal = got[(64, True)]
    confident = [r for r in rec["candidates"] if r.get("p_better", 0) >= choice.CONFIDENCE]
    best = max(confident, key=lambda r: (round(r["accuracy"], 4), round(-r["log_loss"], 4),
                                         -r["views"], -r["size"])) if confident else proposal
    assert rec["chosen"] == best and rec["chosen_by"] == "measurement"
    spec = json.loads((run / "model" / "model.json").read_text())["inference"]
    assert (spec["size"], spec["tta"], spec["chosen_by"]) == (best["size"], best["tta"], "measurement")
    assert m["accuracy"] == best["accuracy"]        # the headline is the shipped configuration's
    report = (run / "report.md").read_text()
    assert "Shipped configuration, measured on the validation split" in report
    assert "| 64 | yes | 2 |" in report
    # the model as shipped, measured afterwards by evaluate, gives the recorded figure
    monkeypatch.chdir(work)
    result = cli("evaluate", "runs/auto")
    assert result.exit_code == 0, result.output
    assert f"accuracy {best['accuracy']:.4f}" in result.output, result.output


def test_a_measurement_overrules_the_formula(tmp_path, tiny_data, cli, monkeypatch):
    """The formula proposes 64 px with TTA; validation says 32 px without: 32 px is shipped."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "t.toml", "data/shapes", **AUTO)

    def rigged(predictor, pixels, options):
        assert sorted(options) == [(32, False), (32, True), (64, False), (64, True)]
        # the truth from the colours: blue, green, red (classes in order) are channels 2, 1, 0
        y = 2 - pixels[32].reshape(len(pixels[32]), -1, 3).mean(axis=1).argmax(axis=1)
        return {k: _onehot(y if k == (32, False) else (y + 1) % 3) for k in options}
    monkeypatch.setattr(choice, "measured", rigged)
    result = cli("fit", "t.toml", "--name", "r")
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "runs" / "r" / "model" / "model.json").read_text())["inference"]
    assert (spec["size"], spec["tta"]) == (32, False)
    rec = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())["inference"]
    assert rec["chosen"]["accuracy"] == 1.0 and rec["formula"]["accuracy"] == 0.0
    assert "shipped configuration, measured on validation: 32 px, no TTA" in result.output


def test_an_explicit_test_size_is_the_only_size_and_tta_false_is_never_tta(tmp_path, tiny_data,
                                                                            cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "a.toml", "data/shapes", data={"test_size": 48}, aug={"tta": True})
    write_recipe(tmp_path / "b.toml", "data/shapes", aug={"min_scale": 0.08, "tta": False})
    for recipe, name in (("a.toml", "fixed"), ("b.toml", "notta")):
        result = cli("fit", recipe, "--name", name)
        assert result.exit_code == 0, result.output
    fixed = json.loads((tmp_path / "runs" / "fixed" / "metrics.json").read_text())["inference"]
    assert {(r["size"], r["tta"]) for r in fixed["candidates"]} == {(48, False), (48, True)}
    spec = json.loads((tmp_path / "runs" / "fixed" / "model" / "model.json").read_text())["inference"]
    assert spec["size"] == 48
    notta = json.loads((tmp_path / "runs" / "notta" / "metrics.json").read_text())["inference"]
    assert {(r["size"], r["tta"]) for r in notta["candidates"]} == {(32, False), (64, False)}
    spec = json.loads((tmp_path / "runs" / "notta" / "model" / "model.json").read_text())["inference"]
    assert spec["tta"] is False and spec["chosen_by"] == "measurement"


def test_a_multi_label_run_ships_the_thresholds_of_its_chosen_configuration(tmp_path, cli,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_stripes_multilabel(tmp_path / "data" / "multi")
    write_recipe(tmp_path / "m.toml", "data/multi", data={"labels": "csv:labels.csv"},
                 aug={"min_scale": 0.08, "tta": True})
    result = cli("fit", "m.toml", "--name", "m")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "m"
    m = json.loads((run / "metrics.json").read_text())
    rec, spec = m["inference"], json.loads((run / "model" / "model.json").read_text())["inference"]
    print("multi-label candidates:", [(r["size"], r["tta"], round(r["f1_micro"], 4))
                                      for r in rec["candidates"]])
    assert len(rec["candidates"]) == 4 and rec["metric"] == "f1_micro"
    assert (spec["size"], spec["tta"]) == (rec["chosen"]["size"], rec["chosen"]["tta"])
    assert spec["thresholds"] == rec["chosen"]["thresholds"]
    assert spec["thresholds_under"]["conditions"]["size"] == spec["size"]
    assert m["f1_micro"] == pytest.approx(rec["chosen"]["f1_micro"])
    result = cli("evaluate", "runs/m")
    assert result.exit_code == 0, result.output
    assert f"f1_micro {rec['chosen']['f1_micro']:.4f}" in result.output, result.output


# --- the budget ----------------------------------------------------------------------------------

def test_the_budget_reserves_for_every_candidate():
    from clfapp.train import budget
    plain = budget.reserve_seconds(0.01, 100, views=2, pixel_ratio=4.0) - budget.END_FIXED_S
    chosen = budget.reserve_seconds(0.01, 100, views=2, pixel_ratio=4.0, n_choice_items=80,
                                    other_ratios=1.0) - budget.END_FIXED_S
    # the 80 validation images also run in both views at the other size (ratio 1)
    assert chosen - plain == pytest.approx(0.01 * 2 * 80 * 1.0)


def test_fit_plans_the_budget_with_the_candidates(tmp_path, tiny_data, cli, monkeypatch):
    from clfapp.errors import UsageError
    from clfapp.train import budget
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise UsageError("planned")
    monkeypatch.setattr(budget, "plan", spy)
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "t.toml", "data/shapes", **AUTO)
    result = cli("fit", "t.toml", "--budget", "10m")
    assert result.exit_code == 2 and "planned" in result.output
    assert seen["views"] == 2 and seen["pixel_ratio"] == 4.0
    assert seen["n_choice_items"] > 0 and seen["other_ratios"] == 1.0


# --- --full and tune --------------------------------------------------------------------------------

def test_full_ships_the_weights_average_as_the_estimate_did(tmp_path, tiny_data, cli, monkeypatch):
    """train.ema: the estimate validates and ships the moving average; --full's final model
    must too (it shipped the last epoch's raw weights)."""
    import torch
    from safetensors.torch import load_file

    from clfapp.models import callbacks
    made = []

    class Recorded(callbacks.WeightEMA):
        def __init__(self, decay):
            super().__init__(decay)
            made.append(self)
    monkeypatch.setattr(callbacks, "WeightEMA", Recorded)
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "t.toml", "data/shapes", train={"epochs": 2, "ema": 0.9})
    result = cli("fit", "t.toml", "--name", "f", "--full")
    assert result.exit_code == 0, result.output
    assert len(made) == 2, "the estimate's average and the final training's"
    shipped = load_file(str(tmp_path / "runs" / "f" / "model" / "weights.safetensors"))
    average = made[-1].ema.module.state_dict()
    assert all(torch.equal(shipped[k], average[k].float()) for k in shipped if k in average)
    # and the estimate's chosen size and TTA come along
    final, estimate = (json.loads((tmp_path / "runs" / "f" / d / "model.json").read_text())["inference"]
                       for d in ("model", "model-valid"))
    assert {k: v for k, v in final.items() if k != "trained_on"} == \
        {k: v for k, v in estimate.items() if k != "trained_on"}


def test_tunes_objective_is_the_shipped_figure(tmp_path, cli, monkeypatch):
    """A finished trial reports its model as shipped (metrics.json's validation figure at the
    chosen configuration), not its best epoch's per-epoch figure."""
    import optuna
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=8)
    recipe = write_recipe(tmp_path / "tiny.toml", "data/shapes", train={"epochs": 2}, **AUTO)
    recipe.write_text(recipe.read_text() + '\n[tune]\n"train.lr" = [1e-2]\n')

    def rigged(predictor, pixels, options):   # every candidate says class 0: a known figure
        n = len(next(iter(pixels.values())))
        return {k: _onehot(np.zeros(n, dtype=int)) for k in options}
    monkeypatch.setattr(choice, "measured", rigged)
    result = cli("tune", str(recipe), "--trials", "1", "--pruner", "none")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tune-tiny",
                              storage=f"sqlite:///{tmp_path / 'runs' / 'tune-tiny' / 'study.db'}")
    trial = study.trials[0]
    m = json.loads((tmp_path / "runs" / "tune-tiny" / "trial-0" / "metrics.json").read_text())
    print("trial value", trial.value, "shipped", m["accuracy"], "best epoch's",
          trial.user_attrs["value_at_best_epoch"])
    assert trial.value == m["accuracy"] == m["inference"]["chosen"]["accuracy"]
    assert trial.value != trial.user_attrs["value_at_best_epoch"]
