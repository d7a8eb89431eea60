"""A child of fork() runs pdl_post, with its threads, instead of hanging.

GNU OpenMP keeps a pool of worker threads per thread that leads teams; a child of fork() has
only the forking thread and, if it led a team in the parent (pdl_post's or torch's: torch's
Linux wheels load the same libgomp), a pool listing workers that were not copied, so its next
team waited for them for ever: a DataLoader worker (fork, Linux's default) computing targets, or
a multiprocessing pool running merge, hung once the main process had used threads. The forking
thread's pool is now released before every fork (cpp/src/pipeline_cpu.cpp), so the child starts
its own, with all its threads; where it cannot be (the test hook stands for a fork from inside a
parallel region or a runtime without omp_pause_resource_all) the child runs on one thread and
warns once if more are asked for. Each case runs in a fresh interpreter (the parent's thread
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
import multiprocessing, queue, sys, warnings
import numpy as np
import pdl_post
from pdl_post import _core, synthetic, targets

parent_pool, release = sys.argv[1], sys.argv[2] == "release"
scene = synthetic.make_scene(128, 256, 6, seed=1)
pan = np.where(scene.sem >= 11, scene.sem * 1000 + 1, scene.sem * 1000).astype(np.int32)
ids = np.unique(pan)

def work(threads):
    return pdl_post.merge(scene.sem, scene.ctr, scene.off, num_threads=threads)

def target_work(threads):
    t = targets.panoptic_targets(pan, ids, ids // 1000, thing_ids=range(11, 19),
                                 num_threads=threads)
    return t["center"]

def torch_work():
    import torch
    return float(torch.ones(1 << 22).mul_(2).sum())

expected = (work(1), target_work(1))
if parent_pool == "torch":  # only torch starts the shared OpenMP pool
    import torch
    torch.set_num_threads(2)
    torch_work()
else:
    work(2)
    target_work(2)
parent_threads = pdl_post.build_info()["max_threads"]  # after torch.set_num_threads
_core._set_release_pool_at_fork(release)

def child(results):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ([work(None), work(2), work(3)], [target_work(None), target_work(2)],
               pdl_post.build_info()["max_threads"], _core._single_threaded_after_fork(),
               torch_work() if parent_pool == "torch" and release else None)
    results.put((*out, [str(w.message) for w in caught if w.category is RuntimeWarning]))

ctx = multiprocessing.get_context("fork")
results = ctx.Queue()
process = ctx.Process(target=child, args=(results,))
process.start()
try:
    merged, centers, max_threads, single, torch_sum, warned = results.get(timeout=60)
except queue.Empty:
    process.kill()
    sys.exit("the forked child hung (no result in 60 s)")
process.join(30)
assert process.exitcode == 0, process.exitcode
for m in merged:
    np.testing.assert_array_equal(m, expected[0])
for c in centers:
    np.testing.assert_array_equal(c, expected[1])
if release:  # the child keeps its threads, torch's ops work there too
    assert not single and max_threads == parent_threads and warned == [], (max_threads, warned)
    assert torch_sum in (None, 2.0 * (1 << 22)), torch_sum
else:  # one thread; asking for more warns once (None, OpenMP's default, does not)
    assert single and max_threads == 1, (single, max_threads)
    assert len(warned) == 1 and "num_threads=2" in warned[0] and "fork()" in warned[0], warned
np.testing.assert_array_equal(work(2), expected[0])  # the parent keeps its threads
print("ok")
"""


@pytest.mark.parametrize("release", ["release", "keep"])
@pytest.mark.parametrize("parent_pool", ["pdl_post", "torch"])
def test_forked_child_runs_after_the_parent_used_threads(parent_pool, release):
    if parent_pool == "torch":
        pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, parent_pool, release],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
