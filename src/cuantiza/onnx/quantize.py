"""quantize_onnx: quantize an existing float ONNX model, with cuantiza's schemes and observers.

Modes (``mode=None`` picks static with calibration data, else dynamic with an activation
scheme, else weight-only):

* ``"weight_only"``: MatMul / Gemm / Conv / Gather weights become DequantizeLinear of integer
  initializers (any width 1-8, per tensor / channel / group; see ``storage``).
* ``"dynamic"``: also MatMul / Gemm inputs quantized per batch (``qdq.dynamic_act``, per tensor
  or per token as ``config.dynamic``); Conv stays weight-only, as in ``cz.quantize_dynamic``.
* ``"static"``: also MatMul / Gemm / Conv inputs behind QuantizeLinear -> DequantizeLinear
  with qparams from the calibration data, observed by ``config.observer`` (``calibrate``).
  ``outputs`` (``qgraph_outputs``) adds what onnxruntime needs to run every such layer on an
  integer kernel (QLinearConv, QGemm, ...): ``"auto"`` (default) only where no value changes
  (an output that its readers quantize anyway after a Flatten or Reshape; a Gemm bias as INT32
  at s_x s_w), ``"all"`` as onnxruntime's quantizer (every layer output 8-bit), ``"none"``
  inputs only (cuantiza's torch static model op for op).

Order of work (FAULTS 12-13, 23-29): output path, file safety and integrity, refusal of
quantized graphs, the plan (group sizes, excludes), calibration data presence: all before any
weight is quantized; then the weights (NaN/Inf named), calibration, and the publication, which
checks the result with onnx.checker and an onnxruntime run first. The input file is only read.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import ModelProto, helper, version_converter

from ..core.scheme import PerGroup
from ..errors import CalibrationError, ConfigError, PlanError
from ..nn.config import QuantConfig
from . import fileio
from .builder import GraphBuilder, graph_names
from .fileio import load_model
from .graphplan import OP_TYPES, plan_graph, refuse_quantized, unique_node_names
from .publish import check_output, save_model
from .qdq import check_dynamic_form
from .qgraph import rebuild, weight_edits
from .qgraph_acts import activation_edits
from .qgraph_outputs import OUTPUT_MODES
from .storage import BLOCK_OPSET, MIN_OPSET, needed_opset
from .summary import LayerRecord, OnnxSummary, notes_for, write_metadata

MODES = ("weight_only", "dynamic", "static")
MAX_OPSET = 25


def _mode(mode: str | None, config: QuantConfig, calibration, outputs: str = "auto") -> str:
    if outputs not in OUTPUT_MODES:
        raise ConfigError(f"outputs must be one of {OUTPUT_MODES}, got {outputs!r}")
    if mode is None:
        mode = (
            "static"
            if calibration is not None
            else "dynamic"
            if config.activation
            else "weight_only"
        )
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "weight_only" and config.activation is None:
        raise ConfigError(f"mode {mode!r} needs config.activation; use mode='weight_only'")
    if outputs == "all" and mode != "static":
        raise ConfigError(
            "outputs='all' quantizes layer outputs with calibrated ranges: it needs "
            "mode='static', "
            f"got {mode!r}"
        )
    if mode == "static" and (
        calibration is None or (hasattr(calibration, "__len__") and len(calibration) == 0)
    ):
        raise CalibrationError(
            "static quantization needs calibration data: an iterable of feed dicts "
            "or an .npz path (or use mode='dynamic')"
        )
    return mode


def _default_opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _target_opset(model: ModelProto, uses: list, opset: int | None) -> int:
    have = _default_opset(model)
    if opset is None:
        return max([have, MIN_OPSET] + [needed_opset(u.scheme) for u in uses])
    if not MIN_OPSET <= opset <= MAX_OPSET or opset < have:
        raise ConfigError(
            f"opset must be in {max(MIN_OPSET, have)}..{MAX_OPSET} for this model, got {opset}"
        )
    return opset


def _lift(model: ModelProto, opset: int, src) -> ModelProto:
    """The model at ``opset`` (onnx's version converter), or a PlanError saying how to avoid it."""
    if _default_opset(model) == opset:
        return model
    try:
        lifted = version_converter.convert_version(model, opset)
    except Exception as e:  # noqa: BLE001  (the converter raises RuntimeError/ValidationError)
        raise PlanError(
            f"{src}: cannot convert opset {_default_opset(model)} to {opset} ({e}); pass "
            f"opset={_default_opset(model)} to store the codes in 8-bit types"
        ) from e
    lifted.ir_version = max(
        lifted.ir_version, helper.find_min_ir_version_for(list(lifted.opset_import))
    )
    return lifted


def _check_blocks(uses: list, opset: int) -> None:
    grouped = [u.name for u in uses if isinstance(u.scheme.granularity, PerGroup)]
    if grouped and opset < BLOCK_OPSET:
        raise ConfigError(
            f"per-group weights ({', '.join(grouped[:3])}) need opset >= {BLOCK_OPSET} "
            f"(DequantizeLinear block_size); got opset {opset}"
        )


def _integer_acts(u, mode: str) -> bool:
    """Whether the node's activations get quantized (static: all but Gather; dynamic: MatMul,
    Gemm)."""
    if mode == "static":
        return u.act is not None
    return mode == "dynamic" and u.op in ("MatMul", "Gemm")


def _input_types(model: ModelProto) -> dict:
    """Real graph inputs (not initializers) -> numpy dtype."""
    inits = {t.name for t in model.graph.initializer}
    return {
        i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        for i in model.graph.input
        if i.name not in inits
    }


def _synthetic_feed(model: ModelProto) -> dict:
    """A feed for the final check: dynamic dims 1, zeros for integers, fixed noise for floats."""
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        shape = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim
        ]
        dt = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feed[i.name] = (
            rng.standard_normal(shape).astype(dt)
            if np.issubdtype(dt, np.floating)
            else np.zeros(shape, dt)
        )
    return feed


def _elem_types(model: ModelProto) -> dict:
    """tensor name -> elem type, from shape inference (empty when it cannot run)."""
    if model.ByteSize() >= fileio.EXTERNAL_THRESHOLD:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (inference is a convenience: unknown types mean float32)
        return {}
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in vis}


def _load_and_plan(src, config: QuantConfig, op_types, opset: int | None):
    """The checked input model, lifted to the target opset, and its plan: (model, uses,
    skipped, target opset)."""
    model = load_model(src)
    refuse_quantized(model, src)
    unique_node_names(model.graph)
    uses, _ = plan_graph(model.graph, config, op_types)
    target = _target_opset(model, uses, opset)
    _check_blocks(uses, target)
    model = _lift(model, target, src)
    uses, skipped = plan_graph(model.graph, config, op_types)
    return model, uses, skipped, target


def _rebuild(model, b: GraphBuilder, uses, edits: dict, unused: set, acts) -> None:
    """Splice the weight and activation edits into ``model``'s graph, in place."""
    head = [n for e in edits.values() for n in e.nodes]
    renames = {(u.index, u.slot): edits[u.index].output for u in uses}
    renames.update(acts.renames)
    rebuild(
        model.graph,
        head,
        acts.before,
        renames,
        unused | acts.unused,
        b,
        acts.after,
        acts.out_renames,
    )


def quantize_onnx(
    src,
    dst,
    config: QuantConfig = QuantConfig(),
    calibration=None,
    *,
    mode: str | None = None,
    op_types=OP_TYPES,
    opset: int | None = None,
    batch_size: int = 32,
    example_feed: dict | None = None,
    dynamic_form: str = "auto",
    outputs: str = "auto",
    overwrite: bool = False,
) -> OnnxSummary:
    """Quantize the float ONNX model ``src`` into ``dst``; returns an ``OnnxSummary``.

    ``calibration``: iterable of feed dicts or an ``.npz`` path (static). ``op_types``: the ops
    to quantize (a subset of MatMul, Gemm, Conv, Gather); node names are matched by the
    config's include / exclude / overrides. ``example_feed``: inputs for the final
    onnxruntime check (default: the first calibration batch, else a synthetic feed).
    ``dynamic_form``: ``"auto"``, ``"exact"`` or ``"ort"``, as for ``export_onnx``.
    ``outputs``: static mode's layer outputs, ``"auto"``, ``"all"`` or ``"none"`` (see above)."""
    mode = _mode(mode, config, calibration, outputs)
    check_dynamic_form(dynamic_form)
    if not set(op_types) <= set(OP_TYPES):
        raise ConfigError(f"op_types must be among {OP_TYPES}, got {tuple(op_types)}")
    dst = check_output(dst, overwrite, src)
    model, uses, skipped, target = _load_and_plan(src, config, op_types, opset)
    inputs = _input_types(model)
    b = GraphBuilder(graph_names(model.graph))
    edits, unused = weight_edits(b, model.graph, uses, target, lambda u: _integer_acts(u, mode))
    acts, first_feed = activation_edits(
        b,
        model,
        uses,
        mode,
        inputs,
        calibration,
        batch_size,
        _elem_types(model),
        target,
        dynamic_form,
        outputs,
        edits,
    )
    records = _records(model, uses, edits, acts)
    _rebuild(model, b, uses, edits, unused, acts)
    summary = OnnxSummary(
        dst, mode, target, tuple(records), tuple(skipped), notes=notes_for(records)
    )
    write_metadata(model, summary)
    feed = example_feed if example_feed is not None else first_feed or _synthetic_feed(model)
    files = save_model(model, dst, feed)
    return dataclasses.replace(
        summary, files=tuple(files), file_bytes=sum(p.stat().st_size for p in files)
    )


def _records(model: ModelProto, uses: list, edits: dict, acts) -> list:
    out = []
    for u in uses:
        e = edits[u.index]
        codes, desc = acts.described.get(u.index, ("", "weight-only"))
        note = "; ".join(x for x in (u.note, e.note, acts.notes.get(u.index, "")) if x)
        node = model.graph.node[u.index]
        x = u.act or node.input[1]  # Gather: its indices
        y = acts.out_renames.get((u.index, 0), node.output[0])  # its float output
        out.append(
            LayerRecord(
                u.name,
                u.op,
                u.scheme.describe(),
                e.storage.type_name,
                desc,
                e.nbytes,
                note,
                x,
                codes,
                y,
            )
        )
    return out
