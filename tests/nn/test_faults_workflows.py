"""docs/FAULTS.md cases for the model workflows: each fails early and clearly, or falls back
visibly."""

import pytest
import torch
from torch import nn

import cuantiza as cz


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.dead = nn.Linear(8, 4)  # only runs when use_dead=True (an unrouted expert)
        self.norm = nn.LayerNorm(4)
        self.c3 = nn.Conv3d(1, 1, 1)

    def forward(self, x, use_dead=False):
        return self.norm(self.dead(x) if use_dead else self.a(x))


def test_fault_12_unfed_module_is_named_then_falls_back_when_asked():
    p = cz.calibrate(cz.prepare(TwoBranch(), cz.QuantConfig()), [torch.randn(4, 8)])
    with pytest.raises(cz.CalibrationError, match="dead"):
        cz.convert(p)
    qm = cz.convert(p, unobserved="float")
    x = torch.randn(3, 8)
    assert "no calibration data" in qm.cuantiza_info.notes["dead"]
    with torch.no_grad():
        ref = p.dead.weight
        assert torch.equal(qm.dead(x), torch.nn.functional.linear(x, ref, p.dead.bias))


@pytest.mark.parametrize("data", [[], None, iter([])])
def test_fault_13_empty_calibration_data(data):
    p = cz.prepare(TwoBranch(), cz.QuantConfig())
    with pytest.raises(cz.CalibrationError):
        cz.calibrate(p, data)


def test_fault_15_group_size_checked_at_plan_time_before_calibration():
    m = nn.Sequential(nn.Linear(48, 8), nn.Linear(8, 4))
    cfg = cz.QuantConfig(weight=cz.QScheme(bits=4, granularity=cz.PerGroup(32)))
    with pytest.raises(cz.PlanError, match=r"0: 48 columns .* group size 32"):
        cz.quantize_weights(m, cfg)
    qm = cz.quantize_weights(m, cz.QuantConfig(weight=cfg.weight, group_remainder="per_channel"))
    assert isinstance(qm[0].weight_q.scheme.granularity, cz.PerChannel)
    assert (
        "per-channel"
        in cz.plan(
            m, cz.QuantConfig(weight=cfg.weight, group_remainder="per_channel"), "weight_only"
        )["0"].reason
    )


def test_fault_19_unsupported_layers_stay_float_with_reason():
    p = cz.plan(TwoBranch(), cz.QuantConfig())
    assert {lp.name for lp in p.skipped()} == {"norm", "c3"}
    assert "not a supported layer type" in p["c3"].reason
    assert "c3" in str(p)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.emb(idx))


def test_fault_20_tied_weights_quantized_once_and_kept_tied():
    qm = cz.quantize_weights(
        Tied(), cz.QuantConfig(weight=cz.QScheme(bits=4, granularity=cz.PerGroup(4)))
    )
    assert qm.emb.weight_q is qm.head.weight_q
    assert "tied with emb" in qm.cuantiza_info.notes["head"]
    out = qm(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 20)


def test_fault_20_tied_weights_with_different_schemes_are_untied_and_reported():
    cfg = cz.QuantConfig(
        overrides={"head": {"weight": cz.QScheme(bits=8, granularity=cz.PerChannel(0))}},
        weight=cz.QScheme(bits=4, granularity=cz.PerChannel(0)),
    )
    qm = cz.quantize_weights(Tied(), cfg)
    assert qm.emb.weight_q is not qm.head.weight_q
    assert "untied" in qm.cuantiza_info.notes["head"]


def test_fault_22_meta_device_detected_before_work():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(cz.UnsupportedDtypeError, match="meta"):
        cz.quantize_dynamic(m, cz.QuantConfig())


def test_fault_01_nan_weight_named_at_plan_time():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        m[1].weight[0, 0] = float("nan")
    with pytest.raises(cz.NonFiniteError, match=r"1\.weight has 1 NaN"):
        cz.prepare(m, cz.QuantConfig())


def test_fault_10_complex_and_integer_params_stay_float():
    m = nn.Sequential(nn.Linear(4, 4))
    with pytest.warns(UserWarning):  # torch warns that complex modules are experimental
        m.add_module("cplx", nn.Linear(4, 4).to(torch.complex64))
    p = cz.plan(m, cz.QuantConfig(), "weight_only")
    assert "complex" in p["cplx"].reason


def test_per_group_weights_with_integer_activations_is_a_plan_error():
    cfg = cz.QuantConfig(weight=cz.QScheme(bits=4, granularity=cz.PerGroup(4)))
    with pytest.raises(cz.PlanError, match="per-group"):
        cz.prepare(nn.Sequential(nn.Linear(8, 4)), cfg)


def test_config_errors_are_typed():
    with pytest.raises(cz.ConfigError):
        cz.QuantConfig(dynamic="sometimes")
    with pytest.raises(cz.ConfigError):
        cz.QuantConfig(overrides={"x": {"bitz": 3}})
    with pytest.raises(cz.ConfigError):
        cz.QuantConfig(activation=cz.QScheme(bits=1))


def test_fault_23_already_quantized_model_is_never_quantized_twice():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    qm = cz.quantize_dynamic(m, cz.QuantConfig())
    with pytest.raises(cz.PlanError, match="already quantized"):
        cz.quantize_weights(qm, cz.QuantConfig())
    mixed = nn.Sequential(qm[0], nn.Linear(8, 2))  # one layer done, one float
    p = cz.plan(mixed, cz.QuantConfig(), "weight_only")
    assert "already quantized by cuantiza" in p["0"].reason and p["1"].quantized
    out = cz.quantize_weights(mixed, cz.QuantConfig())
    assert out[0].weight_q is not None and isinstance(out[0], cz.nn.DynamicQuantLinear)


def test_fault_23_torch_ao_quantized_layers_are_listed_not_requantized():
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = quantize_dynamic(
            nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), {nn.Linear}, dtype=torch.qint8
        )
    with pytest.raises(cz.PlanError, match="already quantized"):
        cz.plan(ao, cz.QuantConfig(), "weight_only")
