"""The ONNX nodes of one cuantiza quantized module (what ``export`` puts in place of a marker).

=====================  ==========================================================================
module                 nodes (x: the layer's input, W: DequantizeLinear of the integer weight)
=====================  ==========================================================================
QuantLinear            [act(x)] -> MatMul(., W^T) [-> Add(bias)]   W^T: (K, O), axis 1 / block on 0
DynamicQuantLinear     dynamic act(x) -> MatMul(., W^T) [-> Add(bias)]
QuantConv (1-D, 2-D)   [act(x)] -> Conv(., W[, bias])              W: (O, C/groups, k...), axis 0
QuantEmbedding         Gather(W, indices)                           W: (V, D), axis 0 / block on 1
=====================  ==========================================================================

``act`` is the static QuantizeLinear -> DequantizeLinear pair of the layer's calibrated qparams
(``qdq.static_act``); weight-only layers (``act is None``) take x as it is. The arithmetic is
that of ``kernels.reference``: (q_x - z_x) s_x and (q_w - z_w) s_w multiplied and summed in
float32 by the runtime instead of exactly in integers, so results agree to float32 rounding
(far below one step s_x s_w of the accumulator).
"""

from __future__ import annotations

import torch
from onnx import TensorProto, helper, numpy_helper

from ..core.scheme import PerTensor
from ..nn import DynamicQuantLinear, QuantConv, QuantEmbedding, QuantLinear
from .builder import GraphBuilder
from .layouts import linear_layout, rows_layout
from .qdq import dequant_weight, dynamic_act, static_act
from .storage import choose_storage
from .summary import LayerRecord

QUANT_MODULES = (QuantLinear, DynamicQuantLinear, QuantConv, QuantEmbedding)


def _ort_form_ok(mod: DynamicQuantLinear) -> bool:
    """DynamicQuantizeLinear is uint8, asymmetric, per tensor only."""
    s = mod.act_scheme
    return (
        s.bits == 8
        and not s.symmetric
        and isinstance(s.granularity, PerTensor)
        and not mod.per_token
    )


def _act(b: GraphBuilder, name: str, x: str, mod, opset: int, form: str) -> tuple[str, str, str]:
    """(float input of the matmul/conv, codes tensor, description) for the layer's input."""
    if isinstance(mod, DynamicQuantLinear):
        f = "ort" if form in ("ort", "auto") and _ort_form_ok(mod) else "exact"
        codes, xq = dynamic_act(b, name, x, mod.act_scheme, mod.per_token, opset, f)
        tok = " per-token" if mod.per_token else ""
        return xq, codes, f"dynamic {mod.act_scheme.describe()}{tok} ({f})"
    act = getattr(mod, "act", None)
    if act is None:
        return x, "", "weight-only"
    codes, xq = static_act(b, name, x, act)
    return xq, codes, f"static {act.scheme.describe()}"


def _bias(b: GraphBuilder, name: str, mod) -> str | None:
    if getattr(mod, "bias", None) is None:
        return None
    return b.init(
        numpy_helper.from_array(mod.bias.detach().to(torch.float32).numpy(), f"{name}.bias")
    )


def _weight(b: GraphBuilder, name: str, mod, opset: int, cache: dict) -> tuple[str, int, object]:
    """The dequantized weight tensor (made once per module), its bytes and its storage."""
    if id(mod) in cache:
        return cache[id(mod)][0], 0, cache[id(mod)][2]
    qt = mod.weight_q
    int_acts = isinstance(mod, DynamicQuantLinear) or getattr(mod, "act", None) is not None
    storage = choose_storage(qt.scheme, opset, int_acts)
    if isinstance(mod, QuantConv):
        lay, reshape = rows_layout(qt, mod.weight_shape)
    elif isinstance(mod, QuantEmbedding):
        lay, reshape = rows_layout(qt, qt.shape)
    else:
        lay, reshape = linear_layout(qt), False
    w, nbytes = dequant_weight(b, name, lay, storage)
    if reshape:
        shape = helper.make_tensor(
            f"{name}.kernel_shape",
            TensorProto.INT64,
            [len(mod.weight_shape)],
            list(mod.weight_shape),
        )
        w = b.node("Reshape", [w, b.init(shape)], name)
    cache[id(mod)] = (w, nbytes, storage)
    return w, nbytes, storage


def _conv_attrs(conv: dict) -> dict:
    """cuantiza keeps 1-D convolutions as 1 x k 2-D ones: drop the leading unit dimension."""
    (sh, sw), (ph, pw), (dh, dw) = conv["stride"], conv["padding"], conv["dilation"]
    if conv["dims"] == 1:
        return {"strides": [sw], "pads": [pw, pw], "dilations": [dw], "group": conv["groups"]}
    return {
        "strides": [sh, sw],
        "pads": [ph, pw, ph, pw],
        "dilations": [dh, dw],
        "group": conv["groups"],
    }


def layer_nodes(
    b: GraphBuilder, name: str, mod, x: str, y: str, opset: int, form: str, cache: dict
) -> LayerRecord:
    """Append the nodes computing ``y`` from ``x`` for the quantized module ``mod``."""
    w, nbytes, storage = _weight(b, name, mod, opset, cache)
    if isinstance(mod, QuantEmbedding):
        b.node("Gather", [w, x], name, outputs=[y], axis=0)
        op, codes, adesc = "Gather", "", "weight-only"
    else:
        xq, codes, adesc = _act(b, name, x, mod, opset, form)
        bias = _bias(b, name, mod)
        if isinstance(mod, QuantConv):
            op = "Conv"
            b.node(
                "Conv",
                [xq, w] + ([bias] if bias else []),
                name,
                outputs=[y],
                **_conv_attrs(mod.conv),
            )
        else:
            op = "MatMul"
            mm = b.node("MatMul", [xq, w], name, outputs=None if bias else [y])
            if bias:
                b.node("Add", [mm, bias], name, outputs=[y])
    qs = mod.weight_q.scheme
    return LayerRecord(
        name, op, qs.describe(), storage.type_name, adesc, nbytes, storage.note, x, codes, y
    )
