"""Nothing clfapp reads runs code: a planted pickle whose payload creates a marker file is
handed to every command that takes a model or weights path; each refuses it (exit 2, a line
saying why) and the marker never appears. Also: two runs started at once never share a folder.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import assert_usage_error, write_recipe


class _Payload:
    """Unpickling this calls os.system("touch MARKER")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def planted(tmp_path):
    """Malicious files: evil.pkl (plain pickle), evil.pth (torch.save zip with the payload in
    a state_dict), a run folder holding only a fastai-style export.pkl, and a run folder whose
    weights.safetensors is that pickle renamed. Returns (files, marker)."""
    import torch

    marker = tmp_path / "PWNED"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, tmp_path / "evil.pth")
    (tmp_path / "evil-noext").write_bytes(pickle.dumps(_Payload(marker)))
    fastai_run = tmp_path / "fastai-run" / "model"
    fastai_run.mkdir(parents=True)
    shutil.copy(tmp_path / "evil.pkl", fastai_run / "export.pkl")
    disguised = tmp_path / "disguised" / "model"
    disguised.mkdir(parents=True)
    shutil.copy(tmp_path / "evil.pkl", disguised / "weights.safetensors")
    (disguised / "model.json").write_text('{"arch": "test_resnet", "classes": ["a", "b"], "size": 32, '
                                          '"resize": "squish", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}')
    return tmp_path, marker


def test_the_planted_payload_is_live(planted, tmp_path):
    """Loading the plant the unsafe way does create the marker: the refusals below are real."""
    folder, _ = planted
    live = tmp_path / "LIVE"
    (folder / "live.pkl").write_bytes(pickle.dumps(_Payload(live)))
    code = f"import pickle; pickle.load(open({str(folder / 'live.pkl')!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert live.exists()


def _commands(folder: Path, run: Path, data: Path):
    """(command line, fragments of the refusal) for every command that takes a model path."""
    pkl, pth, noext = folder / "evil.pkl", folder / "evil.pth", folder / "evil-noext"
    fastai_run, disguised = folder / "fastai-run", folder / "disguised"
    cases = []
    for model in (pkl, pth, noext):
        cases += [
            (["predict", model, data], ["pickle", "never loads pickled models"]),
            (["evaluate", model], ["pickle", "never loads"]),
            (["export", model], ["pickle"]),
            (["thresholds", model], ["pickle"]),
            (["compare", run, model], ["pickle"]),
            (["ensemble", run, model], ["pickle"]),
            (["distill", model, "--arch", "test_resnet", "--no-pretrained"], ["teacher", "pickle"]),
        ]
    for model in (fastai_run, fastai_run / "model"):
        cases += [(["predict", model, data], ["export.pkl", "never loads pickled models"]),
                  (["evaluate", model], ["export.pkl"]),
                  (["distill", model, "--arch", "test_resnet"], ["export.pkl"])]
    cases += [(["predict", disguised, data], ["does not match model.json"]),
              (["evaluate", disguised], ["does not match model.json"])]
    for weights in (pkl, pth, noext):
        cases.append((["fit", "tiny.toml", "--pretrained", "--arch", "resnet18", "--weights", weights],
                      ["weights file", "pickled Python objects"]))
    return cases


def test_every_model_path_refuses_a_pickle_and_never_runs_it(cli, planted, trained_run, monkeypatch):
    folder, marker = planted
    work, run = trained_run
    monkeypatch.chdir(folder)
    shutil.copytree(work / "data", folder / "data")
    write_recipe(folder / "tiny.toml", "data/shapes")
    cases = _commands(folder, run, folder / "data" / "shapes")
    assert len(cases) >= 30
    for args, fragments in cases:
        result = cli(*args)
        assert_usage_error(result, *fragments)
        assert not marker.exists(), f"the payload ran during {args}"
    assert not (folder / "runs").exists() or not any((folder / "runs").iterdir())


def test_weights_only_is_what_stops_the_torch_payload(planted):
    """read_state_dict itself (not a suffix check) refuses a .pth whose pickle holds code."""
    from clfapp.errors import UsageError
    from clfapp.models.weights import read_state_dict

    folder, marker = planted
    (folder / "renamed.safe").write_bytes((folder / "evil.pth").read_bytes())
    with pytest.raises(UsageError, match="pickled Python objects"):
        read_state_dict(folder / "renamed.safe")
    assert not marker.exists()


def test_a_plain_state_dict_still_loads(tmp_path):
    import torch

    from clfapp.models.weights import read_state_dict

    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "ok.pth")
    assert torch.equal(read_state_dict(tmp_path / "ok.pth")["w"], torch.ones(3))


# --- two runs at once -----------------------------------------------------------------------

def _take_folders(parent: str, n: int, queue) -> None:
    from clfapp.models import runs
    queue.put([runs.new_folder(Path(parent), "tiny").name for _ in range(n)])


def test_runs_started_at_once_never_share_a_folder(tmp_path):
    from clfapp.models import runs

    # threads, released together
    barrier = threading.Barrier(8)
    got, lock = [], threading.Lock()

    def take():
        barrier.wait()
        name = runs.new_folder(tmp_path / "t", "tiny").name
        with lock:
            got.append(name)
    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(f"tiny-{i}" for i in range(1, 9))

    # processes
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_take_folders, args=(str(tmp_path / "p"), 15, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    names = [n for _ in procs for n in queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert len(names) == 45 and len(set(names)) == 45


def test_two_runs_given_one_name_one_is_refused(tmp_path):
    from clfapp.errors import UsageError
    from clfapp.models import runs

    barrier = threading.Barrier(2)
    outcome = []

    def take():
        barrier.wait()
        try:
            outcome.append(runs.new_folder(tmp_path, "x", "same"))
        except UsageError as e:
            outcome.append(e)
    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(o, Path) for o in outcome) == 1
    assert sum(isinstance(o, UsageError) and "already exists" in str(o) for o in outcome) == 1
