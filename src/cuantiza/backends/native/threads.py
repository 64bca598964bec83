"""Splitting a native call over threads: ctypes releases the GIL during a call, so a pass is
cut into pieces that the calling thread and a small pool take in turn.

The row kernels of ``rtn`` and ``fused`` use it; the GEMM layers (``linear``) run on torch's own
OpenMP threads instead (see gemm.c).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

# Each thread gets at least this many elements (2 MiB of float32): a hand-off to the thread pool
# costs ~60 us here, and splitting paid off from ~2^20 elements (quantize: 338 -> 256 us;
# min/max: even at 2^21).
MIN_PART_ELEMS = 1 << 19
# Work is handed out in pieces of about this many elements (4 MiB of float32, ~1 ms), taken by
# whichever thread is free: one held up elsewhere does fewer. (torch's OpenMP worker spins for
# some ms after a parallel op: right after the group-128 qparams, a fixed half per thread made
# the quantize pass take 28-30 ms instead of 20; in pieces, 24-27.)
PIECE_ELEMS = 1 << 20


class _Pool:
    """A thread pool sized to torch's thread count, rebuilt when that count changes or after a
    fork (a forked child inherits the pool object but not its threads)."""

    def __init__(self):
        self.key: tuple | None = None
        self.pool: ThreadPoolExecutor | None = None

    def get(self, threads: int) -> ThreadPoolExecutor:
        key = (threads, os.getpid())
        if key != self.key:
            self.pool = ThreadPoolExecutor(
                max_workers=max(threads - 1, 1), thread_name_prefix="cuantiza"
            )
            self.key = key
        assert self.pool is not None
        return self.pool


_POOL = _Pool()


def thread_count() -> int:
    """Threads to split work over: torch's intra-op thread count (the caller's budget)."""
    return torch.get_num_threads()


def workers(numel: int) -> int:
    """Threads for ``numel`` elements: torch's count, but at least MIN_PART_ELEMS each."""
    return max(1, min(thread_count(), numel // MIN_PART_ELEMS))


def row_parts(n_rows: int, row_len: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """Pieces of work of about PIECE_ELEMS elements (one piece on one thread) and the number
    of threads. A piece is (first element, rows, row length, first row): a row range of an
    (n, L) tensor; for one long row (n = 1, per tensor) a range along it, first row 0."""
    threads = workers(n_rows * row_len)
    pieces = 1 if threads == 1 else max(threads, n_rows * row_len // PIECE_ELEMS)
    if n_rows == 1:
        b = [row_len * k // pieces for k in range(pieces + 1)]
        return [(b[k], 1, b[k + 1] - b[k], 0) for k in range(pieces)], threads
    pieces = min(pieces, n_rows)
    b = [n_rows * k // pieces for k in range(pieces + 1)]
    return [(b[k] * row_len, b[k + 1] - b[k], row_len, b[k]) for k in range(pieces)], threads


def code_parts(n: int) -> tuple[list[tuple[int, int]], int]:
    """``row_parts`` for n one-byte codes: ranges [a, b) starting at multiples of 8 (whole bytes at
    every width), and the number of threads."""
    threads = workers(n)
    pieces = 1 if threads == 1 else max(threads, n // PIECE_ELEMS)
    b = [n * k // pieces // 8 * 8 for k in range(pieces)] + [n]
    return [(b[k], b[k + 1]) for k in range(pieces) if b[k] < b[k + 1]], threads


def run(calls: list, threads: int) -> None:
    """Run the zero-argument callables on ``threads`` threads, this one and the pool's; each
    takes the next piece when it is free, so one held up elsewhere does fewer pieces."""
    todo = iter(calls)  # next() is atomic under the GIL

    def drain():
        for call in todo:
            call()

    if threads == 1 or len(calls) == 1:
        drain()
        return
    futures = [_POOL.get(threads).submit(drain) for _ in range(threads - 1)]
    drain()
    for f in futures:
        f.result()
