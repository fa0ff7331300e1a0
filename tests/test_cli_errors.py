"""User mistakes reach the user as one line `error: ...` and exit code 2, never a traceback."""
from __future__ import annotations

import io
import time

from PIL import Image

from conftest import TINY_ARCH, assert_usage_error, make_folder_dataset


def test_unknown_recipe(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = assert_usage_error(cli("fit", "nosuchrecipe"), "nosuchrecipe")
    assert "digits" in line and "plants" in line  # the available ones are named


def test_misspelt_recipe_suggests(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", "digitz"), "did you mean digits")


def test_missing_recipe_file(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("lr-find", "missing.toml"), "missing.toml", "not found")


def test_unknown_config_key(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", tiny_recipe, "--set", "train.epoch=3"), "train.epoch", "epochs")
    assert not (tmp_path / "runs").exists()  # refused before any run folder is made


def test_bad_set_value(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", tiny_recipe, "--set", "train.bs=many"), "train.bs")


def test_unknown_arch(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    line = assert_usage_error(cli("fit", tiny_recipe, "--arch", "resnet35x"), "resnet35x")
    assert "resnet34" in line or "resnet50" in line  # close matches are offered


def test_missing_data_path(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", tiny_recipe, "--data", "no/such/folder"), "no/such/folder",
                       "does not exist")


def test_empty_dataset_folder(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert_usage_error(cli("fit", tiny_recipe, "--data", "empty"), "no images found", "empty")


def test_images_without_class_folders(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    flat = tmp_path / "flat"
    make_folder_dataset(tmp_path / "tmp", n_per_class=2)
    flat.mkdir()
    for p in (tmp_path / "tmp").rglob("*.png"):
        p.rename(flat / p.name)
    assert_usage_error(cli("fit", tiny_recipe, "--data", "flat"), "class folder")


def test_single_class_dataset(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "one", n_per_class=4, classes=["red"])
    assert_usage_error(cli("fit", tiny_recipe, "--data", "one"), "single class")


def test_pretrained_weights_not_found_is_fast(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    result = cli("fit", tiny_recipe, "--arch", "resnet34", "--pretrained")
    seconds = time.perf_counter() - t0
    line = assert_usage_error(result, "resnet34", "--weights", "--no-pretrained")
    assert "no pretrained weights" in line
    assert seconds < 10, f"took {seconds:.1f} s to give up offline"


def test_timm_weights_not_found(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", tiny_recipe, "--pretrained"), TINY_ARCH, "--weights")


def test_missing_weights_file(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("fit", tiny_recipe, "--pretrained", "--weights", "nope.safetensors"),
                       "nope.safetensors")


def test_corrupt_weights_file(cli, tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "bad.pth").write_bytes(b"not a torch file at all")
    assert_usage_error(cli("fit", tiny_recipe, "--pretrained", "--weights", "bad.safetensors"),
                       "bad.safetensors")
    assert_usage_error(cli("fit", tiny_recipe, "--pretrained", "--weights", "bad.pth"), "bad.pth")


def test_evaluate_and_predict_unknown_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("evaluate", "nosuchrun"), "nosuchrun")
    (tmp_path / "img.png").write_bytes(b"")
    assert_usage_error(cli("predict", "nosuchrun", "img.png"), "nosuchrun")


def test_predict_bad_inputs(cli, trained_run, tmp_path):
    _, run = trained_run
    assert_usage_error(cli("predict", run, tmp_path / "missing.jpg"), "missing.jpg")
    assert_usage_error(cli("predict", run, tmp_path, "--format", "xml"), "xml")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"garbage")
    result = cli("predict", run, tmp_path / "junk", "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "none of the images" in lines[-1]
    assert "a.jpg" in lines[0]  # the warning names the file
    assert not (tmp_path / "p.csv").exists()


def test_run_without_bundle(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "half").mkdir(parents=True)
    (tmp_path / "runs" / "half" / "splits.csv").write_text("path,label,split\n")
    assert_usage_error(cli("evaluate", "half"), "no model bundle")


def test_unknown_sample(cli, tmp_path):
    assert_usage_error(cli("data", "sample", "mnist", "--out", tmp_path / "x"), "mnist", "digits")


def _corrupt_files(folder):
    """A JPEG cut short after its header and a file of garbage with a .jpg name."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    truncated = folder / "red" / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[:200])
    garbage = folder / "blue" / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return truncated, garbage


def test_corrupt_jpegs_are_skipped_with_a_warning(cli, tmp_path, monkeypatch, tiny_recipe, tiny_data):
    monkeypatch.chdir(tmp_path)
    truncated, garbage = _corrupt_files(tiny_data)
    result = cli("fit", tiny_recipe, "--name", "corrupt")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    for bad in (truncated, garbage):
        assert any(bad.name in ln and "warning" in ln for ln in result.output.splitlines()), result.output
    # the run was made with the readable images only
    import pandas as pd
    splits = pd.read_csv(tmp_path / "runs" / "corrupt" / "splits.csv")
    assert len(splits) == 30
    assert not splits["path"].str.contains("truncated|garbage").any()
    assert (tmp_path / "runs" / "corrupt" / "model" / "weights.safetensors").is_file()


def test_predict_skips_corrupt_images_with_a_warning(cli, trained_run, tmp_path):
    _, run = trained_run
    folder = make_folder_dataset(tmp_path / "imgs", n_per_class=2)
    truncated, garbage = _corrupt_files(folder)
    out = tmp_path / "p.csv"
    result = cli("predict", run, folder, "--out", out)
    assert result.exit_code == 0, result.output
    assert garbage.name in result.output and truncated.name in result.output
    import pandas as pd
    df = pd.read_csv(out)
    assert len(df) == 6
    assert not df["path"].str.contains("truncated|garbage").any()
