"""The compiled backend equals the reference backend exactly, on every input family and device.

Synthetic scenes at several sizes with 0, 1, a few, hundreds and thousands of centres; integer
offsets (vote ties); quantised heatmaps (plateaus, top-k ties); NMS window sizes; foreground
masks; batches; every dtype; 1-4 threads; non-contiguous views; logits; the stages on their own;
the large-label paths. Tests taking ``device`` run on the CPU (compiled == reference) and on the
CUDA path, emulated everywhere and on a GPU when there is one (CUDA == compiled CPU, every output
compared: tests/devices.py).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import pdl_post
from conftest import assert_results_equal
from devices import run_on, to_device, to_host
from pdl_post import synthetic

CITY = pdl_post.presets.CITYSCAPES.kwargs()


def both(device, sem, ctr, off, *, foreground_mask=None, **kw):
    """On the CPU: compiled == reference. Elsewhere: the device == the compiled CPU path.

    Returns the compiled CPU result.
    """
    if device != "cpu":
        return run_on(device, sem, ctr, off, mask=foreground_mask, **kw)
    fast = pdl_post.postprocess(sem, ctr, off, foreground_mask=foreground_mask, **kw)
    ref = pdl_post.postprocess(
        sem, ctr, off, foreground_mask=foreground_mask, backend="reference", **kw
    )
    assert_results_equal(fast, ref)
    return fast


@pytest.mark.parametrize(
    ("height", "width", "centers"),
    [
        (1, 1, 0),
        (5, 7, 1),
        (40, 60, 0),
        (40, 60, 1),
        (64, 128, 5),
        (128, 256, 40),
        (200, 300, 250),
        (256, 512, 2500),
    ],
)
@pytest.mark.parametrize("topk_mode", ["exact", "detectron2"])
def test_synthetic_scenes_match_reference(device, height, width, centers, topk_mode):
    s = synthetic.make_scene(height, width, centers, seed=height + centers)
    for top_k in (200, 0, 3, None):
        r = both(device, s.sem, s.ctr, s.off, top_k=top_k, topk_mode=topk_mode, stuff_area=64)
    if centers and top_k is None:
        assert len(r.centers) > 0


def test_thousands_of_centres_top_k_none(device):
    s = synthetic.make_scene(512, 1024, 3000, seed=7)
    r = both(device, s.sem, s.ctr, s.off, top_k=None, stuff_area=0)
    assert len(r.centers) > 2000
    assert sum(seg["isthing"] for seg in r.segments) > 1500


@pytest.mark.parametrize("offset", [0.0, 0.5, -3.25])
def test_centres_packed_in_a_corner_and_votes_far_away(device, offset):
    # The grid search's worst layout: every pixel of a corner is a centre and the votes land far
    # from all of them, across rings of empty cells (which the search skips, starting at the
    # first ring that holds a centre). Offsets 0 put votes on integer coordinates, cell borders
    # among them; 0.5 makes equidistant ties; some votes land between the two occupied regions.
    h, w = 48, 80
    sem = np.full((h, w), 11, np.int32)
    sem[:, : w // 4] = 3  # stuff
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, :10, :24] = 0.5  # 240 centres
    ctr[0, h - 2 :, w - 3 :] = 0.5  # and 6 in the far corner
    off = np.full((2, h, w), offset, np.float32)
    kw = dict(top_k=None, nms_kernel=3, stuff_area=0, label_divisor=10_000)
    r = both(device, sem, ctr, off, **kw)
    assert len(r.centers) == 246
    # 257 centres or more: the CUDA path takes its grid search too.
    ctr[0, 10, :24] = 0.5
    r = both(device, sem, ctr, off, **kw)
    assert len(r.centers) == 270


@pytest.mark.parametrize("seed", range(4))
def test_integer_offsets_and_quantised_heatmaps_tie_identically(device, seed):
    s = synthetic.make_scene(96, 160, 30, seed=seed, integer_offsets=True)
    ctr = np.round(s.ctr * 4) / 4  # plateaus and equal peak values
    for mode in ("exact", "detectron2"):
        for top_k in (5, 17, None):
            both(device, s.sem, ctr, s.off, top_k=top_k, topk_mode=mode, stuff_area=16)


def test_nms_kernel_sizes(device):
    s = synthetic.make_scene(128, 192, 40, seed=12)
    for kernel in (1, 3, 41, 301):
        both(device, s.sem, s.ctr, s.off, nms_kernel=kernel, stuff_area=16)


def _plateau_peaks(shape, rows, cols, kernel):
    """The peaks of a flat heatmap with one higher square plateau at [rows) x [cols): the plateau
    and every pixel whose kernel x kernel window does not reach it."""
    radius = kernel // 2
    peaks = np.ones(shape, bool)
    peaks[
        max(rows[0] - radius, 0) : rows[1] + radius, max(cols[0] - radius, 0) : cols[1] + radius
    ] = False
    peaks[rows[0] : rows[1], cols[0] : cols[1]] = True
    return peaks


@pytest.mark.parametrize("kernel", [3, 5, 9, 41])
def test_nms_on_rough_heatmaps_and_plateaus(device, kernel):
    # The CUDA path tests a pixel's 3x3 neighbours before its whole window (cpp/cuda/center_nms.cu):
    # noise makes many 3x3 maxima that a larger value elsewhere in the window suppresses, rounding
    # makes plateaus (every tied pixel is kept) and a constant heatmap ties everywhere.
    s = synthetic.make_scene(72, 112, 25, seed=kernel)
    rng = np.random.default_rng(kernel)
    rough = (s.ctr + rng.uniform(0, 0.05, s.ctr.shape)).astype(np.float32)
    r = both(device, s.sem, rough, s.off, nms_kernel=kernel, top_k=None, stuff_area=16)
    assert len(r.centers) > 0
    coarse = np.round(rough * 8) / 8
    both(device, s.sem, coarse, s.off, nms_kernel=kernel, top_k=None, stuff_area=16)
    flat = np.full_like(s.ctr, 0.5)
    flat[:, 40:44, 50:54] = 0.75  # one square plateau suppresses its surroundings
    r = both(device, s.sem, flat, s.off, nms_kernel=kernel, top_k=None, stuff_area=16)
    kept = np.zeros(s.ctr.shape[-2:], bool)
    kept[r.centers[:, 0], r.centers[:, 1]] = True
    np.testing.assert_array_equal(kept, _plateau_peaks(kept.shape, (40, 44), (50, 54), kernel))


@pytest.mark.parametrize("kernel", [43, 65, 151])
def test_large_nms_windows_on_batches_and_strided_heatmaps(device, kernel):
    # Windows above 41 take the separable max filter on the CUDA path (cpp/cuda/center_nms.cu),
    # as on the CPU: block boundaries inside the image (43, 65) and a window wider and taller than
    # it (151), images side by side in a batch, float64, a heatmap read through strides, and a
    # flat heatmap whose square plateau suppresses its surroundings.
    b = synthetic.make_batch(3, 80, 136, 20, seed=kernel)
    rng = np.random.default_rng(kernel)
    rough = (b.ctr + rng.uniform(0, 0.05, b.ctr.shape)).astype(np.float32)
    kw = {"nms_kernel": kernel, "top_k": None, "stuff_area": 16}
    r = both(device, b.sem, rough, b.off, **kw)
    assert all(len(image.centers) > 0 for image in r)
    both(device, b.sem, np.round(rough.astype(np.float64) * 8) / 8, b.off, **kw)
    spaced = np.zeros((*rough.shape[:-1], 2 * rough.shape[-1]), np.float32)
    spaced[..., ::2] = rough
    both(device, b.sem, spaced[..., ::2], b.off, **kw)
    flat = np.full_like(rough, 0.5)
    flat[1, :, 30:33, 100:103] = 0.75
    r = both(device, b.sem, flat, b.off, **kw)
    kept = _plateau_peaks((80, 136), (30, 33), (100, 103), kernel)
    assert [len(image.centers) for image in r] == [80 * 136, kept.sum(), 80 * 136]
    assert set(map(tuple, r[1].centers.tolist())) == set(zip(*np.nonzero(kept)))


def test_foreground_mask_including_stuff_pixels(device):
    s = synthetic.make_scene(96, 160, 25, seed=3)
    rng = np.random.default_rng(0)
    mask = rng.random(s.sem.shape) < 0.6  # covers stuff pixels too
    r = both(device, s.sem, s.ctr, s.off, foreground_mask=mask, stuff_area=8)
    for other in (mask.astype(np.float32) - 0.2, mask.astype(np.uint8) * 3):  # mask > 0
        both(device, s.sem, s.ctr, s.off, foreground_mask=other, stuff_area=8)
    assert any(seg["isthing"] for seg in r.segments)


@pytest.mark.parametrize("sem_dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16])
@pytest.mark.parametrize("ctr_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("off_dtype", [np.float32, np.float64])
def test_every_dtype(device, sem_dtype, ctr_dtype, off_dtype):
    s = synthetic.make_scene(
        64, 96, 12, seed=5, sem_dtype=sem_dtype, ctr_dtype=ctr_dtype, off_dtype=off_dtype
    )
    r = both(device, s.sem, s.ctr, s.off, stuff_area=32)
    base = pdl_post.merge(
        s.sem.astype(np.int64), s.ctr.astype(np.float64), s.off.astype(np.float64), stuff_area=32
    )
    if ctr_dtype == np.float64 and off_dtype == np.float64:
        np.testing.assert_array_equal(r.panoptic, base)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_thread_counts_give_identical_results(threads):
    s = synthetic.make_scene(257, 333, 120, seed=11, logits=True)
    one = pdl_post.postprocess(s.logits, s.ctr, s.off, num_threads=1, top_k=None)
    many = pdl_post.postprocess(s.logits, s.ctr, s.off, num_threads=threads, top_k=None)
    assert_results_equal(one, many, score_rtol=0)  # scores bit-identical too
    b = synthetic.make_batch(5, 48, 64, 6, seed=2)
    np.testing.assert_array_equal(
        pdl_post.merge(b.sem, b.ctr, b.off, num_threads=1),
        pdl_post.merge(b.sem, b.ctr, b.off, num_threads=threads),
    )


def test_concurrent_calls_from_python_threads_give_the_serial_answers():
    """The core releases the GIL: calls from several Python threads at once, each with its own
    OpenMP team and float modes (labels and logits, top_k set and None, 1-3 threads each) give
    what each gives alone, scores bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    scenes = [synthetic.make_scene(128, 192, 20, seed=i, logits=i % 2 == 1) for i in range(6)]

    def run(i, threads):
        s = scenes[i]
        sem = s.logits if i % 2 == 1 else s.sem
        top_k = None if i % 3 == 0 else 200
        return pdl_post.postprocess(sem, s.ctr, s.off, num_threads=threads, top_k=top_k)

    alone = [run(i, 1) for i in range(len(scenes))]
    with ThreadPoolExecutor(4) as pool:
        calls = [(i % len(scenes), 1 + i % 3) for i in range(36)]
        results = list(pool.map(lambda c: run(*c), calls))
    for (i, _), r in zip(calls, results):
        assert_results_equal(r, alone[i], score_rtol=0)


def _peak_rss_growth(call):
    """Bytes the process's peak resident set grows by during call() (Linux: VmHWM reset)."""

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    base = status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError as e:
        pytest.skip(f"peak RSS cannot be reset here: {e}")
    call()
    return status("VmHWM") - base


def test_scores_with_logits_on_dense_peaks_take_memory_per_pixel():
    # A flat heatmap with top_k=None: every pixel its own instance (K = 131072). The score sums
    # per block of 4 rows and segment were 1024 blocks x K doubles (1.07 GB); each block now keeps
    # only the segments it touches. The rest of the call (Python segment dicts included) takes
    # about 60 MB here.
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4096, 32)).astype(np.float32)
    ctr = np.ones((4096, 32), np.float32)
    off = np.zeros((2, 4096, 32), np.float32)
    kw = dict(top_k=None, thing_ids=[0, 1, 2], label_divisor=10**6, num_threads=2)
    result = {}
    growth = _peak_rss_growth(lambda: result.update(r=pdl_post.postprocess(logits, ctr, off, **kw)))
    r = result["r"]
    assert growth < 256 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    # Each one-pixel segment scores its pixel's softmax probability of its class.
    score_of = {s["id"]: s["score"] for s in r.segments}
    assert len(score_of) == 4096 * 32
    scores = np.vectorize(score_of.get)(r.panoptic)
    wide = logits.astype(np.float64)
    softmax = np.exp(wide - wide.max(axis=0)) / np.exp(wide - wide.max(axis=0)).sum(axis=0)
    np.testing.assert_allclose(scores, softmax.max(axis=0), rtol=1e-12)


def test_batches_equal_image_by_image(device):
    b = synthetic.make_batch(4, 64, 96, 10, seed=4)
    ctr = b.ctr.copy()
    ctr[2] = 0.0  # an image without centres inside the batch
    batched = both(device, b.sem, ctr, b.off, stuff_area=16)
    for i in range(4):
        single = pdl_post.postprocess(b.sem[i], ctr[i], b.off[i], stuff_area=16)
        assert_results_equal(batched[i], single)
    assert pdl_post.merge(b.sem, ctr, b.off).shape == (4, 64, 96)
    both(device, b.sem, ctr, b.off, stuff_area=16, top_k=3)
    mask = np.random.default_rng(1).random(b.sem.shape) < 0.5
    both(device, b.sem, ctr, b.off, foreground_mask=mask, stuff_area=16)


def _channels_last(logits):
    """The same [C, H, W] logits stored channels-last (a non-contiguous view)."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(logits, 0, -1)), -1, 0)


def test_non_contiguous_views():
    s = synthetic.make_scene(80, 120, 15, seed=9, logits=True)
    # Transposed storage, reversed rows, every other column of a wider array.
    sem = np.ascontiguousarray(s.sem.T).T
    ctr = s.ctr[:, ::-1, :][:, ::-1, :]
    wide = np.zeros((2, 80, 240), np.float32)
    wide[:, :, ::2] = s.off
    off = wide[:, :, ::2]
    assert not off.flags.c_contiguous and not sem.flags.c_contiguous
    r = both("cpu", sem, ctr, off, stuff_area=16)
    assert_results_equal(r, pdl_post.postprocess(s.sem, s.ctr, s.off, stuff_area=16))
    logits = _channels_last(s.logits)
    assert_results_equal(
        both("cpu", logits, ctr, off, stuff_area=16),
        pdl_post.postprocess(s.logits, s.ctr, s.off, stuff_area=16),
    )


def test_logits_argmax_and_scores(device):
    s = synthetic.make_scene(64, 96, 8, seed=1, logits=True)
    r = both(device, s.logits, s.ctr, s.off, stuff_area=16)
    np.testing.assert_array_equal(r.panoptic, pdl_post.merge(s.sem, s.ctr, s.off, stuff_area=16))
    things = [seg for seg in r.segments if seg["isthing"]]
    assert things and all(0 < seg["score"] <= 1 for seg in r.segments)
    labels = pdl_post.postprocess(s.sem, s.ctr, s.off, stuff_area=16)
    # Label input: thing score = heatmap value at the centre, stuff score = 1.
    for seg, ref in zip(r.segments, labels.segments):
        assert seg["id"] == ref["id"]
        assert seg["score"] <= ref["score"] + 1e-12
    assert all(seg["score"] == 1.0 for seg in labels.segments if not seg["isthing"])
    b = synthetic.make_batch(2, 48, 64, 6, seed=2, logits=True)
    both(device, b.logits, b.ctr, b.off, stuff_area=16)


def test_logits_across_runs_and_layouts(device):
    # The CPU reads logits channel by channel over runs of 256 pixels of a row
    # (kLogitRunPixels); the GPU a pixel per thread. Rows of 600 pixels end in a partial run;
    # channels-last storage, reversed rows and columns, and float64 give the same bits.
    s = synthetic.make_scene(24, 600, 12, seed=21, logits=True)
    logits = s.logits.copy()
    logits[:, 3, 250:262] = np.nan  # NaN never wins, across a run boundary
    logits[1, 5, 255:258] = logits[:, 5, 255:258].max(axis=0)  # ties: the first maximum wins
    r = both(device, logits, s.ctr, s.off, stuff_area=16)
    if device != "cpu":
        return
    last = _channels_last(logits)
    flipped = np.ascontiguousarray(logits[:, ::-1, ::-1])[:, ::-1, ::-1]
    for view in (last, flipped):
        assert not view.flags.c_contiguous
        assert_results_equal(
            pdl_post.postprocess(view, s.ctr, s.off, stuff_area=16), r, score_rtol=0
        )
    wide = pdl_post.postprocess(logits.astype(np.float64), s.ctr, s.off, stuff_area=16)
    assert_results_equal(wide, r, score_rtol=0)  # float32 -> float64 is exact


def test_half_precision_inputs_are_widened(device):
    # float16 logits, heatmaps and offsets (networks run in half precision) are read as their
    # float32 values, exactly, on every device (CUDA arrays widened on the device).
    s = synthetic.make_scene(48, 64, 6, seed=4, logits=True)
    half = [a.astype(np.float16) for a in (s.logits, s.ctr, s.off)]
    want = pdl_post.postprocess(*(a.astype(np.float32) for a in half), stuff_area=16)
    got = both(device, *half, stuff_area=16)
    assert_results_equal(got, want, score_rtol=0)
    labels = both(device, s.sem, half[1], s.off, stuff_area=16)  # one half input among others
    np.testing.assert_array_equal(
        labels.panoptic, pdl_post.merge(s.sem, half[1].astype(np.float32), s.off, stuff_area=16)
    )


def test_softmax_scores_match_a_float64_softmax(device):
    # A batch of 1x1 images without centres: each image's one stuff segment scores the softmax
    # probability of its argmax class, computed with the library's own exp (exp_nonpositive,
    # within 1 ulp of libm's) in channel order. Differences of logits reach 60, and 800 (exp
    # underflows to 0).
    rng = np.random.default_rng(8)
    logits = rng.uniform(-60.0, 0.0, size=(500, 19, 1, 1))
    logits[::7, 3] = -800.0
    logits[::5, 11] = rng.uniform(-1e-9, 0.0, size=logits[::5, 11].shape)
    kw = dict(thing_ids=[], stuff_area=0)
    zeros = np.zeros((500, 1, 1, 1)), np.zeros((500, 2, 1, 1))
    results = both(device, logits, *zeros, **kw)
    for r, pixel in zip(results, logits[:, :, 0, 0]):
        m = max(pixel)
        terms = [math.exp(v - m) for v in pixel]
        total = 0.0
        for t in terms:  # channel order, as the library sums
            total += t
        (segment,) = r.segments
        assert segment["score"] == pytest.approx(1.0 / total, rel=1e-14, abs=0)


def test_cpu_avx2_copies_give_the_same_bits():
    # The CPU's softmax loops have an AVX2 copy, used where the processor has it; the plain one
    # (SSE2 vectors) must give the same scores bit for bit: contiguous, strided and float64.
    from pdl_post import _core

    s = synthetic.make_scene(40, 600, 12, seed=5, logits=True)
    last = _channels_last(s.logits)
    cases = (s.logits, last, s.logits.astype(np.float64))
    results = {}
    for avx2 in (True, False):
        previous = _core._set_cpu_avx2(avx2)
        try:
            results[avx2] = [
                pdl_post.postprocess(logits, s.ctr, s.off, stuff_area=16, num_threads=2)
                for logits in cases
            ]
        finally:
            _core._set_cpu_avx2(previous)
    for with_avx2, plain in zip(results[True], results[False]):
        assert_results_equal(with_avx2, plain, score_rtol=0)
        assert_results_equal(with_avx2, results[True][0], score_rtol=0)


def test_logits_nan_never_wins(device):
    logits = np.zeros((3, 2, 2), np.float32)
    logits[0] = np.nan
    logits[2, 0, 0] = 1.0
    r = both(
        device,
        logits,
        np.zeros((2, 2), np.float32),
        np.zeros((2, 2, 2), np.float32),
        thing_ids=[],
        stuff_area=0,
        label_divisor=1,
    )
    np.testing.assert_array_equal(r.panoptic, [[2, 1], [1, 1]])
    s = synthetic.make_scene(80, 120, 15, seed=9, logits=True)
    noisy = s.logits.astype(np.float64)
    noisy[:, ::5, ::7] = np.nan
    both(device, noisy, s.ctr, s.off, stuff_area=16)


def test_stages_compose_to_merge():
    s = synthetic.make_scene(128, 192, 30, seed=12)
    for backend in ("cpu", "reference"):
        centers, _ = pdl_post.find_centers(s.ctr, backend=backend)
        instance = pdl_post.group_pixels(s.sem, centers, s.off, backend=backend)
        panoptic = pdl_post.fuse(s.sem, instance, backend=backend)
        np.testing.assert_array_equal(panoptic, pdl_post.merge(s.sem, s.ctr, s.off))
        assert instance.dtype == np.int32 and instance.max() == len(centers)
    b = synthetic.make_batch(2, 48, 64, 5, seed=1)
    pairs = pdl_post.find_centers(b.ctr)
    inst = pdl_post.group_pixels(b.sem, [c for c, _ in pairs], b.off)
    np.testing.assert_array_equal(pdl_post.fuse(b.sem, inst), pdl_post.merge(b.sem, b.ctr, b.off))
    mask = b.sem >= 11
    inst_mask = pdl_post.group_pixels(None, [c for c, _ in pairs], b.off, foreground_mask=mask)
    np.testing.assert_array_equal(inst_mask, inst)


def test_huge_labels_use_compacted_class_tables(device):
    s = synthetic.make_scene(64, 96, 10, seed=3)
    # Class ids shifted far beyond the dense table limit (2**16): both paths index their tables by
    # the rank among the labels present.
    shift = 5_000_000
    big = s.sem.astype(np.int64) + shift
    things = [t + shift for t in CITY["thing_ids"]]
    r = both(device, big, s.ctr, s.off, thing_ids=things, stuff_area=16)
    assert r.panoptic.dtype == np.int64
    small = pdl_post.merge(s.sem, s.ctr, s.off, stuff_area=16)
    shifted = np.where(small >= 0, small.astype(np.int64) + shift * 1000, small)
    np.testing.assert_array_equal(r.panoptic, shifted)


def test_sparse_huge_class_ids_in_a_batch(device):
    # Compacted class tables over a batch whose images hold different, sparse, huge ids (up to
    # int64 max / 2**20, so that ids x label_divisor still fit int64), ids absent from some
    # images, things and stuff among them; with and without a foreground mask.
    b = synthetic.make_batch(3, 48, 64, 6, seed=11)
    rng = np.random.default_rng(11)
    present = np.unique(b.sem)
    huge = np.sort(rng.choice(2**43, size=present.size, replace=False)) + 2**16
    table = np.zeros(present.max() + 1, np.int64)
    table[present] = huge
    sem = table[b.sem]
    sem[1][sem[1] == huge[0]] = huge[-1]  # image 1 lacks the smallest id
    things = [int(table[t]) for t in CITY["thing_ids"] if t in present]
    for mask in (None, np.isin(sem, things)):
        r = both(device, sem, b.ctr, b.off, foreground_mask=mask, thing_ids=things, stuff_area=4)
        assert all(res.panoptic.dtype == np.int64 for res in r)
        categories = {seg["category_id"] for res in r for seg in res.segments}
        assert categories <= set(huge.tolist()) and len(categories) > 5


def test_many_instances_and_classes_use_the_counting_sort_path(device):
    # (K + 1) x C beyond the dense histogram budget: 2500 centres x 60000 classes.
    s = synthetic.make_scene(256, 512, 2500, seed=8)
    sem = s.sem.astype(np.int32)
    sem[0, 0] = 60_000  # enlarges the class table without changing anything else
    r = both(device, sem, s.ctr, s.off, top_k=None, stuff_area=0)
    ref = pdl_post.merge(s.sem, s.ctr, s.off, top_k=None, stuff_area=0)
    np.testing.assert_array_equal(r.panoptic[1:], ref[1:])


def test_output_dtype_widens_only_when_needed(device):
    s = synthetic.make_scene(32, 48, 4, seed=0)
    assert both(device, s.sem, s.ctr, s.off).panoptic.dtype == np.int32
    assert both(device, s.sem, s.ctr, s.off, void_label=-(2**40)).panoptic.dtype == np.int64
    wide = both(device, s.sem, s.ctr, s.off, label_divisor=2**27, stuff_area=0)
    assert wide.panoptic.dtype == np.int64
    assert wide.panoptic.max() > np.iinfo(np.int32).max


def test_largest_label_fitting_agrees_with_output_dtype():
    # The CUDA path allocates its output before the label range is known and lets the core go on
    # when max class id <= largest_label_fitting(dtype, label_divisor): exactly the ids for which
    # output_dtype asks for that dtype or a narrower one.
    from pdl_post._inputs import largest_label_fitting, output_dtype

    divisors = [1, 2, 3, 7, 1000, 2**16 - 1, 2**27, 2**40, 2**62, 2**63]
    divisors += [2**31 + d for d in (-1, 0, 1)]  # int32's edge
    for label_divisor in divisors:
        for dtype in (np.int32, np.int64):
            largest = largest_label_fitting(dtype, label_divisor)
            for max_label in {0, 1, 17, largest - 1, largest, largest + 1}:
                if max_label < 0:
                    continue
                try:
                    fits = np.dtype(output_dtype(max_label, label_divisor, -1)).itemsize
                except ValueError:  # beyond int64
                    fits = 16
                what = f"label_divisor {label_divisor}, {dtype.__name__}, max label {max_label}"
                assert (fits <= np.dtype(dtype).itemsize) == (max_label <= largest), what


def test_empty_images(device):
    for shape in [(0, 5), (4, 0), (0, 0)]:
        sem = np.zeros(shape, np.int32)
        r = both(device, sem, np.zeros(shape, np.float32), np.zeros((2, *shape), np.float32))
        assert r.panoptic.shape == shape and r.panoptic.dtype == np.int32
    empty_batch = both(
        device,
        np.zeros((0, 3, 3), np.int32),
        np.zeros((0, 1, 3, 3), np.float32),
        np.zeros((0, 2, 3, 3), np.float32),
    )
    assert empty_batch == []
    assert pdl_post.merge(
        np.zeros((0, 3, 3), np.int32),
        np.zeros((0, 1, 3, 3), np.float32),
        np.zeros((0, 2, 3, 3), np.float32),
    ).shape == (0, 3, 3)


def test_non_finite_heatmaps_and_offsets(device):
    s = synthetic.make_scene(48, 64, 6, seed=2)
    ctr = s.ctr.copy()
    ctr[0, ::7, ::5] = np.nan
    ctr[0, 10, 10] = np.inf
    off = s.off.copy()
    off[0, ::3, ::4] = np.nan
    off[1, 5::9, ::2] = np.inf
    off[0, 2::11, 1::3] = 1e30  # finite but far outside the vote grid
    r = both(device, s.sem, ctr, off, stuff_area=8)
    assert [10, 10] in r.centers.tolist()


def _far_votes(height, width, seed):
    """Offsets sending most votes outside the vote grid (a few pixels beyond the image) in all
    eight directions, at every scale from 10 px (some of these still land inside) to float32's
    largest: far enough that all the distances round to one value (ties to index 0) or overflow
    to +inf, and votes exactly between two centre rows or columns (ties to the lower index)."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    scale = 10.0 ** rng.uniform(1, 38.5, (2, *shape))
    side = rng.choice([-1.0, 0.0, 1.0], (2, *shape))  # 0: stays within the rows / columns
    ys, xs = np.indices(shape)
    dy = np.where(side[0] == 0, rng.integers(0, height, shape) - ys + 0.5, side[0] * scale[0])
    dx = np.where(side[1] == 0, rng.integers(0, width, shape) - xs + 0.5, side[1] * scale[1])
    inside = (side[0] == 0) & (side[1] == 0)  # push these out along one axis
    dx[inside] = -(xs[inside] + 10.0 ** rng.uniform(1, 6, inside.sum()))
    with np.errstate(over="ignore"):  # beyond float32's range -> inf: intended
        return np.stack([dy, dx]).astype(np.float32)


@pytest.mark.parametrize("peaks", ["plateau", "sparse", "few"])
def test_votes_outside_the_grid_equal_brute_force(device, peaks):
    # Votes outside the vote grid search its quadtree above kFarBruteForceMax (768) centres
    # (offset_voting.h, nearest_center_outside), else compare every centre: the same centre as
    # brute force's (the reference), ties to the lower index included, on a plateau (every pixel
    # a centre, equal scores: index order is row-major), with scattered centres, and with fewer
    # (every centre compared; above 256, the CUDA path's grid search all the same).
    h, w = (37, 53) if peaks == "few" else (61, 83)
    rng = np.random.default_rng(5)
    sem = rng.integers(0, 4, (h, w)).astype(np.int32)
    if peaks == "plateau":
        ctr = np.full((1, h, w), 0.5, np.float32)
    else:
        ctr = np.where(rng.random((1, h, w)) < 0.2, rng.random((1, h, w)), 0).astype(np.float32)
    off = _far_votes(h, w, seed=len(peaks))
    r = both(
        device,
        sem,
        ctr,
        off,
        thing_ids=[1, 2, 3],
        top_k=None,
        nms_kernel=1,
        stuff_area=0,
        label_divisor=10_000,
    )
    assert 256 < len(r.centers) <= 768 if peaks == "few" else len(r.centers) > 768
    assert sum(seg["isthing"] for seg in r.segments) > 20


def test_far_votes_search_few_centres():
    # 524,288 centres (every pixel) and as many votes, all far outside the image: brute force
    # would compare 2.7e11 pairs (minutes to hours); the quadtree answers in about a second here.
    # The centre nearest to each far point is a corner of the image.
    h, w = 512, 1024
    centers = np.stack(np.indices((h, w)), axis=-1).reshape(-1, 2)
    everywhere = np.ones((h, w), bool)
    for (dy, dx), (y, x) in [((3e5, -2e5), (h - 1, 0)), ((-7e4, 9e4), (0, w - 1))]:
        off = np.empty((2, h, w), np.float32)
        off[0], off[1] = dy, dx
        start = time.perf_counter()
        instance = pdl_post.group_pixels(None, centers, off, foreground_mask=everywhere)
        assert time.perf_counter() - start < 30
        assert np.array_equal(instance, np.full((h, w), 1 + y * w + x, np.int32))


def test_presets(device):
    assert pdl_post.presets.CITYSCAPES.thing_ids == tuple(range(11, 19))
    coco = pdl_post.presets.COCO.kwargs()
    assert coco["nms_kernel"] == 41 and coco["stuff_area"] == 4096 and len(coco["thing_ids"]) == 80
    mv = pdl_post.presets.MAPILLARY_VISTAS
    assert mv.stuff_area == 4096 and len(mv.thing_ids) == 37
    s = synthetic.make_scene(64, 96, 10, seed=0)
    for preset in (pdl_post.presets.CITYSCAPES, pdl_post.presets.COCO, mv):
        both(device, s.sem, s.ctr, s.off, **preset.kwargs())


def test_build_info_and_backends():
    info = pdl_post.build_info()
    assert info["version"] == pdl_post.__version__
    assert {"compiler", "openmp", "cuda", "max_threads", "cpu_avx2"} <= set(info)
    from pdl_post import _core

    previous = _core._set_cpu_avx2(False)
    try:
        assert pdl_post.build_info()["cpu_avx2"] is False
    finally:
        _core._set_cpu_avx2(previous)
    assert pdl_post.build_info()["cpu_avx2"] == info["cpu_avx2"]
    assert pdl_post.available_backends()[0] == "cpu"
    assert "reference" in pdl_post.available_backends()


def test_merge_is_postprocess_panoptic_and_inputs_untouched(device):
    s = synthetic.make_scene(64, 96, 10, seed=6, logits=True)
    for sem in (s.sem, s.logits):
        inputs = [to_device(a, device) for a in (sem, s.ctr, s.off)]
        out = to_host(pdl_post.merge(*inputs))
        for a, original in zip(inputs, (sem, s.ctr, s.off)):
            np.testing.assert_array_equal(to_host(a), original)
        result = pdl_post.postprocess(*inputs)
        np.testing.assert_array_equal(out, to_host(result.panoptic))


def test_recovers_ground_truth_on_clean_scenes(device):
    s = synthetic.make_scene(160, 320, 25, seed=21, offset_noise=0.0, semantic_noise=0.0)
    r = both(device, s.sem, s.ctr, s.off, top_k=None, stuff_area=0)
    np.testing.assert_array_equal(r.panoptic, s.panoptic_gt)


def test_merge_docstring_example_runs():
    import doctest

    from pdl_post import _api

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(_api.merge, "merge", globs={}):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


def _nms_heatmaps():
    """Heatmaps of every shape the two CPU NMS paths must agree on: Gaussian blobs (sparse),
    blobs with noise (many 3x3 maxima), rounded values (plateaus), a flat map with one higher
    square, noise with NaN and infinities, float64 and a strided view."""
    rng = np.random.default_rng(21)
    blobs = synthetic.make_scene(90, 130, 30, seed=21).ctr
    rough = (blobs + rng.uniform(0, 0.08, blobs.shape)).astype(np.float32)
    flat = np.full_like(blobs, 0.5)
    flat[:, 30:36, 60:70] = 0.75
    wild = rng.normal(0, 1, blobs.shape).astype(np.float32)
    wild[rng.random(wild.shape) < 0.1] = np.nan
    wild[rng.random(wild.shape) < 0.03] = np.inf
    wild[rng.random(wild.shape) < 0.03] = -np.inf
    wide = np.zeros((1, 90, 260), np.float64)
    wide[..., ::2] = np.round(rough * 6) / 6
    return {
        "blobs": blobs,
        "rough": rough,
        "plateaus": np.round(rough * 4) / 4,
        "flat": flat,
        "wild": wild,
        "strided float64": wide[..., ::2],
    }


@pytest.mark.parametrize("kernel", [1, 3, 7, 41, 301])
@pytest.mark.parametrize("threshold", [0.1, -0.5])
def test_cpu_nms_paths_give_the_same_peaks(kernel, threshold):
    # The CPU tests each candidate's window where candidates are few (sparse) and runs the
    # separable max filter elsewhere (center_nms.h): forced either way, on 1-3 threads, both give
    # the reference's peaks.
    from pdl_post import _core

    strategies = _core._NmsStrategy
    for name, ctr in _nms_heatmaps().items():
        kw = {"threshold": threshold, "nms_kernel": kernel, "top_k": None}
        expected = pdl_post.find_centers(ctr, backend="reference", **kw)
        for strategy in (strategies.sparse, strategies.filter, strategies.auto):
            previous = _core._set_nms_strategy(strategy)
            try:
                for threads in (1, 2, 3):
                    got = pdl_post.find_centers(ctr, num_threads=threads, **kw)
                    np.testing.assert_array_equal(got[0], expected[0], err_msg=name)
                    np.testing.assert_array_equal(got[1], expected[1], err_msg=name)
            finally:
                _core._set_nms_strategy(previous)


def test_cpu_nms_path_choice():
    # Sparse heatmaps take the window tests, heatmaps mostly above the threshold the filter, and a
    # sparse pass that exceeds its read budget (a plateau under a wide window: k^2 reads per
    # pixel) gives up for the filter; the answer is the reference's every time.
    from pdl_post import _core

    blobs = synthetic.make_scene(120, 160, 12, seed=4).ctr
    flat = np.full((1, 120, 160), 0.5, np.float32)
    plateau = np.zeros((1, 120, 160), np.float32)
    plateau[0, 40:80, 50:110] = 0.5
    band = np.zeros((1, 120, 160), np.float32)
    band[0, 60:64] = 0.9  # a few rows: the filter skips the others, so must the budget
    line = np.zeros((1, 120, 160), np.float32)
    line[0, 60] = 0.9
    given_up = {"sparse": 0, "filter": 1, "sparse_given_up": 1}
    cases = [
        (blobs, 7, {"sparse": 1, "filter": 0, "sparse_given_up": 0}),
        (flat, 7, {"sparse": 0, "filter": 1, "sparse_given_up": 0}),
        (blobs, 41, {"sparse": 1, "filter": 0, "sparse_given_up": 0}),
        (plateau, 41, given_up),
        (band, 41, given_up),
        (line, 255, given_up),
    ]
    for ctr, kernel, taken in cases:
        kw = {"nms_kernel": kernel, "top_k": None}
        before = _core._nms_path_counts()
        got = pdl_post.find_centers(ctr, num_threads=2, **kw)
        after = _core._nms_path_counts()
        assert {key: after[key] - before[key] for key in after} == taken
        expected = pdl_post.find_centers(ctr, backend="reference", **kw)
        np.testing.assert_array_equal(got[0], expected[0])
        assert len(got[0]) > 0


def test_thread_counts_far_beyond_the_work():
    # A thread count no machine has (or beyond the rows) starts no idle threads: by the ten
    # thousand they would fail to start and take the process down. The results are the same.
    s = synthetic.make_scene(8, 9, 2, seed=1, logits=True)
    instance = pdl_post.group_pixels(s.sem, np.array([[2, 3]]), s.off)
    for threads in (100_000, 2**31 - 1):
        for sem in (s.sem, s.logits):
            assert_results_equal(
                pdl_post.postprocess(sem, s.ctr, s.off, stuff_area=4, num_threads=threads),
                pdl_post.postprocess(sem, s.ctr, s.off, stuff_area=4, num_threads=1),
            )
        np.testing.assert_array_equal(
            pdl_post.fuse(s.sem, instance, stuff_area=4, num_threads=threads),
            pdl_post.fuse(s.sem, instance, stuff_area=4),
        )
        got = pdl_post.group_pixels(s.sem, np.array([[2, 3]]), s.off, num_threads=threads)
        np.testing.assert_array_equal(got, instance)
        assert_results_equal(
            pdl_post.postprocess(
                *(np.stack([a, a]) for a in (s.sem, s.ctr, s.off)), num_threads=threads
            )[1],
            pdl_post.postprocess(s.sem, s.ctr, s.off),
        )


def test_thing_ids_up_to_int64_max(device):
    # Any non-negative int64 is a thing id (docs/merge-semantics.md): the largest sizes no table
    # (its table would take INT64_MAX + 1 bytes; the sorted ids are searched instead).
    s = synthetic.make_scene(48, 64, 6, seed=3)
    things = [*range(11, 19), np.iinfo(np.int64).max]
    r = both(device, s.sem, s.ctr, s.off, thing_ids=things, stuff_area=8)
    assert_results_equal(r, pdl_post.postprocess(s.sem, s.ctr, s.off, stuff_area=8))
    assert any(seg["isthing"] for seg in r.segments)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_fuse_takes_any_non_negative_int64_instance_ids(backend):
    # Sparse ids are renumbered 1..n in order first, which changes nothing: the same instances
    # as ids 1..n, whatever their size (up to int64's maximum) and however far apart.
    s = synthetic.make_scene(40, 56, 6, seed=7)
    centers, _ = pdl_post.find_centers(s.ctr)
    dense = pdl_post.group_pixels(s.sem, centers, s.off)
    expected = pdl_post.fuse(s.sem, dense, stuff_area=8, backend=backend)
    largest = np.iinfo(np.int64).max
    for ids in (
        np.arange(dense.max() + 1) * (2**31 - 1),
        np.arange(dense.max() + 1) * 2**40,
        largest - np.arange(dense.max() + 1)[::-1] * 3,
    ):
        ids[0] = 0  # 0 stays "no instance"
        sparse = ids[dense]
        got = pdl_post.fuse(s.sem, sparse, stuff_area=8, backend=backend)
        np.testing.assert_array_equal(got, expected)


def test_nan_scores_are_one_nan_on_every_path(device):
    # A +NaN logit and a -NaN from inf - inf meet in one sum, in another order on each path: the
    # sign of the result followed that order. Every path reports the positive quiet NaN.
    logits = np.array([[[-1.5, np.nan, -1.0]], [[np.inf, -0.5, -0.5]]], np.float32)
    ctr = np.zeros((1, 1, 3), np.float32)
    off = np.zeros((2, 1, 3), np.float32)
    kw = {"thing_ids": (), "stuff_area": 0}
    results = [pdl_post.postprocess(logits, ctr, off, backend="reference", **kw)]
    results.append(both(device, logits, ctr, off, **kw))  # devices: bits equal to the CPU's
    for r in results:
        scores = np.array([s["score"] for s in r.segments])
        assert np.isnan(scores).any()
        nan_bits = scores[np.isnan(scores)].view(np.uint64)
        assert (nan_bits == np.uint64(0x7FF8000000000000)).all(), [hex(b) for b in nan_bits]
