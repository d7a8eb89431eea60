"""Drop-in replacement for detectron2's Panoptic-DeepLab post-processing.

Switching is a one-line import change::

    # from detectron2.projects.panoptic_deeplab.post_processing import get_panoptic_segmentation
    from pdl_post.detectron2 import get_panoptic_segmentation

(``find_instance_center`` likewise.)

Same arguments, same return values (torch tensors), same top-k rule (``topk_mode="detectron2"``).
CUDA tensors (detectron2's usual inputs) run on the CUDA path and the results stay on their device;
CPU tensors run on the CPU. One documented difference: a NaN heatmap value is never a centre here,
whereas detectron2's ``F.threshold`` lets NaN through to its max-pooling.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from pdl_post._api import find_centers, postprocess
from pdl_post._cuda import is_cuda_array
from pdl_post._inputs import as_numpy, is_torch_tensor

__all__ = ["find_instance_center", "get_panoptic_segmentation"]

# pdl_post's argument names -> detectron2's, for error messages.
_NAMES = {"sem": "sem_seg", "ctr": "center_heatmap", "off": "offsets"}


@contextmanager
def _detectron2_names():
    """Errors name the arguments as the caller wrote them (sem_seg, center_heatmap, offsets)."""
    try:
        yield
    except (TypeError, ValueError) as e:
        message = str(e)
        renamed = re.sub(r"^(sem|ctr|off)(?=:)", lambda m: _NAMES[m.group(1)], message)
        # The other argument a message compares with ("like ctr", "while sem is on device 0").
        renamed = re.sub(
            r"\b(like|while) (sem|ctr|off)\b", lambda m: f"{m[1]} {_NAMES[m[2]]}", renamed
        )
        for ours, theirs in _NAMES.items():
            renamed = re.sub(rf"\b{ours}'s\b", f"{theirs}'s", renamed)
        if renamed == message:
            raise
        raise type(e)(renamed) from None


def get_panoptic_segmentation(
    sem_seg,
    center_heatmap,
    offsets,
    thing_ids,
    label_divisor,
    stuff_area,
    void_label,
    threshold=0.1,
    nms_kernel=7,
    top_k=200,
    foreground_mask=None,
):
    """Panoptic segmentation with detectron2's signature.

    Parameters
    ----------
    sem_seg : torch.Tensor, shape [1, H, W], integer
        Semantic labels.
    center_heatmap : torch.Tensor, shape [1, H, W], float
    offsets : torch.Tensor, shape [2, H, W], float (dy, dx)
    thing_ids : set or list of int
    label_divisor, stuff_area, void_label, threshold, nms_kernel, top_k
        As in detectron2 (``top_k=None`` keeps every centre).
    foreground_mask : torch.Tensor or None, shape [1, H, W]

    All tensors on the CPU, or all on one GPU (the CUDA path, see
    :func:`pdl_post.cuda_available`: no host copy of the inputs, the caller's current stream).

    Returns
    -------
    panoptic : torch.Tensor, shape [1, H, W], int64, on ``sem_seg``'s device
    center : torch.Tensor, shape [1, K, 2], int64 (y, x), on ``sem_seg``'s device
    """
    # Tensors and CUDA arrays go to postprocess as they are (its errors then describe them);
    # anything else is read as a host array, so that array-likes work as in detectron2's calls.
    keep = is_torch_tensor(sem_seg) or is_cuda_array(sem_seg)
    sem = sem_seg if keep else as_numpy(sem_seg, "sem_seg")
    if len(sem.shape) != 3 or sem.shape[0] != 1:
        raise ValueError(f"sem_seg: expected shape [1,H,W], got {list(sem.shape)}")
    with _detectron2_names():
        result = postprocess(
            sem[0],
            center_heatmap,
            offsets,
            thing_ids=thing_ids,
            label_divisor=label_divisor,
            stuff_area=stuff_area,
            void_label=void_label,
            threshold=threshold,
            nms_kernel=nms_kernel,
            top_k=top_k,
            foreground_mask=foreground_mask,
            topk_mode="detectron2",
        )
    # None: where torch.as_tensor finds the data (host arrays, or another library's CUDA arrays);
    # the centres (host arrays) then follow the ids.
    panoptic = _int64_tensor(result.panoptic, sem_seg.device if is_torch_tensor(sem_seg) else None)
    center = _int64_tensor(result.centers, panoptic.device)
    return panoptic.unsqueeze(0), center.unsqueeze(0)


def find_instance_center(center_heatmap, threshold=0.1, nms_kernel=3, top_k=None):
    """The instance centres of a heatmap, with detectron2's signature and top-k rule.

    Parameters
    ----------
    center_heatmap : torch.Tensor, shape [1, H, W], float
        On the CPU, or on a GPU (the CUDA path, see :func:`pdl_post.find_centers`).
    threshold, nms_kernel, top_k
        As in detectron2 (``top_k=None`` keeps every peak; otherwise those strictly above the
        ``top_k``-th value: at most ``top_k - 1``, ties dropped).

    Returns
    -------
    torch.Tensor, shape [K, 2], int64
        (y, x) in row-major order (detectron2's ``torch.nonzero`` order), on
        ``center_heatmap``'s device.
    """
    keep = is_torch_tensor(center_heatmap) or is_cuda_array(center_heatmap)
    ctr = center_heatmap if keep else as_numpy(center_heatmap, "center_heatmap")
    if len(ctr.shape) != 3 or ctr.shape[0] != 1:
        raise ValueError(f"center_heatmap: expected shape [1,H,W], got {list(ctr.shape)}")
    with _detectron2_names():
        centers, _ = find_centers(
            ctr, threshold=threshold, nms_kernel=nms_kernel, top_k=top_k, topk_mode="detectron2"
        )
    return _int64_tensor(centers, None)  # on the device find_centers returned them on


def _int64_tensor(a, device):
    """An int64 torch tensor of `a` on `device` (CUDA tensors are converted on their device)."""
    import torch

    return torch.as_tensor(a, dtype=torch.int64, device=device)
