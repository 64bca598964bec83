"""load: a quantized model back from a cuantiza save, into a float skeleton of its architecture.

Only ``cuantiza.json`` and the safetensors files it lists are opened (never a pickle beside
them); every entry, shape and checksum is checked before the model is touched, and a corrupt,
truncated or changed file raises ``CorruptFileError`` naming it (FAULTS 25). A skeleton whose
module tree (names and classes, parameterless modules included) differs from the one the save
records is refused, naming the difference (FAULTS 40). The skeleton is left as it was: the
result is a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from torch import nn

from ..errors import CorruptFileError, CuantizaError, PlanError, ShapeError
from ..nn.surgery import copy_model, fold_bn_into_conv, get_module, set_module
from ..nn.workflows import QuantInfo
from . import saveformat as fmt
from .saveformat import MANIFEST, TENSORS


def load(dir, model: nn.Module) -> nn.Module:
    """The quantized model saved in ``dir``, built on a copy of ``model`` (a float instance of
    the saved architecture, left untouched). Its outputs are bit-identical to the saved model's.

    Raises CorruptFileError (missing, truncated or corrupt files, unknown format version),
    PlanError / ShapeError (``model`` is not the saved architecture; the message names the
    module or tensor)."""
    if not isinstance(model, nn.Module):
        raise PlanError(
            "load needs a float torch.nn.Module of the saved architecture, "
            f"got {type(model).__name__}"
        )
    folder = Path(dir)
    doc = read_manifest(folder / MANIFEST)
    tensors = _read_all_tensors(folder, doc)
    m = copy_model(model)
    _refold(m, doc["folded"])
    for name, qmod in _rebuild_modules(doc, tensors, folder / MANIFEST):
        try:
            float_mod = get_module(m, name)
        except AttributeError:
            raise PlanError(
                f"{name}: saved quantized module is not in the model; pass an instance "
                "of the saved architecture"
            ) from None
        fmt.check_replaces(name, float_mod, qmod)
        set_module(m, name, qmod)
    _check_tree(m, doc.get("tree"), folder / MANIFEST)
    _load_state(m, doc["state"], tensors)
    m.cuantiza_info = _info(doc, folder / MANIFEST)
    return m.train(bool(doc["training"]))


def _corrupt(path: Path, what: str, err: Exception | None = None) -> CorruptFileError:
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    return CorruptFileError(f"{path}: {what}{why}; save the model again with cz.save")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(
            f"{path} is missing: {path.parent} is not a complete cuantiza save "
            f"(it needs {MANIFEST} and {TENSORS}); save one with cz.save"
        ) from None
    except OSError as e:
        raise _corrupt(path, "cannot be read", e) from e


def read_manifest(path: Path) -> dict:
    """The checked ``cuantiza.json`` at ``path``: format, version and field types; else
    CorruptFileError naming the file."""
    try:
        doc = json.loads(_read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, "is not valid JSON", e) from e
    if not isinstance(doc, dict) or doc.get("format") != fmt.FORMAT:
        raise _corrupt(path, f'is not a {fmt.FORMAT} manifest (no "format": "{fmt.FORMAT}")')
    version = doc.get("format_version")
    if version != fmt.FORMAT_VERSION:
        raise CorruptFileError(
            f"{path}: format version {version!r} is not supported; this cuantiza "
            f"reads version {fmt.FORMAT_VERSION} (upgrade cuantiza or re-save)"
        )
    _check_fields(doc, path)
    return doc


_FIELDS = {
    "files": dict,
    "modules": dict,
    "state": dict,
    "folded": list,
    "notes": dict,
    "training": bool,
}


def verify_files(folder: Path, doc: dict) -> None:
    """Check every tensors file ``doc`` lists against its SHA-256, streaming (no copy in memory);
    CorruptFileError naming the file that is missing or changed."""
    for name in sorted(doc["files"]):
        path = folder / name
        if name != os.path.basename(name) or not path.is_file():
            raise _corrupt(folder / MANIFEST, f"lists {name!r}, which is not a file in its folder")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != doc["files"][name].get("sha256"):
            raise _corrupt(path, f"does not match the checksum in {MANIFEST} (changed or cut)")


def _check_fields(doc: dict, path: Path) -> None:
    """The manifest's top-level fields have the types ``load`` relies on."""
    for key, typ in _FIELDS.items():
        if not isinstance(doc.get(key), typ):
            raise _corrupt(path, f"field {key!r} is missing or not a JSON {typ.__name__}")
    if "plan" not in doc or "workflow" not in doc:
        raise _corrupt(path, "lacks the fields 'plan' and 'workflow'")
    if not all(isinstance(v, str) for v in doc["state"].values()):
        raise _corrupt(path, "field 'state' must map state_dict keys to tensor names")
    if not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p)
        for p in doc["folded"]
    ):
        raise _corrupt(path, "field 'folded' must list [conv, batchnorm] name pairs")


def _read_all_tensors(folder: Path, doc: dict) -> dict:
    """The tensors of every file in ``files``: ``model.safetensors`` or several shards."""
    out = {}
    for name in sorted(doc["files"]) or [TENSORS]:
        if name != os.path.basename(name) or not name.endswith(".safetensors"):
            raise _corrupt(
                folder / MANIFEST, f"lists {name!r}: files must be *.safetensors in its folder"
            )
        part = _read_tensors(folder / name, doc)
        if set(part) & set(out):
            raise _corrupt(
                folder / name,
                f"repeats tensors of another shard ({sorted(set(part) & set(out))[:3]})",
            )
        out.update(part)
    return out


def _read_tensors(path: Path, doc: dict) -> dict:
    """All tensors of one file, read into memory, checked against the manifest's checksum."""
    blob = _read_bytes(path)
    try:
        tensors = load_safetensors_bytes(blob)  # safetensors' own format: no pickle
    except Exception as e:  # noqa: BLE001  (the Rust parser raises its own error types)
        raise _corrupt(path, "is truncated or not a safetensors file", e) from e
    try:
        want = doc["files"][path.name]["sha256"]
    except (KeyError, TypeError) as e:
        raise _corrupt(path.with_name(MANIFEST), "has no checksum for the tensors file", e) from e
    if hashlib.sha256(blob).hexdigest() != want:
        raise _corrupt(path, f"does not match the checksum in {MANIFEST} (changed or half-written)")
    return tensors


def _rebuild_modules(doc: dict, tensors: dict, path: Path) -> list[tuple[str, nn.Module]]:
    """Quantized modules from the manifest, in name order; tied weights share one QTensor."""
    cache, out = {}, []
    for name in sorted(doc["modules"]):
        e = doc["modules"][name]
        try:
            bias = None if e.get("bias") is None else tensors[doc["state"][e["bias"]]]
            out.append((name, fmt.module_from_json(e, tensors, bias, cache)))
        except (CuantizaError, KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise _corrupt(path, f"has a malformed entry for module {name!r}", err) from err
    return out


def _refold(m: nn.Module, folded: list) -> None:
    """Fold the BatchNorms the saved model folded, so the structure (Identity in place of the
    BatchNorm, a bias on the conv) matches; the values come from the saved state."""
    for conv_name, bn_name in folded:
        try:
            conv, bn = get_module(m, conv_name), get_module(m, bn_name)
        except AttributeError:
            raise PlanError(
                f"the save folded a BatchNorm ({bn_name}) into a convolution ({conv_name}), "
                "which the model lacks; pass an instance of the saved architecture"
            ) from None
        is_conv = isinstance(conv, (nn.Conv1d, nn.Conv2d))
        if not is_conv or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise PlanError(
                f"the save folded a BatchNorm ({bn_name}) into a convolution ({conv_name}); "
                f"the model has a {type(bn).__name__} and a {type(conv).__name__} there"
            )
        with torch.no_grad():
            fold_bn_into_conv(conv, bn)
        set_module(m, bn_name, nn.Identity())


def _check_tree(m: nn.Module, saved, path: Path) -> None:
    """PlanError naming the differences when the rebuilt model's modules (names and classes,
    parameterless ones included) are not the saved model's (FAULTS 40). Saves made before the
    tree was recorded, and checkpoint folders, have none: nothing to compare."""
    if saved is None:
        return
    if not isinstance(saved, dict) or not all(isinstance(v, str) for v in saved.values()):
        raise _corrupt(path, "field 'tree' must map module names to class names")
    diff = fmt.tree_differences(saved, fmt.module_tree(m))
    if diff:
        raise PlanError(
            f"the model's modules differ from the saved model's: {'; '.join(diff[:5])}"
            + (f" (and {len(diff) - 5} more)" if len(diff) > 5 else "")
            + "; pass an instance of the saved architecture"
        )


def _load_state(m: nn.Module, state: dict, tensors: dict) -> None:
    """Copy the saved float state into ``m`` after checking keys, shapes and dtypes."""
    want = m.state_dict()
    only_model, only_save = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if only_model or only_save:
        raise PlanError(
            f"the model does not match the save: only in the model {only_model[:5]}, "
            f"only in the save {only_save[:5]}; pass an instance of the saved architecture"
        )
    loaded = {}
    for key, t in want.items():
        src = tensors.get(state[key])
        if src is None:
            raise CorruptFileError(
                f"{TENSORS} lacks {state[key]!r}, listed for {key} in {MANIFEST}"
            )
        if tuple(src.shape) != tuple(t.shape):
            raise ShapeError(
                f"{key}: the model's tensor is {tuple(t.shape)}, the saved one {tuple(src.shape)}"
            )
        if src.dtype != t.dtype:
            raise PlanError(
                f"{key}: the model holds {t.dtype}, the save {src.dtype}; cast the "
                f"model to the saved dtype (model.to(...)) before loading"
            )
        loaded[key] = src
    m.load_state_dict(loaded, strict=True)


def _info(doc: dict, path: Path) -> QuantInfo:
    """``cuantiza_info`` of the loaded model; the plan keeps schemes and reasons, not configs."""
    try:
        plan = fmt.plan_from_json(doc["plan"])
        folded = [tuple(p) for p in doc["folded"]]
        observers = {name: dict(counts) for name, counts in doc.get("observers", {}).items()}
        return QuantInfo(doc["workflow"], plan, dict(doc["notes"]), folded, observers)
    except (CuantizaError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise _corrupt(path, "has a malformed plan, notes or observer counts", err) from err
