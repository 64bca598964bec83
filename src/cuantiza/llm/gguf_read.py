"""load_gguf: a GGUF file's tensors as cuantiza QTensors (exactly, no float round trip) and its
metadata, read by a parser of our own that checks every count, length and offset against the
file before reading data (docs/FAULTS.md 41). Nothing is unpickled; nothing is written.

GGUF (versions 2 and 3, little-endian): magic ``GGUF``, version u32, tensor count u64, metadata
count u64; metadata entries (key string, value type u32, value); tensor infos (name string,
n_dims u32, dims u64 each (fastest first), ggml type u32, offset u64 from the data section);
padding to ``general.alignment`` (default 32); the data section. A string is a u64 length and
UTF-8 bytes.

Q8_0, Q4_0 and Q5_0 matrices become QTensors of the symmetric full-range scheme of their width
with one float16 scale per 32 (``gguf_quants.scheme_of``), Q4_1 and Q5_1 of the asymmetric one,
with zero point z = -m / d: exact when every block's offset m is an integer multiple of its
scale, as in files cuantiza writes by repacking. Other ``_1`` files (llama-quantize's min/max
offsets) cannot be cuantiza integers; such a tensor comes back as the float32 values gguf
computes, d q + m, and ``GGUFFile.float_reasons`` says so. F32 and F16 tensors are float tensors.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CorruptFileError, NonFiniteError, UnsupportedDtypeError
from . import gguf_blocks as gb
from . import gguf_quants as gq
from .gguf_blocks import QK

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
FLOATS = {0: ("F32", np.dtype("<f4")), 1: ("F16", np.dtype("<f2"))}
# metadata value type -> struct format of a scalar (8: string and 9: array are read apart)
SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY = 8, 9


@dataclass
class GGUFFile:
    """A read GGUF file: ``metadata`` (key -> value), ``tensors`` (name -> QTensor or float
    tensor, in the file's order), ``types`` (name -> GGML type name) and ``float_reasons`` for
    quantized tensors that came back as float values."""

    path: str
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    types: dict = field(default_factory=dict)
    float_reasons: dict = field(default_factory=dict)


class _Cursor:
    """Reads a file front to back; every read past the end is a CorruptFileError naming the
    byte where the file ran out."""

    def __init__(self, f, path: Path, size: int):
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise CorruptFileError(
                f"{self.path}: truncated: {what} needs {n} bytes at byte {self.pos}, the file "
                f"has {self.size}"
            )
        data = self.f.read(n)
        self.pos += n
        return data

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", what)
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorruptFileError(f"{self.path}: {what} is not UTF-8 (byte {self.pos})") from e


def _value(c: _Cursor, vtype: int, what: str, depth: int = 0):
    if vtype in SCALARS:
        return c.unpack(SCALARS[vtype], what)
    if vtype == STRING:
        return c.string(what)
    if vtype != ARRAY or depth > 2:
        raise CorruptFileError(f"{c.path}: {what} has the unknown value type {vtype}")
    item, n = c.unpack("I", what), c.unpack("Q", what)
    if item in SCALARS and item != 7:  # numbers: one read, checked against the file's size
        dt = np.dtype("<" + SCALARS[item])
        return np.frombuffer(c.take(n * dt.itemsize, what), dtype=dt).tolist()
    if n > c.size - c.pos:  # each item is at least one byte: a count past that is corrupt
        raise CorruptFileError(f"{c.path}: {what} claims {n} items at byte {c.pos}")
    return [_value(c, item, what, depth + 1) for _ in range(n)]


def _metadata(c: _Cursor, count: int) -> dict:
    meta: dict = {}
    for i in range(count):
        key = c.string(f"metadata key {i}")
        if key in meta:
            raise CorruptFileError(f"{c.path}: the metadata key {key!r} appears twice")
        meta[key] = _value(c, c.unpack("I", f"type of {key}"), key)
    return meta


@dataclass(frozen=True)
class _Info:
    name: str
    shape: tuple  # torch order (slowest first)
    ggml_type: int
    offset: int
    nbytes: int


def _nbytes(path: Path, name: str, dims: list, ggml_type: int) -> int:
    """Bytes of a tensor; typed errors for unsupported types and rows that are not whole
    blocks (packing that does not match the declared shape)."""
    n = int(np.prod(dims, dtype=np.uint64)) if dims else 1
    if ggml_type in FLOATS:
        return n * FLOATS[ggml_type][1].itemsize
    bt = gb.BY_GGML_ID.get(ggml_type)
    if bt is None:
        known = ", ".join([*(t.name for t in gb.BLOCK_TYPES.values()), "F16", "F32"])
        raise UnsupportedDtypeError(
            f"{path}: tensor {name!r} has GGML type {ggml_type}; load_gguf reads {known}"
        )
    if dims[0] % QK:
        raise CorruptFileError(
            f"{path}: tensor {name!r} ({bt.name}) has rows of {dims[0]} weights, not whole "
            f"blocks of {QK}"
        )
    return n // QK * bt.nbytes


def _infos(c: _Cursor, count: int) -> list[_Info]:
    infos, seen = [], set()
    for i in range(count):
        name = c.string(f"name of tensor {i}")
        if name in seen:
            raise CorruptFileError(f"{c.path}: the tensor name {name!r} appears twice")
        seen.add(name)
        n_dims = c.unpack("I", f"dimensions of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise CorruptFileError(f"{c.path}: tensor {name!r} has {n_dims} dimensions")
        dims = [c.unpack("Q", f"shape of {name}") for _ in range(n_dims)]
        if any(d == 0 or d > c.size * 8 for d in dims):
            raise CorruptFileError(f"{c.path}: tensor {name!r} has the shape {dims}")
        ggml_type, offset = c.unpack("I", f"type of {name}"), c.unpack("Q", f"offset of {name}")
        size = _nbytes(c.path, name, dims, ggml_type)
        infos.append(_Info(name, tuple(reversed(dims)), ggml_type, offset, size))
    return infos


def _check_layout(path: Path, infos: list[_Info], data_start: int, size: int, align: int):
    """Offsets aligned, every tensor inside the file, no two overlapping."""
    end_prev, prev = 0, None
    for t in sorted(infos, key=lambda t: t.offset):
        if t.offset % align:
            raise CorruptFileError(f"{path}: tensor {t.name!r} offset {t.offset} is not aligned")
        if data_start + t.offset + t.nbytes > size:
            raise CorruptFileError(
                f"{path}: tensor {t.name!r} ends at byte {data_start + t.offset + t.nbytes}, "
                f"past the end of the file ({size} bytes): truncated or a bad offset"
            )
        if t.offset < end_prev:
            raise CorruptFileError(f"{path}: tensors {prev!r} and {t.name!r} overlap")
        end_prev, prev = t.offset + t.nbytes, t.name


def _header(f, path: Path, size: int) -> tuple[int, dict, list[_Info], int]:
    c = _Cursor(f, path, size)
    if c.take(4, "the magic") != MAGIC:
        raise CorruptFileError(f"{path} is not a GGUF file (no GGUF magic at byte 0)")
    version = c.unpack("I", "the version")
    if version not in VERSIONS:
        raise CorruptFileError(
            f"{path}: GGUF version {version} (big-endian or unknown); versions 2-3 are read"
        )
    n_tensors, n_meta = c.unpack("Q", "the tensor count"), c.unpack("Q", "the metadata count")
    meta = _metadata(c, n_meta)
    infos = _infos(c, n_tensors)
    align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise CorruptFileError(f"{path}: general.alignment {align!r} is not a power of two")
    data_start = -(-c.pos // align) * align
    _check_layout(path, infos, data_start, size, align)
    return version, meta, infos, data_start


def _tensor(raw: np.ndarray, info: _Info, out: GGUFFile):
    if info.ggml_type in FLOATS:
        return torch.from_numpy(raw.view(FLOATS[info.ggml_type][1]).reshape(info.shape).copy())
    bt = gb.BY_GGML_ID[info.ggml_type]
    if len(info.shape) != 2:
        raise UnsupportedDtypeError(
            f"{out.path}: {bt.name} tensor {info.name!r} has the shape {info.shape}; "
            "load_gguf reads quantized matrices (2 dimensions)"
        )
    blocks = raw.reshape(-1, bt.nbytes)
    _, d, m = gb.unpack(bt, blocks)
    if not (np.isfinite(d).all() and (m is None or np.isfinite(m).all())):
        raise NonFiniteError(f"{out.path}: tensor {info.name!r} has non-finite block scales")
    qt = gq.from_blocks(blocks, bt, info.shape)
    if qt is not None:
        return qt
    out.float_reasons[info.name] = (
        f"{bt.name} offsets that are not integer multiples of the block scale: kept as the "
        "float32 values d q + m"
    )
    return torch.from_numpy(gb.dequantize(bt, blocks).reshape(info.shape))


def load_gguf(path) -> GGUFFile:
    """Read the GGUF file ``path`` (see the module docstring); CorruptFileError for truncated
    data, duplicate names or keys, offsets past the end; UnsupportedDtypeError for tensor types
    other than Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16 and F32. Each tensor is one read of its bytes."""
    p = Path(path)
    if not p.is_file():
        raise CorruptFileError(f"{p} is not a file")
    size = os.path.getsize(p)
    with open(p, "rb") as f:
        version, meta, infos, data_start = _header(f, p, size)
        out = GGUFFile(str(p), version, meta)
        for info in infos:
            f.seek(data_start + info.offset)
            raw = np.frombuffer(f.read(info.nbytes), dtype=np.uint8)
            if raw.size != info.nbytes:  # the file shrank while being read
                raise CorruptFileError(f"{p}: tensor {info.name!r} is truncated")
            out.types[info.name] = FLOATS.get(info.ggml_type, ("",))[0] or (
                gb.BY_GGML_ID[info.ggml_type].name
            )
            out.tensors[info.name] = _tensor(raw, info, out)
    return out
