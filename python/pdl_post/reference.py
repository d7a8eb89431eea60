"""Reference backend: the executable form of ``docs/merge-semantics.md``.

Every other backend (C++ CPU, CUDA) must reproduce these functions bit for bit, except segment
scores from logits: numpy's ``exp`` and summation order here, the library's own ``exp`` and a
fixed block order there (they agree to ~1e-14 relative). The code favours
clarity and exactness over speed: the per-pixel loops (NMS max filter, offset voting) are plain
``numba.njit`` loops, and offset voting is brute force over all centres, which is exact by
construction. When numba is not importable a plain-numpy fallback gives identical results (the
max filter is a separable shifted maximum, voting is chunked brute force over the centres).

The pipeline for one image::

    find_centers(ctr)                -> centres (row-major peaks, top-k), scores
    group_pixels(centres, off, mask) -> instance map (0 = none, else centre index + 1)
    fuse(sem, instance)              -> panoptic ids, segments (majority vote, stuff filter)
    postprocess_image(...)           -> all of the above plus segment scores

No input validation beyond asserts: the API layer validates user input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

try:  # numba is optional: the numpy fallback below gives identical results.
    import numba

    NUMBA_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by forcing the flag in tests
    numba = None
    NUMBA_AVAILABLE = False

#: Use the numba loops when True; tests set it to False to exercise the numpy fallback.
_USE_NUMBA = NUMBA_AVAILABLE

__all__ = [
    "NUMBA_AVAILABLE",
    "argmax_logits",
    "find_centers",
    "fuse",
    "group_pixels",
    "postprocess_image",
]

# Pixels x centres per chunk in the numpy voting fallback (float32 elements, ~16 MiB).
_VOTE_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# numba kernels (compiled lazily on first call)
# --------------------------------------------------------------------------------------------

if NUMBA_AVAILABLE:

    @numba.njit(cache=False)
    def _max_filter_nb(h, r):  # pragma: no cover - compiled
        # Separable (2r+1) x (2r+1) max filter with the window clipped to the image.
        # h contains no NaN (thresholding removed them), so ">" gives the exact maximum.
        height, width = h.shape
        rows = np.empty_like(h)
        for y in range(height):
            for x in range(width):
                lo = max(x - r, 0)
                hi = min(x + r, width - 1)
                m = h[y, lo]
                for j in range(lo + 1, hi + 1):
                    if h[y, j] > m:
                        m = h[y, j]
                rows[y, x] = m
        out = np.empty_like(h)
        for y in range(height):
            lo = max(y - r, 0)
            hi = min(y + r, height - 1)
            for x in range(width):
                m = rows[lo, x]
                for i in range(lo + 1, hi + 1):
                    if rows[i, x] > m:
                        m = rows[i, x]
                out[y, x] = m
        return out

    @numba.njit(cache=False)
    def _group_nb(cy, cx, dy, dx, thing_mask, out):  # pragma: no cover - compiled
        # Brute-force offset voting. cy, cx, dy, dx are float32 arrays, so every operation
        # below is a float32 operation (no float64 promotion, no fastmath, hence no FMA).
        height, width = thing_mask.shape
        k = cy.shape[0]
        for y in range(height):
            fy = np.float32(y)
            for x in range(width):
                if not thing_mask[y, x]:
                    continue
                qy = fy + dy[y, x]
                qx = np.float32(x) + dx[y, x]
                if not (np.isfinite(qy) and np.isfinite(qx)):
                    continue
                ey = cy[0] - qy
                ex = cx[0] - qx
                best_d = ey * ey + ex * ex
                best = 0
                for i in range(1, k):
                    ey = cy[i] - qy
                    ex = cx[i] - qx
                    d = ey * ey + ex * ex
                    if d < best_d:  # strict: ties (including inf == inf) keep the lower index
                        best_d = d
                        best = i
                out[y, x] = best + 1


# --------------------------------------------------------------------------------------------
# numpy fallbacks
# --------------------------------------------------------------------------------------------


def _max_filter_np(h: np.ndarray, r: int) -> np.ndarray:
    """Separable clipped max filter by shifted maxima (same result as ``_max_filter_nb``)."""
    rows = h.copy()
    for s in range(1, r + 1):
        np.maximum(rows[:, s:], h[:, :-s], out=rows[:, s:])
        np.maximum(rows[:, :-s], h[:, s:], out=rows[:, :-s])
    out = rows.copy()
    for s in range(1, r + 1):
        np.maximum(out[s:, :], rows[:-s, :], out=out[s:, :])
        np.maximum(out[:-s, :], rows[s:, :], out=out[:-s, :])
    return out


def _group_np(cy, cx, dy, dx, thing_mask, out) -> None:
    """Chunked brute-force voting (same result as ``_group_nb``)."""
    ys, xs = np.nonzero(thing_mask)
    qy = ys.astype(np.float32) + dy[ys, xs]
    qx = xs.astype(np.float32) + dx[ys, xs]
    finite = np.isfinite(qy) & np.isfinite(qx)
    ys, xs, qy, qx = ys[finite], xs[finite], qy[finite], qx[finite]
    k = cy.shape[0]
    chunk = max(1, _VOTE_CHUNK_ELEMENTS // k)
    for start in range(0, ys.size, chunk):
        sl = slice(start, start + chunk)
        ey = cy[None, :] - qy[sl, None]  # [n, K] float32
        ex = cx[None, :] - qx[sl, None]
        with np.errstate(over="ignore"):  # squares may overflow to +inf: that is specified
            d = ey * ey + ex * ex  # each operation rounded to float32
        # argmin returns the first minimum: ties (inf == inf too) go to the lower index.
        out[ys[sl], xs[sl]] = np.argmin(d, axis=1).astype(np.int32) + 1


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


def argmax_logits(logits: np.ndarray) -> np.ndarray:
    """Per-pixel class with the largest logit.

    The first maximum wins; NaN never wins (a pixel whose logits are all NaN gets class 0).

    Parameters
    ----------
    logits : ndarray, shape [C, H, W], float
        Class scores.

    Returns
    -------
    ndarray, shape [H, W], int64
        Class index per pixel.
    """
    logits = np.asarray(logits)
    assert logits.ndim == 3 and logits.shape[0] >= 1, logits.shape
    best_val = np.full(logits.shape[1:], np.nan, dtype=logits.dtype)
    best = np.zeros(logits.shape[1:], dtype=np.int64)
    for c in range(logits.shape[0]):
        v = logits[c]
        # Take channel c when it is a number and either no number was seen yet or it is
        # strictly larger (strict: the first maximum wins).
        take = ~np.isnan(v) & (np.isnan(best_val) | (v > best_val))
        best[take] = c
        best_val[take] = v[take]
    return best


def find_centers(
    ctr: np.ndarray,
    *,
    threshold: float,
    nms_kernel: int,
    top_k: int | None,
    topk_mode: str = "exact",
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold, NMS and top-k selection of instance centres (semantics steps 1-4).

    Parameters
    ----------
    ctr : ndarray, shape [H, W] (or [1, H, W]), float32 or float64
        Centre heatmap.
    threshold : float
        Keep ``ctr > threshold``, the comparison done in ``ctr``'s own dtype.
    nms_kernel : int
        Odd side of the NMS window, clipped at the image border.
    top_k : int or None
        Number of centres to keep; None keeps all, 0 keeps none.
    topk_mode : {"exact", "detectron2"}
        ``"exact"``: the ``top_k`` largest peaks, ties to the earlier pixel in row-major order.
        ``"detectron2"``: with ``P`` peaks and ``P >= top_k``, keep peaks strictly above the
        ``top_k``-th largest peak value; with ``P < top_k`` keep all.

    Returns
    -------
    centers : ndarray, shape [K, 2], int64
        (y, x) of the kept peaks in row-major order; centre i becomes instance i + 1.
    scores : ndarray, shape [K], float64
        ``ctr`` at each kept peak.
    """
    ctr = np.asarray(ctr)
    if ctr.ndim == 3:
        assert ctr.shape[0] == 1, ctr.shape
        ctr = ctr[0]
    assert ctr.ndim == 2, ctr.shape
    assert ctr.dtype in (np.float32, np.float64), ctr.dtype
    assert nms_kernel >= 1 and nms_kernel % 2 == 1, nms_kernel
    assert top_k is None or top_k >= 0, top_k
    assert topk_mode in ("exact", "detectron2"), topk_mode

    # 1. Threshold in ctr's own dtype (NaN > t is False -> -1). Casting to float64 is exact.
    # A threshold beyond float32's range rounds to +-inf, as IEEE conversion does.
    with np.errstate(over="ignore"):
        t = ctr.dtype.type(threshold)
    h = np.where(ctr > t, ctr, ctr.dtype.type(-1)).astype(np.float64)

    # 2. Clipped k x k max filter.
    r = nms_kernel // 2
    if _USE_NUMBA:
        m = _max_filter_nb(np.ascontiguousarray(h), r)
    else:
        m = _max_filter_np(h, r)

    # 3. Peaks in row-major order (np.nonzero is row-major); plateaus keep every tied pixel.
    ys, xs = np.nonzero((h > 0) & (h == m))
    values = h[ys, xs]
    p = values.size

    # 4. Top-k.
    if top_k is None:
        keep = np.arange(p)
    elif top_k == 0:
        keep = np.arange(0)
    elif topk_mode == "exact":
        if p <= top_k:
            keep = np.arange(p)
        else:
            # Stable sort on -value: equal values stay in row-major order, so ties at the
            # boundary go to the earlier pixel. Then back to row-major order.
            keep = np.sort(np.argsort(-values, kind="stable")[:top_k])
    else:  # detectron2
        if p >= top_k:
            kth = np.sort(values)[::-1][top_k - 1]
            keep = np.flatnonzero(values > kth)
        else:
            keep = np.arange(p)

    centers = np.stack([ys[keep], xs[keep]], axis=1).astype(np.int64).reshape(-1, 2)
    scores = values[keep].astype(np.float64)
    return centers, scores


def group_pixels(centers: np.ndarray, off: np.ndarray, thing_mask: np.ndarray) -> np.ndarray:
    """Offset voting: assign every thing pixel to its nearest centre (semantics step 5).

    Pixel (y, x) votes for ``qy = f32(y) + f32(dy)``, ``qx = f32(x) + f32(dx)`` and joins the
    centre with the smallest ``f32(f32(cy - qy)^2 + f32(cx - qx)^2)``, each operation rounded to
    float32; ties (including distances that overflow to +inf) go to the lower index. Pixels whose
    ``qy`` or ``qx`` is not finite, and all pixels when there are no centres, join no instance.

    Parameters
    ----------
    centers : ndarray, shape [K, 2], int
        (y, x) of each centre.
    off : ndarray, shape [2, H, W], float32 or float64
        Offsets, channel 0 = dy, channel 1 = dx (centre minus pixel).
    thing_mask : ndarray, shape [H, W], bool
        Pixels that vote.

    Returns
    -------
    ndarray, shape [H, W], int32
        0 = no instance, else centre index + 1.
    """
    centers = np.asarray(centers).reshape(-1, 2)
    off = np.asarray(off)
    thing_mask = np.asarray(thing_mask, dtype=bool)
    assert off.ndim == 3 and off.shape[0] == 2, off.shape
    assert thing_mask.shape == off.shape[1:], (thing_mask.shape, off.shape)
    height, width = thing_mask.shape
    assert height < 2**24 and width < 2**24
    out = np.zeros((height, width), dtype=np.int32)
    k = centers.shape[0]
    if k == 0:
        return out
    assert k < 2**31 - 1
    # Rounding dy, dx to float32 first is part of the semantics; coordinates are exact.
    cy = centers[:, 0].astype(np.float32)
    cx = centers[:, 1].astype(np.float32)
    with np.errstate(over="ignore"):  # float64 offsets beyond float32 become +-inf: specified
        dy = np.ascontiguousarray(off[0], dtype=np.float32)
        dx = np.ascontiguousarray(off[1], dtype=np.float32)
    if _USE_NUMBA:
        _group_nb(cy, cx, dy, dx, np.ascontiguousarray(thing_mask), out)
    else:
        _group_np(cy, cx, dy, dx, thing_mask, out)
    return out


def _fuse(sem, instance, thing_ids, label_divisor, stuff_area, void_label, out_dtype):
    """``fuse`` plus, per pixel, the index of its segment in the list (-1 = void)."""
    sem = np.asarray(sem)
    instance = np.asarray(instance)
    assert sem.ndim == 2 and sem.shape == instance.shape, (sem.shape, instance.shape)
    assert np.issubdtype(sem.dtype, np.integer), sem.dtype
    label_divisor = int(label_divisor)
    assert label_divisor >= 1, label_divisor
    s = sem.ravel().astype(np.int64)
    inst = instance.ravel().astype(np.int64)
    assert inst.size == 0 or inst.min() >= 0
    n_inst = int(inst.max()) if inst.size else 0

    segments: list[dict[str, Any]] = []
    seg_ids: list[int] = []
    seg_of_pixel = np.full(s.size, -1, dtype=np.int64)

    # 6. Majority vote. Count (instance, class) pairs; per instance the class with the largest
    # count wins, ties to the smallest class. Empty instances never appear, so they use no id.
    in_inst = np.flatnonzero(inst > 0)
    if in_inst.size:
        cls_vals, cls_idx = np.unique(s[in_inst], return_inverse=True)  # cls_vals ascending
        n_cls = cls_vals.size
        key = inst[in_inst] * n_cls + cls_idx.reshape(-1)
        pair_key, pair_cnt = np.unique(key, return_counts=True)
        pair_inst = pair_key // n_cls
        pair_cls = pair_key % n_cls
        # Sort by instance, then count descending, then class ascending; take the first per group.
        order = np.lexsort((pair_cls, -pair_cnt, pair_inst))
        first = order[np.r_[True, pair_inst[order][1:] != pair_inst[order][:-1]]]
        visited = pair_inst[first]  # ascending = visiting order
        visited_cls = cls_vals[pair_cls[first]]
        areas = np.bincount(inst[in_inst], minlength=n_inst + 1)[visited]

        lut = np.full(n_inst + 1, -1, dtype=np.int64)  # instance id -> segment index
        count_per_class: dict[int, int] = {}
        for inst_id, c, area in zip(visited.tolist(), visited_cls.tolist(), areas.tolist()):
            n = count_per_class.get(c, 0) + 1
            if n >= label_divisor:
                raise ValueError(
                    f"label_divisor={label_divisor} is too small: class {c} has at least {n} "
                    f"instances, so instance number {n} would not fit below label_divisor "
                    f"(ids class * label_divisor + n would be ambiguous); expected "
                    f"label_divisor > {n}"
                )
            count_per_class[c] = n
            lut[inst_id] = len(segments)
            seg_ids.append(c * label_divisor + n)
            segments.append(
                {
                    "id": c * label_divisor + n,
                    "category_id": c,
                    "isthing": True,
                    "area": area,
                    "instance": inst_id,
                }
            )
        seg_of_pixel[in_inst] = lut[inst[in_inst]]

    # 7. Stuff: classes not in thing_ids, pixels without an instance, kept if area >= stuff_area.
    thing_arr = np.asarray(sorted({int(t) for t in thing_ids}), dtype=np.int64)
    stuff_px = np.flatnonzero((inst == 0) & ~np.isin(s, thing_arr))
    if stuff_px.size:
        cls_vals, cls_idx, cls_cnt = np.unique(s[stuff_px], return_inverse=True, return_counts=True)
        cls_idx = cls_idx.reshape(-1)
        stuff_lut = np.full(cls_vals.size, -1, dtype=np.int64)
        for j, (c, area) in enumerate(zip(cls_vals.tolist(), cls_cnt.tolist())):
            if area >= stuff_area:
                stuff_lut[j] = len(segments)
                seg_ids.append(c * label_divisor)
                segments.append(
                    {
                        "id": c * label_divisor,
                        "category_id": c,
                        "isthing": False,
                        "area": area,
                        "instance": 0,
                    }
                )
        seg_of_pixel[stuff_px] = stuff_lut[cls_idx]

    # 8. Everything else is void. Check every value fits the output dtype.
    info = np.iinfo(out_dtype)
    for v in [void_label, *seg_ids]:
        if not info.min <= v <= info.max:
            raise ValueError(
                f"panoptic id {v} does not fit out_dtype={np.dtype(out_dtype).name} "
                f"(range {info.min}..{info.max})"
            )
    id_lut = np.array([*seg_ids, void_label], dtype=out_dtype)  # index -1 -> void_label
    panoptic = id_lut[seg_of_pixel].reshape(sem.shape)
    return panoptic, segments, seg_of_pixel.reshape(sem.shape)


def fuse(
    sem: np.ndarray,
    instance: np.ndarray,
    *,
    thing_ids: Iterable[int],
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    out_dtype: Any = np.int32,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Majority vote and stuff filtering (semantics steps 6-8).

    Parameters
    ----------
    sem : ndarray, shape [H, W], int
        Class labels (non-negative).
    instance : ndarray, shape [H, W], int
        Instance map from :func:`group_pixels`: 0 = none, else 1..K.
    thing_ids : iterable of int
        Thing classes; every other class is stuff.
    label_divisor : int
        Panoptic id = class * label_divisor + n.
    stuff_area : int
        Minimum pixel count of a stuff class to be kept (``>=`` keeps).
    void_label : int
        Id of unassigned pixels.
    out_dtype : numpy integer dtype
        Dtype of the panoptic map.

    Returns
    -------
    panoptic : ndarray, shape [H, W], out_dtype
        Panoptic ids.
    segments : list of dict
        ``{"id", "category_id", "isthing", "area", "instance"}`` (``instance`` = the 1-based
        instance id for things, 0 for stuff): things in visiting order (instances 1..K, empty
        ones skipped), then stuff by increasing class id.

    Raises
    ------
    ValueError
        If some class gets ``n >= label_divisor`` instances, or an id does not fit ``out_dtype``.
    """
    panoptic, segments, _ = _fuse(
        sem, instance, thing_ids, label_divisor, stuff_area, void_label, out_dtype
    )
    return panoptic, segments


def _mean_class_prob(logits, seg_of_pixel, seg_class, n_segments):
    """Mean softmax probability (float64) of each segment's class over its pixels."""
    logits = np.asarray(logits)
    n_cls = logits.shape[0]
    flat = logits.reshape(n_cls, -1)
    px = np.flatnonzero(seg_of_pixel.ravel() >= 0)
    if px.size == 0:
        return np.zeros(n_segments, dtype=np.float64)
    seg = seg_of_pixel.ravel()[px]
    cls = seg_class[seg]
    assert cls.min() >= 0 and cls.max() < n_cls, "segment class outside the logits' classes"
    # Softmax in float64, one class at a time: p_c = exp(l_c - max) / sum_j exp(l_j - max).
    # NaN or infinite logits give NaN scores; no warning for them.
    with np.errstate(invalid="ignore", over="ignore"):
        mx = flat[0, px].astype(np.float64)
        for c in range(1, n_cls):
            mx = np.maximum(mx, flat[c, px].astype(np.float64))
        den = np.zeros(px.size, dtype=np.float64)
        for c in range(n_cls):
            den += np.exp(flat[c, px].astype(np.float64) - mx)
        num = np.exp(flat[cls, px].astype(np.float64) - mx)
        sums = np.bincount(seg, weights=num / den, minlength=n_segments)
    areas = np.bincount(seg, minlength=n_segments)
    return sums / np.maximum(areas, 1)


def postprocess_image(
    sem: np.ndarray,
    ctr: np.ndarray,
    off: np.ndarray,
    *,
    thing_ids: Iterable[int],
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    threshold: float,
    nms_kernel: int,
    top_k: int | None,
    topk_mode: str = "exact",
    foreground_mask: np.ndarray | None = None,
    logits: np.ndarray | None = None,
    out_dtype: Any = np.int32,
) -> dict[str, Any]:
    """Full post-processing of one image (semantics steps 1-8 plus segment scores).

    Parameters
    ----------
    sem : ndarray, shape [H, W], int
        Class labels (callers with logits argmax them first, see :func:`argmax_logits`).
    ctr : ndarray, shape [H, W] or [1, H, W], float32 or float64
        Centre heatmap.
    off : ndarray, shape [2, H, W], float32 or float64
        Offsets (dy, dx).
    thing_ids, label_divisor, stuff_area, void_label
        See :func:`fuse`.
    threshold, nms_kernel, top_k, topk_mode
        See :func:`find_centers`.
    foreground_mask : ndarray, shape [H, W], optional
        When given, thing pixels are ``foreground_mask > 0`` instead of ``sem in thing_ids``.
    logits : ndarray, shape [C, H, W], float, optional
        When given, scores are multiplied by / set to the mean softmax probability (computed in
        float64) of the segment's class over its pixels.
    out_dtype : numpy integer dtype
        Dtype of the panoptic map.

    Returns
    -------
    dict
        ``panoptic`` [H, W] out_dtype; ``centers`` [K, 2] int64 (y, x); ``center_scores`` [K]
        float64; ``segments``: list of ``{"id", "category_id", "isthing", "area", "score"}``,
        things in visiting order then stuff by increasing class. Thing score = ``ctr`` at its
        peak (times the mean class probability with logits); stuff score = the mean class
        probability with logits, else 1.0.
    """
    sem = np.asarray(sem)
    ctr = np.asarray(ctr)
    if ctr.ndim == 3:
        ctr = ctr[0]
    centers, center_scores = find_centers(
        ctr, threshold=threshold, nms_kernel=nms_kernel, top_k=top_k, topk_mode=topk_mode
    )
    if foreground_mask is not None:
        thing_mask = np.asarray(foreground_mask) > 0  # NaN > 0 is False
    else:
        thing_mask = np.isin(sem, np.asarray(sorted({int(t) for t in thing_ids}), dtype=np.int64))
    instance = group_pixels(centers, off, thing_mask)
    panoptic, segs, seg_of_pixel = _fuse(
        sem, instance, thing_ids, label_divisor, stuff_area, void_label, out_dtype
    )

    if logits is not None and segs:
        seg_class = np.array([sg["category_id"] for sg in segs], dtype=np.int64)
        probs = _mean_class_prob(logits, seg_of_pixel, seg_class, len(segs)).tolist()
    else:
        probs = None

    segments = []
    for j, sg in enumerate(segs):
        if sg["isthing"]:
            score = float(center_scores[sg["instance"] - 1])
            if probs is not None:
                score *= probs[j]
        else:
            score = probs[j] if probs is not None else 1.0
        if score != score:  # NaN: reported as the one positive quiet NaN, as the other paths do
            score = math.nan
        segments.append(
            {
                "id": sg["id"],
                "category_id": sg["category_id"],
                "isthing": sg["isthing"],
                "area": sg["area"],
                "score": score,
            }
        )
    return {
        "panoptic": panoptic,
        "centers": centers,
        "center_scores": center_scores,
        "segments": segments,
    }
