"""export_gguf: a LLaMA-class decoder folder (quantized by ``cuantiza quantize MODEL_DIR``, or
float) as one GGUF file that llama.cpp loads, written through gguf-py's ``GGUFWriter``.

Metadata and tensor names are those llama.cpp's ``convert_hf_to_gguf.py`` writes for the
``llama`` architecture (``blk.N.attn_q.weight``...), and q/k rows are permuted as it does (HF
stores the rotary halves apart, llama.cpp interleaves them): the permutation moves whole rows,
so it is applied to the finished blocks and changes no value. Norms are F32; every matrix gets
the asked type: blocks repacked from cuantiza's integers where its grid fits the type, the rest
requantized with llama.cpp's rules (``gguf_quants``); the result lists, per tensor, how many
blocks were repacked and the SQNR of the file's values against the folder's.

Vocabulary: a byte-level decoder (vocabulary 256 and no tokenizer files, as the committed
``models/shakespeare-llama``; token id = byte) gets a SentencePiece-type ("llama") vocabulary
that llama.cpp tokenizes to the same ids: 255 byte tokens ``<0xHH>`` (type BYTE), which its
tokenizer falls back to for every character, and token 32 written "▁" (U+2581), because
llama.cpp's SentencePiece path turns each space into "▁" before looking tokens up (so a literal
U+2581 in a text also becomes id 32). No BOS/EOS are added and no space is prefixed. Another
folder gets ``tokenizer.ggml.model = "none"`` (llama.cpp then runs token ids only), which
``GGUFExport.notes`` says.

Everything is checked (architecture, shapes: rows of a multiple of 32) before any tensor is
converted, and the file is written next to ``out`` and renamed into place (``io.atomic``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..core.qtensor import QTensor
from ..errors import ConfigError, CorruptFileError, OutputExistsError, PlanError, ShapeError
from ..io import saveformat as fmt
from ..io.atomic import check_writable, staged_file
from ..io.load import read_manifest, verify_files
from . import gguf_quants as gq
from .gguf_blocks import BLOCK_TYPES, QK
from .shards import open_checkpoint

FLOAT_TYPES: dict[str, np.dtype] = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}
TYPES = (*BLOCK_TYPES, *FLOAT_TYPES)
# general.file_type (llama.cpp's LLAMA_FTYPE_MOSTLY_*) of each type
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}
LAYER_NAMES = {  # Hugging Face module -> GGUF tensor (llama.cpp's names for LLaMA)
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = ("input_layernorm", "post_attention_layernorm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
BYTE_VOCAB = 256
SPACE = 0x20


@dataclass(frozen=True)
class TensorExport:
    """One tensor of the file: names, type, blocks repacked exactly, SQNR against the folder."""

    name: str  # in the GGUF file
    source: str  # the module or parameter in the folder
    type: str
    exact_blocks: int
    blocks: int
    sqnr_db: float


@dataclass
class GGUFExport:
    path: str
    type: str
    tensors: list[TensorExport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nbytes: int = 0

    def to_text(self) -> str:
        """A table: every tensor, its type, blocks repacked, SQNR added (dB; inf: exact)."""
        lines = [f"{'tensor':28s} {'type':5s} {'repacked':>17s} {'SQNR dB':>8s}"]
        for t in self.tensors:
            rep = f"{t.exact_blocks}/{t.blocks}" if t.blocks else "-"
            lines.append(f"{t.name:28s} {t.type:5s} {rep:>17s} {t.sqnr_db:>8.1f}")
        exact = sum(t.exact_blocks for t in self.tensors)
        total = sum(t.blocks for t in self.tensors)
        lines.append(f"{self.path}: {self.nbytes:,} bytes, {exact}/{total} blocks repacked exactly")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


class _Folder:
    """A decoder folder's weights by Hugging Face module name: QTensors from a cuantiza save,
    float tensors otherwise; ``key`` tells shared (tied) weights apart."""

    def __init__(self, dir):
        self.dir = Path(dir)
        self.ckpt = open_checkpoint(self.dir)
        self.config = self.ckpt.config
        self.doc = None
        if (self.dir / fmt.MANIFEST).is_file():
            self.doc = read_manifest(self.dir / fmt.MANIFEST)
            verify_files(self.dir, self.doc)

    def _entry(self, module: str) -> dict | None:
        return None if self.doc is None else self.doc["modules"].get(module)

    def _tensor_name(self, param: str) -> str | None:
        if self.doc is None:
            return param if param in self.ckpt.names() else None
        return self.doc["state"].get(param)

    def _stored(self, param: str) -> str:
        """The shard tensor holding ``param``; CorruptFileError if the folder lacks it."""
        name = self._tensor_name(param)
        if name is None:
            raise CorruptFileError(f"{self.dir}: the decoder's {param} is missing")
        return name

    def key(self, module: str) -> str | None:
        e = self._entry(module)
        return e["weight"]["data"] if e is not None else self._tensor_name(f"{module}.weight")

    def shape(self, module: str) -> tuple:
        e = self._entry(module)
        if e is not None:
            return tuple(e["weight"]["shape"])
        return tuple(self.ckpt.info(self._stored(f"{module}.weight")).shape)

    def weight(self, module: str) -> QTensor | torch.Tensor:
        e = self._entry(module)
        if e is None:
            return self.ckpt.read(self._stored(f"{module}.weight"))
        wanted = [e["weight"]["data"], e["weight"]["scale"], e["weight"]["zero_point"]]
        tensors = {n: self.ckpt.read(n) for n in wanted if n is not None}
        return fmt.weight_from_entry(e["weight"], tensors, {})

    def vector(self, param: str) -> torch.Tensor:
        return self.ckpt.read(self._stored(param))


def _check_architecture(cfg: dict, where: Path) -> None:
    arch = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise PlanError(
            f"{where}: GGUF export supports LLaMA decoders (model_type 'llama'), got "
            f"model_type {cfg.get('model_type')!r}, architectures {arch}"
        )
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise PlanError(f"{where}: RoPE scaling {rope} is not supported by the GGUF export")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise PlanError(f"{where}: projections with biases are not supported by the GGUF export")


def _modules(cfg: dict) -> list[tuple[str, str]]:
    """(GGUF name, Hugging Face module or parameter) in the file's order."""
    out = [("token_embd", "model.embed_tokens")]
    for i in range(int(cfg["num_hidden_layers"])):
        out += [(f"blk.{i}.{g}", f"model.layers.{i}.{h}") for h, g in LAYER_NAMES.items()]
    return out + [("output_norm", "model.norm"), ("output", "lm_head")]


def _head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _plan(folder: _Folder) -> list[tuple[str, str]]:
    """The tensors to write, every matrix's shape checked before any work (rows of 32s)."""
    cfg = folder.config
    plan = []
    embed_key = folder.key("model.embed_tokens")
    for gname, hname in _modules(cfg):
        if hname.endswith(NORMS) or hname == "model.norm":
            folder._stored(f"{hname}.weight")  # present, before any work
            plan.append((gname, hname))
            continue
        if hname == "lm_head" and folder.key("lm_head") in (None, embed_key):
            continue  # tied: llama.cpp reads the head from token_embd
        shape = folder.shape(hname)
        if len(shape) != 2 or shape[1] % QK:
            raise ShapeError(
                f"{hname}.weight has shape {shape}: GGUF block types need rows whose length is "
                f"a multiple of {QK}; export with --type F16 or F32"
            )
        plan.append((gname, hname))
    return plan


def _permute_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LLaMA q/k permutation, on rows (blocks or floats alike)."""
    rows = a.shape[0]
    return a.reshape(n_head, 2, rows // n_head // 2, -1).swapaxes(1, 2).reshape(a.shape)


def _heads_of(gname: str, cfg: dict) -> int | None:
    if gname.endswith(".attn_q"):
        return int(cfg["num_attention_heads"])
    if gname.endswith(".attn_k"):
        return int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    return None


def _matrix(weight, kind: str) -> tuple[np.ndarray, int, int, float]:
    """(data for the writer, exact blocks, blocks, SQNR) of one matrix as ``kind``."""
    if kind in FLOAT_TYPES:
        data, sqnr = gq.float_bytes(weight, FLOAT_TYPES[kind])
        return data, 0, 0, sqnr
    c = gq.to_blocks(weight, BLOCK_TYPES[kind])
    return c.blocks, c.exact_blocks, c.total_blocks, c.sqnr_db


def _add_tensor(writer, gname: str, data: np.ndarray, kind: str) -> None:
    import gguf

    if kind in FLOAT_TYPES:
        writer.add_tensor(f"{gname}.weight", data)
    else:
        qtype = gguf.GGMLQuantizationType(BLOCK_TYPES[kind].ggml_id)
        writer.add_tensor(f"{gname}.weight", data, raw_shape=data.shape, raw_dtype=qtype)


def _write_hparams(writer, cfg: dict, name: str, kind: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(int(cfg["num_attention_heads"]))
    writer.add_head_count_kv(int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]))
    writer.add_rope_dimension_count(_head_dim(cfg))
    rope = cfg.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    if _head_dim(cfg) != cfg["hidden_size"] // cfg["num_attention_heads"]:
        writer.add_key_length(_head_dim(cfg))
        writer.add_value_length(_head_dim(cfg))
    writer.add_file_type(FILE_TYPES[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("cuantiza.version", __version__)


def _write_vocab(writer, folder: _Folder, notes: list[str]) -> None:
    import gguf

    cfg = folder.config
    has_files = [f for f in TOKENIZER_FILES if (folder.dir / f).is_file()]
    if int(cfg["vocab_size"]) != BYTE_VOCAB or has_files:
        writer.add_tokenizer_model("none")
        why = f"tokenizer files {has_files}" if has_files else f"vocabulary {cfg['vocab_size']}"
        notes.append(
            f"no vocabulary written ({why}; only byte-level decoders of 256 tokens are "
            "supported): llama.cpp can run token ids but not tokenize text"
        )
        return
    tokens = ["▁" if b == SPACE else f"<0x{b:02X}>" for b in range(BYTE_VOCAB)]
    kinds = [gguf.TokenType.NORMAL if b == SPACE else gguf.TokenType.BYTE for b in range(256)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * BYTE_VOCAB)
    writer.add_token_types(kinds)
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        if isinstance(cfg.get(key), int) and 0 <= cfg[key] < BYTE_VOCAB:
            add(cfg[key])
    writer.add_add_bos_token(False)  # cuantiza's byte-level texts carry no BOS/EOS
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def _convert(folder: _Folder, gname: str, hname: str, kind: str) -> tuple:
    """(GGUF data, its type, TensorExport) of one planned tensor."""
    if gname.endswith("norm"):
        v = folder.vector(f"{hname}.weight").to(torch.float32).numpy()
        return v, "F32", TensorExport(f"{gname}.weight", hname, "F32", 0, 0, float("inf"))
    data, exact, blocks, sqnr = _matrix(folder.weight(hname), kind)
    heads = _heads_of(gname, folder.config)
    if heads is not None:
        data = _permute_rows(data, heads)
    return data, kind, TensorExport(f"{gname}.weight", hname, kind, exact, blocks, sqnr)


def export_gguf(src, out, type: str = "Q4_0", *, overwrite: bool = False) -> GGUFExport:
    """Write the decoder folder ``src`` as the GGUF file ``out`` with matrices of ``type``
    (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, F32); see the module docstring."""
    import gguf

    kind = str(type).upper()
    if kind not in TYPES:
        raise ConfigError(f"type must be one of {', '.join(TYPES)}, got {type!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True to replace it")
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; give the path of the .gguf file to write")
    check_writable(out)
    folder = _Folder(src)
    _check_architecture(folder.config, folder.dir / "config.json")
    plan = _plan(folder)
    result = GGUFExport(str(out), kind)
    with staged_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        try:
            _write_hparams(writer, folder.config, folder.dir.name, kind)
            _write_vocab(writer, folder, result.notes)
            for gname, hname in plan:
                data, tkind, report = _convert(folder, gname, hname, kind)
                _add_tensor(writer, gname, data, tkind)
                result.tensors.append(report)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()  # also on failure: staged_file then removes the partial file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    result.nbytes = out.stat().st_size
    _note_requantized(result)
    return result


def _note_requantized(result: GGUFExport) -> None:
    """Say how many blocks were requantized, and which folders repack exactly instead."""
    total = sum(t.blocks for t in result.tensors)
    rounded = total - sum(t.exact_blocks for t in result.tensors)
    if rounded:
        result.notes.append(
            f"{rounded} of {total} blocks requantized with llama.cpp's rule (SQNR per tensor "
            "above); exact repacks need one float16 scale per 32 weights and integers in the "
            "type's range: `cuantiza quantize --symmetric --group-size 32` (or 64, 128) with "
            "--bits 4 for Q4_0, 5 for Q5_0, 8 for Q8_0; asymmetric 4-bit fits Q5_1"
        )
