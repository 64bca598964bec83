"""Switching the native kernels on for every size (and splitting them over threads), or off."""

from __future__ import annotations

import pytest
import torch

from cuantiza.backends.native import rtn as native_rtn
from cuantiza.backends.native import threads as native_threads


def native_everywhere(monkeypatch) -> None:
    """The native path for tensors of any size, in pieces of ~40 elements (at least 16) over 3
    threads; skips the test where the kernels are not built."""
    if not native_rtn.built():
        pytest.skip("native kernels not built (no C compiler)")
    monkeypatch.delenv("CUANTIZA_NATIVE", raising=False)
    monkeypatch.setattr(native_rtn, "MIN_ELEMS", 1)
    monkeypatch.setattr(native_threads, "MIN_PART_ELEMS", 16)
    monkeypatch.setattr(native_threads, "PIECE_ELEMS", 40)
    monkeypatch.setattr(native_threads, "thread_count", lambda: 3)


def torch_path(fn, monkeypatch):
    """fn() with CUANTIZA_NATIVE=0, the environment restored afterwards."""
    with monkeypatch.context() as m:
        m.setenv("CUANTIZA_NATIVE", "0")
        return fn()


def same_result(a: tuple, b: tuple) -> None:
    """Two quantize_tensor results are identical: integers, dtypes, scales, zero points."""
    (q1, qp1), (q2, qp2) = a, b
    assert q1.dtype == q2.dtype and torch.equal(q1, q2)
    assert qp1.scale.dtype == qp2.scale.dtype and torch.equal(qp1.scale, qp2.scale)
    assert torch.equal(qp1.zero_point, qp2.zero_point)
