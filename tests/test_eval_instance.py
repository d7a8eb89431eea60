"""pdl_post.eval.InstanceEvaluator: AP over id maps, against the Cityscapes instance evaluation.

``cityscapes_instance`` / ``CityscapesInstanceStats`` match cityscapesScripts (test_eval_cityscapes);
here the same scenes are given to both, as Cityscapes instance masks and as id maps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdl_post.eval import CityscapesInstanceStats, InstanceEvaluator
from pdl_post.eval.cityscapes import _VOID_IDS, INSTANCE_CLASSES, OVERLAPS
from pdl_post.io import CITYSCAPES_LABELS

NAME_TO_ID = {lab.name: lab.id for lab in CITYSCAPES_LABELS}
THINGS = [NAME_TO_ID[name] for name in INSTANCE_CLASSES]  # 24..28, 31..33


def _random_scene(rng, h=96, w=128):
    """A Cityscapes instanceIds map and a predicted id map (class * 1000 + k) with scores."""
    gt = np.full((h, w), 7, np.int64)  # road
    gt[: h // 8] = 1  # ego vehicle: void
    counters: dict[int, int] = {}
    for _ in range(rng.integers(3, 12)):
        c = int(rng.choice([24, 25, 26, 26, 28, 29, 33]))  # 29 (caravan) is not evaluated
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        hh, ww = int(rng.integers(3, 30)), int(rng.integers(3, 40))
        if rng.random() < 0.15:
            gt[y : y + hh, x : x + ww] = c  # a group (crowd region)
        else:
            counters[c] = counters.get(c, 0) + 1
            gt[y : y + hh, x : x + ww] = c * 1000 + counters[c]
    pred = np.full((h, w), -1, np.int64)
    scores = {}
    k = 0
    inst = [v for v in np.unique(gt) if v >= 1000]
    for v in inst:
        ys, xs = np.nonzero(gt == v)
        dy, dx = rng.integers(-3, 4, size=2)
        c = int(v // 1000) if rng.random() < 0.85 else int(rng.choice(THINGS))
        k += 1
        pid = c * 1000 + k
        pred[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] = pid
        scores[pid] = float(rng.random())
    for _ in range(rng.integers(0, 4)):  # false positives, some on void
        c = int(rng.choice(THINGS))
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        k += 1
        pid = c * 1000 + k
        pred[y : y + int(rng.integers(3, 20)), x : x + int(rng.integers(3, 20))] = pid
        scores[pid] = float(rng.random())
    pred[-4:, -4:] = 26000  # a thing segment without instance: not a detection
    return gt, pred, scores


def _as_id_map(gt):
    """Cityscapes instanceIds -> id map: label ids below 1000 become class * 1000 (groups and
    stuff) or void (-1) for the labels Cityscapes ignores."""
    out = np.where(gt < 1000, gt * 1000, gt)
    return np.where((gt < 1000) & np.isin(gt, _VOID_IDS), -1, out)


def _as_masks(pred, scores):
    """Id map -> Cityscapes predictions (mask, label id, confidence), detections only."""
    return [
        ((pred == pid).astype(np.uint8), int(pid // 1000), scores[pid])
        for pid in np.unique(pred)
        if pid > 0 and pid % 1000 and pid // 1000 in THINGS
    ]


@pytest.mark.parametrize("seed", range(8))
def test_matches_cityscapes_instance_evaluation(seed):
    rng = np.random.default_rng(seed)
    ours = InstanceEvaluator(THINGS, label_divisor=1000, void_label=-1)
    theirs = CityscapesInstanceStats()
    for i in range(3):
        gt, pred, scores = _random_scene(rng)
        ours.update(pred, _as_id_map(gt), scores)
        theirs.add_image(gt, _as_masks(pred, scores), f"image {i}")
    a, b = ours.compute(), theirs.summarize()
    assert a["num_images"] == b["num_images"] == 3
    np.testing.assert_array_equal(a["ap_matrix"], b["ap_matrix"])
    assert (math.isnan(a["ap"]) and math.isnan(b["ap"])) or a["ap"] == b["ap"]
    for c, name in zip(THINGS, INSTANCE_CLASSES):
        np.testing.assert_array_equal(
            [a["per_class"][c]["ap"], a["per_class"][c]["ap50"]],
            [b["per_class"][name]["ap"], b["per_class"][name]["ap50"]],
        )


def _blocks():
    gt = np.full((40, 60), 0, np.int32)  # class 0: stuff
    gt[0:10, 0:20] = 11001
    gt[20:30, 0:20] = 11002
    gt[0:15, 30:45] = 13001
    gt[30:40, 40:60] = -1  # void
    return gt


def test_perfect_prediction_and_missing_classes():
    gt = _blocks()
    ev = InstanceEvaluator([11, 13, 17], label_divisor=1000)
    ev.update(gt, gt)  # scores default to 1.0
    res = ev.compute()
    assert res["per_class"][11] == {"ap": 1.0, "ap50": 1.0}
    assert res["per_class"][13] == {"ap": 1.0, "ap50": 1.0}
    assert math.isnan(res["per_class"][17]["ap"])  # no GT: left out of the mean
    assert res["ap"] == 1.0 and res["ap50"] == 1.0
    assert res["ap_matrix"].shape == (3, len(OVERLAPS))


def test_ranking_false_positive_above_true_positive():
    gt = _blocks()
    pred = np.zeros_like(gt)
    pred[0:10, 0:20] = 11001  # TP
    pred[20:30, 0:20] = 11002  # TP
    pred[30:38, 0:10] = 11003  # FP on stuff
    ev = InstanceEvaluator([11], label_divisor=1000)
    ev.update(pred, gt, {11001: 0.9, 11002: 0.8, 11003: 0.1})
    assert ev.compute()["ap"] == 1.0  # the FP ranks last
    ev.reset()
    ev.update(pred, gt, {11001: 0.9, 11002: 0.8, 11003: 0.95})
    # Curve: (p, r) = (2/3, 1) at 0.8, (1/2, 1/2) at 0.9, (0, 0) at 0.95 and the artificial
    # (1, 0); step widths 0.5 * (r[i-1] - r[i+1]) = 0.25, 0.5, 0.25, 0.
    assert ev.compute()["ap"] == pytest.approx(2 / 3 * 0.25 + 0.5 * 0.5, rel=1e-15)


def test_void_crowd_and_small_are_ignored():
    gt = _blocks()
    gt[20:25, 30:40] = 11000  # a crowd region of class 11
    gt[36:40, 0:5] = 11005  # 20 px: below min_region_size
    pred = gt.copy()
    pred[30:40, 40:60] = 11010  # on void
    pred[20:25, 30:40] = 11011  # on the crowd region
    pred[36:40, 0:5] = 11012  # on the small instance
    scores = {11001: 0.5, 11002: 0.5, 13001: 0.5, 11010: 0.99, 11011: 0.98, 11012: 0.97}
    ev = InstanceEvaluator([11, 13], label_divisor=1000, min_region_size=100)
    ev.update(pred, gt, scores)
    assert ev.compute()["per_class"][11]["ap"] == 1.0
    # Without the crowd rule, 11000 is an instance (of 50 px < 100: still ignored); with
    # min_region_size 0 the small instance counts and 11012 is its TP.
    ev = InstanceEvaluator([11], label_divisor=1000, min_region_size=0, gt_crowd=False)
    ev.update(pred, gt, scores)
    assert ev.compute()["per_class"][11]["ap"] == 1.0
    # The void-only detection is ignored, but on a non-void pixel it is a false positive.
    gt2 = gt.copy()
    gt2[30:40, 40:60] = 0
    ev = InstanceEvaluator([11], label_divisor=1000)
    ev.update(pred, gt2, scores)
    assert ev.compute()["per_class"][11]["ap"] < 1.0


def test_torch_and_batchless_inputs():
    torch = pytest.importorskip("torch")
    gt = _blocks()
    ev = InstanceEvaluator([11, 13], label_divisor=1000)
    ev.update(torch.from_numpy(gt), torch.from_numpy(gt))
    assert ev.compute()["ap"] == 1.0 and ev.num_images == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"thing_ids": 11}, TypeError, "thing_ids: expected an iterable"),
        ({"thing_ids": [11, 11]}, ValueError, "thing_ids: expected unique"),
        ({"thing_ids": [-1]}, ValueError, "thing_ids: expected an integer >= 0"),
        (
            {"thing_ids": [11], "label_divisor": 0},
            ValueError,
            "label_divisor: expected an integer >= 1",
        ),
        ({"thing_ids": [11], "void_label": 1.5}, TypeError, "void_label: expected an integer, got"),
        ({"thing_ids": [11], "min_region_size": -1}, ValueError, "min_region_size"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        InstanceEvaluator(**kwargs)


def test_bad_updates():
    gt = _blocks()
    ev = InstanceEvaluator([11, 13], label_divisor=1000)
    with pytest.raises(ValueError, match=r"pred, gt: expected the same shape"):
        ev.update(gt[:10], gt)
    with pytest.raises(ValueError, match=r"pred: expected shape \(H, W\)"):
        ev.update(gt[None], gt)
    with pytest.raises(TypeError, match="gt: expected an integer id map"):
        ev.update(gt, gt.astype(np.float32))
    with pytest.raises(ValueError, match="scores: no score for the predicted thing segment 11002"):
        ev.update(gt, gt, {11001: 0.5, 13001: 0.5})
    with pytest.raises(ValueError, match="scores: the score of segment 11001 is NaN"):
        ev.update(gt, gt, {11001: math.nan, 11002: 0.5, 13001: 0.5})
    with pytest.raises(TypeError, match="scores: expected a mapping"):
        ev.update(gt, gt, [0.5])
    assert ev.num_images == 0  # nothing was added by the failed calls
