"""What an ONNX export or quantization did, returned to the caller and kept in the file.

``OnnxSummary`` lists every quantized layer (its weight scheme, the ONNX type its codes are
stored in and why, the activation handling, the bytes of its initializers, and the graph's
tensor names at its input, activation codes and output), every layer left in float with the
reason, and the file sizes. The same facts, minus file sizes and tensor names, are written
into the model's ``metadata_props`` under the key ``cuantiza`` as JSON (sorted keys), so the
file itself says which widths had no native ONNX form.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnx import ModelProto

from .._version import __version__

META_KEY = "cuantiza"
# measured with onnxruntime 1.32 (tests/onnx): its default graph optimizations turn
# DequantizeLinear(INT8 per-channel or INT4 blocks) -> MatMul into MatMulNBits, which quantizes
# the activations to int8 again (accuracy_level 4) and moves outputs by up to ~1 LSB
ORT_MATMUL_NOTE = (
    "onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits and by default "
    "re-quantizes its activations to int8; session option "
    "session.qdq_matmulnbits_accuracy_level=1 keeps them float32 (cuantiza's numbers)"
)
META_FORMAT = "cuantiza-onnx"
META_VERSION = 1


@dataclass(frozen=True)
class LayerRecord:
    name: str  # torch module name (export) or ONNX node name (quantize_onnx)
    op: str  # the ONNX op computing it: MatMul, Gemm, Conv, Gather
    weight: str  # the weight scheme, e.g. "int4-sym-group32"
    storage: str  # the ONNX type of the codes, e.g. "INT4"
    activation: str  # "static <scheme>", "dynamic <scheme>" or "weight-only"
    weight_bytes: int  # codes + scales + zero points as stored
    note: str = ""
    input: str = ""  # graph tensor feeding the layer (float)
    codes: str = ""  # its quantized activation codes ("" for weight-only)
    output: str = ""  # the layer's float output


@dataclass(frozen=True)
class OnnxSummary:
    path: Path
    workflow: str  # "export:<torch workflow>", or weight_only / dynamic / static
    opset: int
    layers: tuple
    skipped: tuple = ()  # (name, reason)
    files: tuple = ()  # paths written
    file_bytes: int = 0  # their total size
    notes: tuple = field(default_factory=tuple)

    @property
    def weight_bytes(self) -> int:
        return sum(r.weight_bytes for r in self.layers)

    def layer(self, name: str) -> LayerRecord:
        return next(r for r in self.layers if r.name == name)

    def metadata(self) -> dict:
        return {
            "format": META_FORMAT,
            "format_version": META_VERSION,
            "cuantiza_version": __version__,
            "workflow": self.workflow,
            "opset": self.opset,
            "notes": list(self.notes),
            "layers": [
                {k: v for k, v in asdict(r).items() if k not in ("input", "codes", "output")}
                for r in self.layers
            ],
            "skipped": [list(s) for s in self.skipped],
        }

    def __str__(self) -> str:
        lines = [
            f"ONNX {self.workflow} -> {self.path} (opset {self.opset}): {len(self.layers)} "
            f"quantized, {len(self.skipped)} float, {self.file_bytes} B on disk"
        ]
        w = max((len(r.name) for r in self.layers), default=0)
        for r in self.layers:
            note = f"  ({r.note})" if r.note else ""
            lines.append(
                f"  {r.name:<{w}}  {r.op:<7} {r.weight} as {r.storage}, {r.activation}, "
                f"{r.weight_bytes} B{note}"
            )
        lines += [f"  {name}: float, {why}" for name, why in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def notes_for(records) -> tuple:
    """The distinct facts of the layer notes (a layer's note joins several with "; "), plus the
    runtime note when a MatMul reads quantized weights."""
    notes = sorted({part for r in records if r.note for part in r.note.split("; ")})
    if any(r.op == "MatMul" for r in records):
        notes.append(ORT_MATMUL_NOTE)
    return tuple(notes)


def write_metadata(model: ModelProto, summary: OnnxSummary) -> None:
    """Set (replace) the ``cuantiza`` entry of ``model.metadata_props``."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    for k, v in keep + [(META_KEY, json.dumps(summary.metadata(), sort_keys=True))]:
        model.metadata_props.add(key=k, value=v)


def read_metadata(model: ModelProto) -> dict | None:
    """The ``cuantiza`` metadata of a model, or None."""
    for p in model.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    return None
