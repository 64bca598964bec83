"""save / load: a quantized model as a folder of ``model.safetensors`` + ``cuantiza.json``.

>>> import tempfile, torch, cuantiza as cz
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
>>> qm = cz.quantize_weights(net)
>>> out = cz.save(qm, tempfile.mkdtemp() + "/q")
>>> sorted(p.name for p in out.iterdir())
['cuantiza.json', 'model.safetensors']
>>> x = torch.randn(2, 8)
>>> torch.equal(cz.load(out, net)(x), qm(x))       # net is only the skeleton: left as it was
True

``model.safetensors`` holds every tensor: packed weight codes, scales in their storage dtype,
zero points, activation qparams of static layers, and the model's remaining ``state_dict``
(biases, float layers, buffers) under its own keys; a tensor shared by several keys (tied
parameters) is stored once. ``cuantiza.json`` holds the format name and version, the cuantiza
version, the workflow, one entry per quantized module (``saveformat``), the state-key map, the
module tree (every module's name and class, checked by ``load``), the folded BatchNorms, the
notes, observer counts and plan of ``cuantiza_info``, and the SHA-256 of the tensors file.
Nothing is pickled, and ``load`` opens these two files only (or the shards ``files`` lists, for
``cuantiza.llm`` checkpoints): a ``*.bin`` / ``*.pt`` beside them is never read.

Saving is atomic (FAULTS 28-29, ``atomic.publish_folder``): both files are written into a
fresh hidden folder next to the output, fsynced, then moved into place with ``os.replace``; on
any error the temporary folder is removed and a previous save stays intact. Same model -> same
bytes (sorted keys, no timestamps).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from .._version import __version__
from ..errors import OutputExistsError, PlanError
from ..nn.workflows import FAKE, QuantInfo
from . import saveformat as fmt
from .atomic import check_writable, publish_folder
from .saveformat import MANIFEST, TENSORS


def save(qmodel: nn.Module, dir, overwrite: bool = False) -> Path:
    """Write ``qmodel`` (made by a cuantiza workflow) to the folder ``dir``; returns its path.

    An existing non-empty folder is refused (``OutputExistsError``) unless ``overwrite=True``
    and it holds a previous cuantiza save, which is then replaced as a whole."""
    out = Path(os.path.abspath(dir))
    check_output_folder(out, overwrite)
    tensors, doc = _payload(qmodel)
    blob = safetensors.torch.save(tensors)
    doc["files"] = {TENSORS: {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}
    text = json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n"
    publish_folder(out, {TENSORS: blob, MANIFEST: text.encode("ascii")})
    return out


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse a file, a non-empty folder (without ``overwrite``) or, even with it, a folder that
    is not a cuantiza save: replacing it would delete someone's files (say ``save(qm, ".")``)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; save needs a folder path")
    check_writable(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    if not (out / MANIFEST).is_file():
        raise OutputExistsError(
            f"{out} is not a cuantiza save (no {MANIFEST}); overwrite=True only "
            "replaces a previous save: choose a new or empty folder"
        )


def _quant_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every quantized module; refuses models still being prepared."""
    types = tuple(cls for cls, _ in fmt.MODULE_TYPES.values())
    found = []
    for name, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, FAKE) and (mod.fake_quant or mod.observing):
            raise PlanError(f"{name} is a fake-quant module: call cz.convert() before saving")
        if isinstance(mod, types):
            if not name:
                raise PlanError("the model itself is a quantized layer: save a model containing it")
            if type(mod) not in types:
                raise PlanError(
                    f"{name}: cannot save {type(mod).__name__}, a subclass of a cuantiza module"
                )
            found.append((name, mod))
    return found


def _state_map(model: nn.Module, tensors: dict) -> dict:
    """state_dict key -> stored name; tensors shared by several keys are stored once."""
    seen, out = {}, {}
    for key, t in model.state_dict(keep_vars=False).items():
        ident = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.device)
        if ident not in seen:
            seen[ident] = key
            tensors[key] = t
        out[key] = seen[ident]
    return out


def _payload(qmodel: nn.Module) -> tuple[dict, dict]:
    """(contiguous CPU tensors by name, the JSON document without checksums)."""
    tensors, shared, modules = {}, {}, {}
    for name, mod in _quant_modules(qmodel):
        modules[name] = fmt.module_to_json(name, mod, tensors, shared)
    doc = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "cuantiza_version": __version__,
        "training": qmodel.training,
        "modules": modules,
        "state": _state_map(qmodel, tensors),
        "tree": fmt.module_tree(qmodel),
        **_info_to_json(getattr(qmodel, "cuantiza_info", None)),
    }
    flat = {
        k: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for k, t in tensors.items()
    }  # contiguous, unshared (FAULTS 21)
    return flat, doc


def _info_to_json(info: QuantInfo | None) -> dict:
    """The manifest fields kept from ``cuantiza_info`` (all empty for a hand-built model)."""
    observers = getattr(info, "observers", None) or {}
    return {
        "workflow": getattr(info, "workflow", None),
        "folded": [list(p) for p in getattr(info, "folded", [])],
        "notes": dict(getattr(info, "notes", {})),
        "observers": {name: {k: int(v) for k, v in c.items()} for name, c in observers.items()},
        "plan": fmt.plan_to_json(getattr(info, "plan", None)),
    }


# ----------------------------------------------------------------------------------- load
