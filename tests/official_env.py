"""Build (once, cached) and use the virtual environment that holds the official evaluation tools.

cityscapesScripts' pixel- and instance-level evaluation calls ``np.in1d``, which NumPy 2.4 removed,
so the official tools get their own environment with NumPy < 2 under ``<repo>/.venv-official``
(about 15 s to build the first time; reused while the requirements below are unchanged).
The parity tests call :func:`require_official`, which runs ``tests/official_runner.py`` in that
environment. Without network access it skips those tests, except under CI (``CI`` set), where it
fails.

Run ``python tests/official_env.py`` to build it by hand; it prints the interpreter's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV_DIR = REPO / ".venv-official"
RUNNER = Path(__file__).resolve().parent / "official_runner.py"

# cityscapesscripts is installed without its dependencies: its metadata pulls in `typing`,
# `requests`, matplotlib and more that the evaluation modules never import. These are the ones
# they do import (pyquaternion through helpers/annotation.py).
REQUIREMENTS = (
    "numpy<2",
    "pillow>=9",
    "pyquaternion==0.9.9",
)
NO_DEPS_REQUIREMENTS = ("cityscapesscripts==2.3.0",)

_STAMP = ENV_DIR / ".pdl-post-official-stamp"


def _fingerprint() -> str:
    text = "\n".join((*REQUIREMENTS, "--no-deps", *NO_DEPS_REQUIREMENTS, sys.version))
    return hashlib.sha256(text.encode()).hexdigest()


def _python_path() -> Path:
    return ENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def official_python(*, quiet: bool = True) -> str:
    """Return the interpreter of the official-tools environment, building it if needed.

    Raises
    ------
    RuntimeError
        When the environment cannot be built (e.g. no access to the package index); the
        message carries pip's last lines.
    """
    python = _python_path()
    stamp = _fingerprint()
    if python.exists() and _STAMP.exists() and _STAMP.read_text() == stamp:
        return str(python)
    # Serialise concurrent builds (pytest-xdist, two checkouts' suites) with a lock outside the
    # environment, which "venv --clear" empties.
    lock_name = (
        "pdl-post-official-" + hashlib.sha256(str(ENV_DIR).encode()).hexdigest()[:12] + ".lock"
    )
    with open(os.path.join(tempfile.gettempdir(), lock_name), "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        if python.exists() and _STAMP.exists() and _STAMP.read_text() == stamp:
            return str(python)
        # The base interpreter, not this venv's, so the new environment is independent.
        base = getattr(sys, "_base_executable", sys.executable)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        if quiet:
            pip.append("--quiet")
        for cmd in (
            [base, "-m", "venv", "--clear", "--without-scm-ignore-files", str(ENV_DIR)]
            if sys.version_info >= (3, 13)
            else [base, "-m", "venv", "--clear", str(ENV_DIR)],
            [*pip, *REQUIREMENTS],
            [*pip, "--no-deps", *NO_DEPS_REQUIREMENTS],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
                raise RuntimeError(
                    f"building {ENV_DIR} failed at {' '.join(cmd)!r}: " + " | ".join(tail)
                )
        _STAMP.write_text(stamp)
    return str(python)


def run_official(python: str, request: dict) -> dict:
    """Run one request through official_runner.py (see its docstring); returns its JSON."""
    proc = subprocess.run(
        [python, str(RUNNER)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"official runner failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


_BUILT: dict = {}


def require_official():
    """A function running one request through the official tools (see official_runner.py).

    Builds the environment on first use (cached on disk). When it cannot be built, the calling
    test is skipped, except under CI (``CI`` set), where the error propagates.
    """
    import pytest

    if "python" not in _BUILT:
        try:
            _BUILT["python"] = official_python()
        except RuntimeError as e:
            if os.environ.get("CI"):
                raise
            _BUILT["python"] = e
    python = _BUILT["python"]
    if isinstance(python, Exception):
        pytest.skip(f"official tools unavailable (no package index?): {python}")
    return lambda request: run_official(python, request)


if __name__ == "__main__":
    print(official_python(quiet=False))
