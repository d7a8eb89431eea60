"""Bridge from network outputs to ``pdl_post`` (all post-processing happens there)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["merge_outputs"]


def merge_outputs(
    outputs: dict[str, torch.Tensor],
    *,
    thing_ids,
    post: dict[str, Any],
    probabilities: bool = False,
    segments: bool = False,
):
    """Panoptic ids ``[B, H, W]`` (int) from ``semantic`` logits / probabilities, ``center``, ``offset``.

    Calls :func:`pdl_post.merge` (or :func:`pdl_post.postprocess` with ``segments=True``) with
    the ``post`` section of the config (threshold, nms_kernel, top_k, stuff_area,
    label_divisor, void_label, optional num_threads): on the GPU when the outputs are CUDA
    tensors and :func:`pdl_post.cuda_available`, else on the CPU. Returns numpy arrays either way.

    ``probabilities``: ``semantic`` holds softmax probabilities (e.g. averaged over TTA), not
    logits. Their logarithm is handed over, so that the segment scores' softmax gives back these
    probabilities. ``segments=True`` returns ``(panoptic, segments)`` with one list of segment
    dicts (``id``, ``category_id``, ``isthing``, ``area``, ``score``) per image.
    """
    import pdl_post

    sem, ctr, off = (outputs[k].detach() for k in ("semantic", "center", "offset"))
    if not (sem.is_cuda and pdl_post.cuda_available()):
        sem, ctr, off = sem.cpu(), ctr.cpu(), off.cpu()
    # else the CUDA path merges where the network ran: only the panoptic ids (and segments)
    # come back to the host, not the B x C x H x W class scores.
    sem, ctr, off = sem.float(), ctr.float(), off.float()
    if probabilities:
        # log is monotone, so the argmax is the probabilities' own (bar exact ties that float32
        # rounding of log could create between nearly equal probabilities).
        sem = torch.log(sem.clamp_min(torch.finfo(torch.float32).tiny))
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
    if not segments:
        return _numpy(pdl_post.merge(sem, ctr, off, **kw))
    results = pdl_post.postprocess(sem, ctr, off, **kw)
    pan = np.stack([_numpy(r.panoptic) for r in results])
    return pan, [r.segments for r in results]


def _numpy(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
