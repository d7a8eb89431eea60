"""pdl_post.targets.panoptic_targets (compiled) against the numpy reference, bit for bit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pdl_post.synthetic import make_scene
from pdl_post.targets import gaussian_radius, panoptic_targets

try:  # the package's __init__ imports torch; the reference itself is numpy only
    from panoptic_deeplab.targets import panoptic_targets_reference
except ImportError:
    _path = Path(__file__).resolve().parents[1] / "models" / "panoptic_deeplab" / "targets.py"
    if not _path.exists():
        pytest.skip("panoptic_deeplab.targets is not available", allow_module_level=True)
    _spec = importlib.util.spec_from_file_location("_targets_reference", _path)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    panoptic_targets_reference = _module.panoptic_targets_reference

KEYS = ("semantic", "semantic_weights", "center", "offset", "center_weights", "offset_weights")
THINGS = tuple(range(11, 19))


def _same(a, b):
    assert set(a) == set(KEYS) == set(b)
    for k in KEYS:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        # bit-identical, -0.0 included
        assert a[k].tobytes() == b[k].tobytes(), k


def _check(pan, seg, cat, crowd=None, threads=(1, 2, 3), **kw):
    expected = panoptic_targets_reference(pan, seg, cat, crowd, **kw)
    for t in threads:
        _same(panoptic_targets(pan, seg, cat, crowd, num_threads=t, **kw), expected)
    return expected


def _scene(h, w, n, seed=0):
    pan = make_scene(h, w, n, seed=seed).panoptic_gt
    seg = np.unique(pan)
    return pan, seg, seg // 1000


@pytest.mark.parametrize(("h", "w", "n"), [(1, 1, 0), (7, 300, 3), (64, 96, 5), (200, 300, 25)])
def test_synthetic_scenes(h, w, n):
    pan, seg, cat = _scene(h, w, n, seed=h)
    _check(pan, seg, cat, thing_ids=THINGS, small_instance_area=300)


def test_scene_default_options():
    pan, seg, cat = _scene(512, 1024, 40, seed=3)
    _check(pan, seg, cat, threads=(1, 2), thing_ids=THINGS)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ignore_crowd", [False, True])
def test_random_maps(seed, ignore_crowd):
    rng = np.random.default_rng(seed)
    H, W = int(rng.integers(1, 90)), int(rng.integers(1, 90))
    # blocky maps: runs of equal ids, as in real label maps, plus isolated pixels
    coarse = rng.integers(-1, 14, size=(H // 8 + 1, W // 8 + 1)) * 7
    pan = np.kron(coarse, np.ones((8, 8), dtype=np.int64))[:H, :W]
    noise = rng.random((H, W)) < 0.05
    pan[noise] = rng.integers(-1, 14, size=int(noise.sum())) * 7  # -7: unlabelled
    seg = np.arange(14) * 7
    keep = rng.random(14) < 0.8  # some ids absent from the list: unlabelled pixels
    seg = np.append(seg[keep], [999, 1006])  # segments with 0 pixels
    rng.shuffle(seg)
    cat = rng.integers(0, 6, size=len(seg))
    crowd = rng.random(len(seg)) < 0.25
    _check(
        pan,
        seg,
        cat,
        crowd,
        thing_ids=(2, 3, 5),
        sigma=float(rng.choice([8.0, 2.5, 0.7, 1 / 6, 30.0])),
        small_instance_area=int(rng.integers(0, 80)),
        small_instance_weight=float(rng.choice([3.0, 0.1, 2.0])),
        ignore_label=int(rng.choice([255, -1])),
        ignore_crowd_in_semantic=ignore_crowd,
    )


@pytest.mark.parametrize("sigma", [8.0, 0.5, 1.5, 2.5, 3.3, 12.0, 500.0])
def test_gaussians_clipped_and_overlapping(sigma):
    pan = np.zeros((70, 90), dtype=np.int32)
    pan[0:3, 0:2] = 1  # at the top-left corner: window clipped on two sides
    pan[66:70, 85:90] = 2  # bottom-right corner
    pan[30:33, 40:43] = 3  # two close centres: overlapping windows keep the max
    pan[31:34, 45:47] = 4
    pan[10:12, 60:61] = 5  # centroid (10.5, 60): rounds half to even -> row 10
    pan[51:53, 20:21] = 6  # centroid (51.5, 20): rounds to row 52
    seg = np.arange(7)
    _check(pan, seg, [0, 1, 1, 1, 1, 1, 1], thing_ids=[1], sigma=sigma)
    assert gaussian_radius(sigma) == round(3 * sigma + 1)


def test_half_pixel_centroids_round_to_even():
    pan = np.zeros((40, 40), dtype=np.int64)
    pan[10:12, 20:22] = 1  # centroid (10.5, 20.5) -> (10, 20)
    pan[25:27, 31:33] = 2  # centroid (25.5, 31.5) -> (26, 32)
    t = _check(pan, [0, 1, 2], [0, 1, 1], thing_ids=[1])
    assert t["center"][0, 10, 20] == 1.0 and t["center"][0, 26, 32] == 1.0


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64]
)
def test_panoptic_dtypes(dtype):
    rng = np.random.default_rng(1)
    pan = np.kron(rng.integers(0, 6, size=(6, 8)), np.ones((5, 5), dtype=np.int64)).astype(dtype)
    _check(pan, [0, 1, 2, 3, 4, 100], [0, 1, 2, 1, 2, 1], [0, 0, 0, 1, 0, 0], thing_ids=[1, 2])


def test_large_and_sparse_ids():
    """Ids far apart (no direct table) and ids outside the dtype's range."""
    rng = np.random.default_rng(2)
    ids = np.array([-(2**62), -5, 0, 2**40, 2**62], dtype=np.int64)
    pan = ids[np.kron(rng.integers(0, 5, (5, 7)), np.ones((6, 6), dtype=np.int64))]
    _check(pan, ids, [1, 0, 1, 2, 1], [0, 1, 0, 0, 0], thing_ids=[1])
    small = pan.clip(-100, 100).astype(np.int16)
    _check(small, [-100, -5, 0, 100, 2**40], [1, 0, 1, 2, 1], thing_ids=[1, 2])


def test_non_contiguous_input():
    pan, seg, cat = _scene(120, 160, 8, seed=4)
    big = np.zeros((240, 320), dtype=pan.dtype)
    big[::2, ::2] = pan
    _check(big[::2, ::2], seg, cat, thing_ids=THINGS, small_instance_area=500)
    _check(pan.T, seg, cat, thing_ids=THINGS)  # transposed view
    _check(pan[::-1, ::-1], seg, cat, thing_ids=THINGS)  # negative strides


def test_crowd_and_empty_segments():
    pan = np.full((30, 40), 9, dtype=np.int32)
    pan[5:15, 5:15] = 1  # thing
    pan[20:28, 20:30] = 2  # crowd thing: no centre, no offsets, semantic weight still applies
    pan[0, :] = 77  # unlabelled
    seg, cat = [9, 1, 2, 3], [0, 1, 1, 1]  # segment 3: no pixels
    for ignore_crowd in (False, True):
        t = _check(
            pan, seg, cat, [0, 0, 1, 0], thing_ids=[1], ignore_crowd_in_semantic=ignore_crowd
        )
        assert t["semantic"][22, 22] == (255 if ignore_crowd else 1)
        assert t["semantic_weights"][22, 22] == 3.0 and t["offset_weights"][22, 22] == 0
    # no segments at all: everything unlabelled
    _check(pan, [], [], thing_ids=[1])


def test_inputs_are_not_modified():
    pan, seg, cat = _scene(50, 60, 4)
    before = pan.copy()
    panoptic_targets(pan, seg, cat, thing_ids=THINGS)
    np.testing.assert_array_equal(pan, before)


def test_model_fast_path_uses_compiled():
    pytest.importorskip("torch")
    from panoptic_deeplab.targets import panoptic_targets as model_targets
    from panoptic_deeplab.targets import panoptic_targets_numpy

    pan, seg, cat = _scene(80, 100, 6)
    ours = panoptic_targets(pan, seg, cat, thing_ids=THINGS)
    _same(model_targets(pan, seg, cat, thing_ids=THINGS), ours)
    _same(panoptic_targets_numpy(pan, seg, cat, thing_ids=THINGS), ours)


Z = np.zeros((4, 5), dtype=np.int32)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.zeros((2, 2, 2), np.int32), [0], [0]), {}, ValueError, "panoptic: expected a 2-D"),
        ((Z.astype(np.float32), [0], [0]), {}, TypeError, "panoptic: expected integer"),
        ((Z.astype(np.uint64), [0], [0]), {}, TypeError, "panoptic: .*uint64"),
        ((Z.astype(bool), [0], [0]), {}, TypeError, "panoptic: .*bool"),
        (("abc", [0], [0]), {}, TypeError, "panoptic: expected an array"),
        ((Z, [0, 1], [0]), {}, ValueError, "category_ids: .*same length"),
        ((Z, [0, 1], [0, 1], [0]), {}, ValueError, "iscrowd: .*same length"),
        ((Z, [0, 0], [0, 1]), {}, ValueError, "segment_ids: expected unique ids, got \\[0\\]"),
        ((Z, [0.5], [0]), {}, TypeError, "segment_ids: expected integers, got dtype float64"),
        ((Z, [[0]], [0]), {}, ValueError, "segment_ids: expected a 1-D"),
        ((Z, [0], ["a"]), {}, TypeError, "category_ids: expected integers"),
        ((Z, [0], [0]), {"sigma": 0.0}, ValueError, "sigma: expected a finite number > 0"),
        ((Z, [0], [0]), {"sigma": float("inf")}, ValueError, "sigma: expected a finite"),
        ((Z, [0], [0]), {"sigma": "8"}, TypeError, "sigma: expected a real number"),
        ((Z, [0], [0]), {"small_instance_area": -1}, ValueError, "small_instance_area"),
        ((Z, [0], [0]), {"small_instance_area": 2.5}, TypeError, "small_instance_area"),
        ((Z, [0], [0]), {"small_instance_weight": None}, TypeError, "small_instance_weight"),
        ((Z, [0], [0]), {"ignore_label": 1.5}, TypeError, "ignore_label: expected an integer"),
        ((Z, [0], [0]), {"ignore_crowd_in_semantic": 1}, TypeError, "ignore_crowd_in_semantic"),
        ((Z, [0], [0]), {"num_threads": 0}, ValueError, "num_threads: expected an integer >= 1"),
        ((Z, [0], [0]), {"thing_ids": [-1]}, ValueError, "thing_ids: expected an integer >= 0"),
        ((Z, [0], [0]), {"thing_ids": None}, TypeError, "thing_ids: expected an iterable"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    kwargs = {"thing_ids": [1], **kwargs}
    with pytest.raises(error, match=match):
        panoptic_targets(*args, **kwargs)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        panoptic_targets(Z, [0], [0], None, [1])  # thing_ids passed positionally


def _buffers(h, w, fill=7):
    """Output buffers pre-filled with garbage, so a test sees every element overwritten."""
    shapes = {"center": (1, h, w), "offset": (2, h, w)}
    return {
        k: np.full(shapes.get(k, (h, w)), fill, dtype=np.int64 if k == "semantic" else np.float32)
        for k in KEYS
    }


def test_out_buffers_are_filled_and_returned():
    pan, seg, cat = _scene(200, 300, 25, seed=5)
    expected = panoptic_targets_reference(pan, seg, cat, thing_ids=THINGS)
    out = _buffers(200, 300)
    arrays = dict(out)
    for threads in (1, 2):
        result = panoptic_targets(pan, seg, cat, thing_ids=THINGS, out=out, num_threads=threads)
        assert result is out
        assert all(result[k] is arrays[k] for k in KEYS)
        _same(result, expected)
    # Reused for a different map: nothing of the first one survives.
    pan2, seg2, cat2 = _scene(200, 300, 3, seed=6)
    _same(
        panoptic_targets(pan2, seg2, cat2, thing_ids=THINGS, out=out),
        panoptic_targets_reference(pan2, seg2, cat2, thing_ids=THINGS),
    )


def test_out_buffers_with_row_padding():
    pan, seg, cat = _scene(64, 96, 5, seed=2)
    padded = {k: np.full((*v.shape[:-1], 128), 9, v.dtype) for k, v in _buffers(64, 96).items()}
    out = {k: v[..., :96] for k, v in padded.items()}
    _same(
        panoptic_targets(pan, seg, cat, thing_ids=THINGS, out=out),
        panoptic_targets_reference(pan, seg, cat, thing_ids=THINGS),
    )
    for v in padded.values():  # the padding columns are left alone
        assert (v[..., 96:] == 9).all()


def _bad_out(**changes):
    out = _buffers(4, 5)
    for key, value in changes.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("out", "error", "match"),
    [
        ([1, 2], TypeError, "out: expected a dict of numpy arrays"),
        (_bad_out(center=None), ValueError, "out: expected exactly the keys"),
        (_bad_out(semantic=[0] * 20), TypeError, r"out\['semantic'\]: expected a numpy array"),
        (
            _bad_out(semantic=np.zeros((4, 5), np.int32)),
            TypeError,
            r"out\['semantic'\]: expected dtype int64, got int32",
        ),
        (
            _bad_out(center=np.zeros((4, 5), np.float32)),
            ValueError,
            r"out\['center'\]: expected shape \[1, 4, 5\], got \[4, 5\]",
        ),
        (
            _bad_out(offset_weights=np.zeros((4, 10), np.float32)[:, ::2]),
            ValueError,
            r"out\['offset_weights'\]: expected contiguous rows",
        ),
        (
            _bad_out(center_weights=np.broadcast_to(np.float32(0), (4, 5))),
            ValueError,
            r"out\['center_weights'\]: expected a writeable array",
        ),
    ],
)
def test_bad_out(out, error, match):
    with pytest.raises(error, match=match):
        panoptic_targets(Z, [0], [0], thing_ids=[1], out=out)


def test_out_must_not_overlap():
    out = _buffers(4, 5)
    out["offset_weights"] = out["center_weights"]
    with pytest.raises(ValueError, match=r"out\['offset_weights'\]: must not overlap"):
        panoptic_targets(Z, [0], [0], thing_ids=[1], out=out)
    pan = np.zeros((4, 5), np.int64)
    out = _buffers(4, 5)
    out["semantic"] = pan
    with pytest.raises(ValueError, match=r"out\['semantic'\]: must not overlap panoptic"):
        panoptic_targets(pan, [0], [0], thing_ids=[1], out=out)
