"""llama.cpp side of the decode-speed benchmark: tools, a TinyLlama-shaped model, GGUF, timings.

Standalone on purpose (stdlib, torch, tokenizers; never imports cuantiza), so it keeps working
while the package moves. Public functions:

* ``find_tools()`` / ``find_converter()`` locate llama-bench, llama-quantize, llama-perplexity
  and ``convert_hf_to_gguf.py``; ``build()`` builds them (see its docstring for the recipe).
* ``make_tinyllama_folder(path)`` writes a Hugging Face LLaMA folder of TinyLlama-1.1B's shape
  with seeded random weights and a 32000-token tokenizer built here (no hub).
* ``to_gguf(folder, out, "F16" | "Q8_0" | "Q4_0" | ...)`` converts with the vendored converter,
  then quantizes with llama-quantize.
* ``bench(gguf)`` runs llama-bench (prompt and generation tokens/s, peak RSS);
  ``perplexity(gguf, text, ctx)`` runs llama-perplexity and returns its final estimate.
* ``write_synthetic_text(path)`` writes text in the model's pseudo-language (for perplexity).

Everything large lives outside the repository, under ``CACHE`` (default /work/cache,
override with ``CUANTIZA_BENCH_CACHE``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendor/ holds llama.cpp
CACHE = Path(os.environ.get("CUANTIZA_BENCH_CACHE", "/work/cache"))
LLAMA_DIR = CACHE / "llama"
LLAMA_SRC = LLAMA_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
BUILD_DIR = LLAMA_DIR / "build"
TINYLLAMA_DIR = CACHE / "tinyllama-bench"
TOOLS = ("llama-bench", "llama-quantize", "llama-perplexity")

# What the build used: a plain CPU build, -march=native through GGML_NATIVE (on by default),
# OpenMP threads, static libraries (self-contained binaries), no network code; build() then
# makes only the three tools (all of llama.cpp takes far longer on 2 cores).
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
)

# TinyLlama/TinyLlama-1.1B-Chat-v1.0's config.json, but float16 (the original is bfloat16).
TINYLLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pretraining_tp": 1,
    "use_cache": True,
}
SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in LLaMA's SentencePiece vocabulary
FOLDER_FORMAT = 1  # bump when make_tinyllama_folder writes something different


# --- the llama.cpp tools ------------------------------------------------------------------


def build(cache: Path = LLAMA_DIR, jobs: int = 2) -> Path:
    """Download, configure and build the three tools under ``cache``; returns the bin folder.

    The recipe (what produced /work/cache/llama/build; about 10 minutes at nice 19 on 2 cores):

        pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /work/cache/llama
        tar xzf /work/cache/llama/llama_cpp_python-0.3.36.tar.gz -C /work/cache/llama
        cmake -S /work/cache/llama/llama_cpp_python-0.3.36/vendor/llama.cpp \\
              -B /work/cache/llama/build <CMAKE_FLAGS>
        cmake --build /work/cache/llama/build -j2 \\
              --target llama-bench llama-quantize llama-perplexity

    Each step is skipped when its output already exists. Needs cmake and a C++17 compiler.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    src = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    build_dir = cache / "build"
    if not sdist.exists():
        _check(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                "-d",
                str(cache),
            ]
        )
    if not src.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(cache, filter="data")
    if not (build_dir / "CMakeCache.txt").exists():
        _check(["cmake", "-S", str(src), "-B", str(build_dir), *CMAKE_FLAGS])
    _check(["cmake", "--build", str(build_dir), f"-j{jobs}", "--target", *TOOLS])
    return build_dir / "bin"


def find_tools() -> dict[str, Path] | None:
    """Returns {tool name: path} for llama-bench, -quantize and -perplexity, or None (says why).

    Looks in $LLAMA_CPP_BIN, then in BUILD_DIR/bin.
    """
    places = [Path(p) for p in (os.environ.get("LLAMA_CPP_BIN"), BUILD_DIR / "bin") if p]
    for place in places:
        tools = {name: place / name for name in TOOLS}
        if all(os.access(path, os.X_OK) for path in tools.values()):
            return tools
    print(
        f"llama.cpp tools {', '.join(TOOLS)} not found in {' or '.join(map(str, places))}; "
        "set LLAMA_CPP_BIN or build them with benchmarks/_llamacpp.py:build()"
    )
    return None


def find_converter() -> Path | None:
    """Returns the vendored convert_hf_to_gguf.py ($LLAMA_CPP_SRC, then LLAMA_SRC), or None."""
    src = Path(os.environ.get("LLAMA_CPP_SRC", LLAMA_SRC))
    script = src / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    print(f"{script} not found; set LLAMA_CPP_SRC to a llama.cpp checkout or run build()")
    return None


# --- a TinyLlama-shaped Hugging Face folder -----------------------------------------------


def make_tinyllama_folder(
    path: Path = TINYLLAMA_DIR, seed: int = 0, dtype: torch.dtype = torch.float16
) -> Path:
    """Writes (or reuses) a TinyLlama-1.1B-shaped LLaMA folder with random weights; returns it.

    Weights are N(0, 0.02) from ``seed`` (norms are ones): decode speed does not depend on the
    values. The folder holds config.json, generation_config.json, model.safetensors and a
    tokenizer (tokenizer.json + tokenizer_config.json + special_tokens_map.json) of exactly
    ``vocab_size`` tokens. A matching fingerprint.json means the folder is reused as is.
    """
    path = Path(path)
    fingerprint = {
        "format": FOLDER_FORMAT,
        "seed": seed,
        "dtype": str(dtype),
        "config": TINYLLAMA_CONFIG,
    }
    stamp = path / "fingerprint.json"
    if stamp.exists() and json.loads(stamp.read_text()) == fingerprint:
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    config = dict(TINYLLAMA_CONFIG, torch_dtype=str(dtype).removeprefix("torch."))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 2048})
    )
    _write_safetensors(path / "model.safetensors", _llama_tensors(TINYLLAMA_CONFIG), seed, dtype)
    _write_tokenizer(path, TINYLLAMA_CONFIG["vocab_size"], seed)
    stamp.write_text(json.dumps(fingerprint))  # last: a half-written folder is never reused
    return path


def _llama_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Returns the (name, shape) list of a Hugging Face LlamaForCausalLM, in file order."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    layer = [
        ("input_layernorm.weight", (h,)),
        ("self_attn.q_proj.weight", (h, h)),
        ("self_attn.k_proj.weight", (kv, h)),
        ("self_attn.v_proj.weight", (kv, h)),
        ("self_attn.o_proj.weight", (h, h)),
        ("post_attention_layernorm.weight", (h,)),
        ("mlp.gate_proj.weight", (f, h)),
        ("mlp.up_proj.weight", (f, h)),
        ("mlp.down_proj.weight", (h, f)),
    ]
    names = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        names += [(f"model.layers.{i}.{name}", shape) for name, shape in layer]
    return names + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def _write_safetensors(
    file: Path,
    tensors: list[tuple[str, tuple[int, ...]]],
    seed: int,
    dtype: torch.dtype,
    std: float = 0.02,
) -> None:
    """Streams seeded random tensors into one safetensors file, one tensor in memory at a time.

    safetensors.torch.save_file wants every tensor at once (2.2 GB here); the format is just
    an 8-byte header length, a JSON header with byte offsets, then the raw data.
    """
    code = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}[dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        size = itemsize * torch.Size(shape).numel()
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    gen = torch.Generator().manual_seed(seed)
    with open(file, "wb") as out:
        out.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in tensors:
            if name.endswith("norm.weight"):
                t = torch.ones(shape, dtype=dtype)
            else:
                t = (torch.randn(shape, generator=gen) * std).to(dtype)
            out.write(t.view(torch.uint8).numpy().data)


def write_synthetic_text(path: Path, n_words: int = 300_000, seed: int = 0) -> Path:
    """Writes seeded text in a made-up syllabic language (Zipf word frequencies); returns path.

    The tokenizer is trained on it (seed = the model's seed), and it makes cheap
    llama-perplexity input (20 words a line; another seed draws another lexicon, about 3
    tokens a word).
    """
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    syllables = [c + v + e for c in consonants for v in vowels for e in ("", "n", "r", "s", "t")]
    lexicon = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(60_000)})
    rng.shuffle(lexicon)
    words = rng.choices(lexicon, weights=[1 / (i + 1) for i in range(len(lexicon))], k=n_words)
    lines = (" ".join(words[i : i + 20]) for i in range(0, n_words, 20))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def _write_tokenizer(folder: Path, vocab_size: int, seed: int) -> None:
    """Writes a LLaMA-style (SentencePiece-like BPE, byte fallback) tokenizer of vocab_size tokens.

    Same layout as TinyLlama's tokenizer.json: <unk> <s> </s>, then the 256 byte tokens
    <0x00>..<0xFF>, then BPE pieces with "▁" for spaces. The pieces come from a BPE trained
    with the ``tokenizers`` package on write_synthetic_text output, cut to vocab_size; the
    vendored converter reads this through transformers (gguf.LlamaHfVocab), so no
    tokenizer.model and no sentencepiece package are needed.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_synthetic_text(Path(tmp) / "corpus.txt", seed=seed)
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        # Training splits on words (the final tokenizer, like LLaMA's, has no pre-tokenizer).
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        # Line by line, so no piece holds "\n" (newlines stay byte tokens, as in LLaMA).
        bpe.train_from_iterator(
            corpus.read_text().splitlines(),
            trainers.BpeTrainer(
                vocab_size=vocab_size + 1000, special_tokens=list(SPECIALS), show_progress=False
            ),
        )
    trained = json.loads(bpe.to_str())["model"]
    # trained ids: specials, single characters, then one piece per merge in merge order.
    pieces = [
        p for p, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if p not in SPECIALS
    ]
    pieces = pieces[: vocab_size - len(SPECIALS) - 256]
    if len(pieces) + len(SPECIALS) + 256 != vocab_size:
        raise RuntimeError(f"BPE training gave only {len(pieces)} pieces")
    vocab = list(SPECIALS) + [f"<0x{b:02X}>" for b in range(256)] + pieces
    kept = set(vocab)
    merges = [m for m in trained["merges"] if "".join(m) in kept]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(SPECIALS)
        ],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": merges,
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
                "model_max_length": 2048,
                "clean_up_tokenization_spaces": False,
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )


# --- GGUF ---------------------------------------------------------------------------------

# Runs convert_hf_to_gguf.py (argv[1]) with the rest of argv. The converter imports
# sentencepiece before it looks for tokenizer.model, and only a missing file (not a missing
# package) sends it on to tokenizer.json (gguf.LlamaHfVocab), the file our folders have. The
# patch below looks for the file first, so the pinned environment, which has no
# sentencepiece, converts exactly as one with it would.
_RUN_CONVERTER = """
import runpy, sys
from pathlib import Path
script = Path(sys.argv[1])
sys.argv = sys.argv[1:]
# what the script does itself when run directly: its folder, then its own gguf-py, first
sys.path[0:0] = [str(script.parent), str(script.parent / "gguf-py")]
from conversion import base
spm_vocab = base.TextModel._create_vocab_sentencepiece
def _create_vocab_sentencepiece(self):
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError(self.dir_model / "tokenizer.model")
    return spm_vocab(self)
base.TextModel._create_vocab_sentencepiece = _create_vocab_sentencepiece
runpy.run_path(str(script), run_name="__main__")
"""


def to_gguf(
    folder: Path, out_path: Path, type: str = "F16", pure: bool = False, reuse: bool = True
) -> Path:
    """Writes ``folder`` as a GGUF of ``type`` at ``out_path``; returns out_path.

    F32, F16 and BF16 come straight from the vendored convert_hf_to_gguf.py (run with this
    Python); other types (Q8_0, Q4_0, ...) quantize an F16 file, written next to out_path as
    ``<folder name>-F16.gguf``, with llama-quantize. llama-quantize's default mix keeps some
    tensors wider (for Q4_0 the output head is Q6_K); ``pure=True`` passes --pure so every
    matrix gets ``type``. With ``reuse``, an out_path newer than the folder is kept.
    """
    folder, out_path, type = Path(folder), Path(out_path), type.upper()
    stamp = folder / "fingerprint.json"
    if (
        reuse
        and out_path.exists()
        and (not stamp.exists() or out_path.stat().st_mtime >= stamp.stat().st_mtime)
    ):
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")  # renamed once complete
    if type in ("F32", "F16", "BF16"):
        converter = find_converter()
        if converter is None:
            raise FileNotFoundError("convert_hf_to_gguf.py")
        _check(
            [
                sys.executable,
                "-c",
                _RUN_CONVERTER,
                str(converter),
                str(folder),
                "--outfile",
                str(partial),
                "--outtype",
                type.lower(),
            ]
        )
    else:
        tools = find_tools()
        if tools is None:
            raise FileNotFoundError("llama.cpp tools")
        f16 = to_gguf(folder, out_path.with_name(f"{folder.name}-F16.gguf"), "F16", reuse=reuse)
        _check(
            [
                str(tools["llama-quantize"]),
                *(["--pure"] if pure else []),
                str(f16),
                str(partial),
                type,
                str(os.cpu_count() or 1),
            ]
        )
    os.replace(partial, out_path)
    return out_path


# --- running the tools --------------------------------------------------------------------


def bench(
    gguf_path: Path,
    p: int = 128,
    n: int = 128,
    threads: int = 2,
    reps: int = 5,
    extra: tuple[str, ...] = (),
) -> dict:
    """Runs ``llama-bench -p p -n n -t threads -r reps -o json`` on one GGUF file.

    Returns {"pp": {...}, "tg": {...}, "build_commit", "build_number", "backends", "cpu_info",
    "model_type", "model_size", "model_n_params", "n_threads", "file_bytes",
    "peak_rss_bytes", "wall_s", "cpu_s", "other_cpu_s"}, where "pp" (prompt, p tokens) and
    "tg" (generation, n tokens) are {"tokens", "avg_ts", "stddev_ts", "samples_ts"} in tokens
    per second as llama-bench reports them (mean and stddev over reps, after its warm-up
    run), or None when that test was not run (p or n 0). peak_rss_bytes is the llama-bench
    process's maximum resident set; other_cpu_s the CPU seconds every other process used
    meanwhile: more than a few percent of wall_s means the timings were disturbed.
    """
    tools = find_tools()
    if tools is None:
        raise FileNotFoundError("llama.cpp tools")
    cmd = [
        str(tools["llama-bench"]),
        "-m",
        str(gguf_path),
        "-p",
        str(p),
        "-n",
        str(n),
        "-t",
        str(threads),
        "-r",
        str(reps),
        "-o",
        "json",
        *extra,
    ]
    run = _check(cmd)
    rows = json.loads(run.stdout)

    def pick(prompt: int, gen: int) -> dict | None:
        for row in rows:
            if (row["n_prompt"], row["n_gen"]) == (prompt, gen):
                return {
                    "tokens": prompt or gen,
                    "avg_ts": row["avg_ts"],
                    "stddev_ts": row["stddev_ts"],
                    "samples_ts": row.get("samples_ts"),
                }
        return None

    first = rows[0]
    info = {
        k: first.get(k)
        for k in (
            "build_commit",
            "build_number",
            "backends",
            "cpu_info",
            "model_type",
            "model_size",
            "model_n_params",
            "n_threads",
        )
    }
    return {
        "pp": pick(p, 0),
        "tg": pick(0, n),
        **info,
        "file_bytes": Path(gguf_path).stat().st_size,
        "peak_rss_bytes": run.peak_rss_bytes,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "other_cpu_s": run.other_cpu_s,
    }


def perplexity(
    gguf_path: Path, text_file: Path, ctx: int = 512, threads: int = 2, chunks: int | None = None
) -> float:
    """Runs llama-perplexity (non-overlapping windows of ``ctx`` tokens) and returns its final
    estimate, the "Final estimate: PPL = X +/- Y" line. The text must hold at least 2*ctx
    tokens; ``chunks`` caps the number of windows.
    """
    tools = find_tools()
    if tools is None:
        raise FileNotFoundError("llama.cpp tools")
    cmd = [
        str(tools["llama-perplexity"]),
        "-m",
        str(gguf_path),
        "-f",
        str(text_file),
        "-c",
        str(ctx),
        "-t",
        str(threads),
        *(["--chunks", str(chunks)] if chunks else []),
    ]
    run = _check(cmd)
    # The estimate goes to the log (stderr); per-chunk values go to stdout.
    found = re.search(r"Final estimate: PPL = (\S+) \+/- (\S+)", run.stderr + run.stdout)
    if found is None:
        raise RuntimeError("llama-perplexity printed no final estimate:\n" + run.stderr[-2000:])
    return float(found.group(1))


class _Run(NamedTuple):
    stdout: str
    stderr: str
    peak_rss_bytes: int  # the command's own maximum resident set
    wall_s: float
    cpu_s: float  # the command's user + system time
    other_cpu_s: float | None  # CPU time everything else on the machine used meanwhile


def _check(cmd: list[str]) -> _Run:
    """Runs cmd and returns a _Run; raises with the end of stderr when it fails.

    os.wait4 gives the child's own rusage, so the peak RSS is this command's alone (the
    RUSAGE_CHILDREN figure would be the maximum over every child ever waited for).
    other_cpu_s tells whether a timing is trustworthy: on 2 cores, one busy neighbour
    process cuts llama-bench's 2-thread speed several times over.
    """
    busy, start = _busy_cpu_s(), time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy_end = _busy_cpu_s()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}:\n" + stderr[-3000:]
        )
    cpu = usage.ru_utime + usage.ru_stime
    other = None if busy is None or busy_end is None else max(0.0, busy_end - busy - cpu)
    return _Run(stdout, stderr, usage.ru_maxrss * 1024, wall, cpu, other)  # maxrss is in KiB


def _busy_cpu_s() -> float | None:
    """Returns the CPU seconds all cores have spent not idle since boot (from /proc/stat; steal
    time counts as busy: the hypervisor gave it to someone else), or None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
