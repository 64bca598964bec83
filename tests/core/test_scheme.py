"""QScheme and granularities: integer ranges from the corrected formulas, validation, frozen."""

import dataclasses

import pytest
import torch

import cuantiza as cz
from cuantiza.errors import ConfigError
from tests import reference as ref


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_qmin_qmax_match_the_formulas(bits, symmetric):
    s = cz.QScheme(bits=bits, symmetric=symmetric)
    assert (s.qmin, s.qmax) == ref.qrange(bits, symmetric)


def test_named_ranges():
    assert (cz.QScheme(bits=8, symmetric=True).qmin, cz.QScheme(bits=8).qmax) == (-127, 127)
    assert (cz.QScheme(bits=8, symmetric=False).qmin, cz.QScheme(bits=8, symmetric=False).qmax) == (
        0,
        255,
    )
    assert (cz.QScheme(bits=2).qmin, cz.QScheme(bits=2).qmax) == (-1, 1)  # ternary
    assert (cz.QScheme(bits=1, symmetric=False).qmin, cz.QScheme(bits=1, symmetric=False).qmax) == (
        0,
        1,
    )


def test_one_bit_symmetric_is_binary():
    s = cz.QScheme(bits=1, symmetric=True)
    assert s.binary and (s.qmin, s.qmax) == (-1, 1)
    assert s.levels == 2 and s.code_step == 2  # {-1, +1} -> codes {0, 1}
    assert not cz.QScheme(bits=1, symmetric=False).binary
    assert not cz.QScheme(bits=2, symmetric=True).binary


@pytest.mark.parametrize("bits", range(2, 9))
def test_levels_fit_the_bit_width(bits):
    assert cz.QScheme(bits=bits, symmetric=False).levels == 2**bits
    assert cz.QScheme(bits=bits, symmetric=True).levels == 2**bits - 1  # restricted range
    assert cz.QScheme(bits=bits).code_step == 1


def test_q_dtype_and_defaults():
    s = cz.QScheme()
    assert (s.bits, s.symmetric, s.granularity, s.scale_dtype) == (
        8,
        True,
        cz.PerTensor(),
        "float32",
    )
    assert s.q_dtype == torch.int8
    assert cz.QScheme(symmetric=False).q_dtype == torch.uint8
    assert cz.QScheme(scale_dtype="bfloat16").torch_scale_dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [0, 9, -1, 16, 4.0, True, "8", None])
def test_invalid_bits_rejected(bits):
    with pytest.raises(ConfigError, match="bits"):
        cz.QScheme(bits=bits)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"symmetric": 1},
        {"symmetric": "yes"},
        {"granularity": "per-tensor"},
        {"granularity": 32},
        {"scale_dtype": "float64"},
        {"scale_dtype": torch.float16},
    ],
)
def test_invalid_fields_rejected(kwargs):
    with pytest.raises(ConfigError):
        cz.QScheme(**kwargs)


@pytest.mark.parametrize("size", [0, -1, -32, 1.5, True, "32"])
def test_invalid_group_size_rejected(size):
    with pytest.raises(ConfigError, match="size"):
        cz.PerGroup(size)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        cz.QScheme(bits=0)


def test_schemes_are_frozen_and_hashable():
    s = cz.QScheme(bits=4, granularity=cz.PerGroup(32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bits = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.granularity.size = 64
    assert s == cz.QScheme(bits=4, granularity=cz.PerGroup(32))
    assert len({s, cz.QScheme(bits=4, granularity=cz.PerGroup(32)), cz.QScheme(bits=4)}) == 2


def test_granularity_defaults():
    assert cz.PerChannel().axis == 0
    assert (cz.PerGroup().size, cz.PerGroup().axis) == (128, -1)


@pytest.mark.parametrize(
    "scheme, text",
    [
        (cz.QScheme(bits=8), "int8-sym-per-tensor"),
        (cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32)), "int4-asym-group32"),
        (cz.QScheme(bits=1, granularity=cz.PerChannel(1)), "int1-binary-per-channel(axis=1)"),
    ],
)
def test_describe(scheme, text):
    assert scheme.describe() == text
