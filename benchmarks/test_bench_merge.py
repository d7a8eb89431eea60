"""Benchmarks of ``pdl_post.merge`` and its stages against the baselines (DESIGN §4, issue 2 item 6).

One pytest-benchmark group per (stage, scene); the backends of a group are its competitors:

- ``ours``: the compiled CPU backend (``backend="cpu"``, ``num_threads=N``);
- ``reference``: the readable numba backend (single-threaded by design); its result is checked
  against ours, bit for bit;
- ``dense_torch``: the dense K x H*W PyTorch implementation (``torch.set_num_threads(N)``), whole
  merge only; skipped where its tensors would exceed ``--bench-dense-max-gb``;
- ``floor``: the copy floor, one pass reading every input byte and writing every output byte
  with ``numpy.copyto`` on N threads.

Slow baselines run in pedantic mode (one round when a call is predicted to take more than 2 s,
else a probe call and as many rounds as fit 3 s, at most 5). ``benchmarks/run.py`` turns the JSON
into the comparison table and the plot.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pytest

import bench_common as bc

#: Baselines predicted slower than this run one round, without a probe call.
SLOW_SECONDS = 2.0


def _group(stage: str, spec: bc.SceneSpec) -> str:
    return f"{stage} {spec.ident}"


def _run_slow(benchmark: Any, fn: Callable[[], Any], predicted: float) -> Any:
    """Pedantic timing for slow baselines: few rounds, no calibration loop."""
    if predicted > SLOW_SECONDS:
        return benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    t0 = time.perf_counter()
    fn()  # probe (also a warm-up)
    rounds = bc.rounds_for(time.perf_counter() - t0)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.fixture(scope="session")
def _reference_compiled() -> None:
    """Compile the reference's numba kernels on a tiny scene, outside any timing."""
    from pdl_post import reference
    from pdl_post.synthetic import make_scene

    s = make_scene(32, 48, 3, seed=1)
    reference.postprocess_image(
        s.sem,
        s.ctr,
        s.off,
        thing_ids=s.thing_ids,
        label_divisor=bc.LABEL_DIVISOR,
        stuff_area=bc.STUFF_AREA,
        void_label=bc.VOID_LABEL,
        threshold=bc.THRESHOLD,
        nms_kernel=bc.NMS_KERNEL,
        top_k=200,
    )


@pytest.fixture(scope="session")
def _dense_warm() -> None:
    """Run the dense baseline once on a tiny scene: torch's lazy initialisation is not timed."""
    import torch

    from pdl_post.baselines.dense_torch import panoptic_dense_torch
    from pdl_post.synthetic import make_scene

    s = make_scene(32, 48, 3, seed=1)
    panoptic_dense_torch(
        torch.from_numpy(s.sem),
        torch.from_numpy(s.ctr),
        torch.from_numpy(s.off),
        thing_ids=s.thing_ids,
        label_divisor=bc.LABEL_DIVISOR,
        stuff_area=bc.STUFF_AREA,
        void_label=bc.VOID_LABEL,
    )


def _ours_output(bench: Any, stage: str, prep: bc.Prepared) -> np.ndarray | None:
    """Our backend's output for a stage (cached per scene), or None when it is not built."""
    key = f"ours:{stage}"
    if key not in prep.cache:
        fn = bc.ours_stage(stage, prep, bench.threads)
        prep.cache[key] = None if fn is None else bc.stage_output(stage, fn())
    return prep.cache[key]


def test_bench(bench: Any, case: tuple, request: pytest.FixtureRequest) -> None:
    spec, stage, backend = case
    group = _group(stage, spec)
    prep = bench.prepared(spec)

    # Decide skips before taking the benchmark fixture (an unused fixture warns).
    fn: Callable[[], Any] | None = None
    if backend == "ours":
        fn = bc.ours_stage(stage, prep, bench.threads)
        if fn is None:
            bench.skip(group, backend, f"pdl_post.{stage} is not available (core not built)")
    elif backend == "dense_torch":
        if bc.dense_module() is None:
            bench.skip(group, backend, "torch (or pdl_post.baselines.dense_torch) not importable")
        need_gb = bc.dense_bytes(prep.num_centers, spec.height, spec.width) / 2**30
        if need_gb > bench.dense_max_gb:
            bench.skip(
                group,
                backend,
                f"needs ~{need_gb:.0f} GiB (K x H*W tensors) > {bench.dense_max_gb:g} GiB",
            )
        fn = bc.dense_stage(stage, prep, bench.threads)
        if fn is None:
            bench.skip(group, backend, f"the dense baseline has no separate {stage} stage")
        request.getfixturevalue("_dense_warm")
    elif backend == "reference":
        request.getfixturevalue("_reference_compiled")
        fn = bc.reference_stage(stage, prep)

    benchmark = request.getfixturevalue("benchmark")
    benchmark.group = group
    benchmark.extra_info.update(
        {
            "stage": stage,
            "backend": backend,
            "scene": spec.ident,
            "height": spec.height,
            "width": spec.width,
            "centers_drawn": spec.centers,
            "centers": prep.num_centers,
            "top_k": spec.top_k,
            "threads": 1 if backend == "reference" else bench.threads,
        }
    )

    if backend == "ours":
        benchmark(fn)

    elif backend == "floor":
        floor = bc.floor_for(stage, prep, bench.threads)
        benchmark.extra_info["bytes_moved"] = floor.bytes_moved
        try:
            benchmark(floor)
        finally:
            floor.close()

    elif backend == "reference":
        result = _run_slow(benchmark, fn, bc.predicted_seconds(backend, stage, prep))
        expected = _ours_output(bench, stage, prep)
        got = bc.stage_output(stage, result)
        matches = None if expected is None else bool(np.array_equal(got, expected))
        benchmark.extra_info["matches_ours"] = matches
        if matches is False:
            pytest.fail(f"{group}: the reference and our backend disagree")

    elif backend == "dense_torch":
        before = bc.reset_peak_rss()
        result = _run_slow(benchmark, fn, bc.predicted_seconds(backend, stage, prep))
        peak = bc.peak_rss()
        # Its GiB-sized tensors are mmapped and unmapped by the allocator: the RSS peak above
        # the RSS before is the baseline's working memory.
        benchmark.extra_info["peak_extra_bytes"] = (
            None if before is None or peak is None else max(0, peak - before)
        )
        expected = _ours_output(bench, stage, prep)
        got = bc.to_numpy(bc.stage_output(stage, result))
        benchmark.extra_info["matches_ours"] = (
            None if expected is None else bool(np.array_equal(got, expected))
        )
    else:  # pragma: no cover
        raise AssertionError(backend)


def test_peak_memory(bench: Any, mem_spec: bc.SceneSpec) -> None:
    """Peak extra memory of our merge per scene (O(H*W), independent of the number of centres)."""
    if not bench.memory:
        pytest.skip("pass --bench-memory (or PDL_BENCH_MEMORY=1) to measure peak memory")
    if bc.public_api() is None:
        pytest.skip("pdl_post.merge is not available (core not built)")
    res = bc.measure_ours_memory_subprocess(mem_spec, threads=bench.threads)
    bench.notes["memory"][mem_spec.ident] = res
    if res["peak_extra_bytes"] is None:
        pytest.skip("peak RSS cannot be measured here (/proc/self/clear_refs)")
