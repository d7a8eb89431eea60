"""Pinned error messages for bad input to every public entry point.

Every rejection must be a ``ValueError`` (wrong value or shape) or ``TypeError`` (wrong kind of object
or dtype) whose message names the argument, what was expected and what was received (DESIGN §5,
issue 2 item 4). Inputs that must *not* be rejected (odd but valid corner cases) are checked against
the reference backend, so a silently wrong answer fails too.

Inputs that could take the whole machine down if the library misbehaves (huge allocations) run in a
subprocess with a capped address space.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pdl_post
from pdl_post import detectron2

try:
    import torch
except ImportError:  # torch is a test dependency; the rest of the file runs without it
    torch = None

H, W = 6, 8
INT32_MAX = 2**31 - 1


def _scene():
    sem = np.full((H, W), 11, np.int32)
    sem[:, :2] = 0  # some stuff
    ctr = np.zeros((1, H, W), np.float32)
    ctr[0, 2, 4] = 0.9
    off = np.zeros((2, H, W), np.float32)
    return sem, ctr, off


def _batch(b=2):
    sem, ctr, off = _scene()
    return np.stack([sem] * b), np.stack([ctr] * b), np.stack([off] * b)


SEM, CTR, OFF = _scene()
INST = np.zeros((H, W), np.int32)
INST[:3, 2:] = 1


def call_merge(**kw):
    args = {"sem": SEM, "ctr": CTR, "off": OFF, **kw}
    return pdl_post.merge(args.pop("sem"), args.pop("ctr"), args.pop("off"), **args)


def call_postprocess(**kw):
    args = {"sem": SEM, "ctr": CTR, "off": OFF, **kw}
    return pdl_post.postprocess(args.pop("sem"), args.pop("ctr"), args.pop("off"), **args)


def call_find_centers(**kw):
    args = {"ctr": CTR, **kw}
    return pdl_post.find_centers(args.pop("ctr"), **args)


def call_group_pixels(**kw):
    args = {"sem": SEM, "centers": np.array([[2, 4]]), "off": OFF, **kw}
    return pdl_post.group_pixels(args.pop("sem"), args.pop("centers"), args.pop("off"), **args)


def call_fuse(**kw):
    args = {"sem": SEM, "instance": INST, **kw}
    return pdl_post.fuse(args.pop("sem"), args.pop("instance"), **args)


MERGE_LIKE = [call_merge, call_postprocess]
ALL_WITH_BACKEND = [call_merge, call_postprocess, call_find_centers, call_group_pixels, call_fuse]


# ---------------------------------------------------------------------------------------------
# merge / postprocess: arrays
# ---------------------------------------------------------------------------------------------

_f32 = np.float32
ARRAY_CASES = [
    # (id, overrides, exception, pattern)
    (
        "sem-1d",
        {"sem": np.zeros(5, np.int32)},
        ValueError,
        r"sem: integer labels must have shape \[H,W\] or \[B,H,W\], got \[5\]",
    ),
    ("sem-0d", {"sem": np.int32(3)}, ValueError, r"sem: .*\[H,W\] or \[B,H,W\], got \[\]"),
    (
        "sem-5d",
        {"sem": np.zeros((1, 1, 1, H, W), np.int32)},
        ValueError,
        r"sem: integer labels must have shape \[H,W\] or \[B,H,W\], got \[1,1,1,6,8\]",
    ),
    (
        "sem-bool",
        {"sem": SEM.astype(bool)},
        TypeError,
        r"sem: expected integer labels \(uint8, int16, int32, int64\) or float logits "
        r"\(float32, float64\), got dtype bool",
    ),
    (
        "sem-longdouble",
        {"sem": np.zeros((3, H, W), np.longdouble)},
        TypeError,
        r"sem: float logits must be float16, bfloat16, float32 or float64, got float128",
    ),
    (
        "sem-complex",
        {"sem": SEM.astype(np.complex64)},
        TypeError,
        r"sem: expected integer labels .* got dtype complex64",
    ),
    (
        "sem-uint64",
        {"sem": SEM.astype(np.uint64)},
        TypeError,
        r"sem: expected integer labels .* got dtype uint64",
    ),
    ("sem-object", {"sem": SEM.astype(object)}, TypeError, r"sem: .* got dtype object"),
    (
        "sem-list-with-None",
        {"sem": [[1, None], [2, 3]]},
        TypeError,
        r"sem: expected a numeric array, got list of dtype object",
    ),
    ("sem-ragged", {"sem": [[1, 2], [3]]}, TypeError, r"sem: expected an array, got list"),
    (
        "sem-generator",
        {"sem": (i for i in range(3))},
        TypeError,
        r"sem: expected a numeric array, got generator",
    ),
    (
        "sem-None",
        {"sem": None},
        TypeError,
        r"sem: expected an array \(numpy array or torch tensor\), got NoneType",
    ),
    (
        "sem-str",
        {"sem": "labels.png"},
        TypeError,
        r"sem: expected an array \(numpy array or torch tensor\), got str 'labels.png'",
    ),
    ("sem-bytes", {"sem": b"\x00\x01"}, TypeError, r"sem: expected an array .* got bytes"),
    ("sem-dict", {"sem": {"a": 1}}, TypeError, r"sem: expected an array .* got dict"),
    (
        "sem-negative",
        {"sem": SEM - 20},
        ValueError,
        r"sem: class ids must be >= 0, got a minimum of -20",
    ),
    (
        "sem-negative-int8",
        {"sem": np.full((H, W), -3, np.int8)},
        ValueError,
        r"sem: class ids must be >= 0, got a minimum of -3",
    ),
    (
        "logits-2d",
        {"sem": np.zeros((H, W), _f32)},
        ValueError,
        r"sem: float logits must have shape \[C,H,W\] or \[B,C,H,W\], got \[6,8\]",
    ),
    (
        "logits-0-classes",
        {"sem": np.zeros((0, H, W), _f32)},
        ValueError,
        r"sem: logits need at least one class channel, got 0",
    ),
    (
        "logits-size",
        {"sem": np.zeros((3, H, W + 1), _f32)},
        ValueError,
        r"ctr: image size 6x8 does not match sem's 6x9",
    ),
    (
        "ctr-longdouble",
        {"ctr": CTR.astype(np.longdouble)},
        TypeError,
        r"ctr: expected a float16, bfloat16, float32 or float64 heatmap, got dtype float128",
    ),
    (
        "ctr-int",
        {"ctr": CTR.astype(np.int32)},
        TypeError,
        r"ctr: expected a float16, bfloat16, float32 or float64 heatmap, got dtype int32",
    ),
    (
        "ctr-bool",
        {"ctr": CTR > 0},
        TypeError,
        r"ctr: expected a float16, bfloat16, float32 or float64 heatmap, got dtype bool",
    ),
    (
        "ctr-complex",
        {"ctr": CTR.astype(np.complex128)},
        TypeError,
        r"ctr: expected a float16, bfloat16, float32 or float64 heatmap, got dtype complex128",
    ),
    ("ctr-object", {"ctr": CTR.astype(object)}, TypeError, r"ctr: .* got dtype object"),
    ("ctr-None", {"ctr": None}, TypeError, r"ctr: expected an array .* got NoneType"),
    ("ctr-str", {"ctr": "heatmap"}, TypeError, r"ctr: expected an array .* got str 'heatmap'"),
    (
        "ctr-2-channels",
        {"ctr": np.zeros((2, H, W), _f32)},
        ValueError,
        r"ctr: expected shape \[H,W\] or \[1,H,W\] for one image, got \[2,6,8\]",
    ),
    (
        "ctr-1d",
        {"ctr": np.zeros(5, _f32)},
        ValueError,
        r"ctr: expected shape \[H,W\] or \[1,H,W\] for one image, got \[5\]",
    ),
    ("ctr-0d", {"ctr": 0.5}, ValueError, r"ctr: expected shape .* got \[\]"),
    (
        "ctr-batched-for-one-image",
        {"ctr": CTR[None]},
        ValueError,
        r"ctr: expected shape \[H,W\] or \[1,H,W\] for one image, got \[1,1,6,8\]",
    ),
    (
        "ctr-size",
        {"ctr": np.zeros((1, H, W + 1), _f32)},
        ValueError,
        r"ctr: image size 6x9 does not match sem's 6x8",
    ),
    (
        "ctr-transposed",
        {"ctr": CTR.transpose(0, 2, 1)},
        ValueError,
        r"ctr: image size 8x6 does not match sem's 6x8",
    ),
    (
        "off-3-channels",
        {"off": np.zeros((3, H, W), _f32)},
        ValueError,
        r"off: expected shape \[2,H,W\] \(dy, dx\) for one image, got \[3,6,8\]",
    ),
    (
        "off-2d",
        {"off": np.zeros((H, W), _f32)},
        ValueError,
        r"off: expected shape \[2,H,W\] \(dy, dx\) for one image, got \[6,8\]",
    ),
    (
        "off-channels-last",
        {"off": np.zeros((H, W, 2), _f32)},
        ValueError,
        r"off: expected shape \[2,H,W\] \(dy, dx\) for one image, got \[6,8,2\]",
    ),
    (
        "off-size",
        {"off": np.zeros((2, H + 1, W), _f32)},
        ValueError,
        r"off: image size 7x8 does not match sem's 6x8",
    ),
    (
        "off-int",
        {"off": OFF.astype(np.int64)},
        TypeError,
        r"off: expected float16, bfloat16, float32 or float64 offsets, got dtype int64",
    ),
    (
        "off-longdouble",
        {"off": OFF.astype(np.longdouble)},
        TypeError,
        r"off: expected float16, bfloat16, float32 or float64 offsets, got dtype float128",
    ),
    (
        "off-complex",
        {"off": OFF.astype(np.complex64)},
        TypeError,
        r"off: expected float16, bfloat16, float32 or float64 offsets, got dtype complex64",
    ),
    ("off-object", {"off": OFF.astype(object)}, TypeError, r"off: .* got dtype object"),
    ("off-None", {"off": None}, TypeError, r"off: expected an array .* got NoneType"),
    ("off-str", {"off": "x"}, TypeError, r"off: expected an array .* got str 'x'"),
    (
        "mask-size",
        {"foreground_mask": np.ones((H, W + 1))},
        ValueError,
        r"foreground_mask: image size 6x9 does not match sem's 6x8",
    ),
    (
        "mask-3d",
        {"foreground_mask": np.ones((2, H, W))},
        ValueError,
        r"foreground_mask: expected shape \[H,W\], got \[2,6,8\]",
    ),
    (
        "mask-complex",
        {"foreground_mask": np.ones((H, W), np.complex64)},
        TypeError,
        r"foreground_mask: expected a bool or numeric array, got dtype complex64",
    ),
    (
        "mask-object",
        {"foreground_mask": np.ones((H, W), object)},
        TypeError,
        r"foreground_mask: expected a bool or numeric array, got dtype object",
    ),
    (
        "mask-str",
        {"foreground_mask": "x"},
        TypeError,
        r"foreground_mask: expected an array .* got str 'x'",
    ),
]


@pytest.mark.parametrize("fn", MERGE_LIKE, ids=["merge", "postprocess"])
@pytest.mark.parametrize(
    ("case", "kw", "exc", "pattern"), ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES]
)
def test_merge_bad_arrays(fn, case, kw, exc, pattern):
    for backend in ("cpu", "reference"):
        with pytest.raises(exc, match=pattern):
            fn(**kw, backend=backend)


BATCH_CASES = [
    (
        "ctr-batch",
        lambda s, c, o: (s, np.concatenate([c, c[:1]]), o),
        ValueError,
        r"ctr: batch size 3 does not match sem's batch size 2",
    ),
    (
        "off-batch",
        lambda s, c, o: (s, c, o[:1]),
        ValueError,
        r"off: batch size 1 does not match sem's batch size 2",
    ),
    (
        "ctr-unbatched",
        lambda s, c, o: (s, c[0], o),
        ValueError,
        r"ctr: expected shape \[B,1,H,W\] for a batch, got \[1,6,8\]",
    ),
    (
        "ctr-2-channels",
        lambda s, c, o: (s, np.concatenate([c, c], axis=1), o),
        ValueError,
        r"ctr: expected shape \[B,1,H,W\] for a batch, got \[2,2,6,8\]",
    ),
    (
        "off-unbatched",
        lambda s, c, o: (s, c, o[0]),
        ValueError,
        r"off: expected shape \[B,2,H,W\] \(dy, dx\) for a batch, got \[2,6,8\]",
    ),
    (
        "off-1-channel",
        lambda s, c, o: (s, c, o[:, :1]),
        ValueError,
        r"off: expected shape \[B,2,H,W\] \(dy, dx\) for a batch, got \[2,1,6,8\]",
    ),
    (
        "sem-unbatched",
        lambda s, c, o: (s[0], c, o),
        ValueError,
        r"ctr: expected shape \[H,W\] or \[1,H,W\] for one image, got \[2,1,6,8\]",
    ),
    (
        "logits-batch",
        lambda s, c, o: (np.zeros((3, 4, H, W), _f32), c, o),
        ValueError,
        r"ctr: batch size 2 does not match sem's batch size 3",
    ),
    (
        "logits-0-classes",
        lambda s, c, o: (np.zeros((2, 0, H, W), _f32), c, o),
        ValueError,
        r"sem: logits need at least one class channel, got 0",
    ),
]


@pytest.mark.parametrize("fn", MERGE_LIKE, ids=["merge", "postprocess"])
@pytest.mark.parametrize(
    ("case", "make", "exc", "pattern"), BATCH_CASES, ids=[c[0] for c in BATCH_CASES]
)
def test_merge_bad_batches(fn, case, make, exc, pattern):
    sem, ctr, off = make(*_batch(2))
    for backend in ("cpu", "reference"):
        with pytest.raises(exc, match=pattern):
            fn(sem=sem, ctr=ctr, off=off, backend=backend)


@pytest.mark.parametrize("fn", MERGE_LIKE, ids=["merge", "postprocess"])
def test_merge_mask_batch_mismatch(fn):
    sem, ctr, off = _batch(2)
    with pytest.raises(
        ValueError,
        match=r"foreground_mask: batch size 3 does not match sem's "
        r"batch size 2",
    ):
        fn(sem=sem, ctr=ctr, off=off, foreground_mask=np.ones((3, H, W), bool))
    with pytest.raises(ValueError, match=r"foreground_mask: expected shape \[B,H,W\], got \[6,8\]"):
        fn(sem=sem, ctr=ctr, off=off, foreground_mask=np.ones((H, W), bool))


def test_image_side_limit():
    # Zero-stride views make a 2**24-tall image without memory.
    tall = 2**24
    sem = np.broadcast_to(np.int32(11), (tall, 1))
    ctr = np.broadcast_to(np.float32(0), (1, tall, 1))
    off = np.broadcast_to(np.float32(0), (2, tall, 1))
    with pytest.raises(ValueError, match=r"sem: image sides must be < 2\*\*24 .* got 16777216x1"):
        pdl_post.merge(sem, ctr, off)


# ---------------------------------------------------------------------------------------------
# options (shared by merge, postprocess and, where they apply, the stages)
# ---------------------------------------------------------------------------------------------

OPTION_CASES = [
    ("nms_kernel", 0, ValueError, r"nms_kernel: expected an integer >= 1, got 0"),
    ("nms_kernel", -3, ValueError, r"nms_kernel: expected an integer >= 1, got -3"),
    (
        "nms_kernel",
        2,
        ValueError,
        r"nms_kernel: expected an odd window size \(1, 3, 5, \.\.\.\), got 2",
    ),
    ("nms_kernel", 8, ValueError, r"nms_kernel: expected an odd window size .* got 8"),
    ("nms_kernel", 3.0, TypeError, r"nms_kernel: expected an integer, got float"),
    ("nms_kernel", True, TypeError, r"nms_kernel: expected an integer, got bool"),
    ("nms_kernel", np.bool_(True), TypeError, r"nms_kernel: expected an integer, got bool"),
    ("nms_kernel", "7", TypeError, r"nms_kernel: expected an integer, got str '7'"),
    ("nms_kernel", None, TypeError, r"nms_kernel: expected an integer, got NoneType"),
    ("top_k", -1, ValueError, r"top_k: expected an integer >= 0, got -1"),
    ("top_k", 2.5, TypeError, r"top_k: expected an integer or None, got float"),
    ("top_k", True, TypeError, r"top_k: expected an integer or None, got bool"),
    ("top_k", "200", TypeError, r"top_k: expected an integer or None, got str '200'"),
    ("threshold", float("nan"), ValueError, r"threshold: expected a number, got nan"),
    ("threshold", np.float32("nan"), ValueError, r"threshold: expected a number, got nan"),
    ("threshold", None, TypeError, r"threshold: expected a real number, got NoneType"),
    ("threshold", "0.1", TypeError, r"threshold: expected a real number, got str '0.1'"),
    ("threshold", True, TypeError, r"threshold: expected a real number, got bool"),
    ("threshold", 1 + 2j, TypeError, r"threshold: expected a real number, got complex"),
    (
        "topk_mode",
        "EXACT",
        ValueError,
        r"topk_mode: expected one of 'exact', 'detectron2', got 'EXACT'",
    ),
    ("topk_mode", None, ValueError, r"topk_mode: expected one of 'exact', 'detectron2', got None"),
    ("topk_mode", 1, ValueError, r"topk_mode: expected one of .* got 1"),
    ("num_threads", 0, ValueError, r"num_threads: expected an integer >= 1, got 0"),
    ("num_threads", -2, ValueError, r"num_threads: expected an integer >= 1, got -2"),
    ("num_threads", True, TypeError, r"num_threads: expected an integer or None, got bool"),
    ("num_threads", 2.0, TypeError, r"num_threads: expected an integer or None, got float"),
    ("num_threads", "2", TypeError, r"num_threads: expected an integer or None, got str '2'"),
    (
        "backend",
        "gpu",
        ValueError,
        r"backend: expected one of 'auto', 'cpu', 'reference', 'cuda', got 'gpu'",
    ),
    ("backend", "CPU", ValueError, r"backend: expected one of .* got 'CPU'"),
    ("backend", None, ValueError, r"backend: expected one of .* got None"),
    ("backend", 0, ValueError, r"backend: expected one of .* got 0"),
    ("stuff_area", -1, ValueError, r"stuff_area: expected an integer >= 0, got -1"),
    ("stuff_area", 2048.0, TypeError, r"stuff_area: expected an integer, got float"),
    ("stuff_area", None, TypeError, r"stuff_area: expected an integer, got NoneType"),
    ("stuff_area", False, TypeError, r"stuff_area: expected an integer, got bool"),
    ("label_divisor", 0, ValueError, r"label_divisor: expected an integer >= 1, got 0"),
    ("label_divisor", -1000, ValueError, r"label_divisor: expected an integer >= 1, got -1000"),
    ("label_divisor", 1000.0, TypeError, r"label_divisor: expected an integer, got float"),
    ("label_divisor", None, TypeError, r"label_divisor: expected an integer, got NoneType"),
    ("label_divisor", True, TypeError, r"label_divisor: expected an integer, got bool"),
    (
        "label_divisor",
        2**70,
        ValueError,
        r"label_divisor: expected a value that fits int64, got 1180591620717411303424",
    ),
    ("void_label", None, TypeError, r"void_label: expected an integer, got NoneType"),
    ("void_label", "void", TypeError, r"void_label: expected an integer, got str 'void'"),
    ("void_label", -1.0, TypeError, r"void_label: expected an integer, got float"),
    ("void_label", True, TypeError, r"void_label: expected an integer, got bool"),
    ("void_label", -(2**70), ValueError, r"void_label: expected a value that fits int64"),
    (
        "thing_ids",
        None,
        TypeError,
        r"thing_ids: expected an iterable of non-negative integers, got NoneType",
    ),
    (
        "thing_ids",
        "11",
        TypeError,
        r"thing_ids: expected an iterable of non-negative integers, got str '11'",
    ),
    (
        "thing_ids",
        11,
        TypeError,
        r"thing_ids: expected an iterable of non-negative integers, got int",
    ),
    ("thing_ids", [-1], ValueError, r"thing_ids: expected an integer >= 0, got -1"),
    ("thing_ids", np.array([11, -2]), ValueError, r"thing_ids: expected an integer >= 0, got -2"),
    ("thing_ids", [1.5], TypeError, r"thing_ids: expected an integer, got float"),
    ("thing_ids", [True], TypeError, r"thing_ids: expected an integer, got bool"),
    ("thing_ids", [None], TypeError, r"thing_ids: expected an integer, got NoneType"),
    ("thing_ids", ["11"], TypeError, r"thing_ids: expected an integer, got str '11'"),
    ("thing_ids", [2**70], ValueError, r"thing_ids: expected a value that fits int64"),
]

# Which options each entry point takes.
_TAKES = {
    call_merge: None,  # all
    call_postprocess: None,
    call_find_centers: {"nms_kernel", "top_k", "threshold", "topk_mode", "num_threads", "backend"},
    call_group_pixels: {"thing_ids", "num_threads", "backend"},
    call_fuse: {"thing_ids", "label_divisor", "stuff_area", "void_label", "num_threads", "backend"},
}


def _option_params():
    for fn, takes in _TAKES.items():
        for name, value, exc, pattern in OPTION_CASES:
            if takes is None or name in takes:
                yield pytest.param(
                    fn, name, value, exc, pattern, id=f"{fn.__name__[5:]}-{name}={value!r}"
                )


@pytest.mark.parametrize(("fn", "name", "value", "exc", "pattern"), list(_option_params()))
def test_bad_options(fn, name, value, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn(**{name: value})
    if name != "backend":
        with pytest.raises(exc, match=pattern):
            fn(**{name: value}, backend="reference")


@pytest.mark.parametrize(
    ("good", "bad", "name", "pattern"),
    [
        (7, 7.0, "nms_kernel", "got float"),
        (200, 200.0, "top_k", "got float"),
        (1, True, "nms_kernel", "got bool"),
        (0, False, "stuff_area", "got bool"),
        (0.5, 0.5 + 0j, "threshold", "got complex"),
        ((11, 12), (11, True), "thing_ids", "got bool"),
    ],
)
def test_remembered_options_do_not_let_an_equal_value_of_another_type_through(
    good, bad, name, pattern
):
    """Checked options are remembered by exact type and value (check_params): 7.0 == 7 and
    True == 1 and they hash alike, yet a float or bool option is still refused after the same
    call with an int succeeded."""
    for _ in range(2):  # the second call finds the first's checked options
        call_merge(**{name: good})
        with pytest.raises(TypeError, match=pattern):
            call_merge(**{name: bad})


def test_remembered_options_are_immutable_and_equal_to_checking_afresh():
    from pdl_post._inputs import _check_params, check_params

    options = dict(
        thing_ids=(18, 11, 11),
        label_divisor=np.int64(1000),  # not a plain int: checked every time
        stuff_area=2048,
        void_label=-1,
        threshold=0.1,
        nms_kernel=7,
        top_k=None,
        topk_mode="exact",
        num_threads=None,
    )
    fresh = _check_params(**options)
    assert check_params(**options) == fresh and fresh.thing_ids == (11, 18)
    plain = {**options, "label_divisor": 1000}
    assert check_params(**plain) is check_params(**plain) == fresh
    assert isinstance(check_params(**plain).thing_ids, tuple)
    # A list of thing ids is checked every time and gives the same options.
    assert check_params(**{**plain, "thing_ids": [18, 11]}) == fresh


@pytest.mark.parametrize("fn", ALL_WITH_BACKEND, ids=lambda f: f.__name__[5:])
def test_backend_cuda_without_cuda(fn):
    if "cuda" in pdl_post.available_backends():
        pytest.skip("this build has a CUDA backend")
    with pytest.raises(
        ValueError,
        match=r"backend: 'cuda' is not available in this build .*"
        r"available: cpu, reference",
    ):
        fn(backend="cuda")


@pytest.mark.parametrize("fn", [call_merge, call_find_centers], ids=["merge", "find_centers"])
def test_threshold_int_beyond_float(fn):
    """An int threshold too large for a float is a ValueError/TypeError naming threshold (not
    OverflowError)."""
    with pytest.raises((ValueError, TypeError), match=r"^threshold: "):
        fn(threshold=10**400)


def test_num_threads_beyond_c_int():
    """A huge thread count is either clamped or rejected with a message that names it; never
    pybind11's 'incompatible function arguments' dump of the whole input array."""
    for value in (2**31, 2**40):
        try:
            out = call_merge(num_threads=value)
        except (ValueError, TypeError) as e:
            assert str(e).startswith("num_threads:"), str(e)[:200]
        else:
            np.testing.assert_array_equal(out, call_merge(num_threads=1))


# ---------------------------------------------------------------------------------------------
# ids: int32 -> int64 -> error; n >= label_divisor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_ids_beyond_int64(backend):
    with pytest.raises(
        ValueError,
        match=r"label_divisor: ids up to \d+ \(max class 11 x "
        r"label_divisor 4611686018427387904\) do not fit int64",
    ):
        call_merge(label_divisor=2**62, backend=backend)
    sem = np.full((H, W), 2**62, np.int64)
    with pytest.raises(
        ValueError,
        match=r"label_divisor: ids up to \d+ \(max class "
        r"4611686018427387904 x label_divisor 4\) do not fit int64",
    ):
        call_merge(sem=sem, label_divisor=4, backend=backend)
    with pytest.raises(ValueError, match=r"label_divisor: .* do not fit int64"):
        call_fuse(label_divisor=2**62, backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_ids_beyond_int32_widen(backend):
    out = call_merge(label_divisor=2**30, stuff_area=0, backend=backend)
    assert out.dtype == np.int64
    assert out[2, 4] == 11 * 2**30 + 1
    out = call_merge(void_label=-(2**40), stuff_area=10**6, backend=backend)
    assert out.dtype == np.int64 and out[0, 0] == -(2**40)
    sem = np.full((H, W), 2**62, np.int64)
    out = call_merge(sem=sem, label_divisor=1, thing_ids=[], stuff_area=0, backend=backend)
    assert out.dtype == np.int64 and (out == 2**62).all()


def _three_centres():
    ctr = np.zeros((1, H, W), np.float32)
    ctr[0, 0, 0] = ctr[0, 0, W - 1] = ctr[0, H - 1, 0] = 0.9
    return ctr


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_instances_reaching_label_divisor(backend):
    sem = np.full((H, W), 11, np.int32)
    with pytest.raises(
        ValueError, match=r"label_divisor.*class 11.*\b2\b|class 11.*\b2\b.*label_divisor"
    ):
        pdl_post.merge(sem, _three_centres(), OFF, label_divisor=2, nms_kernel=1, backend=backend)
    # label_divisor = 3 holds instances 1 and 2 but not 3.
    with pytest.raises(
        ValueError, match=r"label_divisor.*class 11.*\b3\b|class 11.*\b3\b.*label_divisor"
    ):
        pdl_post.merge(sem, _three_centres(), OFF, label_divisor=3, nms_kernel=1, backend=backend)
    out = pdl_post.merge(
        sem, _three_centres(), OFF, label_divisor=4, nms_kernel=1, stuff_area=0, backend=backend
    )
    assert set(np.unique(out).tolist()) == {45, 46, 47}
    inst = np.arange(H * W, dtype=np.int32).reshape(H, W)
    with pytest.raises(ValueError, match=r"label_divisor.*class 11|class 11.*label_divisor"):
        pdl_post.fuse(sem, inst, label_divisor=10, backend=backend)


# ---------------------------------------------------------------------------------------------
# find_centers
# ---------------------------------------------------------------------------------------------

FIND_CASES = [
    ("None", None, TypeError, r"ctr: expected an array .* got NoneType"),
    ("str", "ctr.npy", TypeError, r"ctr: expected an array .* got str 'ctr.npy'"),
    (
        "int",
        np.zeros((H, W), np.int32),
        TypeError,
        r"ctr: expected a float16, bfloat16, float32 or float64 heatmap, got dtype int32",
    ),
    (
        "longdouble",
        np.zeros((H, W), np.longdouble),
        TypeError,
        r"ctr: expected a float16, bfloat16, float32 or float64 heatmap, got dtype float128",
    ),
    ("complex", np.zeros((H, W), np.complex128), TypeError, r"ctr: .* got dtype complex128"),
    ("object", np.zeros((H, W), object), TypeError, r"ctr: .* got dtype object"),
    (
        "1d",
        np.zeros(5, _f32),
        ValueError,
        r"ctr: expected shape \[H,W\] or \[1,H,W\] for one image, got \[5\]",
    ),
    (
        "2-channels",
        np.zeros((2, H, W), _f32),
        ValueError,
        r"ctr: expected shape \[H,W\] or \[1,H,W\] for one image, got \[2,6,8\]",
    ),
    (
        "batch-2-channels",
        np.zeros((1, 2, H, W), _f32),
        ValueError,
        r"ctr: expected shape \[B,1,H,W\] for a batch, got \[1,2,6,8\]",
    ),
    (
        "5d",
        np.zeros((1, 1, 1, H, W), _f32),
        ValueError,
        r"ctr: expected shape .* got \[1,1,1,6,8\]",
    ),
]


@pytest.mark.parametrize(
    ("case", "ctr", "exc", "pattern"), FIND_CASES, ids=[c[0] for c in FIND_CASES]
)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_find_centers_bad_input(case, ctr, exc, pattern, backend):
    with pytest.raises(exc, match=pattern):
        pdl_post.find_centers(ctr, backend=backend)


# ---------------------------------------------------------------------------------------------
# group_pixels
# ---------------------------------------------------------------------------------------------

GROUP_CASES = [
    ("centers-None", {"centers": None}, TypeError, r"centers: expected an array .* got NoneType"),
    ("centers-str", {"centers": "ab"}, TypeError, r"centers: expected an array .* got str 'ab'"),
    (
        "centers-float",
        {"centers": np.array([[1.0, 2.0]])},
        TypeError,
        r"centers: expected integer \(y, x\) coordinates, got dtype float64",
    ),
    (
        "centers-bool",
        {"centers": np.array([[True, False]])},
        TypeError,
        r"centers: expected integer \(y, x\) coordinates, got dtype bool",
    ),
    (
        "centers-object",
        {"centers": np.array([[1, None]], object)},
        TypeError,
        r"centers: expected integer \(y, x\) coordinates, got dtype object",
    ),
    (
        "centers-empty-complex",
        {"centers": np.zeros(0, np.complex64)},
        TypeError,
        r"centers: expected integer \(y, x\) coordinates, got dtype complex64",
    ),
    (
        "centers-3-columns",
        {"centers": np.array([[1, 2, 3]])},
        ValueError,
        r"centers: expected shape \[K,2\] \(y, x\), got \[1, 3\]",
    ),
    (
        "centers-1d",
        {"centers": np.array([1, 2])},
        ValueError,
        r"centers: expected shape \[K,2\] \(y, x\), got \[2\]",
    ),
    (
        "centers-3d",
        {"centers": np.zeros((1, 1, 2), np.int64)},
        ValueError,
        r"centers: expected shape \[K,2\] \(y, x\), got \[1, 1, 2\]",
    ),
    (
        "centers-y-too-large",
        {"centers": np.array([[H, 0]])},
        ValueError,
        r"centers: every \(y, x\) must lie inside the 6x8 image",
    ),
    (
        "centers-x-too-large",
        {"centers": np.array([[0, W]])},
        ValueError,
        r"centers: every \(y, x\) must lie inside the 6x8 image",
    ),
    (
        "centers-negative",
        {"centers": np.array([[1, 2], [-1, 0]])},
        ValueError,
        r"centers: every \(y, x\) must lie inside the 6x8 image",
    ),
    (
        "centers-uint64-huge",
        {"centers": np.array([[2**63, 0]], np.uint64)},
        ValueError,
        r"centers: every \(y, x\) must lie inside the 6x8 image",
    ),
    (
        "sem-None-without-mask",
        {"sem": None},
        TypeError,
        r"sem: expected labels or logits \(None is only allowed together with foreground_mask\)",
    ),
    ("sem-size", {"sem": SEM[:, :-1]}, ValueError, r"sem: image size 6x7 does not match off's 6x8"),
    ("sem-bool", {"sem": SEM > 0}, TypeError, r"sem: expected integer labels .* got dtype bool"),
    ("sem-negative", {"sem": SEM - 20}, ValueError, r"sem: class ids must be >= 0"),
    (
        "sem-batched",
        {"sem": SEM[None]},
        ValueError,
        r"sem: batched and unbatched inputs are mixed \(sem vs off\)",
    ),
    (
        "logits-size",
        {"sem": np.zeros((13, H, W + 1), _f32)},
        ValueError,
        r"off: image size 6x8 does not match sem's 6x9",
    ),
    ("off-None", {"off": None}, TypeError, r"off: expected an array .* got NoneType"),
    (
        "off-1-channel",
        {"off": OFF[:1]},
        ValueError,
        r"off: expected shape \[2,H,W\] \(dy, dx\) for one image, got \[1,6,8\]",
    ),
    (
        "off-int",
        {"off": OFF.astype(np.int32)},
        TypeError,
        r"off: expected float16, bfloat16, float32 or float64 offsets, got dtype int32",
    ),
    (
        "mask-size",
        {"sem": None, "foreground_mask": np.ones((H + 1, W))},
        ValueError,
        r"foreground_mask: image size 7x8 does not match off's 6x8",
    ),
]


@pytest.mark.parametrize(
    ("case", "kw", "exc", "pattern"), GROUP_CASES, ids=[c[0] for c in GROUP_CASES]
)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_group_pixels_bad_input(case, kw, exc, pattern, backend):
    with pytest.raises(exc, match=pattern):
        call_group_pixels(**kw, backend=backend)


BATCHED_CENTER_CASES = [
    ("None", None, TypeError, r"^centers: "),
    ("int", 5, TypeError, r"^centers: "),
    (
        "one-for-two-images",
        [np.array([[1, 1]])],
        ValueError,
        r"centers: expected one \[K,2\] array per image \(2\), got 1",
    ),
    (
        "outside",
        [np.array([[1, 1]]), np.array([[0, W]])],
        ValueError,
        r"centers: every \(y, x\) must lie inside the 6x8 image",
    ),
]


@pytest.mark.parametrize(
    ("case", "centers", "exc", "pattern"),
    BATCHED_CENTER_CASES,
    ids=[c[0] for c in BATCHED_CENTER_CASES],
)
def test_group_pixels_bad_batched_centers(case, centers, exc, pattern):
    sem, _, off = _batch(2)
    with pytest.raises(exc, match=pattern):
        pdl_post.group_pixels(sem, centers, off)


# ---------------------------------------------------------------------------------------------
# fuse
# ---------------------------------------------------------------------------------------------

FUSE_CASES = [
    (
        "instance-None",
        {"instance": None},
        TypeError,
        r"instance: expected an array .* got NoneType",
    ),
    ("instance-str", {"instance": "x"}, TypeError, r"instance: expected an array .* got str 'x'"),
    (
        "instance-float",
        {"instance": INST.astype(np.float32)},
        TypeError,
        r"instance: expected an integer instance map, got dtype float32",
    ),
    (
        "instance-bool",
        {"instance": INST > 0},
        TypeError,
        r"instance: expected an integer instance map, got dtype bool",
    ),
    (
        "instance-uint64",
        {"instance": INST.astype(np.uint64)},
        TypeError,
        r"instance: expected an integer instance map, got dtype uint64",
    ),
    (
        "instance-complex",
        {"instance": INST.astype(np.complex64)},
        TypeError,
        r"instance: expected an integer instance map, got dtype complex64",
    ),
    ("instance-object", {"instance": INST.astype(object)}, TypeError, r"instance: .*dtype object"),
    (
        "instance-negative",
        {"instance": INST - 1},
        ValueError,
        r"instance: ids must be >= 0, got a minimum of -1",
    ),
    (
        "instance-size",
        {"instance": INST[:, :-1]},
        ValueError,
        r"instance: image size 6x7 does not match sem's 6x8",
    ),
    (
        "instance-3d",
        {"instance": INST[None]},
        ValueError,
        r"instance: expected shape \[H,W\] like sem, got \[1, 6, 8\]",
    ),
    ("sem-None", {"sem": None}, TypeError, r"sem: expected an array .* got NoneType"),
    ("sem-negative", {"sem": SEM - 20}, ValueError, r"sem: class ids must be >= 0"),
    ("sem-uint64", {"sem": SEM.astype(np.uint64)}, TypeError, r"sem: expected integer labels"),
    (
        "logits-0-classes",
        {"sem": np.zeros((0, H, W), _f32)},
        ValueError,
        r"sem: logits need at least one class channel, got 0",
    ),
    (
        "batch",
        {"sem": np.stack([SEM] * 2), "instance": np.stack([INST] * 3)},
        ValueError,
        r"instance: batch size 3 does not match sem's batch size 2",
    ),
    (
        "batched-instance-2d",
        {"sem": np.stack([SEM] * 2)},
        ValueError,
        r"instance: expected shape \[B,H,W\] like sem, got \[6, 8\]",
    ),
]


@pytest.mark.parametrize(
    ("case", "kw", "exc", "pattern"), FUSE_CASES, ids=[c[0] for c in FUSE_CASES]
)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_fuse_bad_input(case, kw, exc, pattern, backend):
    with pytest.raises(exc, match=pattern):
        call_fuse(**kw, backend=backend)


# ---------------------------------------------------------------------------------------------
# detectron2 drop-in: errors name detectron2's own argument names
# ---------------------------------------------------------------------------------------------

D2_KW = {"thing_ids": {11}, "label_divisor": 1000, "stuff_area": 0, "void_label": 0}


def call_d2(**kw):
    args = {
        "sem_seg": torch.from_numpy(SEM[None]),
        "center_heatmap": torch.from_numpy(CTR),
        "offsets": torch.from_numpy(OFF),
        **D2_KW,
        **kw,
    }
    return detectron2.get_panoptic_segmentation(**args)


def _d2_cases():
    return [
        (
            "sem_seg-2d",
            {"sem_seg": torch.from_numpy(SEM)},
            ValueError,
            r"sem_seg: expected shape \[1,H,W\], got \[6, 8\]",
        ),
        (
            "sem_seg-batch-2",
            {"sem_seg": torch.from_numpy(np.stack([SEM] * 2))},
            ValueError,
            r"sem_seg: expected shape \[1,H,W\], got \[2, 6, 8\]",
        ),
        (
            "sem_seg-None",
            {"sem_seg": None},
            TypeError,
            r"sem_seg: expected an array .* got NoneType",
        ),
        (
            "sem_seg-negative",
            {"sem_seg": torch.from_numpy(SEM[None] - 20)},
            ValueError,
            r"sem_seg: class ids must be >= 0",
        ),
        (
            "sem_seg-bool",
            {"sem_seg": torch.from_numpy(SEM[None] > 0)},
            TypeError,
            r"sem_seg: expected integer labels",
        ),
        (
            "center_heatmap-None",
            {"center_heatmap": None},
            TypeError,
            r"center_heatmap: expected an array .* got NoneType",
        ),
        (
            "center_heatmap-int",
            {"center_heatmap": torch.zeros(1, H, W, dtype=torch.int32)},
            TypeError,
            r"center_heatmap: expected a float16, bfloat16, float32 or float64 heatmap, got dtype "
            r"int32",
        ),
        (
            "center_heatmap-complex",
            {"center_heatmap": torch.zeros(1, H, W, dtype=torch.complex64)},
            TypeError,
            r"center_heatmap: expected a float16, bfloat16, float32 or float64 heatmap, got dtype "
            r"complex64",
        ),
        (
            "center_heatmap-size",
            {"center_heatmap": torch.zeros(1, H, W + 1)},
            ValueError,
            r"center_heatmap: image size 6x9 does not match sem_seg's 6x8",
        ),
        (
            "offsets-1-channel",
            {"offsets": torch.zeros(1, H, W)},
            ValueError,
            r"offsets: expected shape \[2,H,W\] \(dy, dx\) for one image, got \[1,6,8\]",
        ),
        (
            "offsets-None",
            {"offsets": None},
            TypeError,
            r"offsets: expected an array .* got NoneType",
        ),
        (
            "foreground_mask-size",
            {"foreground_mask": torch.ones(1, H, W + 1)},
            ValueError,
            r"foreground_mask: image size 6x9 does not match sem_seg's 6x8",
        ),
        (
            "thing_ids-None",
            {"thing_ids": None},
            TypeError,
            r"thing_ids: expected an iterable of non-negative integers, got NoneType",
        ),
        (
            "label_divisor-0",
            {"label_divisor": 0},
            ValueError,
            r"label_divisor: expected an integer >= 1, got 0",
        ),
        (
            "stuff_area-negative",
            {"stuff_area": -1},
            ValueError,
            r"stuff_area: expected an integer >= 0, got -1",
        ),
        (
            "void_label-None",
            {"void_label": None},
            TypeError,
            r"void_label: expected an integer, got NoneType",
        ),
        (
            "nms_kernel-even",
            {"nms_kernel": 4},
            ValueError,
            r"nms_kernel: expected an odd window size",
        ),
        ("top_k-negative", {"top_k": -1}, ValueError, r"top_k: expected an integer >= 0, got -1"),
        (
            "threshold-nan",
            {"threshold": float("nan")},
            ValueError,
            r"threshold: expected a number, got nan",
        ),
        (
            "sem_seg-meta",
            {"sem_seg": torch.from_numpy(SEM[None]).to("meta")},
            ValueError,
            r"sem_seg: got a tensor on device 'meta'.*\.cpu\(\)",
        ),
        (
            "center_heatmap-meta",
            {"center_heatmap": torch.from_numpy(CTR).to("meta")},
            ValueError,
            r"center_heatmap: got a tensor on device 'meta'.*\.cpu\(\)",
        ),
    ]


D2_CASES = _d2_cases() if torch is not None else []


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize(("case", "kw", "exc", "pattern"), D2_CASES, ids=[c[0] for c in D2_CASES])
def test_detectron2_bad_input(case, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call_d2(**kw)


# ---------------------------------------------------------------------------------------------
# odd but valid input: must give the reference's answer, not an exception or a wrong answer
# ---------------------------------------------------------------------------------------------


def _assert_same(kw):
    a = pdl_post.postprocess(**kw, backend="cpu")
    b = pdl_post.postprocess(**kw, backend="reference")
    assert a.panoptic.dtype == b.panoptic.dtype
    np.testing.assert_array_equal(a.panoptic, b.panoptic)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.segments == b.segments
    return a


def test_big_endian_labels():
    """Non-native byte order is either rejected with a TypeError or read correctly."""
    sem = SEM.astype(">i4")
    try:
        got = pdl_post.merge(sem, CTR, OFF, stuff_area=0)
    except TypeError as e:
        assert str(e).startswith("sem:")
    else:
        np.testing.assert_array_equal(got, pdl_post.merge(SEM, CTR, OFF, stuff_area=0))
    for dt in (">i2", ">i8"):
        try:
            got = pdl_post.merge(SEM.astype(dt), CTR, OFF, stuff_area=0)
        except TypeError as e:
            assert str(e).startswith("sem:")
        else:
            np.testing.assert_array_equal(got, pdl_post.merge(SEM, CTR, OFF, stuff_area=0))


def test_big_endian_labels_fuse():
    want = pdl_post.fuse(SEM, INST, stuff_area=0)
    try:
        got = pdl_post.fuse(SEM.astype(">i8"), INST.astype(">i4"), stuff_area=0)
    except TypeError as e:
        assert str(e).startswith("sem:")
    else:
        np.testing.assert_array_equal(got, want)


def test_big_endian_floats():
    """Big-endian heatmaps/offsets/logits: TypeError naming the argument, or the right answer."""
    want = pdl_post.merge(SEM, CTR, OFF, stuff_area=0)
    for name, kw in (("ctr", {"ctr": CTR.astype(">f4")}), ("off", {"off": OFF.astype(">f8")})):
        try:
            got = call_merge(**kw, stuff_area=0)
        except TypeError as e:
            assert str(e).startswith(f"{name}:")
        else:
            np.testing.assert_array_equal(got, want)


def test_huge_thing_id():
    """A thing id far above every label is harmless: no allocation sized by the id."""
    kw = {"sem": SEM, "ctr": CTR, "off": OFF, "thing_ids": [11, 2**62], "stuff_area": 0}
    _assert_same(kw)
    out = pdl_post.group_pixels(SEM, np.array([[2, 4]]), OFF, thing_ids=[11, 2**62])
    np.testing.assert_array_equal(
        out, pdl_post.group_pixels(SEM, np.array([[2, 4]]), OFF, thing_ids=[11])
    )


def test_huge_thing_class():
    """A thing class id of 2**40 (ids fit int64 with label_divisor 1000): no cap on class ids."""
    sem = np.where(SEM == 11, np.int64(2**40), SEM.astype(np.int64))
    a = _assert_same(
        {
            "sem": sem,
            "ctr": CTR,
            "off": OFF,
            "thing_ids": [2**40],
            "stuff_area": 0,
            "label_divisor": 1000,
        }
    )
    assert a.panoptic[2, 4] == 2**40 * 1000 + 1


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_odd_but_valid(backend):
    kw = {"backend": backend, "stuff_area": 0}
    # strides: negative, zero, transposed
    call_merge(sem=SEM[::-1, ::-1], ctr=CTR[:, ::-1, ::-1], off=OFF[::-1], **kw)
    call_merge(
        sem=np.broadcast_to(SEM[:1], (H, W)),
        ctr=np.broadcast_to(CTR[:, :1], (1, H, W)),
        off=np.broadcast_to(OFF[:, :1, :1], (2, H, W)),
        **kw,
    )
    # unaligned heatmap (a float32 view starting one byte into a buffer)
    buf = np.zeros(CTR.nbytes + 1, np.uint8)
    unaligned = buf[1:].view(np.float32).reshape(1, H, W)
    unaligned[...] = CTR
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(call_merge(ctr=unaligned, **kw), call_merge(**kw))
    # list input, widened dtypes, threshold +-inf, huge options
    call_merge(sem=SEM.tolist(), **kw)
    call_merge(sem=SEM.astype(np.uint16), **kw)
    call_merge(sem=SEM.astype(np.int8), **kw)
    call_merge(threshold=float("inf"), **kw)
    call_merge(threshold=-float("inf"), **kw)
    call_merge(top_k=2**63 - 1, nms_kernel=2**62 + 1, **kw)
    call_merge(stuff_area=2**63 - 1, backend=backend)
    call_merge(void_label=-(2**63), **kw)
    # empty images and batches, one pixel
    out = call_merge(
        sem=np.zeros((0, W), np.int32),
        ctr=np.zeros((1, 0, W), _f32),
        off=np.zeros((2, 0, W), _f32),
        **kw,
    )
    assert out.shape == (0, W)
    out = call_merge(
        sem=np.zeros((0, H, W), np.int32),
        ctr=np.zeros((0, 1, H, W), _f32),
        off=np.zeros((0, 2, H, W), _f32),
        **kw,
    )
    assert out.shape == (0, H, W)
    out = call_merge(
        sem=np.full((1, 1), 11, np.int32),
        ctr=np.ones((1, 1), _f32),
        off=np.zeros((2, 1, 1), _f32),
        **kw,
    )
    assert out.tolist() == [[11001]]


@pytest.mark.parametrize("threshold", [1e300, -1e300, 1e39])
def test_threshold_beyond_float32(threshold):
    """A threshold outside float32's range becomes +-inf in a float32 heatmap's dtype (as torch
    casts the scalar): no warning, the same answer on both backends."""
    _assert_same({"sem": SEM, "ctr": CTR, "off": OFF, "threshold": threshold, "stuff_area": 0})


# ---------------------------------------------------------------------------------------------
# inputs that could exhaust memory: run in a subprocess with a capped address space
# ---------------------------------------------------------------------------------------------


def _run_capped(code: str, gib: float = 3.0, timeout: float = 60) -> subprocess.CompletedProcess:
    prelude = textwrap.dedent(f"""
        import resource
        _cap = int({gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (_cap, _cap))
        import numpy as np
        import pdl_post
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only here")
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_fuse_sparse_instance_ids(backend):
    """Instance ids are labels, not a dense range: an id of 2**30 must not allocate per id.

    Semantics: instances are visited in increasing id order and empty ones use no number, so a
    sparse map gives the same panoptic ids as its compacted version.
    """
    proc = _run_capped(f"""
        sem = np.full((6, 8), 11, np.int32)
        sparse = np.zeros((6, 8), np.int32)
        sparse[:3] = 2**30
        sparse[4:, :3] = 7
        dense = np.zeros((6, 8), np.int32)
        dense[:3] = 2
        dense[4:, :3] = 1
        a = pdl_post.fuse(sem, sparse, stuff_area=0, backend="{backend}")
        b = pdl_post.fuse(sem, dense, stuff_area=0, backend="{backend}")
        assert (a == b).all(), (a, b)
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


_OUT_OF_MEMORY = """
    import resource, sys
    import numpy as np
    import pdl_post

    h, w = 1024, 2048
    flat = np.ones((1, h, w), np.float32)  # every pixel a peak, its own instance (top_k=None)
    sem = np.full((h, w), 11, np.int32)
    off = np.zeros((2, h, w), np.float32)
    pdl_post.merge(sem[:8, :8], flat[:, :8, :8], off[:, :8, :8], num_threads=2)  # threads started
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(open("/proc/self/statm").read().split()[0]) * 4096
    resource.setrlimit(resource.RLIMIT_AS, (used + int(float(sys.argv[1]) * 2**20), hard))
    try:
        pdl_post.merge(sem, flat, off, top_k=None, label_divisor=1 << 24, num_threads=2)
        outcome = "ok"
    except MemoryError:
        outcome = "MemoryError"
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    # Whatever failed, the next call works.
    out = pdl_post.merge(sem, flat, off, top_k=None, label_divisor=1 << 24, num_threads=2)
    expected = 11 * (1 << 24) + np.arange(1, h * w + 1).reshape(h, w)
    assert (out == expected).all()
    print(outcome)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only here")
def test_out_of_memory_raises_memory_error_never_aborts():
    """Allocations that fail inside the CPU path's OpenMP regions raise MemoryError.

    An exception leaving an OpenMP region terminates the process; a flat heatmap with top_k=None
    (2 M peaks, each pixel its own instance) under address-space limits of 10-400 MB above what
    the process holds failed inside regions (peak lists, vote strips) and aborted at 20-40 and
    250 MB before ParallelRegion. Each limit runs in a fresh process (a heap grown by earlier
    calls would move where the allocations fail)."""
    outcomes = []
    for headroom_mb in (10, 20, 25, 30, 40, 60, 100, 150, 250, 400):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_OUT_OF_MEMORY), str(headroom_mb)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        assert proc.returncode == 0, (
            f"{headroom_mb} MB: rc {proc.returncode}: {proc.stderr[-2000:]}"
        )
        outcomes.append(proc.stdout.strip())
    assert set(outcomes) <= {"ok", "MemoryError"} and "MemoryError" in outcomes, outcomes


@pytest.mark.parametrize("threads", [1, 4])
def test_first_image_error_in_a_batch(threads):
    """Where several images of a batch fail, the error is the first image's, on any thread count:
    image-parallel at 4 threads and 4 images, image 3 fails long before images 1 and 2 (4
    centres and short votes against 200 centres and votes far outside the image, each compared
    with every centre)."""
    h, w = 128, 256
    sem = np.full((4, h, w), 11, np.int32)
    sem[3] = 12
    ctr = np.zeros((4, 1, h, w), np.float32)
    ctr[1:3, 0, 4::10, 4::12] = 0.9  # 13 x 21 peaks, 200 kept
    ctr[3, 0, 8, 4::64] = 0.9  # 4 peaks
    off = np.zeros((4, 2, h, w), np.float32)
    off[1:3, 0, 0::2], off[1:3, 0, 1::2] = 1e6, -1e6  # votes towards the four corners:
    off[1:3, 1, :, 0::2], off[1:3, 1, :, 1::2] = 1e6, -1e6  # four instances, not one
    for _ in range(5):  # more than label_divisor=3 instances in images 1-3
        with pytest.raises(ValueError, match="label_divisor: class 11 has 3 or more instances"):
            pdl_post.merge(sem, ctr, off, thing_ids=[11, 12], label_divisor=3, num_threads=threads)
