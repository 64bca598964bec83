"""Weight-only layers and LLM decoding speed, side by side with torch and llama.cpp (issue 12).

Part 1, per layer (``--layers``): one linear layer (N x K = out x in) at M rows, 2 threads:
fp32 and bf16 ``F.linear``, torch's ``_weight_int8pack_mm`` (int8 per channel) and
``_weight_int4pack_mm_for_cpu`` (int4, groups of 32 / 128), and cuantiza's ``QuantLinear`` made
the way a user makes it (``QTensor.from_float`` of the float weight with a ``QScheme``: 8-bit
per channel, 4-bit g32 / g128, 3-bit g128, 2-bit g128; asymmetric, float16 scales, as
``cuantiza quantize`` writes them). Variants run round-robin, each round once; tables give the
median and the ratio to fp32 measured in the same rounds. At M <= 16 a weight read once per call
is the whole cost and would sit in the 32 MiB L3 if repeated: each variant rotates over enough
copies of its weight (> 300 MB) that every call reads it from memory, as a model does.
``int8-act`` columns: the same 4-bit layers with generation's int8-activation decode.

Part 2, decoding (``--decode``): a LLaMA of TinyLlama-1.1B's shape with seeded random weights
(``_llamacpp.make_tinyllama_folder``, cached outside the repository), quantized by
``cuantiza quantize`` at 8 bits and at 4 bits (groups of 128, the default, and 32), generating
128 tokens after a 128-token prompt, batch 1, 2 threads, each run in its own process (peak
RSS); side by side, round-robin, with llama.cpp's ``llama-bench -p 128 -n 128 -t 2`` on Q8_0 /
Q4_0 GGUF files of the same weights (the vendored converter + ``llama-quantize``) and with fp32
transformers (``generate``, greedy). cuantiza's 4- and 8-bit layers decode with int8 activations
(generation's default, as llama.cpp's Q4_0 x Q8_0); the g128 folder runs once more with float
activations. Needs a built llama.cpp (``_llamacpp.build()``).

Run: ``python benchmarks/bench_decode.py [--layers] [--decode] [--rounds N]``; writes its
section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _llamacpp  # noqa: E402  (the benchmark folder is on sys.path when run as a script)
import torch
import torch.nn.functional as F
from _results import machine, write_section

import cuantiza as cz
from cuantiza.nn import QuantLinear
from cuantiza.nn.weight_only import WeightOnlyKernel

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))  # (N, K) = (out, in)
MS = (1, 4, 16, 128, 512)
ROTATE_BYTES = 300e6
OURS = {  # name -> scheme, as `cuantiza quantize --bits B --group-size G` writes it
    "cuantiza 8-bit/ch": cz.QScheme(8, False, cz.PerChannel(0), "float16"),
    "cuantiza 4-bit g32": cz.QScheme(4, False, cz.PerGroup(32), "float16"),
    "cuantiza 4-bit g128": cz.QScheme(4, False, cz.PerGroup(128), "float16"),
    "cuantiza 3-bit g128": cz.QScheme(3, False, cz.PerGroup(128), "float16"),
    "cuantiza 2-bit g128": cz.QScheme(2, False, cz.PerGroup(128), "float16"),
}
INT8_ACT = (4, 8)  # widths whose decode has an int8-activation path
OURS_NAMES = tuple(
    n for k, v in OURS.items() for n in (k, k + " int8-act")[: 1 + (v.bits in INT8_ACT)]
)
TORCH = ("fp32", "bf16", "torch int8pack", "torch int4pack g32", "torch int4pack g128")


def _copies(nbytes: float, m: int) -> int:
    """Distinct weight copies to rotate over: enough to defeat the L3 where memory bounds."""
    return max(1, int(ROTATE_BYTES / nbytes) + 1) if m <= 16 else 1


def _torch_variants(n: int, k: int, m: int, x: torch.Tensor, gen) -> dict:
    """name -> calls (one per weight copy) of torch's own paths."""
    out = {}
    ws = [torch.randn(n, k, generator=gen) for _ in range(_copies(4 * n * k, m))]
    out["fp32"] = [lambda w=w: F.linear(x, w) for w in ws]
    xb = x.bfloat16()
    wb = [w.bfloat16() for w in ws[: _copies(2 * n * k, m)]]
    out["bf16"] = [lambda w=w: F.linear(xb, w) for w in wb]
    q8 = [
        (torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8), torch.rand(n))
        for _ in range(_copies(n * k, m))
    ]
    out["torch int8pack"] = [lambda w=w: torch._weight_int8pack_mm(x, w[0], w[1]) for w in q8]
    for g in (32, 128):
        q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.int32)
        packs = [
            (torch._convert_weight_to_int4pack_for_cpu(q, 1), torch.rand(k // g, n, 2))
            for _ in range(_copies(n * k / 2, m))
        ]
        out[f"torch int4pack g{g}"] = [
            lambda p=p, g=g: torch._weight_int4pack_mm_for_cpu(x, p[0], g, p[1]) for p in packs
        ]
    return out


def _our_variants(n: int, k: int, m: int, x: torch.Tensor, gen) -> dict:
    """name -> calls of QuantLinear layers quantized from float weights, as a user does."""
    out = {}
    w = torch.randn(n, k, generator=gen) * 0.02
    for name, scheme in OURS.items():
        qt = cz.QTensor.from_float(w, scheme)
        layers = [QuantLinear(qt) for _ in range(_copies(qt.nbytes, m))]  # each packs its copy
        out[name] = [lambda layer=layer: layer(x) for layer in layers]
        if scheme.bits in INT8_ACT:  # generation's decode: int8 activations below 8 rows
            kernels = [WeightOnlyKernel(qt, int8_decode=True) for _ in layers]
            out[name + " int8-act"] = [lambda k=k: k(x, None) for k in kernels]
    return out


def _measure(variants: dict, rounds: int, per_round: int) -> dict:
    """Round-robin medians (seconds): each round every variant makes ``per_round`` calls on
    successive weight copies. Variants over 1 s a call run 2 rounds only."""
    times, pos, slow = {n: [] for n in variants}, dict.fromkeys(variants, 0), set()
    for name, calls in variants.items():  # warm-up: first touch and packing of every copy
        t = time.perf_counter()
        calls[0]()
        if time.perf_counter() - t > 1.0:
            slow.add(name)
        for f in calls[1:]:
            f()
    for r in range(rounds):
        for name, calls in variants.items():
            if name in slow and r >= 2:
                continue
            for _ in range(per_round):
                f = calls[pos[name] % len(calls)]
                pos[name] += 1
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
    return {n: statistics.median(ts) for n, ts in times.items()}


def layer_table(rounds: int) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    lines = [
        "| N x K (out x in) | M | " + " | ".join(TORCH + OURS_NAMES) + " |",
        "|---|---:|" + "---:|" * (len(TORCH) + len(OURS_NAMES)),
    ]
    for n, k in SHAPES:
        for m in MS:
            x = torch.randn(m, k, generator=gen)
            variants = {**_torch_variants(n, k, m, x, gen), **_our_variants(n, k, m, x, gen)}
            med = _measure(variants, rounds, 8 if m <= 16 else 2)
            fp32 = med["fp32"]
            cells = [f"{1e3 * med[v]:.2f} ms ({fp32 / med[v]:.2f}x)" for v in variants]
            lines.append(f"| {n} x {k} | {m} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
            del variants
    return lines


# ------------------------------------------------------------------------------ decoding
PROMPT, NEW = 128, 128
CUANTIZA_RUNS = {  # variant -> `cuantiza quantize` arguments
    "cuantiza 8-bit g128": ["--bits", "8"],
    "cuantiza 4-bit g128": ["--bits", "4"],
    "cuantiza 4-bit g32": ["--bits", "4", "--group-size", "32"],
}
# the same folder decoded with float activations (int8_activations=False)
FLOAT_ACT = {"cuantiza 4-bit g128, float activations": "cuantiza 4-bit g128"}
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
import cuantiza as cz
from cuantiza.llm.runtime_load import load_runtime

def rss():
    lines = open("/proc/self/status").read().splitlines()
    return next(int(l.split()[1]) * 1024 for l in lines if l.startswith("VmHWM"))

base = rss()
t = time.perf_counter()
rt = load_runtime(sys.argv[1], int8_activations=sys.argv[2] == "int8")
load_s = time.perf_counter() - t
prompt = torch.randint(3, rt.shape.vocab_size, (128,), generator=torch.Generator().manual_seed(0))
g = cz.llm.generate(sys.argv[1], prompt, 128, runtime=rt, stop_at_eos=False)
print(json.dumps({"pp": g.prefill_tokens_per_s, "tg": g.decode_tokens_per_s, "load_s": load_s,
                  "peak_rss": rss(), "base_rss": base, "kv_bytes": rt.new_cache(256).nbytes}))
"""
HF_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
import transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.randint(3, m.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    t = time.perf_counter(); m(ids); pp = time.perf_counter() - t
    t = time.perf_counter()
    m.generate(ids, max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0)
    total = time.perf_counter() - t
print(json.dumps({"pp": 128 / pp, "tg": 127 / max(total - pp, 1e-9)}))
"""


def _child(code: str, folder: Path, activations: str = "int8") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), activations],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _folder_bytes(folder: Path) -> int:
    """Bytes of a folder's safetensors files: the weights as stored."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _prepare_decode() -> tuple[Path, dict, dict]:
    """The float folder, cuantiza's quantized folders, llama.cpp's GGUF files (cached)."""
    tools = _llamacpp.find_tools()
    if tools is None:
        raise SystemExit("llama.cpp's tools are not built: see benchmarks/_llamacpp.py build()")
    src = _llamacpp.make_tinyllama_folder(_llamacpp.TINYLLAMA_DIR)
    ours = {}
    for name, args in CUANTIZA_RUNS.items():
        out = _llamacpp.CACHE / ("tinyllama-" + name.split(" ", 1)[1].replace(" ", "-"))
        if not (out / "cuantiza.json").is_file():
            cmd = ["cuantiza", "quantize", str(src), "-o", str(out), "-q", *args]
            subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], check=True)
        ours[name] = out
    gguf_dir = _llamacpp.CACHE / "tinyllama-bench-gguf"
    ggufs = {
        t: _llamacpp.to_gguf(src, gguf_dir / f"tinyllama-bench-{t}.gguf", t)
        for t in ("Q8_0", "Q4_0")
    }
    return src, ours, ggufs


def decode_table(rounds: int) -> list[str]:
    src, ours, ggufs = _prepare_decode()
    runs: dict[str, list[dict]] = {}
    for r in range(rounds):
        for name, folder in ours.items():
            runs.setdefault(name, []).append(_child(CHILD, folder))
        for name, same in FLOAT_ACT.items():
            runs.setdefault(name, []).append(_child(CHILD, ours[same], "float"))
        for t, path in ggufs.items():
            b = _llamacpp.bench(path, p=PROMPT, n=NEW, threads=2)
            runs.setdefault(f"llama.cpp {t}", []).append(
                {
                    "pp": b["pp"]["avg_ts"],
                    "tg": b["tg"]["avg_ts"],
                    "peak_rss": b["peak_rss_bytes"],
                    "disturbed": b["other_cpu_s"] / max(b["wall_s"], 1e-9),
                }
            )
        if r == 0:  # fp32 transformers: slow (4.4 GB of weights a token); one round
            runs["transformers fp32"] = [_child(HF_CHILD, src)]
        print(f"round {r + 1}: " + json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    return decode_rows(runs, ours, ggufs)


def decode_rows(runs: dict, ours: dict, ggufs: dict) -> list[str]:
    """The table and verdicts from every round's measurements (``runs``: variant -> rounds)."""
    med = {
        k: {f: statistics.median(x[f] for x in v) for f in ("pp", "tg")} for k, v in runs.items()
    }
    lines = [
        "| variant | weight bytes | prompt tokens/s | generate tokens/s | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    sizes = {
        **{k: _folder_bytes(v) for k, v in ours.items()},
        **{k: _folder_bytes(ours[v]) for k, v in FLOAT_ACT.items()},
        **{f"llama.cpp {t}": p.stat().st_size for t, p in ggufs.items()},
        "transformers fp32": 4 * 1_100_048_384,
    }
    for k, v in med.items():
        rss = [x.get("peak_rss") for x in runs[k] if x.get("peak_rss")]
        rss_cell = f"{max(rss) / 2**30:.2f} GiB" if rss else "-"
        lines.append(
            f"| {k} | {sizes[k] / 2**30:.2f} GiB | {v['pp']:.1f} | {v['tg']:.1f} | {rss_cell} |"
        )
    return lines + [""] + _verdicts(med, runs, ours)


def _verdicts(med: dict, runs: dict, ours: dict) -> list[str]:
    q4, q8 = med["llama.cpp Q4_0"]["tg"], med["llama.cpp Q8_0"]["tg"]
    hf = med["transformers fp32"]["tg"]
    out = []
    for name in ("cuantiza 4-bit g32", "cuantiza 4-bit g128"):
        tg = med[name]["tg"]
        out.append(
            f"- {name}: {tg / q4:.2f}x llama.cpp Q4_0's generate tokens/s (target >= 0.8x, "
            f"goal 1.0x), {tg / hf:.1f}x fp32 transformers (target >= 4x)"
        )
    tg8 = med["cuantiza 8-bit g128"]["tg"]
    out.append(f"- cuantiza 8-bit g128: {tg8 / q8:.2f}x llama.cpp Q8_0 (target >= 0.8x)")
    for name, folder in ours.items():
        r = max(runs[name], key=lambda x: x["peak_rss"])
        budget = _folder_bytes(folder) + r["kv_bytes"]
        out.append(
            f"- {name}: peak RSS {r['peak_rss'] / 2**30:.2f} GiB = "
            f"{r['peak_rss'] / budget:.2f}x (weights + KV cache); above the interpreter "
            f"and torch ({r['base_rss'] / 2**30:.2f} GiB): "
            f"{(r['peak_rss'] - r['base_rss']) / budget:.2f}x (target <= 1.3x)"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", action="store_true", help="the per-layer table")
    ap.add_argument("--decode", action="store_true", help="end-to-end decoding vs llama.cpp")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(2)
    both = not (a.layers or a.decode)
    # decoding first: a child process inherits this one's peak RSS at exec (Linux keeps the
    # larger of the two in its rusage), and the layer table grows it by gigabytes
    if a.decode or both:
        rows = decode_table(max(1, a.rounds // 2))
        write_section("bench_decode", _section("Decoding a TinyLlama-shaped LLaMA (prompt 128, "
                                               "generate 128, batch 1)", rows))  # fmt: skip
    if a.layers or both:
        rows = layer_table(a.rounds)
        title = "One weight-only layer (median ms, and speed vs fp32 `F.linear` in the same rounds)"
        write_section("bench_decode_layers", _section(title, rows))


def _section(title: str, rows: list[str]) -> str:
    head = f"## {title} (`bench_decode.py`)"
    return "\n".join([head, "", f"Machine: {machine()}.", "", *rows, ""])


if __name__ == "__main__":
    main()
