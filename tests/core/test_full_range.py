"""QScheme(restricted=False): symmetric over the full signed range, gguf-style signed scale."""

import numpy as np
import pytest
import torch

import cuantiza as cz
from tests.thresholds import THRESHOLDS


def _ref(x: np.ndarray, bits: int, group: int):
    """NumPy from the formula: per group, the extreme e maps to -2^(n-1): s = e / -2^(n-1)
    (float64, rounded once to float32), q = clip(rint(x / s), -2^(n-1), 2^(n-1) - 1)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    xg = x.reshape(-1, group).astype(np.float32)
    lo, hi = xg.min(1).astype(np.float64), xg.max(1).astype(np.float64)
    e = np.where(np.abs(lo) >= np.abs(hi), lo, hi)
    s = (e / qmin).astype(np.float32)
    s[s == 0] = 1
    q = np.clip(np.rint(xg / s[:, None]), qmin, qmax)
    return q.reshape(x.shape).astype(np.int8), s


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_full_range_matches_formula_bit_for_bit(bits):
    x = torch.randn(16, 64) * torch.logspace(-3, 2, 16)[:, None]
    x[3] = 0.0
    scheme = cz.QScheme(bits=bits, granularity=cz.PerGroup(32), restricted=False)
    q, qp = cz.quantize_tensor(x, scheme)
    q_ref, s_ref = _ref(x.numpy(), bits, 32)
    assert np.array_equal(q.numpy(), q_ref)
    assert np.array_equal(qp.scale.reshape(-1).numpy(), s_ref)
    assert int(q.min()) >= scheme.qmin and int(q.max()) <= scheme.qmax == 2 ** (bits - 1) - 1
    err = (cz.dequantize(q, qp) - x).abs()
    step = qp.scale.abs().repeat_interleave(32, dim=1)
    # rounding costs <= s/2; only the opposite end can clip, by at most one step (as in gguf)
    slack = 1 + THRESHOLDS["float32_step_rtol"]
    assert bool((err <= step * slack).all())
    clipped = q == scheme.qmax
    assert bool((err[~clipped] <= step[~clipped] / 2 * slack).all())


def test_full_range_has_one_more_level_and_beats_restricted():
    x = torch.randn(256, 256)
    full = cz.QScheme(bits=4, granularity=cz.PerGroup(32), restricted=False)
    assert (full.qmin, full.qmax, full.levels) == (-8, 7, 16)
    sq = {}
    for name, s in (
        ("full", full),
        ("restricted", cz.QScheme(bits=4, granularity=cz.PerGroup(32))),
    ):
        xh = cz.QTensor.from_float(x, s).dequantize()
        sq[name] = float(20 * torch.log10(x.norm() / (x - xh).norm()))
    assert sq["full"] > sq["restricted"] + THRESHOLDS["full_range_vs_restricted_sqnr_gain_db"]


def test_full_range_config_errors_and_nan():
    with pytest.raises(cz.ConfigError):
        cz.QScheme(bits=4, symmetric=False, restricted=False)
    with pytest.raises(cz.ConfigError):
        cz.QScheme(bits=1, restricted=False)
    x = torch.ones(4, 8)
    x[1, 2] = float("nan")
    with pytest.raises(cz.NonFiniteError):
        cz.quantize_tensor(x, cz.QScheme(bits=4, granularity=cz.PerChannel(0), restricted=False))


def test_full_range_weights_run_exactly_and_round_trip(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    w = cz.QScheme(bits=4, granularity=cz.PerChannel(0), restricted=False)
    p = cz.calibrate(
        cz.prepare(m, cz.QuantConfig(weight=w)), [torch.randn(8, 64) for _ in range(3)]
    )
    qm = cz.convert(p)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(qm(x), cz.simulate(p)(x))
    cz.save(qm, tmp_path / "q")
    back = cz.load(tmp_path / "q", m)
    assert back[0].weight_q.scheme.restricted is False
    assert torch.equal(back(x), qm(x))


def test_full_range_exports_to_onnx_with_signed_scales(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    w = cz.QScheme(bits=4, granularity=cz.PerGroup(32), restricted=False)
    qm = cz.quantize_weights(m, cz.QuantConfig(weight=w))
    assert bool((qm[0].weight_q.qparams.scale < 0).any())  # the case under test
    x = torch.randn(5, 64)
    cz.export_onnx(qm, x, tmp_path / "m.onnx")
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")  # float activations
    s = ort.InferenceSession(str(tmp_path / "m.onnx"), so, providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(y, qm(x).numpy(), atol=THRESHOLDS["onnx_weight_only_output_atol"])
