"""GPTQ / AWQ on a checkpoint folder, one decoder layer in memory at a time.

The model is built from ``config.json`` on the ``meta`` device (no memory); the embedding is
loaded, the first layer's inputs captured on the calibration windows, and then each decoder
layer is loaded from the shards, calibrated and quantized exactly as ``calibrated`` does in
memory, written as one output unit, and dropped back to ``meta``. The head (final norm,
``lm_head``, the embedding and every tensor outside the layers) is the last unit. Peak memory
is one layer, the embedding and the calibration hidden states, not the model.

Each finished unit keeps the hidden states it produced (a staging side file, never published),
so an interrupted run resumes at the next layer and gives the same bytes. Float tensors keep
their dtype; with AWQ the norms that absorbed the scales are stored in that dtype too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import torch
from torch import nn

from ..errors import CalibrationError, PlanError
from ..nn.config import QuantConfig
from ..nn.plan import LayerPlan
from ..progress import bar
from .blocks import Decoder, decoder_parts, first_layer_inputs, layer_groups, run_layer
from .calibrated import awq_group, calibration_batches, gptq_group, head_awq, head_gptq
from .checkpoint_units import Summary, Unit, do_job, fingerprint, manifest, side_files, summarize
from .shards import Checkpoint, open_checkpoint
from .tensorplan import plan_checkpoint
from .writer import ShardedWriter


def _skeleton(ckpt: Checkpoint) -> Decoder:
    """The model on ``meta`` with a real rotary embedding (its buffers are computed, not saved)."""
    from .evaluate import transformers_config
    from .text import require_transformers

    cfg = transformers_config(ckpt.dir)
    with torch.device("meta"):
        model = require_transformers().AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    rot = getattr(model.model, "rotary_emb", None)
    if rot is not None:
        model.model.rotary_emb = type(rot)(config=model.config)
    return decoder_parts(model.eval())


def _materialize(mod: nn.Module, prefix: str, ckpt: Checkpoint) -> None:
    """Give ``mod`` (on meta) its float32 weights from the checkpoint."""
    mod.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in mod.named_parameters():
            key = f"{prefix}.{name}"
            if key not in ckpt.names():
                raise PlanError(
                    f"{ckpt.dir}: the checkpoint lacks {key}, which config.json's architecture has"
                )
            p.copy_(ckpt.read(key).to(torch.float32))


def _layer_plans(jobs: dict) -> dict:
    """module name -> LayerPlan of every quantized (not shared) Linear/Embedding job: what the
    in-memory ``plan`` gives, so the block methods see the same schemes."""
    out = {}
    for js in jobs.values():
        for j in js:
            if j.role in ("linear", "embedding") and j.share is None:
                out[j.key] = LayerPlan(j.key, j.layer, j.scheme, None, j.note, j.cfg)
    return out


def _write(s, ckpt, names, jobs, tensors: dict, qts: dict, entries: dict) -> dict:
    """Write the tensors ``names`` (current float32 values in ``tensors``) into unit ``s``:
    quantized weights from ``qts`` (GPTQ) or rounded to nearest from the float32 value (AWQ's
    scaled weights), float tensors back in their stored dtype; the unit meta."""
    u = Unit()
    for name in names:
        info = ckpt.info(name)
        raw = tensors[name].contiguous() if name in tensors else None
        for job in jobs[name]:
            quantized = job.role in ("linear", "embedding")
            t = raw if quantized or raw is None else raw.to(info.dtype)
            do_job(job, name, t, s, u, entries, qts)
        u.params += info.numel
        u.bytes_in += info.nbytes
    return u.meta()


def _values(mod: nn.Module, prefix: str, names: list) -> dict:
    """checkpoint name -> the module's current tensor, for names under ``prefix``."""
    state = {f"{prefix}.{k}" if prefix else k: v.detach() for k, v in mod.state_dict().items()}
    return {n: state[n] for n in names if n in state}


def _run_layer_unit(i, dec, ckpt, jobs, plans, config, hidden, kwargs, s, entries) -> list:
    layer, prefix = dec.layers[i], f"{dec.prefix}.{i}"
    _materialize(layer, prefix, ckpt)
    qts, options = {}, dict(config.method_options)
    for names, prev in layer_groups(layer):
        if config.method == "gptq":
            qts.update(gptq_group(layer, names, hidden, kwargs, plans, prefix, options))
        else:
            awq_group(layer, names, prev, hidden, kwargs, plans, prefix, options)
    own = [n for n in ckpt.names() if n.startswith(prefix + ".")]
    s.meta.update(_write(s, ckpt, own, jobs, _values(layer, prefix, own), qts, entries))
    hidden = run_layer(layer, hidden, kwargs)
    s.extras["hidden"] = torch.stack(hidden)
    layer.to("meta")
    return hidden


def _run_head_unit(dec, ckpt, jobs, plans, config, hidden, s, entries) -> None:
    options = dict(config.method_options)
    _materialize(dec.norm, "model.norm", ckpt)
    if "lm_head.weight" in ckpt.names():
        _materialize(dec.lm_head, "lm_head", ckpt)
    else:
        dec.lm_head.weight = dec.embed.weight  # tied in the file: one tensor
    qts = head_gptq(dec, hidden, plans, options) if config.method == "gptq" else {}
    if config.method == "awq":
        head_awq(dec, hidden, plans, options)
    rest = [n for n in ckpt.names() if not n.startswith(dec.prefix + ".")]
    tensors = _values(dec.model, "", rest)
    s.meta.update(_write(s, ckpt, rest, jobs, tensors, qts, entries))


def _check_ids(batches: list, ckpt: Checkpoint) -> None:
    """CalibrationError naming the first batch holding an id outside the vocabulary (the
    embedding would fail on it, deep inside torch, after work had started)."""
    vocab = ckpt.config.get("vocab_size")
    for i, b in enumerate(batches):
        lo, hi = int(b.min()), int(b.max())
        if lo < 0 or (isinstance(vocab, int) and hi >= vocab):
            raise CalibrationError(
                f"calibration batch {i} holds token id {lo if lo < 0 else hi}, outside the "
                f"model's vocabulary 0..{vocab - 1 if isinstance(vocab, int) else '?'}; "
                "tokenize with the model's own tokenizer"
            )


def _calibration_id(batches: list) -> str:
    h = hashlib.sha256()
    for b in batches:
        h.update(b.numpy().tobytes())
    return h.hexdigest()


def _rtn_jobs(ckpt: Checkpoint, config: QuantConfig) -> dict:
    """The checkpoint's tensor jobs planned as for rtn: the calibrated method replaces the
    rounding of the decoder layers' weights, and the rest (embedding, head) rounds to nearest."""
    jobs = plan_checkpoint(ckpt, dataclasses.replace(config, method="rtn"))
    rtn = lambda j: dataclasses.replace(j, cfg=dataclasses.replace(j.cfg, method="rtn"))
    return {n: [rtn(j) if j.cfg else j for j in js] for n, js in jobs.items()}


def quantize_checkpoint_calibrated(
    src,
    dst,
    config: QuantConfig,
    calibration,
    *,
    overwrite: bool = False,
    progress: bool = True,
    seq_len: int = 256,
    n_samples: int = 128,
    batch_size: int = 8,
) -> Summary:
    """GPTQ or AWQ (``config.method``) from the folder ``src`` into the cuantiza save ``dst``,
    one decoder layer at a time (module docstring); ``calibration``: token ids."""
    t0 = time.perf_counter()
    ckpt = open_checkpoint(src)
    batches = calibration_batches(calibration, seq_len, n_samples, batch_size)
    _check_ids(batches, ckpt)
    fp = {**fingerprint(ckpt, config), "calibration": _calibration_id(batches)}
    writer = ShardedWriter(dst, src=ckpt.dir, fingerprint=fp, overwrite=overwrite)
    jobs = _rtn_jobs(ckpt, config)
    plans = _layer_plans(jobs)
    dec = _skeleton(ckpt)
    _materialize(dec.embed, "model.embed_tokens", ckpt)
    units = [f"layer-{i:05d}" for i in range(len(dec.layers))] + ["head"]
    summary = Summary(str(src), str(writer.dst), units=len(units))
    metas, entries = [], {}
    hidden, kwargs = first_layer_inputs(dec, batches)  # the embedding only: cheap
    pbar = bar(
        total=len(units), desc=f"{config.method} checkpoint", unit="unit", disable=not progress
    )
    with writer as w:
        for k, unit in enumerate(units):
            if w.done(unit):
                meta = w.unit_meta(unit)
                if unit != "head":
                    hidden = list(w.unit_tensors(unit)["hidden"].unbind(0))
                summary.units_resumed += 1
            else:
                with w.shard(unit) as s:
                    if unit == "head":
                        _run_head_unit(dec, ckpt, jobs, plans, config, hidden, s, entries)
                    else:
                        hidden = _run_layer_unit(
                            k, dec, ckpt, jobs, plans, config, hidden, kwargs, s, entries
                        )
                    meta = dict(s.meta)
                summary.params_run += meta["params"]
            entries.update(meta["modules"])
            metas.append(meta)
            pbar.update(1)
        side = side_files(ckpt, config)
        doc = manifest(ckpt, metas, config)
        out = w.finish(doc, files=side)
    pbar.close()
    return summarize(summary, metas, out, t0)
