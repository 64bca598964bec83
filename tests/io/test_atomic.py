"""io.atomic under operating-system faults (FAULTS 29, 34): the error the user sees names the
destination and the problem, a failing clean-up never hides it, nothing is left behind and a
previous output is intact.

The faults here are simulated in-process (``os.replace`` / ``os.unlink`` / ``os.access``
replaced by functions that raise the operating system's error), so they run anywhere; the real
read-only mount and full disk are exercised on the command line by
``tests/cli/test_no_traceback.py`` where the machine allows mounting.
"""

import errno
import os

import pytest

import cuantiza as cz
from cuantiza.io import atomic


def _raise(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[0]) if args else None)

    return fail


def test_a_failing_cleanup_does_not_hide_the_original_error(tmp_path, monkeypatch):
    """The bug of the read-only ONNX output: the temporary file's unlink raised EROFS and hid
    the error that made the clean-up necessary (FAULTS 34)."""
    dst = tmp_path / "model.onnx"
    dst.write_bytes(b"previous")
    monkeypatch.setattr(atomic.os, "replace", _raise(errno.ENOSPC))
    monkeypatch.setattr(atomic.os, "unlink", _raise(errno.EROFS))
    with pytest.raises(cz.WriteError) as info:
        atomic.publish_file(dst, b"new bytes")
    e = info.value
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
    assert str(e).startswith(f"cannot write {dst}: No space left on device")
    assert "free some space" in str(e) and "the previous one is intact" in str(e)
    assert ".tmp-" not in str(e)  # the destination is named, not the hidden temporary file
    monkeypatch.undo()
    assert dst.read_bytes() == b"previous"


def test_disk_full_while_writing_leaves_no_temporary_file(tmp_path, monkeypatch):
    dst = tmp_path / "out.bin"

    def full(path, data):
        with open(path, "xb") as f:
            f.write(data[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "write_synced", full)
    with pytest.raises(cz.WriteError, match="No space left on device"):
        atomic.publish_file(dst, b"0123456789")
    assert list(tmp_path.iterdir()) == []


def test_folder_publish_failure_keeps_the_previous_folder(tmp_path, monkeypatch):
    out = tmp_path / "save"
    atomic.publish_folder(out, {"a.txt": b"old"})
    monkeypatch.setattr(atomic, "_swap_in", _raise(errno.EDQUOT))
    with pytest.raises(cz.WriteError, match="quota"):
        atomic.publish_folder(out, {"a.txt": b"new"})
    monkeypatch.undo()
    assert (out / "a.txt").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["save"]


def test_cuantiza_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(cz.ConfigError, match="mine"), atomic.staged_file(tmp_path / "x"):
        raise cz.ConfigError("mine")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_names_a_read_only_file_system(tmp_path, monkeypatch):
    """Simulated: as root, permissions do not stop writes, so the refusal is forced here."""
    monkeypatch.setattr(atomic.os, "access", lambda *a, **k: False)

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(atomic.os, "statvfs", lambda p: ReadOnly())
    with pytest.raises(cz.WriteError, match="read-only file system") as info:
        atomic.check_writable(tmp_path / "new" / "deeper" / "out.onnx")
    assert info.value.errno == errno.EROFS and str(tmp_path) in str(info.value)


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(cz.WriteError, match="is a file, not a folder"):
        atomic.check_writable(tmp_path / "f" / "out" / "report.md")
    atomic.check_writable(tmp_path / "a" / "b" / "c.txt")  # missing folders are fine


def test_save_refuses_an_unwritable_output_before_work(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(atomic.os, "access", lambda *a, **k: False)
    qm = cz.quantize_weights(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(cz.WriteError, match="not writable"):
        cz.save(qm, tmp_path / "q")
