"""quantize_onnx static ``outputs=``: which layers onnxruntime fuses into integer kernels, read
from its optimized graph (``optimized_model_filepath``), and what each mode does to the values."""

import collections
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import cuantiza as cz
from cuantiza.cli.digits import DigitsCNN
from cuantiza.onnx.fileio import run_session
from tests.helpers.onnx_models import (
    ConvNet,
    compare,
    float_onnx,
    foreign_graph,
    images,
    module_of,
    output_lsb,
)
from tests.thresholds import THRESHOLDS

FLOAT_LAYERS = {"Conv", "FusedConv", "Gemm", "MatMul", "DequantizeLinear"}


class ResNet(nn.Module):
    """A residual block: conv1's output is read by conv2 and by an Add (float), conv2's by the
    Add."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv2(y) + y).flatten(1))


def _optimized_ops(path, tmp_path) -> collections.Counter:
    """Op counts of onnxruntime's optimized graph (default session, all optimizations)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def _run_unoptimized(path, feed: dict, extra: list = ()) -> dict:
    """The graph's own semantics: no fusion, ``extra`` tensors exposed as outputs."""
    model = onnx.load(str(path))
    have = [o.name for o in model.graph.output]
    model.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(n) for n in extra if n not in have
    )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(names, feed), strict=False))


def _ort_static_ops(src, cal: list, tmp_path) -> collections.Counter:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self):
            self.it = iter(cal)

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(src),
        str(tmp_path / "ort.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return _optimized_ops(tmp_path / "ort.onnx", tmp_path)


def test_digits_cnn_static_fuses_every_layer(tmp_path):
    """The issue's digits CNN: input-only Q/DQ left the depthwise Conv (read by Flatten) and
    the last Gemm (a graph output) in float; ``outputs="auto"`` runs all five quantized layers
    on integer kernels, as many as ORT's own static model, with no DequantizeLinear left."""
    torch.manual_seed(0)
    m = DigitsCNN().eval()
    src = float_onnx(m, images(2, 0), tmp_path / "float.onnx")
    batches = [images(16, s) for s in range(4)]
    cal = [{"input": b.numpy()} for b in batches]
    ops = {
        o: _optimized_ops(
            cz.quantize_onnx(src, tmp_path / f"{o}.onnx", cz.QuantConfig(), cal, outputs=o).path,
            tmp_path,
        )
        for o in ("none", "auto", "all")
    }
    theirs = _ort_static_ops(src, cal, tmp_path)
    assert (ops["none"]["QLinearConv"], ops["none"]["QGemm"]) == (2, 1)  # the input-only form
    assert (ops["auto"]["QLinearConv"], ops["auto"]["QGemm"]) == (3, 2)
    assert not FLOAT_LAYERS & set(ops["auto"]), ops["auto"]
    for o in ("auto", "all"):
        assert (ops[o]["QLinearConv"], ops[o]["QGemm"]) == (theirs["QLinearConv"], theirs["QGemm"])
    # the fused model, as deployed (default session), against cuantiza's integer model
    p = cz.prepare(m, cz.QuantConfig())
    cz.calibrate(p, batches)
    x = images(128, 9)
    y_cz = cz.convert(p)(x).detach().numpy()
    y = run_session(str(tmp_path / "auto.onnx"), {"input": x.numpy()})[0]
    assert np.abs(y - y_cz).max() <= THRESHOLDS["onnx_layer_output_lsb"] * output_lsb(y_cz)


def test_auto_outputs_change_no_value(tmp_path):
    """ConvNet (Relu -> Shape / Reshape -> Conv1d, Relu -> Flatten -> Gemm, Gemm -> output): the
    added Q/DQ give every layer the same activation codes as input-only Q/DQ, and the INT32
    bias moves the output by far less than an LSB; all six layers fuse."""
    torch.manual_seed(0)
    src = float_onnx(ConvNet().eval(), images(2, 0), tmp_path / "float.onnx")
    cal = [{"input": images(16, s).numpy()} for s in range(4)]
    s_none = cz.quantize_onnx(src, tmp_path / "none.onnx", cz.QuantConfig(), cal, outputs="none")
    s_auto = cz.quantize_onnx(src, tmp_path / "auto.onnx", cz.QuantConfig(), cal)
    feed = {"input": images(64, 9).numpy()}
    a = _run_unoptimized(s_none.path, feed, [r.codes for r in s_none.layers])
    b = _run_unoptimized(s_auto.path, feed, [r.codes for r in s_auto.layers])
    for ra, rb in zip(s_none.layers, s_auto.layers, strict=False):
        assert np.array_equal(a[ra.codes], b[rb.codes]), ra.name
    bias_lsb = THRESHOLDS["onnx_int32_bias_output_lsb"]
    assert np.abs(a["output"] - b["output"]).max() <= bias_lsb * output_lsb(a["output"])
    assert "INT32" in s_auto.layer("/classifier/classifier.3/Gemm").note
    ops = _optimized_ops(s_auto.path, tmp_path)
    assert (ops["QLinearConv"], ops["QGemm"]) == (4, 2) and not {"Conv", "FusedConv", "Gemm"} & set(
        ops
    )


def test_all_outputs_quantize_like_ort(tmp_path):
    """A residual block: "auto" leaves the Convs read by the float Add in float (and says so);
    "all" quantizes every layer output, graph output included, as onnxruntime's quantizer does:
    each layer still computes cuantiza's numbers, and the graph output is Q/DQ of the Gemm's."""
    torch.manual_seed(0)
    m = ResNet().eval()
    src = float_onnx(m, images(2, 0), tmp_path / "float.onnx")
    batches = [images(16, s) for s in range(4)]
    cal = [{"input": b.numpy()} for b in batches]
    s_auto = cz.quantize_onnx(src, tmp_path / "auto.onnx", cz.QuantConfig(), cal)
    assert all(
        "read in float (Add)" in s_auto.layer(n).note for n in ("/conv1/Conv", "/conv2/Conv")
    )
    assert _optimized_ops(s_auto.path, tmp_path)["QLinearConv"] < 2
    s_all = cz.quantize_onnx(src, tmp_path / "all.onnx", cz.QuantConfig(), cal, outputs="all")
    ops = _optimized_ops(s_all.path, tmp_path)
    assert (ops["QLinearConv"], ops["QGemm"]) == (2, 1), ops
    p = cz.prepare(m, cz.QuantConfig())
    cz.calibrate(p, batches)
    x = images(32, 9)
    # end to end the values differ by design (8-bit outputs); each layer fed the runtime's input
    # computes cuantiza's numbers (codes within the calibration's float32 rounding)
    for name, st in compare(s_all.path, s_all, cz.convert(p), x, module_of).items():
        assert st["iso_lsb"] <= THRESHOLDS["onnx_isolated_output_lsb"], (name, st)
        assert st["iso_mismatch"] <= THRESHOLDS["onnx_code_mismatch_rate"] * max(st["codes"], 1), (
            name,
            st,
        )
    last = s_all.layer("/fc/Gemm")
    assert last.output != "output"  # the Gemm writes <name>/prequant
    outs = _run_unoptimized(s_all.path, {"input": x.numpy()}, [last.output])
    model = onnx.load(str(s_all.path))
    dq = next(n for n in model.graph.node if n.output[0] == "output")
    scale, zp = (
        onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == n))
        for n in dq.input[1:]
    )
    q = np.clip(np.rint(outs[last.output] / scale) + zp, 0, 255)
    atol = THRESHOLDS["onnx_dequantize_linear_atol"]
    assert np.allclose(outs["output"], (q - zp) * scale, rtol=0, atol=atol)


def test_all_outputs_float16_graph(tmp_path):
    """A float16 graph whose last MatMul writes the graph output: the output keeps its name
    and type (Cast to float32 around the quantizer)."""
    onnx.save(foreign_graph(onnx.TensorProto.FLOAT16), tmp_path / "h.onnx")
    cal = [
        {"in put:0": np.random.default_rng(s).standard_normal((1, 2, 16)).astype(np.float16)}
        for s in range(2)
    ]
    s = cz.quantize_onnx(tmp_path / "h.onnx", tmp_path / "q.onnx", calibration=cal, outputs="all")
    assert "outputs='all'" in s.layer("MatMul_5").note
    y = run_session(str(tmp_path / "q.onnx"), {"in put:0": np.ones((1, 2, 16), np.float16)})[0]
    assert y.dtype == np.float16 and np.isfinite(y).all()
    assert [o.name for o in onnx.load(str(tmp_path / "q.onnx")).graph.output] == ["out/put:0"]


def test_outputs_option_checked(tmp_path):
    src = float_onnx(ConvNet().eval(), images(2, 0), tmp_path / "float.onnx")
    with pytest.raises(cz.ConfigError, match="outputs must be one of"):
        cz.quantize_onnx(src, tmp_path / "a.onnx", outputs="some")
    with pytest.raises(cz.ConfigError, match="needs mode='static'"):
        cz.quantize_onnx(src, tmp_path / "b.onnx", mode="dynamic", outputs="all")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
