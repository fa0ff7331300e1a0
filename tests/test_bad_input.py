"""Bad input, everywhere: each case is refused with one line `error: ...` naming the problem,
exit code 2, no traceback, and nothing left behind (no run folder, no predict-N, no half-written
file): the files under the working folder (and the run used) are the same before and after.

Cases that are not refusals (odd but valid images, a class of one image, files missing from a
label CSV) are accepted with a warning and checked at the end.
"""
from __future__ import annotations

import errno
import io
import json
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import COLOURS, assert_usage_error, make_folder_dataset, make_image, write_recipe


def _files(*roots) -> set:
    return {(str(r), str(p.relative_to(r))) for r in roots for p in pathlib.Path(r).rglob("*")}


@pytest.fixture
def work(tmp_path, monkeypatch, tiny_data):
    """cwd = tmp_path: data/shapes (3 colours x 10 images) and tiny.toml (from scratch)."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    return tmp_path


def _csv_dataset(work, name: str, text: str | bytes) -> str:
    """A label CSV beside data/shapes' images (fnames like red/red_00.png)."""
    path = work / "data" / "shapes" / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _rows(n=4, label=True):
    return "".join(f"{c}/{c}_{i:02d}.png,{c if label else ''}\n" for c in COLOURS for i in range(n))


# --- fit: each (args after `fit`, or a setup(work) returning them; fragments of the message) ---

def _unknown_section(work):
    (work / "typo.toml").write_text('[data]\npath = "data/shapes"\n[trian]\nepochs = 1\n')
    return ["typo.toml"]


def _bad_toml(work):
    (work / "bad.toml").write_text("[data\npath = 'x'\n")
    return ["bad.toml"]


def _name_taken(work):
    (work / "runs" / "taken").mkdir(parents=True)
    return ["tiny.toml", "--name", "taken"]


def _csv(text):
    return lambda work: ["tiny.toml", "--data", _csv_dataset(work, "labels.csv", text)]


def _empty_folder(work):
    (work / "empty").mkdir()
    return ["tiny.toml", "--data", "empty"]


def _single_class(work):
    make_folder_dataset(work / "one", n_per_class=3, classes=["red"])
    return ["tiny.toml", "--data", "one"]


def _one_image_per_class(work):
    make_folder_dataset(work / "ones", n_per_class=1)
    return ["tiny.toml", "--data", "ones"]


def _text_file(work):
    (work / "notes.txt").write_text("hello")
    return ["tiny.toml", "--data", "notes.txt"]


def _runs_is_a_file(work):
    (work / "runs").write_text("not a folder")
    return ["tiny.toml"]


def _missing_label_file(work):
    return ["tiny.toml", "--set", "data.labels=csv:nope.csv"]


def _bad_regex(work):
    return ["tiny.toml", "--set", "data.labels=name:(unclosed"]


def _test_pct_with_folders(work):
    make_folder_dataset(work / "split" / "train", n_per_class=3)
    make_folder_dataset(work / "split" / "valid", n_per_class=2)
    return ["tiny.toml", "--data", "split", "--set", "data.test_pct=0.1"]


FIT_CASES = {
    "unknown arch": (["tiny.toml", "--arch", "resnet35x"], ["resnet35x"]),
    "unknown loss": (["tiny.toml", "--set", "loss.name=fokal"], ["loss.name", "focal"]),
    "unknown optimiser": (["tiny.toml", "--set", "train.opt=adamx"], ["train.opt", "adam"]),
    "unknown key": (["tiny.toml", "--set", "train.epoch=3"], ["train.epoch", "epochs"]),
    "unknown section in recipe": (_unknown_section, ["[trian]", "train"]),
    "recipe not TOML": (_bad_toml, ["bad.toml", "not valid TOML"]),
    "batch size 0": (["tiny.toml", "--bs", "0"], ["train.bs"]),
    "size 0": (["tiny.toml", "--size", "0"], ["data.size"]),
    "lr not a number": (["tiny.toml", "--lr", "fast"], ["train.lr", "fast"]),
    "valid_pct above 1": (["tiny.toml", "--set", "data.valid_pct=1.5"], ["valid_pct", "1.5"]),
    "--name climbs out of runs/": (["tiny.toml", "--name", "../elsewhere"], ["--name", "plain folder name"]),
    "--name with a slash": (["tiny.toml", "--name", "a/b"], ["--name", "plain folder name"]),
    "--name taken": (_name_taken, ["runs/taken", "already exists"]),
    "CSV path climbing out": (_csv("fname,label\n../../etc/passwd,red\n" + _rows()),
                              ["outside the dataset folder", "../../etc/passwd"]),
    "CSV absolute path": (_csv("fname,label\n/etc/hostname,red\n" + _rows()),
                          ["outside the dataset folder", "/etc/hostname"]),
    "CSV empty file": (_csv(""), ["labels.csv", "is empty"]),
    "CSV not UTF-8": (_csv("fname,label\nr\xe9d/x.png,red\n".encode("latin-1")), ["labels.csv", "UTF-8"]),
    "CSV without fname": (_csv("file,label\n" + _rows()), ["fname column"]),
    "CSV without labels": (_csv("fname\n" + "".join(f"{c}/{c}_00.png\n" for c in COLOURS)),
                           ["label column"]),
    "CSV label column empty": (_csv("fname,label\n" + _rows(label=False)), ["label is empty"]),
    "CSV names a file twice, two labels": (_csv("fname,label\nred/red_00.png,blue\n" + _rows()),
                                           ["red/red_00.png", "different labels"]),
    "CSV names only missing files": (_csv("fname,label\n" + _rows().replace("red/", "gone/")
                                          .replace("blue/", "gone/").replace("green/", "gone/")),
                                     ["do not exist", "gone/"]),
    "label file missing": (_missing_label_file, ["nope.csv", "not found"]),
    "label regex invalid": (_bad_regex, ["regex", "(unclosed"]),
    "data path missing": (["tiny.toml", "--data", "no/such/folder"], ["no/such/folder", "does not exist"]),
    "data folder empty": (_empty_folder, ["no images found"]),
    "one class only": (_single_class, ["single class"]),
    "every class one image": (_one_image_per_class, ["no validation images"]),
    "data is a text file": (_text_file, ["notes.txt", "is a file"]),
    "test_pct with split folders": (_test_pct_with_folders, ["test_pct", "own split"]),
    "runs/ is a file": (_runs_is_a_file, ["runs", "is a file, not a folder"]),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_fit_refuses_bad_input_and_leaves_nothing(cli, work, case):
    args, fragments = FIT_CASES[case]
    args = args(work) if callable(args) else args
    before = _files(work)
    assert_usage_error(cli("fit", *args), *fragments)
    assert _files(work) == before, "a refused fit left files behind"


def _fail_writes_under_runs(monkeypatch, code: int, what: str):
    """Every write (and mkdir) of a path under runs/ fails with `code`: a full disk, a folder
    one may not write to."""
    real_write, real_mkdir = pathlib.Path.write_text, pathlib.Path.mkdir

    def failing(real):
        def method(self, *a, **k):
            if "runs" in self.parts:
                raise OSError(code, what, str(self))
            return real(self, *a, **k)
        return method
    monkeypatch.setattr(pathlib.Path, "write_text", failing(real_write))
    return failing(real_mkdir), real_mkdir


def test_fit_on_a_full_disk_says_so_and_leaves_no_run_folder(cli, work, monkeypatch):
    _fail_writes_under_runs(monkeypatch, errno.ENOSPC, "No space left on device")
    assert_usage_error(cli("fit", "tiny.toml"), "No space left on device", "runs/tiny-1", "disk is full")
    assert not (work / "runs" / "tiny-1").exists()
    assert not [p for p in (work / "runs").rglob("*")], "a half-made run folder was left"


def test_a_full_disk_after_a_checkpoint_keeps_the_run_resumable(cli, work, monkeypatch):
    """Issue 24.8: the disk fills up after epoch 1's checkpoint (epoch 2's checkpoint and the
    model cannot be written): the run folder stays, and `fit --resume` continues it once
    space is freed."""
    from clfapp.infer import bundle
    from clfapp.train import checkpoint

    real = checkpoint.write
    written = []

    def write(path, header, tensors):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(header["epochs_done"])
        real(path, header, tensors)

    def save(folder, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "write", write)
        m.setattr(bundle, "save", save)
        r = cli("fit", "tiny.toml", "--epochs", "2")
    assert_usage_error(r, "No space left on device", "disk is full")
    run = work / "runs" / "tiny-1"
    assert written == [1] and (run / "checkpoint.safetensors").is_file()
    assert f"clfapp fit --resume {run.relative_to(work)}" in r.output
    r = cli("fit", "--resume", run)
    assert r.exit_code == 0, r.output
    assert (run / "model" / "model.json").is_file() and not (run / "checkpoint.safetensors").exists()
    assert len(pd.read_csv(run / "results.csv")) == 2


def test_fit_into_an_unwritable_folder_says_so(cli, work, monkeypatch):
    failing_mkdir, _ = _fail_writes_under_runs(monkeypatch, errno.EACCES, "Permission denied")
    monkeypatch.setattr(pathlib.Path, "mkdir", failing_mkdir)
    before = _files(work)
    assert_usage_error(cli("fit", "tiny.toml"), "Permission denied", "runs", "permissions")
    assert _files(work) == before


# --- commands that take a trained model ------------------------------------------------------

@pytest.fixture
def tampered(trained_run, tmp_path):
    """A copy of the trained run, to be damaged by the test."""
    _, run = trained_run
    copy = tmp_path / "tampered"
    shutil.copytree(run, copy)
    return copy


def _edit_meta(run, **changes):
    path = run / "model" / "model.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))
    return meta


def _more_classes(run):
    meta = json.loads((run / "model" / "model.json").read_text())
    _edit_meta(run, classes=meta["classes"] + ["purple"])


def _other_arch(run):
    _edit_meta(run, arch="resnet18")


def _garbage_weights(run):
    (run / "model" / "weights.safetensors").write_bytes(b"\x00garbage" * 20)


def _truncated_weights(run):
    w = run / "model" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _broken_json(run):
    (run / "model" / "model.json").write_text("{not json")


TAMPERED = {"model.json lists another class": (_more_classes, "does not match model.json"),
            "model.json names another arch": (_other_arch, "does not match model.json"),
            "weights are garbage": (_garbage_weights, "does not match model.json"),
            "weights cut in half": (_truncated_weights, "does not match model.json"),
            "model.json not JSON": (_broken_json, "not valid JSON")}


@pytest.mark.parametrize("case", list(TAMPERED))
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_tampered_model_folder_is_refused(cli, tampered, tmp_path, trained_run, case, command):
    damage, fragment = TAMPERED[case]
    damage(tampered)
    work, _ = trained_run
    args = {"predict": [tampered, work / "data" / "shapes", "--out", tmp_path / "p.csv"],
            "evaluate": [tampered], "export": [tampered]}[command]
    before = _files(tampered, tmp_path)
    assert_usage_error(cli(command, *args), fragment, "model")
    assert _files(tampered, tmp_path) == before


PREDICT_CASES = {
    "a folder without images": (lambda t: [t / "noimg"], ["no images found", "noimg"]),
    "a missing image": (lambda t: [t / "missing.jpg"], ["missing.jpg"]),
    "--top-k 0": (lambda t: [t / "imgs", "--top-k", "0"], ["--top-k", "0"]),
    "--bs 0": (lambda t: [t / "imgs", "--bs", "0"], ["--bs"]),
    "--format xml": (lambda t: [t / "imgs", "--format", "xml"], ["xml"]),
    "only unreadable images": (lambda t: [t / "junk"], ["none of the images"]),
    "only unreadable images, JSON": (lambda t: [t / "junk", "--format", "json"], ["none of the images"]),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
@pytest.mark.parametrize("out", ["--out", "default"])
def test_predict_refuses_bad_input_and_writes_nothing(cli, trained_run, tmp_path, case, out):
    _, run = trained_run
    (tmp_path / "noimg").mkdir()
    (tmp_path / "noimg" / "readme.txt").write_text("no images here")
    make_folder_dataset(tmp_path / "imgs", n_per_class=1)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not a jpeg")
    paths, fragments = PREDICT_CASES[case]
    extra = ["--out", tmp_path / "out" / "p.csv"] if out == "--out" else []
    before = _files(run, tmp_path)
    result = cli("predict", run, *paths(tmp_path), *extra)
    if case.startswith("only unreadable"):  # a warning naming the file comes first
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "a.jpg" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error:")
        assert all(f in result.stderr.strip().splitlines()[-1] for f in fragments)
    else:
        assert_usage_error(result, *fragments)
    assert _files(run, tmp_path) == before, "predict left a folder or a partial file"


def test_evaluate_and_thresholds_refuse_bad_options(cli, trained_run):
    _, run = trained_run
    before = _files(run)
    assert_usage_error(cli("evaluate", run, "--bs", "0"), "--bs")
    assert_usage_error(cli("thresholds", run), "single-label", "no thresholds")
    assert_usage_error(cli("export", run, "--format", "tflite"), "tflite")
    assert _files(run) == before


# --- accepted with a warning: odd images, a class of one, missing files ----------------------

def _odd_images(folder):
    """One image per odd kind, all of one colour family (red): each must be read as red."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.new("RGB", (30, 20), COLOURS["red"])
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(folder / "grey16.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.quantize(4).save(folder / "palette.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    base.convert("L").save(folder / "grey.png")
    exif = base.getexif()
    exif[0x0112] = 6
    base.save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(np.full((20, 30), 60, np.uint16)).save(folder / "dark16.png")


def test_odd_image_kinds_train_and_a_class_of_one_image_stays_in_training(cli, work):
    _odd_images(work / "data" / "shapes" / "red")
    make_image(work / "data" / "shapes" / "lonely" / "only.png", (128, 128, 128))
    result = cli("fit", "tiny.toml", "--name", "odd")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stderr.count("lonely") == 1, result.stderr  # said once, not per pass
    assert "one image" in result.stderr and "stay in training" in result.stderr
    splits = pd.read_csv(work / "runs" / "odd" / "splits.csv")
    names = {pathlib.Path(p).name: s for p, s in zip(splits["path"], splits["split"])}
    for f in ("grey16.png", "cmyk.jpg", "palette.png", "rgba.png", "grey.png", "rotated.jpg", "dark16.png"):
        assert f in names, f"{f} was dropped"
    assert names["only.png"] == "train"


def test_odd_image_kinds_are_read_right(tmp_path):
    from clfapp.data import images
    _odd_images(tmp_path / "odd")
    for f in ("cmyk.jpg", "palette.png", "grey.png", "rotated.jpg"):
        a = images.read_image(tmp_path / "odd" / f, 8).reshape(-1, 3).mean(0)
        grey = f == "grey.png"
        assert (abs(a[0] - a[1]) < 3) if grey else (a[0] > 180 and a[1] < 60), (f, a)
    assert abs(images.read_image(tmp_path / "odd" / "grey16.png", 8).mean() - 40000 / 257) < 2
    assert images.read_image(tmp_path / "odd" / "dark16.png", 8).max() <= 1  # 60/65535: black
    rgba = images.read_image(tmp_path / "odd" / "rgba.png", 8).reshape(-1, 3).mean(0)
    assert rgba[1] > 100  # half transparent over white: pink, not dark red
    assert images.read_image(tmp_path / "odd" / "rotated.jpg", 8, "pad").shape == (8, 8, 3)


def test_a_label_csv_naming_some_missing_files_warns_and_skips_them(cli, work):
    csv = _csv_dataset(work, "labels.csv", "fname,label\nred/gone.png,red\n" + _rows())
    result = cli("data", "check", csv)
    assert result.exit_code == 0, result.output
    assert "1 of 13 file(s) named in the label file do not exist" in result.output
    assert "gone.png" in result.output


def test_a_nan_loss_stops_with_the_epoch_and_learning_rate(cli, work, monkeypatch):
    """NaN weights from epoch 1 on: exit 1, a line naming the epoch and the LR with a hint, the
    best (finite) epoch kept as the bundle."""
    import torch

    from clfapp.models import callbacks

    original = callbacks.ResultsCSV.before_epoch if hasattr(callbacks.ResultsCSV, "before_epoch") else None

    def poison(self):
        if original is not None:
            original(self)
        if self.epoch_total == 1:
            with torch.no_grad():
                next(self.learn.model.parameters()).fill_(float("nan"))
    monkeypatch.setattr(callbacks.ResultsCSV, "before_epoch", poison, raising=False)
    result = cli("fit", "tiny.toml", "--name", "nan", "--epochs", "3", "--lr", "0.01")
    assert result.exit_code == 1, result.output
    line = next(ln for ln in result.output.splitlines() if "became nan" in ln)
    assert "in epoch 1" in line and "at learning rate" in line and "lower --lr" in line, line
    assert "Traceback" not in result.output
    assert json.loads((work / "runs" / "nan" / "metrics.json").read_text())["best_epoch"] == 0
    assert (work / "runs" / "nan" / "model" / "weights.safetensors").is_file()
