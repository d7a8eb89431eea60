"""Logits input on the CPU: what ``merge`` / ``postprocess`` cost when ``sem`` is [C, H, W] logits.

Networks hand out logits; ``merge`` argmaxes them itself (first maximum, NaN never wins) and
``postprocess`` also weighs each segment by its mean softmax probability. One group per call,
its competitors:

- ``ours_logits``: our call on the float32 logits (19 Cityscapes channels);
- ``ours_labels``: the same call on the labels already argmaxed: the cost without logits;
- ``torch_argmax_then_ours`` (``merge`` only): what a user would do otherwise, ``torch.argmax``
  over the channels (``torch.set_num_threads(N)``) and our merge of the labels.

    .venv/bin/python -m pytest benchmarks/test_bench_logits.py -q -p no:cacheprovider \\
        --benchmark-columns=min,median,rounds

Scenes: 1024x2048 with 40 centres (``--bench-scale full``, the default when timing), 64x128 in
smoke runs (``--benchmark-disable``).
"""

from __future__ import annotations

import numpy as np
import pytest

import pdl_post
from pdl_post import synthetic


@pytest.fixture(scope="module")
def scene(bench):
    height, width = (64, 128) if bench.scale == "tiny" else (1024, 2048)
    return synthetic.make_scene(height, width, 40, seed=0, logits=True)


def _call(name, sem, scene, threads):
    return getattr(pdl_post, name)(sem, scene.ctr, scene.off, num_threads=threads)


@pytest.mark.parametrize("call", ["merge", "postprocess"])
@pytest.mark.parametrize("competitor", ["ours_logits", "ours_labels", "torch_argmax_then_ours"])
def test_logits(benchmark, bench, scene, call, competitor):
    benchmark.group = f"{call} with logits {scene.sem.shape[0]}x{scene.sem.shape[1]}"
    threads = bench.threads
    if competitor == "ours_logits":
        fn = lambda: _call(call, scene.logits, scene, threads)  # noqa: E731
    elif competitor == "ours_labels":
        fn = lambda: _call(call, scene.sem, scene, threads)  # noqa: E731
    else:
        if call != "merge":
            pytest.skip("torch's argmax gives labels, not scores: merge only")
        torch = pytest.importorskip("torch")
        logits = torch.from_numpy(scene.logits)

        def fn():
            labels = torch.argmax(logits, dim=0).to(torch.int32).numpy()
            return _call(call, labels, scene, threads)

    result = benchmark(fn)
    panoptic = result if call == "merge" else result.panoptic
    np.testing.assert_array_equal(panoptic, pdl_post.merge(scene.sem, scene.ctr, scene.off))
