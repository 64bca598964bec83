"""QDQ node groups: integer weights behind DequantizeLinear, quantized activations.

Weights (``dequant_weight``): an integer initializer q, scales s and (asymmetric) zero points z,
``DequantizeLinear(q, s, z, axis[, block_size]) = (q - z) * s`` in float32. Scales stored as
float16/bfloat16 go through ``Cast`` to float32 first (exact), so the values equal cuantiza's
``QTensor.dequantize``. Per-channel layouts always carry their ``axis``.

Static activations (``static_act``): ``QuantizeLinear`` computes
``q = saturate(round(x / s) + z)`` (round half to even, as ``cuantiza.ops.quantize``) into
uint8 (asymmetric) or int8 (symmetric); a scheme narrower than that type ([-127, 127], or fewer
bits) gets a ``Clip`` to [s (qmin - z), s (qmax - z)] first, which yields exactly the clamped
codes. Then ``DequantizeLinear`` gives s (q - z).

Dynamic activations (``dynamic_act``), two forms:

* ``"exact"``: the qparams of ``cuantiza.modules.common.dynamic_qparams`` computed in the graph
  (min/max per tensor or per row, float64 scale rounded once to float32, zero range -> 1,
  smallest normal as floor, z = clamp(round(qmin - lo / s))), then q = clamp(round(x / s) + z)
  and s (q - z) in float32: any bits, symmetric or not, per tensor or per token.
* ``"ort"``: ``DynamicQuantizeLinear`` -> ``DequantizeLinear``, uint8 asymmetric per tensor only.
  Its scale is computed in float32 ((max - min) / 255, two roundings instead of one), so codes
  may rarely differ by 1 from cuantiza's; onnxruntime runs it with exact integer kernels.

``"auto"`` (the default of the public functions) takes ``"ort"`` where the scheme allows it:
measured on this project's CPU, onnxruntime's default session fuses the ``"exact"`` form's float
activations and DequantizeLinear weights into MatMulNBits, which re-quantizes the activations to
int8 (up to ~1.5 LSB off cuantiza), while the ``"ort"`` form matched cuantiza exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from onnx import TensorProto, helper

from ..core.qparams import QParams
from ..core.scheme import QScheme
from ..errors import ConfigError
from .builder import GraphBuilder
from .storage import Storage, code_tensor, scale_tensor

FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal: floor of every scale
DYNAMIC_FORMS = ("auto", "exact", "ort")


def check_dynamic_form(form: str) -> None:
    if form not in DYNAMIC_FORMS:
        raise ConfigError(f"dynamic_form must be one of {DYNAMIC_FORMS}, got {form!r}")


@dataclass
class WeightLayout:
    """Integer codes and qparams arranged as the ONNX initializer (not cuantiza's rows)."""

    q: np.ndarray  # integers, initializer shape
    scale: torch.Tensor  # () per tensor, (C,) per axis, or blocked (q's rank)
    zero_point: torch.Tensor | None  # like scale; None for symmetric schemes
    axis: int | None  # None: per tensor
    block_size: int | None = None  # per-group along ``axis``


def dequant_weight(
    b: GraphBuilder, prefix: str, lay: WeightLayout, storage: Storage
) -> tuple[str, int]:
    """Add the initializers and the DequantizeLinear of one weight. Returns (float output
    name, bytes of the initializers)."""
    q = b.init(code_tensor(f"{prefix}.weight_q", lay.q, storage))
    st = scale_tensor(f"{prefix}.weight_scale", lay.scale)
    nbytes = len(b.initializers[-1].raw_data) + len(st.raw_data)
    s = b.init(st)
    if st.data_type != TensorProto.FLOAT:
        s = b.node("Cast", [s], prefix, to=TensorProto.FLOAT)
    inputs = [q, s]
    zp = lay.zero_point
    if zp is None and storage.offset:
        zp = torch.zeros(lay.scale.shape, dtype=torch.int32)
    if zp is not None:
        zt = code_tensor(f"{prefix}.weight_zero_point", zp.numpy(), storage)
        nbytes += len(zt.raw_data)
        inputs.append(b.init(zt))
    attrs = {}
    if lay.axis is not None:
        attrs["axis"] = lay.axis
    if lay.block_size is not None:
        attrs["block_size"] = lay.block_size
    return b.node("DequantizeLinear", inputs, prefix, **attrs), nbytes


def _zp_type(scheme: QScheme) -> int:
    return TensorProto.INT8 if scheme.symmetric else TensorProto.UINT8


def static_act(b: GraphBuilder, prefix: str, x: str, qp: QParams) -> tuple[str, str]:
    """QuantizeLinear -> DequantizeLinear with fixed qparams. Returns (codes, dequantized)."""
    sch = qp.scheme
    s = float(qp.scale.to(torch.float32))
    z = int(qp.zero_point)
    type_lo, type_hi = (-128, 127) if sch.symmetric else (0, 255)
    if sch.qmin > type_lo or sch.qmax < type_hi:
        lo = float(np.float32(s) * np.float32(sch.qmin - z))
        hi = float(np.float32(s) * np.float32(sch.qmax - z))
        x = b.node(
            "Clip", [x, b.const(f"{prefix}.act_min", lo), b.const(f"{prefix}.act_max", hi)], prefix
        )
    s_name = b.const(f"{prefix}.act_scale", s)
    z_name = b.const(f"{prefix}.act_zero_point", z, _zp_type(sch))
    codes = b.node("QuantizeLinear", [x, s_name, z_name], prefix)
    return codes, b.node("DequantizeLinear", [codes, s_name, z_name], prefix)


def _reduce(b: GraphBuilder, op: str, x: str, prefix: str, per_row: bool, opset: int) -> str:
    """ReduceMin/ReduceMax over the last axis (kept) or over everything (scalar)."""
    if not per_row:
        return b.node(op, [x], prefix, keepdims=0)
    if opset >= 18:  # axes became an input in opset 18
        return b.node(
            op,
            [x, b.init(helper.make_tensor(f"{prefix}.axes", TensorProto.INT64, [1], [-1]))],
            prefix,
            keepdims=1,
        )
    return b.node(op, [x], prefix, axes=[-1], keepdims=1)


def _dynamic_scale(b: GraphBuilder, p: str, lo: str, hi: str, sch: QScheme) -> tuple[str, str]:
    """(s as float32, lo as float64): the scale rule of ``qparams.scale_from_range``."""
    lo64 = b.node("Cast", [lo], p, to=TensorProto.DOUBLE)
    hi64 = b.node("Cast", [hi], p, to=TensorProto.DOUBLE)
    if sch.symmetric:
        amax = b.node("Max", [b.node("Neg", [lo64], p), hi64], p)
        s64 = b.node("Div", [amax, b.const(f"{p}.qmax", float(sch.qmax), TensorProto.DOUBLE)], p)
    else:
        levels = b.const(f"{p}.levels", float(sch.qmax - sch.qmin), TensorProto.DOUBLE)
        s64 = b.node("Div", [b.node("Sub", [hi64, lo64], p), levels], p)
    zero = b.const(f"{p}.zero64", 0.0, TensorProto.DOUBLE)
    one = b.const(f"{p}.one64", 1.0, TensorProto.DOUBLE)
    s64 = b.node("Where", [b.node("Equal", [s64, zero], p), one, s64], p)  # zero range: 1
    s64 = b.node("Max", [s64, b.const(f"{p}.tiny", FLOAT32_TINY, TensorProto.DOUBLE)], p)
    return b.node("Cast", [s64], p, to=TensorProto.FLOAT), lo64


def _dynamic_zero_point(b: GraphBuilder, p: str, lo64: str, s: str, sch: QScheme) -> str:
    """z = clamp(round(qmin - lo / s), qmin, qmax) in float64, as float32 (small integer)."""
    ratio = b.node("Div", [lo64, b.node("Cast", [s], p, to=TensorProto.DOUBLE)], p)
    t = b.node(
        "Round",
        [b.node("Sub", [b.const(f"{p}.qmin64", float(sch.qmin), TensorProto.DOUBLE), ratio], p)],
        p,
    )
    t = b.node(
        "Clip",
        [
            t,
            b.const(f"{p}.zmin", float(sch.qmin), TensorProto.DOUBLE),
            b.const(f"{p}.zmax", float(sch.qmax), TensorProto.DOUBLE),
        ],
        p,
    )
    return b.node("Cast", [t], p, to=TensorProto.FLOAT)


def dynamic_act(
    b: GraphBuilder,
    prefix: str,
    x: str,
    sch: QScheme,
    per_row: bool,
    opset: int,
    form: str = "exact",
) -> tuple[str, str]:
    """Activation quantized from its own range at run time. Returns (codes, dequantized);
    codes are float32 integers in the exact form, uint8 in the ``"ort"`` form."""
    p = prefix
    if form == "ort":
        outs = [b.name(f"{p}/dql_{k}") for k in ("q", "scale", "zero_point")]
        b.node("DynamicQuantizeLinear", [x], p, outputs=outs)
        return outs[0], b.node("DequantizeLinear", outs, p)
    lo = b.node(
        "Min", [_reduce(b, "ReduceMin", x, p, per_row, opset), b.const(f"{p}.zero", 0.0)], p
    )
    hi = b.node(
        "Max", [_reduce(b, "ReduceMax", x, p, per_row, opset), b.const(f"{p}.zero", 0.0)], p
    )
    s, lo64 = _dynamic_scale(b, p, lo, hi, sch)
    t = b.node("Round", [b.node("Div", [x, s], p)], p)
    if not sch.symmetric:
        z = _dynamic_zero_point(b, p, lo64, s, sch)
        t = b.node("Add", [t, z], p)
    codes = b.node(
        "Clip", [t, b.const(f"{p}.qmin", float(sch.qmin)), b.const(f"{p}.qmax", float(sch.qmax))], p
    )
    centered = codes if sch.symmetric else b.node("Sub", [codes, z], p)
    return codes, b.node("Mul", [centered, s], p)
