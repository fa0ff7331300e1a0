"""`clfapp export MODEL --int8`: a static QDQ INT8 graph, checked against fp32 before it ships
(issue 27, point 1)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import assert_usage_error

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def int8_run(trained_run, tmp_path_factory):
    """A copy of the tiny trained run (the shared fixture stays untouched), exported once --int8."""
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    work, run = trained_run
    copy = tmp_path_factory.mktemp("int8") / "tiny-run"
    shutil.copytree(run, copy)
    r = CliRunner().invoke(app, ["export", str(copy), "--format", "onnx", "--int8"])
    assert r.exit_code == 0, r.output
    return work, copy, copy / "export-1", r.output


def _copy(trained_run, tmp_path):
    copy = tmp_path / "tiny-run"
    shutil.copytree(trained_run[1], copy)
    return copy


def test_int8_export_is_a_qdq_graph_with_int8_weights(int8_run):
    _, run, folder, output = int8_run
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "onnx.json", "preprocess.py"]
    model = onnx.load(str(folder / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: t for t in model.graph.initializer}
    # every convolution's weight is an int8 tensor behind a DequantizeLinear
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
        assert len(onnx.numpy_helper.to_array(inits[dq.input[1]])) > 1   # per-channel scales
    # smaller than the fp32 graph, and nothing left beside the export
    q = json.loads((folder / "onnx.json").read_text())["int8"]
    assert q["size_bytes"]["int8"] < q["size_bytes"]["fp32"] / 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert "int8: calibrated on" in output and "agreement with fp32" in output


def test_onnx_json_records_agreement_metrics_calibration_and_float_ops(int8_run):
    _, run, folder, _ = int8_run
    info = json.loads((folder / "onnx.json").read_text())
    q = info["int8"]
    n_valid = (pd.read_csv(run / "splits.csv")["split"] == "valid").sum()
    n_train = (pd.read_csv(run / "splits.csv")["split"] == "train").sum()
    assert q["split"] == "valid" and q["images"] == n_valid
    assert 0 <= q["agreement"] <= 100 and q["passed"] is True and q["accepted_by"] is None
    assert q["metric"]["name"] == "accuracy"
    assert set(q["metric"]) >= {"fp32", "int8", "drop_points"}
    assert q["calibration"]["images"] == n_train   # fewer than the 256 asked: all of them
    # the final softmax stays float (uint8 probabilities would tie classes), and is named
    assert q["float_ops"].get("Softmax") == 1
    assert all(op not in q["float_ops"] for op in ("Conv", "MatMul", "Gemm"))
    assert info["inference"]["precision"] == "int8"
    # the ONNX file carries the same facts (the predictor's metadata check)
    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert {k: v for k, v in info.items() if k != "parity"} == json.loads(props["clfapp"])


def test_predict_and_compare_take_the_int8_export(int8_run, cli, tmp_path, monkeypatch):
    work, run, folder, _ = int8_run
    data = work / "data" / "shapes"
    r = cli("predict", run, data, "--backend", "onnx", "--out", tmp_path / "q.csv")
    assert r.exit_code == 0, r.output
    t = cli("predict", run, data, "--out", tmp_path / "t.csv")
    assert t.exit_code == 0, t.output
    a, b = pd.read_csv(tmp_path / "q.csv"), pd.read_csv(tmp_path / "t.csv")
    assert len(a) == 30 and (a["path"] == b["path"]).all()
    assert (a["label"] == b["label"]).mean() >= 0.9
    monkeypatch.chdir(tmp_path)
    c = cli("compare", run, folder, "--repeats", "1")
    assert c.exit_code == 0, c.output
    md = (tmp_path / "runs" / "compare-1" / "comparison.md").read_text()
    assert "32 px, 1 view, int8" in md and "32 px, 1 view, fp32" in md
    assert "fp32 or int8 (each model's run_as)" in md


def test_below_the_limits_is_refused_with_nothing_left(trained_run, cli, tmp_path, monkeypatch):
    from clfapp.infer import quantize
    run = _copy(trained_run, tmp_path)
    real = quantize.agreement_and_metrics

    def worse(*a):   # an INT8 graph that lost: forced, the tiny net quantises losslessly
        f = real(*a)
        return dict(f, agreement=90.0, int8=f["fp32"] - 0.05)
    monkeypatch.setattr(quantize, "agreement_and_metrics", worse)
    r = cli("export", run, "--int8")
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "INT8 check failed" in lines[0] and "90.0%" in lines[0], r.stderr
    assert not list(run.glob("export-*")) and not [p for p in run.iterdir() if p.name.startswith(".")]
    # --out is not left behind either
    r = cli("export", run, "--int8", "--out", tmp_path / "q")
    assert r.exit_code == 1 and not (tmp_path / "q").exists()
    # --accept-drop keeps it, and says so in onnx.json
    r = cli("export", run, "--int8", "--accept-drop")
    assert r.exit_code == 0, r.output
    q = json.loads((run / "export-1" / "onnx.json").read_text())["int8"]
    assert q["passed"] is False and q["accepted_by"] == "--accept-drop" and q["agreement"] == 90.0
    assert "kept by --accept-drop" in r.output


def test_a_full_run_without_a_test_split_is_refused_in_one_line(trained_run, cli, tmp_path):
    run = _copy(trained_run, tmp_path)
    meta_path = run / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["inference"]["trained_on"] = "train+valid"   # as `fit --full` writes it
    meta_path.write_text(json.dumps(meta))
    assert_usage_error(cli("export", run, "--int8"), "--int8", "fit --full", "no test split")
    assert not list(run.glob("export-*")) and not [p for p in run.iterdir() if p.name.startswith(".")]


def test_int8_options_are_checked(trained_run, cli, tmp_path):
    run = _copy(trained_run, tmp_path)
    assert_usage_error(cli("export", run, "--accept-drop"), "--accept-drop", "--int8")
    assert_usage_error(cli("export", run, "--int8", "--min-agreement", "101"), "--min-agreement")
    assert_usage_error(cli("export", run, "--int8", "--calibration-images", "0"), "--calibration-images")
    assert_usage_error(cli("export", run, "--int8", "--max-drop", "-1"), "--max-drop")
    (run / "splits.csv").unlink()
    assert_usage_error(cli("export", run, "--int8"), "no splits.csv")
    assert not list(run.glob("export-*"))


def test_float_ops_names_what_is_not_wrapped_by_qdq():
    from onnx import TensorProto, helper

    from clfapp.infer.quantize import float_ops
    w = helper.make_tensor("w", TensorProto.INT8, [1], [1])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])
    z = helper.make_tensor("z", TensorProto.UINT8, [], [0])
    i = helper.make_tensor("i", TensorProto.INT64, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "s"], ["wd"]),
             helper.make_node("Mul", ["xd", "wd"], ["m"]),          # wrapped: int8
             helper.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["md"]),
             helper.make_node("Relu", ["md"], ["r"]),               # output not quantised
             helper.make_node("Add", ["r", "x"], ["a"]),            # float inputs
             helper.make_node("Shape", ["a"], ["sh"]),               # shape arithmetic: not
             helper.make_node("Gather", ["sh", "i"], ["g"]),         # image data, not named
             helper.make_node("Reshape", ["a", "sh"], ["y"])]        # float data
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[w, s, z, i])
    assert float_ops(helper.make_model(graph)) == {"Add": 1, "Relu": 1, "Reshape": 1}
