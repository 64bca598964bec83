"""Large language models: quantize Hugging Face style checkpoints larger than memory.

``checkpoint.quantize_checkpoint(src, dst, config)`` streams a sharded safetensors checkpoint
tensor by tensor (weight-only methods) into a resumable, atomically published cuantiza save
(``shards`` reads, ``writer`` writes).
"""

# byte-level text and perplexity (``text``): no transformers import here
from .text import VOCAB_SIZE, decode, encode, load_text, perplexity, require_transformers

__all__ = ["VOCAB_SIZE", "encode", "decode", "load_text", "perplexity", "require_transformers"]
