"""Dense bit packing against the slow bit-by-bit reference; documented bit order; errors."""

import numpy as np
import pytest
import torch

import cuantiza as cz
from cuantiza.errors import ConfigError, ShapeError
from tests import reference as ref

LENGTHS = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 257]


def _codes(n: int, bits: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed + 31 * bits + n)
    return torch.from_numpy(rng.integers(0, 1 << bits, n).astype(np.uint8))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_matches_bit_by_bit_reference(bits):
    for n in LENGTHS:
        codes = _codes(n, bits)
        packed = cz.pack(codes, bits)
        assert packed.dtype == torch.uint8
        assert packed.numel() == (n * bits + 7) // 8  # dense: n * bits bits, rounded up
        assert bytes(packed.tolist()) == ref.pack(codes.tolist(), bits)


@pytest.mark.parametrize("bits", range(1, 9))
def test_unpack_matches_reference_and_round_trips(bits):
    for n in LENGTHS:
        codes = _codes(n, bits, seed=1)
        data = ref.pack(codes.tolist(), bits)
        out = cz.unpack(torch.tensor(list(data), dtype=torch.uint8), bits, n)
        assert out.dtype == torch.uint8 and out.shape == (n,)
        assert out.tolist() == ref.unpack(data, bits, n) == codes.tolist()


def test_documented_examples():
    assert cz.pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist() == [
        33,
        3,
    ]  # low nibble first
    assert cz.unpack(torch.tensor([33, 3], dtype=torch.uint8), 4, 3).tolist() == [1, 2, 3]
    # 1 bit: LSB first; the ninth value starts the second byte
    assert cz.pack(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.uint8), 1).tolist() == [
        0x81,
        1,
    ]


def test_five_bits_take_five_bits():
    codes = torch.full((8,), 31, dtype=torch.uint8)
    assert cz.pack(codes, 5).tolist() == [255] * 5  # eight values fill five bytes
    assert cz.pack(torch.tensor([0b10101], dtype=torch.uint8), 5).tolist() == [0b10101]
    # value 1 of 3 bits spans bytes: bits 3..5 of byte 0
    assert cz.pack(torch.tensor([0, 7], dtype=torch.uint8), 3).tolist() == [0b111000]
    assert cz.pack(torch.tensor([0, 0, 7], dtype=torch.uint8), 3).tolist() == [0b11000000, 1]


def test_pack_reads_any_shape_flat_and_keeps_input():
    codes = _codes(24, 3).reshape(2, 3, 4)
    before = codes.clone()
    assert torch.equal(cz.pack(codes, 3), cz.pack(codes.reshape(-1), 3))
    assert torch.equal(codes, before)


def test_pack_accepts_wider_integer_dtypes():
    codes = _codes(20, 6)
    assert torch.equal(cz.pack(codes.to(torch.int64), 6), cz.pack(codes, 6))
    assert torch.equal(cz.pack(codes.to(torch.int16), 6), cz.pack(codes, 6))


def test_eight_bit_pack_is_a_copy():
    codes = _codes(10, 8)
    packed = cz.pack(codes, 8)
    packed[0] ^= 1
    assert not torch.equal(packed, codes)


@pytest.mark.parametrize("bits, bad", [(4, 16), (1, 2), (3, 8), (7, 128)])
def test_codes_out_of_range_rejected(bits, bad):
    with pytest.raises(ShapeError, match=str((1 << bits) - 1)):
        cz.pack(torch.tensor([0, bad]), bits)


def test_negative_codes_rejected():
    with pytest.raises(ShapeError):
        cz.pack(torch.tensor([0, -1], dtype=torch.int8), 4)


@pytest.mark.parametrize("bits", [0, 9, -1, 4.0])
def test_invalid_bits_rejected(bits):
    with pytest.raises(ConfigError):
        cz.pack(torch.zeros(4, dtype=torch.uint8), bits)
    with pytest.raises(ConfigError):
        cz.unpack(torch.zeros(4, dtype=torch.uint8), bits, 4)


def test_unpack_rejects_wrong_byte_count():
    packed = cz.pack(_codes(10, 3), 3)  # 30 bits -> 4 bytes
    assert packed.numel() == 4
    with pytest.raises(ShapeError, match="need 5 bytes"):
        cz.unpack(packed, 3, 11)  # 33 bits need 5 bytes
    with pytest.raises(ShapeError):
        cz.unpack(packed[:3], 3, 10)


def test_unpack_rejects_non_uint8():
    with pytest.raises(ShapeError, match="uint8"):
        cz.unpack(torch.zeros(4, dtype=torch.int8), 4, 8)
