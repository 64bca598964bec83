"""Every fast kernel equals the reference, bit for bit, on the integers it is given."""

import pytest
import torch

from cuantiza import kernels
from cuantiza.kernels import fast, reference


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
    return w, w.to(torch.int32).sum(dim=1, dtype=torch.int32)


@pytest.mark.parametrize("asym", [True, False])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("m,k,o", [(1, 16, 8), (7, 33, 5), (32, 64, 48)])
def test_linear_kernels_match_reference(asym, per_row, m, k, o):
    q, z = _acts((m, k), asym, per_row)
    w, rs = _weights(o, k)
    ref = kernels.linear_acc("reference", q, z, w, rs)
    assert torch.equal(kernels.linear_acc("int_mm", q, z, w, rs), ref)
    if fast.f32exact_ok(k, 255, 127):
        assert torch.equal(kernels.linear_acc("f32exact", q, z, w, rs).to(torch.int32), ref)


def test_reference_linear_is_plain_integer_matmul():
    q, z = _acts((4, 9), asym=True)
    w, rs = _weights(3, 9)
    want = (q.long() - z.long()) @ w.long().t()
    assert torch.equal(kernels.linear_acc("reference", q, z, w, rs), want.int())


@pytest.mark.parametrize("groups,stride,padding,dilation", [
    (1, (1, 1), (1, 1), (1, 1)), (2, (2, 1), (0, 2), (1, 1)), (4, (1, 1), (1, 1), (2, 2)),
])
@pytest.mark.parametrize("asym", [True, False])
def test_conv_kernels_match_reference(groups, stride, padding, dilation, asym):
    n, c, h, wd, o = 2, 8, 7, 6, 12
    q, z = _acts((n, c, h, wd), asym)
    w = torch.randint(-127, 128, (o, c // groups, 3, 3), dtype=torch.int8)
    rs = w.reshape(o, -1).to(torch.int32).sum(dim=1, dtype=torch.int32)
    ref = kernels.conv2d_acc("reference", q, z, w, rs, stride, padding, dilation, groups)
    got = kernels.conv2d_acc("int_mm", q, z, w, rs, stride, padding, dilation, groups)
    assert torch.equal(got, ref)
    f32 = kernels.conv2d_acc("f32exact", q, z, w, rs, stride, padding, dilation, groups)
    assert torch.equal(f32.to(torch.int32), ref)


def test_reference_conv_matches_float64_conv():
    x = torch.randint(-200, 200, (2, 6, 5, 5))
    w = torch.randint(-127, 128, (4, 3, 3, 3))
    got = reference.conv2d_acc(x, w, (1, 1), (1, 1), (1, 1), 2)
    want = torch.nn.functional.conv2d(x.double(), w.double(), None, 1, 1, 1, 2)
    assert torch.equal(got.double(), want)


def test_choose_respects_exactness_bound():
    assert kernels.choose(64, 255, 127, True) == "f32exact"
    assert kernels.choose(4096, 255, 127, True) == "int_mm"
    assert kernels.choose(4096, 255, 255, False) == "reference"
    with pytest.raises(ValueError):
        kernels.choose(4096, 255, 127, True, prefer="f32exact")
