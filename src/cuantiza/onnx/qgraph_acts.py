"""Activation edits of ``quantize_onnx``: static QDQ from calibration, or dynamic quantization.

Each (tensor, scheme, range spec) is quantized once, however many nodes read it; the nodes are
placed just before the first reader, or right after the producer for the layer outputs that
static mode quantizes too (``qgraph_outputs``: what onnxruntime needs to fuse each layer into an
integer kernel), whose producer then writes a fresh name. Static qparams come from cuantiza
observers fed by ``calibrate.observe`` (layer inputs and those outputs in the same pass); a
tensor that saw no finite value is an error naming it (FAULTS 12), never a NaN scale.
Float16 / bfloat16 / double activations are cast to float32 around the quantizer
(``qgraph.cast_around``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from onnx import ModelProto, TensorProto

from ..core.scheme import PerTensor, QScheme
from ..errors import CalibrationError
from .builder import GraphBuilder
from .calibrate import feeds, input_shapes, observe
from .qdq import dynamic_act, static_act
from .qgraph import act_groups, cast_around, readers
from .qgraph_outputs import BIAS_NOTE, OutputPlan, int32_bias, plan_outputs

MATMULS = ("MatMul", "Gemm")


@dataclass
class ActEdits:
    before: dict = field(default_factory=dict)  # node index -> nodes to insert before it
    after: dict = field(default_factory=dict)  # node index -> nodes to insert after it
    renames: dict = field(default_factory=dict)  # (node index, slot) -> new input name
    out_renames: dict = field(default_factory=dict)  # (node index, slot) -> new output name
    unused: set = field(default_factory=set)  # float initializers nothing reads any more
    described: dict = field(default_factory=dict)  # node index -> (codes tensor, description)
    notes: dict = field(default_factory=dict)  # node index -> note


def _ort_ok(s: QScheme, per_token: bool) -> bool:
    return (
        s.bits == 8 and not s.symmetric and isinstance(s.granularity, PerTensor) and not per_token
    )


def _calibrate(model: ModelProto, groups: dict, calibration, inputs: dict, batch_size: int):
    """{key: QParams} for static keys (tensor, scheme, spec), and the first feed."""
    made, observers = {}, {}
    for tensor, _, spec in groups:
        if (tensor, spec) not in made:
            made[(tensor, spec)] = spec.make()
            observers.setdefault(tensor, []).append(made[(tensor, spec)])
    sized = hasattr(calibration, "__len__") and not isinstance(calibration, (str, os.PathLike))
    n, first = observe(
        model,
        observers,
        feeds(calibration, inputs, batch_size, input_shapes(model)),
        inputs,
        len(calibration) if sized else None,
    )
    if n == 0:
        raise CalibrationError("the calibration data yielded no batches")
    unfed = sorted({t for (t, _), o in made.items() if o.n_seen == 0})
    if unfed:
        raise CalibrationError(
            f"{len(unfed)} activation(s) saw no finite calibration value: {', '.join(unfed[:5])}; "
            "feed batches that reach them, or exclude the nodes reading them"
        )
    return {k: made[(k[0], k[2])].qparams(k[1]) for k in groups}, first


def _quantizer(b: GraphBuilder, key: tuple, mode: str, qparams: dict, opset: int, form: str):
    """(build(float32 tensor) -> (codes, dequantized), description) for one activation key:
    static (tensor, scheme, spec) or dynamic (tensor, scheme, per_token)."""
    x, scheme = key[0], key[1]
    if mode == "static":
        return (lambda xf: static_act(b, x, xf, qparams[key])), f"static {scheme.describe()}"
    per_token = key[2]
    f = "ort" if form in ("ort", "auto") and _ort_ok(scheme, per_token) else "exact"
    desc = f"dynamic {scheme.describe()}{' per-token' if per_token else ''} ({f})"
    return (lambda xf: dynamic_act(b, x, xf, scheme, per_token, opset, f)), desc


def activation_edits(
    b: GraphBuilder,
    model: ModelProto,
    uses: list,
    mode: str,
    inputs: dict,
    calibration,
    batch_size: int,
    elem_types: dict,
    opset: int,
    form: str = "auto",
    outputs: str = "auto",
    weights: dict | None = None,
) -> tuple[ActEdits, dict | None]:
    """The activation nodes for ``mode``; returns (edits, first calibration feed or None).
    ``outputs``: static output handling (``qgraph_outputs``); ``weights``: the weight edits
    ({use index: WeightEdit}), whose scales an INT32 bias needs."""
    edits = ActEdits()
    if mode == "weight_only":
        return edits, None
    plan = OutputPlan()
    if mode == "dynamic":
        for u in uses:
            if u.op == "Conv":
                edits.notes[u.index] = "dynamic: convolutions run weight-only"
        groups = act_groups(
            uses,
            lambda u: (
                (u.act, u.config.activation, u.config.dynamic == "per_token")
                if u.op in MATMULS
                else None
            ),
        )
        qparams, first = {}, None
    else:
        groups = act_groups(
            uses, lambda u: (u.act, u.config.activation, u.config.observer) if u.act else None
        )
        plan = plan_outputs(model.graph, uses, groups, outputs)
        keys = list(groups) + [k for k in plan.quant if k not in groups]
        qparams, first = _calibrate(model, keys, calibration, inputs, batch_size)
        edits.notes.update(plan.notes)
    for key in list(groups) + [k for k in plan.quant if k not in groups]:
        _quantize_key(
            b,
            edits,
            key,
            groups.get(key, []),
            plan.quant.get(key),
            elem_types,
            _quantizer(b, key, mode, qparams, opset, form),
        )
    if plan.bias:
        _int32_biases(b, model, plan.bias, groups, qparams, weights or {}, edits)
    return edits, first


def _quantize_key(
    b: GraphBuilder, edits: ActEdits, key: tuple, group: list, producer, elem_types: dict, quantizer
) -> None:
    """The Q/DQ of one key. ``producer`` (node index, output slot): the tensor is a layer
    output quantized for all its readers; its producer writes a fresh name, the
    DequantizeLinear (or the Cast back) writes the tensor's own name."""
    build, desc = quantizer
    x = key[0]
    if producer is not None:
        x = b.name(f"{key[0]}/prequant")
        edits.out_renames[producer] = x
    codes, dq = cast_around(b, x, elem_types.get(key[0], TensorProto.FLOAT), key[0], build)
    nodes = b.take()
    if producer is not None:
        next(n for n in nodes if dq in n.output).output[0] = key[0]
        dq = key[0]
        edits.after.setdefault(producer[0], []).extend(nodes)
    else:
        edits.before.setdefault(min(u.index for u in group), []).extend(nodes)
    for u in group:
        edits.renames[(u.index, 0)] = dq
        edits.described[u.index] = (codes, desc)


def _int32_biases(
    b: GraphBuilder,
    model: ModelProto,
    gemms: list,
    groups: dict,
    qparams: dict,
    weights: dict,
    edits: ActEdits,
) -> None:
    """Gemm biases as INT32 DequantizeLinear at s_x s_w (``qgraph_outputs.int32_bias``)."""
    key_of = {u.index: k for k, group in groups.items() for u in group}
    counts, converted = readers(model.graph), {}
    for u in gemms:
        e = weights.get(u.index)
        s_x = float(qparams[key_of[u.index]].scale)
        dq = int32_bias(
            b, model.graph, u, s_x, e.scale if e is not None and e.storage.bits == 8 else None
        )
        name = model.graph.node[u.index].input[2]
        if dq is None:
            edits.notes[u.index] = (
                "output read in float and the bias stays float (weights not 8-bit per "
                "tensor / channel, or codes beyond int32): onnxruntime runs this Gemm in float"
            )
            continue
        edits.before.setdefault(u.index, []).extend(b.take())
        edits.renames[(u.index, 2)] = dq
        edits.notes[u.index] = BIAS_NOTE
        converted[name] = converted.get(name, 0) + 1
        if counts.get(name, 0) == converted[name]:  # no float reader left
            edits.unused.add(name)
