"""report(): bytes add up by hand, float layers listed with reasons, ties counted once, SQNR,
clipping, markdown / JSON / PNG output, determinism, and the models left untouched."""

import json
import math

import pytest
import torch
from torch import nn

import cuantiza as cz
from cuantiza.errors import CorruptFileError
from tests.thresholds import THRESHOLDS

W4G32 = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32))


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CUANTIZA_QUIET", "1")


def _mlp():
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.LayerNorm(8)).eval()


def _static(model, batches, **cfg):
    p = cz.prepare(model, cz.QuantConfig(**cfg))
    cz.calibrate(p, batches)
    return cz.convert(p)


def _row(rep, name):
    return next(r for r in rep.layers if r.name == name)


def test_int4_group32_bytes_by_hand():
    m = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 8), nn.LayerNorm(8)).eval()
    qm = cz.quantize_weights(m, cz.QuantConfig(weight=W4G32, group_remainder="pad"))
    rep = cz.report(m, qm, torch.randn(4, 64))
    # Linear(64, 48): 3072 nibbles = 1536 B; 48 rows x 2 groups = 96 fp32 scales (384 B)
    # + 96 one-byte zero points; fp32 bias 48 x 4 = 192 B.
    first = _row(rep, "0")
    assert first.quant_bytes == 1536 + 384 + 96 + 192
    assert first.float_bytes == (64 * 48 + 48) * 4
    assert first.bits_per_weight == 8 * (1536 + 384 + 96) / 3072
    # Linear(48, 8): 48 = 32 + 16, the padded last group still costs a scale and a zero point:
    # 192 B codes + 16 scales (64 B) + 16 zero points + bias 32 B
    assert _row(rep, "2").quant_bytes == 192 + 64 + 16 + 32
    assert "last group padded" in _row(rep, "2").reason
    assert _row(rep, "3").quant_bytes == _row(rep, "3").float_bytes == 2 * 8 * 4  # LayerNorm
    t = rep.totals
    assert t["quant_bytes"] == sum(r.quant_bytes for r in rep.layers) + t["quant_other_bytes"]
    assert t["quant_other_bytes"] == 0
    assert t["float_bytes"] == sum(p.numel() * 4 for p in m.parameters())
    assert t["n_params"] == sum(p.numel() for p in m.parameters())
    assert t["bits_per_weight"] == 8 * t["quant_bytes"] / t["n_params"]
    assert t["ratio"] == t["float_bytes"] / t["quant_bytes"]


def test_odd_bit_width_packing_padding_counted():
    m = nn.Sequential(nn.Linear(5, 3, bias=False))
    qm = cz.quantize_weights(
        m, cz.QuantConfig(weight=cz.QScheme(bits=3, granularity=cz.PerTensor()))
    )
    r = _row(cz.report(m, qm, torch.randn(2, 5)), "0")
    assert r.quant_bytes == math.ceil(15 * 3 / 8) + 4  # 45 bits -> 6 B, one fp32 scale
    assert r.n_weights == 15 and r.mode == "weight-only"


def test_static_layer_counts_activation_qparams_and_buffers():
    m = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16, affine=False)).eval()
    qm = _static(m, [torch.randn(8, 64)])
    rep = cz.report(m, qm, torch.randn(4, 64))
    # int8 per-channel: 1024 B codes + 16 fp32 scales, bias 64 B, act scale (4 B) + zero point (1 B)
    assert _row(rep, "0").quant_bytes == 1024 + 64 + 64 + 5
    # BatchNorm without affine has buffers only: counted outside the layers, in both models
    buf = 16 * 4 * 2 + 8
    assert rep.totals["float_other_bytes"] == rep.totals["quant_other_bytes"] == buf
    assert rep.totals["quant_bytes"] == 1024 + 64 + 64 + 5 + buf


def test_float_layers_listed_with_reasons():
    m = _mlp()
    qm = _static(m, [torch.randn(8, 64)], exclude=("2",))
    rep = cz.report(m, qm, torch.randn(4, 64))
    reasons = {r.name: r.reason for r in rep.float_layers()}
    assert reasons == {"2": "excluded by config", "3": "LayerNorm is not a supported layer type"}
    assert _row(rep, "2").bits_per_weight == 32.0 and _row(rep, "2").scheme == "float"
    md = rep.to_markdown()
    assert "- `2` (Linear): excluded by config" in md
    assert "- `3` (LayerNorm): LayerNorm is not a supported layer type" in md


def test_folded_batchnorm_listed_and_compared_after_folding():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    qm = _static(m, [torch.randn(4, 3, 8, 8)])
    rep = cz.report(m, qm, torch.randn(2, 3, 8, 8))
    bn, conv = _row(rep, "1"), _row(rep, "0")
    assert bn.mode == "folded" and "folded into 0" in bn.reason and bn.quant_bytes == 0
    # vs the folded weight / BN output
    assert conv.weight_sqnr_db > THRESHOLDS["report_int8_folded_conv_weight_sqnr_db"]
    assert conv.output_sqnr_db > THRESHOLDS["report_int8_folded_conv_output_sqnr_db"]


class _TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.emb(idx))


def test_tied_embedding_counted_once():
    m = _TiedLM().eval()
    qm = cz.quantize_weights(m, cz.QuantConfig())
    rep = cz.report(m, qm, torch.randint(0, 50, (2, 7)))
    emb, head = _row(rep, "emb"), _row(rep, "head")
    assert emb.float_bytes == 50 * 32 * 4 and head.float_bytes == 0
    assert emb.quant_bytes == 50 * 32 + 50 * 4 and head.quant_bytes == 0
    assert "tied with emb" in head.reason
    assert rep.totals["float_bytes"] == 50 * 32 * 4
    assert rep.totals["n_params"] == 50 * 32
    assert math.isfinite(emb.weight_sqnr_db) and emb.histograms["activation"] is None  # int input


def test_sqnr_finite_and_8bit_beats_4bit():
    torch.manual_seed(1)
    m = _mlp()
    x = torch.randn(16, 64)
    reps = {
        b: cz.report(
            m,
            cz.quantize_weights(
                m, cz.QuantConfig(weight=cz.QScheme(bits=b, granularity=cz.PerChannel(0)))
            ),
            x,
        )
        for b in (4, 8)
    }
    for name in ("0", "2"):
        lo, hi = _row(reps[4], name), _row(reps[8], name)
        assert math.isfinite(lo.weight_sqnr_db) and math.isfinite(lo.output_sqnr_db)
        gain = THRESHOLDS["report_8bit_vs_4bit_weight_sqnr_gain_db"]  # ~6 dB per bit
        assert hi.weight_sqnr_db > lo.weight_sqnr_db + gain
        assert hi.output_sqnr_db > lo.output_sqnr_db
    assert reps[8].totals["output_sqnr_db"] > reps[4].totals["output_sqnr_db"] > 0
    assert _row(reps[8], "3").weight_sqnr_db == math.inf  # float layer: exact


def test_clipped_fraction_and_observer_counts():
    m = nn.Sequential(nn.Linear(4, 4)).eval()
    qm = _static(m, [torch.linspace(-1, 1, 40).reshape(10, 4)])
    lo, hi = -1.1, 1.1  # the calibrated range is about [-1.004, 0.996]: 0.5 inside, 5 outside
    x = torch.full((10, 4), 0.5)
    x[:3] = 5.0
    qm.cuantiza_info.observers = {"0": {"n_seen": 40, "n_nan": 2, "n_inf": 1}}
    rep = cz.report(m, qm, x)
    r = _row(rep, "0")
    assert r.clipped_fraction == 12 / 40
    assert r.histograms["activation"]["clip"][0] > lo and r.histograms["activation"]["clip"][1] < hi
    assert (r.n_nan, r.n_inf) == (2, 1)
    assert "| 30.000% | 2/1 |" in rep.to_markdown()


def test_dynamic_rows_name_scheme_and_kernel():
    m = _mlp()
    qm = cz.quantize_dynamic(m, cz.QuantConfig(dynamic="per_token"))
    r = _row(cz.report(m, qm, torch.randn(4, 64)), "0")
    assert r.mode == "dynamic" and "per-token" in r.scheme and r.kernel
    assert r.clipped_fraction is None


def test_deterministic_and_models_untouched():
    m = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 4))
    m.train()
    qm = cz.quantize_weights(m, cz.QuantConfig(weight=cz.QScheme(bits=4)))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(6, 8)
    a, b = cz.report(m, qm, x), cz.report(m, qm, x)
    assert a.to_json() == b.to_json()
    assert m.training and m[1].training and not qm.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_markdown_table_rows_and_str():
    m = _mlp()
    rep = cz.report(m, _static(m, [torch.randn(8, 64)]), torch.randn(4, 64))
    md = rep.to_markdown()
    assert str(rep) == md
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == len(rep.layers) == 3
    assert rows[0].startswith(
        "| `0` | Linear → QuantLinear | w int8-sym-per-channel(axis=0) / a int8-asym-per-tensor |"
    )
    assert "## Totals" in md and "model output SQNR" in md


def test_save_load_round_trip(tmp_path):
    m = _mlp()
    rep = cz.report(m, _static(m, [torch.randn(8, 64)]), torch.randn(4, 64))
    rep.save(tmp_path, plots=2)
    worst = [r.name for r in rep.worst(2)]
    expected = [f"plot_01_{worst[0]}.png", f"plot_02_{worst[1]}.png", "report.json", "report.md"]
    assert sorted(worst) == ["0", "2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    pngs = [p for p in tmp_path.iterdir() if p.suffix == ".png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (tmp_path / "report.md").read_text() == rep.to_markdown()
    loaded = cz.Report.load(tmp_path)
    assert loaded == rep and str(loaded) == str(rep)
    assert json.loads((tmp_path / "report.json").read_text()) == rep.to_dict()


def test_infinite_sqnr_survives_json(tmp_path):
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).eval()
    rep = cz.report(m, cz.quantize_weights(m), torch.randn(2, 4))
    assert _row(rep, "1").weight_sqnr_db == math.inf
    rep.save(tmp_path, plots=0)
    assert "Infinity" not in (tmp_path / "report.json").read_text()
    assert cz.Report.load(tmp_path) == rep


def test_load_rejects_corrupt_json(tmp_path):
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(CorruptFileError):
        cz.Report.load(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CorruptFileError):
        cz.Report.load(tmp_path)
