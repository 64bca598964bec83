import os

import pytest
import torch
from hypothesis import settings

from tests.helpers import no_pickle

# Deterministic, CI-sized property runs; `HYPOTHESIS_PROFILE=thorough` for more examples.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _nothing_unpickles(monkeypatch):
    """Fail any test during which pickle (or torch.load) loads anything: helpers/no_pickle."""
    calls = no_pickle.guard(monkeypatch)
    yield
    no_pickle.check(calls)
