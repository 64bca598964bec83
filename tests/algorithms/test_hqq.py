"""HQQ: lower weight reconstruction error than MinMax RTN on LLaMA-like weights, never worse
per block, ordinary QTensors (integer zero points, scales in the storage dtype)."""

import pytest
import torch

import cuantiza as cz
from cuantiza.algorithms import quantize_weight
from cuantiza.algorithms.hqq import hqq
from cuantiza.core.blocking import to_blocks
from tests.thresholds import THRESHOLDS


def llama_like(out=128, inf=512, seed=0):
    """Half the rows Gaussian (std 0.02), half Student-t (4 dof), 0.1% of entries x8."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inf, generator=g) * 0.02
    chi2 = torch.randn(out // 2, inf, 4, generator=g).square().mean(-1)
    w[out // 2 :] = torch.randn(out // 2, inf, generator=g) / chi2.sqrt() * 0.015
    idx = torch.randint(0, out * inf, (out * inf // 1000,), generator=g)
    w.view(-1)[idx] *= 8
    return w


def block_errors(t: cz.QTensor, w: torch.Tensor) -> torch.Tensor:
    d, _ = to_blocks((t.dequantize() - w).double(), t.scheme.granularity)
    return d.square().sum(dim=1)


@pytest.fixture(scope="module")
def weight():
    return llama_like()


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hqq_beats_minmax_rtn_on_llama_like_weights(weight, bits, group):
    scheme = cz.QScheme(bits=bits, symmetric=False, granularity=cz.PerGroup(group))
    h, r = hqq(weight, scheme), cz.QTensor.from_float(weight, scheme)
    eh, er = block_errors(h, weight), block_errors(r, weight)
    bound = THRESHOLDS["hqq_vs_minmax_rtn_error_ratio"][bits]
    assert float(eh.sum()) < bound * float(er.sum())
    slack = 1 + THRESHOLDS["hqq_never_worse_rtol"]
    assert bool((eh <= er * slack).all())  # never worse, block by block


# From MinMax, HQQ is within ~1% of RTN with the MSE clipping search (better at 4 bits / group
# 32, slightly worse at 3 bits); started from the MSE search it beats it in every case.
@pytest.mark.parametrize("bits", [2, 4])
def test_started_from_the_mse_search_hqq_beats_rtn_mse(bits):
    weight = llama_like(64, 256, seed=3)
    scheme = cz.QScheme(bits=bits, symmetric=False, granularity=cz.PerGroup(64))
    m = cz.QTensor.from_float(weight, scheme, range=cz.MSE())
    em, eh = block_errors(m, weight), block_errors(hqq(weight, scheme, range=cz.MSE()), weight)
    slack = 1 + THRESHOLDS["hqq_never_worse_rtol"]
    ratio = THRESHOLDS["hqq_from_mse_vs_mse_error_ratio"]
    assert bool((eh <= em * slack).all()) and float(eh.sum()) < ratio * float(em.sum())


@pytest.mark.parametrize(
    "scheme",
    [
        cz.QScheme(bits=3, granularity=cz.PerGroup(64)),
        cz.QScheme(bits=4, granularity=cz.PerGroup(32), restricted=False),
        cz.QScheme(bits=4, symmetric=False, granularity=cz.PerChannel(0)),
        cz.QScheme(bits=4, symmetric=False, granularity=cz.PerTensor()),
        cz.QScheme(bits=3, symmetric=False, granularity=cz.PerGroup(48)),  # ragged last group
        cz.QScheme(bits=2, symmetric=False, granularity=cz.PerGroup(64), scale_dtype="float16"),
        cz.QScheme(bits=8, symmetric=False, granularity=cz.PerGroup(128), scale_dtype="bfloat16"),
    ],
    ids=lambda s: s.describe() + "-" + s.scale_dtype,
)
def test_never_worse_and_an_ordinary_qtensor(scheme):
    weight = llama_like(64, 256, seed=2)
    h, r = hqq(weight, scheme), cz.QTensor.from_float(weight, scheme)
    assert h.scheme == scheme and h.qparams.scale.dtype == scheme.torch_scale_dtype
    assert h.qparams.scale.shape == r.qparams.scale.shape
    assert h.qparams.zero_point.dtype == torch.int32
    z = h.qparams.zero_point
    assert int(z.min()) >= scheme.qmin and int(z.max()) <= scheme.qmax
    if scheme.symmetric:
        assert bool((z == 0).all())
    else:
        assert bool((h.qparams.scale > 0).all())
    # the stored codes are exactly cuantiza's rounding under the stored qparams
    assert torch.equal(h.int_repr(), cz.quantize(weight, h.qparams))
    eh, er = block_errors(h, weight), block_errors(r, weight)
    slack = 1 + THRESHOLDS["hqq_never_worse_rtol"]
    assert bool((eh <= er * slack).all()) and float(eh.sum()) < float(er.sum())


def test_full_range_keeps_signed_scales(weight):
    scheme = cz.QScheme(bits=4, granularity=cz.PerGroup(32), restricted=False)
    h, r = hqq(weight, scheme), cz.QTensor.from_float(weight, scheme)
    assert torch.equal(torch.sign(h.qparams.scale), torch.sign(r.qparams.scale))


def test_binary_is_rtn_and_degenerate_blocks_are_finite():
    w = torch.randn(8, 64)
    s1 = cz.QScheme(bits=1, granularity=cz.PerGroup(32))
    assert torch.equal(hqq(w, s1).data, cz.QTensor.from_float(w, s1).data)
    w[0] = 0.0
    w[1] = 0.5
    w[2, :32] = -1.0
    for scheme in (
        cz.QScheme(bits=3, symmetric=False, granularity=cz.PerGroup(32)),
        cz.QScheme(bits=3),
    ):
        t = hqq(w, scheme)
        assert bool(torch.isfinite(t.dequantize()).all())
        assert bool((t.dequantize()[0] == 0).all())


def test_medium_weight_runs_in_several_chunks_and_is_deterministic():
    w = llama_like(512, 1024, seed=1)  # 17 row chunks
    scheme = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(128))
    a, b = hqq(w, scheme), hqq(w, scheme)
    assert torch.equal(a.data, b.data) and torch.equal(a.qparams.scale, b.qparams.scale)
    e = lambda t: float(((t.dequantize() - w) ** 2).sum())  # noqa: E731
    assert e(a) < THRESHOLDS["hqq_chunked_vs_rtn_error_ratio"] * e(cz.QTensor.from_float(w, scheme))


def test_options_and_errors():
    w = torch.randn(8, 64)
    scheme = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32))
    assert torch.equal(
        quantize_weight(w, scheme, "hqq", iters=5, p=0.5).data, hqq(w, scheme, iters=5, p=0.5).data
    )
    assert torch.equal(hqq(w, scheme, iters=0, refit=0).data, cz.QTensor.from_float(w, scheme).data)
    assert hqq(w, scheme, p=1.0).shape == (8, 64)
    for bad in ({"p": 1.5}, {"p": 0.0}, {"iters": -1}, {"beta": 0.0}, {"kappa": 0.5}):
        with pytest.raises(cz.ConfigError, match="mlp.up"):
            hqq(w, scheme, name="mlp.up", **bad)
    w[3, 3] = float("nan")
    with pytest.raises(cz.NonFiniteError, match="mlp.up"):
        hqq(w, scheme, name="mlp.up")
    with pytest.raises(cz.ConfigError, match="does not take"):
        quantize_weight(torch.randn(8, 64), scheme, "hqq", damp=0.1)
