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
from ..core.range_specs import MinMax, RangeSpec
from ..core.scheme import QScheme


def rtn(
    w: torch.Tensor, scheme: QScheme, range: RangeSpec = MinMax(), name: str = "weight"
) -> QTensor:
    """Round ``w`` to nearest with qparams from ``range`` (``MSE()`` for MSE-optimal clipping).
    NaN/Inf raise ``NonFiniteError`` naming ``name``."""
    return QTensor.from_float(w, scheme, range=range, name=name)
