"""Results do not depend on the caller's floating-point modes (cpp/include/pdl_post/float_mode.h).

torch.set_flush_denormal(True) (flush-to-zero and denormals-are-zero), fesetround() and
feenableexcept() change the modes of the threads they run on. Each case below gives another
answer when computed in the mode it names (an argmax between 0 and a subnormal logit, a subnormal
peak against threshold 0, a threshold rounded the other way, a vote rounded across a tie, softmax
scores' last bits), and the control checks prove numpy computes differently in that mode on this
thread; every backend must still give the answer of the default modes, on every thread count,
and leave the caller's modes as they were. In this process the modes are set on the calling
thread only (OpenMP's workers were started before); a subprocess sets them before torch's first
parallel region, so that the OpenMP workers, which torch and pdl_post share, start with them too,
and adds trapping exceptions.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import platform
import signal
import subprocess
import sys

import numpy as np
import pytest

import pdl_post
from conftest import assert_results_equal
from devices import EMULATION, to_device, to_host
from pdl_post import _core

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"),
    reason="the modes are set through glibc's x86-64 fenv constants and MXCSR",
)

FE_DOWNWARD, FE_UPWARD = 0x400, 0x800  # glibc x86-64 <fenv.h>
MXCSR_STATUS_FLAGS = 0x3F  # sticky exception flags: numpy clears them itself


def _libm():
    return ctypes.CDLL(ctypes.util.find_library("m"))


def _controls(mode: str) -> None:
    """numpy on this thread computes differently in `mode` (so each case is a real test)."""
    if mode == "flush":
        assert not np.float32(1e-40) > np.float32(0)  # denormals are zero
    elif mode == "downward":
        assert np.float32(0.1).view(np.uint32) == 0x3DCCCCCC  # to nearest: 0x3DCCCCCD
    elif mode == "upward":
        assert np.float32(5) + np.float32(0.5 + 2.0**-24) > np.float32(5.5)  # nearest: == 5.5


@contextlib.contextmanager
def caller_modes(mode: str):
    """The calling thread in `mode`; yields the modes set, puts the previous ones back after."""
    found = _core._get_float_modes()
    try:
        if mode == "flush":
            torch = pytest.importorskip("torch")
            if not torch.set_flush_denormal(True):
                pytest.skip("torch.set_flush_denormal: this processor has no flush mode")
        else:
            assert _libm().fesetround({"downward": FE_DOWNWARD, "upward": FE_UPWARD}[mode]) == 0
        _controls(mode)
        yield _core._get_float_modes()
    finally:
        _core._set_float_modes(found)


def _cases():
    """(name, sem, ctr, off, options): 16 x 16 images, class 1 a thing, no stuff filter."""
    h = w = 16
    base = {"thing_ids": [1], "label_divisor": 1000, "stuff_area": 0, "nms_kernel": 3}
    zeros = np.zeros((2, h, w), np.float32)
    cases = []
    # Argmax: logit 1e-40 (subnormal) beats 0; with denormals-are-zero the two tie (class 0).
    logits = np.zeros((2, h, w), np.float32)
    logits[1, :, 8:] = 1e-40
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, 4, 12] = 0.9
    cases.append(("subnormal logit", logits, ctr, zeros, base))
    # A subnormal peak above threshold 0: not a centre with denormals-are-zero.
    sem = np.ones((h, w), np.int32)
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, 4, 4] = 1e-40
    cases.append(("subnormal peak", sem, ctr, zeros, {**base, "threshold": 0.0}))
    # float32(0.1) against threshold 0.1: equal to nearest (no centre); rounded downward the
    # threshold is one ulp lower and the pixel a centre.
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, 8, 8] = np.float32(0.1)
    ctr[0, 2, 2] = 0.5
    cases.append(("threshold rounding", sem, ctr, zeros, base))
    # Centres at x = 2 and x = 9 (row 5); pixel x = 5 votes at 5 + (0.5 + 2^-24): 5.5 to nearest,
    # a tie (the lower index, x = 2), one ulp above rounded upward (x = 9).
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, 5, 2], ctr[0, 5, 9] = 0.9, 0.8
    off = np.zeros((2, h, w), np.float32)
    off[1, 5, 5] = 0.5 + 2.0**-24
    cases.append(("vote rounding", sem, ctr, off, base))
    # Scores from logits: softmax sums round the other way in the last bits.
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (3, h, w)).astype(np.float32)
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, 3, 3], ctr[0, 11, 12] = 0.7, 0.6
    off = rng.normal(0, 2, (2, h, w)).astype(np.float32)
    cases.append(("logit scores", logits, ctr, off, {**base, "thing_ids": [1, 2]}))
    return cases


CASES = _cases()
CASE = {c[0]: c for c in CASES}


MODES = ["flush", "downward", "upward"]


def _inputs(case, who):
    """The case's sem, ctr, off on `who`'s device (the reference: numpy)."""
    return [to_device(a, "cpu" if who == "reference" else who) for a in case[1:4]]


def _run(case, who, *, core_only=False, **kw):
    """postprocess; core_only: past the Python layer's float modes (its __wrapped__ function)."""
    if who == "reference":
        kw["backend"] = "reference"
    postprocess = pdl_post.postprocess.__wrapped__ if core_only else pdl_post.postprocess
    return postprocess(*_inputs(case, who), **case[4], **kw)


def _same_in_mode(mode, case, who, runs):
    """postprocess (each of `runs`) and merge in `mode` equal themselves in the default modes,
    and the caller's modes are as they were."""
    backend = {"backend": "reference"} if who == "reference" else {}
    expected = [_run(case, who, **kw) for kw in runs]
    expected_merge = to_host(pdl_post.merge(*_inputs(case, who), **case[4], **backend))
    with caller_modes(mode) as modes:
        got = [_run(case, who, **kw) for kw in runs]
        if who != "reference":  # the compiled core's own modes, without the Python layer's
            got += [_run(case, who, core_only=True, **kw) for kw in runs]
        got_merge = to_host(pdl_post.merge(*_inputs(case, who), **case[4], **backend))
        after = _core._get_float_modes()
    assert after & ~MXCSR_STATUS_FLAGS == modes & ~MXCSR_STATUS_FLAGS, "caller's modes changed"
    for g, e in zip(got, expected + expected):
        assert_results_equal(g, e, score_rtol=0)  # each path against itself: the same bits
    np.testing.assert_array_equal(got_merge, expected_merge)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_results_ignore_the_callers_float_modes(mode, case, device):
    runs = [{"num_threads": 1}, {"num_threads": 2}] if device == "cpu" else [{}]
    _same_in_mode(mode, case, device, runs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reference_ignores_the_callers_float_modes(mode, case):
    _same_in_mode(mode, case, "reference", [{}])


@pytest.mark.skipif(EMULATION is None, reason="pdl_post._cuda_emulation not built")
@pytest.mark.parametrize("mode", MODES)
def test_emulated_kernels_compute_as_a_gpu(mode):
    """The emulator runs kernels in a GPU's modes (subnormals kept, round to nearest) whatever
    the launching thread's, as the CUDA path's kernels on a GPU do."""
    with caller_modes(mode):
        error, out = EMULATION.selftest("float_modes")
    assert error == ""
    rows = np.array(out[: 3 * 64], np.int64).reshape(64, 3)
    assert (rows[:, 0] == 1).all()  # 1e-40 > 0
    assert (rows[:, 1] == 0x3F800000).all()  # 1 + 2^-24 rounds to 1 (to even)
    assert (rows[:, 2] == np.array([1e-40], np.float32).view(np.int32)[0]).all()


def test_cases_differ_in_their_modes():
    """Each case's answer really changes with the mode: the same arithmetic done by numpy in the
    mode (the reference's steps) against the default modes."""
    logits = CASE["subnormal logit"][1]
    assert np.argmax(logits[:, 0, 15]) == 1
    with caller_modes("flush"):
        assert np.argmax(logits[:, 0, 15]) == 0
    with caller_modes("downward"):
        assert np.float32(0.1) < CASE["threshold rounding"][2][0, 8, 8]
    with caller_modes("upward"):
        q = np.float32(5) + CASE["vote rounding"][3][1, 5, 5]
        assert (q - np.float32(9)) ** 2 < (q - np.float32(2)) ** 2


_SUBPROCESS = r"""
import ctypes, ctypes.util, json, sys
import numpy as np
import torch
import pdl_post
from pdl_post import _core

data = dict(np.load(sys.argv[1]))
names = json.loads(sys.argv[2])
# The modes first, then torch's first parallel region: OpenMP's workers start with them, and
# torch and pdl_post share one OpenMP runtime (one libgomp.so.1 in the process), so pdl_post's
# regions run on those workers, as after a user's torch.set_flush_denormal(True) and CPU inference.
assert torch.set_flush_denormal(True)
libm = ctypes.CDLL(ctypes.util.find_library("m"))
assert libm.fesetround(0x800) == 0  # upward
libm.feenableexcept(0x01 | 0x04 | 0x08)  # FE_INVALID, FE_DIVBYZERO, FE_OVERFLOW trap (SIGFPE)
torch.set_num_threads(2)
torch.ones(1 << 22).mul_(2)
gomp = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
assert len(gomp) == 1, gomp
modes = _core._get_float_modes()
out = {}
for name, options in names:
    sem, ctr, off = data[name + "/sem"], data[name + "/ctr"], data[name + "/off"]
    for backend, threads in (("cpu", 2), ("cpu", 1), ("reference", 1)):
        r = pdl_post.postprocess(sem, ctr, off, backend=backend, num_threads=threads, **options)
        key = f"{name}/{backend}/{threads}"
        out[key + "/panoptic"] = r.panoptic
        out[key + "/centers"] = r.centers
        out[key + "/scores"] = np.array([s["score"] for s in r.segments], np.float64)
assert _core._get_float_modes() & ~0x3F == modes & ~0x3F, "modes changed"
np.savez(sys.argv[3], **out)
"""


def test_worker_threads_ignore_the_modes_they_start_with(tmp_path):
    """A process whose modes were set before pdl_post's first parallel region: flush-to-zero,
    rounding upward and trapping invalid operations, division by zero and overflow. Inputs with
    NaN peaks and infinite or huge offsets would trap (SIGFPE) without the IEEE modes."""
    pytest.importorskip("torch")
    cases = list(CASES)
    rng = np.random.default_rng(3)
    h, w = 24, 32
    sem = rng.integers(0, 3, (h, w)).astype(np.int32)
    ctr = rng.random((1, h, w)).astype(np.float32) * 0.2
    ctr[0, 3, 4], ctr[0, 15, 20], ctr[0, 9, 9] = 0.9, 0.8, np.nan
    off = rng.normal(0, 4, (2, h, w)).astype(np.float32)
    off[0, 1, :8] = np.inf
    off[1, 2, :8] = -np.inf
    off[0, 5, :] = 3e38
    off[1, 6, :] = np.nan
    cases.append(("non-finite", sem, ctr, off, {"thing_ids": [1, 2], "stuff_area": 0}))
    inputs = {}
    for name, sem, ctr, off, _ in cases:
        inputs.update({name + "/sem": sem, name + "/ctr": ctr, name + "/off": off})
    np.savez(tmp_path / "in.npz", **inputs)
    names = json.dumps([[c[0], c[4]] for c in cases])
    proc = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, str(tmp_path / "in.npz"), names, tmp_path / "out.npz"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    signal_name = f" ({signal.Signals(-proc.returncode).name})" if proc.returncode < 0 else ""
    assert proc.returncode == 0, f"rc {proc.returncode}{signal_name}: {proc.stderr[-2000:]}"
    got = np.load(tmp_path / "out.npz")
    for name, sem, ctr, off, options in cases:
        for backend, threads in (("cpu", 2), ("cpu", 1), ("reference", 1)):
            r = pdl_post.postprocess(sem, ctr, off, backend=backend, num_threads=threads, **options)
            key = f"{name}/{backend}/{threads}"
            np.testing.assert_array_equal(got[key + "/panoptic"], r.panoptic, err_msg=key)
            np.testing.assert_array_equal(got[key + "/centers"], r.centers, err_msg=key)
            scores = np.array([s["score"] for s in r.segments], np.float64)
            np.testing.assert_array_equal(
                got[key + "/scores"].view(np.uint64), scores.view(np.uint64)
            )


def test_float_modes_on_aarch64_under_qemu(tmp_path):
    """float_mode.h's FPCR path: tests/float_modes_probe.cpp cross-compiled for AArch64 and run
    under qemu-user (where g++-aarch64-linux-gnu and qemu-user are installed)."""
    import shutil
    from pathlib import Path

    compiler, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip(
            "needs aarch64-linux-gnu-g++ and qemu-aarch64 (apt: g++-aarch64-linux-gnu qemu-user)"
        )
    root = Path(__file__).resolve().parents[1]
    binary = tmp_path / "probe"
    subprocess.run(
        [
            compiler,
            "-O2",
            "-std=c++17",
            "-static",
            f"-I{root / 'cpp' / 'include'}",
            str(root / "tests" / "float_modes_probe.cpp"),
            "-o",
            str(binary),
        ],
        check=True,
        timeout=300,
    )
    proc = subprocess.run([qemu, str(binary)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
