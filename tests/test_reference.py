"""Tests of the reference backend against hand-worked cases of docs/merge-semantics.md, against
literal pure-Python readings of the rules, numba against its numpy fallback, and against the dense
PyTorch baseline."""

from __future__ import annotations

import numpy as np
import pytest

from pdl_post import reference as ref
from pdl_post import synthetic

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)

COMMON = {"label_divisor": 1000, "void_label": -1, "threshold": 0.1, "nms_kernel": 3, "top_k": None}


def f64(*values):
    """The float64 scores of float32 heatmap values."""
    return np.array([float(F32(v)) for v in values], dtype=np.float64)


def centers_of(ctr, **kw):
    kw = {"threshold": 0.1, "nms_kernel": 3, "top_k": None, "topk_mode": "exact", **kw}
    return ref.find_centers(np.asarray(ctr, dtype=kw.pop("dtype", np.float32)), **kw)


@pytest.fixture(params=["numba", "numpy"])
def backend(request, monkeypatch):
    """Run a test once with the numba loops and once with the numpy fallback."""
    if request.param == "numba" and not ref.NUMBA_AVAILABLE:
        pytest.skip("numba not installed")
    monkeypatch.setattr(ref, "_USE_NUMBA", request.param == "numba")
    return request.param


# ---------------------------------------------------------------------------------------------
# argmax_logits
# ---------------------------------------------------------------------------------------------


def test_argmax_first_max_wins_and_nan_never_wins():
    nan, inf = np.nan, np.inf
    # one row of 6 pixels, 3 classes; columns: logits of class 0, 1, 2
    pixels = [
        [1.0, 2.0, 2.0],  # tie 1/2 -> first max: 1
        [3.0, 3.0, 3.0],  # all tied -> 0
        [nan, 1.0, 0.5],  # NaN never wins -> 1
        [nan, nan, nan],  # all NaN -> 0
        [nan, -inf, nan],  # -inf is a number, NaN is not -> 1
        [0.0, nan, inf],  # -> 2
    ]
    logits = np.array(pixels, dtype=np.float32).T[:, None, :]  # [3, 1, 6]
    out = ref.argmax_logits(logits)
    assert out.dtype == np.int64 and out.shape == (1, 6)
    np.testing.assert_array_equal(out, [[1, 0, 1, 0, 1, 2]])
    np.testing.assert_array_equal(ref.argmax_logits(logits.astype(np.float64)), out)


# ---------------------------------------------------------------------------------------------
# find_centers: threshold, NMS, peaks, top-k
# ---------------------------------------------------------------------------------------------


def test_threshold_is_compared_in_the_heatmap_dtype(backend):
    t = F32(0.1)  # 0.100000001490116... > 0.1 in float64
    c32, s32 = centers_of([[t, 0.2]], nms_kernel=1)
    np.testing.assert_array_equal(c32, [[0, 1]])  # float32: f32(0.1) > f32(0.1) is false
    np.testing.assert_array_equal(s32, f64(0.2))
    c64, s64 = centers_of([[float(t), 0.2]], nms_kernel=1, dtype=np.float64)
    np.testing.assert_array_equal(c64, [[0, 0], [0, 1]])  # float64: kept
    np.testing.assert_array_equal(s64, [float(t), 0.2])


def test_nan_becomes_minus_one_and_inf_is_a_peak(backend):
    nan, inf = np.nan, np.inf
    c, s = centers_of([[nan, inf, 0.5, -inf, 0.3]])
    np.testing.assert_array_equal(c, [[0, 1], [0, 4]])
    np.testing.assert_array_equal(s, [inf, float(F32(0.3))])
    # two adjacent +inf form a plateau: both are peaks
    c, _ = centers_of([[inf, inf, 0.5]])
    np.testing.assert_array_equal(c, [[0, 0], [0, 1]])
    # an all-NaN heatmap has no peak
    c, s = centers_of(np.full((3, 3), nan))
    assert c.shape == (0, 2) and c.dtype == np.int64 and s.shape == (0,) and s.dtype == np.float64


def test_nms_window_is_clipped_at_the_border(backend):
    ctr = [
        [0.9, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.5, 0.0],
        [0.0, 0.0, 0.0, 0.7],
    ]
    c, s = centers_of(ctr, nms_kernel=3)  # 0.5 sees 0.7; corners see only in-image cells
    np.testing.assert_array_equal(c, [[0, 0], [3, 3]])
    np.testing.assert_array_equal(s, f64(0.9, 0.7))
    c, _ = centers_of(ctr, nms_kernel=5)  # 0.7's window rows/cols 1..3 misses (0, 0)
    np.testing.assert_array_equal(c, [[0, 0], [3, 3]])
    c, _ = centers_of(ctr, nms_kernel=7)  # now it reaches (0, 0)
    np.testing.assert_array_equal(c, [[0, 0]])
    c, _ = centers_of(ctr, nms_kernel=1)  # no suppression
    np.testing.assert_array_equal(c, [[0, 0], [2, 2], [3, 3]])
    c, _ = centers_of(ctr, nms_kernel=41)  # window larger than the image
    np.testing.assert_array_equal(c, [[0, 0]])


def test_plateaus_keep_every_tied_pixel_in_row_major_order(backend):
    ctr = [
        [0.5, 0.5, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.3, 0.3],
    ]
    c, s = centers_of(ctr)
    np.testing.assert_array_equal(c, [[0, 0], [0, 1], [2, 1], [2, 2]])
    np.testing.assert_array_equal(s, f64(0.5, 0.5, 0.3, 0.3))


def test_peaks_need_positive_h(backend):
    # with a negative threshold, negative values survive thresholding but are never peaks
    c, _ = centers_of([[-0.25, -0.25], [-0.25, -0.25]], threshold=-0.5)
    assert c.shape == (0, 2)
    c, _ = centers_of(np.zeros((2, 2)), threshold=-1.0)
    assert c.shape == (0, 2)
    c, _ = centers_of([[-0.25, 0.5]], threshold=-0.5, nms_kernel=1)
    np.testing.assert_array_equal(c, [[0, 1]])


ROW = [[0.5, 0.9, 0.5, 0.7, 0.5]]


@pytest.mark.parametrize(
    ("mode", "top_k", "expected_x"),
    [
        ("exact", None, [0, 1, 2, 3, 4]),
        ("exact", 0, []),
        ("exact", 1, [1]),
        ("exact", 2, [1, 3]),
        ("exact", 3, [0, 1, 3]),  # the 0.5 tie goes to the earliest pixel
        ("exact", 4, [0, 1, 2, 3]),
        ("exact", 5, [0, 1, 2, 3, 4]),
        ("exact", 100, [0, 1, 2, 3, 4]),
        ("detectron2", None, [0, 1, 2, 3, 4]),
        ("detectron2", 0, []),
        ("detectron2", 1, []),  # keeps h > 0.9
        ("detectron2", 2, [1]),  # keeps h > 0.7
        ("detectron2", 3, [1, 3]),  # keeps h > 0.5: ties at t are dropped
        ("detectron2", 5, [1, 3]),  # P == top_k: still h > 5th largest
        ("detectron2", 6, [0, 1, 2, 3, 4]),  # P < top_k: keep all
    ],
)
def test_top_k_rules(backend, mode, top_k, expected_x):
    c, s = centers_of(ROW, nms_kernel=1, top_k=top_k, topk_mode=mode)
    np.testing.assert_array_equal(
        c.reshape(-1, 2), [[0, x] for x in expected_x] or np.zeros((0, 2))
    )
    np.testing.assert_array_equal(s, f64(*[ROW[0][x] for x in expected_x]))


@pytest.mark.parametrize(
    ("mode", "top_k", "expected"),
    [
        ("exact", 1, [[0, 0]]),
        ("exact", 3, [[0, 0], [0, 1], [2, 1]]),
        ("detectron2", 1, []),
        ("detectron2", 2, []),
        ("detectron2", 3, [[0, 0], [0, 1]]),
        ("detectron2", 4, [[0, 0], [0, 1]]),
        ("detectron2", 5, [[0, 0], [0, 1], [2, 1], [2, 2]]),
    ],
)
def test_top_k_on_plateaus(backend, mode, top_k, expected):
    ctr = [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.3, 0.3]]
    c, _ = centers_of(ctr, top_k=top_k, topk_mode=mode)
    np.testing.assert_array_equal(c, np.array(expected, dtype=np.int64).reshape(-1, 2))


def test_top_k_larger_than_pixels_and_one_pixel_images(backend):
    ctr = [[0.2, 0.3], [0.4, 0.5]]
    for mode in ("exact", "detectron2"):
        c, _ = centers_of(ctr, nms_kernel=1, top_k=100, topk_mode=mode)
        np.testing.assert_array_equal(c, [[0, 0], [0, 1], [1, 0], [1, 1]])
    c, s = centers_of([[0.5]], nms_kernel=7)
    np.testing.assert_array_equal(c, [[0, 0]])
    np.testing.assert_array_equal(s, [0.5])
    c, _ = centers_of([[0.05]], nms_kernel=7)
    assert c.shape == (0, 2)
    c, _ = centers_of(np.ones((1, 1, 1)))  # [1, H, W] is accepted
    np.testing.assert_array_equal(c, [[0, 0]])


# ---------------------------------------------------------------------------------------------
# group_pixels
# ---------------------------------------------------------------------------------------------


def group(centers, off, mask=None):
    off = np.asarray(off)
    if mask is None:
        mask = np.ones(off.shape[1:], dtype=bool)
    return ref.group_pixels(np.asarray(centers, dtype=np.int64).reshape(-1, 2), off, mask)


def test_vote_ties_go_to_the_lower_index(backend):
    off = np.zeros((2, 1, 3), dtype=np.float32)
    out = group([[0, 0], [0, 2]], off)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[1, 1, 2]])  # pixel 1: distance 1 to both
    np.testing.assert_array_equal(group([[0, 2], [0, 0]], off), [[2, 1, 1]])


def test_offsets_are_rounded_to_float32_first(backend):
    off = np.zeros((2, 3, 1), dtype=np.float64)
    off[0, 0, 0] = 1.0 + 1e-12  # f32 -> 1.0: exactly halfway between the centres -> tie
    np.testing.assert_array_equal(group([[0, 0], [2, 0]], off), [[1], [1], [2]])
    off32 = np.zeros((2, 3, 1), dtype=np.float32)
    off32[0, 0, 0] = np.nextafter(F32(1), F32(2))  # just past halfway in float32
    np.testing.assert_array_equal(group([[0, 0], [2, 0]], off32), [[2], [1], [2]])


def test_distances_are_rounded_to_float32(backend):
    # q = (0.75, 5000): exactly, centre (1, 0) is nearer (0.0625 vs 0.5625 + 25e6), but both
    # sums round to 25000000 in float32 (ulp 2), so they tie and the lower index wins.
    off = np.zeros((2, 2, 2), dtype=np.float32)
    off[:, 0, 0] = (0.75, 5000.0)
    off[:, 0, 1] = (0.75, -1.0)  # q = (0.75, 0): no rounding, centre (1, 0) wins
    mask = np.array([[True, True], [False, False]])
    np.testing.assert_array_equal(group([[0, 0], [1, 0]], off, mask), [[1, 2], [0, 0]])


def test_non_finite_votes_join_no_instance(backend):
    off = np.zeros((2, 1, 6), dtype=np.float64)
    off[0, 0, 0] = np.nan
    off[1, 0, 1] = np.inf
    off[0, 0, 2] = -np.inf
    off[0, 0, 3] = 1e39  # finite in float64, +inf in float32
    off[1, 0, 4] = FLT_MAX  # finite: qx = 4 + FLT_MAX rounds to FLT_MAX, distances overflow
    np.testing.assert_array_equal(group([[0, 5], [0, 3]], off), [[0, 0, 0, 0, 1, 1]])


def test_infinite_distances_tie_to_the_lower_index(backend):
    centers = [[1, 1], [0, 0]]
    off = np.zeros((2, 2, 2), dtype=np.float32)
    np.testing.assert_array_equal(group(centers, off), [[2, 1], [1, 1]])  # (0, 1), (1, 0): ties
    off[1, 0, 0] = 3e38  # (cx - qx)^2 overflows to +inf for both centres
    np.testing.assert_array_equal(group(centers, off), [[1, 1], [1, 1]])
    off[1, 0, 0] = 0
    off[0, 0, 0] = -FLT_MAX  # qy = 0 - FLT_MAX is finite, its squares are not
    np.testing.assert_array_equal(group(centers, off), [[1, 1], [1, 1]])


def test_only_thing_pixels_vote_and_no_centres_means_no_instances(backend):
    off = np.zeros((2, 2, 2), dtype=np.float32)
    mask = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(group([[0, 0]], off, mask), [[1, 0], [0, 1]])
    out = group(np.zeros((0, 2)), off)
    np.testing.assert_array_equal(out, np.zeros((2, 2)))
    assert out.dtype == np.int32


def test_voting_chunks_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(5)
    centers = rng.integers(0, 20, (17, 2))
    off = rng.integers(-6, 7, (2, 20, 20)).astype(np.float32)  # integer offsets: many ties
    expected = group(centers, off)
    monkeypatch.setattr(ref, "_USE_NUMBA", False)
    monkeypatch.setattr(ref, "_VOTE_CHUNK_ELEMENTS", 50)
    np.testing.assert_array_equal(group(centers, off), expected)


# ---------------------------------------------------------------------------------------------
# fuse: majority vote, ids, stuff
# ---------------------------------------------------------------------------------------------

THING = tuple(range(11, 19))


def fuse(sem, inst, **kw):
    kw = {"thing_ids": THING, "label_divisor": 1000, "stuff_area": 1, "void_label": -1, **kw}
    return ref.fuse(np.asarray(sem, dtype=np.int64), np.asarray(inst, dtype=np.int32), **kw)


def seg(id_, cat, isthing, area, inst):
    return {"id": id_, "category_id": cat, "isthing": isthing, "area": area, "instance": inst}


def test_majority_vote_ties_and_stuff_area_boundary():
    sem = [[11, 12, 12, 0], [11, 12, 0, 0]]
    inst = [[1, 1, 3, 0], [3, 1, 0, 0]]
    # instance 1: 11, 12, 12 -> 12; instance 2 is empty; instance 3: 12, 11 tie -> 11
    pan, segs = fuse(sem, inst, stuff_area=3)  # road has exactly 3 pixels: kept
    assert pan.dtype == np.int32
    np.testing.assert_array_equal(pan, [[12001, 12001, 11001, 0], [11001, 12001, 0, 0]])
    assert segs == [
        seg(12001, 12, True, 3, 1),
        seg(11001, 11, True, 2, 3),
        seg(0, 0, False, 3, 0),
    ]
    pan, segs = fuse(sem, inst, stuff_area=4)  # one short: void
    np.testing.assert_array_equal(pan, [[12001, 12001, 11001, -1], [11001, 12001, -1, -1]])
    assert len(segs) == 2


def test_empty_instances_use_no_id_and_n_counts_per_class():
    sem = [[11, 13, 11, 11, 3]]
    inst = [[1, 2, 4, 5, 0]]  # instance 3 is empty
    pan, segs = fuse(sem, inst)
    np.testing.assert_array_equal(pan, [[11001, 13001, 11002, 11003, 3000]])
    assert [s["id"] for s in segs] == [11001, 13001, 11002, 11003, 3000]
    assert [s["instance"] for s in segs] == [1, 2, 4, 5, 0]
    pan, segs = fuse(sem, inst, stuff_area=2, void_label=255)
    np.testing.assert_array_equal(pan, [[11001, 13001, 11002, 11003, 255]])


def test_thing_pixels_without_instance_are_void_and_stuff_in_instances_counts_for_them():
    pan, segs = fuse([[11, 0, 0, 0, 11]], [[0, 1, 1, 0, 1]])
    # instance 1 = road, road, person -> class 0, id 0 * 1000 + 1; the lone road pixel is stuff
    np.testing.assert_array_equal(pan, [[-1, 1, 1, 0, 1]])
    assert segs == [seg(1, 0, True, 3, 1), seg(0, 0, False, 1, 0)]


def test_n_reaching_label_divisor_is_an_error():
    pan, _ = fuse([[1, 1]], [[1, 2]], thing_ids=[1], label_divisor=3)
    np.testing.assert_array_equal(pan, [[4, 5]])
    with pytest.raises(ValueError, match="label_divisor"):
        fuse([[1, 1]], [[1, 2]], thing_ids=[1], label_divisor=2)


def test_large_class_ids():
    big = 5_000_000
    pan, segs = fuse([[big, big, 7]], [[1, 0, 0]], thing_ids=[big], out_dtype=np.int64)
    assert pan.dtype == np.int64
    np.testing.assert_array_equal(pan, [[5_000_000_001, -1, 7000]])
    assert segs[0]["id"] == 5_000_000_001 and segs[0]["category_id"] == big
    with pytest.raises(ValueError, match="int32"):
        fuse([[big, big, 7]], [[1, 0, 0]], thing_ids=[big])


def test_fuse_without_instances():
    pan, segs = fuse([[11, 2], [2, 2]], np.zeros((2, 2)))
    np.testing.assert_array_equal(pan, [[-1, 2000], [2000, 2000]])
    assert segs == [seg(2000, 2, False, 3, 0)]


# ---------------------------------------------------------------------------------------------
# postprocess_image
# ---------------------------------------------------------------------------------------------


def post(sem, ctr, off=None, **kw):
    sem = np.asarray(sem, dtype=np.int64)
    ctr = np.asarray(ctr, dtype=np.float32)
    if off is None:
        off = np.zeros((2, *sem.shape), dtype=np.float32)
    kw = {**COMMON, "thing_ids": THING, "stuff_area": 1, **kw}
    return ref.postprocess_image(sem, ctr, off, **kw)


def test_foreground_mask_lets_stuff_pixels_join_instances(backend):
    sem = [[3, 3, 11, 3, 12]]
    ctr = [[0.0, 0.0, 0.8, 0.0, 0.0]]
    for mask in (
        np.array([[0, 1, 1, 1, 0]], dtype=bool),
        np.array([[np.nan, 0.5, 2.0, 1.0, -1.0]]),  # mask > 0; NaN is not
    ):
        out = post(sem, ctr, foreground_mask=mask)
        # instance 1 = 3, 11, 3 -> class 3; the person-free 12 pixel is outside the mask: void
        np.testing.assert_array_equal(out["panoptic"], [[3000, 3001, 3001, 3001, -1]])
        assert out["segments"] == [
            {"id": 3001, "category_id": 3, "isthing": True, "area": 3, "score": float(F32(0.8))},
            {"id": 3000, "category_id": 3, "isthing": False, "area": 1, "score": 1.0},
        ]


def test_centres_of_empty_instances_are_reported(backend):
    out = post([[0, 0, 11]], [[0.9, 0.0, 0.8]], nms_kernel=1)
    np.testing.assert_array_equal(out["centers"], [[0, 0], [0, 2]])
    np.testing.assert_array_equal(out["center_scores"], f64(0.9, 0.8))
    np.testing.assert_array_equal(out["panoptic"], [[0, 0, 11001]])  # instance 1 empty: skipped
    assert out["segments"] == [
        {"id": 11001, "category_id": 11, "isthing": True, "area": 1, "score": float(F32(0.8))},
        {"id": 0, "category_id": 0, "isthing": False, "area": 2, "score": 1.0},
    ]


def test_no_centres_leaves_thing_pixels_void(backend):
    out = post([[0, 11], [0, 0]], np.zeros((1, 2, 2)))
    np.testing.assert_array_equal(out["panoptic"], [[0, -1], [0, 0]])
    assert out["centers"].shape == (0, 2)


def test_scores_with_logits(backend):
    ln = np.log
    # per pixel: (logit class 0, logit class 1); softmax of class argmax: 0.8, 0.8, 0.75, 0.6
    logits = np.array([[ln(4), ln(4), 0.0, 0.0], [0.0, 0.0, ln(3), ln(1.5)]])[:, None, :]
    sem = ref.argmax_logits(logits)
    np.testing.assert_array_equal(sem, [[0, 0, 1, 1]])
    out = post(sem, [[0.0, 0.0, 0.5, 0.2]], thing_ids=[1], stuff_area=2, logits=logits)
    np.testing.assert_array_equal(out["panoptic"], [[0, 0, 1001, 1001]])
    thing, stuff = out["segments"]
    assert thing["id"] == 1001 and thing["area"] == 2
    assert thing["score"] == pytest.approx(0.5 * (0.75 + 0.6) / 2, rel=1e-12)
    assert stuff["id"] == 0 and stuff["score"] == pytest.approx(0.8, rel=1e-12)
    # float32 logits give the same probabilities up to their rounding
    out32 = post(sem, [[0.0, 0.0, 0.5, 0.2]], thing_ids=[1], stuff_area=2, logits=F32(logits))
    assert out32["segments"][0]["score"] == pytest.approx(thing["score"], rel=1e-6)


def test_end_to_end_hand_example(backend):
    # 4 x 6: sky (10) on top, road (0) at the bottom, a car (13) left and a person (11) right.
    sem = np.array(
        [
            [10, 10, 10, 10, 10, 10],
            [13, 13, 0, 0, 11, 11],
            [13, 13, 0, 0, 11, 12],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    ctr = np.zeros((1, 4, 6), dtype=np.float32)
    ctr[0, 2, 1] = 0.6  # car centre
    ctr[0, 1, 0] = 0.5  # inside (2, 1)'s 3 x 3 window: suppressed
    ctr[0, 1, 5] = 0.9  # person centre
    ctr[0, 0, 0] = 0.05  # below the threshold
    off = np.zeros((2, 4, 6), dtype=np.float32)
    off[0, 1, 4], off[1, 1, 4] = 0.0, 1.0  # person pixels point at (1, 5)
    off[0, 2, 4], off[1, 2, 4] = -1.0, 1.0
    off[0, 2, 5] = -1.0
    off[0, 1, 0], off[1, 1, 0] = 1.0, 1.0  # car pixels point at (2, 1)
    off[1, 2, 0] = 1.0
    off[0, 1, 1] = 1.0
    out = post(sem, ctr, off, stuff_area=6)
    np.testing.assert_array_equal(out["centers"], [[1, 5], [2, 1]])
    expected = [
        [10000, 10000, 10000, 10000, 10000, 10000],
        [13001, 13001, 0, 0, 11001, 11001],
        [13001, 13001, 0, 0, 11001, 11001],
        [0, 0, 0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(out["panoptic"], expected)
    assert [(s["id"], s["area"]) for s in out["segments"]] == [
        (11001, 4),
        (13001, 4),
        (0, 10),
        (10000, 6),
    ]
    out = post(sem, ctr, off, stuff_area=7)  # sky has 6 pixels: filtered
    assert (out["panoptic"][0] == -1).all()


# ---------------------------------------------------------------------------------------------
# literal pure-Python readings of the rules, on tiny random inputs
# ---------------------------------------------------------------------------------------------


def literal_centers(ctr, threshold, k, top_k, mode):
    t = ctr.dtype.type(threshold)
    hh, ww = ctr.shape
    h = [[float(v) if v > t else -1.0 for v in row] for row in ctr]
    r = k // 2
    peaks = []
    for y in range(hh):
        for x in range(ww):
            m = max(
                h[i][j]
                for i in range(max(0, y - r), min(hh, y + r + 1))
                for j in range(max(0, x - r), min(ww, x + r + 1))
            )
            if h[y][x] > 0 and h[y][x] == m:
                peaks.append((y, x, h[y][x]))
    if top_k is None:
        kept = peaks
    elif top_k == 0:
        kept = []
    elif mode == "exact":
        best = sorted(range(len(peaks)), key=lambda i: (-peaks[i][2], i))[:top_k]
        kept = [peaks[i] for i in sorted(best)]
    elif len(peaks) >= top_k:
        kth = sorted((p[2] for p in peaks), reverse=True)[top_k - 1]
        kept = [p for p in peaks if p[2] > kth]
    else:
        kept = peaks
    return [(y, x) for y, x, _ in kept]


def literal_group(centers, off, mask):
    out = np.zeros(mask.shape, dtype=np.int32)
    with np.errstate(over="ignore"):
        for y, x in zip(*np.nonzero(mask)):
            qy = F32(y) + F32(off[0, y, x])
            qx = F32(x) + F32(off[1, y, x])
            if not (np.isfinite(qy) and np.isfinite(qx)) or not len(centers):
                continue
            ds = [
                (F32(cy) - qy) * (F32(cy) - qy) + (F32(cx) - qx) * (F32(cx) - qx)
                for cy, cx in centers
            ]
            assert all(d.dtype == np.float32 for d in ds)
            best = 0
            for i, d in enumerate(ds):
                if d < ds[best]:
                    best = i
            out[y, x] = best + 1
    return out


def random_case(rng):
    hh, ww = (int(v) for v in rng.integers(1, 14, 2))
    dtype = np.float32 if rng.random() < 0.5 else np.float64
    ctr = (rng.integers(0, 6, (hh, ww)) / 5).astype(dtype)  # few levels: plateaus and ties
    special = rng.random((hh, ww))
    ctr[special < 0.04] = np.nan
    ctr[(special >= 0.04) & (special < 0.06)] = np.inf
    ctr[(special >= 0.06) & (special < 0.08)] = -np.inf
    off_dtype = np.float32 if rng.random() < 0.5 else np.float64
    if rng.random() < 0.5:
        off = rng.integers(-4, 5, (2, hh, ww)).astype(off_dtype)  # integer offsets: vote ties
    else:
        off = rng.normal(0, 3, (2, hh, ww)).astype(off_dtype)
    special = rng.random((2, hh, ww))
    off[special < 0.03] = np.nan
    off[(special >= 0.03) & (special < 0.05)] = np.inf
    off[(special >= 0.05) & (special < 0.07)] = 3e38
    sem = rng.integers(0, 6, (hh, ww))
    kw = {
        "thing_ids": (3, 4, 5),
        "label_divisor": 1000,
        "stuff_area": int(rng.integers(0, 6)),
        "void_label": -1,
        "threshold": float(rng.choice([0.1, 0.0, -0.5])),
        "nms_kernel": int(rng.choice([1, 3, 5, 7, 41])),
        "top_k": [None, 0, 1, 2, 3, 10, 1000][int(rng.integers(7))],
        "topk_mode": str(rng.choice(["exact", "detectron2"])),
    }
    if rng.random() < 0.3:
        kw["foreground_mask"] = rng.random((hh, ww)) < 0.5
    if rng.random() < 0.3:
        kw["logits"] = rng.normal(0, 2, (6, hh, ww))
    return sem, ctr, off, kw


@pytest.mark.parametrize("seed", range(40))
def test_matches_literal_reading_and_fallback(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    sem, ctr, off, kw = random_case(rng)
    centers, _ = ref.find_centers(
        ctr,
        threshold=kw["threshold"],
        nms_kernel=kw["nms_kernel"],
        top_k=kw["top_k"],
        topk_mode=kw["topk_mode"],
    )
    expected = literal_centers(ctr, kw["threshold"], kw["nms_kernel"], kw["top_k"], kw["topk_mode"])
    assert [tuple(c) for c in centers.tolist()] == expected
    mask = kw.get("foreground_mask", np.isin(sem, kw["thing_ids"]))
    np.testing.assert_array_equal(
        ref.group_pixels(centers, off, mask), literal_group(expected, off, mask)
    )

    results = []
    for use_numba in (True, False):
        if use_numba and not ref.NUMBA_AVAILABLE:
            continue
        monkeypatch.setattr(ref, "_USE_NUMBA", use_numba)
        results.append(ref.postprocess_image(sem, ctr, off, **kw))
    for other in results[1:]:
        np.testing.assert_array_equal(other["panoptic"], results[0]["panoptic"])
        np.testing.assert_array_equal(other["centers"], results[0]["centers"])
        np.testing.assert_array_equal(other["center_scores"], results[0]["center_scores"])
        assert other["segments"] == results[0]["segments"]


# ---------------------------------------------------------------------------------------------
# synthetic scenes: ground-truth recovery and the dense PyTorch baseline
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "n", "seed"), [(96, 192, 8, 0), (128, 256, 60, 1)])
def test_noise_free_scene_recovers_ground_truth(h, w, n, seed):
    scene = synthetic.make_scene(h, w, n, seed=seed, offset_noise=0.0, semantic_noise=0.0)
    assert len({tuple(c) for c in scene.centers_gt.tolist()}) == len(scene.centers_gt)
    out = ref.postprocess_image(
        scene.sem,
        scene.ctr,
        scene.off,
        **{**COMMON, "nms_kernel": 7, "stuff_area": 0},
        thing_ids=scene.thing_ids,
    )
    np.testing.assert_array_equal(out["centers"], scene.centers_gt)
    np.testing.assert_array_equal(out["panoptic"], scene.panoptic_gt)


TORCH_CASES = [
    # h, w, n, seed, scene options, merge options
    (64, 128, 5, 0, {}, {}),
    (96, 160, 30, 1, {"integer_offsets": True, "semantic_noise": 0.2}, {"stuff_area": 100}),
    (80, 120, 60, 2, {"offset_noise": 3.0}, {"top_k": 20, "stuff_area": 50}),
    (80, 120, 40, 3, {"integer_offsets": True}, {"top_k": 15, "quantise": True}),
    (72, 100, 25, 4, {"semantic_noise": 0.1}, {"top_k": None, "mask": True, "nms_kernel": 3}),
]


@pytest.mark.parametrize(("h", "w", "n", "seed", "scene_kw", "merge_kw"), TORCH_CASES)
def test_matches_dense_torch_baseline(h, w, n, seed, scene_kw, merge_kw):
    torch = pytest.importorskip("torch")
    from pdl_post.baselines.dense_torch import panoptic_dense_torch

    scene = synthetic.make_scene(h, w, n, seed=seed, **scene_kw)
    ctr = scene.ctr
    merge_kw = dict(merge_kw)
    if merge_kw.pop("quantise", False):  # plateaus and ties at the top-k boundary
        ctr = (np.round(ctr * 10) / 10).astype(np.float32)
    mask = None
    if merge_kw.pop("mask", False):
        rng = np.random.default_rng(seed)
        mask = np.isin(scene.sem, scene.thing_ids) | (rng.random(scene.sem.shape) < 0.1)
    kw = {
        "thing_ids": scene.thing_ids,
        "label_divisor": 1000,
        "stuff_area": 2048,
        "void_label": -1,
        "threshold": 0.1,
        "nms_kernel": 7,
        "top_k": 200,
        **merge_kw,
    }
    expected = ref.postprocess_image(
        scene.sem, ctr, scene.off, topk_mode="detectron2", foreground_mask=mask, **kw
    )
    pan, centers = panoptic_dense_torch(
        torch.from_numpy(scene.sem),
        torch.from_numpy(ctr),
        torch.from_numpy(scene.off),
        foreground_mask=None if mask is None else torch.from_numpy(mask),
        **kw,
    )
    assert pan.dtype == torch.int64 and centers.dtype == torch.int64
    np.testing.assert_array_equal(centers.numpy(), expected["centers"])
    np.testing.assert_array_equal(pan.numpy(), expected["panoptic"])


def test_module_works_without_numba(monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "numba", None)  # makes "import numba" raise ImportError
    spec = importlib.util.spec_from_file_location("_reference_without_numba", ref.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod.NUMBA_AVAILABLE and not mod._USE_NUMBA
    scene = synthetic.make_scene(48, 64, 6, seed=7, integer_offsets=True)
    kw = {**COMMON, "nms_kernel": 7, "stuff_area": 10, "thing_ids": scene.thing_ids}
    a = mod.postprocess_image(scene.sem, scene.ctr, scene.off, **kw)
    b = ref.postprocess_image(scene.sem, scene.ctr, scene.off, **kw)
    np.testing.assert_array_equal(a["panoptic"], b["panoptic"])
    assert a["segments"] == b["segments"]


def test_thousands_of_centres():
    scene = synthetic.make_scene(256, 512, 1500, seed=3, offset_noise=0.0, semantic_noise=0.0)
    assert len(scene.centers_gt) > 1000
    out = ref.postprocess_image(
        scene.sem,
        scene.ctr,
        scene.off,
        **{**COMMON, "nms_kernel": 3, "stuff_area": 0},
        thing_ids=scene.thing_ids,
    )
    # centres closer than the NMS window can merge, so only check the bulk is recovered
    assert len(out["centers"]) >= 0.9 * len(scene.centers_gt)
    assert (out["panoptic"] == scene.panoptic_gt).mean() > 0.9
