"""QScheme: how a tensor is quantized. Bits, symmetry, granularity and scale storage are
independent fields; each is validated when the scheme is built.

Integer ranges (n = bits):

* asymmetric (affine): q in [0, 2^n - 1]; r = s (q - z), zero point z makes r = 0 exact.
* symmetric: the *restricted* signed range q in [-(2^(n-1) - 1), 2^(n-1) - 1], z = 0
  (the lecture notes, docs/primer.md, give [-(2^n - 1), 2^n - 1], which is wrong; -2^(n-1) is
  left out so that the range is symmetric and -q never overflows).
* 1-bit symmetric is *binary*: the restricted range would be {0} and useless, so q in {-1, +1}
  with r = s q and s = mean|x| (the L2-optimal scale for sign(x), as in BinaryConnect/XNOR-Net).
* 2-bit symmetric is ternary {-s, 0, +s}, by the general rule.

>>> QScheme(bits=4, symmetric=True).qmin, QScheme(bits=4).qmax
(-7, 7)
>>> QScheme(bits=8, symmetric=False).qmax
255
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PerTensor:
    """One scale (and zero point) for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per index along ``axis`` (output channels of a weight: axis 0)."""

    axis: int = 0


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive elements along ``axis`` (the reduction axis, -1).

    A length not divisible by ``size`` leaves a shorter last group (zero padded inside the
    math; zeros never change a range that already contains 0).
    """

    size: int = 128
    axis: int = -1

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigError(f"PerGroup size must be a positive integer, got {self.size!r}")


Granularity = PerTensor | PerChannel | PerGroup


@dataclass(frozen=True)
class QScheme:
    """How to quantize one tensor: ``bits`` in 1..8, ``symmetric`` or affine, a granularity,
    and the dtype scales are stored in (``"float32"``, ``"float16"`` or ``"bfloat16"``)."""

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = PerTensor()
    scale_dtype: str = "float32"
    restricted: bool = True  # symmetric only; False: full signed range, see ``full_range``

    # immutable (frozen, fields of immutable values): a copy is the object itself, which keeps
    # QuantConfig's "activation left out" (an identity test) true in copied configs
    def __copy__(self) -> QScheme:
        return self

    def __deepcopy__(self, memo) -> QScheme:
        return self

    def __post_init__(self):
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer in 1..8, got {self.bits!r}")
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"symmetric must be True or False, got {self.symmetric!r}")
        if not isinstance(self.granularity, (PerTensor, PerChannel, PerGroup)):
            raise ConfigError(
                f"granularity must be PerTensor(), PerChannel(axis) or PerGroup(size), "
                f"got {self.granularity!r}"
            )
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(
                f"scale_dtype must be one of {sorted(SCALE_DTYPES)}, got {self.scale_dtype!r}"
            )
        if not isinstance(self.restricted, bool):
            raise ConfigError(f"restricted must be True or False, got {self.restricted!r}")
        if not self.restricted and (not self.symmetric or self.bits < 2):
            raise ConfigError("restricted=False applies to symmetric schemes of 2..8 bits only")

    @property
    def full_range(self) -> bool:
        """Symmetric over the full signed range [-2^(n-1), 2^(n-1) - 1] (gguf's Q4_0 / Q5_0):
        the block's value of largest magnitude maps to -2^(n-1) exactly and the scale carries
        its sign (s = extreme / -2^(n-1), negative when the extreme is positive). One more level
        than the restricted range: 16 instead of 15 at 4 bits."""
        return self.symmetric and not self.restricted

    @property
    def binary(self) -> bool:
        """1-bit symmetric: q in {-1, +1}, r = s q."""
        return self.bits == 1 and self.symmetric

    @property
    def qmin(self) -> int:
        if self.binary:
            return -1
        if self.full_range:
            return -(2 ** (self.bits - 1))
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        if self.binary:
            return 1
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def levels(self) -> int:
        """Number of distinct integers q can take."""
        return 2 if self.binary else self.qmax - self.qmin + 1

    @property
    def code_step(self) -> int:
        """Stored code = (q - qmin) // code_step: 2 for binary ({-1, +1} -> {0, 1}), else 1."""
        return 2 if self.binary else 1

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def q_dtype(self) -> torch.dtype:
        """int8 for symmetric (fits [-127, 127]), uint8 for asymmetric ([0, 255])."""
        return torch.int8 if self.symmetric else torch.uint8

    def describe(self) -> str:
        g = self.granularity
        gran = (
            "per-tensor"
            if isinstance(g, PerTensor)
            else f"per-channel(axis={g.axis})"
            if isinstance(g, PerChannel)
            else f"group{g.size}"
        )
        kind = (
            "binary"
            if self.binary
            else ("symfull" if self.full_range else "sym" if self.symmetric else "asym")
        )
        return f"int{self.bits}-{kind}-{gran}"
