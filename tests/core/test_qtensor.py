"""QTensor: packed codes + QParams + logical shape; exact round trip; honest byte counts."""

import itertools

import numpy as np
import pytest
import torch

import cuantiza as cz
from cuantiza.errors import ShapeError
from tests import reference as ref
from tests.thresholds import THRESHOLDS

GRANULARITIES = [
    cz.PerTensor(),
    cz.PerChannel(0),
    cz.PerChannel(1),
    cz.PerGroup(32),
    cz.PerGroup(24),
]


@pytest.mark.parametrize("bits, symmetric", list(itertools.product(range(1, 9), [True, False])))
def test_round_trip_through_packing_is_exact(bits, symmetric):
    x = torch.randn(6, 70)
    for gran in GRANULARITIES:
        scheme = cz.QScheme(bits, symmetric, gran)
        q, qp = cz.quantize_tensor(x, scheme)
        t = cz.QTensor.from_float(x, scheme)
        assert t.shape == (6, 70) and t.data.dtype == torch.uint8
        assert torch.equal(t.int_repr(), q) and t.int_repr().dtype == scheme.q_dtype
        assert torch.equal(t.dequantize(), cz.dequantize(q, qp))


def test_stored_codes_follow_the_documented_layout():
    """code = (q - qmin) // code_step, packed LSB first (checked with the reference packer)."""
    x = torch.randn(3, 7)
    for scheme in (cz.QScheme(bits=3), cz.QScheme(bits=5, symmetric=False), cz.QScheme(bits=1)):
        t = cz.QTensor.from_float(x, scheme)
        codes = (t.int_repr().to(torch.int64) - scheme.qmin) // scheme.code_step
        assert bytes(t.data.tolist()) == ref.pack(codes.reshape(-1).tolist(), scheme.bits)


def test_binary_codes_are_one_bit_each():
    t = cz.QTensor.from_float(torch.tensor([1.0, -2.0, 3.0, -4.0] * 4), cz.QScheme(bits=1))
    assert t.data.tolist() == [0b01010101, 0b01010101]
    assert t.int_repr().tolist() == [1, -1, 1, -1] * 4


def test_docstring_example_bytes():
    t = cz.QTensor.from_float(torch.randn(64, 64), cz.QScheme(bits=4, granularity=cz.PerGroup(32)))
    assert t.nbytes == 64 * 64 // 2 + 128 * 4  # nibbles + 128 float32 scales
    assert t.bits_per_weight == 5.0


@pytest.mark.parametrize(
    "scheme, expected",
    [
        (cz.QScheme(bits=8), 100 + 4),  # one fp32 scale
        (cz.QScheme(bits=8, symmetric=False), 100 + 4 + 1),  # + one zero point
        (cz.QScheme(bits=5, granularity=cz.PerChannel(0)), 63 + 4 * 4),  # 500 bits -> 63 B
        (
            cz.QScheme(bits=3, symmetric=False, granularity=cz.PerGroup(8), scale_dtype="float16"),
            38 + 4 * 4 * 2 + 4 * 4,
        ),  # 4 rows x 4 groups (last ragged)
        (cz.QScheme(bits=1, scale_dtype="bfloat16"), 13 + 2),
    ],
)
def test_nbytes_counts_data_and_metadata(scheme, expected):
    t = cz.QTensor.from_float(torch.randn(4, 25), scheme)
    assert t.nbytes == expected
    assert t.bits_per_weight == 8 * expected / 100


def test_wrong_data_length_rejected():
    t = cz.QTensor.from_float(torch.randn(4, 25), cz.QScheme(bits=3))
    with pytest.raises(ShapeError, match="38 packed bytes"):
        cz.QTensor(t.data[:-1], t.qparams, t.shape)
    with pytest.raises(ShapeError):
        cz.QTensor(t.data.to(torch.int8), t.qparams, t.shape)


def test_qparams_that_do_not_fit_the_shape_rejected():
    t = cz.QTensor.from_float(torch.randn(4, 24), cz.QScheme(bits=8, granularity=cz.PerChannel(0)))
    with pytest.raises(ShapeError):
        cz.QTensor(t.data, t.qparams, (8, 12))  # same numel, 8 channels


def test_dequantize_dtype_and_repr():
    t = cz.QTensor.from_float(torch.randn(4, 32), cz.QScheme(bits=4, granularity=cz.PerGroup(16)))
    assert t.dequantize(torch.bfloat16).dtype == torch.bfloat16
    assert "int4-sym-group16" in repr(t) and "bits/weight" in repr(t)


@pytest.mark.parametrize("bits", range(3, 9))
def test_sqnr_floor_gaussian_group32(bits):
    x = torch.randn(64, 256)
    t = cz.QTensor.from_float(x, cz.QScheme(bits=bits, granularity=cz.PerGroup(32)))
    assert (
        ref.sqnr_db(x.numpy(), t.dequantize().numpy())
        >= THRESHOLDS["sqnr_gaussian_group32_db"][bits]
    )


def test_empty_tensor():
    t = cz.QTensor.from_float(torch.empty(0, 4), cz.QScheme(bits=4, granularity=cz.PerChannel(1)))
    assert t.data.numel() == 0 and t.dequantize().shape == (0, 4)
    assert np.isfinite(t.bits_per_weight)
