"""Style gates: ruff (lint + format) and clang-format must be clean (the team's rules)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY_DIRS = ["python", "tests", "benchmarks", "models"]


def _tool(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    path = str(candidate) if candidate.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(args):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_lint_clean():
    r = _run([_tool("ruff"), "check", *PY_DIRS])
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_clean():
    r = _run([_tool("ruff"), "format", "--check", *PY_DIRS])
    assert r.returncode == 0, r.stdout + r.stderr


def test_clang_format_clean():
    files = [
        os.path.relpath(f, ROOT)
        for pattern in (
            "cpp/include/pdl_post/*.h",
            "cpp/src/*.cpp",
            "cpp/cuda/*.cu",
            "cpp/cuda/*.cuh",
            "src/*.cpp",
            "tests/*.cpp",
        )
        for f in glob.glob(str(ROOT / pattern))
    ]
    r = _run([_tool("clang-format"), "--dry-run", "--Werror", *files])
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_core_stub_lists_what_the_module_has():
    # python/pdl_post/_core.pyi is what type checkers and editors see of the compiled module:
    # every function and class of _core (test hooks included), with CudaMerge's methods, and
    # nothing the module lacks (the CUDA names only in a build with the CUDA path).
    import ast

    from pdl_post import _core

    tree = ast.parse((ROOT / "python" / "pdl_post" / "_core.pyi").read_text())
    stub = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    aliases = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    module = {name for name in dir(_core) if not name.startswith("__")}
    assert sorted(module - set(stub)) == []
    cuda = {"CudaMerge"} | {name for name in stub if "cuda" in name}
    assert sorted(set(stub) - module - (set() if "cuda_device_count" in module else cuda)) == []
    assert aliases == {"DeviceView", "Segments"}
    for name, node in stub.items():
        if isinstance(node, ast.ClassDef) and name in module and not name.startswith("_"):
            methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            public = {m for m in dir(getattr(_core, name)) if not m.startswith("_")}
            assert methods - {"__init__"} == public, name
