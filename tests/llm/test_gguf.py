"""GGUF export (``llm.gguf_export``, ``gguf_quants``, ``gguf_blocks``), held to gguf-py, the
format's own Python implementation: its quantizers, its dequantizer and its reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cuantiza.core.qtensor import QTensor
from cuantiza.core.scheme import PerChannel, PerGroup, QScheme
from cuantiza.errors import OutputExistsError, PlanError, ShapeError
from cuantiza.llm import gguf_blocks as gb
from cuantiza.llm import gguf_quants as gq
from cuantiza.llm.checkpoint import quantize_checkpoint
from cuantiza.llm.gguf_export import export_gguf
from cuantiza.nn.config import QuantConfig
from tests.helpers.llama import hf_llama, tiny_llama

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

TYPES = tuple(gb.BLOCK_TYPES)


def _same_bits(a, b) -> bool:
    """Equal as float32 bit patterns (so -0.0 != 0.0 and NaNs compare)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _awkward_rows(seed=0) -> np.ndarray:
    """Rows of 256 with blocks that stress the rules: zeros, one value, ties, tiny and big."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((24, 256)) * rng.uniform(1e-3, 30, (24, 1))).astype(np.float32)
    x[0, :32] = 0  # d = 0
    x[1, :32] = 0.75  # one value: d = 0 for the _1 types
    x[2, :32] = np.float32(0.49999997) * np.arange(32, dtype=np.float32)
    x[3, 32:64] = -x[3, 32:64]
    x[4, :32] = 1e-8
    return x


@pytest.mark.parametrize("name", TYPES)
def test_block_layout_and_quantizer_are_gguf_pys_byte_for_byte(name):
    qtype = gguf.GGMLQuantizationType[name]
    bt = gb.BLOCK_TYPES[name]
    assert (bt.ggml_id, (gb.QK, bt.nbytes)) == (int(qtype), gguf.GGML_QUANT_SIZES[qtype])
    x = _awkward_rows()
    ours = gb.pack(bt, *gb.quantize_ref(bt, x.reshape(-1, gb.QK)))
    assert np.array_equal(ours.reshape(x.shape[0], -1), gguf_quantize(x, qtype))
    theirs = gguf_dequantize(ours.reshape(x.shape[0], -1), qtype)
    assert _same_bits(gb.dequantize(bt, ours).reshape(x.shape), theirs)
    levels, d, m = gb.unpack(bt, ours)
    assert np.array_equal(gb.pack(bt, levels, d, m), ours)


def _f16_scheme(bits, symmetric, gran, restricted=True):
    extra = {} if restricted or not symmetric else {"restricted": False}
    return QScheme(bits=bits, symmetric=symmetric, granularity=gran, scale_dtype="float16", **extra)


# (scheme, GGML type) pairs whose grids fit exactly: every block is repacked
EXACT = [
    (_f16_scheme(4, True, PerGroup(32), restricted=False), "Q4_0"),
    (_f16_scheme(4, True, PerGroup(128)), "Q4_0"),
    (_f16_scheme(3, True, PerChannel(0)), "Q4_0"),
    (_f16_scheme(5, True, PerGroup(64), restricted=False), "Q5_0"),
    (_f16_scheme(8, True, PerGroup(32)), "Q8_0"),
    (_f16_scheme(8, True, PerGroup(32), restricted=False), "Q8_0"),
    (_f16_scheme(4, False, PerGroup(32)), "Q5_1"),  # 4-bit q - z always has a float16 offset
]


@pytest.mark.parametrize("scheme,name", EXACT, ids=lambda v: getattr(v, "describe", lambda: v)())
def test_repacked_blocks_dequantize_in_gguf_py_to_cuantizas_values_bit_for_bit(scheme, name):
    torch.manual_seed(1)
    qt = QTensor.from_float(torch.randn(40, 256) * 3, scheme)
    c = gq.to_blocks(qt, gb.BLOCK_TYPES[name])
    assert c.exact_blocks == c.total_blocks == 40 * 256 // 32 and c.sqnr_db == float("inf")
    got = gguf_dequantize(c.blocks, gguf.GGMLQuantizationType[name])
    assert _same_bits(got, qt.dequantize().numpy())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", TYPES)
def test_blocks_that_do_not_fit_are_requantized_by_llama_cpps_rule_and_reported(name, symmetric):
    """float32 scales are not float16: every block is requantized, from cuantiza's values."""
    torch.manual_seed(2)
    scheme = QScheme(bits=4, symmetric=symmetric, granularity=PerGroup(32))
    qt = QTensor.from_float(torch.randn(16, 128), scheme)
    c = gq.to_blocks(qt, gb.BLOCK_TYPES[name])
    assert c.exact_blocks == 0
    values = qt.dequantize().numpy()
    qtype = gguf.GGMLQuantizationType[name]
    assert np.array_equal(c.blocks, gguf_quantize(values, qtype))
    assert c.sqnr_db == pytest.approx(gq.sqnr_db(values, gguf_dequantize(c.blocks, qtype)))
    assert np.isfinite(c.sqnr_db) and c.sqnr_db > 20


def test_q4_1_repacks_exactly_the_blocks_whose_offset_float16_holds():
    """Asymmetric 4-bit: m = -s z needs up to 15 significant bits; blocks where it is not a
    float16 are requantized, and the repacked ones keep cuantiza's values bit for bit."""
    torch.manual_seed(3)
    qt = QTensor.from_float(torch.randn(32, 256), _f16_scheme(4, False, PerGroup(32)))
    bt = gb.BLOCK_TYPES["Q4_1"]
    c = gq.to_blocks(qt, bt)
    k, s = gq.grid(qt)
    _, _, _, exact = gq.repackable(bt, k.reshape(-1, 32), s.reshape(-1, 32))
    assert 0 < c.exact_blocks == int(exact.sum()) < c.total_blocks
    got = gguf_dequantize(c.blocks, gguf.GGMLQuantizationType.Q4_1).reshape(-1, 32)
    want = qt.dequantize().numpy().reshape(-1, 32)
    assert _same_bits(got[exact], want[exact])
    assert not np.array_equal(got[~exact], want[~exact])


# --- whole folders ------------------------------------------------------------------------

SYM4 = QuantConfig(weight=_f16_scheme(4, True, PerGroup(32), restricted=False))


def _quantized_folder(tmp_path, config=SYM4, vocab=256, tie=False):
    model = tiny_llama(tie=tie)
    if vocab != model.config.vocab_size:
        model.resize_token_embeddings(vocab)
        model.config.vocab_size = vocab
    src = hf_llama(tmp_path / "src", model)
    quantize_checkpoint(src, tmp_path / "q", config, progress=False)
    return tmp_path / "q", model.config


def _permuted(x: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, written out again for the test."""
    return (
        x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    )


def test_export_is_read_by_gguf_pys_reader_with_llamas_names_metadata_and_values(tmp_path):
    from transformers import LlamaForCausalLM

    from cuantiza.io.load import load

    dst, cfg = _quantized_folder(tmp_path)
    res = export_gguf(dst, tmp_path / "m.gguf", "Q4_0")
    assert sum(t.exact_blocks for t in res.tensors) == sum(t.blocks for t in res.tensors) > 0
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    assert field("llama.embedding_length") == 64 and field("general.file_type") == 2
    assert (
        field("tokenizer.ggml.model") == "llama" and field("tokenizer.ggml.add_bos_token") is False
    )
    tokens = field("tokenizer.ggml.tokens")
    assert tokens[0x41] == "<0x41>" and tokens[0x20] == "\u2581" and len(tokens) == 256
    model = load(dst, LlamaForCausalLM(cfg))
    mods = dict(model.named_modules())
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 2 * 9 + 3 and "output.weight" in tensors
    for name, hf, heads in (
        ("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj", 4),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj", 2),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj", None),
        ("token_embd.weight", "model.embed_tokens", None),
    ):
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0
        want = mods[hf].weight_q.dequantize().numpy()
        want = want if heads is None else _permuted(want, heads)
        got = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(want.shape)
        assert _same_bits(got, want), name
    norm = tensors["blk.0.attn_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    assert _same_bits(norm.data, model.model.layers[0].input_layernorm.weight.detach())


def test_a_tied_head_is_left_to_token_embd_and_other_vocabularies_are_noted(tmp_path):
    dst, _ = _quantized_folder(tmp_path, vocab=96, tie=True)
    res = export_gguf(dst, tmp_path / "t.gguf", "Q8_0")
    r = gguf.GGUFReader(tmp_path / "t.gguf")
    assert "output.weight" not in {t.name for t in r.tensors}
    assert r.fields["tokenizer.ggml.model"].contents() == "none"
    assert any("no vocabulary" in n for n in res.notes)
    assert not any("requantized" in n for n in res.notes)  # 4-bit integers fit Q8_0


def test_export_refuses_bad_input_before_writing_anything(tmp_path):
    """FAULTS 41: rows that are not a multiple of 32, other architectures, an existing output."""
    model = tiny_llama()
    model.config.intermediate_size = 100  # down_proj rows of 100
    sd = model.state_dict()
    for i in range(2):
        for n, shape in (
            ("gate_proj", (100, 64)),
            ("up_proj", (100, 64)),
            ("down_proj", (64, 100)),
        ):
            sd[f"model.layers.{i}.mlp.{n}.weight"] = torch.randn(shape)
    from tests.helpers.llama import write_hf

    odd = write_hf(tmp_path / "odd", sd, model.config.to_dict())
    with pytest.raises(ShapeError, match="down_proj.weight has shape .64, 100."):
        export_gguf(odd, tmp_path / "odd.gguf")
    dst, _ = _quantized_folder(tmp_path)
    cfg_path = dst / "config.json"
    good = cfg_path.read_text()
    cfg_path.write_text(good.replace('"llama"', '"mistral"').replace("LlamaForCausalLM", "X"))
    with pytest.raises(PlanError, match="supports LLaMA"):
        export_gguf(dst, tmp_path / "m.gguf")
    cfg_path.write_text(good)
    (tmp_path / "m.gguf").write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        export_gguf(dst, tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "odd", "q", "src"]


def test_float_folders_export_like_llama_quantize_pure(tmp_path):
    """A float folder's matrices are quantized with llama.cpp's rule: gguf-py's quantize of the
    same rows (after the q/k permutation, which moves whole rows) gives the same bytes."""
    model = tiny_llama()
    src = hf_llama(tmp_path / "src", model)
    res = export_gguf(src, tmp_path / "f.gguf", "Q5_1")
    assert any("blocks requantized with llama.cpp's rule" in n for n in res.notes)
    assert not any("requantized" in n for n in export_gguf(src, tmp_path / "g.gguf", "F32").notes)
    r = gguf.GGUFReader(tmp_path / "f.gguf")
    t = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
    w = _permuted(model.model.layers[0].self_attn.q_proj.weight.detach().numpy(), 4)
    assert np.array_equal(np.asarray(t.data), gguf_quantize(w, gguf.GGMLQuantizationType.Q5_1))


# --- reading: load_gguf ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [*TYPES, "F16", "F32"])
def test_write_then_load_gguf_is_bit_exact_and_re_exports_the_same_bytes(tmp_path, name):
    from cuantiza.llm.gguf_read import load_gguf

    dst, _ = _quantized_folder(tmp_path, QuantConfig(weight=_f16_scheme(4, False, PerGroup(32))))
    export_gguf(dst, tmp_path / "m.gguf", name)
    got = load_gguf(tmp_path / "m.gguf")
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert [t.name for t in r.tensors] == list(got.tensors)
    assert got.metadata["general.architecture"] == "llama" and got.version == 3
    for t in r.tensors:
        ours = got.tensors[t.name]
        assert got.types[t.name] == t.tensor_type.name
        want = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(ours.shape)
        if isinstance(ours, QTensor):  # cuantiza's integers: the same values bit for bit
            assert _same_bits(ours.dequantize().numpy(), want), t.name
            again = gq.to_blocks(ours, gb.BLOCK_TYPES[name])
            assert again.exact_blocks == again.total_blocks, t.name
            assert np.array_equal(again.blocks, np.asarray(t.data).reshape(again.blocks.shape))
        else:
            assert _same_bits(ours.to(torch.float32).numpy(), want), t.name
    if name in ("Q4_0", "Q5_0", "Q8_0", "Q5_1"):
        assert not got.float_reasons


def _gguf_bytes(tensors, data: bytes, meta=(), version=3, align=32) -> bytes:
    """A GGUF file written out by hand: ``tensors`` as (name, dims fastest first, type,
    offset), ``meta`` as (key, u32 value) pairs."""
    import struct

    s = lambda t: struct.pack("<Q", len(t.encode())) + t.encode()  # noqa: E731
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta))
    for key, v in meta:
        out += s(key) + struct.pack("<II", 4, v)
    for name, dims, kind, offset in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", kind, offset)
    return out + b"\0" * (-len(out) % align) + data


def _q8_block(scale=1.0) -> bytes:
    return np.float16(scale).tobytes() + np.arange(-16, 16, dtype=np.int8).tobytes()


def test_load_gguf_of_a_hand_written_file_reads_what_gguf_py_reads(tmp_path):
    from cuantiza.llm.gguf_read import load_gguf

    p = tmp_path / "ok.gguf"
    data = _q8_block(0.5) + _q8_block(-2.0) + b"\0" * 28 + np.ones(3, "<f4").tobytes()
    p.write_bytes(_gguf_bytes([("w", (32, 2), 8, 0), ("n", (3,), 0, 96)], data))
    got = load_gguf(p)
    want = gguf_dequantize(np.frombuffer(data[:68], np.uint8).reshape(2, 34), 8)
    assert _same_bits(got.tensors["w"].dequantize().numpy(), want)
    assert got.tensors["n"].tolist() == [1.0, 1.0, 1.0]


BAD_FILES = {  # FAULTS 41: name -> (file bytes, error type, message)
    "bad magic": (b"GGUX" + b"\0" * 40, "CorruptFileError", "not a GGUF file"),
    "truncated header": (
        _gguf_bytes([("w", (32, 2), 8, 0)], b"")[:30],
        "CorruptFileError",
        "truncated",
    ),
    "truncated data": (
        _gguf_bytes([("w", (32, 2), 8, 0)], _q8_block() + _q8_block()[:20]),
        "CorruptFileError",
        "past the end",
    ),
    "offset past the end": (
        _gguf_bytes([("w", (32, 1), 8, 1 << 40)], _q8_block()),
        "CorruptFileError",
        "past the end",
    ),
    "duplicate names": (
        _gguf_bytes([("w", (32, 1), 8, 0), ("w", (32, 1), 8, 64)], _q8_block() * 3),
        "CorruptFileError",
        "appears twice",
    ),
    "duplicate keys": (
        _gguf_bytes([], b"", meta=(("general.alignment", 32), ("general.alignment", 32))),
        "CorruptFileError",
        "appears twice",
    ),
    "overlap": (
        _gguf_bytes([("a", (32, 2), 8, 0), ("b", (32, 1), 8, 32)], _q8_block() * 3),
        "CorruptFileError",
        "overlap",
    ),
    "unsupported type": (
        _gguf_bytes([("w", (256, 1), 12, 0)], b"\0" * 144),
        "UnsupportedDtypeError",
        "GGML type 12",
    ),
    "rows not whole blocks": (
        _gguf_bytes([("w", (16, 2), 8, 0)], _q8_block()),
        "CorruptFileError",
        "not whole blocks",
    ),
    "non-finite scale": (
        _gguf_bytes([("w", (32, 1), 8, 0)], _q8_block(float("inf"))),
        "NonFiniteError",
        "non-finite",
    ),
    "version 1": (_gguf_bytes([], b"", version=1), "CorruptFileError", "version 1"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_gguf_files_raise_typed_errors(tmp_path, case):
    """FAULTS 41: truncated data, duplicate names, offsets past the end, unsupported types,
    packing that does not match the shape -> a typed error naming the file."""
    from cuantiza import errors
    from cuantiza.llm.gguf_read import load_gguf

    data, kind, says = BAD_FILES[case]
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(getattr(errors, kind), match=says) as e:
        load_gguf(p)
    assert str(p) in str(e.value)
    assert [x.name for x in tmp_path.iterdir()] == ["bad.gguf"]


def test_llama_style_q4_1_offsets_load_as_their_float_values_with_the_reason(tmp_path):
    """min/max offsets (gguf-py's and llama-quantize's Q4_1) are not integer multiples of d:
    the tensor is gguf's float32 values, and float_reasons says so."""
    from cuantiza.llm.gguf_read import load_gguf

    rng = np.random.default_rng(0)
    blocks = gguf_quantize(rng.standard_normal((4, 64)).astype(np.float32), 3)
    p = tmp_path / "q41.gguf"
    p.write_bytes(_gguf_bytes([("w", (64, 4), 3, 0)], blocks.tobytes()))
    got = load_gguf(p)
    assert "not integer multiples" in got.float_reasons["w"]
    assert _same_bits(got.tensors["w"].numpy(), gguf_dequantize(blocks, 3))


# --- llama.cpp itself, where it is built ----------------------------------------------------


def test_llama_cpp_runs_the_exported_committed_decoder_with_cuantizas_perplexity(tmp_path):
    """llama-perplexity on `cuantiza export --type Q4_0` of the committed byte-level decoder
    (symmetric 4-bit g32 fp16: every block repacked) agrees with cuantiza's perplexity of the
    same folder under llama-perplexity's protocol; it also shows llama.cpp tokenizes the text
    with the byte vocabulary to cuantiza's ids (any other id sequence would not agree)."""
    import sys
    from pathlib import Path

    from tests.thresholds import THRESHOLDS

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import _llamacpp
        import bench_interop
    finally:
        sys.path.remove(str(root / "benchmarks"))
    if _llamacpp.find_tools() is None:
        print("skipped: no built llama.cpp (benchmarks/_llamacpp.py build())")
        pytest.skip("llama.cpp tools (llama-perplexity) not built")
    from cuantiza.llm.text import encode, load_text

    q = tmp_path / "q4"
    cfg = QuantConfig(weight=_f16_scheme(4, True, PerGroup(32), restricted=False))
    quantize_checkpoint(bench_interop.MODEL, q, cfg, progress=False)
    export_gguf(q, tmp_path / "m.gguf", "Q4_0")
    ids = torch.as_tensor(encode(load_text(bench_interop.TEXT)), dtype=torch.long)
    theirs = _llamacpp.perplexity(tmp_path / "m.gguf", bench_interop.TEXT, 256, 2, chunks=4)
    ours = bench_interop.cuantiza_ppl_llama_protocol(q, ids, 256, 4)
    assert theirs == pytest.approx(ours, rel=THRESHOLDS["gguf_llamacpp_vs_cuantiza_ppl_rtol"])


def test_a_failure_while_writing_leaves_no_file_and_keeps_a_previous_one(tmp_path, monkeypatch):
    """FAULTS 41 (nothing written half): an error in the fifth tensor's conversion (injected into
    cuantiza's own converter) leaves the previous output as it was and no temporary file."""
    dst, _ = _quantized_folder(tmp_path)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous")
    calls = []
    real = gq.to_blocks

    def fail_on_fifth(weight, bt):
        calls.append(1)
        if len(calls) == 5:
            raise ShapeError("injected")
        return real(weight, bt)

    monkeypatch.setattr(gq, "to_blocks", fail_on_fifth)
    with pytest.raises(ShapeError, match="injected"):
        export_gguf(dst, out, "Q4_0", overwrite=True)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "q", "src"]
