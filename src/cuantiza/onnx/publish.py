"""Publishing an ONNX file atomically, checked first (see ``fileio`` for the rules).

Small models: serialize, check (``onnx.checker`` + an onnxruntime run), then write a hidden
temporary file next to ``dst``, fsync, ``os.replace``. Large models: the external data file is
written first under its content name, then the model file is written to a temporary name,
checked from there (onnxruntime resolves the relative location from the model's folder), and
renamed onto ``dst``. Data files of the model previously at ``dst`` that the new one does not
use are removed afterwards.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from onnx import ModelProto, TensorProto

from ..errors import OutputExistsError
from ..io.atomic import check_writable, discard, publish_file, staged_file, write_synced
from . import fileio

_ALIGN = 4096  # tensors start on page boundaries in the data file (lets runtimes mmap)


def check_output(dst, overwrite: bool, src=None) -> Path:
    """Refuse the input itself, a folder, or an existing file without ``overwrite``."""
    dst = Path(os.path.abspath(dst))
    if src is not None and (
        dst == Path(os.path.abspath(src))
        or (dst.exists() and Path(src).exists() and os.path.samefile(dst, src))
    ):
        raise OutputExistsError(f"{dst} is the input model; write the quantized model elsewhere")
    if dst.is_dir():
        raise OutputExistsError(f"{dst} is a folder; give a file path such as {dst / 'model.onnx'}")
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists; pass overwrite=True to replace it")
    check_writable(dst)
    return dst


def _old_data_files(dst: Path) -> set:
    """Data files the model now at ``dst`` points to (ours are named ``<dst name>.<hash>.data``)."""
    if not dst.is_file():
        return set()
    try:
        old = fileio.parse(dst)
    except Exception:  # noqa: BLE001  (an unreadable previous file has no data files to keep)
        return set()
    return {
        dict((e.key, e.value) for e in t.external_data).get("location", "")
        for t in fileio.all_tensors(old.graph)
        if t.data_location == TensorProto.EXTERNAL
    }


def _remove_stale(dst: Path, old: set, keep: str | None) -> None:
    for loc in old:
        if (
            loc != keep
            and loc.startswith(dst.name + ".")
            and loc.endswith(".data")
            and "/" not in loc
        ):
            discard(dst.parent / loc)  # a stale file left behind is no reason to fail


def save_model(model: ModelProto, dst: Path, feeds: dict) -> list[Path]:
    """Check ``model`` (checker + onnxruntime on ``feeds``) and publish it at ``dst``.
    Returns the files written: the model, and its data file if it has one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = _old_data_files(dst)
    if model.ByteSize() >= fileio.EXTERNAL_THRESHOLD:
        files = _save_external(model, dst, feeds)
    else:
        blob = model.SerializeToString(deterministic=True)
        fileio.validate(blob, model, feeds, dst)
        publish_file(dst, blob)
        files = [dst]
    _remove_stale(dst, old, files[1].name if len(files) > 1 else None)
    return files


def _externalize(model: ModelProto, dst: Path) -> tuple[ModelProto, list, str]:
    """A copy of ``model`` whose large raw tensors point into one data file; returns (model,
    [(offset, bytes)] to write, data file name)."""
    m = ModelProto()
    m.CopyFrom(model)
    big = [
        t
        for t in fileio.all_tensors(m.graph)
        if t.HasField("raw_data") and len(t.raw_data) >= fileio.EXTERNAL_MIN_TENSOR
    ]
    digest = hashlib.sha256()
    for t in big:
        digest.update(t.name.encode() + b"\0" + len(t.raw_data).to_bytes(8, "little"))
        digest.update(t.raw_data)
    name = f"{dst.name}.{digest.hexdigest()[:16]}.data"
    chunks, offset = [], 0
    for t in big:
        offset = -(-offset // _ALIGN) * _ALIGN
        chunks.append((offset, t.raw_data))
        del t.external_data[:]
        for k, v in (("location", name), ("offset", str(offset)), ("length", str(len(t.raw_data)))):
            t.external_data.add(key=k, value=v)
        t.data_location = TensorProto.EXTERNAL
        offset += len(t.raw_data)
        t.ClearField("raw_data")
    return m, chunks, name


def _write_data(path: Path, chunks: list) -> None:
    with staged_file(path) as tmp, open(tmp, "xb") as f:
        for offset, data in chunks:
            f.seek(offset)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_external(model: ModelProto, dst: Path, feeds: dict) -> list[Path]:
    m, chunks, name = _externalize(model, dst)
    data = dst.parent / name
    existed = data.exists()
    try:
        _write_data(data, chunks)
        with staged_file(dst) as tmp:  # checked from its temporary name, then renamed
            write_synced(tmp, m.SerializeToString(deterministic=True))
            fileio.validate(str(tmp), m, feeds, dst)
    except BaseException:
        if not existed:
            discard(data)
        raise
    return [dst, data]


def save_unchecked(model: ModelProto, path: Path) -> None:
    """Write a large working model (calibration) with its data file, no checks: temporary use."""
    m, chunks, name = _externalize(model, path)
    _write_data(path.parent / name, chunks)
    write_synced(path, m.SerializeToString())
