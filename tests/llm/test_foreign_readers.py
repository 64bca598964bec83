"""What other libraries see in cuantiza's folders, and what cuantiza opens of theirs.

FAULTS 36: a quantized decoder folder's config.json carries a ``quantization_config`` naming
cuantiza without a ``quant_method``, so transformers' ``from_pretrained`` refuses it instead of
building the float model with its weights missing (before, it printed a table of missing
weights and returned zeroed embeddings); cuantiza's own readers still load it.
FAULTS 35: a folder holding only a pickle checkpoint is refused by ``eval_ppl`` /
``load_causal_lm`` before transformers opens it (the suite's guard fails any unpickling).
"""

import json
import os

import pytest
import torch

import cuantiza as cz
from cuantiza.llm.checkpoint import quantize_checkpoint
from cuantiza.llm.evaluate import eval_ppl, load_causal_lm

transformers = pytest.importorskip("transformers")
from tests.helpers.llama import hf_llama, tiny_llama  # noqa: E402

G4 = cz.QuantConfig(weight=cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32)))
IDS = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("foreign")
    src = hf_llama(tmp / "src", tiny_llama())
    quantize_checkpoint(src, tmp / "q", G4, progress=False)
    return src, tmp / "q"


def test_the_config_names_cuantiza_and_keeps_the_model(folders):
    src, q = folders
    cfg = json.loads((q / "config.json").read_text())
    qc = cfg.pop("quantization_config")
    assert qc["producer"] == "cuantiza" and "quant_method" not in qc
    assert qc["bits"] == 4 and qc["method"] == "rtn" and qc["manifest"] == "cuantiza.json"
    assert cfg == json.loads((src / "config.json").read_text())


def test_transformers_refuses_the_quantized_folder(folders):
    """Checked against the installed transformers: no float model with missing weights."""
    with pytest.raises(ValueError, match="quant_method"):
        transformers.AutoModelForCausalLM.from_pretrained(str(folders[1]), local_files_only=True)


def test_cuantiza_still_reads_it(folders):
    src, q = folders
    skeleton = tiny_llama(seed=9)
    with torch.no_grad():
        want = cz.load(q, skeleton).float()(IDS).logits
        assert torch.equal(load_causal_lm(q)(IDS).logits, want)
    text = "12, 34; 56: 78! " * 4  # bytes below the tiny vocabulary of 96
    assert eval_ppl(q, text, seq_len=16, progress=False).perplexity > 1
    from cuantiza.llm.runtime_load import load_runtime

    assert load_runtime(q) is not None


def test_a_quantized_folder_is_not_quantized_again(folders, tmp_path):
    """FAULTS 23, from the folder itself (cuantiza.json, or any quantization_config)."""
    with pytest.raises(cz.PlanError, match="already quantized"):
        quantize_checkpoint(folders[1], tmp_path / "qq", G4, progress=False)
    src = tmp_path / "gptq-model"
    src.mkdir()
    for p in folders[0].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cz.PlanError, match=r"quantization_config \(gptq\)"):
        quantize_checkpoint(src, tmp_path / "qq", G4, progress=False)
    assert not (tmp_path / "qq").exists()


class _Payload:
    """Unpickling this creates a folder: proof that the pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_eval_ppl_refuses_a_pickle_only_folder_before_transformers_opens_it(tmp_path):
    """FAULTS 35: transformers' from_pretrained would have opened pytorch_model.bin."""
    import pickle

    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tiny_llama().config.to_dict()))
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    for f in (load_causal_lm, lambda p: eval_ppl(p, "some text", seq_len=4, progress=False)):
        with pytest.raises(cz.UnsafeFileError, match="never unpickles"):
            f(d)
    assert not (tmp_path / "pwned").exists()
