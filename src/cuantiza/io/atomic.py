"""Atomic publication of output files and folders (FAULTS 28-29): nothing partial is ever
visible. Every writer in cuantiza publishes through here.

``publish_file(path, data)`` (or ``staged_file(path)`` for a caller that fills the file itself)
writes a hidden temporary file next to ``path``, fsyncs it, ``os.replace``s it onto ``path`` and
fsyncs the folder; on any error the temporary file is removed and a previous ``path`` stays.

``publish_folder(out, files)`` writes every file into a fresh hidden folder next to ``out``
(same parent, so the final step is a rename on one file system), flushes and fsyncs each file
and the folder, then ``os.replace``s it onto ``out``. A previous ``out`` is first moved aside
under a hidden name and removed only once the new folder is in place; if that last rename
fails it is moved back. On any error (disk full, interruption) the temporary folder is
removed, so the previous output stays as it was and no debris is left. Callers decide
beforehand whether ``out`` may be replaced.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (never over an existing file) with ``data``, flushed to the disk."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_file(path: Path, tag: str = "tmp") -> Iterator[Path]:
    """Yield an unused hidden temporary path next to ``path`` for the caller to write (and
    fsync); when the block ends cleanly it replaces ``path`` atomically, on any error it is
    removed and a previous ``path`` stays as it was."""
    path = Path(path)
    tmp = sibling(path, tag)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def publish_file(path: Path, data: bytes) -> None:
    """Write ``path`` holding ``data``, whole or not at all (``staged_file``)."""
    with staged_file(path) as tmp:
        write_synced(tmp, data)


def sibling(out: Path, tag: str) -> Path:
    """An unused hidden name next to ``out`` (same folder, so os.replace stays a rename)."""
    while True:
        p = out.with_name(f".{out.name}.{tag}-{secrets.token_hex(4)}")
        if not os.path.lexists(p):
            return p


def fresh_sibling(out: Path, tag: str = "tmp") -> Path:
    """Create and return an empty hidden folder next to ``out``, for a caller that fills it
    itself (large files streamed in) and then calls ``publish_staged``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(out, tag)
    tmp.mkdir()
    return tmp


def publish_staged(tmp: Path, out: Path) -> None:
    """Publish the filled folder ``tmp`` (its files already fsynced) as ``out``, atomically, as
    ``publish_folder`` does; on any error ``tmp`` is removed and a previous ``out`` kept."""
    try:
        fsync_dir(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)


def publish_folder(out: Path, files: dict) -> None:
    """Publish the folder ``out`` holding ``files`` (name -> bytes), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(out, "tmp")
    tmp.mkdir()
    try:
        for name in sorted(files):
            write_synced(tmp / name, files[name])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_staged(tmp, out)


def _swap_in(tmp: Path, out: Path) -> None:
    """os.replace ``tmp`` onto ``out``; an existing ``out`` is moved aside, then removed (or put
    back if the move fails)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = sibling(out, "old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
