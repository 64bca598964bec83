"""`cuantiza export MODEL_DIR --format gguf --type T -o OUT.gguf`: a quantized folder becomes a
GGUF file gguf-py reads; bad arguments and bad folders get one line on stderr and exit 2, and
nothing is written."""

import json

import pytest

from cuantiza.cli.main import main

gguf = pytest.importorskip("gguf")
from tests.helpers.llama import hf_llama, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def q4(tmp_path_factory):
    """A tiny LLaMA folder quantized from the command line, symmetric 4-bit, groups of 32."""
    tmp = tmp_path_factory.mktemp("export")
    src = hf_llama(tmp / "src", tiny_llama())
    argv = ["-q", "quantize", str(src), "-o", str(tmp / "q"), "--bits", "4"]
    assert main([*argv, "--group-size", "32", "--symmetric"]) == 0
    return tmp / "q"


def test_export_writes_a_gguf_that_gguf_py_reads(q4, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["export", str(q4), "--format", "gguf", "--type", "q4_0", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in text and "blocks repacked exactly" in text
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.1.ffn_up.weight"] == "Q4_0" and types["output_norm.weight"] == "F32"
    assert main(["export", str(q4), "--type", "Q8_0", "-o", str(out), "--overwrite", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["type"] == "Q8_0" and all(t["exact_blocks"] == t["blocks"] for t in doc["tensors"])


@pytest.mark.parametrize(
    "args, says",
    [
        (["--type", "Q9_9"], "invalid choice: 'Q9_9'"),
        (["--format", "onnx"], "invalid choice: 'onnx'"),
        (["-o", "{existing}"], "exists; pass --overwrite"),
        (["--model", "{missing}"], "not a folder"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(q4, tmp_path, capsys, args, says):
    existing = tmp_path / "old.gguf"
    existing.write_bytes(b"old")
    model = str(q4)
    if args[0] == "--model":
        model, args = str(tmp_path / "nope"), []
    args = [a.replace("{existing}", str(existing)) for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "new.gguf")]
    assert main(["export", model, *args, *out]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert existing.read_bytes() == b"old" and not (tmp_path / "new.gguf").exists()
