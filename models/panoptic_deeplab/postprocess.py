"""Bridge from network outputs to ``pdl_post`` (all post-processing happens there)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["merge_outputs"]


def merge_outputs(
    outputs: dict[str, torch.Tensor], *, thing_ids, post: dict[str, Any]
) -> np.ndarray:
    """Panoptic ids ``[B, H, W]`` (int) from ``semantic`` logits / probabilities, ``center``, ``offset``.

    Calls :func:`pdl_post.merge` with the ``post`` section of the config (threshold,
    nms_kernel, top_k, stuff_area, label_divisor, void_label, optional num_threads).
    """
    import pdl_post

    sem = outputs["semantic"].detach().float().cpu()
    ctr = outputs["center"].detach().float().cpu()
    off = outputs["offset"].detach().float().cpu()
    kw = {
        "thing_ids": tuple(int(t) for t in thing_ids),
        "label_divisor": int(post.get("label_divisor", 1000)),
        "stuff_area": int(post.get("stuff_area", 2048)),
        "void_label": int(post.get("void_label", -1)),
        "threshold": float(post.get("threshold", 0.1)),
        "nms_kernel": int(post.get("nms_kernel", 7)),
        "top_k": post.get("top_k", 200),
    }
    if post.get("num_threads"):
        kw["num_threads"] = int(post["num_threads"])
    res = pdl_post.merge(sem, ctr, off, **kw)
    if isinstance(res, torch.Tensor):
        res = res.numpy()
    return np.asarray(res)
