"""`cuantiza quantize MODEL.onnx -o OUT.onnx ...`, called in-process through main(), on a tiny
float graph built with onnx.helper (MatMul -> Add -> Relu -> MatMul)."""

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cuantiza import progress
from cuantiza.cli.main import main
from cuantiza.onnx import read_metadata
from tests.thresholds import THRESHOLDS

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _progress_shown():
    """--quiet sets the module-wide flag; each test starts from the default."""
    progress.set_quiet(False)
    yield
    progress.set_quiet(None)


def tiny_model(path):
    w1 = numpy_helper.from_array(RNG.standard_normal((64, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(RNG.standard_normal(32).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(RNG.standard_normal((32, 8)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def src(tmp_path):
    return tiny_model(tmp_path / "tiny.onnx")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def init_bytes(path) -> int:
    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)


def test_dynamic_default_writes_a_working_model_and_a_summary(capsys, src, tmp_path):
    code, out, _ = run(capsys, "quantize", src, "-o", tmp_path / "q.onnx")
    assert code == 0
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    ref, got = ort_run(src, x), ort_run(tmp_path / "q.onnx", x)
    rel = THRESHOLDS["onnx_cli_dynamic_int8_output_rel"]
    assert np.abs(got - ref).max() < rel * np.abs(ref).max()
    head = out.splitlines()[0]
    assert f"{src.stat().st_size:,} B ->" in head and "2 layers quantized, 0 kept float" in head
    assert "mode dynamic" in out and "2 MatMul" in out and "int8-sym" in out
    assert read_metadata(onnx.load(str(tmp_path / "q.onnx")))["workflow"] == "dynamic"


def test_static_calibrates_with_a_progress_bar(capsys, monkeypatch, src, tmp_path):
    """Bars are drawn when stderr is a terminal (capsys's stream says it is one here)."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    np.savez(tmp_path / "cal.npz", x=RNG.standard_normal((96, 64)).astype(np.float32))
    code, out, err = run(
        capsys,
        "quantize",
        src,
        "-o",
        tmp_path / "q.onnx",
        "--static",
        "--calibration",
        tmp_path / "cal.npz",
        "--per-channel",
    )
    assert code == 0, err
    assert "calibrate" in err  # the tqdm bar, on stderr
    assert "mode static" in out and "static" in out.split("quantized:")[1]


def test_quiet_prints_one_line_and_no_bar(capsys, src, tmp_path):
    np.savez(tmp_path / "cal.npz", x=RNG.standard_normal((64, 64)).astype(np.float32))
    code, out, err = run(
        capsys,
        "quantize",
        src,
        "-o",
        tmp_path / "q.onnx",
        "--static",
        "--calibration",
        tmp_path / "cal.npz",
        "--quiet",
    )
    assert code == 0
    assert len(out.splitlines()) == 1 and "calibrate" not in err


def test_4bit_groups_are_smaller_than_8bit(capsys, src, tmp_path):
    assert (
        run(capsys, "quantize", src, "-o", tmp_path / "q8.onnx", "--weight-only", "--per-channel")[
            0
        ]
        == 0
    )
    code, out, _ = run(
        capsys,
        "quantize",
        src,
        "-o",
        tmp_path / "q4.onnx",
        "--weight-only",
        "--bits",
        "4",
        "--group-size",
        "16",
        "--asymmetric",
    )
    assert code == 0
    assert "int4-asym-group16" in out and "UINT4" in out
    assert init_bytes(tmp_path / "q4.onnx") < 0.8 * init_bytes(
        tmp_path / "q8.onnx"
    )  # file: metadata-bound
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    assert ort_run(tmp_path / "q4.onnx", x).shape == (2, 8)


def test_exclude_keeps_a_layer_float_and_says_why(capsys, src, tmp_path):
    code, out, _ = run(capsys, "quantize", src, "-o", tmp_path / "q.onnx", "--exclude", "head")
    assert code == 0
    assert "1 layer quantized, 1 kept float" in out
    assert "kept float:" in out and "1 x excluded by config: head" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--static"], "--static needs --calibration"),
        (["--calibration", "cal.npz"], "add --static"),
        (["--bits", "9"], "argument --bits: must be a whole number in 1..8, got 9"),
        (["--group-size", "0"], "argument --group-size: must be a whole number >= 1, got 0"),
    ],
)
def test_bad_options_print_one_line_and_exit_2(capsys, src, tmp_path, extra, message):
    """FAULTS 37: ranges are checked by the parser, whose errors are one line too."""
    code, out, err = run(capsys, "quantize", src, "-o", tmp_path / "q.onnx", *extra)
    assert code == 2 and out == ""
    assert err.startswith("cuantiza") and " error: " in err and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_existing_output_needs_overwrite(capsys, src, tmp_path):
    dst = tmp_path / "q.onnx"
    dst.write_bytes(b"keep me")
    code, _, err = run(capsys, "quantize", src, "-o", dst)
    assert code == 2 and "--overwrite" in err and dst.read_bytes() == b"keep me"
    assert run(capsys, "quantize", src, "-o", dst, "--overwrite")[0] == 0
    onnx.checker.check_model(str(dst))


def test_missing_model_and_quantized_input_are_refused(capsys, src, tmp_path):
    code, _, err = run(capsys, "quantize", tmp_path / "nope.onnx", "-o", tmp_path / "q.onnx")
    assert code == 2 and "no such file" in err
    assert run(capsys, "quantize", src, "-o", tmp_path / "q.onnx")[0] == 0
    code, _, err = run(capsys, "quantize", tmp_path / "q.onnx", "-o", tmp_path / "qq.onnx")
    assert code == 2 and err.startswith("cuantiza: error:") and not (tmp_path / "qq.onnx").exists()


def test_exclusive_flags_and_help(capsys, src, tmp_path):
    code, _, err = run(
        capsys, "quantize", src, "-o", tmp_path / "q.onnx", "--per-channel", "--group-size", "16"
    )
    assert code == 2 and "not allowed with" in err
    code, out, _ = run(capsys, "quantize", "--help")
    assert code == 0 and "--calibration" in out and "--exclude" in out
