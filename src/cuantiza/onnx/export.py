"""export_onnx: a cuantiza-quantized torch model -> an ONNX file in QDQ form.

1. Every quantized module (``QuantLinear``, ``DynamicQuantLinear``, ``QuantConv``,
   ``QuantEmbedding``) is swapped, for the duration of the trace only, for a stand-in whose
   forward is the float layer on the dequantized weight and whose ONNX symbolic is a single
   marker node ``cuantiza::Layer(x)`` with the module's index. (The float ops feed only the
   marker's shape and are dropped as dead code by the exporter.)
2. ``torch.onnx.export(dynamo=False, opset 17)`` traces the rest of the model as it is (ReLU,
   Flatten, float layers left out of the plan...); onnx's version converter lifts the graph to
   the target opset (21 by default: INT4 and per-group DequantizeLinear; 25 when 1-2-bit weights
   are stored as INT2).
3. Each marker is replaced by the layer's QDQ nodes (``export_layers``), writing its output
   under the marker's output name, so the rest of the graph is untouched.
4. ``publish.save_model``: onnx.checker, an onnxruntime run of ``example_input``, then an
   atomic write (external data beyond 2 GiB). The returned ``OnnxSummary`` (also in the
   file's metadata) lists each layer's scheme, storage type and bytes.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import torch
import torch.nn.functional as F
from onnx import ModelProto, helper, load_from_string, version_converter
from torch import nn

from ..core.scheme import PerGroup
from ..errors import ConfigError, PlanError
from ..nn import QuantConv, QuantEmbedding
from ..nn.surgery import set_module
from ..nn.workflows import FAKE
from .builder import GraphBuilder, graph_names
from .export_layers import QUANT_MODULES, layer_nodes
from .publish import check_output, save_model
from .qdq import check_dynamic_form
from .storage import BLOCK_OPSET, MIN_OPSET, needed_opset
from .summary import OnnxSummary, notes_for, write_metadata

DOMAIN = "cuantiza"
# the TorchScript exporter (dynamo=False) is the path to opset <= 17 here; the dynamo exporter
# needs onnxscript and emits opset 18
TRACE_OPSET = 17
DEFAULT_OPSET = 21  # INT4 / UINT4 and block_size in DequantizeLinear
MAX_OPSET = 25  # INT2 / UINT2; the newest opset checked against onnxruntime 1.32


class _Marker(torch.autograd.Function):
    """Forward: the float stand-in's output (shapes for the tracer). ONNX: one marker node."""

    @staticmethod
    def forward(ctx, x, y, index):
        return y.clone()

    @staticmethod
    def symbolic(g, x, y, index):
        out = g.op(f"{DOMAIN}::Layer", x, index_i=index)
        out.setType(y.type())
        return out


class _StandIn(nn.Module):
    """Traces as ``cuantiza::Layer(x)``; computes the float layer on dequantized weights
    (dequantized here, before the trace: unpacking does not trace)."""

    def __init__(self, mod: nn.Module, index: int):
        super().__init__()
        self.index = index
        self.__dict__["qmod"] = mod  # not a submodule: the trace must not enter it
        self.__dict__["w"] = mod.weight_q.dequantize()

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        m, w = self.qmod, self.w
        if isinstance(m, QuantEmbedding):
            return F.embedding(x, w)
        if isinstance(m, QuantConv):
            c, w = m.conv, w.reshape(m.weight_shape)
            if c["dims"] == 1:
                return F.conv1d(
                    x, w, m.bias, c["stride"][1], c["padding"][1], c["dilation"][1], c["groups"]
                )
            return F.conv2d(x, w, m.bias, c["stride"], c["padding"], c["dilation"], c["groups"])
        return F.linear(x, w, m.bias)

    def forward(self, x):
        return _Marker.apply(x, self._float(x), self.index)


def _quant_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every (name, quantized module), shared modules under each of their names."""
    if isinstance(model, QUANT_MODULES):
        raise PlanError("the model itself is a quantized layer: export a model containing it")
    found = []
    for name, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, FAKE) and (mod.fake_quant or mod.observing):
            raise PlanError(f"{name} is a fake-quant module: call cz.convert() before exporting")
        if isinstance(mod, QUANT_MODULES):
            found.append((name, mod))
    if not found:
        raise PlanError(
            "the model holds no cuantiza quantized layer: quantize it first "
            "(cz.quantize_weights, cz.quantize_dynamic, or prepare/calibrate/convert)"
        )
    return found


def _choose_opset(mods: list, opset: int | None) -> int:
    schemes = [m.weight_q.scheme for _, m in mods]
    if opset is None:
        return max([DEFAULT_OPSET] + [needed_opset(s) for s in schemes])
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    if opset < BLOCK_OPSET and any(isinstance(s.granularity, PerGroup) for s in schemes):
        raise ConfigError(
            f"per-group weights need DequantizeLinear's block_size (opset >= {BLOCK_OPSET}); "
            f"got opset {opset}"
        )
    return opset


def _unique(mods: list) -> list:
    """One (name, module) per module object, first name, in order: index = marker index."""
    seen = {}
    for name, mod in mods:
        seen.setdefault(id(mod), (name, mod))
    return list(seen.values())


def _trace(model: nn.Module, args: tuple, mods: list, dynamic_batch: bool) -> ModelProto:
    """The float skeleton with marker nodes, at TRACE_OPSET. The model is restored after."""
    stand_ins = {id(m): _StandIn(m, i) for i, (_, m) in enumerate(_unique(mods))}
    in_names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    axes = {n: {0: "batch"} for n in in_names + ["output"]} if dynamic_batch else None
    f = io.BytesIO()
    try:
        for name, mod in mods:
            set_module(model, name, stand_ins[id(mod)])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                f,
                dynamo=False,
                opset_version=TRACE_OPSET,
                input_names=in_names,
                output_names=["output"],
                dynamic_axes=axes,
                custom_opsets={DOMAIN: 1},
            )
    finally:
        for name, mod in mods:
            set_module(model, name, mod)
    return load_from_string(f.getvalue())


def _rewrite(proto: ModelProto, mods: list, opset: int, form: str) -> list:
    """Replace every marker by its layer's nodes; returns one LayerRecord per module."""
    unique = _unique(mods)
    b = GraphBuilder(graph_names(proto.graph))
    nodes, records, cache = [], {}, {}
    for node in proto.graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        name, mod = unique[node.attribute[0].i]
        rec = layer_nodes(b, name, mod, node.input[0], node.output[0], opset, form, cache)
        records.setdefault(id(mod), rec)
        nodes.extend(b.take())
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.extend(b.initializers)
    keep = [o for o in proto.opset_import if o.domain != DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    return [records[id(m)] for _, m in unique if id(m) in records]


def export_onnx(
    qmodel: nn.Module,
    example_input,
    path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamic_form: str = "auto",
    overwrite: bool = False,
) -> OnnxSummary:
    """Export ``qmodel`` (made by a cuantiza workflow) to ``path`` in QDQ form.

    ``example_input``: a tensor or a tuple of tensors, traced and run in onnxruntime before the
    file is written. ``opset``: None picks the smallest that stores every weight at its width
    (21, or 25 for 1-2-bit weights). ``dynamic_form``: see ``qdq.dynamic_act``; ``"auto"`` uses
    DynamicQuantizeLinear where the scheme allows it (uint8 per tensor), else ``"exact"``."""
    check_dynamic_form(dynamic_form)
    dst = check_output(path, overwrite)
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    mods = _quant_modules(qmodel)
    opset = _choose_opset(mods, opset)
    proto = version_converter.convert_version(_trace(qmodel, args, mods, dynamic_batch), opset)
    records = _rewrite(proto, mods, opset, dynamic_form)
    proto.ir_version = max(
        proto.ir_version, helper.find_min_ir_version_for(list(proto.opset_import))
    )
    info = getattr(qmodel, "cuantiza_info", None)
    skipped = tuple((lp.name, lp.reason) for lp in info.plan.skipped()) if info else ()
    summary = OnnxSummary(
        dst,
        f"export:{info.workflow if info else 'unknown'}",
        opset,
        tuple(records),
        skipped,
        notes=notes_for(records),
    )
    write_metadata(proto, summary)
    feeds = {
        i.name: a.detach().cpu().numpy() for i, a in zip(proto.graph.input, args, strict=False)
    }
    files = save_model(proto, dst, feeds)
    return dataclasses.replace(
        summary, files=tuple(files), file_bytes=sum(p.stat().st_size for p in files)
    )
