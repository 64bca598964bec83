"""Which nodes of a float ONNX graph get quantized weights, and how (reads the graph only).

A node qualifies when its weight input is a float initializer (not also a graph input, which
a caller could override) of the right rank:

==========  ================  =====================  =======================================
op          weight            rows (O, K) of it      activation quantized (dynamic / static)
==========  ================  =====================  =======================================
MatMul      B (K, N)          B^T                    A (input 0)
Gemm        B (K, N) / (N, K) B^T / B (``transB``)   A (input 0)
Conv        W (O, C/g, k...)  W reshaped (O, -1)     X (input 0; static only, as in torch)
Gather      data (V, D), axis 0   data              none: weight-only
==========  ================  =====================  =======================================

Node names are the ``name`` field, or ``<op>_<index>`` when it is empty or repeated; the
config's include / exclude / overrides globs match them, and ``op_types`` selects the ops.
Graphs that already hold quantization (Q/DQ nodes, integer ops, 1-8-bit integer
initializers) are refused (FAULTS 23): quantizing twice compounds the error silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper

from ..core.scheme import QScheme
from ..errors import PlanError
from ..nn.config import QuantConfig, check_excludes
from ..nn.plan import weight_scheme
from .fileio import all_tensors

OP_TYPES = ("MatMul", "Gemm", "Conv", "Gather")
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
QUANT_TYPES = (
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT4,
    TensorProto.UINT4,
    TensorProto.INT2,
    TensorProto.UINT2,
)
QUANT_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "MatMulNBits",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "GatherBlockQuantized",
    "QGemm",
    "QAttention",
)


@dataclass(frozen=True)
class WeightUse:
    """One node reading one weight initializer, and what to do with it."""

    index: int  # position in graph.node
    name: str  # display name (globs match it)
    op: str
    slot: int  # which input of the node is the weight
    init: str  # initializer name
    shape: tuple
    rows_transposed: bool  # True: the initializer is (K, O), rows are its transpose
    act: str | None  # activation tensor to quantize (None: weight-only by nature)
    scheme: QScheme
    config: QuantConfig
    note: str = ""


def _nodes(graph: GraphProto):
    for node in graph.node:
        yield node
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _nodes(g)


def refuse_quantized(model: ModelProto, path) -> None:
    """PlanError if ``model`` already holds quantized nodes or integer weight initializers."""
    ops = sorted(
        {
            n.op_type
            for n in _nodes(model.graph)
            if n.op_type in QUANT_OPS or n.op_type.startswith("QLinear")
        }
    )
    ints = sorted(t.name for t in all_tensors(model.graph) if t.data_type in QUANT_TYPES)
    if ops or ints:
        what = ([f"nodes {', '.join(ops)}"] if ops else []) + (
            [f"{len(ints)} integer initializer(s) such as {ints[0]!r}"] if ints else []
        )
        raise PlanError(
            f"{path} is already quantized ({'; '.join(what)}); quantizing it again would "
            "compound the error: give cuantiza the float model"
        )


def node_names(graph: GraphProto) -> list[str]:
    """Display names: ``name``, or ``<op>_<index>`` for empty or repeated names."""
    counts: dict = {}
    for n in graph.node:
        counts[n.name] = counts.get(n.name, 0) + 1
    return [
        n.name if n.name and counts[n.name] == 1 else f"{n.op_type}_{i}"
        for i, n in enumerate(graph.node)
    ]


def unique_node_names(graph: GraphProto) -> None:
    """Give repeated node names their display names (onnxruntime refuses repeats)."""
    counts: dict = {}
    for n in graph.node:
        counts[n.name] = counts.get(n.name, 0) + 1
    for node, name in zip(graph.node, node_names(graph), strict=False):
        if node.name and counts[node.name] > 1:
            node.name = name


def _attr(node: NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight_slot(node: NodeProto, inits: dict) -> tuple[int, bool, str | None] | str:
    """(slot, rows transposed, activation input) for a supported node, or why not."""
    op = node.op_type
    slot = 0 if op == "Gather" else 1
    if len(node.input) <= slot or node.input[slot] not in inits:
        return f"its {'data' if op == 'Gather' else 'weight'} input is not an initializer"
    t = inits[node.input[slot]]
    if t.data_type not in FLOAT_TYPES:
        return f"its weight has type {TensorProto.DataType.Name(t.data_type)}, not a float"
    rank = len(t.dims)
    if op in ("MatMul", "Gemm", "Gather") and rank != 2:
        return f"its weight is {rank}-d, not a 2-d matrix"
    if op == "Conv" and rank < 3:
        return f"its weight is {rank}-d"
    if op == "Gather" and _attr(node, "axis", 0) != 0:
        return "it gathers along an axis other than 0"
    if op == "Gemm" and _attr(node, "transA", 0):
        return "transA=1 (the activation is transposed): not supported"
    transposed = op == "MatMul" or (op == "Gemm" and not _attr(node, "transB", 0))
    return slot, transposed, None if op == "Gather" else node.input[0]


def _reduction(shape: tuple, transposed: bool) -> int:
    if transposed:
        return shape[0]
    k = 1
    for d in shape[1:]:
        k *= d
    return k


def plan_graph(graph: GraphProto, config: QuantConfig, op_types=OP_TYPES) -> tuple[list, list]:
    """(uses, skipped): a WeightUse per quantized node; (name, reason) per candidate left float."""
    inits = {t.name: t for t in graph.initializer}
    overridable = {i.name for i in graph.input}
    names = node_names(graph)
    candidates = [n for node, n in zip(graph.node, names, strict=True) if node.op_type in OP_TYPES]
    check_excludes(config, candidates, "node")
    uses, skipped = [], []
    for i, (node, name) in enumerate(zip(graph.node, names, strict=False)):
        if node.op_type not in OP_TYPES:
            continue
        if node.op_type not in op_types:
            skipped.append((name, f"{node.op_type} not in op_types"))
            continue
        cfg = config.resolve(name)
        found = _weight_slot(node, inits)
        why = (
            "excluded by config"
            if cfg is None
            else found
            if isinstance(found, str)
            else "its weight is also a graph input (callers may override it)"
            if node.input[found[0]] in overridable
            else ""
        )
        if why:
            skipped.append((name, why))
            continue
        slot, transposed, act = found
        shape = tuple(inits[node.input[slot]].dims)
        scheme, note = weight_scheme(name, _reduction(shape, transposed), cfg)
        uses.append(
            WeightUse(
                i,
                name,
                node.op_type,
                slot,
                node.input[slot],
                shape,
                transposed,
                act,
                scheme,
                cfg,
                note,
            )
        )
    if not uses:
        raise PlanError(
            "no node can be quantized: "
            + (
                "; ".join(f"{n}: {w}" for n, w in skipped[:5])
                or "the graph has no MatMul, Gemm, Conv or Gather with a float weight initializer"
            )
        )
    return uses, skipped
