"""export_onnx: QDQ graphs that pass the checker, run in onnxruntime, and keep cuantiza's
numbers."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import cuantiza as cz
from cuantiza.cli.digits import DigitsCNN
from cuantiza.onnx import read_metadata
from cuantiza.onnx.fileio import run_session
from tests.helpers.onnx_models import (
    ConvNet,
    TextNet,
    check_numerics,
    compare,
    float_session,
    images,
    output_lsb,
    tokens,
)
from tests.thresholds import THRESHOLDS

LSB = THRESHOLDS["onnx_layer_output_lsb"]


def _static(model, batches):
    p = cz.prepare(model, cz.QuantConfig())
    cz.calibrate(p, batches)
    return cz.convert(p)


def _reference_evaluator(path, feed: dict) -> np.ndarray:
    return ReferenceEvaluator(str(path)).run(None, feed)[0]


def test_digits_cnn_static_numerics(tmp_path):
    torch.manual_seed(0)
    qm = _static(DigitsCNN().eval(), [images(16, s) for s in range(4)])
    x = images(64, 10)
    s = cz.export_onnx(qm, x, tmp_path / "digits.onnx")
    assert s.opset == 21 and [r.op for r in s.layers] == ["Conv"] * 3 + ["MatMul"] * 2
    onnx.checker.check_model(str(tmp_path / "digits.onnx"), full_check=True)
    stats = compare(tmp_path / "digits.onnx", s, qm, x)
    check_numerics(stats)
    print({k: (round(v["lsb"], 5), v["mismatch"], v["codes"]) for k, v in stats.items()})
    y_ref = _reference_evaluator(tmp_path / "digits.onnx", {"input": x.numpy()})
    y = qm(x).numpy()
    assert np.abs(y_ref - y).max() <= LSB * output_lsb(y)


STATIC = {
    "static": cz.QuantConfig(),
    "static_sym_act": cz.QuantConfig(activation=cz.QScheme(8, symmetric=True)),
    "static_a4_w_asym": cz.QuantConfig(
        activation=cz.QScheme(4, symmetric=False),
        weight=cz.QScheme(8, symmetric=False, granularity=cz.PerChannel(0)),
    ),
}


@pytest.mark.parametrize(
    "workflow", [*STATIC, "weight_only", "dynamic", "per_token", "ort", "exact"]
)
def test_convnet_workflows(tmp_path, workflow):
    """Conv2d, grouped and depthwise Conv2d, Conv1d and Linear, each workflow."""
    torch.manual_seed(0)
    m = ConvNet().eval()
    if workflow in STATIC:
        p = cz.prepare(m, STATIC[workflow])
        cz.calibrate(p, [images(16, s) for s in range(4)])
        qm = cz.convert(p)
    elif workflow == "weight_only":
        qm = cz.quantize_weights(
            m,
            cz.QuantConfig(
                weight=cz.QScheme(4, granularity=cz.PerGroup(16)), group_remainder="pad"
            ),
        )
    else:
        qm = cz.quantize_dynamic(
            m, cz.QuantConfig(dynamic="per_token" if workflow == "per_token" else "per_tensor")
        )
    x = images(32, 11)
    form = workflow if workflow in ("ort", "exact") else "auto"
    s = cz.export_onnx(qm, x, tmp_path / "m.onnx", dynamic_form=form)
    stats = compare(tmp_path / "m.onnx", s, qm, x)
    # DynamicQuantizeLinear ("ort", and "auto" for uint8 per tensor) rounds its scale in float32
    check_numerics(
        stats,
        exact_codes=workflow not in ("ort", "dynamic"),
        end_to_end_lsb=workflow != "static_a4_w_asym",
    )
    if workflow == "ort":
        assert any(
            n.op_type == "DynamicQuantizeLinear"
            for n in onnx.load(str(tmp_path / "m.onnx")).graph.node
        )
    for n in (3, 1):  # the batch dimension is dynamic; default session options
        xn = images(n, 5)
        y = run_session(str(tmp_path / "m.onnx"), {"input": xn.numpy()})[0]
        y_cz = qm(xn).detach().numpy()
        assert y.shape == (n, 10)
        assert np.abs(y - y_cz).max() <= THRESHOLDS["onnx_default_session_output_lsb"] * output_lsb(
            y_cz
        )


@pytest.mark.parametrize("workflow", ["static", "dynamic"])
def test_textnet_gather_matmul(tmp_path, workflow):
    torch.manual_seed(0)
    m = TextNet().eval()
    qm = (
        _static(m, [tokens(8, s) for s in range(3)])
        if workflow == "static"
        else cz.quantize_dynamic(m)
    )
    x = tokens(16, 7)
    s = cz.export_onnx(qm, x, tmp_path / "t.onnx")
    assert [r.op for r in s.layers] == ["Gather", "MatMul", "MatMul"]
    check_numerics(compare(tmp_path / "t.onnx", s, qm, x))
    y = qm(x).numpy()
    y_ref = _reference_evaluator(tmp_path / "t.onnx", {"input": x.numpy()})
    assert np.abs(y_ref - y).max() <= LSB * output_lsb(y)


STORAGE = {1: "INT2", 2: "INT2", 3: "INT4", 4: "INT4", 5: "INT8", 6: "INT8", 7: "INT8", 8: "INT8"}


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_width_runs_in_its_smallest_type(tmp_path, bits):
    torch.manual_seed(0)
    qm = cz.quantize_weights(
        TextNet().eval(), cz.QuantConfig(weight=cz.QScheme(bits, granularity=cz.PerGroup(16)))
    )
    x = tokens(4, 1)
    s = cz.export_onnx(qm, x, tmp_path / "w.onnx")
    model = onnx.load(str(tmp_path / "w.onnx"))
    assert s.opset == (25 if bits <= 2 else 21)
    codes = [t for t in model.graph.initializer if t.name.endswith(".weight_q")]
    assert {TensorProto.DataType.Name(t.data_type) for t in codes} == {STORAGE[bits]}
    meta = read_metadata(model)
    native = bits in (2, 4, 8)
    assert all(bool(layer["note"]) != native for layer in meta["layers"]), meta
    y = qm(x).numpy()
    got = run_session(str(tmp_path / "w.onnx"), {"input": x.numpy()})[0]
    assert np.abs(got - y).max() <= LSB * output_lsb(y)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(256, 256), nn.Linear(256, 64)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize(
    "scheme",
    [
        cz.QScheme(4, granularity=cz.PerChannel(0)),
        cz.QScheme(4, granularity=cz.PerGroup(32), scale_dtype="float16"),
        cz.QScheme(4, symmetric=False, granularity=cz.PerGroup(128)),
    ],
)
def test_4bit_export_is_small(tmp_path, scheme):
    """INT4 codes are packed two to a byte. (Group-32 scales in float32 alone cost 1 bit per
    weight: 4-bit group-32 asymmetric is 5.125 bits/weight, 0.64 of int8 per channel.)"""
    torch.manual_seed(0)
    m, x = MLP().eval(), torch.randn(2, 256)
    b8 = cz.export_onnx(cz.quantize_weights(m), x, tmp_path / "w8.onnx").file_bytes
    b4 = cz.export_onnx(
        cz.quantize_weights(m, cz.QuantConfig(weight=scheme)), x, tmp_path / "w4.onnx"
    ).file_bytes
    print(f"{scheme.describe()}: 8-bit {b8} B, 4-bit {b4} B, ratio {b4 / b8:.3f}")
    assert b4 <= THRESHOLDS["onnx_4bit_vs_8bit_bytes"] * b8


def test_4bit_digits_cnn_is_small(tmp_path):
    """The issue's size promise on the digits CNN itself (measured 0.586; 2-bit: 0.379)."""
    torch.manual_seed(0)
    m, x = DigitsCNN().eval(), images(2, 0)
    b8 = cz.export_onnx(cz.quantize_weights(m), x, tmp_path / "w8.onnx").file_bytes
    w4 = cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerChannel(0)))
    b4 = cz.export_onnx(cz.quantize_weights(m, w4), x, tmp_path / "w4.onnx").file_bytes
    assert b4 <= THRESHOLDS["onnx_4bit_vs_8bit_bytes"] * b8


@pytest.mark.parametrize("form", ["exact", "ort"])
def test_all_zero_activations(tmp_path, form):
    """FAULTS 5: a zero range gives scale 1 in both dynamic forms; the layer outputs its bias."""
    torch.manual_seed(0)
    qm = cz.quantize_dynamic(MLP().eval())
    x = torch.zeros(2, 256)
    cz.export_onnx(qm, x, tmp_path / "z.onnx", dynamic_form=form)
    y = float_session(str(tmp_path / "z.onnx")).run(None, {"input": x.numpy()})[0]
    y_cz = qm(x).detach().numpy()
    assert np.isfinite(y).all()
    assert np.abs(y - y_cz).max() <= THRESHOLDS["onnx_isolated_output_lsb"] * output_lsb(y_cz)


@pytest.mark.parametrize("granularity", [cz.PerChannel(0), cz.PerGroup(8)])
def test_axis_is_always_set(tmp_path, granularity):
    """FAULTS 18: every DequantizeLinear with more than one scale names its axis, and the
    scales line up with that axis of the codes."""
    torch.manual_seed(0)
    cfg = cz.QuantConfig(weight=cz.QScheme(8, granularity=granularity), group_remainder="pad")
    s = cz.export_onnx(
        cz.quantize_weights(ConvNet().eval(), cfg), images(2, 0), tmp_path / "a.onnx"
    )
    model = onnx.load(str(tmp_path / "a.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(dqs) == len(s.layers)
    for n in dqs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        q, sc = inits[n.input[0]], inits[n.input[1]]
        assert "axis" in attrs, n.name
        if "block_size" in attrs:
            assert list(sc.dims)[attrs["axis"]] == -(-q.dims[attrs["axis"]] // attrs["block_size"])
        else:
            assert list(sc.dims) == [q.dims[attrs["axis"]]]


def test_shared_module_stored_once_and_deterministic(tmp_path):
    ql = cz.quantize_weights(nn.Sequential(nn.Linear(16, 16)).eval())[0]
    qm = nn.Sequential(ql, nn.ReLU(), ql)  # one quantized module, used twice
    x = torch.randn(3, 16)
    s1 = cz.export_onnx(qm, x, tmp_path / "a.onnx")
    cz.export_onnx(qm, x, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    model = onnx.load(str(tmp_path / "a.onnx"))
    assert len(s1.layers) == 1
    assert sum(t.name.endswith(".weight_q") for t in model.graph.initializer) == 1
    assert sum(n.op_type == "MatMul" for n in model.graph.node) == 2
    got = float_session(str(tmp_path / "a.onnx")).run(None, {"input": x.numpy()})[0]
    y = qm(x).detach().numpy()
    assert np.abs(got - y).max() <= THRESHOLDS["onnx_isolated_output_lsb"] * output_lsb(y)


def test_float16_scales_cast_exactly(tmp_path):
    torch.manual_seed(0)
    cfg = cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerGroup(16), scale_dtype="float16"))
    qm = cz.quantize_weights(TextNet().eval(), cfg)
    x = tokens(3, 2)
    cz.export_onnx(qm, x, tmp_path / "h.onnx")
    model = onnx.load(str(tmp_path / "h.onnx"))
    scales = [t for t in model.graph.initializer if t.name.endswith(".weight_scale")]
    assert {t.data_type for t in scales} == {TensorProto.FLOAT16}
    table = next(t for t in model.graph.initializer if t.name == "emb.weight_q")
    assert table.dims == [50, 32]
    out = float_session(str(tmp_path / "h.onnx")).run(None, {"input": x.numpy()})[0]
    y = qm(x).detach().numpy()
    assert np.abs(out - y).max() <= THRESHOLDS["onnx_isolated_output_lsb"] * output_lsb(y)
    assert numpy_helper.to_array(scales[0]).dtype == np.float16
