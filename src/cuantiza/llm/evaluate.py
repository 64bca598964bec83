"""Load a causal LM folder (float Hugging Face or cuantiza output) and measure its perplexity.

A float folder is ``config.json`` + safetensors shards, checked by ``shards.open_checkpoint``
first (a folder of pickle checkpoints is refused before any library opens it) and read by
transformers with ``use_safetensors=True``. A cuantiza folder also has ``cuantiza.json``: a
skeleton of the architecture is built from ``config.json`` and ``cuantiza.load`` fills it with
the quantized layers, so the integer weights that are evaluated are the ones on disk.
Computation is float32 (the float layers kept in the file's dtype are upcast after loading).

Text is tokenized with the folder's ``tokenizer.json`` when there is one (the ``tokenizers``
package), else as UTF-8 bytes (vocabulary 256, as the committed Shakespeare model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io.safetensors_file import SafetensorsFile
from ..progress import shown
from .shards import is_cuantiza_config, open_checkpoint
from .text import require_transformers

MANIFEST = "cuantiza.json"


def transformers_config(folder: Path):
    """The folder's transformers config, after ``shards.open_checkpoint`` checked the folder
    (config.json, safetensors shards and their headers; a pickle-only folder is refused before
    transformers sees it, FAULTS 35). The ``quantization_config`` a cuantiza output carries (so
    that transformers refuses to load it as a float model, FAULTS 36) is dropped: the skeleton
    built from this config is the float architecture ``cuantiza.load`` fills."""
    open_checkpoint(folder)
    cfg = require_transformers().AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if is_cuantiza_config(getattr(cfg, "quantization_config", None)):
        del cfg.quantization_config
    return cfg


def _stored_float_dtype(folder: Path) -> torch.dtype:
    """The dtype the quantized folder keeps its float state (norms) in: scales may be float16
    in a float32 model, so only tensors of the manifest's ``state`` count."""
    state = set(
        json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("state", {}).values()
    )
    for f in sorted(folder.glob("*.safetensors")):
        for name, info in SafetensorsFile(f).infos.items():  # headers only, our reader
            if name in state and info.dtype.is_floating_point:
                return info.dtype
    return torch.float32


def load_causal_lm(dir) -> nn.Module:
    """The model in ``dir`` in eval mode, computing in float32."""
    from ..io.load import load

    folder = Path(dir)
    cfg = transformers_config(folder)
    tf = require_transformers()
    if not shown():  # quiet, or stderr is not a terminal: transformers' bars off too
        tf.utils.logging.disable_progress_bar()
    if not (folder / MANIFEST).is_file():
        return tf.AutoModelForCausalLM.from_pretrained(  # safetensors only: never a pickle
            str(folder), local_files_only=True, dtype=torch.float32, use_safetensors=True
        ).eval()
    skeleton = tf.AutoModelForCausalLM.from_config(cfg).to(_stored_float_dtype(folder))
    m = load(folder, skeleton)
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "weight_q"):  # cuantiza layers: integers as stored
                continue
            for p in mod.parameters(recurse=False):
                p.data = p.data.float()
    rot = getattr(getattr(m, "model", None), "rotary_emb", None)
    if rot is not None:  # recomputed in float32: cast to the stored dtype (float16), its
        m.model.rotary_emb = type(rot)(config=m.config)  # frequencies lost bits
    return m.eval()


def tokenize(dir, text: str) -> torch.Tensor:
    """Token ids of ``text`` with the folder's tokenizer (bytes when it has none)."""
    from .text import encode

    tok = Path(dir) / "tokenizer.json"
    if not tok.is_file():
        return encode(text)
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(f"{tok} needs the tokenizers package: pip install tokenizers") from None
    return torch.tensor(Tokenizer.from_file(str(tok)).encode(text).ids, dtype=torch.long)


def weight_bytes(dir) -> int:
    """Bytes of the folder's safetensors files (what the weights cost on disk)."""
    return sum(f.stat().st_size for f in Path(dir).glob("*.safetensors"))


@dataclass
class PplResult:
    model: str
    bytes: int
    tokens: int
    perplexity: float


def eval_ppl(
    dir, text: str, *, seq_len: int = 256, batch_size: int = 8, progress: bool = True
) -> PplResult:
    """Perplexity of the model in ``dir`` on ``text`` (non-overlapping windows of ``seq_len``)."""
    from .text import perplexity

    tokens = tokenize(dir, text)
    model = load_causal_lm(dir)
    ppl = perplexity(model, tokens, seq_len=seq_len, batch_size=batch_size, progress=progress)
    return PplResult(str(dir), weight_bytes(dir), int(tokens.numel()), float(ppl))
