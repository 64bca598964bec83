"""AWQ and SmoothQuant: the scales lower the quantized output error on activations with outlier
channels, and folding them keeps the float function."""

import pytest
import torch

import cuantiza as cz
from cuantiza.algorithms import ActAbsMax, apply_scales, awq_scales, smooth_scales
from cuantiza.core.quantize import dequantize, quantize_tensor
from tests.thresholds import THRESHOLDS

D = 256
OUTLIERS = torch.tensor([3, 17, 64, 100, 128, 177, 200, 250])


def activations(n=256, seed=0, mag=20.0):
    """LLM-like inputs: N(0, 1) channels plus a few channels ~20x larger (and offset)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    x[:, OUTLIERS] = x[:, OUTLIERS] * mag + mag / 2
    return x


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(64, D, generator=g) * 0.02 for _ in range(3)]


def output_error(x, ws, s, scheme):
    """sum_i ||x W_i^T - (x / s) Q(W_i s)^T||^2 (RTN of ``scheme``)."""
    total = 0.0
    for w in ws:
        q, qp = quantize_tensor(w * s, scheme)
        total += float(((x @ w.T - (x / s) @ dequantize(q, qp).T) ** 2).sum())
    return total


@pytest.mark.parametrize("group", [128, 32])
@pytest.mark.parametrize("bits", [3, 4])
def test_awq_lowers_the_output_error(qkv, bits, group):
    scheme = cz.QScheme(bits=bits, symmetric=False, granularity=cz.PerGroup(group))
    x = activations()
    s = awq_scales(x, qkv, scheme)
    assert s.shape == (D,) and s.dtype == torch.float32
    assert float(s[OUTLIERS].min()) > float(s.median())  # outlier channels scaled up
    ones = torch.ones(D)
    ratio = THRESHOLDS["awq_vs_rtn_output_error_ratio"]
    assert output_error(x, qkv, s, scheme) < ratio * output_error(x, qkv, ones, scheme)
    held_out = activations(seed=7)  # the gain is not overfit
    assert output_error(held_out, qkv, s, scheme) < ratio * output_error(
        held_out, qkv, ones, scheme
    )


def test_awq_never_worse_than_rtn_and_degenerate_inputs(qkv):
    scheme = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32))
    x = torch.randn(256, D)  # no outliers: little to gain
    s = awq_scales(x, qkv, scheme, grid=10)
    assert output_error(x, qkv, s, scheme) <= output_error(x, qkv, torch.ones(D), scheme)
    assert torch.equal(awq_scales(torch.zeros(16, D), qkv, scheme), torch.ones(D))
    x[:, 5] = 0.0  # a dead channel: finite scale
    s = awq_scales(x, qkv[0], scheme, grid=4)
    assert bool(torch.isfinite(s).all() & (s > 0).all())
    assert torch.equal(awq_scales(x, qkv, scheme, grid=1), torch.ones(D))  # alpha = 0 only


def test_awq_errors_name_the_layer(qkv):
    scheme = cz.QScheme(bits=4)
    with pytest.raises(cz.ShapeError, match="layers.3.attn"):
        awq_scales(torch.randn(8, D + 1), qkv, scheme, name="layers.3.attn")
    with pytest.raises(cz.CalibrationError, match="layers.3.attn"):
        awq_scales(torch.randn(0, D), qkv, scheme, name="layers.3.attn")
    x = torch.randn(8, D)
    x[2, 2] = float("inf")
    with pytest.raises(cz.NonFiniteError, match="layers.3.attn"):
        awq_scales(x, qkv, scheme, name="layers.3.attn")
    with pytest.raises(cz.ConfigError, match="layers.3.attn"):
        awq_scales(torch.randn(8, D), [], scheme, name="layers.3.attn")
    with pytest.raises(cz.ConfigError, match="layers.3.attn"):
        apply_scales(torch.ones(D), qkv, torch.zeros(D), name="layers.3.attn")
    with pytest.raises(cz.ShapeError, match="layers.3.attn"):
        apply_scales(torch.ones(D), [torch.randn(4, D - 1)], torch.ones(D), name="layers.3.attn")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_folding_into_a_norm_keeps_the_function(qkv):
    h = torch.randn(32, D) * 3
    gamma, beta = torch.rand(D) + 0.5, torch.randn(D) * 0.1
    s = awq_scales(
        activations(), qkv, cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(128))
    )
    rms = h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()  # RMSNorm (no bias)
    f = apply_scales(gamma, qkv, s)
    rel = THRESHOLDS["fold_scales_rel"]
    for w, w2 in zip(qkv, f.weights, strict=False):
        assert _rel((rms * f.prev) @ w2.T, (rms * gamma) @ w.T) < rel
    ln = torch.nn.functional.layer_norm(h, (D,))  # LayerNorm (with bias)
    f = apply_scales(gamma, qkv, s, prev_bias=beta)
    assert _rel((ln * f.prev + f.prev_bias) @ f.weights[0].T, (ln * gamma + beta) @ qkv[0].T) < rel
    assert torch.equal(gamma, gamma.clone()) and f.prev.dtype == gamma.dtype


def test_folding_into_a_previous_linear_keeps_the_function():
    g = torch.Generator().manual_seed(3)
    prev_w, prev_b = torch.randn(D, 48, generator=g), torch.randn(D, generator=g)  # e.g. v_proj
    nxt = torch.randn(40, D, generator=g)  # e.g. o_proj
    s = torch.rand(D, generator=g) * 4 + 0.1
    u = torch.randn(16, 48, generator=g)
    f = apply_scales(prev_w, [nxt], s, prev_bias=prev_b)
    before = (u @ prev_w.T + prev_b) @ nxt.T
    after = (u @ f.prev.T + f.prev_bias) @ f.weights[0].T
    assert _rel(after, before) < THRESHOLDS["fold_scales_rel"]
    f16 = apply_scales(prev_w.half(), nxt.half(), s)
    assert (
        f16.prev.dtype == torch.float16
        and f16.weights[0].dtype == torch.float16
        and f16.prev_bias is None
    )


# ------------------------------------------------------------------------------ SmoothQuant
def w8a8_error(x, w, s):
    """Per-tensor int8 dynamic activations x per-channel int8 weights, after scaling by s."""
    xs, ws = x / s, w * s
    qx, px = quantize_tensor(xs, cz.QScheme(bits=8))
    qw, pw = quantize_tensor(ws, cz.QScheme(bits=8, granularity=cz.PerChannel(0)))
    return float(((x @ w.T - dequantize(qx, px) @ dequantize(qw, pw).T) ** 2).sum())


def test_smoothquant_lowers_w8a8_error_and_folds_exactly():
    x = activations(mag=60.0)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(96, D, generator=g) * 0.05
    acc = ActAbsMax(D, name="layers.0.qkv")
    for chunk in x.split(100):
        acc.add(chunk)
    s = smooth_scales(acc, [w[:48], w[48:]], alpha=0.5)
    assert torch.equal(s, smooth_scales(x.abs().amax(0), w))  # max over all weights' rows
    ratio = w8a8_error(x, w, s) / w8a8_error(x, w, torch.ones(D))
    assert ratio < THRESHOLDS["smoothquant_vs_plain_w8a8_error_ratio"], ratio
    gamma = torch.rand(D) + 0.5
    f = apply_scales(gamma, [w], s)
    h = torch.randn(16, D)
    assert _rel((h * f.prev) @ f.weights[0].T, (h * gamma) @ w.T) < THRESHOLDS["fold_scales_rel"]


def test_smooth_scales_guards_zeros_and_alpha():
    a = torch.tensor([4.0, 0.0, 2.0, float("inf")])
    w = torch.tensor([[1.0, 1.0, 0.0, 1.0], [-2.0, 3.0, 0.0, 1.0]])
    s = smooth_scales(a, [w], alpha=0.5)
    assert s.tolist() == [pytest.approx(2.0 / 2**0.5), 1.0, 1.0, 1.0]
    assert torch.equal(smooth_scales(a[:3], w[:, :3], alpha=1.0), torch.tensor([4.0, 1.0, 1.0]))
    with pytest.raises(cz.ConfigError, match="mlp"):
        smooth_scales(a, [w], alpha=1.5, name="mlp")
    with pytest.raises(cz.ShapeError, match="mlp"):
        smooth_scales(a, [w[:, :3]], name="mlp")


def test_act_absmax_streams_merges_and_skips_nonfinite_rows():
    x = torch.randn(4, 10, 8)
    a = ActAbsMax().add(x[:2]).merge(ActAbsMax().add(x[2:]))
    assert torch.equal(a.value(), x.abs().reshape(-1, 8).amax(0)) and a.n == 40
    bad = x.clone()
    bad[0, 0, 3] = float("nan")
    bad[1, 1, 0] = float("-inf")
    b = ActAbsMax(8).add(bad)
    assert (b.n, b.skipped) == (38, 2)
    keep = torch.isfinite(bad.reshape(-1, 8)).all(1)
    assert torch.equal(b.value(), bad.reshape(-1, 8)[keep].abs().amax(0))
    with pytest.raises(cz.CalibrationError, match="fc1"):
        ActAbsMax(8, name="fc1").value()
    with pytest.raises(cz.ShapeError, match="fc1"):
        ActAbsMax(8, name="fc1").add(torch.randn(2, 9))
    with pytest.raises(cz.ShapeError, match="fc1"):
        ActAbsMax(8, name="fc1").merge(ActAbsMax(9).add(torch.randn(1, 9)))
