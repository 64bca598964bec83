"""Activation edits of ``quantize_onnx``: static QDQ from calibration, or dynamic quantization.

Each (tensor, scheme, range spec) is quantized once, however many nodes read it; the nodes are
placed just before the first reader. Static qparams come from cuantiza observers fed by
``calibrate.observe``; a tensor that saw no finite value is an error naming it (FAULTS 12),
never a NaN scale. Float16 / bfloat16 / double activations are cast to float32 around the
quantizer (``qgraph.cast_around``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from onnx import ModelProto, TensorProto

from ..errors import CalibrationError
from ..scheme import PerTensor, QScheme
from .builder import GraphBuilder
from .calibrate import feeds, observe
from .qdq import dynamic_act, static_act
from .qgraph import act_groups, cast_around

MATMULS = ("MatMul", "Gemm")


@dataclass
class ActEdits:
    before: dict = field(default_factory=dict)      # node index -> nodes to insert before it
    renames: dict = field(default_factory=dict)     # (node index, slot) -> new input name
    described: dict = field(default_factory=dict)   # node index -> (codes tensor, description)
    notes: dict = field(default_factory=dict)       # node index -> note


def _ort_ok(s: QScheme, per_token: bool) -> bool:
    return s.bits == 8 and not s.symmetric and isinstance(s.granularity, PerTensor) and not per_token


def _calibrate(model: ModelProto, groups: dict, calibration, inputs: dict, batch_size: int):
    """{key: QParams} for static keys (tensor, scheme, spec), and the first feed."""
    made, observers = {}, {}
    for tensor, _, spec in groups:
        if (tensor, spec) not in made:
            made[(tensor, spec)] = spec.make()
            observers.setdefault(tensor, []).append(made[(tensor, spec)])
    sized = hasattr(calibration, "__len__") and not isinstance(calibration, (str, os.PathLike))
    n, first = observe(model, observers, feeds(calibration, inputs, batch_size), inputs,
                       len(calibration) if sized else None)
    if n == 0:
        raise CalibrationError("the calibration data yielded no batches")
    unfed = sorted({t for (t, _), o in made.items() if o.n_seen == 0})
    if unfed:
        raise CalibrationError(f"{len(unfed)} activation(s) saw no finite calibration value: {', '.join(unfed[:5])}; "
                               "feed batches that reach them, or exclude the nodes reading them")
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


def activation_edits(b: GraphBuilder, model: ModelProto, uses: list, mode: str, inputs: dict,
                     calibration, batch_size: int, elem_types: dict, opset: int,
                     form: str = "auto") -> tuple[ActEdits, dict | None]:
    """The activation nodes for ``mode``; returns (edits, first calibration feed or None)."""
    edits = ActEdits()
    if mode == "weight_only":
        return edits, None
    if mode == "dynamic":
        for u in uses:
            if u.op == "Conv":
                edits.notes[u.index] = "dynamic: convolutions run weight-only"
        groups = act_groups(uses, lambda u: (u.act, u.config.activation, u.config.dynamic == "per_token")
                            if u.op in MATMULS else None)
        qparams, first = {}, None
    else:
        groups = act_groups(uses, lambda u: (u.act, u.config.activation, u.config.observer) if u.act else None)
        qparams, first = _calibrate(model, groups, calibration, inputs, batch_size)
    for key, group in groups.items():
        build, desc = _quantizer(b, key, mode, qparams, opset, form)
        codes, dq = cast_around(b, key[0], elem_types.get(key[0], TensorProto.FLOAT), key[0], build)
        edits.before.setdefault(min(u.index for u in group), []).extend(b.take())
        for u in group:
            edits.renames[(u.index, 0)] = dq
            edits.described[u.index] = (codes, desc)
    return edits, first
