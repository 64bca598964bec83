"""Large language models: quantize Hugging Face style checkpoints larger than memory.

``checkpoint.quantize_checkpoint(src, dst, config)`` streams a sharded safetensors checkpoint
tensor by tensor (weight-only methods) into a resumable, atomically published cuantiza save
(``shards`` reads, ``writer`` writes).
"""
