"""quantize_onnx on float ONNX graphs: the same numbers as cuantiza's torch workflows."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, version_converter
from onnx.reference import ReferenceEvaluator

import cuantiza as cz
from cuantiza.onnx import read_metadata
from cuantiza.onnx.fileio import run_session
from tests.helpers.onnx_models import (
    ConvNet,
    TextNet,
    check_numerics,
    compare,
    float_onnx,
    float_session,
    foreign_graph,
    images,
    module_of,
    output_lsb,
    tokens,
)
from tests.thresholds import THRESHOLDS


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def convnet_onnx(tmp_path):
    torch.manual_seed(0)
    m = ConvNet().eval()
    return m, float_onnx(m, images(2, 0), tmp_path / "float.onnx")


def test_static_matches_cuantiza(tmp_path, convnet_onnx):
    m, src = convnet_onnx
    batches = [images(16, s) for s in range(4)]
    before = _sha(src)
    s = cz.quantize_onnx(
        src, tmp_path / "q.onnx", cz.QuantConfig(), [{"input": b.numpy()} for b in batches]
    )
    assert _sha(src) == before  # the input is only read
    assert s.workflow == "static" and [r.op for r in s.layers] == ["Conv"] * 4 + ["Gemm"] * 2
    p = cz.prepare(m, cz.QuantConfig())
    cz.calibrate(p, batches)
    qm = cz.convert(p)
    x = images(32, 9)
    stats = compare(tmp_path / "q.onnx", s, qm, x, module_of)
    # observers saw activations computed by torch on one side, onnxruntime on the other
    # (float32 rounding apart), so scales may differ in the last bit: codes are exact for the
    # first layer (the graph input) and within the end-to-end bounds elsewhere
    check_numerics(stats, exact_codes=False)
    assert next(iter(stats.values()))["iso_mismatch"] == 0


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_dynamic_and_weight_only_match_cuantiza(tmp_path, convnet_onnx, mode):
    m, src = convnet_onnx
    cfg = (
        cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerGroup(16)), group_remainder="pad")
        if mode == "weight_only"
        else cz.QuantConfig(dynamic="per_token")
    )
    s = cz.quantize_onnx(src, tmp_path / "q.onnx", cfg, mode=mode)
    qm = cz.quantize_weights(m, cfg) if mode == "weight_only" else cz.quantize_dynamic(m, cfg)
    check_numerics(compare(tmp_path / "q.onnx", s, qm, images(32, 9), module_of))
    if mode == "dynamic":
        assert all("weight-only" in r.activation for r in s.layers if r.op == "Conv")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_gather_and_matmul(tmp_path, mode):
    torch.manual_seed(0)
    m = TextNet().eval()
    src = float_onnx(m, tokens(2, 0), tmp_path / "text.onnx")
    batches = [tokens(8, s) for s in range(3)]
    cal = [{"input": b.numpy()} for b in batches] if mode == "static" else None
    # the activation scheme written out on both sides: quantize_dynamic's default is per-token
    # 7-bit codes (its fast kernel), quantize_onnx's stays 8-bit per tensor
    cfg = cz.QuantConfig(activation=cz.QScheme(bits=8, symmetric=False))
    s = cz.quantize_onnx(src, tmp_path / "q.onnx", cfg, cal)
    assert [r.op for r in s.layers] == ["Gather", "MatMul", "MatMul"]
    if mode == "static":
        p = cz.prepare(m, cfg)
        cz.calibrate(p, batches)
        qm = cz.convert(p)
    else:
        qm = cz.quantize_dynamic(m, cfg)
    check_numerics(
        compare(tmp_path / "q.onnx", s, qm, tokens(16, 5), module_of), exact_codes=mode == "dynamic"
    )
    x = tokens(4, 6)  # default session options
    y, y_cz = run_session(str(tmp_path / "q.onnx"), {"input": x.numpy()})[0], qm(x).detach().numpy()
    assert np.abs(y - y_cz).max() <= THRESHOLDS["onnx_default_session_output_lsb"] * output_lsb(
        y_cz
    )
    # the reference evaluator implements DequantizeLinear from opset 19: lift a copy
    lifted = version_converter.convert_version(onnx.load(str(tmp_path / "q.onnx")), 21)
    y_ref = ReferenceEvaluator(lifted).run(None, {"input": x.numpy()})[0]
    assert np.abs(y_ref - y_cz).max() <= THRESHOLDS["onnx_layer_output_lsb"] * output_lsb(y_cz)


def test_npz_calibration_equals_feed_dicts(tmp_path, convnet_onnx):
    _, src = convnet_onnx
    data = torch.cat([images(16, s) for s in range(3)]).numpy()
    np.savez(tmp_path / "cal.npz", input=data)
    cz.quantize_onnx(src, tmp_path / "a.onnx", calibration=tmp_path / "cal.npz", batch_size=16)
    cz.quantize_onnx(
        src, tmp_path / "b.onnx", calibration=[{"input": data[i : i + 16]} for i in (0, 16, 32)]
    )
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_excludes_by_name_and_op_type(tmp_path, convnet_onnx):
    _, src = convnet_onnx
    cfg = cz.QuantConfig(exclude=("/features/features.0/*",))
    s = cz.quantize_onnx(src, tmp_path / "q.onnx", cfg, mode="weight_only", op_types=("Conv",))
    skipped = dict(s.skipped)
    assert skipped["/features/features.0/Conv"] == "excluded by config"
    assert skipped["/classifier/classifier.1/Gemm"] == "Gemm not in op_types"
    assert {r.name for r in s.layers} == {
        "/features/features.2/Conv",
        "/features/features.4/Conv",
        "/c1d/Conv",
    }
    model = onnx.load(str(tmp_path / "q.onnx"))
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    assert kinds["features.0.weight"] == kinds["classifier.1.weight"] == TensorProto.FLOAT
    assert read_metadata(model)["skipped"][0][0] in skipped


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_foreign_graph(tmp_path, mode):
    onnx.save(foreign_graph(), tmp_path / "f.onnx")
    rng = np.random.default_rng(1)
    cal = (
        [{"in put:0": rng.standard_normal((2, 16, 16)).astype(np.float32)} for _ in range(2)]
        if mode == "static"
        else None
    )
    s = cz.quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", cz.QuantConfig(), cal, mode=mode)
    assert [r.name for r in s.layers] == ["MatMul_0", "MatMul_2", "MatMul_5"]  # unnamed, repeated
    assert "quantized once" in s.layer("MatMul_2").note and s.layer("MatMul_2").weight_bytes == 0
    assert "kept" in s.layer("MatMul_0").note  # the ReduceMean still reads it in float
    model = onnx.load(str(tmp_path / "q.onnx"))
    names = {t.name for t in model.graph.initializer}
    assert "W/shared:0" in names and sum(n.startswith("W/shared:0.weight_q") for n in names) == 1
    for shape in ((1, 3, 16), (5, 1, 16)):  # dynamic dims
        y = run_session(str(tmp_path / "q.onnx"), {"in put:0": np.ones(shape, np.float32)})[0]
        assert y.shape == shape[:2] + (4,)


def test_float16_graph(tmp_path):
    """FAULTS 11: float16 weights are quantized in float32 and cast back; activations are cast
    to float32 around their quantizers."""
    onnx.save(foreign_graph(TensorProto.FLOAT16), tmp_path / "h.onnx")
    cal = [{"in put:0": np.ones((1, 2, 16), np.float16)}]
    cz.quantize_onnx(tmp_path / "h.onnx", tmp_path / "q.onnx", calibration=cal)
    y = run_session(str(tmp_path / "q.onnx"), {"in put:0": np.ones((1, 2, 16), np.float16)})[0]
    assert y.dtype == np.float16 and np.isfinite(y).all()


def test_opset_lift_and_8bit_fallback(tmp_path):
    torch.manual_seed(0)
    src = float_onnx(TextNet().eval(), tokens(2, 0), tmp_path / "t13.onnx", opset=13)
    w4 = cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerChannel(0)))
    s = cz.quantize_onnx(src, tmp_path / "q21.onnx", w4, mode="weight_only")
    assert s.opset == 21 and {r.storage for r in s.layers} == {"INT4"}
    s = cz.quantize_onnx(src, tmp_path / "q13.onnx", w4, mode="weight_only", opset=13)
    assert s.opset == 13 and {r.storage for r in s.layers} == {"INT8"}
    assert all("opset 13 lacks INT4" in r.note for r in s.layers)
    with pytest.raises(cz.ConfigError, match="block_size"):
        cz.quantize_onnx(
            src,
            tmp_path / "g.onnx",
            cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerGroup(16))),
            mode="weight_only",
            opset=13,
        )
    x = tokens(3, 1).numpy()
    a = float_session(str(tmp_path / "q21.onnx")).run(None, {"input": x})[0]
    b = float_session(str(tmp_path / "q13.onnx")).run(None, {"input": x})[0]
    assert np.array_equal(a, b)  # same values, wider type


def test_float16_scales_free_at_run_time(tmp_path):
    """Scales stored as float16 (``scale_dtype``; Cast to float32 before DequantizeLinear, exact)
    halve the scale bytes on disk; onnxruntime folds the Cast, so the MatMuls still fuse into
    MatMulNBits and the embedding's DequantizeLinear reads float32 scales: nothing is cast per
    run."""
    torch.manual_seed(0)
    m = TextNet().eval()
    src = float_onnx(m, tokens(2, 0), tmp_path / "text.onnx")
    w = {
        dt: cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerGroup(16), scale_dtype=dt))
        for dt in ("float32", "float16")
    }
    s32 = cz.quantize_onnx(src, tmp_path / "s32.onnx", w["float32"], mode="weight_only")
    s16 = cz.quantize_onnx(src, tmp_path / "s16.onnx", w["float16"], mode="weight_only")
    model = onnx.load(str(tmp_path / "s16.onnx"))
    scales = [t for t in model.graph.initializer if t.name.endswith(".weight_scale")]
    assert len(scales) == 3 and {t.data_type for t in scales} == {TensorProto.FLOAT16}
    assert s16.weight_bytes < s32.weight_bytes
    qm = cz.quantize_weights(m, w["float16"])
    check_numerics(compare(tmp_path / "s16.onnx", s16, qm, tokens(16, 5), module_of))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "s16.onnx"), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert ops.count("MatMulNBits") == 2 and "Cast" not in ops and "MatMul" not in ops
