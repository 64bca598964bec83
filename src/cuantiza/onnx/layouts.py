"""QTensor -> the ONNX layout of its initializer (``qdq.WeightLayout``).

cuantiza keeps every weight as rows of its reduction, ``(O, K)``; scales follow ``layout``:
``()`` per tensor, ``(O,)`` per channel (axis 0), ``(O, ceil(K / g))`` per group of g along K.

* ``linear_layout``: MatMul wants ``B = W^T``, shape (K, O), so the codes and the scales are
  transposed: per channel becomes ``axis=1``, per group ``axis=0, block_size=g``.
* ``rows_layout``: Conv (O, C/groups, k...) and Gather tables (V, D) keep the rows: per channel
  ``axis=0`` on the full kernel shape; per group stays 2-D ``(O, K)`` with ``axis=1`` (a Conv
  then reshapes the dequantized rows to its kernel shape).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.qtensor import QTensor
from ..core.scheme import PerChannel, PerGroup
from ..errors import ConfigError
from .qdq import WeightLayout


def _zero_point(qt: QTensor) -> torch.Tensor | None:
    return None if qt.scheme.symmetric else qt.qparams.zero_point.to(torch.int32)


def _codes(qt: QTensor) -> np.ndarray:
    return qt.int_repr().to(torch.int16).numpy()  # (O, K), exact integers


def linear_layout(qt: QTensor) -> WeightLayout:
    """(O, K) rows -> (K, O) for ``MatMul(x, B)``; axes flip with the transpose."""
    g = qt.scheme.granularity
    q = np.ascontiguousarray(_codes(qt).T)  # (K, O)
    s, z = qt.qparams.scale, _zero_point(qt)
    if isinstance(g, PerChannel):
        return WeightLayout(q, s, z, 1 - g.axis % 2)
    if isinstance(g, PerGroup):  # scales (O, G) -> (G, O)
        zt = None if z is None else z.t().contiguous()
        return WeightLayout(q, s.t().contiguous(), zt, 1 - g.axis % 2, g.size)
    return WeightLayout(q, s, z, None)


def rows_layout(qt: QTensor, shape: tuple) -> tuple[WeightLayout, bool]:
    """Layout for a weight whose logical ONNX shape is ``shape`` (first dim = rows O).
    Returns (layout, reshape_needed): per-group layouts stay (O, K) and need a Reshape."""
    g = qt.scheme.granularity
    q = _codes(qt)
    s, z = qt.qparams.scale, _zero_point(qt)
    if isinstance(g, PerGroup):
        return WeightLayout(q, s, z, g.axis % 2, g.size), tuple(shape) != tuple(q.shape)
    q = q.reshape(shape)
    if isinstance(g, PerChannel):
        if g.axis % 2 and len(shape) != 2:
            raise ConfigError(
                f"per-channel scales along the reduction of a {len(shape)}-d kernel "
                "have no ONNX axis; quantize weights per output channel (axis 0)"
            )
        return WeightLayout(q, s, z, g.axis % 2), False
    return WeightLayout(q, s, z, None), False
