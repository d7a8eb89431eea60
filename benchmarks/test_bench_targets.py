"""Training-target benchmarks (issue 4, item 2): compiled vs numpy fast path vs numpy reference.

One map from ``pdl_post.synthetic.make_scene(1024, 2048, 40).panoptic_gt`` with its segments
(every id present, category = id // 1000, Cityscapes thing ids 11..18), default options, one
thread for the compiled core. Backends (group ``targets``):

- ``compiled``: ``pdl_post.targets.panoptic_targets(..., num_threads=1)``, new output arrays
  each call (allocation and first touch of ~64 MB included).
- ``compiled_out``: the same with ``out=`` buffers reused across calls, as a data loader does.
  Target: <= 10 ms.
- ``numpy``: ``panoptic_deeplab.targets.panoptic_targets_numpy``, the earlier vectorised path.
- ``reference``: ``panoptic_deeplab.targets.panoptic_targets_reference`` (one mask per segment).

Every run first checks the three give identical arrays. Smoke runs (``--benchmark-disable`` or
``--bench-quick``) use a 64x128 map. The CPU time of the compiled call (min over runs of
``time.process_time``) is stored in ``extra_info["cpu_ms_min"]``.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_targets.py --benchmark-group-by=group``
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from pdl_post.synthetic import make_scene
from pdl_post.targets import panoptic_targets

THINGS = tuple(range(11, 19))
KEYS = ("semantic", "semantic_weights", "center", "offset", "center_weights", "offset_weights")


def _model_targets():
    """The model's targets module; loaded from its file when torch (its package) is missing."""
    try:
        from panoptic_deeplab import targets
    except ImportError:
        path = Path(__file__).resolve().parents[1] / "models" / "panoptic_deeplab" / "targets.py"
        if not path.exists():
            return None
        spec = importlib.util.spec_from_file_location("_bench_targets", path)
        targets = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(targets)
    return targets


@pytest.fixture(scope="module")
def scene(bench):
    h, w = (64, 128) if bench.scale == "tiny" else (1024, 2048)
    pan = make_scene(h, w, 40 if h > 64 else 5, seed=0).panoptic_gt
    seg = np.unique(pan)
    return pan, seg, seg // 1000


def _backends():
    model = _model_targets()

    def compiled(pan, seg, cat):
        return panoptic_targets(pan, seg, cat, thing_ids=THINGS, num_threads=1)

    buffers: dict = {}

    def compiled_out(pan, seg, cat):
        if not buffers or buffers["semantic"].shape != pan.shape:
            buffers.clear()
            buffers.update(compiled(pan, seg, cat))
        return panoptic_targets(pan, seg, cat, thing_ids=THINGS, num_threads=1, out=buffers)

    fns = {"compiled": compiled, "compiled_out": compiled_out}
    if model is not None:
        fns["numpy"] = lambda pan, seg, cat: model.panoptic_targets_numpy(
            pan, seg, cat, thing_ids=THINGS
        )
        fns["reference"] = lambda pan, seg, cat: model.panoptic_targets_reference(
            pan, seg, cat, thing_ids=THINGS
        )
    return fns


BACKENDS = ("compiled", "compiled_out", "numpy", "reference")


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets(benchmark, scene, backend):
    fns = _backends()
    if backend not in fns:
        pytest.skip("models/panoptic_deeplab/targets.py is not available")
    pan, seg, cat = scene
    fn = fns[backend]
    expected = fns["compiled"](pan, seg, cat)
    got = fn(pan, seg, cat)
    for k in KEYS:
        assert got[k].dtype == expected[k].dtype and np.array_equal(got[k], expected[k]), k
    benchmark.group = "targets"
    benchmark.extra_info.update({"height": pan.shape[0], "width": pan.shape[1], "threads": 1})
    if backend.startswith("compiled") and not benchmark.disabled:
        best = float("inf")
        for _ in range(50):
            t0 = time.process_time()
            fn(pan, seg, cat)
            best = min(best, time.process_time() - t0)
        benchmark.extra_info["cpu_ms_min"] = best * 1e3
    if backend == "reference":
        benchmark.pedantic(fn, args=(pan, seg, cat), rounds=3, iterations=1)
    else:
        benchmark(fn, pan, seg, cat)
