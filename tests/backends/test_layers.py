"""Every fast kernel equals the reference, bit for bit, on the integers it is given."""

import pytest
import torch

from cuantiza.backends import layers as kernels
from cuantiza.backends import layers_reference as reference
from cuantiza.backends import layers_torch as fast
from cuantiza.backends.layers import ActInfo, IntWeight


def _acts(shape, asym: bool, per_row: bool = False):
    if asym:
        q = torch.randint(0, 256, shape, dtype=torch.uint8)
        z = torch.randint(0, 256, (shape[0], 1) if per_row else (), dtype=torch.int32)
    else:
        q = torch.randint(-127, 128, shape, dtype=torch.int8)
        z = torch.zeros((shape[0], 1) if per_row else (), dtype=torch.int32)
    return q, z


def _weights(o, k):
    w = torch.randint(-127, 128, (o, k), dtype=torch.int8)
    return IntWeight(w, w.to(torch.int32).sum(dim=1, dtype=torch.int32), int(w.abs().max()))


@pytest.mark.parametrize("asym", [True, False])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("m,k,o", [(1, 16, 8), (7, 33, 5), (32, 64, 48)])
def test_linear_kernels_match_reference(asym, per_row, m, k, o):
    q, z = _acts((m, k), asym, per_row)
    w = _weights(o, k)
    ref = kernels.linear_acc("reference", q, z, w)
    assert torch.equal(kernels.linear_acc("int_mm", q, z, w), ref)
    assert torch.equal(kernels.linear_acc("f32split", q, z, w).to(torch.int32), ref)
    if fast.f32exact_ok(k, 255, 127):
        assert torch.equal(kernels.linear_acc("f32exact", q, z, w).to(torch.int32), ref)


def test_reference_linear_is_plain_integer_matmul():
    q, z = _acts((4, 9), asym=True)
    w = _weights(3, 9)
    want = (q.long() - z.long()) @ w.w.long().t()
    assert torch.equal(kernels.linear_acc("reference", q, z, w), want.int())


@pytest.mark.parametrize(
    "groups,stride,padding,dilation",
    [
        (1, (1, 1), (1, 1), (1, 1)),
        (2, (2, 1), (0, 2), (1, 1)),
        (4, (1, 1), (1, 1), (2, 2)),
    ],
)
@pytest.mark.parametrize("asym", [True, False])
def test_conv_kernels_match_reference(groups, stride, padding, dilation, asym):
    n, c, h, wd, o = 2, 8, 7, 6, 12
    q, z = _acts((n, c, h, wd), asym)
    wt = torch.randint(-127, 128, (o, c // groups, 3, 3), dtype=torch.int8)
    w = IntWeight(wt, wt.reshape(o, -1).to(torch.int32).sum(dim=1, dtype=torch.int32), 127)
    ref = kernels.conv2d_acc("reference", q, z, w, stride, padding, dilation, groups)
    got = kernels.conv2d_acc("int_mm", q, z, w, stride, padding, dilation, groups)
    assert torch.equal(got, ref)
    f32 = kernels.conv2d_acc("f32exact", q, z, w, stride, padding, dilation, groups)
    assert torch.equal(f32.to(torch.int32), ref)


def test_reference_conv_matches_float64_conv():
    x = torch.randint(-200, 200, (2, 6, 5, 5))
    w = torch.randint(-127, 128, (4, 3, 3, 3))
    got = reference.conv2d_acc(x, w, (1, 1), (1, 1), (1, 1), 2)
    want = torch.nn.functional.conv2d(x.double(), w.double(), None, 1, 1, 1, 2)
    assert torch.equal(got.double(), want)


U8 = ActInfo(256, symmetric=False, scalar_zp=True)
S7_PER_TOKEN = ActInfo(127, symmetric=True, scalar_zp=False)
A8_PER_TOKEN = ActInfo(256, symmetric=False, scalar_zp=False)


def test_choose_respects_exactness_bounds():
    w8 = _weights(4, 8)
    w16 = IntWeight(w8.w.to(torch.int16), w8.rowsum, 255)
    assert kernels.choose(64, U8, w8) == "f32exact"  # u8 saturates oneDNN on AVX2
    assert kernels.choose(4096, U8, w8) == ("int_mm_vnni" if fast.has_vnni() else "f32split")
    assert kernels.choose(4096, U8, w16) == "f32split"
    if fast.onednn_available():
        assert kernels.choose(4096, S7_PER_TOKEN, w8) == "onednn"
    assert kernels.choose(4096, A8_PER_TOKEN, w8) in ("int_mm_vnni", "f32split")
    assert kernels.choose(64, U8, w8, conv=True) == "f32exact"
    with pytest.raises(ValueError):
        kernels.choose(4096, U8, w8, prefer="f32exact")
    with pytest.raises(ValueError):
        kernels.choose(64, U8, w8, prefer="onednn")


@pytest.mark.skipif(not fast.onednn_available(), reason="oneDNN int8 ops not in this torch build")
@pytest.mark.parametrize("m,k,o", [(1, 16, 8), (9, 100, 24), (64, 1536, 48)])
def test_onednn_matches_reference_for_7bit_codes(m, k, o):
    w = _weights(o, k)
    q_sym = torch.randint(-63, 64, (m, k), dtype=torch.int8)  # symmetric 7-bit codes
    zero = torch.zeros((), dtype=torch.int32)
    ref = kernels.linear_acc("reference", q_sym, zero, w)
    assert torch.equal(kernels.linear_acc("onednn", q_sym, zero, w), ref.to(torch.float32))
    q_asym = torch.randint(0, 128, (m, k), dtype=torch.uint8)  # asymmetric 7-bit codes
    z = torch.tensor(37, dtype=torch.int32)
    ref = kernels.linear_acc("reference", q_asym, z, w)
    assert torch.equal(kernels.linear_acc("onednn", q_asym, z, w), ref.to(torch.float32))


@pytest.mark.skipif(not fast.onednn_available(), reason="oneDNN int8 ops not in this torch build")
def test_onednn_rounds_large_accumulators_like_int32_to_float32():
    """|acc| > 2^24 is not exact in float32: oneDNN must round it as int32 -> float32 does."""
    k = 4096
    w = IntWeight(
        torch.full((3, k), 127, dtype=torch.int8), torch.full((3,), 127 * k, dtype=torch.int32), 127
    )
    q = torch.full((2, k), 63, dtype=torch.int8)
    q[1, :7] = -63  # an odd sum, not a multiple of 2^k
    zero = torch.zeros((), dtype=torch.int32)
    ref = kernels.linear_acc("reference", q, zero, w)
    assert int(ref.abs().max()) > 2**24
    assert torch.equal(kernels.linear_acc("onednn", q, zero, w), ref.to(torch.float32))


def test_dequant_order_is_left_to_right():
    acc = torch.tensor([[3, -7]], dtype=torch.int32)
    s_w, s_x, b = torch.tensor([0.1, 0.3]), torch.tensor([[0.7]]), torch.tensor([1.0, 2.0])
    want = (acc.float() * s_w) * s_x + b
    assert torch.equal(kernels.dequant_acc(acc, s_w, s_x, b), want)


@pytest.mark.skipif(not fast.onednn_available(), reason="oneDNN int8 ops not in this torch build")
@pytest.mark.parametrize("per_row", [False, True])
def test_fused_onednn_exit_equals_reference_exit(per_row):
    m, k, o = 33, 200, 40
    w = _weights(o, k)
    q = torch.randint(-63, 64, (m, k), dtype=torch.int8)
    zero = torch.zeros((), dtype=torch.int32)
    s_w = torch.rand(o) * 1e-2
    s_x = torch.rand(m, 1) * 0.1 if per_row else torch.tensor(0.037)
    bias = torch.randn(o)
    want = kernels.linear("reference", q, zero, w, s_w, s_x, bias)
    assert torch.equal(kernels.linear("onednn", q, zero, w, s_w, s_x, bias), want)


def test_f32split_is_exact_where_float32_alone_is_not():
    k = 6000  # 255 * 127 * 6000 >> 2^24
    w = IntWeight(
        torch.full((2, k), 127, dtype=torch.int8), torch.full((2,), 127 * k, dtype=torch.int32), 127
    )
    q = torch.full((3, k), 255, dtype=torch.uint8)
    q[1, ::7] = 0
    z = torch.zeros((), dtype=torch.int32)
    ref = kernels.linear_acc("reference", q, z, w)
    assert int(ref.max()) > 2**24
    assert torch.equal(kernels.linear_acc("f32split", q, z, w).to(torch.int64), ref.to(torch.int64))
