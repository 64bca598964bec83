"""Read Hugging Face style checkpoints tensor by tensor, without loading a shard whole.

``open_checkpoint(dir)`` checks everything up front, before any work (FAULTS 24, 25, 30):
``config.json`` (JSON with ``model_type`` or ``architectures``), the shard files (one
``model.safetensors``, or ``model.safetensors.index.json`` whose ``weight_map`` must match the
shards' own headers exactly) and every shard header (``io.safetensors_file``). A folder
holding only pickle checkpoints (``*.bin``, ``*.pt``) is refused: cuantiza never unpickles.

``Checkpoint.read(name)`` reads exactly one tensor's byte range with ``readinto`` into a fresh
buffer: no mmap of the shard, so the memory held is about that tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CorruptFileError, UnsafeFileError
from ..io.safetensors_file import SafetensorsFile, TensorInfo, read_range

CONFIG, INDEX, SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PRODUCER = "cuantiza"  # quantization_config["producer"] of the folders cuantiza writes


class Checkpoint:
    """A checked Hugging Face style folder: ``config`` (config.json as a dict), shards, tensors."""

    def __init__(self, dir: Path, config: dict, files: dict):
        self.dir = dir
        self.config = config
        self._files = files  # shard name -> SafetensorsFile
        self._infos = {n: i for f in files.values() for n, i in f.infos.items()}

    def names(self) -> list[str]:
        """Every tensor name, shard by shard, in each shard's data order."""
        return list(self._infos)

    def shards(self) -> dict[str, list[str]]:
        """Shard file name -> its tensor names in data order (shards in name order)."""
        return {s: f.names() for s, f in self._files.items()}

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def read(self, name: str) -> torch.Tensor:
        """One tensor, read from its byte range alone."""
        info = self._infos[name]
        return read_range(self.dir / info.shard, info, name)

    @property
    def nbytes(self) -> int:
        """Bytes of all shard files."""
        return sum((self.dir / s).stat().st_size for s in self._files)


def open_checkpoint(dir) -> Checkpoint:
    """A checked checkpoint folder (see the module docstring for what is checked)."""
    d = Path(dir)
    if not d.is_dir():
        raise CorruptFileError(
            f"{d} is not a folder; pass a Hugging Face style model folder "
            f"({CONFIG} + *.safetensors)"
        )
    config = read_config(d / CONFIG)
    if (d / INDEX).is_file():
        files = _indexed_shards(d)
    elif (d / SINGLE).is_file():
        files = {SINGLE: SafetensorsFile(d / SINGLE)}
    else:
        _refuse_missing(d)
    return Checkpoint(d, config, files)


def is_cuantiza_config(quantization_config) -> bool:
    """Whether a config's ``quantization_config`` is the one cuantiza writes into its outputs
    (``checkpoint_units.output_config``): ``"producer": "cuantiza"``."""
    return isinstance(quantization_config, dict) and quantization_config.get("producer") == PRODUCER


def read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptFileError(
            f"{path} is missing; a model folder needs the model's {CONFIG}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from e
    if not isinstance(cfg, dict) or not (cfg.get("model_type") or cfg.get("architectures")):
        raise CorruptFileError(
            f"{path} names no 'model_type' or 'architectures'; it is not a "
            "transformers model config"
        )
    return cfg


def _refuse_missing(d: Path):
    """No safetensors weights: explain (pickle-only folders are refused, never unpickled)."""
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeFileError(
            f"{d} holds only pickle checkpoints ({', '.join(pickles[:4])}); cuantiza never "
            "unpickles "
            "(loading a pickle can run arbitrary code). Convert it to safetensors where you trust "
            "the file, e.g. model.save_pretrained(out, safe_serialization=True)"
        )
    others = sorted(p.name for p in d.glob("*.safetensors"))
    hint = f" (found {', '.join(others[:4])} but no index)" if others else ""
    raise CorruptFileError(
        f"{d} has neither {SINGLE} nor {INDEX}{hint}; save the model with "
        "save_pretrained or add the index"
    )


def _read_index(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from e
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise CorruptFileError(f"{path} has no 'weight_map' of tensor name -> shard file")
    for shard in set(wm.values()):
        if (
            shard != os.path.basename(shard)
            or shard in ("", ".", "..")
            or not shard.endswith(".safetensors")
        ):
            raise UnsafeFileError(
                f"{path} lists the shard {shard!r}: shards must be *.safetensors "
                "files in the model folder itself"
            )
    return wm


def _indexed_shards(d: Path) -> dict:
    """The shards named by the index, each header checked against the weight_map (FAULTS 30)."""
    wm = _read_index(d / INDEX)
    names = sorted(set(wm.values()))
    missing = [s for s in names if not (d / s).is_file()]
    if missing:
        raise CorruptFileError(
            f"{d / INDEX} lists shard(s) that are missing: {', '.join(missing[:5])}"
        )
    files = {s: SafetensorsFile(d / s) for s in names}
    problems = []
    for name, shard in wm.items():
        if name not in files[shard].infos:
            where = [s for s, f in files.items() if name in f.infos]
            problems.append(
                f"{name} (index: {shard}; " + (f"found in {where[0]})" if where else "in no shard)")
            )
    for s, f in files.items():
        problems += [f"{n} (in {s}, not in the index)" for n in f.infos if n not in wm]
        problems += [
            f"{n} (in {s} and in {wm[n]}: stored twice)"
            for n in f.infos
            if n in wm and wm[n] != s and n in files[wm[n]].infos
        ]
    if problems:
        raise CorruptFileError(
            f"{d / INDEX} does not match the shard headers: {len(problems)} tensor(s): "
            f"{'; '.join(problems[:6])}; fix or regenerate the index"
        )
    return files
