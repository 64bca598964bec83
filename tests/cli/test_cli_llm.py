"""`cuantiza quantize MODEL_DIR` and `cuantiza eval-ppl` on a Hugging Face LLaMA folder."""

import json

import pytest
import torch

from cuantiza.cli.main import main

transformers = pytest.importorskip("transformers")
from tests.helpers.llama import write_hf  # noqa: E402

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 8


@pytest.fixture()
def folder(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(cfg)
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    return write_hf(tmp_path / "src", model.state_dict(), cfg.to_dict())


def test_quantize_folder_with_gptq_then_eval_ppl(folder, tmp_path, capsys):
    text = str(tmp_path / "text.txt")
    rc = main(
        [
            "quantize",
            str(folder),
            "-o",
            str(tmp_path / "q4"),
            "--bits",
            "4",
            "--group-size",
            "32",
            "--method",
            "gptq",
            "--calibration",
            text,
            "--seq-len",
            "32",
            "--eval-text",
            text,
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "tensors quantized" in out and "perplexity" in out
    doc = json.loads((tmp_path / "q4" / "cuantiza.json").read_text())
    assert doc["source"]["method"] == "gptq"
    assert (
        main(
            [
                "eval-ppl",
                str(folder),
                str(tmp_path / "q4"),
                "--text",
                text,
                "--seq-len",
                "32",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["perplexity"] > 1 for r in rows)
    assert rows[1]["bytes"] < rows[0]["bytes"] / 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "gptq"], "needs --calibration"),
        (["--static"], "weight-only"),
        (
            ["--method", "hqq", "--calibration", "{text}"],
            "--calibration is used by --method gptq/awq",
        ),
        (["--bits", "9"], "bits"),
    ],
)
def test_bad_folder_arguments_fail_before_work(folder, tmp_path, capsys, argv, message):
    argv = [a.format(text=tmp_path / "text.txt") for a in argv]
    assert main(["quantize", str(folder), "-o", str(tmp_path / "q"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_eval_ppl_refuses_missing_inputs(folder, tmp_path, capsys):
    assert main(["eval-ppl", str(tmp_path / "nope"), "--text", str(tmp_path / "text.txt")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["eval-ppl", str(folder), "--text", str(tmp_path / "missing.txt")]) == 2
    assert "no such text file" in capsys.readouterr().err
