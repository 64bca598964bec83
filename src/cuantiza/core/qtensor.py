"""QTensor: a quantized tensor as it is stored. Packed codes + QParams + logical shape.

Codes are unsigned: code = (q - qmin) // code_step (binary {-1, +1} -> {0, 1}), packed densely
at the scheme's bit width (``packing``). ``nbytes`` counts everything a file must hold to
rebuild the values: packed codes, scales in their storage dtype, zero points (asymmetric).

>>> t = QTensor.from_float(torch.randn(64, 64), QScheme(bits=4, granularity=PerGroup(32)))
>>> t.nbytes, round(t.bits_per_weight, 3)       # 2048 B of nibbles + 128 fp32 scales
(2560, 5.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeError
from . import onepass
from .onepass import Form
from .packing import pack, packed_nbytes, unpack
from .qparams import QParams, check_qparams_shape
from .quantize import as_float, dequantize, quantize_tensor, quantize_tensor_codes
from .range_specs import MinMax, RangeSpec
from .scheme import PerChannel, PerGroup, PerTensor, QScheme


@dataclass(frozen=True)
class QTensor:
    data: torch.Tensor  # uint8, packed codes
    qparams: QParams
    shape: tuple

    def __post_init__(self):
        n = self.numel
        need = packed_nbytes(n, self.scheme.bits)
        if self.data.dtype != torch.uint8 or self.data.numel() != need:
            raise ShapeError(
                f"QTensor of shape {self.shape} at {self.scheme.bits} bits needs "
                f"{need} packed bytes, got {self.data.numel()} ({self.data.dtype})"
            )
        check_qparams_shape(self.qparams, self.shape)

    @property
    def scheme(self) -> QScheme:
        return self.qparams.scheme

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @classmethod
    def from_int(cls, q: torch.Tensor, qparams: QParams) -> QTensor:
        s = qparams.scheme
        if s.binary:  # {-1, +1} -> {0, 1}
            codes = (q.to(torch.int16) - s.qmin) // s.code_step
            return cls(pack(codes, s.bits), qparams, tuple(q.shape))
        return cls(pack(q, s.bits, offset=-s.qmin), qparams, tuple(q.shape))  # codes q - qmin

    @classmethod
    def from_float(
        cls, x: torch.Tensor, scheme: QScheme, range: RangeSpec = MinMax(), name: str = "tensor"
    ) -> QTensor:
        xf = as_float(x, name)
        if scheme.bits == 8:  # the codes from the quantize pass: no packing pass
            codes, qp = quantize_tensor_codes(xf, scheme, range=range, name=name)
            return cls(codes.reshape(-1), qp, tuple(codes.shape))
        got = onepass.quantize(xf, scheme, range, Form.PACKED)  # codes packed in the one pass
        if got is not None:
            return cls(got[0], got[1], tuple(xf.shape))
        q, qp = quantize_tensor(xf, scheme, range=range, name=name)
        return cls.from_int(q, qp)

    def rows(self, index: torch.Tensor) -> QTensor:
        """The QTensor of rows ``index`` (1-d) of a 2-D weight with row-wise scales and whole bytes
        per row, sliced from the packed bytes: an embedding's lookup without unpacking the table.

        >>> t = QTensor.from_float(torch.randn(6, 64), QScheme(bits=4, granularity=PerGroup(32)))
        >>> torch.equal(t.rows(torch.tensor([4, 1])).dequantize(), t.dequantize()[[4, 1]])
        True
        """
        n, k = self.shape
        if (k * self.scheme.bits) % 8 or not _rowwise(self.scheme):
            raise ShapeError(f"rows() needs whole bytes per row and row-wise scales, got {self}")
        data = self.data.view(n, k * self.scheme.bits // 8)[index].reshape(-1)
        scale, zero = self.qparams.scale, self.qparams.zero_point
        if scale.ndim:  # per channel or per group: the rows' own; per tensor: shared
            scale, zero = scale[index], zero[index]
        return QTensor(data, QParams(scale, zero, self.scheme), (index.numel(), k))

    def codes(self) -> torch.Tensor:
        """The stored codes (q - qmin) / code_step, one uint8 each, in the logical shape."""
        return unpack(self.data, self.scheme.bits, self.numel).reshape(self.shape)

    def int_repr(self) -> torch.Tensor:
        """The integers q in the logical shape (int8 symmetric, uint8 asymmetric)."""
        s = self.scheme
        if s.binary:
            codes = unpack(self.data, s.bits, self.numel).to(torch.int16)
            return (codes * s.code_step + s.qmin).to(s.q_dtype).reshape(self.shape)
        # code + qmin modulo 256, read as int8 for symmetric schemes: exactly q
        return (
            unpack(self.data, s.bits, self.numel, offset=s.qmin).view(s.q_dtype).reshape(self.shape)
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.int_repr(), self.qparams, dtype)

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.qparams.nbytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / max(self.numel, 1)

    def __repr__(self) -> str:
        return (
            f"QTensor({self.scheme.describe()}, shape={self.shape}, {self.nbytes} B, "
            f"{self.bits_per_weight:.3f} bits/weight)"
        )


def concat_rows(parts: list[QTensor]) -> QTensor:
    """The QTensors of 2-D weights stacked along their rows (output features), as one: the
    fused q/k/v or gate/up projection of a decoder layer. They must share the scheme, a
    row-wise granularity (PerChannel(0) or PerGroup along the columns) and the column count,
    with whole bytes per row, so the packed bytes simply follow each other.

    >>> a = QTensor.from_float(torch.randn(4, 64), QScheme(bits=4, granularity=PerGroup(32)))
    >>> b = QTensor.from_float(torch.randn(2, 64), QScheme(bits=4, granularity=PerGroup(32)))
    >>> torch.equal(concat_rows([a, b]).dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    True
    """
    first = parts[0]
    k, bits = first.shape[1], first.scheme.bits
    for t in parts:
        if len(t.shape) != 2 or t.shape[1] != k or t.scheme != first.scheme:
            raise ShapeError(
                f"concat_rows needs 2-D weights of one scheme and {k} columns, got "
                f"{t.shape} {t.scheme.describe()}"
            )
    if (k * bits) % 8 or not _rowwise(first.scheme):
        raise ShapeError(
            f"concat_rows needs whole bytes per row and row-wise scales, got {k} columns at "
            f"{bits} bits, {first.scheme.describe()}"
        )
    qp = QParams(
        torch.cat([t.qparams.scale for t in parts]),
        torch.cat([t.qparams.zero_point for t in parts]),
        first.scheme,
    )
    rows = sum(t.shape[0] for t in parts)
    return QTensor(torch.cat([t.data for t in parts]), qp, (rows, k))


def _rowwise(scheme: QScheme) -> bool:
    """Scales per tensor, per row (PerChannel(0)) or per group along the row."""
    g = scheme.granularity
    return (
        isinstance(g, PerTensor)
        or (isinstance(g, PerChannel) and g.axis in (0, -2))
        or (isinstance(g, PerGroup) and g.axis in (1, -1))
    )
