"""quantize_checkpoint: weight-only quantization (rtn, hqq) of a Hugging Face checkpoint, streamed.

One tensor at a time is read (``shards.Checkpoint.read``), quantized and written
(``writer.ShardedWriter``), so the memory needed is about the largest tensor, not the model.
Each input shard is one output unit: an interrupted run resumes after the last finished shard
and gives the same bytes. The output folder is a cuantiza save (format 1, several shards)
that ``cuantiza.load(dst, LlamaForCausalLM(config))`` reads, plus the input's tokenizer files
and its ``config.json`` with a ``quantization_config`` naming cuantiza, so that transformers
refuses the folder rather than loading it as a float model with missing weights (FAULTS 36).

What is quantized is decided up front from the shard headers (``tensorplan``): Linear and
Embedding weights of LLaMA-style decoders, each through ``config.resolve(module)`` as in
memory, so the result equals ``cz.quantize_weights`` on the loaded model (same method
dispatch); norms and other tensors are kept unchanged in their dtype. NaN/Inf in a weight
raise ``NonFiniteError`` before it is written; the staging folder is then removed.

Tied embeddings (``tie_word_embeddings`` and no ``lm_head.weight``, or one equal to the
embedding): quantized once, both modules share the weight entry (FAULTS 20); with another
scheme for ``lm_head`` it is quantized twice and the note says "untied". When the embedding
stays float (``quantize_embeddings=False`` or excluded) ``lm_head`` stays float too, still tied
to it (unlike ``cz.quantize_weights``, which would quantize lm_head and untie it).
"""

from __future__ import annotations

import time

from ..errors import ConfigError
from ..nn.config import CALIBRATED_METHODS, QuantConfig
from ..progress import bar
from .checkpoint_units import Summary, Unit, do_job, fingerprint, manifest, side_files, summarize
from .shards import Checkpoint, open_checkpoint
from .tensorplan import plan_checkpoint
from .writer import ShardedWriter


def _run_unit(ckpt: Checkpoint, names: list, jobs: dict, s, entries: dict, pbar) -> dict:
    """Read, quantize and write one input shard's tensors, in their order; returns the unit meta."""
    u = Unit()
    for name in names:
        info = ckpt.info(name)
        needs = any(
            j.role in ("float", "bias") or (j.role in ("linear", "embedding") and j.share is None)
            for j in jobs[name]
        )
        t = ckpt.read(name).contiguous() if needs else None  # FAULTS 21
        for job in jobs[name]:
            do_job(job, name, t, s, u, entries)
        del t
        u.params += info.numel
        u.bytes_in += info.nbytes
        pbar.update(1)
    return u.meta()


def quantize_checkpoint(
    src,
    dst,
    config: QuantConfig = QuantConfig(),
    *,
    calibration=None,
    overwrite: bool = False,
    progress: bool = True,
    **calibration_options,
) -> Summary:
    """Quantize the weights of the Hugging Face style folder ``src`` into the cuantiza save
    ``dst`` (see the module docstring), streaming one tensor at a time; returns a ``Summary``.
    Everything is checked before work starts; nothing partial is ever published at ``dst``.
    GPTQ and AWQ (``config.method``) need ``calibration`` token ids and run one decoder layer
    at a time (``checkpoint_calibrated``; options ``seq_len``, ``n_samples``, ``batch_size``)."""
    if config.method in CALIBRATED_METHODS:
        if calibration is None:
            raise ConfigError(
                f"method {config.method!r} needs calibration token ids (calibration=...)"
            )
        from .checkpoint_calibrated import quantize_checkpoint_calibrated

        return quantize_checkpoint_calibrated(
            src,
            dst,
            config,
            calibration,
            overwrite=overwrite,
            progress=progress,
            **calibration_options,
        )
    t0 = time.perf_counter()
    ckpt = open_checkpoint(src)
    writer = ShardedWriter(
        dst, src=ckpt.dir, fingerprint=fingerprint(ckpt, config), overwrite=overwrite
    )
    jobs = plan_checkpoint(ckpt, config)
    units = {f"shard-{i + 1:05d}": names for i, names in enumerate(ckpt.shards().values())}
    summary = Summary(str(src), str(writer.dst), units=len(units))
    pbar = bar(total=len(jobs), desc="quantize checkpoint", unit="tensor", disable=not progress)
    metas, entries = [], {}
    try:
        with writer as w:
            for unit, names in units.items():
                if w.done(unit):
                    meta = w.unit_meta(unit)
                    summary.units_resumed += 1
                    pbar.update(len(names))
                else:
                    with w.shard(unit) as s:
                        meta = _run_unit(ckpt, names, jobs, s, entries, pbar)
                        s.meta.update(meta)
                    summary.params_run += meta["params"]
                entries.update(meta["modules"])
                metas.append(meta)
            side = side_files(ckpt, config)
            out = w.finish(manifest(ckpt, metas, config), order=list(units), files=side)
    finally:
        pbar.close()
    return summarize(summary, metas, out, t0)
