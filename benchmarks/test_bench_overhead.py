"""Host time per call outside the compiled core: what the Python layer adds to every call.

The GPU target (issue 5: 1024x2048 in at most 0.3 ms end to end) leaves little room for host work,
and a GPU is not needed to measure the Python side of it. ``cuda_python_layer`` runs
``pdl_post.merge`` / ``postprocess`` on ``__cuda_array_interface__`` objects with the compiled
CUDA job replaced by a stand-in that returns at once (no device, no kernels): input parsing,
validation, layout, dtype and stream choice, the output allocation (here ``numpy.empty``) and
the result wrapping (``postprocess``: the centres and ~40 segments of a 40-centre scene, as the
core returns them), and printed beside it (``-s``) the part of it between the job's making (the
first phase's launches) and its finish. On a GPU that Python runs while the first phase works: the
core waits for the label range inside ``finish_if_fits`` and, the output allocated beforehand
fitting it, goes on to the second phase with no Python in between (where the GPU would idle).
``cpu_merge_tiny`` is a whole CPU ``merge`` of a 16x16 scene, where the same validation dominates.

    .venv/bin/python -m pytest benchmarks/test_bench_overhead.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import statistics
import time
from typing import ClassVar

import numpy as np
import pytest

import pdl_post
from pdl_post import _core, _cuda, synthetic


class _InterfaceArray:
    """A host array that presents itself as a CUDA array (never dereferenced here)."""

    def __init__(self, a: np.ndarray):
        self.a = a
        self.__cuda_array_interface__ = {
            "shape": a.shape,
            "typestr": a.dtype.str,
            "data": (a.ctypes.data, False),
            "strides": None,
            "version": 3,
        }


class _InstantJob:
    """Stands in for _core.CudaMerge: the label range at once, no work in finish, which returns
    the CPU's centres and segments of the scene in the core's format. Records the host time
    between the job's making (a GPU call's first phase queued) and its finish."""

    per_image: tuple = ()
    between_phases: ClassVar[list] = []  # seconds, one per call

    def __init__(self, labels, logits, ctr, off, mask, device, stream, *options):
        self.made = time.perf_counter()

    def label_range(self):
        return 0, 18

    def finish_if_fits(self, out, max_label, with_segments, wait):
        assert max_label >= 18  # int32 ids: the label range fits the output made beforehand
        return self.finish(out, with_segments, wait)

    def finish(self, out, with_segments, wait):
        _InstantJob.between_phases.append(time.perf_counter() - self.made)
        return [self.per_image] if with_segments else []


def _core_format(result) -> tuple:
    fields = {"id": np.int64, "category_id": np.int64, "isthing": bool, "area": np.int64}
    segments = {k: np.array([s[k] for s in result.segments], t) for k, t in fields.items()}
    segments["score"] = np.array([s["score"] for s in result.segments], np.float64)
    segments["instance"] = np.zeros(len(result.segments), np.int64)
    return result.centers, result.center_scores, segments


@pytest.fixture(scope="module")
def scene():
    s = synthetic.make_scene(128, 256, 40, seed=1)
    _InstantJob.per_image = _core_format(pdl_post.postprocess(s.sem, s.ctr, s.off))
    return s


@pytest.fixture
def instant_cuda(monkeypatch, scene):
    monkeypatch.setattr(_cuda, "available", lambda: True)
    monkeypatch.setattr(_core, "cuda_pointer_device", lambda pointer: 0, raising=False)
    monkeypatch.setattr(_core, "CudaMerge", _InstantJob, raising=False)
    monkeypatch.setattr(
        _cuda,
        "_allocate",
        lambda arrays, shape, dtype, device: _InterfaceArray(np.empty(shape, dtype)),
    )


@pytest.mark.parametrize("call", ["merge", "postprocess"])
def test_cuda_python_layer(benchmark, instant_cuda, scene, call):
    args = [_InterfaceArray(a) for a in (scene.sem, scene.ctr, scene.off)]
    _InstantJob.between_phases = []
    result = benchmark(getattr(pdl_post, call), *args)
    gaps_us = [g * 1e6 for g in _InstantJob.between_phases]
    assert gaps_us  # one per call
    benchmark.extra_info["between_phases_us"] = {
        "min": min(gaps_us),
        "median": statistics.median(gaps_us),
    }
    print(
        f"\n{call}: Python between the job's making and its finish: min {min(gaps_us):.1f} us, "
        f"median {statistics.median(gaps_us):.1f} us over {len(gaps_us)} calls"
    )
    out = (result if call == "merge" else result.panoptic).a
    assert out.shape == scene.sem.shape and out.dtype == np.int32
    if call == "postprocess":
        assert len(result.segments) == len(_InstantJob.per_image[2]["id"]) > 20


def test_cpu_merge_tiny(benchmark):
    s = synthetic.make_scene(16, 16, 2, seed=1)
    out = benchmark(pdl_post.merge, s.sem, s.ctr, s.off, num_threads=1)
    np.testing.assert_array_equal(out, pdl_post.merge(s.sem, s.ctr, s.off, backend="reference"))
