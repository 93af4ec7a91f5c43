"""The shape of the package: no import cycle, no hidden imports, short functions, replay
independent of the trainer (docs/design.md, "Layout")."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rbd_hpc"
# imported inside a function on purpose: optional dependencies, and mpi4py.MPI, whose import
# initialises MPI (a single-process run must not need it)
LAZY = {"poptorch", "matplotlib", "matplotlib.pyplot", "mpi4py", "torch.utils.tensorboard",
        "fht_cpu"}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("rbd_hpc",) + path.relative_to(PACKAGE).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return out


def package_imports(name: str, tree: ast.Module) -> set[str]:
    """Modules of rbd_hpc that ``name`` imports at module level."""
    found = set()
    package = name if name in ("rbd_hpc", "rbd_hpc.methods") else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("rbd_hpc"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rbd_hpc"))
    return found


def test_no_module_level_import_cycle():
    mods = modules()
    graph = {n: sorted(m for m in package_imports(n, t) if m in mods and m != n)
             for n, t in mods.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " → ".join(path[path.index(m):] + [m])
                            if m in path else f"import cycle through {m}")
            if m not in state:
                visit(m, path + [m])
        state[n] = 2
    for n in graph:
        if n not in state:
            visit(n, [n])


def test_no_function_local_imports_but_optional_dependencies():
    local = []
    for name, tree in modules().items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    local += [f"{name}.{fn.name}: import {a.name}" for a in node.names
                              if a.name not in LAZY]
                elif isinstance(node, ast.ImportFrom) and (node.level or node.module not in LAZY):
                    if (name, fn.name, node.module) == ("rbd_hpc", "__getattr__", None):
                        continue  # PEP 562: rbd_hpc.fit loads the API on first use
                    if (name, fn.name, node.module) == ("rbd_hpc.kernels", "_compiled", None):
                        continue  # numba (0.5 s to import) loads where directions are drawn
                    local.append(f"{name}.{fn.name}: from {'.' * node.level}{node.module}")
    assert local == []


def test_no_function_longer_than_80_lines():
    long = [f"{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
            for name, tree in modules().items() for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_replay_imports_no_training_loop_module():
    code = ("import sys, rbd_hpc.replay; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith('rbd_hpc'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert "rbd_hpc.replay" in loaded and "rbd_hpc.methods.build" in loaded
    trainer = {"rbd_hpc.train", "rbd_hpc.recorder", "rbd_hpc.svrg", "rbd_hpc.cli",
               "rbd_hpc.launch", "rbd_hpc.preemption"}
    assert trainer.isdisjoint(loaded), sorted(trainer & set(loaded))
