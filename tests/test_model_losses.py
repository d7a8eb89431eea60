"""Losses on hand-made cases."""

import math

import pytest

torch = pytest.importorskip("torch")

from panoptic_deeplab.losses import (  # noqa: E402
    PanopticDeepLabLoss,
    center_loss,
    offset_loss,
    semantic_loss,
)


def test_semantic_topk_hand_made():
    # 2 classes, 10 pixels; logits chosen so the per-pixel CE is known.
    logits = torch.zeros(1, 2, 1, 10)
    labels = torch.zeros(1, 1, 10, dtype=torch.long)
    logits[0, 1, 0, :] = torch.arange(10, dtype=torch.float32)  # CE_i = log(1 + e^i)
    ce = [math.log1p(math.exp(i)) for i in range(10)]
    assert semantic_loss(logits, labels, top_k_percent=1.0).item() == pytest.approx(sum(ce) / 10)
    # top 20 % of 10 pixels = the 2 hardest
    assert semantic_loss(logits, labels, top_k_percent=0.2).item() == pytest.approx(
        (ce[9] + ce[8]) / 2, rel=1e-6
    )
    # weights multiply before the selection: x3 on pixel 0 does not make it hard enough
    w = torch.ones(1, 1, 10)
    w[0, 0, 0] = 3.0
    w[0, 0, 9] = 0.0
    got = semantic_loss(logits, labels, w, top_k_percent=0.2).item()
    assert got == pytest.approx((ce[8] + ce[7]) / 2, rel=1e-6)
    # ignored pixels contribute 0 but stay in the pool
    labels[0, 0, 9] = 255
    got = semantic_loss(logits, labels, top_k_percent=1.0).item()
    assert got == pytest.approx(sum(ce[:9]) / 10, rel=1e-6)


def test_center_and_offset_weighted_means():
    pred = torch.zeros(1, 1, 2, 2)
    tgt = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    w = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    assert center_loss(pred, tgt, w).item() == pytest.approx((1 + 0.25 + 0) / 3)
    opred = torch.zeros(1, 2, 2, 2)
    otgt = torch.zeros(1, 2, 2, 2)
    otgt[0, 0, 0, 0] = 2.0
    otgt[0, 1, 0, 0] = -3.0
    otgt[0, 0, 1, 0] = 10.0  # weight 0
    assert offset_loss(opred, otgt, w).item() == pytest.approx(5.0 / 3)


def test_zero_weights_give_zero_with_grad():
    pred = torch.randn(1, 1, 3, 3, requires_grad=True)
    loss = center_loss(pred, torch.ones(1, 1, 3, 3), torch.zeros(1, 3, 3))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None


def test_total_uses_paper_weights():
    crit = PanopticDeepLabLoss()
    out = {
        "semantic": torch.zeros(1, 3, 2, 2),
        "center": torch.zeros(1, 1, 2, 2),
        "offset": torch.zeros(1, 2, 2, 2),
    }
    tgt = {
        "semantic": torch.zeros(1, 2, 2, dtype=torch.long),
        "semantic_weights": torch.ones(1, 2, 2),
        "center": torch.full((1, 1, 2, 2), 0.1),
        "center_weights": torch.ones(1, 2, 2),
        "offset": torch.ones(1, 2, 2, 2),
        "offset_weights": torch.ones(1, 2, 2),
    }
    res = crit(out, tgt)
    assert res["semantic"].item() == pytest.approx(math.log(3))
    assert res["center"].item() == pytest.approx(0.01)
    assert res["offset"].item() == pytest.approx(2.0)
    assert res["loss"].item() == pytest.approx(math.log(3) + 200 * 0.01 + 0.01 * 2.0)
