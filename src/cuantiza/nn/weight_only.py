"""Weight-only linear layers: float activations times a quantized weight that is never
materialized in float (``backends.native.weight_only``), or, where that kernel does not take
the layer, the reference: ``QTensor.dequantize`` then ``F.linear`` on every call.

``choose(qt)`` decides once, from the weight alone, and gives the reason for a fallback (which
the report and ``repr`` show). ``WeightOnlyKernel`` repacks the codes into the kernel's layout
once, on first use, and keeps only that copy. The native kernel's dequantized weights are the
reference's bit for bit; its sums differ only in order, within the bound its module docstring
derives (|y - y_ref| <= 2 gamma(K + 1) (sum_k |x_k w_k| + |b|)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backends import layers
from ..backends.native import weight_only as native
from ..core.qtensor import QTensor
from ..core.scheme import PerChannel, PerGroup, PerTensor


def _operands(qt: QTensor) -> tuple[dict | None, str | None]:
    """The kernel's view of a (N, K) weight: codes, bits, group, scale (N, G) float32, zero
    points (N, G) int32 or None, qmin, step; or (None, why) for a layout it cannot take."""
    if len(qt.shape) != 2:
        return None, f"a {len(qt.shape)}-d weight"
    n, k = qt.shape
    s, g = qt.scheme, qt.scheme.granularity
    if isinstance(g, PerGroup) and g.axis in (1, -1):
        if k % g.size:
            return None, f"group {g.size} does not divide {k} input features (padded groups)"
        group = g.size
    elif isinstance(g, (PerTensor, PerChannel)) and getattr(g, "axis", 0) in (0, -2):
        group = k
    else:
        return None, f"{g} is not per output row"
    shape = (n, k // group)  # (N, G); per tensor and per channel are one group of K
    scale = qt.qparams.scale.to(torch.float32).reshape(-1, shape[1] if group < k else 1)
    zero = None
    if not s.symmetric:
        zero = qt.qparams.zero_point.to(torch.int32).reshape(scale.shape).expand(shape)
    return {
        "n": n,
        "k": k,
        "bits": s.bits,
        "group": group,
        "scale": scale.expand(shape),
        "zero": zero,
        "qmin": s.qmin,
        "step": s.code_step,
    }, None


def choose(qt: QTensor, prefer: str | None = None) -> tuple[str, str | None]:
    """The kernel of a weight-only layer and, for the reference, why: ("native_wo", None) or
    ("dequantize", reason). ``prefer="dequantize"`` forces the reference (tests, benchmarks)."""
    ops, why = _operands(qt)
    if ops is not None:
        why = native.supports(
            ops["n"], ops["k"], ops["bits"], ops["group"], ops["step"], ops["zero"], ops["qmin"]
        )
    return layers.choose_weight_only(why, prefer)


class WeightOnlyKernel:
    """y = x W^T (+ bias) for one weight-only layer, by the kernel ``choose`` picked."""

    def __init__(self, qt: QTensor, prefer: str | None = None, int8_decode: bool = False):
        """int8_decode: below 8 rows, 4- and 8-bit weights run with int8 activations (exact against
        their own specification, not within the float bound; ``backends.native.weight_only``,
        contract point 4). Generation turns it on; layers leave it off."""
        self.name, self.reason = choose(qt, prefer)
        self.int8_decode = int8_decode
        self.out_features = qt.shape[0]
        self._qt: QTensor | None = qt
        self._packed: native.WeightOnlyLinear | None = None

    def release_weight(self) -> None:
        """Pack now and drop the QTensor (a decoder runtime keeps only the kernel's copy)."""
        if self.name == "native_wo":
            self._pack()
            self._qt = None

    def _pack(self) -> native.WeightOnlyLinear:
        if self._packed is None:
            assert self._qt is not None
            ops, _ = _operands(self._qt)
            assert ops is not None
            self._packed = native.WeightOnlyLinear(  # from the packed codes: no unpacked copy
                None,
                ops["bits"],
                ops["group"],
                ops["scale"],
                ops["zero"],
                ops["qmin"],
                ops["step"],
                packed_codes=self._qt.data,
                shape=(ops["n"], ops["k"]),
                int8_decode=self.int8_decode,
            )
        return self._packed

    def native_layer(self) -> native.WeightOnlyLinear | None:
        """The packed weight the native kernels run (None on the reference), for callers that
        chain native steps themselves (``llm.runtime``)."""
        return self._pack() if self.name == "native_wo" else None

    def describe(self) -> str:
        """The kernel's name, why the reference runs, or that decode uses int8 activations."""
        if self.reason is not None:
            return f"{self.name} ({self.reason})"
        if self.int8_decode and self._pack().int8_decode:
            return f"{self.name} (int8 activations below {native.PREFILL_FROM_M} rows)"
        return self.name

    @property
    def cache_bytes(self) -> int:
        """Bytes of the kernel's packed copy (held besides the QTensor; 0 before first use)."""
        return 0 if self._packed is None else self._packed.nbytes

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.name == "native_wo":
            lead = x.shape[:-1]
            x2 = x.reshape(-1, x.shape[-1])
            if x2.dtype != torch.float32:
                x2 = x2.to(torch.float32)
            return self._pack().forward(x2, bias).reshape(*lead, self.out_features)
        assert self._qt is not None
        return F.linear(x.to(torch.float32), self._qt.dequantize(), bias)
