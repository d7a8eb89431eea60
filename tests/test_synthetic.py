"""Tests of the seeded synthetic scene generator (pdl_post.synthetic)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pdl_post import synthetic

THING = tuple(range(11, 19))


def arrays(scene):
    return [scene.sem, scene.ctr, scene.off, scene.panoptic_gt, scene.centers_gt]


def test_same_seed_same_scene_other_seed_other_scene():
    a = synthetic.make_scene(64, 96, 12, seed=4, logits=True)
    b = synthetic.make_scene(64, 96, 12, seed=4, logits=True)
    for x, y in zip([*arrays(a), a.logits], [*arrays(b), b.logits]):
        np.testing.assert_array_equal(x, y)
    c = synthetic.make_scene(64, 96, 12, seed=5)
    assert not np.array_equal(a.panoptic_gt, c.panoptic_gt)


def test_shapes_and_default_dtypes():
    s = synthetic.make_scene(40, 70, 6, seed=1)
    assert s.sem.shape == (40, 70) and s.sem.dtype == np.int32
    assert s.ctr.shape == (1, 40, 70) and s.ctr.dtype == np.float32
    assert s.off.shape == (2, 40, 70) and s.off.dtype == np.float32
    assert s.panoptic_gt.shape == (40, 70) and s.panoptic_gt.dtype == np.int32
    assert s.centers_gt.dtype == np.int64 and s.centers_gt.shape[1] == 2
    assert s.logits is None and s.sem_input is s.sem
    assert s.thing_ids == THING and s.num_classes == 19 and s.label_divisor == 1000


def test_dtype_options_and_logits():
    s = synthetic.make_scene(
        32,
        48,
        5,
        seed=2,
        sem_dtype=np.uint8,
        ctr_dtype=np.float64,
        off_dtype=np.float64,
        logits=True,
    )
    assert s.sem.dtype == np.uint8 and s.ctr.dtype == np.float64 and s.off.dtype == np.float64
    assert s.logits.shape == (19, 32, 48) and s.logits.dtype == np.float32
    assert s.sem_input is s.logits
    # the argmax is strict and unique: the label's logit exceeds every other one
    np.testing.assert_array_equal(s.logits.argmax(axis=0), s.sem)
    top2 = np.sort(s.logits, axis=0)[-2:]
    assert (top2[1] > top2[0]).all()


def test_ground_truth_is_consistent():
    s = synthetic.make_scene(96, 160, 20, seed=3, offset_noise=0.0, semantic_noise=0.0)
    cls, num = s.panoptic_gt // 1000, s.panoptic_gt % 1000
    np.testing.assert_array_equal(s.sem, cls)  # no semantic noise: labels = ground truth
    assert set(np.unique(cls[num > 0]).tolist()) <= set(THING)
    assert not np.isin(cls[num == 0], THING).any()  # thing pixels all belong to an instance
    assert len(np.unique(s.panoptic_gt[num > 0])) == len(s.centers_gt)
    # centres are row-major, distinct, inside the image, at heatmap value exactly 1
    c = s.centers_gt
    assert (np.lexsort((c[:, 1], c[:, 0])) == np.arange(len(c))).all()
    assert len({tuple(p) for p in c.tolist()}) == len(c)
    assert (s.ctr[0][c[:, 0], c[:, 1]] == 1.0).all()
    assert s.ctr.max() <= 1.0 and s.ctr.min() >= 0.0
    # noise-free offsets point every thing pixel exactly at its instance's centre
    ys, xs = np.nonzero(num > 0)
    ty = ys + s.off[0, ys, xs]
    tx = xs + s.off[1, ys, xs]
    ids = s.panoptic_gt[ys, xs]
    for inst_id in np.unique(ids):
        sel = ids == inst_id
        assert len(np.unique(ty[sel])) == 1 and len(np.unique(tx[sel])) == 1
    assert (s.off[:, num == 0] == 0).all()
    # instance numbers count from 1 per class in centre order
    for c_id in np.unique(cls[num > 0]):
        nums = np.unique(num[(cls == c_id) & (num > 0)])
        np.testing.assert_array_equal(nums, np.arange(1, len(nums) + 1))


def test_noise_options():
    clean = synthetic.make_scene(64, 128, 10, seed=6, offset_noise=0.0, semantic_noise=0.0)
    noisy = synthetic.make_scene(64, 128, 10, seed=6, offset_noise=1.0, semantic_noise=0.1)
    np.testing.assert_array_equal(clean.panoptic_gt, noisy.panoptic_gt)
    flipped = (noisy.sem != clean.sem).mean()
    assert 0.05 < flipped < 0.1  # 10 % drawn, some redrawn to their own class
    assert 0.5 < np.std(noisy.off - clean.off) < 1.5
    rounded = synthetic.make_scene(64, 128, 10, seed=6, offset_noise=1.0, integer_offsets=True)
    np.testing.assert_array_equal(rounded.off, np.rint(rounded.off))


def test_other_class_sets_and_no_instances():
    s = synthetic.make_scene(32, 32, 4, seed=0, num_classes=5, thing_ids=[3, 4])
    assert set(np.unique(s.panoptic_gt // 1000).tolist()) <= {0, 1, 2, 3, 4}
    assert s.thing_ids == (3, 4)
    e = synthetic.make_scene(16, 24, 0, seed=0)
    assert e.centers_gt.shape == (0, 2) and (e.ctr == 0).all() and (e.panoptic_gt % 1000 == 0).all()
    tiny = synthetic.make_scene(1, 1, 3, seed=0)
    assert tiny.sem.shape == (1, 1)


def test_make_batch_stacks_scenes():
    b = synthetic.make_batch(3, 24, 40, 4, seed=9, logits=True)
    assert b.sem.shape == (3, 24, 40) and b.ctr.shape == (3, 1, 24, 40)
    assert b.off.shape == (3, 2, 24, 40) and b.panoptic_gt.shape == (3, 24, 40)
    assert b.logits.shape == (3, 19, 24, 40) and len(b.centers_gt) == 3
    one = synthetic.make_scene(24, 40, 4, seed=(9, 1), logits=True)
    np.testing.assert_array_equal(b.sem[1], one.sem)
    np.testing.assert_array_equal(b.off[1], one.off)
    np.testing.assert_array_equal(b.logits[1], one.logits)
    np.testing.assert_array_equal(b.centers_gt[1], one.centers_gt)
    assert not np.array_equal(b.sem[0], b.sem[1])
    assert synthetic.make_batch(2, 8, 8, 1, seed=9).logits is None


@pytest.mark.slow
def test_unbounded_centres_at_full_resolution_is_fast():
    t0 = time.perf_counter()
    s = synthetic.make_scene(2048, 4096, 3000, seed=0)
    elapsed = time.perf_counter() - t0
    assert len(s.centers_gt) > 2500
    assert elapsed < 20  # ~3 s alone on a 2-core machine; generous for a busy one
