"""Hypothesis fuzzing: the compiled backend equals the reference on random small inputs, the stages
compose to ``merge``, and no garbage input does anything but raise ``ValueError``/``TypeError``.

Inputs are tiny (1..12 x 1..12, batches of 1..3) so that many examples fit in a few seconds; the
values are drawn from sets rich in ties, plateaus and non-finite numbers (NaN, +-inf, offsets that
overflow float32), which is where two implementations of the same rules disagree.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pdl_post
from conftest import assert_results_equal
from devices import DEVICES, HostCudaArray, to_device, to_host, use_emulation

# PDL_POST_FUZZ_SCALE=20 runs 20x the examples (a longer hunt than the ~60 s of the suite).
SCALE = float(os.environ.get("PDL_POST_FUZZ_SCALE", "1"))
SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

LABEL_DTYPES = [np.uint8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.int8]
FLOAT_DTYPES = [np.float32, np.float64]
NAN, INF = float("nan"), float("inf")

# Heatmap values: a few levels (plateaus, top-k ties, values at the threshold), plus non-finite.
CTR_VALUES = [
    0.0,
    0.0,
    0.05,
    0.1,
    0.1000001,
    0.3,
    0.3,
    0.5,
    0.9,
    0.9,
    1.0,
    2.0,
    -1.0,
    NAN,
    INF,
    -INF,
    1e-30,
]
# Offsets: integers and halves (vote ties), non-finite, beyond float32, squares overflowing.
OFF_VALUES = [
    0.0,
    0.0,
    0.5,
    -0.5,
    1.0,
    -1.0,
    1.5,
    2.0,
    -2.0,
    3.0,
    -3.5,
    7.0,
    -11.0,
    0.25,
    NAN,
    INF,
    -INF,
    1e20,
    -1e20,
    3e38,
    1e300,
    1e-40,
]
LOGIT_VALUES = [0.0, 0.0, 1.0, 1.0, -1.0, 2.5, 100.0, -100.0, NAN, INF, -INF]


@st.composite
def layouts(draw, a: np.ndarray) -> np.ndarray:
    """The same values as ``a`` in another memory layout (no effect on the result)."""
    kind = draw(st.sampled_from(["c", "c", "f", "strided", "reversed", "transposed"]))
    if kind == "f":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "reversed":
        return np.ascontiguousarray(a[..., ::-1, ::-1])[..., ::-1, ::-1]
    if kind == "transposed" and a.ndim >= 2:
        return np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    return a


def _cast(dtype):
    def cast(v):
        with np.errstate(over="ignore"):  # 1e300 -> inf in float32: intended
            return np.asarray(v).astype(dtype)[()]

    return cast


def _values(draw, shape, dtype, pool):
    return draw(hnp.arrays(dtype, shape, elements=st.sampled_from(pool).map(_cast(dtype))))


@st.composite
def merge_inputs(draw, allow_errors=True):
    """(sem, ctr, off, kwargs) for merge/postprocess, unbatched or batched; with allow_errors also
    inputs that raise ValueError (label_divisor too small for the instances, ids beyond int64)."""
    batch = draw(st.sampled_from([None, None, 1, 2, 3]))
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    lead = () if batch is None else (batch,)
    n_classes = draw(st.integers(1, 6))
    if draw(st.integers(0, 4)) == 0:  # logits
        c = draw(st.integers(1, 4))
        dt = draw(st.sampled_from(FLOAT_DTYPES))
        sem = _values(draw, (*lead, c, h, w), dt, LOGIT_VALUES)
        n_classes = c
    else:
        dt = draw(st.sampled_from(LABEL_DTYPES))
        sem = draw(hnp.arrays(dt, (*lead, h, w), elements=st.integers(0, n_classes - 1)))
    # Spread-out int64 class ids: beyond the dense class tables (2**16), and with allow_errors up
    # to ids whose panoptic ids overflow int64 (the same error everywhere).
    scales = [1, 1, 1, 70_001] + ([2**40] if allow_errors else [])
    id_scale = draw(st.sampled_from(scales)) if sem.dtype == np.int64 else 1
    sem = sem * np.int64(id_scale) if id_scale > 1 else sem
    ctr_dt = draw(st.sampled_from(FLOAT_DTYPES))
    ctr_shape = draw(st.sampled_from([(h, w), (1, h, w)])) if batch is None else (batch, 1, h, w)
    ctr = _values(draw, ctr_shape, ctr_dt, CTR_VALUES)
    off_dt = draw(st.sampled_from(FLOAT_DTYPES))
    if draw(st.booleans()):  # realistic votes: each pixel towards the nearest of a few points
        off = _values(draw, (*lead, 2, h, w), off_dt, OFF_VALUES[:14])
        k = draw(st.integers(1, 3))
        ty = np.array(draw(st.lists(st.integers(0, h - 1), min_size=k, max_size=k)))
        tx = np.array(draw(st.lists(st.integers(0, w - 1), min_size=k, max_size=k)))
        yy, xx = np.mgrid[0:h, 0:w]
        near = np.argmin((yy[..., None] - ty) ** 2 + (xx[..., None] - tx) ** 2, axis=-1)
        off[..., 0, :, :] += (ty[near] - yy).astype(off_dt)
        off[..., 1, :, :] += (tx[near] - xx).astype(off_dt)
    else:
        off = _values(draw, (*lead, 2, h, w), off_dt, OFF_VALUES)
    kw = {
        "thing_ids": [
            t * id_scale
            for t in draw(
                st.one_of(st.just([]), st.lists(st.integers(0, n_classes), min_size=1, max_size=3))
            )
        ],
        "nms_kernel": draw(st.sampled_from([1, 3, 5, 7, 9, 43])),  # 43: the GPU's separable filter
        "top_k": draw(st.sampled_from([None, 0, 1, 2, 3, 5])),
        "topk_mode": draw(st.sampled_from(["exact", "detectron2"])),
        "threshold": draw(st.sampled_from([0.1, 0.0, 0.5, -1.0, 0.3, 0.1000001, -INF])),
        "stuff_area": draw(st.integers(0, 10)),
        "void_label": draw(st.sampled_from([-1, 0, 255, -(2**40)])),
        "label_divisor": draw(st.sampled_from([1000, 2**31, 3] if allow_errors else [1000, 2**31])),
        "num_threads": draw(st.sampled_from([None, 1, 2, 3])),
    }
    if draw(st.integers(0, 3)) == 0:
        mdt = draw(st.sampled_from([np.bool_, np.uint8, np.float32, np.int64]))
        mvals = [0, 1] if mdt is not np.float32 else [0.0, 1.0, -1.0, NAN, 0.5]
        mshape = (*lead, h, w)
        if batch is None and draw(st.booleans()):
            mshape = (1, h, w)
        kw["foreground_mask"] = draw(layouts(_values(draw, mshape, mdt, mvals)))
    sem, ctr, off = draw(layouts(sem)), draw(layouts(ctr)), draw(layouts(off))
    return sem, ctr, off, kw


def _outcome(*args, **kw):
    """postprocess(*args, **kw), or the ValueError it raised (n >= label_divisor)."""
    try:
        return pdl_post.postprocess(*args, **kw)
    except ValueError as e:
        return e


def _both(sem, ctr, off, kw):
    """postprocess on both backends: same result, or the same exception type."""
    fast, ref = (_outcome(sem, ctr, off, backend=b, **kw) for b in ("cpu", "reference"))
    if isinstance(ref, Exception) or isinstance(fast, Exception):
        assert type(fast) is type(ref), (fast, ref)
        assert "label_divisor" in str(fast), fast
        return None
    assert_results_equal(fast, ref)
    return fast


@settings(max_examples=int(250 * SCALE), **SETTINGS)
@given(merge_inputs())
def test_compiled_equals_reference(case):
    sem, ctr, off, kw = case
    fast = _both(sem, ctr, off, kw)
    if fast is None:
        return
    # merge is postprocess' panoptic map, on any thread count.
    out = pdl_post.merge(sem, ctr, off, backend="cpu", **{**kw, "num_threads": 1})
    batched = isinstance(fast, list)
    want = np.stack([r.panoptic for r in fast]) if batched else fast.panoptic
    assert out.dtype == want.dtype
    np.testing.assert_array_equal(out, want)


@settings(max_examples=int(100 * SCALE), **SETTINGS)
@given(merge_inputs(allow_errors=False), st.sampled_from(["cpu", "reference"]))
def test_stages_compose_to_merge(case, backend):
    sem, ctr, off, kw = case
    mask = kw.pop("foreground_mask", None)
    if mask is not None and mask.ndim == 3 and np.ndim(off) == 3:
        mask = mask[0]
    threads = kw["num_threads"]
    pairs = pdl_post.find_centers(
        ctr,
        threshold=kw["threshold"],
        nms_kernel=kw["nms_kernel"],
        top_k=kw["top_k"],
        topk_mode=kw["topk_mode"],
        num_threads=threads,
        backend=backend,
    )
    batched = isinstance(pairs, list)
    centers = [c for c, _ in pairs] if batched else pairs[0]
    inst = pdl_post.group_pixels(
        sem,
        centers,
        off,
        thing_ids=kw["thing_ids"],
        foreground_mask=mask,
        num_threads=threads,
        backend=backend,
    )
    assert inst.dtype == np.int32
    pan = pdl_post.fuse(
        sem,
        inst,
        thing_ids=kw["thing_ids"],
        label_divisor=kw["label_divisor"],
        stuff_area=kw["stuff_area"],
        void_label=kw["void_label"],
        num_threads=threads,
        backend=backend,
    )
    want = pdl_post.merge(sem, ctr, off, foreground_mask=mask, backend=backend, **kw)
    assert pan.dtype == want.dtype
    np.testing.assert_array_equal(pan, want)
    # find_centers equals postprocess' centres.
    res = pdl_post.postprocess(sem, ctr, off, foreground_mask=mask, backend=backend, **kw)
    for (c, s), r in zip(pairs if batched else [pairs], res if batched else [res]):
        np.testing.assert_array_equal(c, r.centers)
        np.testing.assert_array_equal(s, r.center_scores)


@settings(max_examples=int(80 * SCALE), **SETTINGS)
@given(st.data())
def test_stages_compiled_equal_reference(data):
    """Each stage alone, on arbitrary centres and instance maps (not only merge's own)."""
    sem, ctr, off, kw = data.draw(merge_inputs(allow_errors=False))
    b = None if np.ndim(off) == 3 else off.shape[0]
    h, w = off.shape[-2:]
    # find_centers
    pf = [
        pdl_post.find_centers(
            ctr,
            threshold=kw["threshold"],
            nms_kernel=kw["nms_kernel"],
            top_k=kw["top_k"],
            topk_mode=kw["topk_mode"],
            backend=be,
        )
        for be in ("cpu", "reference")
    ]
    for (c1, s1), (c2, s2) in zip(*(p if b is not None else [p] for p in pf)):
        assert c1.dtype == c2.dtype == np.int64 and s1.dtype == s2.dtype == np.float64
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(s1, s2)

    # group_pixels with arbitrary (possibly duplicated) centres
    def centres():
        k = data.draw(st.integers(0, 6))
        ys = data.draw(st.lists(st.integers(0, h - 1), min_size=k, max_size=k))
        xs = data.draw(st.lists(st.integers(0, w - 1), min_size=k, max_size=k))
        return np.array(
            list(zip(ys, xs)), dtype=data.draw(st.sampled_from([np.int64, np.int32, np.uint16]))
        )

    centers = centres() if b is None else [centres() for _ in range(b)]
    g = [
        pdl_post.group_pixels(
            sem,
            centers,
            off,
            thing_ids=kw["thing_ids"],
            foreground_mask=kw.get("foreground_mask"),
            backend=be,
            num_threads=kw["num_threads"],
        )
        for be in ("cpu", "reference")
    ]
    np.testing.assert_array_equal(g[0], g[1])
    # fuse with an arbitrary instance map (gaps, empty instances)
    lead = () if b is None else (b,)
    inst_dt = data.draw(st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.uint32]))
    inst = data.draw(hnp.arrays(inst_dt, (*lead, h, w), elements=st.integers(0, 9)))
    inst = data.draw(layouts(inst))
    fu = [
        pdl_post.fuse(
            sem,
            inst,
            thing_ids=kw["thing_ids"],
            label_divisor=kw["label_divisor"],
            stuff_area=kw["stuff_area"],
            void_label=kw["void_label"],
            backend=be,
            num_threads=kw["num_threads"],
        )
        for be in ("cpu", "reference")
    ]
    assert fu[0].dtype == fu[1].dtype
    np.testing.assert_array_equal(fu[0], fu[1])


# ---------------------------------------------------------------------------------------------
# garbage: only ValueError / TypeError
# ---------------------------------------------------------------------------------------------

GARBAGE_DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    np.longdouble,
    "M8[s]",
    "m8[s]",
    "U3",
    "S2",
    object,
    ">i4",
    ">f8",
    "<u2",
]


@st.composite
def garbage_arrays(draw):
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(GARBAGE_DTYPES)))
    a = np.zeros(shape, dtype=dtype)
    if a.size and dtype.kind in "biuf":
        fill = draw(st.sampled_from([0, 1, 2, 11, 255, -1, NAN, INF, 0.5]))
        try:
            with np.errstate(invalid="ignore"):
                a[...] = np.asarray(fill).astype(dtype)
        except (ValueError, OverflowError):
            pass
    return a


def garbage_objects():
    return st.one_of(
        garbage_arrays(),
        st.sampled_from(
            [
                None,
                "sem",
                b"x",
                3,
                0.5,
                True,
                [],
                [[1, 2], [3]],
                [[1, None]],
                {"a": 1},
                {1, 2},
                (1, 2),
                object(),
                np.float32(1.0),
                slice(None),
                ...,
            ]
        ),
    )


def valid_arrays(h, w):
    """Valid-looking arrays of a given size, so that option garbage reaches the core."""
    return (
        np.full((h, w), 11, np.int32),
        np.full((1, h, w), 0.5, np.float32),
        np.zeros((2, h, w), np.float32),
    )


OPTION_GARBAGE = {
    "thing_ids": [
        None,
        "11",
        11,
        [-1],
        [1.5],
        [True],
        [None],
        [2**70],
        (),
        [0, 1, 2],
        np.array([[1]]),
        {"a": 1},
        [np.int64(3)],
        range(3),
    ],
    "label_divisor": [0, -1, 1, 2, 1.0, None, True, "1000", 2**62, 2**70, np.int32(7)],
    "stuff_area": [-1, 0, 2**63 - 1, 1.5, None, False, "0", np.uint64(3)],
    "void_label": [None, -1, 2**40, -(2**63), 2**63, 1.0, "void", np.int8(-1)],
    "threshold": [NAN, INF, -INF, None, "0.1", True, 1 + 0j, 0.5, np.float16(0.1)],
    "nms_kernel": [0, -1, 2, 3, 1, 2**31 + 1, 2**62 + 1, 3.0, None, True, "3"],
    "top_k": [None, -1, 0, 1, 2**31, 2**63 - 1, 2**64, 1.0, True, "1"],
    "topk_mode": ["exact", "detectron2", "EXACT", None, 1, b"exact"],
    "num_threads": [None, 1, 2, 0, -1, 64, 1.0, True, "2"],
    "backend": ["auto", "cpu", "reference", "cuda", "gpu", None, 1],
}


def _call_only_value_or_type_error(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except (ValueError, TypeError):
        pass


@settings(max_examples=int(250 * SCALE), **SETTINGS)
@given(st.data())
def test_garbage_arrays_raise_only_value_or_type_error(data):
    fn = data.draw(
        st.sampled_from(["merge", "postprocess", "find_centers", "group_pixels", "fuse"])
    )
    backend = data.draw(st.sampled_from(["cpu", "reference"]))
    h, w = data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4))
    good = valid_arrays(h, w)
    n_args = {"merge": 3, "postprocess": 3, "find_centers": 1, "group_pixels": 3, "fuse": 2}[fn]
    if fn == "find_centers":
        args = [good[1]]
    elif fn == "group_pixels":
        args = [good[0], np.zeros((0, 2), np.int64), good[2]]
    elif fn == "fuse":
        args = [good[0], np.zeros((h, w), np.int32)]
    else:
        args = list(good)
    # Replace one or more positional arguments with garbage.
    for i in data.draw(st.sets(st.integers(0, n_args - 1), min_size=1)):
        args[i] = data.draw(garbage_objects())
    kw = {"backend": backend}
    if fn in ("merge", "postprocess") and data.draw(st.booleans()):
        kw["foreground_mask"] = data.draw(garbage_objects())
    _call_only_value_or_type_error(getattr(pdl_post, fn), *args, **kw)


@settings(max_examples=int(250 * SCALE), **SETTINGS)
@given(st.data())
def test_garbage_options_raise_only_value_or_type_error(data):
    h, w = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    sem, ctr, off = valid_arrays(h, w)
    names = data.draw(st.sets(st.sampled_from(sorted(OPTION_GARBAGE)), min_size=1, max_size=4))
    kw = {n: data.draw(st.sampled_from(OPTION_GARBAGE[n])) for n in names}
    fn = data.draw(
        st.sampled_from(["merge", "postprocess", "find_centers", "group_pixels", "fuse"])
    )
    takes = {
        "merge": None,
        "postprocess": None,
        "find_centers": {"threshold", "nms_kernel", "top_k", "topk_mode", "num_threads", "backend"},
        "group_pixels": {"thing_ids", "num_threads", "backend"},
        "fuse": {
            "thing_ids",
            "label_divisor",
            "stuff_area",
            "void_label",
            "num_threads",
            "backend",
        },
    }[fn]
    if takes is not None:
        kw = {k: v for k, v in kw.items() if k in takes}
    if fn == "find_centers":
        args = (ctr,)
    elif fn == "group_pixels":
        args = (sem, np.zeros((1, 2), np.int64), off)
    elif fn == "fuse":
        args = (sem, np.ones((h, w), np.int32))
    else:
        args = (sem, ctr, off)
    _call_only_value_or_type_error(getattr(pdl_post, fn), *args, **kw)


@settings(max_examples=int(150 * SCALE), **SETTINGS)
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(8, 64),
    w=st.integers(8, 64),
    k=st.integers(20, 400),
    vote_kind=st.sampled_from(["integer", "half", "spread", "far", "mixed"]),
    centre_kind=st.sampled_from(["random", "lattice", "clustered"]),
    threads=st.sampled_from([1, 2, 3]),
)
def test_group_pixels_many_centres(seed, h, w, k, vote_kind, centre_kind, threads):
    """Many centres (the compiled backend's cell grid and its far-vote fallback) against brute
    force: votes on cell borders (integers), exact ties (halves between lattice centres), votes
    beyond the image and the grid margin, duplicated centres."""
    rng = np.random.default_rng(seed)
    if centre_kind == "lattice":
        step = int(rng.integers(1, 4))
        yy, xx = np.mgrid[0:h:step, 0:w:step]
        centers = np.stack([yy.ravel(), xx.ravel()], axis=1)[:k]
    elif centre_kind == "clustered":
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        centers = np.stack(
            [
                np.clip(cy + rng.integers(-3, 4, k), 0, h - 1),
                np.clip(cx + rng.integers(-3, 4, k), 0, w - 1),
            ],
            axis=1,
        )
    else:
        centers = np.stack([rng.integers(0, h, k), rng.integers(0, w, k)], axis=1)
    shape = (2, h, w)
    if vote_kind == "integer":
        off = rng.integers(-2 * max(h, w), 2 * max(h, w), shape).astype(np.float32)
    elif vote_kind == "half":
        off = (rng.integers(-2 * max(h, w), 2 * max(h, w), shape) / 2).astype(np.float32)
    elif vote_kind == "spread":
        off = rng.normal(0, max(h, w), shape).astype(np.float64)
    elif vote_kind == "far":
        off = (rng.choice([-1, 1], shape) * 10.0 ** rng.uniform(1, 8, shape)).astype(np.float32)
    else:
        pool = np.array([*OFF_VALUES, 64.0, -64.0, 128.5, -1000.0, 1e6], dtype=np.float64)
        off = rng.choice(pool, shape) + rng.integers(-8, 8, shape)
    sem = rng.integers(0, 3, (h, w)).astype(np.int32)
    args = (sem, centers.astype(np.int64), off)
    kw = {"thing_ids": [1, 2], "num_threads": threads}
    with np.errstate(over="ignore"):
        fast = pdl_post.group_pixels(*args, backend="cpu", **kw)
        ref = pdl_post.group_pixels(*args, backend="reference", **kw)
    np.testing.assert_array_equal(fast, ref)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_nonfinite_rules(backend):
    """The documented non-finite rules on a hand-made case (NaN never a peak, +inf is, a
    non-finite vote joins no instance, votes whose distances overflow tie to centre 1)."""
    sem = np.full((3, 5), 1, np.int32)
    ctr = np.zeros((1, 3, 5), np.float32)
    ctr[0, 0, 0] = NAN
    ctr[0, 0, 2] = INF
    ctr[0, 2, 4] = 0.5
    off = np.zeros((2, 3, 5), np.float32)
    off[0, 1, 1] = NAN
    off[1, 1, 2] = INF
    off[0, 1, 3] = 3e38
    off[1, 1, 3] = 3e38  # finite vote, both squared distances overflow -> tie -> centre 1
    r = pdl_post.postprocess(
        sem, ctr, off, thing_ids=[1], stuff_area=0, nms_kernel=1, top_k=None, backend=backend
    )
    np.testing.assert_array_equal(r.centers, [[0, 2], [2, 4]])
    assert r.center_scores[0] == INF
    assert r.panoptic[1, 1] == -1 and r.panoptic[1, 2] == -1
    assert r.panoptic[1, 3] == 1001


@pytest.mark.parametrize("device", DEVICES[1:])  # emulated; cuda on a GPU, else skipped
@settings(max_examples=int(150 * SCALE), **SETTINGS)
@given(case=merge_inputs())
def test_cuda_path_equals_cpu(device, case):
    # The CUDA path (its sources on the host emulator, tests/devices.py, or a GPU) against the
    # CPU path, on the same tie-, plateau- and NaN-rich inputs: the same result, or the same
    # error. The emulator reads every memory layout in place; a GPU gets contiguous copies.
    sem, ctr, off, kw = case
    _assert_cuda_path_equals_cpu(device, sem, ctr, off, **kw)


def _assert_cuda_path_equals_cpu(device, sem, ctr, off, *, foreground_mask=None, **kw):
    """postprocess on `device` (emulated: the host emulator; cuda: a GPU) gives the CPU path's
    result, scores exactly, or raises the same error; no emulator violation or leak."""

    def on_device(a):
        if a is None:
            return None
        return HostCudaArray(a) if device == "emulated" else to_device(a, device)

    with pytest.MonkeyPatch.context() as monkeypatch:
        check = use_emulation(monkeypatch) if device == "emulated" else (lambda: None)
        cpu = _outcome(sem, ctr, off, foreground_mask=foreground_mask, **kw)
        gpu = _outcome(
            on_device(sem),
            on_device(ctr),
            on_device(off),
            foreground_mask=on_device(foreground_mask),
            **kw,
        )
        if isinstance(cpu, Exception) or isinstance(gpu, Exception):
            assert type(cpu) is type(gpu) and str(cpu) == str(gpu), (cpu, gpu)
        else:
            for r in gpu if isinstance(gpu, list) else [gpu]:
                r.panoptic = to_host(r.panoptic)
            assert_results_equal(gpu, cpu, score_rtol=0)
        # find_centers alone on the device: the CPU's centres and scores.
        center_kw = {k: kw[k] for k in ("threshold", "nms_kernel", "top_k", "topk_mode")}
        want = pdl_post.find_centers(ctr, **center_kw)
        got = pdl_post.find_centers(on_device(ctr), **center_kw)
        for (c, s), (gc, gs) in zip(*(p if isinstance(p, list) else [p] for p in (want, got))):
            np.testing.assert_array_equal(to_host(gc), c)
            np.testing.assert_array_equal(to_host(gs), s)
        # group_pixels alone on the device, with those centres: the CPU's instance map or error.
        centers = [c for c, _ in want] if isinstance(want, list) else want[0]
        mask = foreground_mask
        if mask is not None and np.ndim(mask) == 3 and np.ndim(off) == 3:
            mask = mask[0]
        grouped = [
            _host_outcome(
                pdl_post.group_pixels,
                images[0],
                centers,
                images[1],
                thing_ids=kw["thing_ids"],
                foreground_mask=images[2],
            )
            for images in ((sem, off, mask), tuple(on_device(a) for a in (sem, off, mask)))
        ]
        _assert_same_outcome(*grouped)
        if not isinstance(grouped[0], Exception):
            # fuse alone on the device, on that instance map: the CPU's panoptic map or error.
            fuse_kw = {
                k: kw[k]
                for k in ("thing_ids", "label_divisor", "stuff_area", "void_label")
                if k in kw
            }
            _assert_same_outcome(
                *(
                    _host_outcome(pdl_post.fuse, *maps, **fuse_kw)
                    for maps in ((sem, grouped[0]), (on_device(sem), on_device(grouped[0])))
                )
            )
        del cpu, gpu
        check()


def _host_outcome(call, *args, **kw):
    """call(*args, **kw) as a host array, or the TypeError / ValueError it raised."""
    try:
        return to_host(call(*args, **kw))
    except (TypeError, ValueError) as e:
        return e


def _assert_same_outcome(cpu, gpu):
    """The same array (dtype and values), or the same error (type and message)."""
    if isinstance(cpu, Exception) or isinstance(gpu, Exception):
        assert type(gpu) is type(cpu) and str(gpu) == str(cpu), (cpu, gpu)
    else:
        assert gpu.dtype == cpu.dtype
        np.testing.assert_array_equal(gpu, cpu)


@st.composite
def dense_peak_inputs(draw):
    """(sem, ctr, off, kwargs) with hundreds of centres: nms_kernel=1 makes every pixel above the
    threshold a peak, so that images keep more than the CUDA path's 256 brute-force centres (its
    grid search and sorted numbering); votes on cell borders, exactly between centres, far outside
    the grid, non-finite; batches where the images' counts differ."""
    batch = draw(st.sampled_from([None, 2]))
    h, w = draw(st.integers(24, 40)), draw(st.integers(24, 40))
    lead = () if batch is None else (batch,)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from([0.7, 0.9, 1.0]))  # share of pixels above the threshold
    ctr = np.where(rng.random((*lead, 1, h, w)) < fill, rng.choice([0.5, 0.7], (*lead, 1, h, w)), 0)
    vote_kind = draw(st.sampled_from(["integer", "half", "far", "mixed"]))
    shape = (*lead, 2, h, w)
    if vote_kind == "integer":
        off = rng.integers(-h, h, shape).astype(np.float32)
    elif vote_kind == "half":
        off = (rng.integers(-h, h, shape) / 2).astype(np.float32)
    elif vote_kind == "far":
        off = (rng.choice([-1, 1], shape) * 10.0 ** rng.uniform(0, 8, shape)).astype(np.float32)
    else:
        off = rng.choice(np.array(OFF_VALUES, dtype=np.float64), shape)
    sem = rng.integers(0, 4, (*lead, h, w)).astype(np.int32)
    kw = {
        "thing_ids": draw(st.sampled_from([[1, 2], [0, 1, 2, 3], [3]])),
        "nms_kernel": 1,
        "top_k": draw(st.sampled_from([None, None, 300, 257])),
        "topk_mode": draw(st.sampled_from(["exact", "detectron2"])),
        "threshold": 0.1,
        "stuff_area": draw(st.integers(0, 5)),
        "label_divisor": draw(st.sampled_from([1000, 1000, 100])),  # 100: the numbering error
    }
    return sem, ctr.astype(np.float32), off, kw


@pytest.mark.parametrize("device", DEVICES[1:])  # emulated; cuda on a GPU, else skipped
@settings(max_examples=int(40 * SCALE), **SETTINGS)
@given(case=dense_peak_inputs())
def test_cuda_path_many_centres_equals_cpu(device, case):
    # Hundreds of centres per image on the CUDA path against the CPU path: the same result (ties
    # to the lower index included) or the same error.
    sem, ctr, off, kw = case
    assert (ctr > kw["threshold"]).sum(axis=(-2, -1)).min() > 256  # every image takes the grid
    _assert_cuda_path_equals_cpu(device, sem, ctr, off, **kw)
