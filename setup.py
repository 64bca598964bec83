"""Build step for the optional native kernels; all metadata lives in pyproject.toml.

``src/cuantiza/backends/native/*.c`` is plain C (no Python headers) in three libraries loaded
with ctypes: ``_rtn`` (rtn.c and rtn_fused.c, the round-to-nearest passes), ``_gemm`` (gemm.c,
the per-token int8 linear layer) and ``_wo`` (wo.c, the weight-only linear layers at 1-8 bits;
decode.c, a decoder's per-token RMSNorm and rotary steps).
All are *optional* extensions: without a C compiler the install still succeeds and cuantiza
uses its torch paths (``backends.native.rtn.available()`` is then False); the tests in
``tests/backends/`` fail if a compiler exists but a library is missing. The clones below are
rtn.c's; gemm.c and wo.c pick AVX2 or portable C themselves at run time.

Flags: -O3 to vectorize; -fno-math-errno so nearbyintf needs no errno and can become one SIMD
instruction; -ffp-contract=off so no multiply-add is ever fused. Never -ffast-math: the kernels
need IEEE division x / s, NaN checks and round-half-to-even. No -march=native either: the C code
clones its kernels for AVX2 / SSE4.1 / baseline x86-64 and picks one at load time, so a wheel
built on one machine runs on another.
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wno-psabi"]
HEADERS = ["src/cuantiza/backends/native/cz_simd.h", "src/cuantiza/backends/native/cz_constants.h"]

setup(
    ext_modules=[
        Extension(
            "cuantiza.backends.native._rtn",
            sources=[
                "src/cuantiza/backends/native/rtn.c",
                "src/cuantiza/backends/native/rtn_fused.c",
            ],
            depends=HEADERS,
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # The per-token int8 linear layer (gemm.c; it calls rtn.c's per-token quantizer). Its own
        # library, so that a failure here leaves the kernels above working. -fopenmp at compile
        # time only: the GOMP_* symbols stay undefined and bind, when the library is loaded
        # (always after ``import torch``), to the OpenMP runtime torch has loaded, so the layer
        # runs on torch's own worker threads instead of a second pool competing for the cores.
        Extension(
            "cuantiza.backends.native._gemm",
            sources=["src/cuantiza/backends/native/gemm.c", "src/cuantiza/backends/native/rtn.c"],
            depends=HEADERS,
            extra_compile_args=FLAGS + ["-fopenmp"],
            optional=True,
        ),
        # The weight-only linear layers (wo.c): codes repacked once, dequantized exactly in
        # registers (decode) or into a GEMM's B panels (prefill); on torch's threads as _gemm.
        # decode.c: a decoder's small per-token steps (RMSNorm, rotary + cache append).
        Extension(
            "cuantiza.backends.native._wo",
            sources=["src/cuantiza/backends/native/wo.c", "src/cuantiza/backends/native/decode.c"],
            extra_compile_args=FLAGS + ["-fopenmp"],
            optional=True,
        ),
    ]
)
