"""Graph edits of ``quantize_onnx``: weights behind DequantizeLinear, activations behind QDQ.

``weight_edits``: each planned weight is quantized with cuantiza (``QTensor.from_float``: the
same schemes, ranges and NaN checks as the torch side) and replaced, for the nodes that read
it, by ``DequantizeLinear`` of the integer initializer (``qdq.dequant_weight``), cast back to
the weight's float type if that is not float32. A weight read by several planned nodes with
the same scheme is quantized once; if other nodes still read it in float, the float
initializer stays too (and the summary says so).

``act_edits``: each activation tensor is quantized once per (scheme, range spec) and the
nodes that use it read the dequantized copy; the nodes are inserted just before the first of
them, so the node list stays topologically sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from onnx import GraphProto, TensorProto, helper, numpy_helper

from ..core.qtensor import QTensor
from .builder import GraphBuilder
from .graphplan import WeightUse
from .layouts import linear_layout, rows_layout
from .qdq import dequant_weight
from .storage import choose_storage


@dataclass
class WeightEdit:
    output: str  # tensor the node reads instead of the float weight
    storage: object
    nbytes: int
    note: str = ""
    nodes: list = field(default_factory=list)
    scale: np.ndarray | None = (
        None  # float32 scales per tensor () or per output channel; None per group
    )


def _rows(t: TensorProto, u: WeightUse) -> torch.Tensor:
    """The weight as cuantiza rows (O, K), float32."""
    w = torch.from_numpy(numpy_helper.to_array(t).astype(np.float32))
    return w.t().contiguous() if u.rows_transposed else w.reshape(u.shape[0], -1)


def _quantize_one(
    b: GraphBuilder, t: TensorProto, u: WeightUse, opset: int, int_acts: bool
) -> WeightEdit:
    qt = QTensor.from_float(_rows(t, u), u.scheme, u.config.weight_range, name=f"{u.name}:{u.init}")
    storage = choose_storage(u.scheme, opset, int_acts)
    if u.rows_transposed:
        lay, reshape = linear_layout(qt), False
    else:
        lay, reshape = rows_layout(qt, u.shape)
    out, nbytes = dequant_weight(b, u.init, lay, storage)
    if reshape:
        shape = helper.make_tensor(
            f"{u.init}.shape", TensorProto.INT64, [len(u.shape)], list(u.shape)
        )
        out = b.node("Reshape", [out, b.init(shape)], u.init)
    if t.data_type != TensorProto.FLOAT:
        out = b.node("Cast", [out], u.init, to=t.data_type)
    scale = None if lay.block_size is not None else lay.scale.to(torch.float32).numpy()
    return WeightEdit(out, storage, nbytes, storage.note, b.take(), scale)


def readers(graph: GraphProto) -> dict:
    """tensor name -> number of node inputs reading it (subgraphs included)."""
    counts: dict = {}

    def walk(g):
        for n in g.node:
            for i in n.input:
                counts[i] = counts.get(i, 0) + 1
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub)

    walk(graph)
    return counts


def weight_edits(
    b: GraphBuilder, graph: GraphProto, uses: list, opset: int, int_acts
) -> tuple[dict, set]:
    """({use index: WeightEdit}, names of float initializers nothing reads any more).
    ``int_acts(use)``: whether that node's activations are quantized too (``storage``)."""
    inits = {t.name: t for t in graph.initializer}
    done: dict = {}
    edits: dict = {}
    planned: dict = {}
    for u in uses:
        key = (u.init, u.scheme, u.rows_transposed, u.config.weight_range, int_acts(u))
        if key in done:
            first, e = done[key]
            edits[u.index] = WeightEdit(
                e.output,
                e.storage,
                0,
                f"shares {u.init!r} with {first}: quantized once",
                scale=e.scale,
            )
        else:
            e = _quantize_one(b, inits[u.init], u, opset, key[-1])
            done[key] = (u.name, e)
            edits[u.index] = e
        planned[u.init] = planned.get(u.init, 0) + 1
    counts = readers(graph)
    unused = {name for name, n in planned.items() if counts.get(name, 0) == n}
    for u in uses:
        if u.init not in unused and edits[u.index].nbytes:
            e = edits[u.index]
            e.note = "; ".join(
                x for x in (e.note, f"{u.init!r} is also read in float elsewhere: kept") if x
            )
    return edits, unused


def act_groups(uses: list, key_of) -> dict:
    """{key: [uses]} for the uses whose activation gets quantized (``key_of`` -> None: not)."""
    groups: dict = {}
    for u in uses:
        k = key_of(u)
        if k is not None:
            groups.setdefault(k, []).append(u)
    return groups


def cast_around(b: GraphBuilder, x: str, elem: int, prefix: str, build) -> tuple[str, str]:
    """Run ``build(b, x_float32) -> (codes, dequantized)`` on a float32 copy of ``x`` when it
    is float16 / bfloat16 / double, casting the dequantized result back."""
    if elem in (TensorProto.FLOAT, 0):
        return build(x)
    codes, dq = build(b.node("Cast", [x], prefix, to=TensorProto.FLOAT))
    return codes, b.node("Cast", [dq], prefix, to=elem)


def rebuild(
    graph: GraphProto,
    head: list,
    before: dict,
    inputs: dict,
    unused: set,
    b: GraphBuilder,
    after: dict | None = None,
    outputs: dict | None = None,
) -> None:
    """Rewrite ``graph`` in place: ``head`` nodes first, ``before[i]`` / ``after[i]`` nodes
    around node i, node inputs renamed per ``inputs[(i, slot)]`` and outputs per
    ``outputs[(i, slot)]``, unused float initializers dropped and the builder's initializers
    added."""
    after, outputs = after or {}, outputs or {}
    nodes = list(head)
    for i, node in enumerate(graph.node):
        nodes.extend(before.get(i, []))
        for slot in range(len(node.input)):
            if (i, slot) in inputs:
                node.input[slot] = inputs[(i, slot)]
        for slot in range(len(node.output)):
            if (i, slot) in outputs:
                node.output[slot] = outputs[(i, slot)]
        nodes.append(node)
        nodes.extend(after.get(i, []))
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep + b.initializers)
