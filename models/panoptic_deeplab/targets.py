"""Training targets of Panoptic-DeepLab from a panoptic label map.

Semantics (:func:`panoptic_targets` calls the compiled core ``pdl_post.targets``, which
reproduces :func:`panoptic_targets_reference` bit for bit; :func:`panoptic_targets_numpy`, the
earlier vectorised numpy path, is kept as a benchmark baseline and gives the same arrays):

Inputs
    ``panoptic`` [H, W] integer segment ids; ``segment_ids`` [S], ``category_ids`` [S] (contiguous
    train ids), ``iscrowd`` [S] (0/1, default zeros). Pixels whose id is not in ``segment_ids``
    are unlabelled. ``thing_ids``: the train ids of "thing" classes.

Outputs (dict)
    ``semantic`` [H, W] int64: the segment's category; ``ignore_label`` on unlabelled pixels
    (and on crowd segments when ``ignore_crowd_in_semantic``).
    ``semantic_weights`` [H, W] float32: ``small_instance_weight`` on the pixels of thing
    segments (crowd included) whose area is < ``small_instance_area``, else 1.
    ``center`` [1, H, W] float32: for every non-crowd thing segment with area > 0, its centroid
    (cy, cx) = mean row / column index (float64); a Gaussian ``exp(-(dy^2 + dx^2) / (2 sigma^2))``
    (float64, then float32) is drawn in a (6 sigma + 3)-wide square window centred at
    (round(cy), round(cx)) (round half to even), clipped to the image; overlaps keep the max.
    ``offset`` [2, H, W] float32: on pixels of non-crowd thing segments, (cy - y, cx - x)
    computed in float64; 0 elsewhere.
    ``center_weights`` [H, W] float32: 1 on pixels of every non-crowd labelled segment (stuff too).
    ``offset_weights`` [H, W] float32: 1 on pixels of non-crowd thing segments.

    Crowd thing segments get no centre and no offsets (as in detectron2's generator, where the
    crowd regions are then masked by the weights).  ``sigma`` need not be an integer: the window
    radius is ``round(3 sigma + 1)`` (25 for sigma = 8).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pdl_post.targets import panoptic_targets as _compiled_targets

__all__ = [
    "gaussian_kernel",
    "panoptic_targets",
    "panoptic_targets_numpy",
    "panoptic_targets_reference",
]


def gaussian_kernel(sigma: float) -> tuple[np.ndarray, int]:
    """Return ``(g, radius)``: the float64 Gaussian window of side ``2 radius + 1``."""
    radius = round(3 * sigma + 1)
    ax = np.arange(2 * radius + 1, dtype=np.float64) - radius
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2.0 * sigma * sigma))
    return g, radius


def _check(panoptic, segment_ids, category_ids, iscrowd):
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
        raise ValueError(
            f"panoptic must be a 2-D integer array [H, W], got {panoptic.dtype} {panoptic.shape}"
        )
    seg = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
    cat = np.asarray(category_ids, dtype=np.int64).reshape(-1)
    crowd = (
        np.zeros(len(seg), dtype=bool)
        if iscrowd is None
        else np.asarray(iscrowd).reshape(-1).astype(bool)
    )
    if not (len(seg) == len(cat) == len(crowd)):
        raise ValueError(
            "segment_ids, category_ids and iscrowd must have the same length, got "
            f"{len(seg)}, {len(cat)}, {len(crowd)}"
        )
    if len(np.unique(seg)) != len(seg):
        raise ValueError("segment_ids must be unique")
    return panoptic, seg, cat, crowd


def _draw_gaussian(center: np.ndarray, cy: float, cx: float, g: np.ndarray, r: int) -> None:
    H, W = center.shape
    y, x = round(cy), round(cx)  # Python's round: half to even, like np.round
    y0, y1 = max(0, y - r), min(H, y + r + 1)
    x0, x1 = max(0, x - r), min(W, x + r + 1)
    if y0 >= y1 or x0 >= x1:
        return
    win = g[y0 - (y - r) : y1 - (y - r), x0 - (x - r) : x1 - (x - r)].astype(np.float32)
    np.maximum(center[y0:y1, x0:x1], win, out=center[y0:y1, x0:x1])


def panoptic_targets_reference(
    panoptic: np.ndarray,
    segment_ids: Sequence[int],
    category_ids: Sequence[int],
    iscrowd: Sequence[int] | None = None,
    *,
    thing_ids: Iterable[int],
    ignore_label: int = 255,
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    ignore_crowd_in_semantic: bool = False,
) -> dict[str, np.ndarray]:
    """Straightforward per-segment reference implementation (see the module docstring)."""
    panoptic, seg, cat, crowd = _check(panoptic, segment_ids, category_ids, iscrowd)
    things = {int(t) for t in thing_ids}
    H, W = panoptic.shape
    semantic = np.full((H, W), ignore_label, dtype=np.int64)
    sem_w = np.ones((H, W), dtype=np.float32)
    center = np.zeros((H, W), dtype=np.float32)
    offset = np.zeros((2, H, W), dtype=np.float32)
    ctr_w = np.zeros((H, W), dtype=np.float32)
    off_w = np.zeros((H, W), dtype=np.float32)
    g, r = gaussian_kernel(sigma)
    for sid, c, cr in zip(seg.tolist(), cat.tolist(), crowd.tolist()):
        mask = panoptic == sid
        if not (ignore_crowd_in_semantic and cr):
            semantic[mask] = c
        is_thing = c in things
        if not cr:
            ctr_w[mask] = 1.0
            if is_thing:
                off_w[mask] = 1.0
        if not is_thing:
            continue
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        if len(ys) < small_instance_area:
            sem_w[mask] = small_instance_weight
        if cr:
            continue
        cy, cx = ys.mean(), xs.mean()
        _draw_gaussian(center, cy, cx, g, r)
        offset[0, ys, xs] = cy - ys
        offset[1, ys, xs] = cx - xs
    return {
        "semantic": semantic,
        "semantic_weights": sem_w,
        "center": center[None],
        "offset": offset,
        "center_weights": ctr_w,
        "offset_weights": off_w,
    }


def panoptic_targets(
    panoptic: np.ndarray,
    segment_ids: Sequence[int],
    category_ids: Sequence[int],
    iscrowd: Sequence[int] | None = None,
    *,
    thing_ids: Iterable[int],
    ignore_label: int = 255,
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    ignore_crowd_in_semantic: bool = False,
) -> dict[str, np.ndarray]:
    """Targets computed by the compiled core (:func:`pdl_post.targets.panoptic_targets`).

    Same arguments, outputs and semantics as :func:`panoptic_targets_reference`, bit for bit.
    """
    return _compiled_targets(
        panoptic,
        segment_ids,
        category_ids,
        iscrowd,
        thing_ids=thing_ids,
        ignore_label=ignore_label,
        sigma=sigma,
        small_instance_area=small_instance_area,
        small_instance_weight=small_instance_weight,
        ignore_crowd_in_semantic=ignore_crowd_in_semantic,
    )


def panoptic_targets_numpy(
    panoptic: np.ndarray,
    segment_ids: Sequence[int],
    category_ids: Sequence[int],
    iscrowd: Sequence[int] | None = None,
    *,
    thing_ids: Iterable[int],
    ignore_label: int = 255,
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    ignore_crowd_in_semantic: bool = False,
) -> dict[str, np.ndarray]:
    """Vectorised numpy targets (the fast path before the compiled core; kept as a baseline).

    Same arguments, outputs and semantics as :func:`panoptic_targets_reference`; the
    centroids are exact float64 sums divided by counts, so results match bit for bit.
    """
    panoptic, seg, cat, crowd = _check(panoptic, segment_ids, category_ids, iscrowd)
    things = np.array(sorted({int(t) for t in thing_ids}), dtype=np.int64)
    H, W = panoptic.shape
    S = len(seg)
    flat = panoptic.reshape(-1).astype(np.int64, copy=False)
    # index of each pixel's segment, S for unlabelled
    order = np.argsort(seg, kind="stable")
    sorted_ids = seg[order]
    pos = np.searchsorted(sorted_ids, flat)
    pos_c = np.minimum(pos, max(S - 1, 0))
    hit = (sorted_ids[pos_c] == flat) if S else np.zeros(flat.shape, dtype=bool)
    idx = np.where(hit, order[pos_c] if S else 0, S)

    is_thing = np.isin(cat, things)
    area = np.bincount(idx, minlength=S + 1)[:S]
    sem_lut = np.append(np.where(ignore_crowd_in_semantic & crowd, ignore_label, cat), ignore_label)
    semantic = sem_lut[idx].reshape(H, W)
    small = is_thing & (area < small_instance_area) & (area > 0)
    sem_w = np.append(np.where(small, small_instance_weight, 1.0), 1.0).astype(np.float32)[idx]
    ctr_w = np.append(~crowd, False).astype(np.float32)[idx]
    has_off = is_thing & ~crowd
    off_w_lut = np.append(has_off, False)
    off_w = off_w_lut.astype(np.float32)[idx]

    ys = np.repeat(np.arange(H, dtype=np.float64), W)
    xs = np.tile(np.arange(W, dtype=np.float64), H)
    # exact float64 sums of integer coordinates (< 2^53), then one division: same as .mean()
    sum_y = np.bincount(idx, weights=ys, minlength=S + 1)[:S]
    sum_x = np.bincount(idx, weights=xs, minlength=S + 1)[:S]
    safe = np.maximum(area, 1)
    cy = sum_y / safe
    cx = sum_x / safe

    offset = np.zeros((2, H * W), dtype=np.float32)
    sel = off_w_lut[idx]
    si = idx[sel]
    offset[0, sel] = cy[si] - ys[sel]
    offset[1, sel] = cx[si] - xs[sel]

    center = np.zeros((H, W), dtype=np.float32)
    g, r = gaussian_kernel(sigma)
    for k in np.nonzero(has_off & (area > 0))[0].tolist():
        _draw_gaussian(center, float(cy[k]), float(cx[k]), g, r)
    return {
        "semantic": semantic,
        "semantic_weights": sem_w.reshape(H, W),
        "center": center[None],
        "offset": offset.reshape(2, H, W),
        "center_weights": ctr_w.reshape(H, W),
        "offset_weights": off_w.reshape(H, W),
    }
