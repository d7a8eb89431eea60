"""Shared helpers of the test suite."""

from __future__ import annotations

import numpy as np


def assert_results_equal(a, b, *, score_rtol=1e-12):
    """Two PanopticResult (or lists of them) are identical: ids exact, scores to score_rtol (0:
    the same bits)."""
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_results_equal(x, y, score_rtol=score_rtol)
        return
    pa, pb = to_host(a.panoptic), to_host(b.panoptic)  # devices.to_host, imported below
    assert pa.dtype == pb.dtype
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.center_scores, b.center_scores)
    keys = ("id", "category_id", "isthing", "area")
    assert [[s[k] for k in keys] for s in a.segments] == [[s[k] for k in keys] for s in b.segments]
    scores_a = np.array([s["score"] for s in a.segments], np.float64)
    scores_b = np.array([s["score"] for s in b.segments], np.float64)
    if score_rtol == 0:  # exact: the bits, NaN's sign and payload included
        np.testing.assert_array_equal(scores_a.view(np.uint64), scores_b.view(np.uint64))
    else:
        np.testing.assert_allclose(scores_a, scores_b, rtol=score_rtol, equal_nan=True)


# Devices of the parametrised tests (tests/devices.py): imported after assert_results_equal,
# which devices.py uses (and which uses its to_host, looked up when called).
import os  # noqa: E402

import pytest  # noqa: E402

from devices import DEVICES, EMULATION, to_host, use_emulation  # noqa: E402

# make test builds the emulated device and asks for it: its cases must not vanish as skips.
if os.environ.get("PDL_POST_REQUIRE_EMULATION") == "1" and EMULATION is None:
    raise RuntimeError(
        "PDL_POST_REQUIRE_EMULATION=1 but pdl_post._cuda_emulation is not built: build with "
        "-Ccmake.define.PDL_POST_CUDA_EMULATION=ON (make build does)"
    )


@pytest.fixture(scope="session", autouse=True)
def _forced_cuda_candidates():
    """A variable of pdl_post._cuda.CANDIDATES set to 1 (e.g. PDL_POST_VOTE_CHUNKS=1): every
    CUDA-path test runs with that candidate on, on the emulator and the GPU alike, so that one
    run checks a candidate everywhere the default is checked (gpu_check.sh runs the device tests
    once more so)."""
    import pdl_post
    from pdl_post._cuda import CANDIDATES

    undo = []
    for hook, variable in CANDIDATES.values():
        if os.environ.get(variable) != "1":
            continue
        modules = [m for m in (EMULATION, pdl_post._core) if hasattr(m, hook)]
        if not modules:
            raise RuntimeError(f"{variable}=1, but this build has no CUDA path to set")
        undo += [(getattr(m, hook), getattr(m, hook)(True)) for m in modules]
    yield
    for set_hook, was in undo:
        set_hook(was)


@pytest.fixture
def emulated_cuda(monkeypatch):
    """CUDA arrays go to the CUDA sources on the host emulator; no violation or leak after."""
    if EMULATION is None:
        pytest.skip("pdl_post._cuda_emulation not built (PDL_POST_CUDA_EMULATION=OFF)")
    check = use_emulation(monkeypatch)
    yield
    check()


def _device(request):
    if request.param == "emulated":
        request.getfixturevalue("emulated_cuda")
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    """cpu, emulated (the CUDA sources on the host emulator) and cuda (a GPU, else skipped)."""
    return _device(request)


@pytest.fixture(params=DEVICES[1:])
def cuda_device(request):
    """The CUDA path only: emulated, and on a GPU when there is one."""
    return _device(request)
