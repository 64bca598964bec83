"""Bad input to the ONNX functions (docs/FAULTS.md 1, 12-13, 15, 23, 25-29): typed errors, early,
nothing written, the input untouched."""

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

import cuantiza as cz
from cuantiza.onnx import fileio
from cuantiza.onnx.fileio import load_model, run_session


def _graph(w: np.ndarray | None = None, extra_inits=(), extra_nodes=()) -> onnx.ModelProto:
    """x (N, 8) -> MatMul W (8, 4) -> y."""
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32) if w is None else w
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], "mm"), *extra_nodes]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "W"), *extra_inits],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def src(tmp_path):
    onnx.save(_graph(), tmp_path / "in.onnx")
    return tmp_path / "in.onnx"


def _listing(folder) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_refuses_already_quantized_graphs(tmp_path, src):
    """FAULTS 23: Q/DQ nodes, or integer weight initializers."""
    cz.quantize_onnx(src, tmp_path / "q.onnx", mode="weight_only")
    with pytest.raises(cz.PlanError, match="already quantized.*DequantizeLinear"):
        cz.quantize_onnx(tmp_path / "q.onnx", tmp_path / "qq.onnx")
    int8 = numpy_helper.from_array(np.ones((8, 4), np.int8), "W8")
    cast = helper.make_node("Cast", ["W8"], ["W8f"], to=TensorProto.FLOAT)
    onnx.save(_graph(extra_inits=[int8], extra_nodes=[cast]), tmp_path / "i8.onnx")
    with pytest.raises(cz.PlanError, match="integer initializer.*W8"):
        cz.quantize_onnx(tmp_path / "i8.onnx", tmp_path / "qq.onnx")
    assert not (tmp_path / "qq.onnx").exists()


@pytest.mark.parametrize("damage", ["empty", "garbage", "cut_10", "cut_50", "cut_99", "missing"])
def test_corrupt_or_truncated_files(tmp_path, src, damage):
    """FAULTS 25."""
    blob = src.read_bytes()
    bad = tmp_path / "bad.onnx"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(len(blob)))
    elif damage.startswith("cut"):
        bad.write_bytes(blob[: len(blob) * int(damage[4:]) // 100])
    with pytest.raises(cz.CorruptFileError, match="bad.onnx"):
        cz.quantize_onnx(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def _external(tmp_path, location: str, data_at) -> "os.PathLike":
    """model/in.onnx whose weight W lives in ``location`` (relative to model/)."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    m = _graph()
    w = m.graph.initializer[0]
    data_at.write_bytes(w.raw_data)
    set_external_data(w, location=location, offset=0, length=len(w.raw_data))
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    onnx.save(m, folder / "in.onnx")
    return folder / "in.onnx"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path, kind):
    """FAULTS 26: nothing outside the model's folder is read."""
    outside = tmp_path / "outside.bin"
    (tmp_path / "model").mkdir()
    if kind == "symlink":
        os.symlink(outside, tmp_path / "model" / "link.bin")
    location = {"dotdot": "../outside.bin", "absolute": str(outside), "symlink": "link.bin"}[kind]
    path = _external(tmp_path, location, outside)
    with pytest.raises(cz.UnsafeFileError, match="W"):
        cz.quantize_onnx(path, tmp_path / "out.onnx", mode="weight_only")
    assert not (tmp_path / "out.onnx").exists()


def test_external_data_missing_or_short(tmp_path):
    path = _external(tmp_path, "w.bin", tmp_path / "model" / "w.bin")
    assert cz.quantize_onnx(path, tmp_path / "ok.onnx", mode="weight_only").layers  # inside: fine
    (tmp_path / "model" / "w.bin").write_bytes(b"\0" * 10)
    with pytest.raises(cz.CorruptFileError, match="truncated"):
        load_model(path)
    (tmp_path / "model" / "w.bin").unlink()
    with pytest.raises(cz.CorruptFileError, match="missing"):
        load_model(path)


def test_large_models_use_relative_external_data(tmp_path, src, monkeypatch):
    """FAULTS 27, with the 2 GiB threshold lowered so a small model takes the same path."""
    monkeypatch.setattr(fileio, "EXTERNAL_THRESHOLD", 64)
    monkeypatch.setattr(fileio, "EXTERNAL_MIN_TENSOR", 16)
    out = tmp_path / "big" / "q.onnx"
    s = cz.quantize_onnx(src, out, mode="weight_only")
    data = [p for p in s.files if p.suffix == ".data"]
    assert len(data) == 1 and data[0].parent == out.parent and data[0].name.startswith("q.onnx.")
    model = onnx.load(str(out), load_external_data=False)
    locations = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {data[0].name}
    x = np.ones((2, 8), np.float32)
    y = run_session(str(out), {"x": x})[0]
    load_model(out)  # reads back through the checks
    cal = [{"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}]
    s2 = cz.quantize_onnx(src, out, cz.QuantConfig(weight=cz.QScheme(4)), cal, overwrite=True)
    assert s2.workflow == "static"  # calibrated through a session on disk
    assert _listing(out.parent) == sorted(p.name for p in s2.files)  # old data file removed
    assert run_session(str(out), {"x": x})[0].shape == y.shape


def test_output_paths(tmp_path, src):
    """FAULTS 28: never over the input, never over a file without overwrite=True."""
    with pytest.raises(cz.OutputExistsError, match="input"):
        cz.quantize_onnx(src, src, overwrite=True)
    (tmp_path / "taken.onnx").write_bytes(b"keep")
    with pytest.raises(cz.OutputExistsError, match="overwrite"):
        cz.quantize_onnx(src, tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"keep"
    with pytest.raises(cz.OutputExistsError, match="folder"):
        cz.quantize_onnx(src, tmp_path)
    cz.quantize_onnx(src, tmp_path / "taken.onnx", overwrite=True)
    assert load_model(tmp_path / "taken.onnx").graph.node


def test_failed_check_publishes_nothing(tmp_path, src, monkeypatch):
    """FAULTS 29: a graph that fails the onnxruntime check is not written; the previous file
    stays and no temporary file is left."""
    (tmp_path / "out.onnx").write_bytes(b"previous")
    before = _listing(tmp_path)

    def broken(*a, **k):
        raise RuntimeError("simulated runtime failure")

    monkeypatch.setattr(fileio, "run_session", broken)
    with pytest.raises(cz.PlanError, match="nothing written"):
        cz.quantize_onnx(src, tmp_path / "out.onnx", overwrite=True)
    assert (tmp_path / "out.onnx").read_bytes() == b"previous" and _listing(tmp_path) == before


def _gen():
    yield from ()


@pytest.mark.parametrize(
    "calibration, match",
    [
        (None, "needs calibration data"),
        ([], "needs calibration data"),
        (_gen(), "no batches"),
        ({"x": np.ones((1, 8), np.float32)}, "not a single dict"),
        ([{"input": np.ones((1, 8), np.float32)}], "missing inputs \\['x'\\]"),
        ([{"x": np.full((1, 8), np.nan, np.float32)}], "saw no finite calibration value: x"),
        (  # FAULTS 37: the batch and input named, before onnxruntime sees it
            [{"x": np.ones((2, 8), np.float32)}, {"x": np.ones((2, 7), np.float32)}],
            r"calibration batch 1: input 'x' has shape \(2, 7\); the graph expects \(\?, 8\)",
        ),
        ([{"x": np.ones((2, 8, 1), np.float32)}], r"batch 0: input 'x' has shape \(2, 8, 1\)"),
    ],
)
def test_calibration_errors(tmp_path, src, calibration, match):
    """FAULTS 12-13, 37: no data, wrong feeds or shapes, tensors that saw only NaN: named."""
    with pytest.raises(cz.CalibrationError, match=match):
        cz.quantize_onnx(src, tmp_path / "out.onnx", calibration=calibration, mode="static")
    assert not (tmp_path / "out.onnx").exists()


def test_corrupt_npz(tmp_path, src):
    (tmp_path / "cal.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(cz.CorruptFileError, match="cal.npz"):
        cz.quantize_onnx(src, tmp_path / "out.onnx", calibration=tmp_path / "cal.npz")


def test_nan_weight_and_bad_group(tmp_path):
    """FAULTS 1 and 15: named before anything is written."""
    w = np.ones((8, 4), np.float32)
    w[1, 2] = np.nan
    onnx.save(_graph(w), tmp_path / "nan.onnx")
    with pytest.raises(cz.NonFiniteError, match="mm:W.*1 NaN"):
        cz.quantize_onnx(tmp_path / "nan.onnx", tmp_path / "out.onnx", mode="weight_only")
    onnx.save(_graph(), tmp_path / "g.onnx")
    with pytest.raises(cz.PlanError, match="mm: 8 columns.*group size 3"):
        cz.quantize_onnx(
            tmp_path / "g.onnx",
            tmp_path / "out.onnx",
            cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerGroup(3))),
            mode="weight_only",
        )
    assert not (tmp_path / "out.onnx").exists()


def test_bad_arguments(tmp_path, src):
    for kwargs in (
        {"mode": "fast"},
        {"op_types": ("Relu",)},
        {"dynamic_form": "quick"},
        {"opset": 99},
    ):
        with pytest.raises(cz.ConfigError):
            cz.quantize_onnx(src, tmp_path / "out.onnx", **kwargs)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    with pytest.raises(cz.PlanError, match="no cuantiza quantized layer"):
        cz.export_onnx(model, torch.randn(1, 8), tmp_path / "e.onnx")
    with pytest.raises(cz.PlanError, match="convert"):
        cz.export_onnx(cz.prepare(model), torch.randn(1, 8), tmp_path / "e.onnx")
    with pytest.raises(cz.ConfigError, match="opset"):
        cz.export_onnx(cz.quantize_weights(model), torch.randn(1, 8), tmp_path / "e.onnx", opset=12)
    assert _listing(tmp_path) == ["in.onnx"]


def test_an_onnxruntime_failure_names_the_calibration_batch(tmp_path, monkeypatch):
    """A batch the shape check lets through but onnxruntime refuses (simulated: the session
    raises on the second batch) is named by its index, not left as onnxruntime's raw error."""
    from cuantiza.onnx import calibrate

    real, seen = calibrate._session, []

    def failing_session(model, tmp):
        sess = real(model, tmp)

        class Session:
            def run(self, names, feed):
                seen.append(1)
                if len(seen) == 2:
                    raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad input")
                return sess.run(names, feed)

        return Session()

    monkeypatch.setattr(calibrate, "_session", failing_session)
    relu = helper.make_node("Relu", ["x"], ["r"], "relu")
    g = _graph()
    g.graph.node[0].input[0] = "r"  # x -> Relu -> MatMul: r is observed through onnxruntime
    g.graph.node.insert(0, relu)
    onnx.save(g, tmp_path / "relu.onnx")
    batches = [{"x": np.ones((2, 8), np.float32)}] * 3
    with pytest.raises(cz.CalibrationError, match="calibration batch 1: onnxruntime cannot run"):
        cz.quantize_onnx(
            tmp_path / "relu.onnx", tmp_path / "out.onnx", calibration=batches, mode="static"
        )
    assert not (tmp_path / "out.onnx").exists()


def test_an_exclude_pattern_that_matches_no_node_is_refused(tmp_path, src):
    """FAULTS 37: a typo in ``exclude`` used to be ignored silently, quantizing the layer."""
    cfg = cz.QuantConfig(exclude=("mm", "typo*"))
    with pytest.raises(
        cz.ConfigError, match=r"'typo\*' matches no node; node names look like 'mm'"
    ):
        cz.quantize_onnx(src, tmp_path / "out.onnx", cfg, mode="weight_only")
    assert _listing(tmp_path) == ["in.onnx"]
