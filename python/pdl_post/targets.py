"""Panoptic-DeepLab training targets from a panoptic label map, computed by the compiled core.

>>> from pdl_post.targets import panoptic_targets
>>> t = panoptic_targets(panoptic, segment_ids, category_ids, thing_ids=[11, 12])  # doctest: +SKIP

The semantics are those of ``panoptic_targets_reference`` in ``models/panoptic_deeplab/targets.py``
(the numpy reference the tests compare against, bit for bit); the algorithm is described in
``cpp/include/pdl_post/panoptic_targets.h``.
"""

from __future__ import annotations

import numpy as np

from pdl_post import _core
from pdl_post._float_modes import with_ieee_float_modes
from pdl_post._inputs import (
    LABEL_DTYPES,
    WIDENED_LABEL_DTYPES,
    _describe,
    as_numpy,
    check_int,
    check_real,
    check_thing_ids,
    check_threads,
)

__all__ = ["gaussian_radius", "panoptic_targets"]


def gaussian_radius(sigma: float) -> int:
    """Half-width of the Gaussian window: ``round(3 sigma + 1)`` (half to even; 25 for 8)."""
    return round(3 * sigma + 1)


def _gaussian_table(sigma: float, radius: int, height: int, width: int) -> np.ndarray:
    """float32 Gaussian values indexed by the squared distance dy^2 + dx^2 a window can reach.

    The same float64 expression as the reference's kernel, evaluated with numpy's exp, so the
    values are bit-identical to it whatever the C library's exp.
    """
    ry, rx = min(radius, max(height - 1, 0)), min(radius, max(width - 1, 0))
    d2 = np.arange(ry * ry + rx * rx + 1, dtype=np.float64)
    return np.exp(-d2 / (2.0 * sigma * sigma)).astype(np.float32)


def _segment_array(x, name: str, length: int | None) -> np.ndarray:
    """A 1-D int64 copy of ``x`` (integers; an empty list of any dtype is allowed)."""
    a = as_numpy(x, name)
    if a.ndim > 1:
        raise ValueError(f"{name}: expected a 1-D sequence [S], got shape {list(a.shape)}")
    a = a.reshape(-1)
    if a.size and (a.dtype.kind not in "biu"):
        raise TypeError(f"{name}: expected integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected values that fit int64, got {int(a.max())}")
    if length is not None and a.size != length:
        raise ValueError(
            f"{name}: segment_ids, category_ids and iscrowd must have the same length, "
            f"got {length} segment_ids and {a.size} {name}"
        )
    return a.astype(np.int64)


# (key, dtype, leading axes before [H, W]): center is [1, H, W], offset [2, H, W] (dy, dx).
_OUTPUTS = (
    ("semantic", np.int64, ()),
    ("semantic_weights", np.float32, ()),
    ("center", np.float32, (1,)),
    ("offset", np.float32, (2,)),
    ("center_weights", np.float32, ()),
    ("offset_weights", np.float32, ()),
)


def _new_outputs(height: int, width: int) -> dict[str, np.ndarray]:
    return {key: np.empty((*lead, height, width), dtype) for key, dtype, lead in _OUTPUTS}


def _core_view(a: np.ndarray) -> np.ndarray:
    """The [1, C, H, W] view the core takes."""
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def _check_out(out, panoptic: np.ndarray) -> dict[str, np.ndarray]:
    """Validate caller-provided output arrays (see ``panoptic_targets``'s ``out``)."""
    if not isinstance(out, dict):
        raise TypeError(f"out: expected a dict of numpy arrays, got {_describe(out)}")
    expected = [key for key, _, _ in _OUTPUTS]
    if set(out) != set(expected):
        raise ValueError(f"out: expected exactly the keys {expected}, got {list(out)}")
    height, width = panoptic.shape
    arrays = []
    for key, dtype, lead in _OUTPUTS:
        a = out[key]
        name = f"out[{key!r}]"
        shape = (*lead, height, width)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array, got {_describe(a)}")
        if a.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"{name}: expected shape {list(shape)}, got {list(a.shape)}")
        if not a.flags.writeable:
            raise ValueError(f"{name}: expected a writeable array, got a read-only one")
        if a.size and a.strides[-1] != a.itemsize:
            raise ValueError(
                f"{name}: expected contiguous rows (x stride {a.itemsize} bytes), "
                f"got x stride {a.strides[-1]}"
            )
        if np.may_share_memory(a, panoptic):
            raise ValueError(f"{name}: must not overlap panoptic")
        for other_key, other in arrays:
            if np.may_share_memory(a, other):
                raise ValueError(f"{name}: must not overlap out[{other_key!r}]")
        arrays.append((key, a))
    return out


@with_ieee_float_modes
def panoptic_targets(
    panoptic,
    segment_ids,
    category_ids,
    iscrowd=None,
    *,
    thing_ids,
    ignore_label: int = 255,
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    ignore_crowd_in_semantic: bool = False,
    num_threads: int | None = None,
    out: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Panoptic-DeepLab training targets of one panoptic label map.

    Parameters
    ----------
    panoptic : array [H, W], integer
        Segment id of every pixel (uint8, int16, int32, int64; uint16, uint32 and int8 are
        widened once). Pixels whose id is not in ``segment_ids`` are unlabelled.
    segment_ids : sequence of int [S]
        Unique segment ids.
    category_ids : sequence of int [S]
        Contiguous train id of each segment.
    iscrowd : sequence of bool or int [S], optional
        Crowd flag of each segment (nonzero = crowd); default all zero.
    thing_ids : iterable of int
        Train ids of the "thing" classes (non-negative).
    ignore_label : int
        Semantic label of unlabelled pixels (and of crowd segments when
        ``ignore_crowd_in_semantic``).
    sigma : float
        Standard deviation of the centre Gaussians (> 0); the window is ``2 r + 1`` wide with
        ``r = round(3 sigma + 1)``.
    small_instance_area : int
        Thing segments (crowd included) with fewer pixels than this get ``small_instance_weight``.
    small_instance_weight : float
        Semantic weight of the pixels of small thing segments.
    ignore_crowd_in_semantic : bool
        Give crowd segments ``ignore_label`` in ``semantic``.
    num_threads : int or None
        OpenMP threads. None: OpenMP's default, all cores unless ``OMP_NUM_THREADS`` or
        ``omp_set_num_threads`` say otherwise (``torch.set_num_threads`` calls it, where torch
        shares pdl_post's GNU OpenMP, as torch's Linux wheels do). Results are identical for
        every thread count. Safe in a child of ``fork()`` after threaded calls in the parent
        (README: the forking thread's OpenMP workers are released before the fork).
    out : dict of numpy.ndarray, optional
        Arrays to write the targets into, with the keys, shapes and dtypes of the returned dict
        (writeable, rows contiguous, not overlapping ``panoptic`` or each other). Reusing them
        across calls, as a data loader does, saves allocating and first touching ~32 bytes per
        pixel each time. Every element is overwritten.

    Returns
    -------
    dict of numpy.ndarray
        ``out`` when given (the same arrays), else new arrays: ``semantic`` [H, W] int64,
        ``semantic_weights`` [H, W] float32, ``center`` [1, H, W] float32 (Gaussians at the
        rounded centroids of non-crowd thing segments, max on overlap),
        ``offset`` [2, H, W] float32 (centroid minus pixel, dy then dx, on non-crowd thing pixels),
        ``center_weights`` [H, W] float32 (1 on non-crowd labelled pixels) and
        ``offset_weights`` [H, W] float32 (1 on non-crowd thing pixels).

    Raises
    ------
    TypeError, ValueError
        On a bad argument, naming it, what was expected and what was received.
    """
    pan = as_numpy(panoptic, "panoptic")
    if pan.dtype.kind not in "iu" or (
        pan.dtype not in LABEL_DTYPES and pan.dtype not in WIDENED_LABEL_DTYPES
    ):
        raise TypeError(
            "panoptic: expected integer segment ids (uint8, uint16, uint32, int8, int16, int32, "
            f"int64), got dtype {pan.dtype}"
        )
    if pan.ndim != 2:
        raise ValueError(f"panoptic: expected a 2-D map [H, W], got shape {list(pan.shape)}")
    if pan.dtype in WIDENED_LABEL_DTYPES:
        pan = pan.astype(WIDENED_LABEL_DTYPES[pan.dtype])
    seg = _segment_array(segment_ids, "segment_ids", None)
    cat = _segment_array(category_ids, "category_ids", seg.size)
    if iscrowd is None:
        crowd = np.zeros(seg.size, dtype=np.uint8)
    else:
        crowd = (_segment_array(iscrowd, "iscrowd", seg.size) != 0).astype(np.uint8)
    if np.unique(seg).size != seg.size:
        values, counts = np.unique(seg, return_counts=True)
        raise ValueError(
            f"segment_ids: expected unique ids, got {values[counts > 1][:5].tolist()} repeated "
            "(segment_ids must be unique)"
        )
    things = check_thing_ids(thing_ids)
    ignore = check_int(ignore_label, "ignore_label")
    sigma = check_real(sigma, "sigma")
    if not (0 < sigma < np.inf and 2.0 * sigma * sigma > 0):
        raise ValueError(f"sigma: expected a finite number > 0 (2 sigma^2 > 0), got {sigma}")
    area = check_int(small_instance_area, "small_instance_area", minimum=0)
    weight = check_real(small_instance_weight, "small_instance_weight")
    if not isinstance(ignore_crowd_in_semantic, (bool, np.bool_)):
        raise TypeError(
            f"ignore_crowd_in_semantic: expected a bool, got {_describe(ignore_crowd_in_semantic)}"
        )
    threads = check_threads(num_threads)

    H, W = pan.shape
    # Windows are clipped to the image: a radius beyond max(H, W) draws the same pixels.
    radius = min(gaussian_radius(min(sigma, 1e15)), max(H, W))
    out = _check_out(out, pan) if out is not None else _new_outputs(H, W)
    _core.panoptic_targets(
        pan[None, None],
        seg.tolist(),
        cat.tolist(),
        crowd.tolist(),
        things,
        ignore,
        radius,
        area,
        weight,
        bool(ignore_crowd_in_semantic),
        _gaussian_table(sigma, radius, H, W),
        *(_core_view(out[key]) for key, _, _ in _OUTPUTS),
        threads,
    )
    return out
