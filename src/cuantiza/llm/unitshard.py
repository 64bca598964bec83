"""UnitShard: one unit of a ``ShardedWriter`` on its way to a safetensors file.

``add`` appends each tensor's bytes to a data file at once (nothing is kept in memory); on
close the file ``unit-{unit}.safetensors`` is assembled from it by a streaming copy: the 8-byte
header length, the JSON header (tensors sorted by alignment, then name, like the safetensors
library; padded to 8 bytes) and the data, hashed on the way, fsynced, then renamed into
place. The same tensors added in the same order always give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch

from ..errors import PlanError
from ..io.atomic import discard, staged_file
from ..io.safetensors_file import DTYPES, NAMES

COPY_CHUNK = 8 * 2**20


def canonical(obj) -> str:
    """Compact, key-sorted JSON: equal objects give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class UnitShard:
    """One unit being written: ``add`` streams tensor bytes to a data file at once; ``meta``
    (JSON) and ``extras`` (tensors for the producer) are saved when the unit closes."""

    def __init__(self, staging: Path, unit: str):
        self.unit, self.staging = unit, staging
        self.meta: dict = {}
        self.extras: dict = {}
        self._data_path = staging / f".{unit}.data"
        self._f = open(self._data_path, "wb")
        self._entries: dict = {}  # name -> (dtype name, shape, offset, nbytes)
        self._pos = 0
        self._tmp: list = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor``'s bytes (made contiguous, on the CPU) to the unit's data file."""
        if not isinstance(name, str) or not name or name == "__metadata__" or name in self._entries:
            raise PlanError(
                f"unit {self.unit}: tensor name {name!r} is empty, reserved or added twice"
            )
        flat = _flat_bytes(tensor, name)
        self._f.write(memoryview(flat.numpy()))
        self._entries[name] = (NAMES[tensor.dtype], list(tensor.shape), self._pos, flat.numel())
        self._pos += flat.numel()

    def close(self) -> dict:
        """Assemble, fsync and rename the unit's files; return its progress record."""
        self._f.close()
        json.dumps(self.meta)  # TypeError now, not after the work is on disk
        rec = {
            "unit": self.unit,
            "file": None,
            "bytes": 0,
            "sha256": None,
            "tensors": list(self._entries),
            "tensor_bytes": self._pos,
            "meta": json.loads(canonical(self.meta)),
            "extras": None,
        }
        if self.extras:
            rec["extras"] = f"unit-{self.unit}.extras.safetensors"
            self._assemble(rec["extras"], _memory_entries(self.extras), self.extras)
        if self._entries:
            rec["file"] = f"unit-{self.unit}.safetensors"
            rec["bytes"], rec["sha256"] = self._assemble(rec["file"], self._entries, None)
        self._data_path.unlink()
        return rec

    def _assemble(self, final: str, entries: dict, tensors: dict | None) -> tuple[int, str]:
        """Write header + data (from the data file, or ``tensors``), fsync, rename to ``final``."""
        order = sorted(entries, key=lambda n: (-DTYPES[entries[n][0]].itemsize, n))
        header, pos = {"__metadata__": {"format": "pt"}}, 0
        for n in order:
            dt, shape, _, size = entries[n]
            header[n] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + size]}
            pos += size
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        raw += b" " * (-len(raw) % 8)
        h, total = hashlib.sha256(), 0
        with staged_file(self.staging / final) as tmp:
            self._tmp.append(tmp)
            with open(tmp, "xb") as out, open(self._data_path, "rb") as src:

                def emit(b):
                    nonlocal total
                    out.write(b)
                    h.update(b)
                    total += len(b)

                emit(struct.pack("<Q", len(raw)) + raw)
                for n in order:
                    if tensors is not None:
                        emit(memoryview(_flat_bytes(tensors[n], n).numpy()))
                    else:
                        _copy_range(src, entries[n][2], entries[n][3], emit)
                out.flush()
                os.fsync(out.fileno())
        return total, h.hexdigest()

    def abort(self) -> None:
        """Remove everything this unit wrote."""
        self._f.close()
        done = [
            self.staging / f"unit-{self.unit}{ext}"
            for ext in (".safetensors", ".extras.safetensors")
        ]
        for p in [self._data_path, *self._tmp, *done]:
            discard(p)  # never raises: the error that aborted the unit stays the one seen


def _flat_bytes(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (contiguous CPU copy only when needed)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in NAMES:
        what = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise PlanError(
            f"{name}: cannot store {what} in safetensors; supported: "
            f"{sorted(NAMES.values(), key=str)}"
        )
    if tensor.device.type == "meta":  # FAULTS 22
        raise PlanError(f"{name} is on the meta device (no data); materialize it before writing")
    t = tensor.detach().to("cpu").contiguous()  # FAULTS 21
    return t.reshape(-1).view(torch.uint8)


def _memory_entries(tensors: dict) -> dict:
    for n, t in tensors.items():
        _flat_bytes(t, n)  # type check up front
    return {
        n: (NAMES[t.dtype], list(t.shape), 0, t.numel() * t.element_size())
        for n, t in tensors.items()
    }


def _copy_range(src, offset: int, size: int, emit) -> None:
    src.seek(offset)
    buf = bytearray(min(COPY_CHUNK, max(size, 1)))
    view = memoryview(buf)
    left = size
    while left:
        n = src.readinto(view[: min(left, len(buf))])
        if not n:
            raise OSError(f"{src.name} ended early while assembling a shard")
        emit(view[:n])
        left -= n
