"""The suite's unpickling guard (tests/helpers/no_pickle.py) does refuse every entry point."""

import io
import pickle

import numpy as np
import pytest
import torch

from tests.helpers import no_pickle

PAYLOAD = pickle.dumps({"a": 1})


@pytest.mark.parametrize(
    "attempt",
    [
        lambda: pickle.loads(PAYLOAD),
        lambda: pickle.load(io.BytesIO(PAYLOAD)),
        lambda: pickle.Unpickler(io.BytesIO(PAYLOAD)).load(),
        lambda: pickle._loads(PAYLOAD),
        lambda: torch.load(io.BytesIO(b"x"), weights_only=True),
        lambda: np.load(io.BytesIO(PAYLOAD), allow_pickle=True),
    ],
    ids=["loads", "load", "Unpickler", "_loads", "torch.load", "np.load-pickle"],
)
def test_every_unpickling_entry_point_is_refused_and_recorded(attempt):
    with pytest.MonkeyPatch.context() as mp:
        calls = no_pickle.guard(mp)
        with pytest.raises(no_pickle.Unpickled):
            try:
                attempt()
            except Exception:  # noqa: BLE001  (code under test swallowing errors cannot hide it)
                pass
        assert calls
        with pytest.raises(AssertionError, match="unpickling was attempted"):
            no_pickle.check(calls)


def test_plain_numpy_files_still_load(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
