"""predict over many files: rows written and flushed batch by batch into OUT.part, renamed at
the end; --resume after an interruption gives each file once; --workers decodes in processes."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from clfapp.infer import predict as pr

from conftest import assert_usage_error, make_folder_dataset


@pytest.fixture
def setup(tmp_path, trained_run, monkeypatch):
    """(run copy, a folder of 30 images); cwd is tmp_path."""
    _, run = trained_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    monkeypatch.chdir(tmp_path)
    return mine, make_folder_dataset(tmp_path / "imgs", n_per_class=10, size=20)


def _interrupt_after(monkeypatch, batches: int, seen: list):
    """Ctrl-C while the model works on batch `batches + 1`; `seen` gets each part file's lines
    as they stand when each batch starts (what was flushed so far)."""
    real = pr.Predictor.forward
    count = [0]

    def forward(self, x, tta=False):
        count[0] += 1
        parts = list(__import__("pathlib").Path(".").rglob("*.part"))
        seen.append(len(parts[0].read_text().splitlines()) if parts else 0)
        if count[0] > batches:
            raise KeyboardInterrupt
        return real(self, x, tta)
    monkeypatch.setattr(pr.Predictor, "forward", forward)


def test_rows_are_flushed_per_batch_and_resume_gives_each_file_once(cli, setup, monkeypatch):
    run, imgs = setup
    full = cli("predict", run, imgs, "--out", "all.csv", "--bs", "4")
    assert full.exit_code == 0, full.output
    expected = pd.read_csv("all.csv")
    assert len(expected) == 30 and "written to all.csv" in full.output and "images/s" in full.output

    seen: list = []
    with monkeypatch.context() as m:
        _interrupt_after(m, 3, seen)
        r = cli("predict", run, imgs, "--out", "p.csv", "--bs", "4")
    assert r.exit_code == 130, r.output
    assert "--resume" in r.output
    # each batch's rows were on disk before the next batch ran: 1 header, then 4 rows a batch
    assert seen == [1, 5, 9, 13]
    from pathlib import Path
    assert not Path("p.csv").exists()           # never a file that looks finished
    part = pd.read_csv("p.csv.part")
    assert len(part) == 12

    r = cli("predict", run, imgs, "--out", "p.csv", "--bs", "4", "--resume")
    assert r.exit_code == 0, r.output
    assert "12 rows kept, 18 of 30 files left" in r.output
    got = pd.read_csv("p.csv")
    assert not Path("p.csv.part").exists()
    assert sorted(got["path"]) == sorted(expected["path"]) and got["path"].is_unique
    merged = got.merge(expected, on="path", suffixes=("", "_all"))
    assert (merged["label"] == merged["label_all"]).all()
    assert merged["probability"].sub(merged["probability_all"]).abs().max() < 1e-5

    # resuming a finished file classifies nothing and keeps it whole
    r = cli("predict", run, imgs, "--out", "p.csv", "--resume")
    assert r.exit_code == 0 and "0 of 30 files left" in r.output
    assert len(pd.read_csv("p.csv")) == 30


def test_resume_drops_a_row_cut_short_by_a_kill(cli, setup):
    run, imgs = setup
    assert cli("predict", run, imgs, "--out", "all.csv").exit_code == 0
    lines = open("all.csv").read().splitlines()
    # as a kill -9 in the middle of a write leaves it: 5 whole rows and half a row
    with open("p.csv.part", "w") as f:
        f.write("\n".join(lines[:6]) + "\n" + lines[6][: len(lines[6]) // 2])
    r = cli("predict", run, imgs, "--out", "p.csv", "--resume")
    assert r.exit_code == 0, r.output
    assert "5 rows kept, 25 of 30 files left" in r.output
    # no p.csv.meta.json beside it (an older clfapp's file): resumed, with a warning saying so
    assert "has no record of the model and options" in r.stderr
    got = pd.read_csv("p.csv")
    assert len(got) == 30 and got["path"].is_unique


def test_resume_without_out_continues_the_newest_predict_folder(cli, setup):
    run, imgs = setup
    assert cli("predict", run, imgs).exit_code == 0
    done = run / "predict-1" / "predictions.csv"
    full = pd.read_csv(done)
    full.iloc[:10].to_csv(done.with_name("predictions.csv.part"), index=False)
    done.unlink()
    r = cli("predict", run, imgs, "--resume")
    assert r.exit_code == 0, r.output
    assert "10 rows kept, 20 of 30 files left" in r.output
    assert len(pd.read_csv(done)) == 30 and not (run / "predict-2").exists()


def test_resume_mistakes_are_one_line(cli, setup):
    run, imgs = setup
    assert_usage_error(cli("predict", run, imgs, "--resume"), "--resume", "no earlier")
    assert_usage_error(cli("predict", run, imgs, "--resume", "--format", "json"), "--resume", "csv")
    assert cli("predict", run, imgs, "--out", "p.csv", "--top-k", "2").exit_code == 0
    assert_usage_error(cli("predict", run, imgs, "--out", "p.csv", "--resume"), "other columns")
    assert_usage_error(cli("predict", run, imgs, "--workers", "-1"), "--workers")


def test_workers_decode_in_processes_with_the_same_rows(cli, setup):
    run, imgs = setup
    (imgs / "blue" / "broken.png").write_bytes(b"not an image")
    a = cli("predict", run, imgs, "--out", "a.csv", "--bs", "4")
    b = cli("predict", run, imgs, "--out", "b.csv", "--bs", "4", "--workers", "2")
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert "1 unreadable image(s) skipped" in b.stderr
    pd.testing.assert_frame_equal(pd.read_csv("a.csv"), pd.read_csv("b.csv"))
    assert len(pd.read_csv("b.csv")) == 30


def test_json_output_is_unchanged(cli, setup):
    run, imgs = setup
    r = cli("predict", run, imgs, "--out", "p.json", "--format", "json", "--top-k", "2")
    assert r.exit_code == 0, r.output
    rows = pd.read_json("p.json")
    assert len(rows) == 30 and list(rows.columns)[:3] == ["path", "label", "probability"]


def _other_weights(run, target):
    """A copy of `run` whose model has other weights (one tensor nudged): another model."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, target)
    path = target / "model" / "weights.safetensors"
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 0.01 * torch.ones_like(tensors[name])
    save_file(tensors, str(path))
    return target


def test_resume_refuses_rows_another_model_or_tta_wrote(cli, setup):
    """Issue 24.8: `predict --resume` refuses a CSV written by another model or TTA setting,
    in one line naming what differs, and leaves the file as it was."""
    from pathlib import Path

    run, imgs = setup
    assert cli("predict", run, imgs, "--out", "p.csv", "--no-tta").exit_code == 0
    full = pd.read_csv("p.csv")
    full.iloc[:10].to_csv("p.csv.part", index=False)   # as an interrupted run leaves it
    Path("p.csv").unlink()
    part = Path("p.csv.part").read_text()

    line = assert_usage_error(cli("predict", run, imgs, "--out", "p.csv", "--tta", "--resume"),
                              "--resume", "TTA off (now TTA on (2 views))")
    assert "another model" not in line
    assert Path("p.csv.part").read_text() == part and not Path("p.csv").exists()

    other = _other_weights(run, Path("other"))
    line = assert_usage_error(cli("predict", other, imgs, "--out", "p.csv", "--no-tta",
                                  "--resume"), "--resume", "another model", str(run.resolve()))
    assert "TTA" not in line and Path("p.csv.part").read_text() == part

    # the same model moved elsewhere (same weights) and the same options: resumed
    shutil.copytree(run, "moved")
    r = cli("predict", "moved", imgs, "--out", "p.csv", "--no-tta", "--resume")
    assert r.exit_code == 0, r.output
    assert "10 rows kept, 20 of 30 files left" in r.output
    assert len(pd.read_csv("p.csv")) == 30
    # a finished file is refused the same way, and stays finished
    assert_usage_error(cli("predict", run, imgs, "--out", "p.csv", "--tta", "--resume"), "TTA off")
    assert Path("p.csv").is_file() and not Path("p.csv.part").exists()
    assert Path("p.csv.meta.json").is_file()   # the record stays beside the finished file


def test_resume_refuses_rows_other_thresholds_wrote(cli, setup):
    """Multi-label: rows decided under other thresholds (--threshold, or the model's tuned
    ones changed by `clfapp thresholds`) are not resumed."""
    from pathlib import Path

    from clfapp.infer import bundle

    run, imgs = setup
    meta = bundle.read_meta(run)
    meta.multi_label, meta.inference.thresholds = True, [0.5] * len(meta.classes)
    bundle.write_meta(run, meta)   # the same net read as multi-label (sigmoid per class)
    assert cli("predict", run, imgs, "--out", "p.csv").exit_code == 0
    assert_usage_error(cli("predict", run, imgs, "--out", "p.csv", "--threshold", "0.3", "--resume"),
                       "--resume", "thresholds [0.5, 0.5, 0.5] (now [0.3, 0.3, 0.3])")
    meta.inference.thresholds = [0.4] * len(meta.classes)
    bundle.write_meta(run, meta)
    assert_usage_error(cli("predict", run, imgs, "--out", "p.csv", "--resume"),
                       "thresholds [0.5, 0.5, 0.5] (now [0.4, 0.4, 0.4])")
    assert Path("p.csv").is_file()
    r = cli("predict", run, imgs, "--out", "p.csv", "--threshold", "0.5", "--resume")
    assert r.exit_code == 0 and "0 of 30 files left" in r.output, r.output
