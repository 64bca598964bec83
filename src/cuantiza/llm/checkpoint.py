"""quantize_checkpoint: weight-only quantization (rtn, hqq) of a Hugging Face checkpoint, streamed.

One tensor at a time is read (``shards.Checkpoint.read``), quantized and written
(``writer.ShardedWriter``), so the memory needed is about the largest tensor, not the model.
Each input shard is one output unit: an interrupted run resumes after the last finished shard
and gives the same bytes. The output folder is a cuantiza save (format 1, several shards)
that ``cuantiza.load(dst, LlamaForCausalLM(config))`` reads, plus the input's ``config.json``
and tokenizer files.

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

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..nn.config import CALIBRATED_METHODS, QuantConfig
from ..errors import ConfigError
from ..nn import QuantLinear
from ..core.quantize import check_finite
from ..nn.plan import LayerPlan
from ..progress import bar
from ..core.qtensor import QTensor
from ..io.saveformat import FORMAT, FORMAT_VERSION, module_to_json, scheme_to_json
from ..nn.workflows import _quantize_weight          # the in-memory dispatch: same bits as quantize_weights
from .shards import CONFIG, INDEX, Checkpoint, open_checkpoint
from .tensorplan import Job, plan_checkpoint
from .writer import ShardedWriter

SIDE_FILES = (CONFIG, "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
              "chat_template.json", "chat_template.jinja")


@dataclass
class Summary:
    """What ``quantize_checkpoint`` did; ``seconds_per_mparam`` covers this run's tensors."""
    src: str
    dst: str
    bytes_in: int = 0
    bytes_out: int = 0
    params: int = 0
    params_run: int = 0                                  # parameters processed by this run
    quantized: dict = field(default_factory=dict)        # tensor -> scheme
    kept_float: dict = field(default_factory=dict)       # tensor -> reason
    units: int = 0
    units_resumed: int = 0
    seconds: float = 0.0

    @property
    def seconds_per_mparam(self) -> float:
        return self.seconds / max(self.params_run / 1e6, 1e-9)

    def __str__(self) -> str:
        return (f"{self.src} -> {self.dst}: {len(self.quantized)} tensors quantized, {len(self.kept_float)} "
                f"kept float; {self.bytes_in / 2**20:.1f} MiB -> {self.bytes_out / 2**20:.1f} MiB; "
                f"{self.units} shards ({self.units_resumed} resumed); {self.seconds:.1f} s "
                f"({self.seconds_per_mparam:.3f} s per million parameters)")


class _Unit:
    """Collects one unit's manifest parts while its tensors are written."""

    def __init__(self):
        self.modules, self.state, self.layers, self.notes = {}, {}, [], {}
        self.quantized, self.float, self.params, self.bytes_in = {}, {}, 0, 0

    def meta(self) -> dict:
        return dict(self.__dict__)


def add_quantized(s, name: str, qt: QTensor, *, embedding: bool = False, bias: str | None = None,
                  padding_idx: int | None = None, weight: dict | None = None) -> dict:
    """Write the tensors of module ``name``'s quantized weight ``qt`` into the open unit ``s``
    and return its manifest entry, exactly what ``saveformat.module_to_json`` gives for
    ``QuantLinear(qt, bias=None, act=None)`` (``bias``: the bias' state key) or
    ``QuantEmbedding(qt, padding_idx)``. With ``weight`` (another module's weight entry: a
    tied weight) nothing is written and the entry reuses it."""
    if weight is None:
        tensors = {}
        weight = module_to_json(name, QuantLinear(qt), tensors, {})["weight"]
        for k, v in tensors.items():
            s.add(k, v)
    if embedding:
        return {"type": "QuantEmbedding", "weight": weight, "padding_idx": padding_idx}
    return {"type": "QuantLinear", "weight": weight, "bias": bias, "kernel": "dequantize", "act": None}


def _quantized_entry(job: Job, t: torch.Tensor | None, s, entries: dict, qts: dict | None = None) -> dict:
    """Quantize (unless shared, or made already: ``qts`` by module name, e.g. by GPTQ) and
    write one Linear / Embedding weight; its module entry."""
    qt, weight = None, None
    if job.share is not None:
        weight = entries[job.share]["weight"]
    elif qts and job.key in qts:
        qt = qts[job.key]
    else:
        check_finite(t, f"{job.key}.weight")                  # FAULTS 1, 2
        qt = _quantize_weight(t, LayerPlan(job.key, job.layer, job.scheme, None, job.note, job.cfg))
    return add_quantized(s, job.key, qt, embedding=job.kind == "embedding", bias=job.bias,
                         padding_idx=job.pad, weight=weight)


def _do_job(job: Job, name: str, t, s, u: _Unit, entries: dict, qts: dict | None = None) -> None:
    if job.kind == "alias":
        u.state[job.key] = job.target
    elif job.kind in ("float", "bias"):
        s.add(job.key, t.to(torch.float32) if job.kind == "bias" else t)
        u.state[job.key] = job.key
    else:
        entries[job.key] = u.modules[job.key] = _quantized_entry(job, t, s, entries, qts)
        u.quantized[f"{job.key}.weight"] = job.scheme.describe()
    if job.kind in ("float", "bias", "alias"):
        u.float[job.key] = job.note
    if job.note and job.layer and job.kind != "float":
        u.notes[job.key.removesuffix(".weight")] = job.note
    if job.layer:
        u.layers.append({"name": job.key.removesuffix(".weight"), "kind": job.layer, "activation": None,
                         "weight": None if job.scheme is None else scheme_to_json(job.scheme),
                         "reason": job.note})


def _run_unit(ckpt: Checkpoint, names: list, jobs: dict, s, entries: dict, pbar) -> dict:
    """Read, quantize and write one input shard's tensors, in their order; returns the unit meta."""
    u = _Unit()
    for name in names:
        info = ckpt.info(name)
        needs = any(j.kind in ("float", "bias") or (j.kind in ("linear", "embedding") and j.share is None)
                    for j in jobs[name])
        t = ckpt.read(name).contiguous() if needs else None         # FAULTS 21
        for job in jobs[name]:
            _do_job(job, name, t, s, u, entries)
        del t
        u.params += info.numel
        u.bytes_in += info.nbytes
        pbar.update(1)
    return u.meta()


def _fingerprint(ckpt: Checkpoint, config: QuantConfig) -> dict:
    """What makes finished shards reusable: the code version, the config, the input files."""
    from .. import __version__
    files = {}
    for name in [CONFIG, INDEX, *ckpt.shards()]:
        p = ckpt.dir / name
        if p.is_file():
            st = p.stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"producer": "cuantiza.llm.quantize_checkpoint", "cuantiza": __version__,
            "config": repr(config), "files": files}


def _manifest(ckpt: Checkpoint, metas: list, config: QuantConfig) -> dict:
    from .. import __version__
    merged = {k: {} for k in ("modules", "state", "notes")}
    layers = []
    for m in metas:
        for k in merged:
            merged[k].update(m[k])
        layers += m["layers"]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "cuantiza_version": __version__,
            "training": False, "workflow": "weight_only", "folded": [], "observers": {},
            "plan": {"workflow": "weight_only", "layers": layers}, **merged,
            "source": {"model_type": ckpt.config.get("model_type"), "method": config.method,
                       "architectures": ckpt.config.get("architectures")}}


def quantize_checkpoint(src, dst, config: QuantConfig = QuantConfig(), *, calibration=None,
                        overwrite: bool = False, progress: bool = True, **calibration_options) -> Summary:
    """Quantize the weights of the Hugging Face style folder ``src`` into the cuantiza save
    ``dst`` (see the module docstring), streaming one tensor at a time; returns a ``Summary``.
    Everything is checked before work starts; nothing partial is ever published at ``dst``.
    GPTQ and AWQ (``config.method``) need ``calibration`` token ids and run one decoder layer
    at a time (``checkpoint_calibrated``; options ``seq_len``, ``n_samples``, ``batch_size``)."""
    if config.method in CALIBRATED_METHODS:
        if calibration is None:
            raise ConfigError(f"method {config.method!r} needs calibration token ids (calibration=...)")
        from .checkpoint_calibrated import quantize_checkpoint_calibrated
        return quantize_checkpoint_calibrated(src, dst, config, calibration, overwrite=overwrite,
                                              progress=progress, **calibration_options)
    t0 = time.perf_counter()
    ckpt = open_checkpoint(src)
    writer = ShardedWriter(dst, src=ckpt.dir, fingerprint=_fingerprint(ckpt, config), overwrite=overwrite)
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
            side = {n: ckpt.dir / n for n in SIDE_FILES if (ckpt.dir / n).is_file()}
            out = w.finish(_manifest(ckpt, metas, config), order=list(units), files=side)
    finally:
        pbar.close()
    return _summarize(summary, metas, out, t0)


def _summarize(summary: Summary, metas: list, out: Path, t0: float) -> Summary:
    for m in metas:
        summary.quantized.update(m["quantized"])
        summary.kept_float.update(m["float"])
        summary.params += m["params"]
        summary.bytes_in += m["bytes_in"]
    files = json.loads((out / "cuantiza.json").read_text())["files"]
    summary.bytes_out = sum(f["bytes"] for f in files.values())
    summary.seconds = time.perf_counter() - t0
    return summary
