"""Round to nearest (RTN): each weight goes to its nearest level under qparams chosen from the
weight alone. The baseline every other method in ``cuantiza.algorithms`` is measured against.

The clipping range is the ``range`` spec's: ``MinMax()`` (default, no clipping) or ``MSE()``
(per block, the shrink of the min/max range that minimises the squared rounding error).

>>> import torch, cuantiza as cz
>>> w = torch.randn(8, 64)
>>> rtn(w, cz.QScheme(bits=4, granularity=cz.PerGroup(32))).shape
(8, 64)
"""

from __future__ import annotations

import torch

from ..core.qtensor import QTensor
from ..core.scheme import QScheme
from ..core.range_specs import MinMax, RangeSpec


MAGIC = 12582912.0        # 1.5 * 2^23: float32 t + MAGIC - MAGIC rounds t half to even


def round_half_even_(t: torch.Tensor) -> torch.Tensor:
    """``t.round_()`` for float32 ``t`` whose result is then clamped to a q range (|q| <= 255):
    t + 1.5 * 2^23 - 1.5 * 2^23 is round-half-to-even exactly for |t| < 2^22, and larger |t|
    keep their sign and stay beyond any q range, so the clamped result is the same. Add / sub
    run inline on small tensors, where ``round_`` (a VML-style kernel) goes multi-threaded from
    2048 elements and can stall for a scheduler tick on a busy machine.

    >>> round_half_even_(torch.tensor([0.5, 1.5, -2.5, 2.4999998, -3e9])).tolist()
    [0.0, 2.0, -2.0, 2.0, -3000000000.0]
    """
    return t.add_(MAGIC).sub_(MAGIC)


def rtn(w: torch.Tensor, scheme: QScheme, range: RangeSpec = MinMax(), name: str = "weight") -> QTensor:
    """Round ``w`` to nearest with qparams from ``range`` (``MSE()`` for MSE-optimal clipping).
    NaN/Inf raise ``NonFiniteError`` naming ``name``."""
    return QTensor.from_float(w, scheme, range=range, name=name)
