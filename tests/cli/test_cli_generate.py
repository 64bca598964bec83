"""`cuantiza generate MODEL_DIR --prompt TEXT -n N`: a GPTQ 4-bit folder generates; bad
arguments get one line on stderr and exit code 2."""

import json

import pytest
import torch

from cuantiza.cli.main import main

transformers = pytest.importorskip("transformers")
from tests.helpers.llama import write_hf  # noqa: E402

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 8


@pytest.fixture(scope="module")
def gptq4(tmp_path_factory):
    """A small byte-level LLaMA folder quantized to 4 bits by GPTQ from the command line."""
    tmp = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    src = write_hf(tmp / "src", transformers.LlamaForCausalLM(cfg).state_dict(), cfg.to_dict())
    (tmp / "calib.txt").write_text(TEXT, encoding="utf-8")
    argv = [
        "quantize",
        str(src),
        "-o",
        str(tmp / "q"),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--method",
        "gptq",
        "--calibration",
        str(tmp / "calib.txt"),
        "--seq-len",
        "32",
        "-q",
    ]
    assert main(argv) == 0
    return tmp / "q"


def test_generate_prints_text_and_speeds(gptq4, capsys):
    assert main(["generate", str(gptq4), "--prompt", "To be", "-n", "6", "--ignore-eos"]) == 0
    out, err = capsys.readouterr()
    assert out.strip("\n") != "" and "tokens/s" in err and "Traceback" not in err
    assert (
        main(
            [
                "generate",
                str(gptq4),
                "--prompt",
                "To be",
                "-n",
                "6",
                "--json",
                "-q",
                "--temperature",
                "0.7",
                "--seed",
                "2",
                "--ignore-eos",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["new_ids"]) == 6 and doc["decode_tokens_per_s"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-n", "0"], "-n/--max-new-tokens: must be a whole number >= 1"),
        (["-n", "100"], "context of 64"),
        (["--top-p", "2"], "--top-p: must be a number > 0.0 and <= 1.0"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(gptq4, capsys, argv, message):
    assert main(["generate", str(gptq4), "--prompt", "To be", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_a_missing_folder_is_refused(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not a folder" in capsys.readouterr().err
