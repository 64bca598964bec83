"""Reading safetensors files without the safetensors library's mmap: the header parsed and
checked here (8-byte little-endian length, JSON header, known dtypes, byte ranges inside the file
that cover its data exactly), and one tensor's byte range read at a time with ``readinto``, so
the memory held is about that tensor (FAULTS 25, 29).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CorruptFileError

MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header

# safetensors dtype name <-> torch dtype (the unsigned 16..64-bit types where torch has them)
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    **{
        k: getattr(torch, v)
        for k, v in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"))
        if hasattr(torch, v)
    },
}
NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its dtype, shape, shard file name and absolute byte range."""

    dtype: torch.dtype
    shape: tuple
    shard: str
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """The parsed header of one safetensors file; ``read(name)`` reads one tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata, self.infos = parse_header(self.path)

    def names(self) -> list[str]:
        """Tensor names in file order (by data offset)."""
        return list(self.infos)

    def read(self, name: str) -> torch.Tensor:
        return read_range(self.path, self.infos[name], name)


def _corrupt(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path}: {what}; the file is truncated or not a safetensors file: "
        "download or convert the checkpoint again"
    )


def _read_header_bytes(path: Path) -> tuple[bytes, int]:
    """(header JSON bytes, file size); CorruptFileError on a short or absurd length."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"only {len(head)} bytes, a safetensors file starts with 8")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER, size - 8):
                raise _corrupt(path, f"header length {n} exceeds the file ({size} bytes)")
            return f.read(n), size
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing; download the checkpoint again") from None
    except OSError as e:
        if isinstance(e, CorruptFileError):
            raise
        raise CorruptFileError(f"{path} cannot be read ({type(e).__name__}: {e})") from e


def _entry(path: Path, name: str, e, base: int, shard: str) -> TensorInfo:
    """One header entry checked: dtype known, shape and offsets integers, size consistent."""
    ok = (
        isinstance(e, dict)
        and isinstance(e.get("shape"), list)
        and isinstance(e.get("data_offsets"), list)
    )
    if not ok or e.get("dtype") not in DTYPES or len(e["data_offsets"]) != 2:
        raise _corrupt(
            path, f"header entry {name!r} is malformed or has an unknown dtype ({e!r:.120})"
        )
    ints = list(e["shape"]) + list(e["data_offsets"])
    if not all(type(v) is int and v >= 0 for v in ints):
        raise _corrupt(path, f"header entry {name!r} has non-integer or negative sizes")
    dtype = DTYPES[e["dtype"]]
    b, end = e["data_offsets"]
    n = 1
    for s in e["shape"]:
        n *= s
    if end < b or end - b != n * dtype.itemsize:
        raise _corrupt(
            path,
            f"tensor {name!r}: byte range {b}..{end} does not hold shape "
            f"{e['shape']} of {e['dtype']}",
        )
    return TensorInfo(dtype, tuple(e["shape"]), shard, base + b, base + end)


def parse_header(path: Path) -> tuple[dict, dict]:
    """(metadata, {name: TensorInfo} in data order) of a safetensors file, fully checked."""
    raw, size = _read_header_bytes(path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _corrupt(path, "__metadata__ is not a JSON object")
    base = 8 + len(raw)
    by_start = sorted(
        ((_entry(path, k, v, base, path.name), k) for k, v in header.items()),
        key=lambda p: (p[0].start, p[0].end),
    )
    pos = base
    for info, name in by_start:
        if info.start != pos:
            what = "overlaps the previous one" if info.start < pos else "leaves a gap before it"
            raise _corrupt(
                path, f"tensor {name!r} {what} (byte {info.start - base}, expected {pos - base})"
            )
        pos = info.end
    if pos != size:
        why = "is truncated" if pos > size else "has trailing bytes"
        raise _corrupt(path, f"{why}: the header needs {pos} bytes, the file has {size}")
    return meta, {name: info for info, name in by_start}


def read_range(path: Path, info: TensorInfo, name: str) -> torch.Tensor:
    """The tensor stored at ``info``'s byte range of ``path``, in a fresh buffer."""
    if sys.byteorder != "little":
        raise CorruptFileError("safetensors data is little-endian; this machine is big-endian")
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(info.start)
            got = 0
            while got < info.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise CorruptFileError(
                        f"{path}: tensor {name!r} is cut short at byte {info.start + got} "
                        "(the file changed or was truncated); download it again"
                    )
                got += n
    except OSError as e:
        if isinstance(e, CorruptFileError):
            raise
        raise CorruptFileError(
            f"{path}: cannot read tensor {name!r} ({type(e).__name__}: {e})"
        ) from e
    return buf.view(info.dtype).reshape(info.shape)
