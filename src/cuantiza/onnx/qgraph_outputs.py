"""Static mode of ``quantize_onnx``: the layer outputs onnxruntime needs quantized to run every
quantized Conv / Gemm on an integer kernel (``outputs=``).

onnxruntime's QDQ transformers fuse ``DequantizeLinear -> Conv -> QuantizeLinear`` into
QLinearConv (``Gemm`` -> QGemm, ``MatMul`` -> QLinearMatMul), dropping a Relu / Clip between the
layer and the QuantizeLinear (ReluQuantFusion). A Conv whose output reaches no QuantizeLinear
directly (a Flatten in between, a float op, a graph output) runs in float: measured on the digits
CNN (onnxruntime 1.32, ``optimized_model_filepath``), input-only Q/DQ ran 2 QLinearConv + 1 QGemm
and left the depthwise Conv (FusedConv) and the last Gemm in float. Two layers need nothing:
``DequantizeLinear -> MatMul`` runs on integers without an output quantizer (MatMulIntegerToFloat),
and so does a Gemm (QGemm with a float output) once its bias is an INT32 DequantizeLinear at scale
s_x s_w; a float bias stops that fusion.

``outputs`` modes:

* ``"none"``: Q/DQ on layer inputs only: cuantiza's torch static model op for op.
* ``"auto"`` (default): only what changes no value. A layer's output (after a Relu / Clip it
  alone feeds) that reaches quantized layers only through shape ops (Flatten, Reshape, Squeeze,
  Unsqueeze, Transpose, Identity; Shape reads) gets the QuantizeLinear -> DequantizeLinear those
  layers apply anyway: its own observer sees the same values, so the qparams are the same and
  Q(DQ(Q(x))) = Q(x). A Gemm whose output is read in float gets its bias as INT32 at scale
  s_x s_w (the rounding onnxruntime applies to the bias of every layer it fuses; at most
  0.5 s_x s_w, a small fraction of an output LSB). Any other output stays float, with a note.
* ``"all"``: as onnxruntime's own quantizer: every quantized layer's output (after its Relu /
  Clip) gets a calibrated Q/DQ, in front of float ops and graph outputs too. The outputs are then
  8-bit values: within half an LSB of their scale, clipped beyond the calibrated range.

The quantized tensor keeps its name: its producer writes a fresh ``<name>/prequant`` and the
DequantizeLinear writes ``<name>``, so every reader, graph outputs included, reads the
dequantized values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import GraphProto, TensorProto, helper, numpy_helper

from ..core.scheme import PerTensor
from .builder import GraphBuilder

OUTPUT_MODES = ("none", "auto", "all")
PASS_ACTS = ("Relu", "Clip")
RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")
SHAPE_READS = ("Shape", "Size")
AUTO_NOTE = "output Q/DQ for onnxruntime's fusion (its readers' qparams: values unchanged)"
ALL_NOTE = "output quantized (outputs='all'): 8-bit, clipped to the calibrated range"
BIAS_NOTE = "bias INT32 at s_x s_w (fuses into QGemm, float output)"


@dataclass
class OutputPlan:
    quant: dict = field(
        default_factory=dict
    )  # key (tensor, scheme, spec) -> (producer index, slot)
    bias: list = field(default_factory=list)  # Gemm uses whose bias becomes INT32
    notes: dict = field(default_factory=dict)  # use index -> note


@dataclass
class _Index:
    readers: dict  # tensor -> [(node index, input slot)]
    producer: dict  # tensor -> (node index, output slot)
    outputs: set  # graph outputs
    hidden: set  # tensors read inside subgraphs (not renamable here)


def _index(graph: GraphProto) -> _Index:
    readers, producer, hidden = {}, {}, set()

    def walk(g):
        for n in g.node:
            hidden.update(n.input)
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub)

    for i, n in enumerate(graph.node):
        for s, x in enumerate(n.input):
            readers.setdefault(x, []).append((i, s))
        for s, y in enumerate(n.output):
            producer[y] = (i, s)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                walk(sub)
    return _Index(readers, producer, {o.name for o in graph.output}, hidden)


def _tail(graph: GraphProto, idx: _Index, out: str) -> str:
    """``out``, or the output of the Relu / Clip chain it alone feeds."""
    while out not in idx.outputs and out not in idx.hidden and len(idx.readers.get(out, [])) == 1:
        i, slot = idx.readers[out][0]
        if graph.node[i].op_type not in PASS_ACTS or slot != 0:
            break
        out = graph.node[i].output[0]
    return out


def _only_quantized(graph: GraphProto, idx: _Index, t: str, spec: tuple, act_key: dict) -> bool:
    """Whether ``t`` reaches only layers quantizing it with ``spec``, through shape ops."""
    if t in idx.outputs or t in idx.hidden:
        return False
    for i, slot in idx.readers.get(t, []):
        node = graph.node[i]
        if (slot == 0 and act_key.get(i) == (t,) + spec) or node.op_type in SHAPE_READS:
            continue
        if (
            node.op_type in RESHAPES
            and slot == 0
            and _only_quantized(graph, idx, node.output[0], spec, act_key)
        ):
            continue
        return False
    return True


def _bias_ok(node, inits: dict) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return False
    t = inits.get(node.input[2])
    return t is not None and t.data_type == TensorProto.FLOAT and len(t.dims) == 1


def plan_outputs(graph: GraphProto, uses: list, groups: dict, mode: str) -> OutputPlan:
    """Which quantized layers' outputs get Q/DQ, which Gemm biases become INT32 (see above)."""
    plan = OutputPlan()
    if mode == "none":
        return plan
    idx = _index(graph)
    inits = {t.name: t for t in graph.initializer}
    act_key = {u.index: k for k, group in groups.items() for u in group}
    for u in uses:
        if u.act is None or u.op not in ("Conv", "Gemm", "MatMul"):
            continue
        spec = (u.config.activation, u.config.observer)
        out = graph.node[u.index].output[0]
        t = _tail(graph, idx, out)
        readers = idx.readers.get(t, [])
        if t not in idx.outputs and all(
            s == 0 and act_key.get(i) == (t,) + spec for i, s in readers
        ):
            continue  # already read by its QuantizeLinear only
        free = isinstance(spec[0].granularity, PerTensor) and _only_quantized(
            graph, idx, t, spec, act_key
        )
        if t not in idx.hidden and (mode == "all" or free):
            plan.quant[(t,) + spec] = idx.producer[t]
            plan.notes[u.index] = ALL_NOTE if mode == "all" else AUTO_NOTE
        else:
            floats = [
                graph.node[i].op_type
                for i, s in readers
                if not (s == 0 and act_key.get(i) == (t,) + spec)
            ]
            _float_output(
                graph, u, t, floats + (["graph output"] if t in idx.outputs else []), inits, plan
            )
    return plan


def _float_output(
    graph: GraphProto, u, t: str, floats: list, inits: dict, plan: OutputPlan
) -> None:
    """A layer whose output stays float (read by ``floats``): MatMul and a Gemm without bias
    fuse as they are; a Gemm's float bias becomes INT32; anything else gets a note."""
    node = graph.node[u.index]
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if u.op == "MatMul" or (u.op == "Gemm" and t == node.output[0] and not has_bias):
        return
    if u.op == "Gemm" and t == node.output[0] and _bias_ok(node, inits):
        plan.bias.append(u)
        return
    plan.notes[u.index] = (
        f"output read in float ({', '.join(sorted(set(floats)))}): onnxruntime runs this {u.op} in "
        "float; outputs='all' quantizes it"
    )


def int32_bias(
    b: GraphBuilder, graph: GraphProto, u, x_scale: float, w_scale: np.ndarray | None
) -> str | None:
    """DequantizeLinear of the Gemm's bias as INT32 codes at scale s_x s_w (float32, per
    output channel); None when the weight has per-group scales or the codes would not fit."""
    if w_scale is None:
        return None
    name = graph.node[u.index].input[2]
    bias = numpy_helper.to_array(next(t for t in graph.initializer if t.name == name)).astype(
        np.float64
    )
    s = np.broadcast_to(np.float32(x_scale) * w_scale.astype(np.float32), bias.shape).astype(
        np.float32
    )
    if not (np.isfinite(s).all() and (s > 0).all()):
        return None
    q = np.rint(bias / s.astype(np.float64))
    if np.abs(q).max(initial=0) >= 2**31 - 1:
        return None
    qn = b.init(numpy_helper.from_array(q.astype(np.int32), f"{name}.bias_q"))
    sn = b.init(numpy_helper.from_array(s, f"{name}.bias_scale"))
    return b.node("DequantizeLinear", [qn, sn], name, axis=0)
