"""The build's CUDA decision (cmake/PdlPostCuda.cmake), run with ``cmake -P`` on stand-in compilers.

PDL_POST_CUDA=AUTO must give a CPU-only build, with the reason in build_info()["cuda"], when nvcc
is missing, too old or unable to build any requested architecture, and drop (with a warning) the
architectures it cannot build; PDL_POST_CUDA=ON must stop with an error that says what to change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
DEFAULT = "75-real;80-real;90-real;90-virtual"
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH")

NVCC_13 = ("13.0", ["75", "80", "86", "87", "88", "89", "90", "100", "110", "103", "120", "121"])


@pytest.fixture
def nvcc(tmp_path):
    """A stand-in nvcc answering --version and --list-gpu-arch as the given release would."""

    def make(release: str | None, archs: list[str] | None) -> str:
        path = tmp_path / f"nvcc-{release}-{len(archs or [])}"
        version = (
            f"echo 'Cuda compilation tools, release {release}, V{release}.1'"
            if release
            else "exit 1"
        )
        listing = (
            "printf '" + "\\n".join(f"compute_{a}" for a in archs) + "\\n'" if archs else "exit 1"
        )
        path.write_text(
            "#!/bin/sh\n"
            f'case "$1" in\n  --version) {version};;\n  --list-gpu-arch) {listing};;\n'
            "  *) exit 2;;\nesac\n"
        )
        path.chmod(0o755)
        return str(path)

    return make


def decide(mode: str, compiler: str, requested: str = DEFAULT, rejected: str = ""):
    """-> (exit status, {"enabled", "archs", "why"} or None, stdout + stderr)."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "decide.cmake"
        script.write_text(
            f'include("{ROOT / "cmake" / "PdlPostCuda.cmake"}")\n'
            'pdl_post_decide_cuda("${MODE}" "${COMPILER}" "${REJECTED}" "${REQUESTED}"\n'
            "                     enabled archs why)\n"
            'message(STATUS "RESULT|${enabled}|${archs}|${why}")\n'
        )
        command = [CMAKE, f"-DMODE={mode}", f"-DCOMPILER={compiler}"]
        command += [f"-DREQUESTED={requested}", f"-DREJECTED={rejected}", "-P", str(script)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    text = run.stdout + run.stderr
    for line in run.stdout.splitlines():
        if "RESULT|" in line:
            enabled, archs, why = line.split("RESULT|", 1)[1].split("|")
            return run.returncode, {"enabled": enabled, "archs": archs, "why": why}, text
    return run.returncode, None, text


def test_a_current_nvcc_builds_every_default_architecture(nvcc):
    status, result, text = decide("AUTO", nvcc(*NVCC_13))
    assert status == 0, text
    assert result == {"enabled": "ON", "archs": DEFAULT, "why": ""}
    assert "Warning" not in text


@pytest.mark.parametrize("compiler", ["", "CMAKE_CUDA_COMPILER-NOTFOUND"])
def test_no_compiler_builds_the_cpu_path_or_stops_with_on(compiler):
    status, result, _ = decide("AUTO", compiler)
    assert status == 0
    assert result["enabled"] == "OFF"
    assert result["why"].startswith("no CUDA compiler found")
    status, result, text = decide("ON", compiler)
    assert status != 0 and result is None
    assert "PDL_POST_CUDA=ON but no CUDA compiler found" in text


def test_an_nvcc_older_than_12_builds_the_cpu_path_or_stops_with_on(nvcc):
    old = nvcc("11.8", ["50", "75", "80", "90"])
    status, result, _ = decide("AUTO", old)
    assert status == 0
    assert result["enabled"] == "OFF"
    assert result["why"] == f"nvcc 11.8 ({old}) is older than CUDA 12.0"
    status, result, text = decide("ON", old)
    assert status != 0 and result is None
    assert "PDL_POST_CUDA=ON but nvcc 11.8" in text and "older than CUDA 12.0" in text


@pytest.mark.parametrize("mode", ["AUTO", "ON"])
def test_a_compiler_that_failed_cmakes_check_is_named(nvcc, mode):
    # check_language(CUDA) found no working compiler, yet one is there (CUDACXX or PATH): the
    # reason names it rather than claiming there is none.
    old, new, broken = nvcc("11.8", ["75", "80", "90"]), nvcc(*NVCC_13), nvcc(None, None)
    expected = {
        old: f"nvcc 11.8 ({old}) is older than CUDA 12.0",
        new: f"nvcc 13.0 ({new}) failed CMake's test build of a CUDA program",
        broken: f"the CUDA compiler {broken} failed CMake's test build of a CUDA program",
    }
    for rejected, why in expected.items():
        for compiler in ("", "CMAKE_CUDA_COMPILER-NOTFOUND"):
            status, result, text = decide(mode, compiler, rejected=rejected)
            if mode == "AUTO":
                assert status == 0, text
                assert result["enabled"] == "OFF"
                assert result["why"].startswith(why)
            else:
                assert status != 0 and result is None
                assert f"PDL_POST_CUDA=ON but {why}" in " ".join(text.split())
    _, result, _ = decide("AUTO", "", rejected=new)
    assert "set CUDAHOSTCXX" in result["why"] and "CMakeFiles/" in result["why"]


def configure(build: Path, *defines: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """CMake's configure step of the project into `build`, with this Python and its pybind11."""
    import pybind11

    command = [CMAKE, "-S", str(ROOT), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}"]
    command += [f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", *defines]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def test_configure_names_the_cuda_compiler_it_could_not_use(nvcc, tmp_path):
    # The whole configure step with CUDACXX pointing at a compiler that fails CMake's check (the
    # stand-in builds nothing): a CPU-only build whose reason names that compiler.
    old = nvcc("11.8", ["75", "80", "90"])
    run = configure(tmp_path / "build", env={"CUDACXX": f"{old} -ccbin c++"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"pdl_post: nvcc 11.8 ({old}) is older than CUDA 12.0; building the CPU path only" in (
        run.stdout
    )


def test_architectures_nvcc_cannot_build_are_dropped_with_a_warning(nvcc):
    # A future toolkit without Turing: AUTO builds the rest and says so; ON names what to change.
    future = nvcc("14.0", ["80", "86", "90", "100", "120"])
    status, result, text = decide("AUTO", future)
    assert status == 0, text
    assert result == {"enabled": "ON", "archs": "80-real;90-real;90-virtual", "why": ""}
    assert "cannot build the CUDA architectures 75-real" in text and "Warning" in text
    status, result, text = decide("ON", future)
    assert status != 0 and result is None
    assert "cannot build the CUDA architectures 75-real" in text
    assert "PDL_POST_CUDA_ARCHITECTURES" in text


def test_no_buildable_architecture_builds_the_cpu_path(nvcc):
    status, result, _ = decide("AUTO", nvcc("14.0", ["100", "120"]), "75-real;80-real")
    assert status == 0
    assert result["enabled"] == "OFF"
    assert "builds none of the CUDA architectures 75-real, 80-real" in result["why"]


def test_special_values_and_suffixed_architectures(nvcc):
    compiler = nvcc(*NVCC_13)
    requested = "native;all-major;90a-real;100f-virtual;80;70-real"
    status, result, text = decide("AUTO", compiler, requested)
    assert status == 0, text
    # CMake's own values are left to nvcc; 90a / 100f are compute_90 / compute_100; sm_70 is gone.
    assert result["archs"] == "native;all-major;90a-real;100f-virtual;80"
    assert "70-real" in text


def test_a_compiler_that_lists_no_architectures_is_left_to_decide(nvcc):
    # Without --list-gpu-arch (or a version string) nothing is dropped: nvcc itself will say.
    status, result, _ = decide("AUTO", nvcc(None, None))
    assert status == 0
    assert result == {"enabled": "ON", "archs": DEFAULT, "why": ""}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_the_nvcc_on_path_builds_the_default_architectures():
    status, result, text = decide("ON", shutil.which("nvcc"))
    assert status == 0, text
    assert result["enabled"] == "ON" and result["archs"] == DEFAULT


def test_configure_refuses_an_unknown_mode(tmp_path):
    run = configure(tmp_path / "build", "-DPDL_POST_CUDA=maybe")
    assert run.returncode != 0
    assert "PDL_POST_CUDA: expected AUTO, ON or OFF, got 'MAYBE'" in run.stderr
