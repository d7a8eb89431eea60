"""Panoptic-DeepLab losses: hard-pixel-mined weighted CE, centre MSE, offset L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PanopticDeepLabLoss", "center_loss", "offset_loss", "semantic_loss"]


def semantic_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    ignore_label: int = 255,
    top_k_percent: float = 0.2,
) -> torch.Tensor:
    """Per-pixel softmax cross-entropy times ``weights``; mean of the top ``top_k_percent``.

    ``logits`` [B, C, H, W], ``labels`` [B, H, W] int64, ``weights`` [B, H, W]. Ignored pixels
    have loss 0 but still count in the pool the top-k fraction is taken from (as DeepLab does).
    ``top_k_percent=1`` gives the plain weighted mean over all pixels.
    """
    pix = F.cross_entropy(logits, labels, ignore_index=ignore_label, reduction="none")
    if weights is not None:
        pix = pix * weights
    pix = pix.reshape(-1)
    if top_k_percent >= 1.0:
        return pix.mean()
    k = max(1, int(top_k_percent * pix.numel()))
    return torch.topk(pix, k, sorted=False).values.mean()


def _weighted_mean(loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    if total > 0:
        return (loss * weights).sum() / total
    return (loss * weights).sum() * 0.0


def center_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MSE over ``[B, 1, H, W]``, weighted mean with ``weights`` [B, H, W] (0 if all weights 0)."""
    return _weighted_mean(F.mse_loss(pred, target, reduction="none"), weights[:, None])


def offset_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L1 over ``[B, 2, H, W]``: sum of both channels' weighted errors / sum of ``weights``."""
    loss = F.l1_loss(pred, target, reduction="none") * weights[:, None]
    total = weights.sum()
    if total > 0:
        return loss.sum() / total
    return loss.sum() * 0.0


class PanopticDeepLabLoss(nn.Module):
    """``w_sem * CE_topk + w_ctr * MSE + w_off * L1`` (paper weights 1, 200, 0.01)."""

    def __init__(
        self,
        *,
        ignore_label: int = 255,
        top_k_percent: float = 0.2,
        semantic_weight: float = 1.0,
        center_weight: float = 200.0,
        offset_weight: float = 0.01,
    ) -> None:
        super().__init__()
        self.ignore_label = ignore_label
        self.top_k_percent = top_k_percent
        self.w = (semantic_weight, center_weight, offset_weight)

    def forward(
        self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        sem = semantic_loss(
            outputs["semantic"].float(),
            targets["semantic"],
            targets["semantic_weights"],
            ignore_label=self.ignore_label,
            top_k_percent=self.top_k_percent,
        )
        ctr = center_loss(outputs["center"].float(), targets["center"], targets["center_weights"])
        off = offset_loss(outputs["offset"].float(), targets["offset"], targets["offset_weights"])
        total = self.w[0] * sem + self.w[1] * ctr + self.w[2] * off
        return {"loss": total, "semantic": sem, "center": ctr, "offset": off}
