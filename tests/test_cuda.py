"""The CUDA path: what only it has, and clear errors where it cannot run.

The CPU suite (tests/test_merge.py) runs every input family on every device: ``cpu``,
``emulated`` (the CUDA sources on the host emulator, everywhere) and ``cuda`` (a GPU with torch or
CuPy arrays, skipped without one), comparing everything with the CPU path (tests/devices.py). Here:
the CUDA-only paths (global histogram, divergent warps, concurrent calls, its own errors), the
GPU-only behaviour (strided torch views, streams, output library), and the dispatch and errors that
run everywhere.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import pdl_post
from conftest import assert_results_equal
from devices import (
    EMULATION,
    GPU,
    HostCudaArray,
    InterfaceOnlyArray,
    forget_capacities,
    needs_gpu,
    run_on,
    speculation_seen,
    to_device,
    to_host,
)
from pdl_post import synthetic

# ---------------------------------------------------------------------------------------------
# Paths only the CUDA code has (the CPU suite, tests/test_merge.py, runs on every device too)
# ---------------------------------------------------------------------------------------------


def test_thousands_of_centres_use_the_global_histogram(cuda_device):
    # (K + 1) x C beyond the shared-memory histogram: counted with global atomics (and, above
    # kBruteForceCentersMax, the grid search and the numbering by sort).
    s = synthetic.make_scene(256, 512, 2500, seed=7)
    r = run_on(cuda_device, s.sem, s.ctr, s.off, top_k=None, stuff_area=0)
    assert len(r.centers) > 1000


def _plateau(h, w, offset, seed=0):
    """A heatmap flat above the threshold (every pixel a peak: K = h * w with top_k=None), thing
    labels, and offsets of `offset` with a few pixels voting far outside the image."""
    sem = np.full((h, w), 11, np.int32)
    sem[: h // 4] = 3  # some stuff
    ctr = np.full((1, h, w), 0.5, np.float32)
    off = np.full((2, h, w), offset, np.float32)
    rng = np.random.default_rng(seed)
    far = rng.random((h, w)) < 0.01
    off[0][far], off[1][far] = 5e6, -3e6  # outside the vote grid: compared with every centre
    return sem, ctr, off


@pytest.mark.parametrize(
    "offset",
    [0.0, 0.5, 2.0],
    ids=["on-centres", "four-way-ties", "shifted"],
)
def test_dense_peaks_use_the_grid_search_and_sorted_numbering(cuda_device, offset):
    # top_k=None on a plateau: one centre per pixel (more than kBruteForceCentersMax, so the
    # votes search the grid and the instances are numbered after a sort). A half-pixel offset
    # lands every vote exactly between four centres: the lowest index must win, as on the CPU.
    sem, ctr, off = _plateau(36, 52, offset)
    r = run_on(cuda_device, sem, ctr, off, top_k=None, stuff_area=0, label_divisor=10_000)
    assert len(r.centers) == 36 * 52
    assert sum(seg["isthing"] for seg in r.segments) > 1000


def test_many_centres_in_a_batch_with_few_and_none(cuda_device):
    # The grid search applies to the whole call: an image with a few centres and one with none
    # share it with a dense one; a lone centre in a large grid makes votes search many rings.
    dense, ctr_dense, off_dense = _plateau(40, 48, 0.5, seed=1)
    few = synthetic.make_scene(40, 48, 3, seed=2, integer_offsets=True)
    sem = np.stack([dense, few.sem, few.sem])
    ctr = np.stack([ctr_dense, few.ctr, np.zeros_like(few.ctr)])
    lone = np.zeros_like(few.ctr)
    lone[0, 38, 1] = 1.0
    ctr = np.concatenate([ctr, lone[None]])
    sem = np.concatenate([sem, few.sem[None]])
    off = np.stack([off_dense, few.off, few.off, few.off])
    results = run_on(cuda_device, sem, ctr, off, top_k=None, stuff_area=0, label_divisor=10_000)
    assert [len(r.centers) for r in results] == [40 * 48, len(results[1].centers), 0, 1]
    assert 0 < len(results[1].centers) <= 3


def test_many_centres_switch_and_numbering_error(cuda_device):
    # The switch: images keeping up to kBruteForceCentersMax (256) centres compare every centre;
    # from 257 on the call adds the grid's count and fill kernels, the summed-area table of
    # occupied cells (2 kernels) and each cell's first ring, and numbers instances with a sort
    # (class keys, then the numbering kernel: one launch more than the pairwise count; cub's
    # scan and sort run on the host under the emulator). And with many centres, a class numbering
    # label_divisor instances raises the CPU's error.
    sem, ctr, off = _plateau(16, 17, 0.0)  # 272 peaks
    launches = {}
    for keep in (256, 257):
        if cuda_device == "emulated":
            EMULATION.take_counters()
        run_on(cuda_device, sem, ctr, off, top_k=keep, stuff_area=0)
        if cuda_device == "emulated":
            launches[keep] = EMULATION.take_counters()["launches"]
    if cuda_device == "emulated":
        assert launches[257] == launches[256] + 2 * 6  # postprocess and merge, 6 more each
    sem, ctr, off = _plateau(36, 52, 0.0)
    with pytest.raises(ValueError) as cpu_error:
        pdl_post.merge(sem, ctr, off, top_k=None, stuff_area=0, label_divisor=1000)
    args = [to_device(a, cuda_device) for a in (sem, ctr, off)]
    with pytest.raises(ValueError) as gpu_error:
        pdl_post.merge(*args, top_k=None, stuff_area=0, label_divisor=1000)
    assert str(gpu_error.value) == str(cpu_error.value)
    assert "1000 or more instances" in str(cpu_error.value)


def _pair_sorts() -> int:
    """Calls since the last look that counted instance x class pairs by sorting (emulator)."""
    return EMULATION.take_counters().get("launches of pair_runs_kernel", 0)


def _blocks_with_ties(label_base, classes, seed):
    """A 4 x 4 grid of instances (exact integer votes to each block's centre) over 52 x 64 pixels,
    thing labels from label_base on: even blocks split evenly between two classes (the larger
    one first, so that the tie must go to the smaller), odd blocks draw from three classes with
    random counts; the last four rows are stuff (class 7) without centres."""
    rng = np.random.default_rng(seed)
    h, w, bh, bw = 52, 64, 12, 16
    yy, xx = np.indices((h, w))
    cy = np.minimum(yy // bh, 3) * bh + bh // 2
    cx = xx // bw * bw + bw // 2
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, cy[:48], cx[:48]] = 1.0
    off = np.stack([cy - yy, cx - xx]).astype(np.float32)
    off[:, 48:] = 0
    sem = np.full((h, w), 7, np.int64)
    for i in range(16):
        rows = slice(i // 4 * bh, i // 4 * bh + bh)
        cols = slice(i % 4 * bw, i % 4 * bw + bw)
        picks = np.sort(rng.choice(classes, 3, replace=False)) + label_base
        if i % 2 == 0:
            block = np.repeat([picks[1], picks[0]], bh * bw // 2)
        else:
            block = rng.choice(picks, bh * bw, p=rng.dirichlet(np.ones(3)))
        sem[rows, cols] = block.reshape(bh, bw)
    things = list(range(label_base, label_base + classes))
    return sem, ctr, off, things


def test_instance_class_pairs_beyond_the_histogram_are_sorted(cuda_device):
    # (K + 1) x C counters beyond shared memory and 4 per pixel are replaced by a sort of every
    # pixel's (instance, class) key (cpp/cuda/cuda_common.cuh, PairSort): the same areas and
    # majorities, ties to the smallest class, in memory linear in the pixels. Dense class ids
    # up to about 4100 (17 instance rows of some 4000 classes for 3328 pixels), alone, with a
    # foreground mask, and in a batch (the choice is per call) with an image of few classes and
    # one without centres (keys of several images, an image whose keys all sort last).
    sem, ctr, off, things = _blocks_with_ties(100, 4000, seed=1)
    kw = dict(thing_ids=things, stuff_area=0, label_divisor=1000)
    if cuda_device == "emulated":
        _pair_sorts()
    cpu = run_on(cuda_device, sem, ctr, off, **kw)
    assert len(cpu.centers) == 16
    for i in range(0, 16, 2):  # the evenly split blocks: the smaller class
        block = sem[i // 4 * 12 : i // 4 * 12 + 12, i % 4 * 16 : i % 4 * 16 + 16]
        assert cpu.panoptic[i // 4 * 12 + 6, i % 4 * 16 + 8] // 1000 == block.min()
    mask = np.random.default_rng(2).random(sem.shape) < 0.7
    run_on(cuda_device, sem, ctr, off, mask=mask, **kw)
    few_sem, few_ctr, few_off, _ = _blocks_with_ties(100, 40, seed=3)
    run_on(
        cuda_device,
        np.stack([sem, few_sem, sem]),
        np.stack([ctr, few_ctr, np.zeros_like(ctr)]),
        np.stack([off, few_off, off]),
        **kw,
    )
    if cuda_device == "emulated":
        assert _pair_sorts() == 3 * 2  # postprocess and merge of each call
        run_on(cuda_device, few_sem, few_ctr, few_off, **kw)  # 17 x < 140 bins: the histogram
        assert _pair_sorts() == 0


def test_compacted_class_ids_do_not_take_a_table_per_instance(cuda_device):
    # Every pixel its own class id from 65536 on (compacted tables: C = 6144 distinct ids) and up
    # to 200 centres: the (K + 1) x C histogram would take 9.9 MB of counters for 6144 pixels.
    # Counted by sorting, the call's scratch stays below 1.5 MB (the pool's high-water mark on
    # the emulator); the CPU's counting sort needs no such table either.
    rng = np.random.default_rng(5)
    sem = (65_536 + rng.permutation(64 * 96)).reshape(64, 96).astype(np.int64)
    ctr = rng.random((1, 64, 96)).astype(np.float32)
    off = rng.normal(0, 4, (2, 64, 96)).astype(np.float32)
    kw = dict(thing_ids=np.unique(sem[::2]).tolist(), stuff_area=0, top_k=200, nms_kernel=3)
    if cuda_device == "emulated":
        _pair_sorts()
        EMULATION.cuda_release_memory()
    cpu = run_on(cuda_device, sem, ctr, off, **kw)
    assert len(cpu.centers) == 200
    if cuda_device == "emulated":
        assert _pair_sorts() == 2
        high_water = EMULATION.cuda_release_memory()
        assert high_water < 1_500_000 < 201 * 6144 * 8, high_water


@contextlib.contextmanager
def _switched(device, hook, on=True):
    """A CUDA-path switch on or off inside the block: a candidate's (pdl_post._cuda.CANDIDATES)
    or packed loads' (on by default)."""
    module = EMULATION if device == "emulated" else pdl_post._core
    previous = getattr(module, hook)(on)
    try:
        yield
    finally:
        getattr(module, hook)(previous)


def _vote_chunks(device):
    return _switched(device, "_set_cuda_vote_chunks")


def _vote_scenes():
    """Inputs for the vote's search: a synthetic scene, the same with noisy offsets (votes spread
    far), two centres equally far from every vote (ties: the lower index wins), every vote on the
    second centre, votes so far off that every distance overflows to inf beside ordinary ones in
    the same rows (all-inf picks the first), and rows of K = 5, 8 or 9 centres whose votes fall
    midway between neighbours (ties inside a group of four and across two groups, whole groups
    and a remainder)."""
    rng = np.random.default_rng(7)
    s = synthetic.make_scene(96, 160, 30, seed=3)
    yield s.sem, s.ctr, s.off, {}
    noisy = (s.off + rng.normal(0, 40, s.off.shape)).astype(np.float32)
    yield s.sem, s.ctr, noisy, {}
    h, w = 8, 64
    sem = np.full((h, w), 11, np.int32)
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, 3, 10], ctr[0, 3, 30] = 0.9, 0.8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ties = np.stack([3 - yy, 20 - xx]).astype(np.float32)
    yield sem, ctr, ties, dict(nms_kernel=3, stuff_area=0)
    on_second = np.stack([3 - yy, 30 - xx]).astype(np.float32)
    yield sem, ctr, on_second, dict(nms_kernel=3, stuff_area=0)
    far = ties.copy()
    far[:, :, ::3] = 3e19
    yield sem, ctr, far, dict(nms_kernel=3, stuff_area=0)
    yield sem, ctr, np.full_like(ties, 3e19), dict(nms_kernel=3, stuff_area=0)
    for k in (5, 8, 9):
        yield _midway_votes(k)


def _midway_votes(k):
    """K centres on row 3, 8 columns apart, scores falling left to right (centre j is the j-th
    kept); pixel x votes midway between centres x % (K - 1) and the next: a tie that the lower
    index wins, so the last centre keeps no pixel."""
    h, w = 6, 8 * k + 8
    sem = np.full((h, w), 11, np.int32)
    ctr = np.zeros((1, h, w), np.float32)
    columns = 4 + 8 * np.arange(k)
    ctr[0, 3, columns] = np.linspace(0.9, 0.5, k)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    midway = (columns[:-1] + 4)[np.arange(w) % (k - 1)].astype(np.float32)
    off = np.stack([3 - yy, midway[None, :] - xx]).astype(np.float32)
    return sem, ctr, off, dict(nms_kernel=3, stuff_area=0)


def test_vote_in_chunks_equals_the_fixed_share(cuda_device):
    # set_cuda_vote_chunks (cuda_pipeline.h), off by default until GPU timings decide: warps take
    # 256 pixels at a time from a counter per image. The CPU's answer on the vote scenes (ties,
    # overflowing distances), a batch whose images end in a partial chunk, rows narrower than a
    # warp, many centres (the vote grid) and a foreground mask.
    scenes = list(_vote_scenes())
    b = synthetic.make_batch(3, 37, 29, 6, seed=9)  # 1073 pixels: 4 chunks and 49 pixels
    scenes.append((b.sem, b.ctr, b.off, {}))
    narrow = synthetic.make_batch(2, 40, 7, 2, seed=4)  # rows of 7: a warp spans 5 rows
    scenes.append((narrow.sem, narrow.ctr, narrow.off, {}))
    many = synthetic.make_scene(64, 96, 300, seed=2)
    scenes.append((many.sem, many.ctr, many.off, dict(top_k=None, nms_kernel=3)))
    for sem, ctr, off, kw in scenes:
        with _vote_chunks(cuda_device):
            run_on(cuda_device, sem, ctr, off, **kw)  # compares the device's answer
    mask = b.sem % 3 == 0
    with _vote_chunks(cuda_device):
        run_on(cuda_device, b.sem, b.ctr, b.off, mask=mask)


def _equidistant_far_votes(k):
    """K centres as in _midway_votes, every vote near x = 1e9 (floats 64 apart there): most
    centres' float distances round to the same value, so the lowest index among them wins."""
    sem, ctr, off, kw = _midway_votes(k)
    rng = np.random.default_rng(k)
    h, w = sem.shape
    xx = np.arange(w, dtype=np.float64)[None, :]
    off[1] = (1e9 - xx + rng.uniform(-300, 300, (h, w))).astype(np.float32)
    off[0] += rng.uniform(-0.5, 0.5, (h, w)).astype(np.float32)
    return sem, ctr, off, kw


def test_vote_by_warp_box_equals_the_brute_force(cuda_device):
    # set_cuda_vote_box (cuda_pipeline.h), off by default until GPU timings decide: each warp
    # compares only the centres whose lower bound to the box of its votes is at most the smallest
    # upper bound. The CPU's answer on the vote scenes (ties, overflowing distances, all-inf
    # votes), rows of 33 to 256 centres (several ballot groups of 32) voting midway between
    # neighbours (ties the lower index wins) or from 1e9 away (float distances that round to
    # ties), a batch, a mask, rows narrower than a warp, and with the vote in chunks too.
    scenes = list(_vote_scenes())
    for k in (33, 64, 65):
        scenes.append(_midway_votes(k))
        scenes.append(_equidistant_far_votes(k))
    sem, ctr, off, kw = _midway_votes(256)  # kBruteForceCentersMax: the whole shared tile
    scenes.append((sem, ctr, off, dict(kw, top_k=None)))
    b = synthetic.make_batch(3, 37, 29, 6, seed=9)
    scenes.append((b.sem, b.ctr, b.off, {}))
    narrow = synthetic.make_batch(2, 40, 7, 2, seed=4)
    scenes.append((narrow.sem, narrow.ctr, narrow.off, {}))
    for sem, ctr, off, kw in scenes:
        with _switched(cuda_device, "_set_cuda_vote_box"):
            run_on(cuda_device, sem, ctr, off, **kw)  # compares the device's answer
    with _switched(cuda_device, "_set_cuda_vote_box"):
        run_on(cuda_device, b.sem, b.ctr, b.off, mask=b.sem % 3 == 0)
        with _vote_chunks(cuda_device):
            run_on(cuda_device, *scenes[1][:3])


def _random_votes(rng):
    """A small image whose every pixel above the threshold is a peak (nms_kernel 1, top_k None),
    so that K is anything up to 256, and votes of every kind: near the centres, exactly midway
    between two (ties), up to 1e30 away (distances that overflow), and NaN or inf (no vote)."""
    h, w = int(rng.integers(1, 7)), int(rng.integers(1, 80))
    k = int(rng.integers(1, min(h * w, 256) + 1))
    ctr = np.zeros((1, h, w), np.float32)
    ctr.reshape(-1)[rng.choice(h * w, k, replace=False)] = rng.uniform(0.2, 1.0, k)
    peaks = np.argwhere(ctr[0] > 0.1).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pick = rng.integers(0, len(peaks), (2, h, w))
    target = (peaks[pick[0]] + peaks[pick[1]]) / 2  # a centre (pick[0] == pick[1]) or a midpoint
    off = np.stack([target[..., 0] - yy, target[..., 1] - xx])
    kind = rng.integers(0, 5, (h, w))
    off += np.where(kind == 1, rng.normal(0, 2, off.shape), 0)
    far = 10 ** rng.uniform(3, 30, off.shape) * rng.choice([-1, 1], off.shape)
    off = np.where(kind == 2, far, off)
    off = np.where(kind == 3, rng.choice([np.nan, np.inf, -np.inf], off.shape), off)
    sem = np.where(rng.random((h, w)) < 0.8, 11, 0).astype(np.int32)
    return sem, ctr, off.astype(np.float32), dict(nms_kernel=1, top_k=None, stuff_area=0)


def test_vote_by_warp_box_on_random_votes(cuda_device):
    # The warp box against the brute force (the CPU's answer) on 40 random small images: K from 1
    # to 256, warps whose votes mix centres, ties, overflowing distances and no votes at all.
    rng = np.random.default_rng(2026)
    with _switched(cuda_device, "_set_cuda_vote_box"):
        for _ in range(40):
            sem, ctr, off, kw = _random_votes(rng)
            run_on(cuda_device, sem, ctr, off, **kw)


def test_peaks_by_warp_equal_the_block_per_row(cuda_device):
    # set_cuda_warp_peaks (cuda_pipeline.h), off by default until GPU timings decide: a warp per
    # row writes the peaks (the selection's input) or, every peak kept, the centres. The CPU's
    # answer where rows are narrower than a warp, end in a partial group of 32, hold peaks at
    # both sides of a group's edge (x = 31, 32) and at the row's ends, or are all peaks (a flat
    # heatmap: every row written); with top-k sorting, top_k = 0 and more rows than the grid has
    # warps at once.
    h, w = 12, 70
    ctr = np.zeros((2, 1, h, w), np.float32)
    for x in (0, 31, 32, 63, 64, 69):
        ctr[0, 0, 5, x] = 0.5 + x / 100
    ctr[1, 0, 2, 1:6:2] = 0.9
    sem = np.full((2, h, w), 11, np.int32)
    off = np.zeros((2, 2, h, w), np.float32)
    scenes = [(sem, ctr, off, dict(nms_kernel=1, stuff_area=0, top_k=None))]
    scenes.append((sem, ctr, off, dict(nms_kernel=1, stuff_area=0, top_k=3)))  # sorted
    scenes.append((sem, ctr, off, dict(nms_kernel=1, stuff_area=0, top_k=0)))
    flat = np.full((1, 9, 40), 0.5, np.float32)  # every pixel a peak
    scenes.append((sem[0, :9, :40], flat, off[0, :, :9, :40], dict(nms_kernel=1, top_k=None)))
    narrow = synthetic.make_batch(2, 40, 7, 2, seed=4)
    scenes.append((narrow.sem, narrow.ctr, narrow.off, {}))
    tall = synthetic.make_batch(3, 400, 24, 8, seed=6)
    scenes.append((tall.sem, tall.ctr, tall.off, dict(top_k=5)))
    # 9000 rows: beyond the 8448 warps that the emulator's 132 multiprocessors hold at once, so
    # warps take a second row; peaks on both sides of row 8448.
    rows = np.zeros((2, 1, 4500, 3), np.float32)
    rows[1, 0, [3900, 3947, 3948, 4499], 1] = 0.7
    rows[0, 0, 10, 2] = 0.6
    still = np.zeros((2, 2, 4500, 3), np.float32)
    kw = dict(nms_kernel=1, stuff_area=0, top_k=None)
    scenes.append((np.full((2, 4500, 3), 11, np.int32), rows, still, kw))
    for sem_, ctr_, off_, kw in scenes:
        if cuda_device == "emulated":
            EMULATION.take_counters()
        with _switched(cuda_device, "_set_cuda_warp_peaks"):
            run_on(cuda_device, sem_, ctr_, off_, **kw)  # compares the device's answer
        if cuda_device == "emulated":
            counts = EMULATION.take_counters()
            assert counts.get("launches of write_peaks_by_warp_kernel", 0) > 0, kw
            assert counts.get("launches of write_peaks_kernel", 0) == 0, kw


def test_centres_skip_the_selection_when_every_peak_is_kept(cuda_device):
    # Where no image has more peaks than top_k (and top_k != 0), the peaks are written straight as
    # the centres (write_every_peak_as_center); else the selection runs. The CPU's answer (centres
    # and scores included) either way, per image of a mixed batch too.
    b = synthetic.make_batch(3, 40, 56, 6, seed=5)
    sem = b.sem.astype(np.int32)
    peaks = [
        len(pdl_post.postprocess(sem[i], b.ctr[i], b.off[i], top_k=None).centers) for i in range(3)
    ]
    assert min(peaks) < max(peaks), peaks  # so that top_k = max - 1 sorts some images only
    flat = np.zeros_like(b.ctr)
    cases = [
        ("every peak kept", b.ctr, {}, False),
        ("top_k=None", b.ctr, dict(top_k=None), False),
        ("no peaks at all", flat, {}, False),
        ("no peaks, top_k=0", flat, dict(top_k=0), False),
        ("top_k=0 keeps none", b.ctr, dict(top_k=0), True),
        ("some images sorted", b.ctr, dict(top_k=max(peaks) - 1), True),
        ("every image sorted", b.ctr, dict(top_k=2), True),
        ("detectron2: as many peaks as top_k", b.ctr, dict(top_k=max(peaks)), False),
        (
            "detectron2: as many as top_k",
            b.ctr,
            dict(top_k=max(peaks), topk_mode="detectron2"),
            True,
        ),
    ]
    for what, ctr, kw, selected in cases:
        if cuda_device == "emulated":
            EMULATION.take_counters()
        run_on(cuda_device, sem, ctr, b.off, **kw)
        if cuda_device == "emulated":
            launches = EMULATION.take_counters().get("launches of default_kept_kernel", 0)
            assert launches == (2 if selected else 0), what  # postprocess and merge


def _find_centers_on(device, ctr, layout=to_device, **kw):
    """find_centers of `ctr` on `device` (made there by `layout`) gives the CPU's centres and
    scores exactly, int64 [K, 2] and float64 [K] on the device (torch tensors for torch input);
    returns the CPU's answer."""
    cpu = pdl_post.find_centers(ctr, backend="cpu", **kw)
    got = pdl_post.find_centers(layout(ctr, device), **kw)
    batched = isinstance(cpu, list)
    assert isinstance(got, list) == batched
    for (centers, scores), (on_device, scores_on_device) in zip(
        cpu if batched else [cpu], got if batched else [got]
    ):
        if device == "emulated":
            assert type(on_device) is HostCudaArray and type(scores_on_device) is HostCudaArray
        elif GPU == "torch":
            assert on_device.is_cuda and scores_on_device.is_cuda
        host, host_scores = to_host(on_device), to_host(scores_on_device)
        assert host.dtype == np.int64 and host.shape == centers.shape, kw
        assert host_scores.dtype == np.float64 and host_scores.shape == scores.shape, kw
        np.testing.assert_array_equal(host, centers, err_msg=str(kw))
        np.testing.assert_array_equal(host_scores, scores, err_msg=str(kw))
    return cpu


def test_find_centers_on_the_device_equals_the_cpu(cuda_device):
    # Steps 1-4 alone on the device: every top-k path (every peak kept, some or all images
    # sorted, none kept, detectron2's rule), both NMS paths (a window test per pixel up to 41, the
    # separable filter above), plateaus, NaN and infinities, float64, float16 (widened on the
    # device), strided views, unbatched shapes and empty inputs.
    b = synthetic.make_batch(3, 40, 56, 6, seed=5)
    peaks = [len(c) for c, _ in pdl_post.find_centers(b.ctr, top_k=None)]
    assert min(peaks) < max(peaks), peaks
    for kw in (
        {},
        dict(top_k=None),
        dict(top_k=0),
        dict(top_k=2),
        dict(top_k=max(peaks) - 1),
        dict(top_k=max(peaks), topk_mode="detectron2"),
        dict(top_k=2, topk_mode="detectron2"),
        dict(nms_kernel=1, top_k=None),
        dict(nms_kernel=3, threshold=-0.5, top_k=50),
        dict(nms_kernel=43, top_k=None),
        dict(nms_kernel=301, top_k=3),
    ):
        _find_centers_on(cuda_device, b.ctr, **kw)
    rng = np.random.default_rng(3)
    rough = (b.ctr + rng.uniform(0, 0.08, b.ctr.shape)).astype(np.float32)
    wild = rng.normal(0, 1, b.ctr.shape).astype(np.float32)
    wild[rng.random(wild.shape) < 0.1] = np.nan
    wild[rng.random(wild.shape) < 0.03] = np.inf
    wild[rng.random(wild.shape) < 0.03] = -np.inf
    flat = np.full_like(b.ctr, 0.5)
    flat[:, :, 10:14, 20:30] = 0.75
    for ctr in (np.round(rough * 4) / 4, wild, flat, rough.astype(np.float64)):
        for kw in (dict(top_k=None), dict(top_k=5), dict(nms_kernel=43, top_k=7)):
            _find_centers_on(cuda_device, ctr, **kw)
    _find_centers_on(cuda_device, rough.astype(np.float16), top_k=None)  # widened
    _find_centers_on(cuda_device, b.ctr[0], top_k=4)  # [1, H, W]
    _find_centers_on(cuda_device, b.ctr[1, 0], top_k=None)  # [H, W]
    _find_centers_on(cuda_device, b.ctr[:0])  # no image
    _find_centers_on(cuda_device, b.ctr[:, :, :, :0])  # images without pixels
    # Views read in place: every other column, and a column-major copy.
    _find_centers_on(cuda_device, rough, _every_other_column, top_k=None)
    _find_centers_on(cuda_device, rough, _column_major, top_k=6)


def test_find_centers_on_the_device_synchronises_twice_and_reads_no_labels(
    emulated_cuda, monkeypatch
):
    # The counts' synchronisation (they size the selection) and the read-back's; no label range
    # (there are no labels) and no vote; the scratch is freed (emulated_cuda checks the leaks).
    # The results go back to the device in one copy for the whole batch.
    from pdl_post import _cuda

    uploads = []
    to_device_ = _cuda._to_device
    monkeypatch.setattr(
        _cuda, "_to_device", lambda *args: uploads.append(args[1].size) or to_device_(*args)
    )
    b = synthetic.make_batch(3, 40, 56, 6, seed=5)
    ctr = HostCudaArray(b.ctr)
    for kw in (dict(top_k=None), dict(top_k=2)):
        EMULATION.take_counters()
        pairs = pdl_post.find_centers(ctr, **kw)
        counts = EMULATION.take_counters()
        assert counts["synchronisations"] == 2, counts
        assert counts["device_to_host_copies"] == 2, counts
        assert not [n for n in counts if "label_range" in n or "vote" in n], counts
        assert uploads == [3 * sum(len(scores.a) for _, scores in pairs)], uploads
        uploads.clear()
    # A job made for the centres has no labels for the rest of the pipeline.
    ctr4 = (b.ctr.ctypes.data, "float32", list(b.ctr.shape), [56 * 40, 56 * 40, 56, 1])
    options = ([], 1000, 0, 0, 0.1, 7, 200, "exact")
    job = EMULATION.CudaMerge(None, None, ctr4, None, None, 0, 1, *options)
    with pytest.raises(ValueError, match="label_range: the job has no sem"):
        job.label_range()
    job.finish_centers()
    with pytest.raises(ValueError, match="finish_centers: already called"):
        job.finish_centers()


def _group_pixels_on(device, sem, centers, off, layout=to_device, **kw):
    """group_pixels on `device` (images made there by `layout`; centres as given) equals the CPU's
    instance map: int32, on the device; returns it."""
    mask = kw.pop("foreground_mask", None)
    cpu = pdl_post.group_pixels(sem, centers, off, foreground_mask=mask, backend="cpu", **kw)
    got = pdl_post.group_pixels(
        None if sem is None else layout(sem, device),
        centers,
        layout(off, device),
        foreground_mask=None if mask is None else layout(mask, device),
        **kw,
    )
    if device == "emulated":
        assert type(got) is HostCudaArray
    host = to_host(got)
    assert host.dtype == np.int32 and host.shape == cpu.shape
    np.testing.assert_array_equal(host, cpu)
    return cpu


def _random_centers(rng, k, h, w):
    return np.stack([rng.integers(0, h, k), rng.integers(0, w, k)], axis=1).astype(np.int64)


def test_group_pixels_on_the_device_equals_the_cpu(cuda_device):
    # The vote alone on the device (merge's vote kernels, every pixel's instance read from a
    # thing mask): brute force, the vote grid (more than 256 centres) and its quadtree (more than
    # 768), in one batch and alone; duplicate centres (ties to the lower index), none at all;
    # masks, logits, every label dtype, sorted thing ids, float64 / float16 offsets, non-finite
    # and far votes, strided views and unbatched inputs.
    rng = np.random.default_rng(11)
    b = synthetic.make_batch(3, 40, 56, 6, seed=5)
    found = [c for c, _ in pdl_post.find_centers(b.ctr)]
    assert all(len(c) for c in found)
    sem32 = b.sem.astype(np.int32)
    instance = _group_pixels_on(cuda_device, sem32, found, b.off)
    assert instance.max() > 0 and (instance == 0).any()
    duplicates = [np.concatenate([c, c[::-1]]) for c in found]
    _group_pixels_on(cuda_device, sem32, duplicates, b.off)
    mixed = [
        np.zeros((0, 2), np.int64),
        _random_centers(rng, 300, 40, 56),
        _random_centers(rng, 900, 40, 56),
    ]
    _group_pixels_on(cuda_device, sem32, mixed, b.off)
    _group_pixels_on(cuda_device, sem32, [mixed[2], mixed[1][:3], mixed[1]], b.off)
    for dtype in (np.uint8, np.int16, np.int64):
        _group_pixels_on(cuda_device, b.sem.astype(dtype), found, b.off)
    big = b.sem.astype(np.int64) + 70_000
    things = [t + 70_000 for t in range(11, 19)]
    _group_pixels_on(cuda_device, big, found, b.off, thing_ids=things)
    _group_pixels_on(cuda_device, sem32, found, b.off, thing_ids=[])
    mask = rng.random(sem32.shape) < 0.5
    _group_pixels_on(cuda_device, sem32, found, b.off, foreground_mask=mask)
    _group_pixels_on(cuda_device, None, found, b.off, foreground_mask=mask)
    levels = rng.integers(0, 3, sem32.shape).astype(np.uint8)  # uint8 masks: > 0 votes
    _group_pixels_on(cuda_device, None, found, b.off, foreground_mask=levels)
    logits = synthetic.make_batch(3, 40, 56, 6, seed=5, logits=True).logits
    _group_pixels_on(cuda_device, logits, found, b.off)
    wild = b.off.copy()
    wild[rng.random(wild.shape) < 0.05] = np.nan
    wild[rng.random(wild.shape) < 0.05] = np.inf
    wild[rng.random(wild.shape) < 0.05] = 1e30
    _group_pixels_on(cuda_device, sem32, found, wild)
    _group_pixels_on(cuda_device, sem32, mixed, wild)
    _group_pixels_on(cuda_device, sem32, found, b.off.astype(np.float64))
    _group_pixels_on(cuda_device, sem32, found, b.off.astype(np.float16))
    _group_pixels_on(cuda_device, sem32, found, b.off, _column_major)
    _group_pixels_on(cuda_device, sem32, mixed, b.off, _every_other_column)
    _group_pixels_on(cuda_device, sem32[1], found[1], b.off[1])  # [H, W], [2, H, W]
    _group_pixels_on(cuda_device, sem32[:, :, :0], [np.zeros((0, 2), np.int64)] * 3, b.off[..., :0])


def test_group_pixels_on_the_device_errors_as_on_the_cpu(cuda_device):
    b = synthetic.make_batch(2, 24, 32, 4, seed=1)
    sem = b.sem.astype(np.int32)
    sem[1, 5, 5] = -3
    centers = [np.array([[1, 1]]), np.array([[2, 2]])]
    cases = {
        "negative class id": (sem, centers, b.off, {}),
        "centre outside": (b.sem, [np.array([[24, 0]]), centers[1]], b.off, {}),
        "one list short": (b.sem, centers[:1], b.off, {}),
        "sem and off mixed": (b.sem[0], centers[0], b.off, {}),
        "no sem, no mask": (None, centers, b.off, {}),
        "sizes differ": (b.sem[..., :30], centers, b.off, {}),
    }
    for what, (s, c, off, kw) in cases.items():
        with pytest.raises((TypeError, ValueError)) as on_cpu:
            pdl_post.group_pixels(s, c, off, backend="cpu", **kw)
        with pytest.raises(type(on_cpu.value)) as on_device:
            pdl_post.group_pixels(
                None if s is None else to_device(s, cuda_device),
                c,
                to_device(off, cuda_device),
                **kw,
            )
        assert str(on_device.value) == str(on_cpu.value), what


def test_group_pixels_on_the_device_queues_without_synchronising(emulated_cuda):
    # Like merge: the work queued on the stream, no synchronisation, unless signed labels need
    # their minimum checked (one, after the vote); logits, uint8 labels and masks need none.
    b = synthetic.make_batch(2, 40, 56, 6, seed=5)
    found = [c for c, _ in pdl_post.find_centers(b.ctr)]
    logits = synthetic.make_batch(2, 40, 56, 6, seed=5, logits=True).logits
    off = HostCudaArray(b.off)
    for sem, mask, syncs in (
        (b.sem.astype(np.int32), None, 1),
        (b.sem.astype(np.uint8), None, 0),
        (logits, None, 0),
        (None, b.sem > 12, 0),
    ):
        EMULATION.take_counters()
        pdl_post.group_pixels(
            None if sem is None else HostCudaArray(sem),
            found,
            off,
            foreground_mask=None if mask is None else HostCudaArray(mask),
        )
        counts = EMULATION.take_counters()
        assert counts.get("synchronisations", 0) == syncs, counts
        assert counts["launches of thing_flags_kernel" if mask is None else "launches"] >= 1
    # Stages end to end on the device: find_centers' device centres go straight in.
    centers = [c for c, _ in pdl_post.find_centers(HostCudaArray(b.ctr))]
    got = pdl_post.group_pixels(HostCudaArray(b.sem), centers, off)
    np.testing.assert_array_equal(got.a, pdl_post.group_pixels(b.sem, found, b.off))


def _fuse_on(device, sem, instance, layout=to_device, **kw):
    """fuse on `device` (both maps made there by `layout`) equals the CPU's panoptic map (ids and
    dtype); returns it."""
    cpu = pdl_post.fuse(sem, instance, backend="cpu", **kw)
    got = pdl_post.fuse(layout(sem, device), layout(instance, device), **kw)
    host = to_host(got)
    assert host.dtype == cpu.dtype and host.shape == cpu.shape, kw
    np.testing.assert_array_equal(host, cpu, err_msg=str(kw))
    return cpu


def test_fuse_on_the_device_equals_the_cpu(cuda_device):
    # merge's second phase on a given instance map: instance maps from group_pixels and random
    # ones (instances over stuff and thing pixels alike, absent ids), more than 256 instances (the
    # numbering by sort), ids beyond H * W (renumbered on the device), every integer dtype,
    # strided maps (converted), logits, class ids from 70000 up, a small label_divisor and
    # stuff_area, unbatched maps.
    rng = np.random.default_rng(5)
    b = synthetic.make_batch(3, 40, 56, 6, seed=5)
    sem = b.sem.astype(np.int32)
    found = [c for c, _ in pdl_post.find_centers(b.ctr)]
    grouped = pdl_post.group_pixels(sem, found, b.off)
    pan = _fuse_on(cuda_device, sem, grouped)
    assert (pan % 1000 > 0).any()
    _fuse_on(cuda_device, sem, grouped, stuff_area=0, void_label=0)
    _fuse_on(cuda_device, sem, grouped, thing_ids=[], label_divisor=7)
    scattered = rng.integers(0, 9, sem.shape).astype(np.int32)  # instances over stuff too
    scattered[1] = 0  # an image without instances
    _fuse_on(cuda_device, sem, scattered, stuff_area=50)
    crowd = rng.integers(0, 600, sem.shape).astype(np.int32)  # numbered by sort
    _fuse_on(cuda_device, sem, crowd, label_divisor=10_000)
    sparse = grouped.astype(np.int64) * 1_000_003 + 17 * (grouped > 0)  # beyond H * W
    _fuse_on(cuda_device, sem, sparse)
    _fuse_on(cuda_device, sem, np.where(grouped > 0, grouped.astype(np.int64) + 2**40, 5))
    for dtype in (np.uint8, np.int16, np.uint16, np.int64, np.uint32):
        _fuse_on(cuda_device, sem, grouped.astype(dtype))
    _fuse_on(cuda_device, sem, grouped, _column_major)
    _fuse_on(cuda_device, b.sem.astype(np.uint8), grouped)
    logits = synthetic.make_batch(3, 40, 56, 6, seed=5, logits=True).logits
    cpu = pdl_post.fuse(logits, grouped, backend="cpu")
    got = pdl_post.fuse(to_device(logits, cuda_device), to_device(grouped, cuda_device))
    np.testing.assert_array_equal(to_host(got), cpu)
    big = sem.astype(np.int64) + 70_000
    _fuse_on(cuda_device, big, grouped, thing_ids=[t + 70_000 for t in range(11, 19)])
    _fuse_on(cuda_device, sem[2], grouped[2])  # [H, W]
    _fuse_on(cuda_device, sem[:, :, :0], grouped[:, :, :0])


def test_fuse_on_the_device_errors_as_on_the_cpu(cuda_device):
    b = synthetic.make_batch(2, 24, 32, 4, seed=1)
    sem = b.sem.astype(np.int32)
    instance = np.zeros_like(sem)
    instance[:, :10] = 1 + np.arange(32)  # 32 instances of one class per image
    negative_sem = sem.copy()
    negative_sem[1, 3, 3] = -2
    negative_instance = instance.copy()
    negative_instance[0, 5, 5] = -1
    cases = {
        "label_divisor": (sem, instance, dict(label_divisor=20, thing_ids=range(30))),
        "negative class id": (negative_sem, instance, {}),
        "negative instance id": (sem, negative_instance, {}),
        "float instance map": (sem, instance.astype(np.float32), {}),
        "shape": (sem, instance[0], {}),
        "sizes differ": (sem, instance[:, :, :30], {}),
        "no sem": (None, instance, {}),
    }
    for what, (s, inst, kw) in cases.items():
        with pytest.raises((TypeError, ValueError)) as on_cpu:
            pdl_post.fuse(s, inst, backend="cpu", **kw)
        with pytest.raises(type(on_cpu.value)) as on_device:
            pdl_post.fuse(
                None if s is None else to_device(s, cuda_device), to_device(inst, cuda_device), **kw
            )
        assert str(on_device.value) == str(on_cpu.value), what


def test_fuse_on_the_device_queues_like_merge(emulated_cuda):
    # One synchronisation (the label and instance ranges), then the work queued; a second one only
    # where an image may number label_divisor instances, or after the map was converted.
    b = synthetic.make_batch(2, 40, 56, 6, seed=5)
    sem = b.sem.astype(np.int32)
    found = [c for c, _ in pdl_post.find_centers(b.ctr)]
    grouped = pdl_post.group_pixels(sem, found, b.off)
    for instance, kw, syncs in (
        (grouped, {}, 1),
        (grouped, dict(label_divisor=3), 2),
        (grouped.astype(np.int64), {}, 2),
        (grouped.astype(np.int64) * 100_000, {}, 2),
    ):
        EMULATION.take_counters()
        try:
            pdl_post.fuse(HostCudaArray(sem), HostCudaArray(instance), **kw)
        except ValueError:
            assert kw  # label_divisor=3: too many instances, read back
        counts = EMULATION.take_counters()
        assert counts["synchronisations"] == syncs, (instance.dtype, kw, counts)
    # The stages end to end on the device.
    centers = [c for c, _ in pdl_post.find_centers(HostCudaArray(b.ctr))]
    instance = pdl_post.group_pixels(HostCudaArray(sem), centers, HostCudaArray(b.off))
    panoptic = pdl_post.fuse(HostCudaArray(sem), instance)
    np.testing.assert_array_equal(panoptic.a, pdl_post.merge(sem, b.ctr, b.off))
    # A job made for fuse has the label range, and refuses merge's and find_centers' finishes.
    view = (sem.ctypes.data, "int32", [2, 1, 40, 56], [40 * 56, 40 * 56, 56, 1])
    job = EMULATION.CudaMerge.for_fuse(view, None, view, 0, 1, [], 1000, 0, 0)
    assert job.label_range() == (int(sem.min()), int(sem.max()))
    for finish in (lambda: job.finish(view, False, True), job.finish_centers):
        with pytest.raises(
            ValueError, match=r"CudaMerge\.finish(_centers)?: the job was made for fuse"
        ):
            finish()
    job.release()


def _misaligned(a, device):
    """`a` on `device`, starting one element past an aligned allocation (no load pack fits)."""
    buffer = np.zeros(a.size + 1, a.dtype)
    buffer[1:] = a.ravel()
    if device == "emulated":
        return HostCudaArray(buffer[1:].reshape(a.shape))
    return to_device(buffer, device)[1:].reshape(a.shape)


def _every_other_column(a, device):
    """`a` on `device` as every other column of an array twice as wide (x stride 2)."""
    wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    wide[..., ::2] = a
    if device == "emulated":
        return HostCudaArray(wide[..., ::2])
    return to_device(wide, device)[..., ::2]


def _column_major(a, device):
    """`a` on `device`, each image stored column by column (the same values, other strides)."""
    swapped = np.ascontiguousarray(np.swapaxes(a, -1, -2))
    if device == "emulated":
        return HostCudaArray(np.swapaxes(swapped, -1, -2))
    return to_device(swapped, device).transpose(-1, -2)


def _rows_of_one_value(a, device):
    """Each row of `a` its first value throughout, as a broadcast view of a device copy: rows W
    apart, the pixels of a row all at one address (x stride 0)."""
    if device == "emulated":
        return HostCudaArray(np.broadcast_to(np.array(a)[..., :1], a.shape))
    first = to_device(a, device)[..., :1]
    if GPU == "torch":
        return first.expand(a.shape)
    import cupy

    return cupy.broadcast_to(first, a.shape)


def _view_of(whole, index):
    """A maker of `whole[index]`, a view into a device copy of `whole`."""
    return lambda _, device: to_device(whole, device)[index]


def _speculation_steps():
    """A sequence of merges on 48 x 64 images, each (what, sem, ctr, off, options, expected): how
    the speculative second phase (cuda_pipeline.h) goes on that call, given the calls before it:
    "learns" (no speculation; the capacities follow this call), "holds", "fails" (its kernels
    return at once and the call goes on without it), "none" (not tried: this size's last call
    did not fit a speculative phase, or this call's output cannot hold the classes learnt) or
    "raises" (tried; the CPU's error)."""
    a = synthetic.make_scene(48, 64, 12, seed=4)
    few = synthetic.make_scene(48, 64, 3, seed=5)
    few_classes = np.minimum(few.sem, 12).astype(np.int32)  # fewer classes than learnt
    many = synthetic.make_scene(48, 64, 60, seed=6, center_sigma=2.0)
    new_class = a.sem.copy()
    new_class[:4, :4] = 25  # a stuff class above those learnt
    negative = a.sem.copy()
    negative[5, 6] = -3
    mask = a.sem >= 11
    logits = synthetic.make_scene(48, 64, 12, seed=4, logits=True).logits
    batch = synthetic.make_batch(3, 48, 64, 12, seed=9)
    crowded = synthetic.make_batch(3, 48, 64, 12, seed=9)
    crowded.sem[1], crowded.ctr[1], crowded.off[1] = many.sem, many.ctr, many.off
    packed = synthetic.make_scene(48, 64, 150, seed=7, center_sigma=1.0)
    beyond = synthetic.make_batch(3, 48, 64, 12, seed=9)
    beyond.sem[2], beyond.ctr[2], beyond.off[2] = packed.sem, packed.ctr, packed.off
    kw = {"stuff_area": 8}
    d27 = {**kw, "label_divisor": 2**27}
    return [
        ("first call", a.sem, a.ctr, a.off, kw, "learns"),
        ("the same again", a.sem, a.ctr, a.off, kw, "holds"),
        ("fewer centres and classes", few_classes, few.ctr, few.off, kw, "holds"),
        ("more centres than learnt", many.sem, many.ctr, many.off, kw, "fails"),
        ("as many again: learnt", many.sem, many.ctr, many.off, kw, "holds"),
        ("a class above those learnt", new_class, a.ctr, a.off, kw, "fails"),
        ("a foreground mask", a.sem, a.ctr, a.off, {**kw, "foreground_mask": mask}, "holds"),
        ("logits", logits, a.ctr, a.off, kw, "holds"),
        # merge allocates int32 first: not speculated on while the classes learnt (19) need
        # more (int32 holds class ids up to 15 here), even where this call's would fit.
        ("ids beyond int32", a.sem, a.ctr, a.off, d27, "none"),
        ("ids in int32 again", a.sem, a.ctr, a.off, kw, "holds"),
        ("fewer classes, in int32", few_classes, few.ctr, few.off, d27, "none"),
        ("int64 output wanted", a.sem, a.ctr, a.off, {**kw, "void_label": -(2**40)}, "holds"),
        ("negative ids", negative, a.ctr, a.off, kw, "raises"),
        ("a batch", batch.sem, batch.ctr, batch.off, kw, "holds"),
        ("one image crowded", crowded.sem, crowded.ctr, crowded.off, kw, "holds"),
        ("one image beyond", beyond.sem, beyond.ctr, beyond.off, kw, "fails"),
        ("top-k sort", many.sem, many.ctr, many.off, {**kw, "top_k": 20}, "fails"),
        ("after a sort", a.sem, a.ctr, a.off, {**kw, "top_k": 20}, "learns"),
        ("learnt again", a.sem, a.ctr, a.off, kw, "holds"),
        ("detectron2's top-k", a.sem, a.ctr, a.off, {**kw, "topk_mode": "detectron2"}, "holds"),
        ("no centres kept", a.sem, a.ctr, a.off, {**kw, "top_k": 0}, "none"),
    ]


def _check_speculation_steps(cuda_device, call, steps):
    """Runs pdl_post.<call> ("merge" or "postprocess") on each of `steps` (_speculation_steps'
    form) on the device and on the CPU: the CPU's results (scores bit for bit) or error; on the
    emulator also the speculation each step expects."""
    emulated = cuda_device == "emulated"
    run = getattr(pdl_post, call)
    for what, sem, ctr, off, kw, expected in steps:
        options = dict(kw)
        mask = options.pop("foreground_mask", None)
        try:
            want = run(sem, ctr, off, foreground_mask=mask, backend="cpu", **options)
        except ValueError as error:
            want = error
        if emulated:
            EMULATION.take_timeline()
        args = [to_device(x, cuda_device) for x in (sem, ctr, off, mask)]
        raised = False
        try:
            got = run(*args[:3], foreground_mask=args[3], **options)
        except ValueError as error:
            assert isinstance(want, ValueError), what
            assert str(error) == str(want), what
            raised = True
        else:
            if call == "merge":
                got = to_host(got)
                assert got.dtype == want.dtype, what
                np.testing.assert_array_equal(got, want, err_msg=what)
            else:
                got.panoptic = to_host(got.panoptic)
                assert_results_equal(got, want, score_rtol=0)
        if emulated:
            seen = speculation_seen(EMULATION.take_timeline(), raised)
            assert seen == ("none" if expected == "learns" else expected), (what, seen)


def test_the_second_phase_is_queued_before_the_counts_on_sizes_seen_before(cuda_device):
    # set_cuda_speculation (cuda_pipeline.h), on by default: merge on images of a size seen
    # before queues its second phase before it waits for the counts, sized by what earlier calls
    # needed, and the device checks those sizes; where they do not hold, the speculative kernels
    # return at once and the call goes on as before. The CPU's answer (or error) on every call of
    # a sequence that holds and fails in every way; the emulator shows which happened, and that
    # the device was never waited for before the speculative vote was queued.
    module = forget_capacities(cuda_device)  # what earlier tests taught it
    _check_speculation_steps(cuda_device, "merge", _speculation_steps())
    # Off: every call waits for its counts first, the same size again included.
    a = synthetic.make_scene(48, 64, 12, seed=4)
    assert module._set_cuda_speculation(False) is True
    try:
        _check_speculation_steps(
            cuda_device, "merge", [("off", a.sem, a.ctr, a.off, {}, "none")] * 2
        )
    finally:
        module._set_cuda_speculation(True)


def test_postprocess_queues_its_second_phase_before_the_counts_too(cuda_device):
    # postprocess takes the speculative second phase as merge does (set_cuda_speculation), then
    # reads back its centres and segments at its usual end: the CPU's results, scores with logits
    # bit for bit, its errors too; held, failed or not tried as the sizes say.
    forget_capacities(cuda_device)
    a = synthetic.make_scene(48, 64, 12, seed=4, logits=True)
    many = synthetic.make_scene(48, 64, 60, seed=6, center_sigma=2.0, logits=True)
    kw = {"stuff_area": 8}
    _check_speculation_steps(
        cuda_device,
        "postprocess",
        [
            ("first call", a.sem, a.ctr, a.off, kw, "learns"),
            ("the same again", a.sem, a.ctr, a.off, kw, "holds"),
            ("logits (scores)", a.logits, a.ctr, a.off, kw, "holds"),
            ("a mask", a.sem, a.ctr, a.off, {**kw, "foreground_mask": a.sem >= 11}, "holds"),
            ("more centres than learnt", many.logits, many.ctr, many.off, kw, "fails"),
            ("as many again", many.logits, many.ctr, many.off, kw, "holds"),
            ("fewer centres", a.logits, a.ctr, a.off, kw, "holds"),
            # a class numbered label_divisor times or more: the error found on the device
            ("label_divisor 2", a.sem, a.ctr, a.off, {**kw, "label_divisor": 2}, "raises"),
        ],
    )


def _packed_launches():
    """Launches of the packed label range and write since the last take_counters()."""
    counts = EMULATION.take_counters()
    kernels = ("label_range_packed_kernel", "write_packed_kernel")
    return tuple(counts.get(f"launches of {k}", 0) for k in kernels)


def _packed_cases():
    """(what, labels, a maker of their device array (labels, device) or None for a copy, ctr,
    off, options, packable)."""
    b = synthetic.make_batch(4, 48, 64, 8, seed=2)
    sem = b.sem.astype(np.int32)
    yield "batch of 4, int32", sem, None, b.ctr, b.off, {}, True
    # Views that are not one row-major block of whole packs: every other image, a crop of
    # columns, one element past an aligned start, column-major images; below, one image's crop
    # and broadcast rows, and an odd number of pixels.
    every_other = (slice(None, None, 2),)
    view = _view_of(sem, every_other)
    yield "every other image", sem[every_other], view, b.ctr[::2], b.off[::2], {}, False
    crop = (slice(None), slice(None), slice(0, 60))
    view = _view_of(sem, crop)
    yield "60 of 64 columns", sem[crop], view, b.ctr[..., :60], b.off[..., :60], {}, False
    yield "misaligned", sem, _misaligned, b.ctr, b.off, {}, False
    yield "column-major", sem, _column_major, b.ctr, b.off, {}, False
    s = synthetic.make_scene(40, 56, 6, seed=8)
    one = s.sem.astype(np.int32)  # one image: the rows' and the pixels' strides alone decide
    crop = (slice(None), slice(0, 52))
    view = _view_of(one, crop)
    yield "52 of 56 columns", one[crop], view, s.ctr[..., :52], s.off[..., :52], {}, False
    flat_rows = np.broadcast_to(one[:, :1], one.shape)
    yield "rows of one value", flat_rows, _rows_of_one_value, s.ctr, s.off, {}, False
    for dtype in (np.uint8, np.int16, np.int64):
        yield f"{np.dtype(dtype).name} labels", s.sem.astype(dtype), None, s.ctr, s.off, {}, True
    # Compacted class tables and int64 ids (70,000 x 1000 > 2**31).
    big = s.sem.astype(np.int64) + 70_000
    big_kw = dict(thing_ids=[t + 70_000 for t in synthetic.CITYSCAPES_THING_IDS])
    yield "class ids + 70000", big, None, s.ctr, s.off, big_kw, True
    odd = synthetic.make_scene(21, 33, 5, seed=4)  # 693 pixels: not whole packs
    yield "21 x 33", odd.sem.astype(np.int32), None, odd.ctr, odd.off, {}, False
    # The largest class id at one pixel only, in each place of a pack: the label range must see
    # it (it makes the ids int64 and the class ids compacted).
    for j in range(4):
        one = s.sem.astype(np.int64)
        one.flat[100 + j] = 2_200_000
        yield f"largest id at pack place {j}", one, None, s.ctr, s.off, {}, True


def test_packed_loads_equal_the_strided_reads(cuda_device):
    # set_cuda_packed_loads (cuda_pipeline.h), on by default: the label range and the ids read 4
    # pixels per load where the labels (and the output) are one aligned row-major block of whole
    # packs, and through the strides elsewhere; the CPU's answer either way, and with packing off
    # for every input. The emulator also shows which kernels ran.
    emulated = cuda_device == "emulated"
    for packed in (True, False):
        for what, sem, on_device, ctr, off, kw, packable in _packed_cases():
            kw = dict(stuff_area=16, **kw)
            if emulated:
                forget_capacities()  # the launches counted: a speculative phase's own only
                EMULATION.take_counters()
            with _switched(cuda_device, "_set_cuda_packed_loads", on=packed):
                if on_device is None:
                    run_on(cuda_device, sem, ctr, off, **kw)  # a postprocess and a merge
                    calls = 2
                else:
                    args = [to_device(a, cuda_device) for a in (ctr, off)]
                    got = to_host(pdl_post.merge(on_device(sem, cuda_device), *args, **kw))
                    want = pdl_post.merge(sem, ctr, off, backend="cpu", **kw)
                    np.testing.assert_array_equal(got, want, err_msg=what)
                    calls = 1
            if emulated:
                expected = (calls, calls) if packable and packed else (0, 0)
                assert _packed_launches() == expected, (what, packed)
    # Logits: their argmax is a packable scratch array (packed by default); and with packing
    # off, no packed kernel runs.
    s = synthetic.make_scene(32, 48, 5, seed=6, logits=True)
    run_on(cuda_device, s.logits, s.ctr, s.off, stuff_area=16)
    if emulated:
        assert _packed_launches() == (2, 2)
    with _switched(cuda_device, "_set_cuda_packed_loads", on=False):
        run_on(cuda_device, s.logits, s.ctr, s.off, stuff_area=16)
    if emulated:
        assert _packed_launches() == (0, 0)


def test_pair_keys_beyond_32_bits(cuda_device):
    # Pair keys are uint32 while instance slots x C fits 32 bits, else int64: here 65536 centres
    # (65,537 instance slots: a flat heatmap, top_k None) times 65536 compacted class ids (every
    # pixel its own) make 4,295,032,832 keys, 65,536 past 2**32; each pixel is its own instance
    # of its own class.
    n = 256
    sem = (65_536 + np.arange(n * n)).reshape(n, n).astype(np.int64)
    ctr = np.full((1, n, n), 0.5, np.float32)
    off = np.zeros((2, n, n), np.float32)
    kw = dict(thing_ids=np.unique(sem).tolist(), stuff_area=0, top_k=None, label_divisor=2)
    if cuda_device == "emulated":
        _pair_sorts()
    cpu = run_on(cuda_device, sem, ctr, off, **kw)
    assert len(cpu.centers) == n * n
    np.testing.assert_array_equal(np.asarray(cpu.panoptic), sem * 2 + 1)
    if cuda_device == "emulated":
        assert _pair_sorts() == 2


def test_segment_score_sums_in_shared_and_global_memory(cuda_device):
    # Scores with logits sum each block's probabilities per segment in shared memory when an
    # image's K + C segment slots fit (4096, cpp/cuda/fusion.cu), else in global memory (one more
    # memset): both the CPU's sums bit for bit. Logits follow the scene's labels, and a corner
    # takes the last class, so that C is the number of channels.
    s = synthetic.make_scene(24, 40, 6, seed=5)
    rng = np.random.default_rng(5)
    memsets, pair_sorts = {}, {}
    for classes in (64, 4200):
        logits = rng.normal(0, 1, (classes, 24, 40)).astype(np.float32)
        rows, cols = np.indices(s.sem.shape)
        logits[s.sem, rows, cols] += 6
        logits[classes - 1, :3, :3] += 12
        if cuda_device == "emulated":
            forget_capacities()  # the memsets counted: a speculative phase's own only
            EMULATION.take_counters()
        r = run_on(cuda_device, logits, s.ctr, s.off, stuff_area=1)
        if cuda_device == "emulated":
            counts = EMULATION.take_counters()
            memsets[classes] = counts["memsets"]
            pair_sorts[classes] = counts.get("launches of pair_runs_kernel", 0)
        assert any(seg["isthing"] for seg in r.segments)
        assert any(seg["category_id"] == classes - 1 for seg in r.segments)
    if cuda_device == "emulated":  # run_on ran one postprocess (and a merge, without scores) each
        # Global sums start from zero once per chunk of blocks (_score_chunks). 7 x 4200
        # instance x class pairs are also beyond the histogram: sorted, their votes zeroed.
        assert pair_sorts == {64: 0, 4200: 2}
        assert memsets[4200] == memsets[64] + _score_chunks(24, [len(r.centers) + 4200]) + 2


def _score_chunks(height, segment_slots) -> int:
    """Chunks of 4-row blocks the emulated build sums scores in (64 KiB of partial sums at a
    time there, 1 GiB on a GPU); segment_slots: K + C of each image of the call."""
    blocks = -(-height // 4)
    return -(-blocks // EMULATION.score_chunk_blocks(height, sum(segment_slots)))


def test_score_sums_go_in_chunks_of_bounded_memory(cuda_device):
    # Scores with logits keep one chunk of row blocks x segment sums at a time and add each chunk
    # to running sums in block order: the CPU's bits for any number of chunks, in shared memory
    # (a tall batch, few segments) and in global memory (a flat heatmap: one segment per pixel).
    # Memory no longer grows with the rows times the segments: ten times the rows of a
    # 5120-segment image take 0.25 MB more scratch (the pool's high-water mark on the emulator),
    # where the blocks x segments sums alone took 7.4 MB more.
    b = synthetic.make_batch(2, 400, 48, 60, seed=3, logits=True)
    results = run_on(cuda_device, b.logits, b.ctr, b.off, top_k=None, stuff_area=8)
    slots = [len(r.centers) + b.logits.shape[1] for r in results]
    if cuda_device == "emulated":
        assert _score_chunks(400, slots) >= 2
    rng = np.random.default_rng(3)
    kept = {}
    for height in (80, 800):
        logits = rng.normal(0, 1, (3, height, 64)).astype(np.float32)
        ctr = np.zeros((height, 64), np.float32)
        ctr[:80] = 0.5  # every pixel of the first 80 rows a centre
        off = np.zeros((2, height, 64), np.float32)
        kw = dict(top_k=None, thing_ids=[0, 1, 2], stuff_area=0, label_divisor=10_000)
        if cuda_device == "emulated":
            EMULATION.cuda_release_memory()
        r = run_on(cuda_device, logits, ctr, off, **kw)
        assert len(r.centers) == 80 * 64 and len(r.segments) > 4096
        if cuda_device == "emulated":
            kept[height] = EMULATION.cuda_release_memory()  # the pool's high-water mark
            assert _score_chunks(height, [80 * 64 + 3]) == -(-height // 4)  # a block per chunk
    if cuda_device == "emulated":
        assert kept[800] - kept[80] < 1_000_000, kept


def test_divergent_warps_count_every_pixel(cuda_device):
    # Thing and non-thing pixels alternate inside every warp, some votes are not finite and the
    # width is no multiple of 32: the histogram's warp-aggregated adds run in divergent code
    # (their lane mask must name exactly the counting lanes), with the shared-memory histogram
    # (few centres) and the global one (thousands of centres, more than one centre tile).
    for height, width, centers in ((61, 83, 12), (150, 227, 1500)):
        s = synthetic.make_scene(height, width, centers, seed=centers, semantic_noise=0.0)
        sem = s.sem.copy()
        sem[:, 1::2] = 0  # a stuff class every other column
        sem[::3, ::5] = 11  # and thing pixels sprinkled over the stuff
        off = s.off.copy()
        off[0, ::7, ::3] = np.nan
        kw = dict(top_k=None, label_divisor=10_000)
        run_on(cuda_device, sem, s.ctr, off, stuff_area=0, **kw)
        rng = np.random.default_rng(centers)
        run_on(cuda_device, sem, s.ctr, off, mask=rng.random(sem.shape) < 0.5, stuff_area=4, **kw)


def test_concurrent_calls_with_different_shared_memory_sizes(cuda_device):
    # Calls on two threads and streams at once: one counts a large shared-memory histogram, the
    # other a small one. The kernel's shared-memory limit is process-wide state, so a call must
    # never lower it under another call's launch.
    import threading

    big = synthetic.make_scene(128, 192, 700, seed=21)  # (K + 1) x C close to the shared limit
    small = synthetic.make_scene(64, 96, 3, seed=22)
    expected = {
        "big": pdl_post.merge(big.sem, big.ctr, big.off, top_k=None, stuff_area=8),
        "small": pdl_post.merge(small.sem, small.ctr, small.off, top_k=None, stuff_area=8),
    }
    errors = []

    def work(name, scene):
        try:
            args = [to_device(a, cuda_device) for a in (scene.sem, scene.ctr, scene.off)]
            if cuda_device == "emulated":
                context = contextlib.nullcontext()
            elif GPU == "torch":
                import torch

                context = torch.cuda.stream(torch.cuda.Stream())
            else:
                import cupy

                context = cupy.cuda.Stream(non_blocking=True)
            with context:
                for _ in range(40):
                    out = pdl_post.merge(*args, top_k=None, stuff_area=8)
                    np.testing.assert_array_equal(to_host(out), expected[name])
                    if cuda_device == "emulated":
                        break  # the emulator runs launches one at a time: once is enough
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=("big", big)),
        threading.Thread(target=work, args=("small", small)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_class_ids_near_int64_max_match_the_cpu(cuda_device):
    # (max class + 1) * label_divisor - 1 fits int64 with label_divisor=1, so the output is int64;
    # a table indexed by the class id could not exist: both paths rank the ids present instead.
    # No centres: label_divisor=1 leaves no room for instance numbers.
    s = synthetic.make_scene(32, 48, 3, seed=0)
    sem = s.sem.astype(np.int64)
    sem[0, 0] = np.iinfo(np.int64).max  # a stuff class
    ctr = np.zeros_like(s.ctr)
    cpu = run_on(cuda_device, sem, ctr, s.off, label_divisor=1, stuff_area=0)
    assert cpu.panoptic.dtype == np.int64 and cpu.panoptic[0, 0] == np.iinfo(np.int64).max


def test_cuda_release_memory_returns_what_the_pool_keeps(cuda_device):
    # The pool keeps the scratch of the largest call until cuda_release_memory (on the emulator:
    # its high-water mark, as a pool with an unbounded release threshold keeps).
    pdl_post.cuda_release_memory()
    b = synthetic.make_batch(4, 64, 96, 8, seed=4)
    args = [to_device(a, cuda_device) for a in (b.sem, b.ctr, b.off)]
    wide = {"void_label": -(2**40)}  # int64 output: the instance map is scratch
    merged = to_host(pdl_post.merge(*args, **wide))
    released = pdl_post.cuda_release_memory()
    assert released >= 4 * 64 * 96 * 4  # at least the int32 instance map of 4 images
    assert pdl_post.cuda_release_memory() == 0
    np.testing.assert_array_equal(to_host(pdl_post.merge(*args, **wide)), merged)
    assert pdl_post.cuda_release_memory() >= 4 * 64 * 96 * 4  # later calls allocate again


def test_label_divisor_and_negative_label_errors_match_the_cpu(cuda_device):
    s = synthetic.make_scene(64, 96, 30, seed=1, semantic_noise=0.0)
    args = [to_device(a, cuda_device) for a in (s.sem, s.ctr, s.off)]
    with pytest.raises(ValueError) as cpu_error:
        pdl_post.merge(s.sem, s.ctr, s.off, label_divisor=2)
    allocations = EMULATION.live_allocations() if cuda_device == "emulated" else None
    with pytest.raises(ValueError) as gpu_error:
        pdl_post.merge(*args, label_divisor=2)
    assert str(gpu_error.value) == str(cpu_error.value)
    if allocations is not None:  # the traceback still holds the job: its scratch is freed
        assert EMULATION.live_allocations() == allocations
    neg = s.sem.astype(np.int32)
    neg[3, 4] = -2
    with pytest.raises(ValueError, match=r"sem: class ids must be >= 0, got a minimum of -2"):
        pdl_post.merge(to_device(neg, cuda_device), *args[1:])


@needs_gpu
def test_strided_views_are_read_in_place():
    s = synthetic.make_scene(80, 120, 15, seed=9)
    sem, ctr, off = (to_device(a, "cuda") for a in (s.sem, s.ctr, s.off))
    # Column-major storage (transposed copy, transposed back) and every other column of a wider
    # array.
    sem_t = sem.T.contiguous().T if GPU == "torch" else sem.T.copy().T
    assert not (sem_t.is_contiguous() if GPU == "torch" else sem_t.flags.c_contiguous)
    wide = to_device(np.zeros((2, 80, 240), np.float32), "cuda")
    wide[:, :, ::2] = off
    gpu = pdl_post.postprocess(sem_t, ctr, wide[:, :, ::2], stuff_area=16)
    gpu.panoptic = to_host(gpu.panoptic)
    assert_results_equal(
        gpu, pdl_post.postprocess(s.sem, s.ctr, s.off, stuff_area=16), score_rtol=0
    )


@needs_gpu
def test_bfloat16_tensors_are_widened_on_the_device():
    torch = pytest.importorskip("torch")
    if GPU != "torch":
        pytest.skip("bfloat16 tensors need torch with CUDA")
    s = synthetic.make_scene(48, 64, 6, seed=4, logits=True)
    host = [torch.from_numpy(a).bfloat16() for a in (s.logits, s.ctr, s.off)]
    want = pdl_post.postprocess(*host, stuff_area=16)  # the CPU path, widened on the host
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # the widening copies run on the caller's stream too
        got = pdl_post.postprocess(*(t.cuda() for t in host), stuff_area=16)
    stream.synchronize()
    got.panoptic = got.panoptic.cpu()
    assert_results_equal(got, want, score_rtol=0)


@needs_gpu
def test_output_library_device_and_stream():
    s = synthetic.make_scene(64, 96, 10, seed=6)
    expected = pdl_post.merge(s.sem, s.ctr, s.off, stuff_area=16)
    if GPU == "torch":
        import torch

        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            sem, ctr, off = (
                torch.from_numpy(a).cuda(non_blocking=True) for a in (s.sem, s.ctr, s.off)
            )
            ctr.requires_grad_(True)  # read through .detach(), never copied
            out = pdl_post.merge(sem, ctr, off, stuff_area=16)
            assert isinstance(out, torch.Tensor) and out.device == sem.device
            out2 = pdl_post.merge(sem, ctr, off, stuff_area=16)
        stream.synchronize()
        np.testing.assert_array_equal(out.cpu().numpy(), expected)
        np.testing.assert_array_equal(out2.cpu().numpy(), expected)
    else:
        import cupy

        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            out = pdl_post.merge(*(cupy.asarray(a) for a in (s.sem, s.ctr, s.off)), stuff_area=16)
            assert isinstance(out, cupy.ndarray)
        stream.synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(out), expected)


class _OnStream:
    """A torch CUDA tensor known only by a __cuda_array_interface__ (v3) naming `stream`."""

    def __init__(self, t, stream: int):
        self.t = t
        self.__cuda_array_interface__ = {
            "shape": tuple(t.shape),
            "typestr": np.dtype(str(t.dtype).removeprefix("torch.")).str,
            "data": (t.data_ptr(), False),
            "strides": None,
            "version": 3,
            "stream": stream,
        }


@needs_gpu
def test_interface_inputs_made_on_another_stream_are_waited_for():
    # ctr is written on a side stream behind long matrix products and handed over as an
    # interface array naming that stream; sem and off name another stream, on which the call
    # then runs (torch's streams are non-blocking: neither waits for the other, nor for the
    # legacy stream). Version 3 of the interface asks the consumer to order its reads after each
    # producer's stream: without the event wait the kernels would read ctr before the copy that
    # fills it (zeros: no centres).
    if GPU != "torch":
        pytest.skip("needs torch with CUDA")
    import torch

    s = synthetic.make_scene(256, 512, 20, seed=3)
    sem, off, source = (torch.from_numpy(a).cuda() for a in (s.sem, s.off, s.ctr))
    ctr = torch.zeros_like(source)
    torch.cuda.synchronize()
    side, call = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(side):
        busy = torch.randn(4096, 4096, device="cuda")
        for _ in range(40):
            busy = busy @ busy
            busy /= busy.norm()
        ctr.copy_(source + 0 * busy[0, 0])  # after the products, on the side stream
    out = pdl_post.merge(
        _OnStream(sem, call.cuda_stream),
        _OnStream(ctr, side.cuda_stream),
        _OnStream(off, call.cuda_stream),
    )
    torch.cuda.synchronize()
    np.testing.assert_array_equal(to_host(out), pdl_post.merge(s.sem, s.ctr, s.off))


@needs_gpu
def test_inputs_dropped_after_an_early_return_are_not_reused_too_soon():
    # merge returns with its kernels queued. Inputs made on the default stream, read on a side
    # stream and dropped at once must not be handed to new tensors (filled on the default
    # stream) before the kernels have read them: merge marks them with record_stream.
    if GPU != "torch":
        pytest.skip("needs torch with CUDA (record_stream)")
    import torch

    s = synthetic.make_scene(512, 1024, 60, seed=8)
    expected = pdl_post.merge(s.sem, s.ctr, s.off)
    side = torch.cuda.Stream()
    outputs = []
    for _ in range(5):
        inputs = [torch.from_numpy(a).cuda() for a in (s.sem, s.ctr, s.off)]
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            outputs.append(pdl_post.merge(*inputs))
        del inputs
        for _ in range(3):  # would take the dropped inputs' memory and overwrite it
            torch.full((512 * 1024 * 2,), -7.0, device="cuda")
    side.synchronize()
    for out in outputs:
        np.testing.assert_array_equal(out.cpu().numpy(), expected)


@needs_gpu
def test_cuda_graph_capture_is_refused_and_left_intact():
    # The CUDA path synchronises; inside a capture that would fail and invalidate the capture.
    # It is refused by name first, and the caller's graph still captures and replays.
    if GPU != "torch":
        pytest.skip("needs torch with CUDA (torch.cuda.graph)")
    import torch

    s = synthetic.make_scene(48, 64, 6, seed=2)
    sem, ctr, off = (torch.from_numpy(a).cuda() for a in (s.sem, s.ctr, s.off))
    x = torch.ones(4, device=sem.device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with pytest.raises(RuntimeError, match="being captured into a CUDA graph"):
            pdl_post.merge(sem, ctr, off)
        y = x * 2
    graph.replay()
    torch.cuda.synchronize()
    assert y.tolist() == [2.0] * 4


@needs_gpu
def test_cupy_arrays_give_cupy_output():
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("CuPy sees no device")
    s = synthetic.make_scene(64, 96, 10, seed=6)
    out = pdl_post.merge(*(cupy.asarray(a) for a in (s.sem, s.ctr, s.off)), stuff_area=16)
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_array_equal(
        cupy.asnumpy(out), pdl_post.merge(s.sem, s.ctr, s.off, stuff_area=16)
    )


@needs_gpu
def test_mixed_host_and_device_inputs_are_refused():
    s = synthetic.make_scene(32, 48, 4, seed=0)
    with pytest.raises(ValueError, match=r"off: expected a CUDA array like sem"):
        pdl_post.merge(to_device(s.sem, "cuda"), to_device(s.ctr, "cuda"), s.off)


@needs_gpu
def test_evaluators_take_the_cuda_output():
    """The CUDA path's output goes straight into the evaluators, which copy it to the host."""
    s = synthetic.make_scene(64, 96, 10, seed=7)
    out = pdl_post.merge(*(to_device(a, "cuda") for a in (s.sem, s.ctr, s.off)), stuff_area=16)
    gt = to_device(s.panoptic_gt, "cuda")
    given = (out, gt, to_device(s.sem, "cuda"), gt // 1000)  # a class map made on the device
    _assert_evaluators_agree(given, (to_host(out), s.panoptic_gt, s.sem))


@needs_gpu
def test_conversion_and_drawing_take_the_cuda_output():
    s = synthetic.make_scene(64, 96, 10, seed=7)
    out = pdl_post.merge(*(to_device(a, "cuda") for a in (s.sem, s.ctr, s.off)), stuff_area=16)
    _assert_host_work_agrees(out, to_host(out))
    centers, _ = pdl_post.find_centers(to_device(s.ctr, "cuda"))
    _assert_centers_drawn_alike(centers, to_host(centers), s.sem.shape)


def _assert_host_work_agrees(given, pred: np.ndarray) -> None:
    """COCO conversion, colours and overlay of `given` (any array type) equal those of `pred`."""
    from pdl_post import io, viz

    for got, want in zip(io.to_coco_panoptic(given), io.to_coco_panoptic(pred), strict=True):
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want
    np.testing.assert_array_equal(viz.colorize(given), viz.colorize(pred))
    image = np.zeros((*pred.shape, 3), np.uint8)
    np.testing.assert_array_equal(viz.overlay(image, given), viz.overlay(image, pred))


def _assert_centers_drawn_alike(given, centers: np.ndarray, shape) -> None:
    """viz.draw_centers of `given` (find_centers' centres on a device) equals that of `centers`."""
    from pdl_post import viz

    image = np.zeros((*shape, 3), np.uint8)
    drawn = viz.draw_centers(image, given)
    np.testing.assert_array_equal(drawn, viz.draw_centers(image, centers))
    assert len(centers) and drawn.any()


def _assert_evaluators_agree(given: tuple, host: tuple) -> None:
    """PQ, mIoU and AP of `given` (panoptic prediction and GT, predicted and GT class maps: any
    array type) equal those of the numpy maps `host` (panoptic prediction and GT, predicted class
    map; label_divisor 1000)."""
    pred, gt, pred_class = host
    from pdl_post import eval as pdl_eval

    things = synthetic.CITYSCAPES_THING_IDS
    categories = [{"id": c, "isthing": int(c in things)} for c in range(19)]
    scores = {int(i): 1.0 - 1e-3 * k for k, i in enumerate(np.unique(pred))}
    results = []
    for p, g, p_class, g_class in (given, (pred, gt, pred_class, gt // 1000)):
        panoptic = pdl_eval.PanopticEvaluator(categories)
        semantic = pdl_eval.SemanticEvaluator(19)
        instance = pdl_eval.InstanceEvaluator(things, min_region_size=0)
        panoptic.update(p, g)
        semantic.update(p_class, g_class)
        instance.update(p, g, scores=scores)
        results.append((panoptic.compute(), semantic.compute(), instance.compute()))
    assert repr(results[0]) == repr(results[1])  # repr: NaN (classes absent) equals NaN
    assert results[1][0]["All"]["n"] > 0


# ---------------------------------------------------------------------------------------------
# Everywhere (no GPU needed): availability, build info and clear errors
# ---------------------------------------------------------------------------------------------


class FakeCudaArray:
    """An object that claims to be CUDA memory through __cuda_array_interface__ (v3)."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (0xDEAD0000, False),
            "strides": None,
            "version": 3,
        }


def test_cuda_available_never_raises_and_agrees_with_the_build():
    info = pdl_post.build_info()
    available = pdl_post.cuda_available()
    assert isinstance(available, bool)
    assert info["cuda_compiled"] == (info["cuda"] == "enabled")
    if info["cuda_compiled"]:
        assert "architectures" in info["cuda_build"]
    else:
        assert not available
    assert ("cuda" in pdl_post.available_backends()) == available
    assert pdl_post.available_backends()[:2] == ["cpu", "reference"]


@pytest.mark.skipif(pdl_post.cuda_available(), reason="a CUDA device is available")
def test_cuda_arrays_without_a_device_are_a_clear_error():
    fakes = (FakeCudaArray((8, 8), "<i4"), FakeCudaArray((1, 8, 8)), FakeCudaArray((2, 8, 8)))
    with pytest.raises(
        ValueError, match=r"sem: got a CUDA array, but .*move the inputs to the CPU"
    ):
        pdl_post.merge(*fakes)
    with pytest.raises(ValueError, match=r"sem: got a CUDA array, but"):
        pdl_post.postprocess(*fakes)
    with pytest.raises(ValueError, match=r"ctr: got a CUDA array, but .*move the inputs"):
        pdl_post.find_centers(fakes[1])
    with pytest.raises(ValueError, match=r"sem: got a CUDA array, but .*move the inputs"):
        pdl_post.group_pixels(fakes[0], np.zeros((0, 2), np.int64), fakes[2])


def test_mixed_devices_are_refused_by_name():
    s = synthetic.make_scene(8, 8, 1, seed=0)
    with pytest.raises(
        ValueError,
        match=r"sem: expected a CUDA array like ctr, got array of shape \(8, 8\) and dtype int32; "
        "all inputs",
    ):
        pdl_post.merge(s.sem, FakeCudaArray((1, 8, 8)), s.off)
    with pytest.raises(ValueError, match=r"foreground_mask: expected a CUDA array like sem"):
        pdl_post.merge(
            FakeCudaArray((8, 8), "<i4"),
            FakeCudaArray((1, 8, 8)),
            FakeCudaArray((2, 8, 8)),
            foreground_mask=s.sem > 11,
        )


class CupyLikeArray(FakeCudaArray):
    """Stands in for cupy.ndarray (CuPy is not needed here): CUDA memory that .get() copies to
    a numpy array, as CuPy's does."""

    __module__ = "cupy._core.core"

    def __init__(self, a: np.ndarray):
        super().__init__(a.shape, a.dtype.str)
        self.a = a

    def get(self) -> np.ndarray:
        return self.a.copy()


def test_evaluators_copy_cuda_arrays_to_the_host():
    """torch CUDA tensors (on a GPU: test_evaluators_take_the_cuda_output) and CuPy arrays go to
    the host; an array known only by its __cuda_array_interface__ is refused by name."""
    s = synthetic.make_scene(48, 64, 6, seed=8)
    pred = pdl_post.merge(s.sem, s.ctr, s.off, stuff_area=16)
    maps = (pred, s.panoptic_gt, s.sem, s.panoptic_gt // 1000)
    _assert_evaluators_agree(tuple(CupyLikeArray(a) for a in maps), (pred, s.panoptic_gt, s.sem))
    from pdl_post import eval as pdl_eval

    fake = FakeCudaArray((48, 64), "<i4")
    evaluators = (
        pdl_eval.PanopticEvaluator([{"id": 11, "isthing": 1}]),
        pdl_eval.SemanticEvaluator(19),
        pdl_eval.InstanceEvaluator([11]),
    )
    for evaluator in evaluators:
        with pytest.raises(ValueError, match=r"^pred: got a CUDA array \(FakeCudaArray\).*host"):
            evaluator.update(fake, s.panoptic_gt)
        with pytest.raises(ValueError, match=r"^gt: got a CUDA array \(FakeCudaArray\).*host"):
            evaluator.update(pred, fake)


def test_conversion_and_drawing_copy_cuda_arrays_to_the_host():
    """io.to_coco_panoptic, viz.colorize / overlay and viz.draw_centers take the CUDA path's
    output (a CuPy stand-in here; torch CUDA tensors in
    test_conversion_and_drawing_take_the_cuda_output)."""
    s = synthetic.make_scene(48, 64, 6, seed=8)
    pred = pdl_post.merge(s.sem, s.ctr, s.off, stuff_area=16)
    _assert_host_work_agrees(CupyLikeArray(pred), pred)
    centers, _ = pdl_post.find_centers(s.ctr)
    _assert_centers_drawn_alike(CupyLikeArray(centers), centers, s.sem.shape)
    fake = FakeCudaArray((48, 64), "<i4")
    with pytest.raises(ValueError, match=r"^panoptic: got a CUDA array \(FakeCudaArray\).*host"):
        pdl_post.io.to_coco_panoptic(fake)
    with pytest.raises(ValueError, match=r"^panoptic: got a CUDA array \(FakeCudaArray\).*host"):
        pdl_post.viz.colorize(fake)
    with pytest.raises(ValueError, match=r"^centers: got a CUDA array \(FakeCudaArray\).*host"):
        pdl_post.viz.draw_centers(np.zeros((48, 64, 3), np.uint8), FakeCudaArray((3, 2), "<i8"))


def test_group_pixels_takes_centres_found_on_a_device():
    # find_centers of a CUDA heatmap gives device arrays; group_pixels on host images copies
    # them (a few numbers each), CuPy's by .get() here (torch CUDA tensors: the test below),
    # and refuses arrays known only by their interface.
    b = synthetic.make_batch(2, 48, 64, 6, seed=8)
    found = pdl_post.find_centers(b.ctr)
    want = pdl_post.group_pixels(b.sem, [c for c, _ in found], b.off)
    got = pdl_post.group_pixels(b.sem, [CupyLikeArray(c) for c, _ in found], b.off)
    np.testing.assert_array_equal(got, want)
    assert want.max() > 0
    with pytest.raises(ValueError, match=r"^centers: got a CUDA array \(FakeCudaArray\).*host"):
        pdl_post.group_pixels(b.sem[0], FakeCudaArray((3, 2), "<i8"), b.off[0])


@needs_gpu
def test_cuda_device_centres_go_to_the_host_stages():
    s = synthetic.make_scene(64, 96, 10, seed=7)
    centers, _ = pdl_post.find_centers(to_device(s.ctr, "cuda"))
    instance = pdl_post.group_pixels(s.sem, centers, s.off)
    want = pdl_post.group_pixels(s.sem, pdl_post.find_centers(s.ctr)[0], s.off)
    np.testing.assert_array_equal(instance, want)


def test_host_backends_refuse_cuda_arrays():
    fakes = (FakeCudaArray((8, 8), "<i4"), FakeCudaArray((1, 8, 8)), FakeCudaArray((2, 8, 8)))
    for backend in ("cpu", "reference"):
        with pytest.raises(ValueError, match=rf"backend: '{backend}' runs on host arrays"):
            pdl_post.merge(*fakes, backend=backend)


def test_stages_refuse_host_arrays_beside_cuda_arrays():
    s = synthetic.make_scene(8, 8, 1, seed=0)
    with pytest.raises(ValueError, match=r"instance: expected a CUDA array like sem, got array"):
        pdl_post.fuse(FakeCudaArray((8, 8), "<i4"), np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match=r"sem: expected a CUDA array like off, got array"):
        pdl_post.group_pixels(s.sem, np.zeros((0, 2), np.int64), FakeCudaArray((2, 8, 8)))


def test_backend_cuda_needs_cuda_arrays(cuda_device):
    s = synthetic.make_scene(8, 8, 1, seed=0)
    with pytest.raises(ValueError, match=r"backend: 'cuda' takes CUDA arrays"):
        pdl_post.merge(s.sem, s.ctr, s.off, backend="cuda")
    with pytest.raises(ValueError, match=r"backend: 'cuda' takes CUDA arrays"):
        pdl_post.find_centers(s.ctr, backend="cuda")
    with pytest.raises(ValueError, match=r"backend: 'cuda' takes CUDA arrays"):
        pdl_post.group_pixels(s.sem, np.zeros((0, 2), np.int64), s.off, backend="cuda")
    with pytest.raises(ValueError, match=r"backend: 'cuda' takes CUDA arrays"):
        pdl_post.fuse(s.sem, np.zeros_like(s.sem, np.int32), backend="cuda")


# ---------------------------------------------------------------------------------------------
# The Python glue with the emulated device: odd layouts reach the kernels as the right views
# ---------------------------------------------------------------------------------------------


def _emulated_equals_cpu(sem, ctr, off, mask=None, **kw):
    def wrap(a):
        return None if a is None else HostCudaArray(a)

    gpu = pdl_post.postprocess(wrap(sem), wrap(ctr), wrap(off), foreground_mask=wrap(mask), **kw)
    cpu = pdl_post.postprocess(sem, ctr, off, foreground_mask=mask, **kw)
    for r in gpu if isinstance(gpu, list) else [gpu]:
        r.panoptic = r.panoptic.a if isinstance(r.panoptic, HostCudaArray) else r.panoptic
    assert_results_equal(gpu, cpu, score_rtol=0)
    merged = pdl_post.merge(wrap(sem), wrap(ctr), wrap(off), foreground_mask=wrap(mask), **kw)
    assert isinstance(merged, HostCudaArray)
    np.testing.assert_array_equal(
        merged.a, pdl_post.merge(sem, ctr, off, foreground_mask=mask, **kw)
    )


def test_cuda_dispatch_builds_the_views_the_core_reads(emulated_cuda):
    s = synthetic.make_scene(40, 56, 6, seed=4, logits=True)
    _emulated_equals_cpu(s.sem, s.ctr, s.off, stuff_area=8)
    _emulated_equals_cpu(s.sem, s.ctr[0], s.off, stuff_area=8)  # ctr [H,W]
    _emulated_equals_cpu(s.logits, s.ctr, s.off, stuff_area=8)
    _emulated_equals_cpu(np.asfortranarray(s.sem), s.ctr, s.off[:, :, ::-1][:, :, ::-1], top_k=3)
    wide = np.zeros((2, 40, 112), np.float32)
    wide[:, :, ::2] = s.off
    _emulated_equals_cpu(s.sem, s.ctr, wide[:, :, ::2], mask=s.sem > 10, stuff_area=8)
    _emulated_equals_cpu(s.sem, s.ctr, s.off, mask=(s.sem > 10).astype(np.uint8), stuff_area=8)
    # non-bool masks mean mask > 0 (!= 0 for unsigned dtypes; NaN is not > 0)
    _emulated_equals_cpu(s.sem, s.ctr, s.off, mask=(s.sem % 3).astype(np.uint16), stuff_area=8)
    signed = (s.sem % 3).astype(np.float32) - 1
    signed[::3, ::2] = np.nan
    _emulated_equals_cpu(s.sem, s.ctr, s.off, mask=signed, stuff_area=8)
    _emulated_equals_cpu(s.sem, s.ctr, s.off, label_divisor=2**27)  # int64 output
    b = synthetic.make_batch(3, 24, 40, 4, seed=1, logits=True)
    _emulated_equals_cpu(b.sem, b.ctr, b.off, stuff_area=8)
    _emulated_equals_cpu(b.logits, b.ctr, b.off, mask=b.sem > 12, stuff_area=8)
    # masks with a unit channel axis: [1,H,W] and [B,1,H,W]
    _emulated_equals_cpu(s.sem, s.ctr, s.off, mask=(s.sem > 10)[None], stuff_area=8)
    _emulated_equals_cpu(b.sem, b.ctr, b.off, mask=(b.sem > 12)[:, None], stuff_area=8)
    _emulated_equals_cpu(
        np.zeros((0, 5), np.int32), np.zeros((0, 5), np.float32), np.zeros((2, 0, 5), np.float32)
    )


def test_find_centers_on_the_device_checks_like_the_cpu_path(emulated_cuda):
    # The same errors as for a host heatmap (the same checks run first), and the interface's own.
    s = synthetic.make_scene(16, 24, 2, seed=0)
    bad = {
        "labels": s.sem,
        "[2, H, W]": np.concatenate([s.ctr, s.ctr]),
        "[B, 2, H, W]": np.stack([s.off, s.off]),
        "5-D": s.ctr[None, None],
    }
    for what, ctr in bad.items():
        with pytest.raises((TypeError, ValueError)) as on_host:
            pdl_post.find_centers(ctr)
        with pytest.raises(type(on_host.value)) as on_device:
            pdl_post.find_centers(HostCudaArray(ctr))
        assert str(on_device.value) == str(on_host.value), what
    for option, value in (("nms_kernel", 4), ("top_k", -1), ("threshold", np.nan)):
        with pytest.raises(ValueError, match=rf"^{option}: "):
            pdl_post.find_centers(HostCudaArray(s.ctr), **{option: value})
    with pytest.raises(TypeError, match=r"ctr: half-precision input needs torch or CuPy"):
        pdl_post.find_centers(InterfaceOnlyArray(s.ctr.astype(np.float16)))
    shifted = np.zeros(s.ctr.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(s.ctr.shape)
    shifted[...] = s.ctr
    with pytest.raises(ValueError, match=r"ctr: the data pointer 0x[0-9a-f]+ is not aligned"):
        pdl_post.find_centers(HostCudaArray(shifted))
    with pytest.raises(ValueError, match=r"backend: 'reference' runs on host arrays"):
        pdl_post.find_centers(HostCudaArray(s.ctr), backend="reference")


def test_cuda_dispatch_checks_like_the_cpu_path(emulated_cuda):
    s = synthetic.make_scene(16, 24, 2, seed=0)
    with pytest.raises(ValueError, match=r"ctr: expected shape \[H,W\] or \[1,H,W\] for one image"):
        pdl_post.merge(HostCudaArray(s.sem), HostCudaArray(s.off), HostCudaArray(s.off))
    with pytest.raises(ValueError, match=r"off: image size 16x12 does not match sem's 16x24"):
        pdl_post.merge(
            HostCudaArray(s.sem), HostCudaArray(s.ctr), HostCudaArray(s.off[:, :, :12].copy())
        )
    with pytest.raises(TypeError, match=r"sem: expected integer labels"):
        pdl_post.merge(HostCudaArray(s.sem > 3), HostCudaArray(s.ctr), HostCudaArray(s.off))
    with pytest.raises(TypeError, match=r"foreground_mask: .*needs torch or CuPy"):
        pdl_post.merge(
            HostCudaArray(s.sem),
            HostCudaArray(s.ctr),
            HostCudaArray(s.off),
            foreground_mask=InterfaceOnlyArray(s.sem.astype(np.float32)),
        )
    with pytest.raises(TypeError, match=r"off: half-precision input needs torch or CuPy"):
        pdl_post.merge(
            HostCudaArray(s.sem), HostCudaArray(s.ctr), InterfaceOnlyArray(s.off.astype(np.float16))
        )
    # Malformed __cuda_array_interface__ producers: refused by name before any kernel reads them.
    zero_stream = HostCudaArray(s.ctr)
    zero_stream.__cuda_array_interface__["stream"] = 0
    with pytest.raises(ValueError, match=r"ctr: __cuda_array_interface__ stream 0 is not allowed"):
        pdl_post.merge(HostCudaArray(s.sem), zero_stream, HostCudaArray(s.off))
    null = HostCudaArray(s.sem)
    null.__cuda_array_interface__["data"] = (0, False)
    with pytest.raises(ValueError, match=r"sem: __cuda_array_interface__ has a null data pointer"):
        pdl_post.merge(null, HostCudaArray(s.ctr), HostCudaArray(s.off))
    shifted = np.zeros(s.ctr.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(s.ctr.shape)
    shifted[...] = s.ctr
    with pytest.raises(
        ValueError, match=r"ctr: the data pointer 0x[0-9a-f]+ is not aligned to the 4"
    ):
        pdl_post.merge(HostCudaArray(s.sem), HostCudaArray(shifted), HostCudaArray(s.off))
    with pytest.raises(
        ValueError, match=r"off: expected a CUDA array like sem, got array of shape"
    ):
        pdl_post.merge(HostCudaArray(s.sem), HostCudaArray(s.ctr), s.off)
    neg = s.sem.astype(np.int32)
    neg[0, 0] = -1
    with pytest.raises(ValueError, match=r"sem: class ids must be >= 0, got a minimum of -1"):
        pdl_post.merge(HostCudaArray(neg), HostCudaArray(s.ctr), HostCudaArray(s.off))
