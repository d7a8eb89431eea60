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
