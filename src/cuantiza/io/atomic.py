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

Operating-system errors while writing (disk full, read-only file system, no permission) come out
as ``WriteError`` naming the destination, not the hidden temporary path; a failure of the clean-up
itself never hides the original error (FAULTS 34). ``check_writable(out)`` refuses an output whose
folder cannot be written before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import CuantizaError, WriteError


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
    except BaseException as e:
        discard(tmp)
        raise_write_error(path, e)
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
    except BaseException as e:
        discard(tmp)
        raise_write_error(out, e)
        raise
    fsync_dir(out.parent)


def publish_folder(out: Path, files: dict) -> None:
    """Publish the folder ``out`` holding ``files`` (name -> bytes), atomically."""
    try:
        tmp = fresh_sibling(out)
    except OSError as e:
        raise_write_error(out, e)
        raise
    try:
        for name in sorted(files):
            write_synced(tmp / name, files[name])
    except BaseException as e:
        discard(tmp)
        raise_write_error(out, e)
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
    except BaseException as e:
        try:
            os.replace(old, out)
        except OSError:  # the original error stays the one raised; say where the old output is
            e.add_note(f"the previous {out} could not be put back: it is at {old}")
        raise
    discard(old)


def discard(path: Path) -> None:
    """Remove a temporary file or folder (a link itself, not its target) without ever raising:
    a clean-up that fails (read-only file system, already gone) must not hide the error that
    made it necessary."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


_HINTS = {
    errno.ENOSPC: "free some space and run again",
    errno.EDQUOT: "free some space (disk quota) and run again",
    errno.EROFS: "choose an output on a writable file system",
    errno.EACCES: "choose an output folder you may write to",
    errno.EPERM: "choose an output folder you may write to",
}


def write_error(path: Path, e: BaseException, *, rename: bool = False) -> WriteError | None:
    """A ``WriteError`` naming ``path`` and the problem for an operating-system error ``e`` that
    is not already one of cuantiza's (with ``rename``, also for a ``WriteError`` naming another
    path: a file inside ``path``); None for anything else."""
    if not isinstance(e, OSError) or (isinstance(e, CuantizaError) and not rename):
        return None
    if isinstance(e, CuantizaError) and not isinstance(e, WriteError):
        return None
    why = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    hint = _HINTS.get(e.errno or 0, "")
    kept = "; the previous one is intact" if os.path.lexists(path) else ""
    err = WriteError(f"cannot write {path}: {why}{'; ' + hint if hint else ''}{kept}")
    err.errno = e.errno  # strerror and filename stay unset: str(err) is the message
    err.path = os.path.abspath(path)
    return err


def raise_write_error(path: Path, e: BaseException) -> None:
    """Raise ``write_error(path, e)`` (from ``e``) if there is one; otherwise return."""
    err = write_error(path, e)
    if err is not None:
        raise err from e


def is_write_failure(e: BaseException) -> bool:
    """An operating-system error that writing causes: disk full, quota, read-only, permission."""
    return isinstance(e, OSError) and (e.errno or 0) in _HINTS


def check_writable(out: Path) -> None:
    """``WriteError`` now, before any work, if ``out`` could not be created: its nearest existing
    folder is on a read-only file system or not writable by this process."""
    folder = Path(os.path.abspath(out)).parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        err = WriteError(f"cannot write {out}: {folder} is a file, not a folder")
        err.errno, err.path = errno.ENOTDIR, os.path.abspath(out)
        raise err
    if os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    code = errno.EROFS if read_only else errno.EACCES
    err = WriteError(
        f"cannot write {out}: {folder} is "
        f"{'on a read-only file system' if read_only else 'not writable (permission denied)'}; "
        f"{_HINTS[code]}"
    )
    err.errno, err.path = code, os.path.abspath(out)
    raise err
