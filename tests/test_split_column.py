"""A label CSV's `split` column: the accepted names (any case, empty = no split given) work, any
other value is refused by every command that reads the labels and is an error in `data check`
(issue 24: `holdout` rows silently became training images)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from clfapp import data
from clfapp.data import splits
from clfapp.config import DataConfig
from clfapp.errors import UsageError

from conftest import COLOURS, assert_usage_error, make_image, write_recipe

BAD = ["holdout", "testing", " test"]


def _csv_dataset(root: Path, third: str) -> Path:
    """root/labels.csv over 3 classes x 6 images: split train, valid and `third`, two each."""
    rows = []
    for k, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(6):
            fname = f"{name}_{i}.png"
            make_image(root / fname, rgb, seed=10 * k + i)
            rows.append((fname, name, ("train", "valid", third)[i % 3]))
    pd.DataFrame(rows, columns=["fname", "label", "split"]).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


@pytest.mark.parametrize("value", BAD)
def test_fit_refuses_an_unknown_split_value(cli, tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    csv = _csv_dataset(tmp_path / "ds", value)
    assert_usage_error(cli("fit", write_recipe(tmp_path / "r.toml", csv)),
                              f"{value!r} (6 rows)", "accepted: train, valid (or val, validation), test")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("value", BAD)
def test_data_check_reports_an_unknown_split_value(cli, tmp_path, value):
    csv = _csv_dataset(tmp_path / "ds", value)
    human = cli("data", "check", csv)
    assert human.exit_code == 2, human.output
    assert f"error: {csv}: the split column has values clfapp does not know: {value!r} (6 rows)" \
        in human.stdout
    assert human.stdout.strip().splitlines()[-1] == "verdict: fit would refuse this data"
    r = json.loads(cli("data", "check", csv, "--json").stdout)
    found = [f for f in r["findings"] if f["kind"] == "unknown_split"]
    assert len(found) == 1 and found[0]["level"] == "error"
    assert sorted(Path(p).name for p in found[0]["paths"]) == sorted(
        f"{c}_{i}.png" for c in COLOURS for i in (2, 5))


def test_other_commands_that_read_the_labels_refuse_it(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv = _csv_dataset(tmp_path / "ds", "holdout")
    recipe = write_recipe(tmp_path / "r.toml", csv)
    assert_usage_error(cli("lr-find", recipe), "'holdout' (6 rows)")
    assert_usage_error(cli("data", "prepare", recipe), "'holdout' (6 rows)")
    # evaluate --data reads its labels through data.scan
    with pytest.raises(UsageError, match=r"'holdout' \(6 rows\); accepted: "):
        data.scan(DataConfig(path=str(csv)))


def test_the_message_counts_and_caps_the_values(tmp_path):
    root = tmp_path / "ds"
    lines = ["fname,label,split"]
    for k, value in enumerate(["train", "valid", "a", "b", "b", "c", "d", "e", "e", "e", ""]):
        make_image(root / f"i{k}.png", list(COLOURS.values())[k % 3], seed=k)
        lines.append(f"i{k}.png,{'xy'[k % 2]},{value}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError) as e:
        data.scan(DataConfig(path=str(root / "labels.csv")))
    assert "'e' (3 rows), 'b' (2 rows)" in str(e.value)
    assert "and 1 more value(s); accepted:" in str(e.value)
    assert "''" not in str(e.value)  # an empty cell is not an unknown value


def test_the_accepted_names_in_any_case_and_empty_cells(tmp_path):
    root = tmp_path / "ds"
    values = ["train", "Train", "VALID", "val", "Validation", "test", "TEST", "", "train", "valid"]
    lines = ["fname,label,split"]
    for k, value in enumerate(values):
        make_image(root / f"i{k}.png", list(COLOURS.values())[k % 3], seed=k)
        lines.append(f"i{k}.png,{'xy'[k % 2]},{value}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    items = data.scan(DataConfig(path=str(root / "labels.csv")))
    got = dict(zip(items["path"].map(lambda p: Path(p).name), items["split"].fillna("none")))
    assert got == {"i0.png": "train", "i1.png": "train", "i2.png": "valid", "i3.png": "valid",
                   "i4.png": "valid", "i5.png": "test", "i6.png": "test", "i7.png": "none",
                   "i8.png": "train", "i9.png": "valid"}
    # the empty cell: no split given, so (split = "auto", other rows valid) a training image
    assigned = splits.assign(items, "auto", 0.2, seed=0)
    assert assigned["split"].iloc[7] == "train" and assigned["split"].notna().all()


def test_a_csv_with_train_valid_test_still_checks_ok(cli, tmp_path):
    csv = _csv_dataset(tmp_path / "ds", "test")
    r = json.loads(cli("data", "check", csv, "--json").stdout)
    assert not [f for f in r["findings"] if f["level"] == "error"]
    assert {s for c in r["counts"].values() for s in c} == {"train", "valid", "test"}
