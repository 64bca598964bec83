"""How quantized weight codes are stored in an ONNX file: the smallest integer type that runs.

ONNX DequantizeLinear computes ``y = (x - zero_point) * scale`` (``r = s (q - z)``, cuantiza's
convention) for integer initializers x of these types, which onnxruntime 1.32 runs on CPU
exactly (tests/onnx check every one):

=========  ===========  ==============  ===========================================
bits       symmetric    asymmetric      needs
=========  ===========  ==============  ===========================================
1, 2       INT2         UINT2           opset 25
3, 4       INT4         UINT4           opset 21 (also for ``block_size``: per-group)
5 .. 8     INT8         UINT8           opset 13 (per-axis DequantizeLinear)
=========  ===========  ==============  ===========================================

Symmetric codes are the restricted range [-(2^(b-1) - 1), 2^(b-1) - 1] and binary {-1, +1}, so
they fit the signed type of their width (and of every wider one); asymmetric codes [0, 2^b - 1]
fit the unsigned type. Widths with no native type (1, 3, 5, 6, 7 bits), or a type the chosen
opset lacks, take the next wider one; ``Storage.note`` says so and the export summary and the
model's ``metadata_props`` record it.

Layers whose activations are quantized too (static, dynamic) may run on onnxruntime's integer
kernels, whose u8 x s8 products saturate int16 pair sums on x86 CPUs without VNNI (measured
here: MatMulIntegerToFloat off by a third of the output range); their symmetric 8-bit codes
are stored as UINT8 q + 128 with zero point 128, which dequantize to the same values and take
the exact u8 x u8 kernels (``choose_storage(..., integer_acts=True)``).

Sub-byte types are packed two (INT4) or four (INT2) to a byte, first element in the least
significant bits, the order of ``cuantiza.packing.pack``, which does the packing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from onnx import TensorProto, helper

from ..core.packing import pack
from ..core.scheme import QScheme

# storage bits -> (signed type, unsigned type, first opset whose DequantizeLinear takes it)
TYPES = {
    2: (TensorProto.INT2, TensorProto.UINT2, 25),
    4: (TensorProto.INT4, TensorProto.UINT4, 21),
    8: (TensorProto.INT8, TensorProto.UINT8, 13),
}
BLOCK_OPSET = 21  # DequantizeLinear's block_size attribute (per-group scales)
MIN_OPSET = 13  # per-axis DequantizeLinear


@dataclass(frozen=True)
class Storage:
    """The ONNX integer type holding a scheme's codes."""

    onnx_type: int
    bits: int  # 2, 4 or 8
    signed: bool
    scheme_bits: int
    note: str = ""  # why the storage is wider than the scheme, if it is
    offset: int = 0  # stored code = q + offset, stored zero point = z + offset

    @property
    def type_name(self) -> str:
        return TensorProto.DataType.Name(self.onnx_type)


def needed_opset(scheme: QScheme) -> int:
    """The smallest opset in which ``scheme``'s codes are stored at their native width."""
    bits = min(b for b in TYPES if b >= scheme.bits)
    return TYPES[bits][2]


U8_NOTE = (
    "int8 weights stored as UINT8 + 128 (zero point 128): onnxruntime's u8 x s8 integer "
    "kernels saturate int16 pair sums on CPUs without VNNI (255 * 127 * 2 > 32767)"
)


def choose_storage(scheme: QScheme, opset: int, integer_acts: bool = False) -> Storage:
    """Smallest type of at least ``scheme.bits`` bits whose DequantizeLinear ``opset`` has.

    ``integer_acts``: the layer's activations are quantized too, so the runtime may run it
    with integer kernels. Symmetric 8-bit codes [-127, 127] are then stored as UINT8 q + 128
    with zero point 128 (same values, u8 x u8 kernels, which are exact); 7 bits and fewer
    (|q| <= 63, 255 * 63 * 2 < 32767) cannot saturate and stay signed."""
    if integer_acts and scheme.symmetric and scheme.bits == 8:
        return Storage(TensorProto.UINT8, 8, False, 8, U8_NOTE, offset=128)
    signed = scheme.symmetric
    for bits in sorted(TYPES):
        if bits < scheme.bits or TYPES[bits][2] > opset:
            continue
        onnx_type = TYPES[bits][0 if signed else 1]
        name = TensorProto.DataType.Name(onnx_type)
        native = min(b for b in TYPES if b >= scheme.bits)
        note = ""
        if bits != scheme.bits and bits == native:
            note = (
                f"{scheme.bits}-bit codes stored as {name}: "
                f"ONNX has no {scheme.bits}-bit integer type"
            )
        elif bits != native:
            note = (
                f"{scheme.bits}-bit codes stored as {name}: opset {opset} lacks "
                f"{TensorProto.DataType.Name(TYPES[native][0 if signed else 1])} "
                f"(needs opset {TYPES[native][2]})"
            )
        return Storage(onnx_type, bits, signed, scheme.bits, note)
    raise AssertionError("8-bit storage exists in every supported opset")


def code_tensor(name: str, q: np.ndarray, storage: Storage) -> TensorProto:
    """An initializer holding integers ``q`` (any shape) in ``storage``'s type, packed.

    Signed values are written in two's complement of the storage width (q & (2^bits - 1)), so
    the packed field reads back as q."""
    q = np.ascontiguousarray(q).astype(np.int16) + storage.offset
    dims = list(q.shape)
    if storage.bits == 8:
        raw = q.astype(np.int8 if storage.signed else np.uint8).tobytes()
    else:
        mask = (1 << storage.bits) - 1
        codes = torch.from_numpy((q.astype(np.int16) & mask).astype(np.uint8).reshape(-1))
        raw = pack(codes, storage.bits).numpy().tobytes()
    return helper.make_tensor(name, storage.onnx_type, dims, raw, raw=True)


_SCALE_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
}


def scale_tensor(name: str, scale: torch.Tensor) -> TensorProto:
    """Scales in their storage dtype (float32, float16 or bfloat16), raw little-endian bytes."""
    s = scale.detach().contiguous().cpu()
    if s.dtype not in _SCALE_TYPES:
        s = s.to(torch.float32)
    raw = s.view(torch.int16 if s.element_size() == 2 else torch.int32).numpy().tobytes()
    return helper.make_tensor(name, _SCALE_TYPES[s.dtype], list(s.shape), raw, raw=True)
