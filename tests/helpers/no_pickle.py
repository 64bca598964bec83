"""The test suite's guard against unpickling (house rule: nothing in cuantiza unpickles).

``guard(monkeypatch)`` (an autouse fixture in ``tests/conftest.py``) replaces, for the length of
each test, every entry point through which Python code unpickles: ``pickle.load`` / ``loads`` /
``Unpickler`` (and the pure-Python ``_load`` / ``_loads`` / ``_Unpickler``), ``torch.load`` (it
unpickles even with ``weights_only=True``: a restricted unpickler is still an unpickler) and
``numpy.load`` with ``allow_pickle=True``. A call raises ``Unpickled`` (a BaseException, so an
``except Exception`` in the code under test cannot swallow it) and is recorded; ``check`` then
fails the test even if something caught it.

What it cannot see: code that bound ``pickle.loads`` to another name before the test (for
example ``multiprocessing``'s ``ForkingPickler.loads``, which carries process-pool messages,
not model files), and unpickling in another process (subprocess tests check their own
outputs). A test that must unpickle on purpose (to show that a malicious payload is live) calls
``deliberately_unpickle``, which says so where it is used.
"""

from __future__ import annotations

import pickle

import numpy as np
import torch

_REAL_LOADS = pickle.loads
_REAL_NP_LOAD = np.load


class Unpickled(BaseException):
    """Something tried to unpickle during a test."""


def deliberately_unpickle(data: bytes):
    """pickle.loads for a test that proves its own payload works (never for a file under test)."""
    return _REAL_LOADS(data)


def guard(monkeypatch) -> list:
    """Install the refusals; returns the list of calls made (checked by ``check``)."""
    calls: list = []

    def refuse(what: str):
        def refused(*args, **kwargs):
            calls.append(what)
            raise Unpickled(f"{what} was called during this test: nothing may unpickle")

        return refused

    class RefusedUnpickler(pickle.Unpickler):
        def load(self):
            return refuse("pickle.Unpickler.load")()

    class RefusedPyUnpickler(pickle._Unpickler):  # keeps ``dispatch``: joblib subclasses it
        def load(self):  # when first imported
            return refuse("pickle._Unpickler.load")()

    for name in ("load", "loads", "_load", "_loads"):
        monkeypatch.setattr(pickle, name, refuse(f"pickle.{name}"))
    monkeypatch.setattr(pickle, "Unpickler", RefusedUnpickler)
    monkeypatch.setattr(pickle, "_Unpickler", RefusedPyUnpickler)
    monkeypatch.setattr(torch, "load", refuse("torch.load"))

    def np_load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            return refuse("numpy.load(allow_pickle=True)")()
        return _REAL_NP_LOAD(*args, allow_pickle=False, **kwargs)

    monkeypatch.setattr(np, "load", np_load)
    return calls


def check(calls: list) -> None:
    assert not calls, f"unpickling was attempted during this test: {calls}"
