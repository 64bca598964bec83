"""Memory of a model's weights per storage format, every byte counted (``cuantiza size``).

For ``params`` weights:

* float formats (32, 16 bits): params * bits / 8 bytes, nothing else.
* integer formats (1..8 bits), one scale per group of ``group_size`` consecutive weights::

      bytes = ceil(params * bits / 8)                  # codes, densely packed (5 bits take 5)
            + groups * scale_bytes                     # groups = ceil(params / group_size)
            + groups * 1        (asymmetric only)      # a uint8 zero point per group

  which is what ``QTensor.nbytes`` counts for a tensor quantized with ``PerGroup(group_size)``
  (ignoring the ragged last group of each row). 1-bit symmetric is binary {-s, +s}: no zero
  point either.

The lecture notes (docs/primer.md) give 28 GB for LLaMA-2 70B in float32; it is 70e9 x 4 B = 280 GB:

>>> format_size(70e9, 32).gigabytes
280.0
>>> round(format_size(70e9, 4, group_size=128).bits_per_weight, 3)   # 4 + 16 / 128
4.125
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError

FLOAT_BITS = {32: "fp32", 16: "fp16"}
SCALE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
GB, GIB = 1e9, 2**30


@dataclass(frozen=True)
class FormatSize:
    name: str  # "fp32", "int4 sym", "int4 asym"
    bits: int
    symmetric: bool | None  # None for float formats
    nbytes: int
    params: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.params

    @property
    def gigabytes(self) -> float:
        return self.nbytes / GB

    @property
    def gibibytes(self) -> float:
        return self.nbytes / GIB

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "bits_per_weight": self.bits_per_weight,
            "GB": self.gigabytes,
            "GiB": self.gibibytes,
        }


def parse_count(text: str | float | int) -> int:
    """A positive whole number of parameters: ``70e9``, ``7000000000``, ``70B``, ``1.5M``."""
    suffixes = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    s = str(text).strip().lower().replace("_", "")
    mult = suffixes.get(s[-1:], 1.0)
    try:
        value = float(s[:-1] if mult != 1.0 else s) * mult
    except ValueError:
        raise ConfigError(
            f"parameter count must be a number such as 70e9 or 70B, got {text!r}"
        ) from None
    if not (1 <= value < 1e18 and value == int(value)):
        raise ConfigError(
            f"parameter count must be a whole number from 1 up to 1e18 (one quintillion), "
            f"got {text!r}"
        )
    return int(value)


def format_size(
    params: int | float,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    scale_dtype: str = "float16",
) -> FormatSize:
    """Bytes to store ``params`` weights at ``bits`` (see the module docstring)."""
    params = parse_count(params)
    if bits in FLOAT_BITS:
        return FormatSize(FLOAT_BITS[bits], bits, None, params * bits // 8, params)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be 32, 16 or an integer in 1..8, got {bits!r}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group size must be a positive integer, got {group_size!r}")
    if scale_dtype not in SCALE_BYTES:
        raise ConfigError(f"scale dtype must be one of {sorted(SCALE_BYTES)}, got {scale_dtype!r}")
    groups = -(-params // group_size)
    zero_points = 0 if symmetric else groups
    nbytes = (params * bits + 7) // 8 + groups * SCALE_BYTES[scale_dtype] + zero_points
    kind = ("binary" if bits == 1 else "sym") if symmetric else "asym"
    return FormatSize(f"int{bits} {kind}", bits, symmetric, nbytes, params)


def size_table(
    params: int | float,
    bits_list=(32, 16, 8, 5, 4, 3, 2, 1),
    group_size: int = 128,
    schemes: tuple[bool, ...] = (True, False),
    scale_dtype: str = "float16",
) -> list[FormatSize]:
    """One row per float format and per (integer format, symmetry) in ``schemes``."""
    rows = []
    for bits in bits_list:
        if bits in FLOAT_BITS:
            rows.append(format_size(params, bits))
            continue
        for sym in schemes:
            rows.append(format_size(params, bits, group_size, sym, scale_dtype))
    return rows
