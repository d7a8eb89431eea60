"""Baseline (a): the published Panoptic-DeepLab post-processing, the way public PyTorch code does it.

Our own code, written from DESIGN §3 (not copied from any project). It is deliberately the
straightforward dense formulation that ``pdl_post`` is measured against:

1. ``F.threshold`` the heatmap (values ``<= threshold`` become -1);
2. NMS with ``F.max_pool2d`` (padding = -inf, i.e. the window clipped to the image);
3. top-k with ``torch.topk`` and detectron2's rule ``keep h > max(kth_largest, 0)``;
4. a dense K x H*W tensor of squared float32 distances, ``argmin`` over the centres;
5. a Python loop over instances with a majority vote (ties to the smallest class);
6. a Python loop over stuff classes with the ``stuff_area`` filter.

On finite inputs it matches ``pdl_post.reference`` with ``topk_mode="detectron2"`` exactly (squared
float32 distances, ``argmin``/``argmax`` return the first extremum). It differs on NaN heatmap values:
``F.threshold`` keeps NaN (``NaN <= t`` is false), while the semantics turn NaN into -1.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

__all__ = ["panoptic_dense_torch"]


def _find_centers(ctr, threshold, nms_kernel, top_k):
    """Threshold, max-pool NMS, detectron2 top-k. ctr [1,H,W] -> centres [K,2] int64 (y, x)."""
    h = F.threshold(ctr, threshold, -1.0)
    pooled = F.max_pool2d(h[None], kernel_size=nms_kernel, stride=1, padding=nms_kernel // 2)[0]
    h = torch.where(h == pooled, h, torch.full_like(h, -1.0))
    h = h[0]
    if top_k == 0:
        return torch.zeros((0, 2), dtype=torch.int64, device=h.device)
    if top_k is None or top_k > h.numel():
        t = 0.0  # fewer than top_k values: keep every positive peak
    else:
        t = max(torch.topk(h.flatten(), top_k).values[-1].item(), 0.0)
    return torch.nonzero(h > t)  # row-major order


def panoptic_dense_torch(
    sem,
    ctr,
    off,
    *,
    thing_ids: Iterable[int],
    label_divisor: int = 1000,
    stuff_area: int = 2048,
    void_label: int = -1,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int | None = 200,
    foreground_mask=None,
):
    """Dense PyTorch Panoptic-DeepLab post-processing of one image.

    Parameters
    ----------
    sem : torch.Tensor, shape [H, W], integer
        Semantic labels.
    ctr : torch.Tensor, shape [1, H, W] (or [H, W]), float
        Centre heatmap.
    off : torch.Tensor, shape [2, H, W], float
        Offsets, channel 0 = dy, channel 1 = dx (centre minus pixel).
    thing_ids : iterable of int
        Thing classes.
    label_divisor, stuff_area, void_label, threshold, nms_kernel, top_k
        As in ``pdl_post.merge`` (``top_k`` uses detectron2's rule; None keeps all).
    foreground_mask : torch.Tensor, shape [H, W], optional
        Thing pixels are ``foreground_mask > 0`` instead of ``sem in thing_ids``.

    Returns
    -------
    panoptic : torch.Tensor, shape [H, W], int64
    centers : torch.Tensor, shape [K, 2], int64
        (y, x) of the kept centres, row-major order.
    """
    if ctr.dim() == 2:
        ctr = ctr[None]
    sem = sem.long()
    height, width = sem.shape
    thing_list = sorted({int(t) for t in thing_ids})

    centers = _find_centers(ctr, threshold, nms_kernel, top_k)

    # Offset voting with a dense K x H*W distance tensor, every operation in float32.
    if foreground_mask is not None:
        thing_seg = foreground_mask > 0
    else:
        thing_seg = torch.isin(sem, torch.tensor(thing_list, dtype=torch.int64, device=sem.device))
    if centers.shape[0] > 0:
        off32 = off.float()
        ys = torch.arange(height, dtype=torch.float32, device=off.device)[:, None]
        xs = torch.arange(width, dtype=torch.float32, device=off.device)[None, :]
        qy = (ys + off32[0]).reshape(1, -1)  # [1, H*W]
        qx = (xs + off32[1]).reshape(1, -1)
        cy = centers[:, 0:1].float()  # [K, 1]
        cx = centers[:, 1:2].float()
        dist = (cy - qy).square() + (cx - qx).square()  # [K, H*W], separate float32 ops
        ins_seg = (torch.argmin(dist, dim=0) + 1).reshape(height, width)
        finite = torch.isfinite(qy) & torch.isfinite(qx)
        ins_seg = ins_seg * (thing_seg & finite.reshape(height, width))
    else:
        ins_seg = torch.zeros((height, width), dtype=torch.int64, device=sem.device)

    panoptic = torch.full((height, width), void_label, dtype=torch.int64, device=sem.device)

    # Majority vote, one instance at a time (torch.unique is sorted: visiting order, no empties).
    count_per_class: dict[int, int] = {}
    for ins_id in torch.unique(ins_seg).tolist():
        if ins_id == 0:
            continue
        mask = ins_seg == ins_id
        classes, counts = torch.unique(sem[mask], return_counts=True)
        c = int(classes[torch.argmax(counts)])  # first maximum = smallest class
        n = count_per_class.get(c, 0) + 1
        if n >= label_divisor:
            raise ValueError(
                f"class {c} has {n} instances, not below label_divisor={label_divisor}"
            )
        count_per_class[c] = n
        panoptic[mask] = c * label_divisor + n

    # Stuff, one class at a time.
    is_thing = ins_seg > 0
    for c in torch.unique(sem).tolist():
        if c in thing_list:
            continue
        stuff_mask = (sem == c) & ~is_thing
        if int(stuff_mask.sum()) >= stuff_area:
            panoptic[stuff_mask] = c * label_divisor

    return panoptic, centers
