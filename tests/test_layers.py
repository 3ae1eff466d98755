"""The layer contract (docs/architecture.md), checked over every import in the code, top-level and
inside functions alike, so the layers stay true as the project grows:

    sampler, label_config  <  trainer  <  ml_backend  <  scopeloop  <  scripts (anything but tests)

inside trainer:  io < stats < store < quality < cells < models < reports  (a subpackage imports
only its own layer and those below). No import cycle between modules. Torch only where a model
runs: the torch-free packages import without torch (checked in a fresh interpreter).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"sampler": 0, "label_config": 0, "trainer": 1, "ml_backend": 2, "scopeloop": 3, "scripts": 4, "tests": 5}
TRAINER = {"io": 0, "stats": 1, "store": 2, "quality": 3, "cells": 4, "models": 5, "reports": 6}
# RQ job-name aliases (tests/test_job_names.py): thin re-exports kept for jobs already queued
ALIASES = {"trainer.embedding_jobs"}
TORCH_FREE = ["trainer.io", "trainer.stats", "trainer.store", "trainer.quality", "trainer.cells",
              "sampler", "label_config", "ml_backend.labelstudio", "ml_backend.app", "ml_backend.queue"]
TORCH = ("torch", "torchvision", "timm", "lightly")


def _torch_free(mod: str) -> bool:
    """`trainer` itself and the torch-free packages (a model's subpackage and the aliases aside)."""
    return (mod == "trainer" or any(mod == t or mod.startswith(t + ".") for t in TORCH_FREE)) \
        and not mod.startswith("trainer.models") and mod not in ALIASES


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            out[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (absolute imports)."""
    names: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.Import):
            names.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names.add(n.module)
            names.update(f"{n.module}.{a.name}" for a in n.names)
    return names


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in MODULES.items():
        for name in _imports(path):
            target = _resolve(name)
            if target and target != mod and not mod.startswith(target + "."):  # a package's own __init__
                edges[mod].add(target)
    return edges


EDGES = _edges()


def test_packages_import_only_their_own_layer_and_below():
    up = [f"{m} -> {t}" for m, ts in EDGES.items() for t in ts
          if PACKAGES[t.split(".")[0]] > PACKAGES[m.split(".")[0]]
          or (m.startswith("scripts") and t.startswith("tests"))]
    assert not up, "imports running up the layers:\n" + "\n".join(sorted(up))


def test_trainer_subpackages_import_only_their_own_layer_and_below():
    def layer(mod):
        parts = mod.split(".")
        return TRAINER.get(parts[1]) if parts[0] == "trainer" and len(parts) > 1 else None

    up = [f"{m} -> {t}" for m, ts in EDGES.items() for t in ts
          if m not in ALIASES and layer(m) is not None and layer(t) is not None and layer(t) > layer(m)]
    assert not up, "trainer imports running up its layers:\n" + "\n".join(sorted(up))
    loose = [m for m in MODULES if m.startswith("trainer.") and m.split(".")[1] not in TRAINER and m not in ALIASES]
    assert not loose, f"modules outside trainer's subpackages (add them to one, or to ALIASES): {loose}"


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in EDGES.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for m in MODULES:
        if m not in index and not m.startswith(("tests", "scripts")):
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_torch_free_layers_do_not_name_torch():
    named = [f"{m} imports {n}" for m, p in MODULES.items() if _torch_free(m)
             for n in _imports(p) if n.split(".")[0] in TORCH]
    assert not named, "\n".join(named)


@pytest.mark.parametrize("package", ["trainer"] + TORCH_FREE)
def test_torch_free_packages_import_without_torch(package):
    mods = [m for m in MODULES if (m == package or (package != "trainer" and m.startswith(package + ".")))
            and _torch_free(m)]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "loaded = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'torchvision', 'timm'))\n"
            "print(','.join(loaded[:5]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{package} pulled in torch: {out.stdout.strip()}"
