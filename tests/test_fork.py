"""A child of fork() runs pdl_post instead of hanging.

GNU OpenMP cannot start a team again in a forked child once the parent had one: the child waits
for workers that fork did not copy, for ever. torch and pdl_post share that runtime, so a
DataLoader worker (fork, Linux's default) computing training targets, or a multiprocessing pool
running merge, hung when the main process had used threads (pdl_post's or torch's) before. A
child now runs on its calling thread (cpp/src/pipeline_cpu.cpp, resolve_threads): the same
answers, as on every thread count. Each case runs in a fresh interpreter (the parent's thread
pool is the point) under a timeout, so that a hang fails the test instead of the suite.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork() on this platform"
)

_SCRIPT = r"""
import multiprocessing, queue, sys
import numpy as np
import pdl_post
from pdl_post import synthetic, targets

scene = synthetic.make_scene(128, 256, 6, seed=1)
pan = np.where(scene.sem >= 11, scene.sem * 1000 + 1, scene.sem * 1000).astype(np.int32)
ids = np.unique(pan)

def work(threads):
    return pdl_post.merge(scene.sem, scene.ctr, scene.off, num_threads=threads)

def target_work(threads):
    t = targets.panoptic_targets(pan, ids, ids // 1000, thing_ids=range(11, 19),
                                 num_threads=threads)
    return t["center"]

expected = (work(1), target_work(1))
if sys.argv[1] == "torch":  # only torch starts the shared OpenMP pool
    import torch
    torch.set_num_threads(2)
    torch.ones(1 << 22).mul_(2)
else:
    work(2)
    target_work(2)

def child(results):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ([work(None), work(2), work(3)], [target_work(None), target_work(2)],
               pdl_post.build_info()["max_threads"])
    results.put((*out, [str(w.message) for w in caught if w.category is RuntimeWarning]))

ctx = multiprocessing.get_context("fork")
results = ctx.Queue()
process = ctx.Process(target=child, args=(results,))
process.start()
try:
    merged, centers, max_threads, warned = results.get(timeout=60)
except queue.Empty:
    process.kill()
    sys.exit("the forked child hung (no result in 60 s)")
process.join(30)
assert process.exitcode == 0, process.exitcode
for m in merged:
    np.testing.assert_array_equal(m, expected[0])
for c in centers:
    np.testing.assert_array_equal(c, expected[1])
assert max_threads == 1, max_threads
# Asking for threads there warns once (None, OpenMP's default, does not).
assert len(warned) == 1 and "num_threads=2" in warned[0] and "fork()" in warned[0], warned
np.testing.assert_array_equal(work(2), expected[0])  # the parent keeps its threads
print("ok")
"""


@pytest.mark.parametrize("parent_pool", ["pdl_post", "torch"])
def test_forked_child_runs_after_the_parent_used_threads(parent_pool):
    if parent_pool == "torch":
        pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, parent_pool], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
