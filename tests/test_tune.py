"""clfapp tune: a search space refused before any training, a study interrupted and continued,
two workers sharing one SQLite study, the grid sampler, and best.toml through `fit`.

Trials are tiny from-scratch fits (test_resnet, 32 px, a few epochs); the interrupt and the two
workers run `clfapp tune` as real processes, since Ctrl-C and SQLite sharing are the point."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clfapp import config

from conftest import assert_usage_error, make_folder_dataset, write_recipe

CLFAPP = str(Path(sys.executable).with_name("clfapp"))


def tune_recipe(root: Path, space: str, **sections) -> Path:
    make_folder_dataset(root / "data" / "shapes", n_per_class=8)
    path = write_recipe(root / "tiny.toml", "data/shapes", **sections)
    path.write_text(path.read_text() + "\n[tune]\n" + space)
    return path


def load_study(root: Path, name: str = "tune-tiny"):
    import optuna
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'runs' / name / 'study.db'}")


SPACE = '"train.lr" = {low = 1e-3, high = 3e-2, log = true}\n"aug.max_rotate" = [0, 10]\n'


@pytest.mark.parametrize("space, words", [
    ('"train.lrr" = [1e-3, 1e-2]\n', ["train.lrr", "did you mean lr"]),
    ('"trian.lr" = [1e-3]\n', ["[trian]", "did you mean train"]),
    ('"aug.saturation" = [0.2, 1.5]\n', ["aug.saturation", "1.5"]),
    ('"data.valid_pct" = [0.1, 0.3]\n', ["data.valid_pct", "one split"]),
    ('"model.arch" = {low = 1, high = 2}\n', ["model.arch", "not numeric"]),
    ('"train.lr" = {low = 0, high = 1e-2, log = true}\n', ["train.lr", "low < high"]),
    ('"aug.mixup" = [0.0, 0.4]\n"aug.cutmix" = [0.0, 1.0]\n', ["combination", "choose one"]),
    ('trails = 5\n"train.lr" = [1e-3]\n', ["unknown [tune] setting 'trails'"]),
])
def test_a_bad_search_space_is_refused_before_any_training(cli, tmp_path, monkeypatch, space, words):
    monkeypatch.chdir(tmp_path)
    recipe = tune_recipe(tmp_path, space)
    result = cli(*["tune", str(recipe), "--trials", "2"])
    assert_usage_error(result, *words)
    assert not (tmp_path / "runs").exists(), "nothing trained, no study folder"


def test_grid_needs_lists_and_a_bad_flag_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tune_recipe(tmp_path, SPACE)
    assert_usage_error(cli(*["tune", str(recipe), "--sampler", "grid"]), "train.lr", "range")
    assert_usage_error(cli(*["tune", str(recipe), "--sampler", "bayes"]), "bayes", "tpe")
    assert_usage_error(cli(*["tune", str(recipe), "--budget", "soon"]), "soon")
    assert not (tmp_path / "runs").exists()


def _wait_for(predicate, seconds: float, what: str):
    end = time.time() + seconds
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # sends SIGINT mid-trial: timing-sensitive
def test_an_interrupted_study_continues_with_its_trials(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 12 epochs: a trial lasts long enough (a second or more) to be caught in its training
    recipe = tune_recipe(tmp_path, SPACE, train={"epochs": 12})
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # SIGINT back to its default in the child: a test suite started as a background job (`cmd &`
    # in a script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([CLFAPP, "tune", str(recipe), "--trials", "2", "--pruner", "none"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    study_dir = tmp_path / "runs" / "tune-tiny"

    def second_trial_training():
        return (study_dir / "trial-1" / "results.csv").is_file()
    try:
        _wait_for(second_trial_training, 240, "trial 1 to train")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "run the same command to continue" in out
    before = {t.number: t for t in load_study(tmp_path).trials}
    assert before[0].state.name == "COMPLETE"
    assert before[1].state.name == "FAIL" and before[1].user_attrs["stopped"] == "interrupted"
    assert (study_dir / "leaderboard.csv").is_file()

    result = cli(*["tune", str(recipe), "--trials", "2", "--pruner", "none"])
    assert result.exit_code == 0, result.output
    after = load_study(tmp_path).trials
    t0 = next(t for t in after if t.number == 0)
    assert (t0.state, t0.params, t0.value) == (before[0].state, before[0].params, before[0].value)
    done = [t for t in after if t.state.name == "COMPLETE"]
    assert len(done) == 2 and len(after) == 3, [(t.number, t.state.name) for t in after]
    retry = [t for t in after if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == before[1].params, "the cut-off point is tried again"
    assert "study tune-tiny holds 2 trials" in result.output


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two `clfapp tune` processes on one study (its SQLite file), 5 trials between them."""
    root = tmp_path_factory.mktemp("workers")
    recipe = tune_recipe(root, SPACE, train={"epochs": 3})
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [CLFAPP, "tune", str(recipe), "--trials", "5", "--sampler", "random", "--pruner", "none"]
    procs = [subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    return root, recipe, outs


@pytest.mark.slow  # two tune processes side by side
def test_two_workers_share_one_study_without_duplicates(two_workers):
    root, _, outs = two_workers
    trials = load_study(root).trials
    assert sorted(t.number for t in trials) == list(range(5)), "5 trials between them, no more"
    assert all(t.state.name == "COMPLETE" for t in trials)
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(points)) == 5, "no point trained twice"
    folders = sorted(p.name for p in (root / "runs" / "tune-tiny").glob("trial-*"))
    assert folders == [f"trial-{n}" for n in range(5)]
    assert len({t.user_attrs["pid"] for t in trials}) == 2, "both workers ran trials"
    board = (root / "runs" / "tune-tiny" / "leaderboard.csv").read_text().splitlines()
    assert board[0].startswith("trial,state,accuracy,") and len(board) == 6


@pytest.mark.slow  # needs two_workers' study: two tune processes side by side
def test_the_best_recipe_round_trips_through_fit(two_workers, cli, monkeypatch):
    root, _, _ = two_workers
    monkeypatch.chdir(root)
    study = load_study(root)
    best = root / "runs" / "tune-tiny" / "best.toml"
    assert f"trial {study.best_trial.number}" in best.read_text().splitlines()[0]
    cfg = config.load(best)
    assert cfg.recipe == "tiny-tuned"
    assert cfg.train.lr == pytest.approx(study.best_trial.params["train.lr"])
    assert cfg.aug.max_rotate == study.best_trial.params["aug.max_rotate"]
    result = cli(*["fit", str(best), "--name", "refit"])
    assert result.exit_code == 0, result.output
    assert config.from_file(root / "runs" / "refit" / "config.toml") == cfg
    # the refit trains what the trial trained: same config, seed and split
    trial_cfg = config.from_file(root / "runs" / "tune-tiny" / f"trial-{study.best_trial.number}" / "config.toml")
    assert config.to_dict(trial_cfg) | {"recipe": ""} == config.to_dict(cfg) | {"recipe": ""}
    for plot in ("optimization_history", "param_importances", "intermediate_values"):
        assert (root / "runs" / "tune-tiny" / "plots" / f"{plot}.png").stat().st_size > 1000


@pytest.mark.slow  # a whole grid of tiny fits
def test_grid_runs_every_point_once_and_pruning_stops_losers(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # lr 1e-6 cannot learn, 1e-2 separates the colours within 3 epochs. The grid's seeded order
    # puts (1e-2, flip) first: the median pruner's one startup trial sets the bar, and from
    # epoch 2 (warmup) a trial below it stops
    recipe = tune_recipe(tmp_path, '"train.lr" = [1e-6, 1e-2]\n"aug.flip" = [true, false]\n'
                         'sampler = "grid"\nstartup_trials = 1\nwarmup_epochs = 2\n',
                         train={"epochs": 5})
    result = cli(*["tune", str(recipe), "--keep", "2"])
    assert result.exit_code == 0, result.output
    study = load_study(tmp_path)
    trials = sorted(study.trials, key=lambda t: t.number)
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(trials) == 4 and len(points) == 4, "the 4 grid points, each once"
    assert trials[0].params == {"train.lr": 1e-2, "aug.flip": True} and trials[0].state.name == "COMPLETE"
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert any(t.params["train.lr"] == 1e-6 for t in pruned), [(t.params, t.state.name) for t in trials]
    assert all(3 <= t.user_attrs["epochs_run"] < 5 for t in pruned)
    assert "every grid point has run" in result.output or "holds 4 trials" in result.output
    assert "pruned" in result.output and "min of training saved" in result.output
    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    kept = sorted(p.name for p in (tmp_path / "runs" / "tune-tiny").glob("trial-*"))
    assert len(kept) == min(2, len(complete)) and f"trial-{study.best_trial.number}" in kept
