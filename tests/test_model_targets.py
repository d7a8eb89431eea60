"""Training targets: the vectorised path against the numpy reference, and hand-made cases."""

import numpy as np
import pytest

pytest.importorskip("torch")

from panoptic_deeplab.data import SyntheticPanoptic
from panoptic_deeplab.targets import (
    gaussian_kernel,
    panoptic_targets,
    panoptic_targets_reference,
)

KEYS = ("semantic", "semantic_weights", "center", "offset", "center_weights", "offset_weights")


def _same(a, b):
    for k in KEYS:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("index", range(4))
def test_fast_equals_reference_synthetic(index):
    s = SyntheticPanoptic(num_images=4, seed=7)[index]
    args = (s["panoptic"], s["segment_ids"], s["category_ids"], s["iscrowd"])
    kw = {"thing_ids": (3, 4), "small_instance_area": 300}
    _same(panoptic_targets(*args, **kw), panoptic_targets_reference(*args, **kw))


@pytest.mark.parametrize("seed", range(5))
def test_fast_equals_reference_random(seed):
    rng = np.random.default_rng(seed)
    H, W = int(rng.integers(1, 70)), int(rng.integers(1, 70))
    pan = rng.integers(-1, 12, size=(H, W)) * 7  # -7 is never a segment: unlabelled
    seg = np.arange(0, 12) * 7
    keep = rng.random(12) < 0.8  # some ids absent from the segment list, some empty
    seg = np.append(seg[keep], [999])  # 999: an empty segment
    cat = rng.integers(0, 6, size=len(seg))
    crowd = rng.random(len(seg)) < 0.2
    kw = {
        "thing_ids": (2, 3, 5),
        "sigma": float(rng.choice([8.0, 2.5, 0.7])),
        "small_instance_area": 40,
        "ignore_crowd_in_semantic": bool(seed % 2),
    }
    _same(
        panoptic_targets(pan, seg, cat, crowd, **kw),
        panoptic_targets_reference(pan, seg, cat, crowd, **kw),
    )


def test_hand_made():
    pan = np.zeros((40, 60), dtype=np.int64)  # segment 0: stuff class 0
    pan[10:14, 20:26] = 5  # a 4x6 thing of class 1: centroid (11.5, 22.5)
    pan[30:40, 50:60] = 6  # a crowd thing of class 1
    pan[0, 0] = -1  # unlabelled
    t = panoptic_targets_reference(
        pan, [0, 5, 6], [0, 1, 1], [0, 0, 1], thing_ids=[1], small_instance_area=50
    )
    assert t["semantic"][0, 0] == 255 and t["semantic"][12, 21] == 1 and t["semantic"][35, 55] == 1
    # small instance weight on the 24-px thing and on the 100-px crowd thing (< 50? no: 100)
    assert t["semantic_weights"][12, 21] == 3.0
    assert t["semantic_weights"][35, 55] == 1.0
    assert t["semantic_weights"][5, 5] == 1.0
    # centre: round half to even -> (12, 22), peak value 1
    c = t["center"][0]
    assert c.max() == 1.0
    assert np.argwhere(c == 1.0).tolist() == [[12, 22]]
    assert c[12, 22 + 25] > 0 and c[12, 22 + 26] == 0 if 22 + 26 < 60 else True
    # offsets on the thing only: centroid minus pixel
    assert t["offset"][0, 10, 20] == pytest.approx(1.5)
    assert t["offset"][1, 10, 20] == pytest.approx(2.5)
    assert t["offset"][:, 35, 55].tolist() == [0.0, 0.0]  # crowd
    assert t["offset"][:, 5, 5].tolist() == [0.0, 0.0]  # stuff
    # weights
    assert t["center_weights"][5, 5] == 1 and t["center_weights"][12, 21] == 1
    assert t["center_weights"][35, 55] == 0 and t["center_weights"][0, 0] == 0
    assert t["offset_weights"][12, 21] == 1 and t["offset_weights"][5, 5] == 0
    assert t["offset_weights"][35, 55] == 0


def test_gaussian_window_and_overlap_max():
    g, r = gaussian_kernel(8.0)
    assert g.shape == (51, 51) and r == 25 and g[25, 25] == 1.0
    pan = np.zeros((80, 80), dtype=np.int64)
    pan[38:41, 30:33] = 1  # centre (39, 31)
    pan[38:41, 36:39] = 2  # centre (39, 37)
    t = panoptic_targets(pan, [1, 2], [1, 1], thing_ids=[1])
    c = t["center"][0]
    assert c[39, 31] == 1.0 and c[39, 37] == 1.0
    expect = np.float32(np.exp(-9 / 128))  # 3 px from the nearer centre
    assert c[39, 34] == expect
    # clipped at the image border, no wrap-around
    pan = np.zeros((10, 10), dtype=np.int64)
    pan[0, 0] = 1
    t = panoptic_targets(pan, [0, 1], [0, 1], thing_ids=[1])
    assert t["center"][0, 0, 0] == 1.0
    assert t["center"][0, 9, 9] == np.float32(np.exp(-162 / 128))


def test_bad_input():
    with pytest.raises(ValueError, match="panoptic"):
        panoptic_targets(np.zeros((2, 2, 2), dtype=np.int64), [0], [0], thing_ids=[])
    with pytest.raises(ValueError, match="same length"):
        panoptic_targets(np.zeros((2, 2), dtype=np.int64), [0, 1], [0], thing_ids=[])
    with pytest.raises(ValueError, match="unique"):
        panoptic_targets(np.zeros((2, 2), dtype=np.int64), [0, 0], [0, 0], thing_ids=[])
