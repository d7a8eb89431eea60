"""SemanticEvaluator: the confusion matrix against a plain numpy count, scores by hand."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from pdl_post.eval import SemanticEvaluator, SemanticStats


def _naive_confusion(pred, gt, n, ignore):
    conf = np.zeros((n, n), np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        if g != ignore:
            conf[g, p] += 1
    return conf


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_confusion_equals_naive(dtype):
    rng = np.random.default_rng(0)
    ev = SemanticEvaluator(7, ignore_label=255)
    total = np.zeros((7, 7), np.int64)
    for _ in range(5):
        gt = rng.integers(0, 7, (13, 17))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.7, np.minimum(gt, 6), rng.integers(0, 7, gt.shape))
        s = ev.update(pred.astype(dtype), gt.astype(dtype if dtype != np.uint8 else np.uint8))
        naive = _naive_confusion(pred, gt, 7, 255)
        np.testing.assert_array_equal(s.confusion, naive)
        total += naive
    np.testing.assert_array_equal(ev.compute()["confusion"], total)
    assert ev.num_images == 5


def test_scores_by_hand():
    gt = np.array([[0, 0, 1, 1, 2, 9]])
    pred = np.array([[0, 1, 1, 1, 0, 2]])
    res = SemanticEvaluator(4, ignore_label=9).update(pred, gt).summarize()
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: tp 0,
    # gt 1, pred 0 -> 0; class 3: nothing -> NaN, left out.
    assert res["per_class_iou"][:3] == [1 / 3, 2 / 3, 0.0] and math.isnan(res["per_class_iou"][3])
    assert res["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0.0) / 3, rel=1e-15)
    assert res["pixel_accuracy"] == 3 / 5
    assert res["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3, rel=1e-15)
    assert res["fwiou"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3, rel=1e-15)


def test_stats_merge():
    rng = np.random.default_rng(1)
    ev = SemanticEvaluator(3, ignore_label=None)
    parts = [
        ev.image_stats(rng.integers(0, 3, (4, 5)), rng.integers(0, 3, (4, 5))) for _ in range(3)
    ]
    total = sum(parts)
    assert isinstance(total, SemanticStats) and total.confusion.sum() == 60
    assert pickle.loads(pickle.dumps(total)) == total
    assert SemanticStats.from_dict(total.to_dict()) == total
    ev.add_stats(total)
    assert ev.stats == total
    ev.reset()
    assert ev.stats.confusion.sum() == 0
    with pytest.raises(ValueError, match=r"(3 and 4|4 and 3) classes"):
        total + SemanticStats(4)


def test_torch_input():
    torch = pytest.importorskip("torch")
    ev = SemanticEvaluator(3)
    s = ev.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 255]]))
    assert s.confusion.sum() == 2


@pytest.mark.parametrize(
    "pred, gt, exc, message",
    [
        (np.array([[0, 5]]), np.array([[0, 1]]), ValueError, "pred: expected labels in 0..2"),
        (
            np.array([[0, 1]]),
            np.array([[0, 7]]),
            ValueError,
            "gt: expected labels in 0..2 or ignore_label=255",
        ),
        (np.array([[0, 1]]), np.array([[0, 1, 1]]), ValueError, "the same shape"),
        (np.array([[0.0, 1.0]]), np.array([[0, 1]]), TypeError, "integer label map"),
    ],
)
def test_bad_input(pred, gt, exc, message):
    with pytest.raises(exc, match=message):
        SemanticEvaluator(3).update(pred, gt)


def test_prediction_on_ignored_pixel_is_not_checked():
    s = SemanticEvaluator(3).update(np.array([[99, 1]]), np.array([[255, 1]]))
    assert s.confusion.sum() == 1


@pytest.mark.parametrize(
    "args, kwargs, exc, message",
    [
        ((0,), {}, ValueError, "num_classes"),
        (("3",), {}, TypeError, "num_classes"),
        ((3,), {"ignore_label": 1}, ValueError, "ignore_label"),
        ((3,), {"ignore_label": "x"}, TypeError, "ignore_label"),
    ],
)
def test_bad_arguments(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        SemanticEvaluator(*args, **kwargs)
