"""The layout is the architecture: data flows one way between the subpackages, no module
imports another's private names, there are no import cycles, and the numeric core never
touches a model. Read from the source with ``ast``, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cuantiza"

# Each part may import only parts of a lower rank (and itself). Leaves first, the command last.
RANK = {
    "constants": 0,
    "errors": 0,
    "_version": 0,
    "progress": 0,
    "backends": 1,  # kernels: torch references and native C, one table
    "core": 2,  # schemes, qparams, blocking, ranges, observers, packing, QTensor
    "algorithms": 3,  # weight methods: rtn, hqq, gptq, awq, smoothquant
    "nn": 4,  # quantized / fake-quant modules, config, plan, surgery, workflows
    "io": 5,  # save format, save / load, atomic publishing
    "report": 6,
    "onnx": 6,
    "llm": 6,
    "cli": 7,
    "(root)": 8,  # cuantiza/__init__.py: the public API
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (path, is a package)."""
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every cuantiza import of ``name``."""
    path, is_pkg = MODULES[name]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "cuantiza":
                found += [(target, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "cuantiza"
            ]
    return found


def _module_of(target: str, attr: str) -> str:
    """The module an import reads: ``target.attr`` where that is a module, else ``target``."""
    return f"{target}.{attr}" if f"{target}.{attr}" in MODULES else target


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_every_part_has_a_rank():
    assert {_part(m) for m in MODULES} == set(RANK)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_flow_downwards(name):
    """A part imports only from parts of lower rank: core never imports upward."""
    here = _part(name)
    for target, attr, line in _imports(name):
        there = _part(_module_of(target, attr))
        assert there == here or RANK[there] < RANK[here], (
            f"{name}:{line} imports {target} ({there}, rank {RANK[there]}) "
            f"from {here} (rank {RANK[here]})"
        )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_across_modules(name):
    for target, attr, line in _imports(name):
        if _module_of(target, attr) != target:  # a module, imported by name
            continue
        assert not (attr.startswith("_") and attr != "__version__"), (
            f"{name}:{line} imports {target}.{attr}"
        )


def test_no_import_cycles():
    graph = {m: {_module_of(t, a) for t, a, _ in _imports(m)} - {m} for m in MODULES}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("part", ["core", "backends"])
def test_numeric_layers_never_touch_models(part):
    """The core and the kernels work on tensors: no torch.nn modules (torch.nn.functional is
    an op library, allowed)."""
    for name in (m for m in MODULES if _part(m) == part):
        text = MODULES[name][0].read_text()
        for bad in ("from torch import nn", "import torch.nn as nn", "nn.Module", "named_modules"):
            assert bad not in text, f"{name} uses {bad!r}"
