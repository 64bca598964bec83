"""What the two checkpoint drivers share: one output unit's manifest parts, the module entries
of quantized weights, the manifest and the run's ``Summary``.

``checkpoint`` (rtn, hqq: tensor by tensor) and ``checkpoint_calibrated`` (gptq, awq: layer by
layer) both write units through ``do_job``, so a weight gives the same bytes by either driver.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__
from ..core.qtensor import QTensor
from ..core.quantize import check_finite
from ..io.saveformat import (
    FORMAT,
    FORMAT_VERSION,
    embedding_entry,
    scheme_to_json,
    weight_entry,
    weight_only_linear_entry,
)
from ..nn.config import QuantConfig
from ..nn.plan import LayerPlan
from ..nn.workflows import (
    quantize_layer_weight,
)  # the in-memory dispatch: same bits as quantize_weights
from .shards import CONFIG, INDEX, PRODUCER, Checkpoint
from .tensorplan import Job

SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)


@dataclass
class Summary:
    """What ``quantize_checkpoint`` did; ``seconds_per_mparam`` covers this run's tensors."""

    src: str
    dst: str
    bytes_in: int = 0
    bytes_out: int = 0
    params: int = 0
    params_run: int = 0  # parameters processed by this run
    quantized: dict = field(default_factory=dict)  # tensor -> scheme
    kept_float: dict = field(default_factory=dict)  # tensor -> reason
    units: int = 0
    units_resumed: int = 0
    seconds: float = 0.0

    @property
    def seconds_per_mparam(self) -> float:
        return self.seconds / max(self.params_run / 1e6, 1e-9)

    def __str__(self) -> str:
        return (
            f"{self.src} -> {self.dst}: {len(self.quantized)} tensors quantized, "
            f"{len(self.kept_float)} "
            f"kept float; {self.bytes_in / 2**20:.1f} MiB -> {self.bytes_out / 2**20:.1f} MiB; "
            f"{self.units} shards ({self.units_resumed} resumed); {self.seconds:.1f} s "
            f"({self.seconds_per_mparam:.3f} s per million parameters)"
        )


class Unit:
    """Collects one unit's manifest parts while its tensors are written."""

    def __init__(self):
        self.modules, self.state, self.layers, self.notes = {}, {}, [], {}
        self.quantized, self.float, self.params, self.bytes_in = {}, {}, 0, 0

    def meta(self) -> dict:
        return dict(self.__dict__)


def add_quantized(
    s,
    name: str,
    qt: QTensor,
    *,
    embedding: bool = False,
    bias: str | None = None,
    padding_idx: int | None = None,
    weight: dict | None = None,
) -> dict:
    """Write the tensors of module ``name``'s quantized weight ``qt`` into the open unit ``s``
    and return its manifest entry (the save format's, ``io.saveformat``): a weight-only
    ``QuantLinear`` (``bias``: the bias' state key) or a ``QuantEmbedding``. With ``weight``
    (another module's weight entry: a tied weight) nothing is written and the entry reuses it."""
    if weight is None:
        tensors: dict = {}
        weight = weight_entry(qt, name, tensors)
        for k, v in tensors.items():
            s.add(k, v)
    if embedding:
        return embedding_entry(weight, padding_idx)
    return weight_only_linear_entry(weight, bias)


def quantized_entry(
    job: Job, t: torch.Tensor | None, s, entries: dict, qts: dict | None = None
) -> dict:
    """Quantize (unless shared, or made already: ``qts`` by module name, e.g. by GPTQ) and
    write one Linear / Embedding weight; its module entry."""
    qt, weight = None, None
    if job.share is not None:
        weight = entries[job.share]["weight"]
    elif qts and job.key in qts:
        qt = qts[job.key]
    else:
        check_finite(t, f"{job.key}.weight")  # FAULTS 1, 2
        qt = quantize_layer_weight(
            t, LayerPlan(job.key, job.layer, job.scheme, None, job.note, job.cfg)
        )
    return add_quantized(
        s,
        job.key,
        qt,
        embedding=job.role == "embedding",
        bias=job.bias,
        padding_idx=job.pad,
        weight=weight,
    )


def do_job(job: Job, name: str, t, s, u: Unit, entries: dict, qts: dict | None = None) -> None:
    if job.role == "alias":
        u.state[job.key] = job.target
    elif job.role in ("float", "bias"):
        s.add(job.key, t.to(torch.float32) if job.role == "bias" else t)
        u.state[job.key] = job.key
    else:
        entries[job.key] = u.modules[job.key] = quantized_entry(job, t, s, entries, qts)
        u.quantized[f"{job.key}.weight"] = job.scheme.describe()
    if job.role in ("float", "bias", "alias"):
        u.float[job.key] = job.note
    if job.note and job.layer and job.role != "float":
        u.notes[job.key.removesuffix(".weight")] = job.note
    if job.layer:
        u.layers.append(
            {
                "name": job.key.removesuffix(".weight"),
                "kind": job.layer,
                "activation": None,
                "weight": None if job.scheme is None else scheme_to_json(job.scheme),
                "reason": job.note,
            }
        )


def output_config(ckpt: Checkpoint, config: QuantConfig) -> bytes:
    """The output's config.json: the input's, plus a ``quantization_config`` naming cuantiza
    (FAULTS 36). It has no ``quant_method`` on purpose: transformers' ``from_pretrained`` then
    raises ("no `quant_method` attribute") instead of building the float model with its
    weights missing. cuantiza's readers drop it (``evaluate.transformers_config``)."""
    cfg = dict(ckpt.config)
    cfg["quantization_config"] = {
        "producer": PRODUCER,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cuantiza_version": __version__,
        "manifest": "cuantiza.json",
        "method": config.method,
        "bits": config.weight.bits,
        "weights": config.weight.describe(),
        "load_with": "cuantiza: cuantiza.load(folder, skeleton), `cuantiza generate`, "
        "`cuantiza eval-ppl`; transformers cannot load this folder",
    }
    return (json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def side_files(ckpt: Checkpoint, config: QuantConfig) -> dict:
    """Files published with the output besides the shards: config.json (``output_config``) and
    the input's tokenizer and generation files, copied."""
    side: dict = {n: ckpt.dir / n for n in SIDE_FILES if (ckpt.dir / n).is_file()}
    side[CONFIG] = output_config(ckpt, config)
    return side


def fingerprint(ckpt: Checkpoint, config: QuantConfig) -> dict:
    """What makes finished shards reusable: the code version, the config, the input files."""
    files = {}
    for name in [CONFIG, INDEX, *ckpt.shards()]:
        p = ckpt.dir / name
        if p.is_file():
            st = p.stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    return {
        "producer": "cuantiza.llm.quantize_checkpoint",
        "cuantiza": __version__,
        "config": repr(config),
        "files": files,
    }


def manifest(ckpt: Checkpoint, metas: list, config: QuantConfig) -> dict:
    merged = {k: {} for k in ("modules", "state", "notes")}
    layers = []
    for m in metas:
        for k in merged:
            merged[k].update(m[k])
        layers += m["layers"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cuantiza_version": __version__,
        "training": False,
        "workflow": "weight_only",
        "folded": [],
        "observers": {},
        "plan": {"workflow": "weight_only", "layers": layers},
        **merged,
        "source": {
            "model_type": ckpt.config.get("model_type"),
            "method": config.method,
            "architectures": ckpt.config.get("architectures"),
        },
    }


def summarize(summary: Summary, metas: list, out: Path, t0: float) -> Summary:
    for m in metas:
        summary.quantized.update(m["quantized"])
        summary.kept_float.update(m["float"])
        summary.params += m["params"]
        summary.bytes_in += m["bytes_in"]
    files = json.loads((out / "cuantiza.json").read_text())["files"]
    summary.bytes_out = sum(f["bytes"] for f in files.values())
    summary.seconds = time.perf_counter() - t0
    return summary
