"""The public post-processing API: ``merge``, ``postprocess`` and the stages on their own.

The exact rules are in ``docs/merge-semantics.md``; every backend follows them bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pdl_post import _core, _cuda
from pdl_post._float_modes import with_ieee_float_modes
from pdl_post._inputs import (
    as_numpy,
    check_choice,
    check_instance_layout,
    check_params,
    check_same_geometry,
    check_thing_ids,
    check_threads,
    is_torch_tensor,
    normalize_ctr,
    normalize_mask,
    normalize_off,
    normalize_sem,
    output_dtype,
)
from pdl_post.presets import CITYSCAPES

__all__ = [
    "PanopticResult",
    "available_backends",
    "find_centers",
    "fuse",
    "group_pixels",
    "merge",
    "postprocess",
]

BACKENDS = ("auto", "cpu", "reference")
_DEFAULT_THINGS = CITYSCAPES.thing_ids


def available_backends() -> list[str]:
    """Backends usable here: ``"cpu"`` and ``"reference"`` for host arrays, plus ``"cuda"`` for
    CUDA arrays when :func:`cuda_available` (``"auto"`` picks by where the inputs live)."""
    return ["cpu", "reference"] + (["cuda"] if _cuda.available() else [])


def cuda_available() -> bool:
    """Whether CUDA arrays can be post-processed here.

    True when this build contains the CUDA path (``build_info()["cuda"]``) and a CUDA driver with
    at least one device is present. Never raises, also without a driver.
    """
    return _cuda.available()


def cuda_release_memory() -> int:
    """Hand the scratch memory the CUDA path keeps between calls back to the driver.

    The CUDA path takes its scratch arrays from its own stream-ordered memory pool per device,
    which keeps freed memory for the next call (so that calls allocate nothing from the driver);
    the other libraries of the process (torch's caching allocator, CuPy's pool) cannot use that
    memory meanwhile. This returns it, like ``torch.cuda.empty_cache()``, after waiting for the
    work queued on each device the pools serve. Later calls simply allocate again. The small
    page-locked host blocks the synchronisations copy into (4 KiB each for ``merge``) are freed
    too.

    Returns
    -------
    int
        The number of device bytes released; 0 without the CUDA path or before its first call.
    """
    return _cuda.release_memory()


def _backend(backend) -> str:
    check_choice(backend, "backend", (*BACKENDS, "cuda"))
    if backend == "cuda" and not _cuda.available():
        raise ValueError(
            "backend: 'cuda' is not available in this build or on this machine "
            "(pdl_post.build_info()['cuda'] and pdl_post.cuda_available() say why); available: "
            + ", ".join(available_backends())
        )
    return "cpu" if backend == "auto" else backend


def _host_backend(backend, on_device: bool) -> str:
    """The host backend of a function with a CUDA path, whose CUDA arrays went there unless
    ``backend`` names a host backend."""
    backend = _backend(backend)
    if on_device:
        raise ValueError(
            f"backend: {backend!r} runs on host arrays, got CUDA arrays; use backend='auto' or "
            "'cuda', or move the inputs to the CPU"
        )
    if backend == "cuda":
        raise ValueError(
            "backend: 'cuda' takes CUDA arrays (torch CUDA tensors, CuPy arrays or any "
            "__cuda_array_interface__ object), got host arrays"
        )
    return backend


@dataclass
class PanopticResult:
    """Post-processing result of one image.

    Attributes
    ----------
    panoptic : ndarray, torch.Tensor or cupy.ndarray, shape [H, W], int32 (int64 where ids need it)
        ``class * label_divisor + instance`` for things, ``class * label_divisor`` for stuff,
        ``void_label`` elsewhere.
    centers : ndarray, shape [K, 2], int64
        Kept instance centres (y, x) in instance order; centre i is instance i + 1.
    center_scores : ndarray, shape [K], float64
        Heatmap value at each centre.
    segments : list of dict
        One dict per segment (``id``, ``category_id``, ``isthing``, ``area``, ``score``): things in
        centre order, then stuff by class id. Scores follow DESIGN §3.
    """

    panoptic: object
    centers: np.ndarray
    center_scores: np.ndarray
    segments: list = field(default_factory=list)


def _segments_list(seg: dict) -> list[dict]:
    # tolist() gives Python ints, bools and floats in one call per column.
    columns = (seg[k].tolist() for k in ("id", "category_id", "isthing", "area", "score"))
    return [
        {"id": i, "category_id": c, "isthing": bool(t), "area": a, "score": s}
        for i, c, t, a, s in zip(*columns)
    ]


def _as_4d(view: np.ndarray, batched: bool) -> np.ndarray:
    return view[:, None] if batched else view[None, None]


def _empty_output(batch: int, height: int, width: int, batched: bool, dtype, like_torch: bool):
    """Output [B,H,W] or [H,W] allocated with the caller's own library (torch in, torch out).

    Returns (the object handed to the caller, its numpy view as the core's [B,1,H,W]).
    """
    shape = (batch, height, width) if batched else (height, width)
    if like_torch:
        import torch

        t = torch.empty(shape, dtype=torch.int64 if dtype == np.int64 else torch.int32)
        return t, _as_4d(t.numpy(), batched)
    a = np.empty(shape, dtype=dtype)
    return a, _as_4d(a, batched)


def _labels_from_logits(logits: np.ndarray, threads: int, backend: str) -> np.ndarray:
    if logits.shape[1] == 0:
        raise ValueError("sem: logits need at least one class channel, got 0")
    b, _, h, w = logits.shape
    labels = np.empty((b, 1, h, w), dtype=np.int32)
    if backend == "reference":
        from pdl_post import reference

        for i in range(b):
            labels[i, 0] = reference.argmax_logits(logits[i])
    else:
        _core.argmax_logits(logits, labels, threads)
    return labels


def _checked_max_label(labels: np.ndarray, threads: int) -> int:
    lo, hi = _core.label_range(labels, threads)
    if lo < 0:
        raise ValueError(f"sem: class ids must be >= 0, got a minimum of {lo}")
    return hi


def _run(sem, ctr, off, *, foreground_mask, backend, params, with_segments=True):
    on_device = any(_cuda.is_cuda_array(x) for x in (sem, ctr, off, foreground_mask))
    check_choice(backend, "backend", (*BACKENDS, "cuda"))
    if on_device and backend in ("auto", "cuda"):
        return _cuda.run(sem, ctr, off, foreground_mask, params, output_dtype, with_segments)
    backend = _host_backend(backend, on_device)
    labels, logits, batched = normalize_sem(sem)
    ctr4 = normalize_ctr(ctr, batched)
    off4 = normalize_off(off, batched)
    mask4 = normalize_mask(foreground_mask, batched)
    geometry = {
        "sem": labels if labels is not None else logits,
        "ctr": ctr4,
        "off": off4,
        "foreground_mask": mask4,
    }
    b, h, w = check_same_geometry(geometry)
    threads = params.num_threads
    if logits is not None:
        labels = _labels_from_logits(logits, threads, backend)
    max_label = _checked_max_label(labels, threads)
    dtype = output_dtype(max_label, params.label_divisor, params.void_label)
    torch_out = any(is_torch_tensor(x) for x in (sem, ctr, off))
    out, out4 = _empty_output(b, h, w, batched, dtype, torch_out)
    if not with_segments:
        logits = None  # logits only weigh the segments' scores once labels are known
    if backend == "reference":
        per_image = _run_reference(labels, logits, ctr4, off4, mask4, params, out4)
    else:
        per_image = _core.merge(
            labels,
            ctr4,
            off4,
            mask4,
            logits,
            max_label,
            *params.core_options(),
            out4,
            threads,
        )
    return out, per_image, batched


def _run_reference(labels, logits, ctr4, off4, mask4, params, out4):
    from pdl_post import reference

    per_image = []
    for i in range(labels.shape[0]):
        r = reference.postprocess_image(
            labels[i, 0].astype(np.int64),
            ctr4[i, 0],
            off4[i],
            thing_ids=params.thing_ids,
            label_divisor=params.label_divisor,
            stuff_area=params.stuff_area,
            void_label=params.void_label,
            threshold=params.threshold,
            nms_kernel=params.nms_kernel,
            top_k=params.top_k,
            topk_mode=params.topk_mode,
            foreground_mask=None if mask4 is None else mask4[i, 0].astype(bool),
            logits=None if logits is None else logits[i],
            out_dtype=out4.dtype,
        )
        out4[i, 0] = r["panoptic"]
        segs = r["segments"]
        seg = {
            key: np.array([s[key] for s in segs])
            for key in ("id", "category_id", "isthing", "area", "score")
        }
        per_image.append(
            (
                np.asarray(r["centers"], dtype=np.int64).reshape(-1, 2),
                np.asarray(r["center_scores"], dtype=np.float64),
                seg,
            )
        )
    return per_image


_MERGE_DOC_PARAMS = """
    Parameters
    ----------
    sem : array_like, shape [H, W] or [B, H, W] (int labels) or [C, H, W] or [B, C, H, W] (float logits)
        Semantic prediction. Labels: uint8, int16, int32 or int64 class ids >= 0 (uint16/uint32 are
        widened). Logits (float32/float64; float16/bfloat16 are widened to float32, exactly) are
        argmaxed (first maximum wins, NaN never wins).
    ctr : array_like, shape [H, W], [1, H, W] or [B, 1, H, W], float32 or float64
        Centre heatmap (float16/bfloat16 widened to float32).
    off : array_like, shape [2, H, W] or [B, 2, H, W], float32 or float64
        Centre offsets, channel 0 = dy, channel 1 = dx (centre minus pixel); float16/bfloat16
        widened to float32.
    thing_ids : iterable of int, keyword-only
        Classes with instances (default: Cityscapes train ids 11..18).
    label_divisor : int
        Panoptic id = class * label_divisor + instance; instances per class must stay below it.
    stuff_area : int
        Minimum area of a stuff segment; smaller ones become ``void_label``.
    void_label : int
        Id of pixels that are neither a thing instance nor a kept stuff segment.
    threshold : float
        Heatmap values <= threshold are not centres (compared in the heatmap's dtype).
    nms_kernel : int
        Odd side of the non-maximum suppression window.
    top_k : int or None
        Keep at most this many centres (None keeps all).
    foreground_mask : array_like or None, shape [H, W] or [B, H, W]
        Thing pixels are ``foreground_mask > 0`` instead of ``sem in thing_ids``.
    topk_mode : {"exact", "detectron2"}
        "exact" keeps the top_k highest peaks (ties to the earlier pixel); "detectron2" reproduces
        detectron2's rule (keeps peaks above the top_k-th value: at most top_k - 1, ties dropped).
    num_threads : int or None
        OpenMP threads. None: OpenMP's default, all cores unless ``OMP_NUM_THREADS`` or
        ``omp_set_num_threads`` say otherwise (``torch.set_num_threads`` calls it, where torch
        shares pdl_post's GNU OpenMP, as torch's Linux wheels do). Results are identical for
        every thread count. Safe in a child of ``fork()`` after threaded calls in the parent
        (README: the forking thread's OpenMP workers are released before the fork).
    backend : {"auto", "cpu", "reference", "cuda"}
        "reference" is the readable pure-Python implementation (numba-jitted when available).
        "auto" runs CUDA arrays (torch CUDA tensors, CuPy arrays, any ``__cuda_array_interface__``
        v3 object; all inputs on one device) on the GPU, in place and on the caller's current
        stream, with the CPU's exact answer; host arrays on the CPU. ``num_threads`` is ignored on
        the GPU.
"""


@with_ieee_float_modes
def merge(
    sem,
    ctr,
    off,
    *,
    thing_ids=_DEFAULT_THINGS,
    label_divisor=1000,
    stuff_area=2048,
    void_label=-1,
    threshold=0.1,
    nms_kernel=7,
    top_k=200,
    foreground_mask=None,
    topk_mode="exact",
    num_threads=None,
    backend="auto",
):
    params = check_params(
        thing_ids=thing_ids,
        label_divisor=label_divisor,
        stuff_area=stuff_area,
        void_label=void_label,
        threshold=threshold,
        nms_kernel=nms_kernel,
        top_k=top_k,
        topk_mode=topk_mode,
        num_threads=num_threads,
    )
    out, _, _ = _run(
        sem,
        ctr,
        off,
        foreground_mask=foreground_mask,
        backend=backend,
        params=params,
        with_segments=False,
    )
    return out


merge.__doc__ = (
    """Panoptic segmentation from Panoptic-DeepLab outputs (centre NMS, top-k, offset voting,
    majority vote, stuff filter).
"""
    + _MERGE_DOC_PARAMS
    + """
    Returns
    -------
    panoptic : ndarray, torch.Tensor or cupy.ndarray, shape [H, W] or [B, H, W]
        int32, or int64 where ``(max class + 1) * label_divisor`` or ``void_label`` do not fit
        int32. A torch tensor when any input is one; for CUDA inputs an array on their device,
        allocated by their library (torch, else CuPy).

    Examples
    --------
    >>> import numpy as np, pdl_post
    >>> sem = np.full((4, 6), 11, np.int32)
    >>> ctr = np.zeros((1, 4, 6), np.float32); ctr[0, 1, 2] = 0.9
    >>> off = np.zeros((2, 4, 6), np.float32)
    >>> int(pdl_post.merge(sem, ctr, off, stuff_area=0)[0, 0])
    11001
    """
)


@with_ieee_float_modes
def postprocess(
    sem,
    ctr,
    off,
    *,
    thing_ids=_DEFAULT_THINGS,
    label_divisor=1000,
    stuff_area=2048,
    void_label=-1,
    threshold=0.1,
    nms_kernel=7,
    top_k=200,
    foreground_mask=None,
    topk_mode="exact",
    num_threads=None,
    backend="auto",
):
    params = check_params(
        thing_ids=thing_ids,
        label_divisor=label_divisor,
        stuff_area=stuff_area,
        void_label=void_label,
        threshold=threshold,
        nms_kernel=nms_kernel,
        top_k=top_k,
        topk_mode=topk_mode,
        num_threads=num_threads,
    )
    out, per_image, batched = _run(
        sem, ctr, off, foreground_mask=foreground_mask, backend=backend, params=params
    )
    results = [
        PanopticResult(
            panoptic=out[i] if batched else out,
            centers=centers,
            center_scores=scores,
            segments=_segments_list(seg),
        )
        for i, (centers, scores, seg) in enumerate(per_image)
    ]
    return results if batched else results[0]


postprocess.__doc__ = (
    """Like :func:`merge`, plus centres, their scores and the list of segments.
"""
    + _MERGE_DOC_PARAMS
    + """
    Returns
    -------
    PanopticResult, or a list of PanopticResult (one per image) for batched input.
    Segment scores: things = heatmap value at the centre, times the mean softmax probability of
    the instance's class over its pixels when logits are given; stuff = that mean probability or 1.
    """
)


@with_ieee_float_modes
def find_centers(
    ctr,
    *,
    threshold=0.1,
    nms_kernel=7,
    top_k=200,
    topk_mode="exact",
    num_threads=None,
    backend="auto",
):
    """Instance centres: threshold, k x k NMS, top-k (steps 1-4 of the semantics).

    Parameters
    ----------
    ctr : array_like, shape [H, W], [1, H, W] or [B, 1, H, W], float32 or float64
    threshold, nms_kernel, top_k, topk_mode, num_threads, backend
        As in :func:`merge`.

    Returns
    -------
    (centers, scores) : ndarray [K, 2] int64 (y, x) in row-major order, ndarray [K] float64;
    a list of such pairs for a batch [B, 1, H, W]. For a CUDA heatmap (see :func:`merge`'s
    ``backend``): torch tensors or CuPy arrays on its device, with the CPU's values; the call
    waits for the device (the number of centres is data-dependent).
    """
    params = check_params(
        thing_ids=(),
        label_divisor=1,
        stuff_area=0,
        void_label=0,
        threshold=threshold,
        nms_kernel=nms_kernel,
        top_k=top_k,
        topk_mode=topk_mode,
        num_threads=num_threads,
    )
    on_device = _cuda.is_cuda_array(ctr)
    check_choice(backend, "backend", (*BACKENDS, "cuda"))
    if on_device and backend in ("auto", "cuda"):
        pairs, batched = _cuda.find_centers(ctr, params)
        return pairs if batched else pairs[0]
    backend = _host_backend(backend, on_device)
    batched = as_numpy(ctr, "ctr").ndim == 4
    ctr4 = normalize_ctr(ctr, batched)
    check_same_geometry({"ctr": ctr4})
    if backend == "reference":
        from pdl_post import reference

        pairs = [
            reference.find_centers(
                ctr4[i, 0],
                threshold=params.threshold,
                nms_kernel=params.nms_kernel,
                top_k=params.top_k,
                topk_mode=params.topk_mode,
            )
            for i in range(ctr4.shape[0])
        ]
    else:
        pairs = _core.find_centers(ctr4, *params.center_options(), params.num_threads)
    pairs = [
        (np.asarray(c, dtype=np.int64).reshape(-1, 2), np.asarray(s, dtype=np.float64))
        for c, s in pairs
    ]
    return pairs if batched else pairs[0]


def _check_centers(centers, batch: int, height: int, width: int, batched: bool) -> list:
    if batched and (
        centers is None or isinstance(centers, (str, bytes)) or not hasattr(centers, "__len__")
    ):
        raise TypeError(
            f"centers: expected a list of {batch} [K,2] arrays (one per image), got "
            f"{type(centers).__name__}"
        )
    per_image = list(centers) if batched else [centers]
    if batched and len(per_image) != batch:
        raise ValueError(
            f"centers: expected one [K,2] array per image ({batch}), got {len(per_image)}"
        )
    checked = []
    for c in per_image:
        a = _cuda.as_host_numpy(c, "centers")  # find_centers' of a CUDA heatmap: a few numbers
        if a.size == 0 and a.dtype.kind in "biuf":  # no centres, whatever numeric dtype
            a = a.reshape(0, 2).astype(np.int64)
        if a.dtype.kind not in "ui":
            raise TypeError(f"centers: expected integer (y, x) coordinates, got dtype {a.dtype}")
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"centers: expected shape [K,2] (y, x), got {list(a.shape)}")
        a = np.ascontiguousarray(a, dtype=np.int64)
        if a.size and (
            a[:, 0].min() < 0
            or a[:, 0].max() >= height
            or a[:, 1].min() < 0
            or a[:, 1].max() >= width
        ):
            raise ValueError(f"centers: every (y, x) must lie inside the {height}x{width} image")
        checked.append(a)
    return checked


@with_ieee_float_modes
def group_pixels(
    sem,
    centers,
    off,
    *,
    thing_ids=_DEFAULT_THINGS,
    foreground_mask=None,
    num_threads=None,
    backend="auto",
):
    """Offset voting: each thing pixel joins the centre nearest to where its offset points.

    Parameters
    ----------
    sem : array_like or None, shape [H, W] / [B, H, W] labels (or logits as in :func:`merge`)
        Thing pixels are ``sem in thing_ids``; may be None when ``foreground_mask`` is given.
    centers : array_like [K, 2] (y, x), or a list of B such arrays for a batch
        (:func:`find_centers`' torch CUDA tensors or CuPy arrays are copied to the host)
    off : array_like, shape [2, H, W] or [B, 2, H, W], float32 or float64 (dy, dx)
    thing_ids, foreground_mask, num_threads, backend
        As in :func:`merge`.

    Returns
    -------
    instance : ndarray or torch.Tensor, shape [H, W] or [B, H, W], int32
        0 where no instance, else 1 + index of the nearest centre. For CUDA images (see
        :func:`merge`'s ``backend``): on their device, by the caller's library, queued on its
        current stream as :func:`merge`'s output is.
    """
    things = check_thing_ids(thing_ids)
    threads = check_threads(num_threads)
    on_device = any(_cuda.is_cuda_array(x) for x in (sem, off, foreground_mask))
    check_choice(backend, "backend", (*BACKENDS, "cuda"))
    if on_device and backend in ("auto", "cuda"):
        return _cuda.group_pixels(sem, centers, off, foreground_mask, things, _check_centers)
    backend = _host_backend(backend, on_device)
    batched = as_numpy(off, "off").ndim == 4
    off4 = normalize_off(off, batched)
    mask4 = normalize_mask(foreground_mask, batched)
    labels = None
    if mask4 is None:
        if sem is None:
            raise TypeError(
                "sem: expected labels or logits (None is only allowed together with "
                "foreground_mask)"
            )
        labels, logits, sem_batched = normalize_sem(sem)
        if sem_batched != batched:
            raise ValueError("sem: batched and unbatched inputs are mixed (sem vs off)")
        if logits is not None:
            check_same_geometry({"sem": logits, "off": off4})
            labels = _labels_from_logits(logits, threads, backend)
    b, h, w = check_same_geometry({"off": off4, "sem": labels, "foreground_mask": mask4})
    if labels is not None:
        _checked_max_label(labels, threads)  # negative class ids are an error here too
    center_list = _check_centers(centers, b, h, w, batched)
    out, out4 = _empty_output(b, h, w, batched, np.int32, is_torch_tensor(off))
    if backend == "reference":
        from pdl_post import reference

        for i in range(b):
            thing = mask4[i, 0].astype(bool) if mask4 is not None else np.isin(labels[i, 0], things)
            out4[i, 0] = reference.group_pixels(center_list[i], off4[i], thing)
    else:
        _core.group_pixels(labels, things, mask4, off4, center_list, out4, threads)
    return out


@with_ieee_float_modes
def fuse(
    sem,
    instance,
    *,
    thing_ids=_DEFAULT_THINGS,
    label_divisor=1000,
    stuff_area=2048,
    void_label=-1,
    num_threads=None,
    backend="auto",
):
    """Majority vote, stuff-area filter and panoptic ids from labels and an instance map.

    Parameters
    ----------
    sem : array_like, shape [H, W] / [B, H, W] labels, or logits as in :func:`merge`
    instance : array_like of int, same shape as the labels
        0 = no instance, 1..K = instance (visited in increasing order).
    thing_ids, label_divisor, stuff_area, void_label, num_threads, backend
        As in :func:`merge`.

    Returns
    -------
    panoptic : ndarray or torch.Tensor, shape [H, W] or [B, H, W], int32 or int64
        For CUDA arrays (see :func:`merge`'s ``backend``): on their device, by the caller's
        library, queued on its current stream as :func:`merge`'s output is.
    """
    params = check_params(
        thing_ids=thing_ids,
        label_divisor=label_divisor,
        stuff_area=stuff_area,
        void_label=void_label,
        threshold=0.0,
        nms_kernel=1,
        top_k=None,
        topk_mode="exact",
        num_threads=num_threads,
    )
    on_device = any(_cuda.is_cuda_array(x) for x in (sem, instance))
    check_choice(backend, "backend", (*BACKENDS, "cuda"))
    if on_device and backend in ("auto", "cuda"):
        return _cuda.fuse(sem, instance, params, output_dtype)
    backend = _host_backend(backend, on_device)
    labels, logits, batched = normalize_sem(sem)
    inst = as_numpy(instance, "instance")
    check_instance_layout(inst.dtype, inst.shape, batched)
    inst4 = _as_4d(inst, batched)
    b, h, w = check_same_geometry(
        {"sem": labels if labels is not None else logits, "instance": inst4}
    )
    threads = params.num_threads
    if logits is not None:
        labels = _labels_from_logits(logits, threads, backend)
    if inst.size and inst.min() < 0:
        raise ValueError(f"instance: ids must be >= 0, got a minimum of {inst.min()}")
    largest_dense = min(h * w, np.iinfo(np.int32).max - 1)
    if inst.size and inst.max() > largest_dense:
        # Sparse ids (any up to int64's maximum): renumber them 1..n in increasing order.
        # Instances are visited in id order and absent ids use no number, so the result is
        # unchanged; tables stay data-sized and the ids fit the core's int32.
        present, compact = np.unique(inst4, return_inverse=True)
        if len(present) > np.iinfo(np.int32).max - 1:
            raise ValueError(
                f"instance: {len(present)} distinct ids do not fit int32 instance numbers"
            )
        inst4 = compact.reshape(inst4.shape).astype(np.int32) + (1 if present[0] > 0 else 0)
    inst4 = np.ascontiguousarray(inst4, dtype=np.int32)
    counts = [int(inst4[i].max()) if inst4[i].size else 0 for i in range(b)]
    max_label = _checked_max_label(labels, threads)
    dtype = output_dtype(max_label, params.label_divisor, params.void_label)
    out, out4 = _empty_output(
        b, h, w, batched, dtype, is_torch_tensor(sem) or is_torch_tensor(instance)
    )
    if backend == "reference":
        from pdl_post import reference

        for i in range(b):
            out4[i, 0], _ = reference.fuse(
                labels[i, 0].astype(np.int64),
                inst4[i, 0],
                thing_ids=params.thing_ids,
                label_divisor=params.label_divisor,
                stuff_area=params.stuff_area,
                void_label=params.void_label,
                out_dtype=dtype,
            )
    else:
        _core.fuse(
            labels,
            inst4,
            counts,
            max_label,
            params.thing_ids,
            params.label_divisor,
            params.stuff_area,
            params.void_label,
            None,
            None,
            out4,
            threads,
        )
    return out
