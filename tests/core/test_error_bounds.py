"""Error bounds with llama.cpp's test data and metric (tests/test-quantize-fns.cpp):
x_i = 0.1 + 2 cos(i), i = 0..4095; error sqrt(sum (x - x_hat)^2) / n; group-32 schemes.

Bounds per bit width, from THRESHOLDS: 8..4 bits 0.002 (Q8_0/Q5_x/Q4_x), 3 bits 0.004 (Q3_K),
2 bits 0.0075 (Q2_K), ternary 0.01 (TQ*), binary 0.025. Measured (MinMax / MSE search):

    bits   symmetric          asymmetric
    8      0.00007            0.00007
    5      0.00063 / 0.00060  0.00058 / 0.00057
    4      0.00130 / 0.00124  0.00115 / 0.00110
    3      0.00317 / 0.00263  0.00263 / 0.00252
    2      0.00865 / 0.00621  0.00662 / 0.00633
    1      0.00969 (binary)   0.02184 / 0.01535

2-bit symmetric with a plain min/max range is ternary {-s, 0, +s}: it misses the 2-bit bound
(0.00865 > 0.0075, strict xfail below) and meets llama.cpp's ternary bound; the MSE search
meets the 2-bit bound.
"""

import functools

import pytest
import torch

import cuantiza as cz
from tests import reference as ref
from tests.thresholds import THRESHOLDS

BOUND_FOR_BITS = {
    8: "llama_total_error",
    7: "llama_total_error",
    6: "llama_total_error",
    5: "llama_total_error",
    4: "llama_total_error",
    3: "llama_total_error_3bits",
    2: "llama_total_error_2bits",
}
RANGES = {"minmax": cz.MinMax(), "mse": cz.MSE()}


@functools.cache
def _total_error(bits: int, symmetric: bool, spec) -> float:
    x = torch.from_numpy(ref.llama_test_data())
    t = cz.QTensor.from_float(x, cz.QScheme(bits, symmetric, cz.PerGroup(32)), range=spec)
    return ref.llama_total_error(x.numpy(), t.dequantize().numpy())


def _cases():
    for bits, bound in BOUND_FOR_BITS.items():
        for symmetric in (True, False):
            for name in RANGES:
                marks = []
                if (bits, symmetric, name) == (2, True, "minmax"):
                    marks = [
                        pytest.mark.xfail(
                            strict=True,
                            reason=(
                                "ternary min/max: 0.00865 > 0.0075 (2-bit bound); meets the "
                                "ternary 0.01"
                            ),
                        )
                    ]
                yield pytest.param(
                    bits,
                    symmetric,
                    name,
                    bound,
                    marks=marks,
                    id=f"{bits}bit-{'sym' if symmetric else 'asym'}-{name}",
                )


@pytest.mark.parametrize("bits, symmetric, range_name, bound", list(_cases()))
def test_llama_cpp_error_bound(bits, symmetric, range_name, bound):
    assert _total_error(bits, symmetric, RANGES[range_name]) <= THRESHOLDS[bound]


@pytest.mark.parametrize("range_name", RANGES)
def test_llama_cpp_ternary_bound(range_name):
    assert _total_error(2, True, RANGES[range_name]) <= THRESHOLDS["llama_total_error_ternary"]


@pytest.mark.parametrize(
    "symmetric, range_name", [(True, "minmax"), (False, "minmax"), (False, "mse")]
)
def test_llama_cpp_binary_bound(symmetric, range_name):
    assert _total_error(1, symmetric, RANGES[range_name]) <= THRESHOLDS["llama_total_error_binary"]


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_search_never_worse_than_minmax_on_llama_data(bits, symmetric):
    minmax = _total_error(bits, symmetric, RANGES["minmax"])
    assert _total_error(bits, symmetric, RANGES["mse"]) <= minmax * (
        1 + THRESHOLDS["sum_order_rtol"]
    )
