"""Read Hugging Face style checkpoints tensor by tensor, without loading a shard whole.

``open_checkpoint(dir)`` checks everything up front, before any work (FAULTS 24, 25, 30):
``config.json`` (JSON with ``model_type`` or ``architectures``), the shard files (one
``model.safetensors``, or ``model.safetensors.index.json`` whose ``weight_map`` must match the
shards' own headers exactly) and every shard header (parsed here, not by the safetensors
library: 8-byte little-endian length, JSON header, known dtypes, byte ranges inside the file
that cover its data exactly). A folder holding only pickle checkpoints (``*.bin``, ``*.pt``) is
refused: cuantiza never unpickles.

``Checkpoint.read(name)`` reads exactly one tensor's byte range with ``readinto`` into a fresh
buffer: no mmap of the shard, so the memory held is about that tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CorruptFileError, UnsafeFileError

CONFIG, INDEX, SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
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
        self.metadata, self.infos = _parse_header(self.path)

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


def _parse_header(path: Path) -> tuple[dict, dict]:
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


class Checkpoint:
    """A checked Hugging Face style folder: ``config`` (config.json as a dict), shards, tensors."""

    def __init__(self, dir: Path, config: dict, files: dict):
        self.dir = dir
        self.config = config
        self._files = files  # shard name -> SafetensorsFile
        self._infos = {n: i for f in files.values() for n, i in f.infos.items()}

    def names(self) -> list[str]:
        """Every tensor name, shard by shard, in each shard's data order."""
        return list(self._infos)

    def shards(self) -> dict[str, list[str]]:
        """Shard file name -> its tensor names in data order (shards in name order)."""
        return {s: f.names() for s, f in self._files.items()}

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def read(self, name: str) -> torch.Tensor:
        """One tensor, read from its byte range alone."""
        info = self._infos[name]
        return read_range(self.dir / info.shard, info, name)

    @property
    def nbytes(self) -> int:
        """Bytes of all shard files."""
        return sum((self.dir / s).stat().st_size for s in self._files)


def open_checkpoint(dir) -> Checkpoint:
    """A checked checkpoint folder (see the module docstring for what is checked)."""
    d = Path(dir)
    if not d.is_dir():
        raise CorruptFileError(
            f"{d} is not a folder; pass a Hugging Face style model folder "
            f"({CONFIG} + *.safetensors)"
        )
    config = read_config(d / CONFIG)
    if (d / INDEX).is_file():
        files = _indexed_shards(d)
    elif (d / SINGLE).is_file():
        files = {SINGLE: SafetensorsFile(d / SINGLE)}
    else:
        _refuse_missing(d)
    return Checkpoint(d, config, files)


def read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptFileError(
            f"{path} is missing; a model folder needs the model's {CONFIG}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from e
    if not isinstance(cfg, dict) or not (cfg.get("model_type") or cfg.get("architectures")):
        raise CorruptFileError(
            f"{path} names no 'model_type' or 'architectures'; it is not a "
            "transformers model config"
        )
    return cfg


def _refuse_missing(d: Path):
    """No safetensors weights: explain (pickle-only folders are refused, never unpickled)."""
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeFileError(
            f"{d} holds only pickle checkpoints ({', '.join(pickles[:4])}); cuantiza never "
            "unpickles "
            "(loading a pickle can run arbitrary code). Convert it to safetensors where you trust "
            "the file, e.g. model.save_pretrained(out, safe_serialization=True)"
        )
    others = sorted(p.name for p in d.glob("*.safetensors"))
    hint = f" (found {', '.join(others[:4])} but no index)" if others else ""
    raise CorruptFileError(
        f"{d} has neither {SINGLE} nor {INDEX}{hint}; save the model with "
        "save_pretrained or add the index"
    )


def _read_index(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from e
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise CorruptFileError(f"{path} has no 'weight_map' of tensor name -> shard file")
    for shard in set(wm.values()):
        if (
            shard != os.path.basename(shard)
            or shard in ("", ".", "..")
            or not shard.endswith(".safetensors")
        ):
            raise UnsafeFileError(
                f"{path} lists the shard {shard!r}: shards must be *.safetensors "
                "files in the model folder itself"
            )
    return wm


def _indexed_shards(d: Path) -> dict:
    """The shards named by the index, each header checked against the weight_map (FAULTS 30)."""
    wm = _read_index(d / INDEX)
    names = sorted(set(wm.values()))
    missing = [s for s in names if not (d / s).is_file()]
    if missing:
        raise CorruptFileError(
            f"{d / INDEX} lists shard(s) that are missing: {', '.join(missing[:5])}"
        )
    files = {s: SafetensorsFile(d / s) for s in names}
    problems = []
    for name, shard in wm.items():
        if name not in files[shard].infos:
            where = [s for s, f in files.items() if name in f.infos]
            problems.append(
                f"{name} (index: {shard}; " + (f"found in {where[0]})" if where else "in no shard)")
            )
    for s, f in files.items():
        problems += [f"{n} (in {s}, not in the index)" for n in f.infos if n not in wm]
        problems += [
            f"{n} (in {s} and in {wm[n]}: stored twice)"
            for n in f.infos
            if n in wm and wm[n] != s and n in files[wm[n]].infos
        ]
    if problems:
        raise CorruptFileError(
            f"{d / INDEX} does not match the shard headers: {len(problems)} tensor(s): "
            f"{'; '.join(problems[:6])}; fix or regenerate the index"
        )
    return files
