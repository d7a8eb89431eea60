# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Evaluation hot loops: one pass over two label maps counting every distinct (a, b) pair.

Everything the evaluators need per image reduces to such counts:

- panoptic quality: (gt segment id, predicted segment id) -> intersection; areas and void overlaps
  are sums over these pairs;
- confusion matrices: (gt label, predicted label) -> pixels;
- Cityscapes iIoU: (gt instance id, predicted label) -> pixels;
- Cityscapes instance AP: (gt instance id) -> pixels inside one predicted mask.

The pass keeps the current run of equal pairs in registers (label maps are piecewise constant, so
runs are long) and flushes a run into an open-addressing hash table keyed by the 64-bit pair
(``_counting.pxi``, shared with ``_png.pyx``). No limit on the number of distinct ids; the table
grows as needed. The GIL is released.

``pq_match`` / ``pq_image_coco`` apply the panoptic-quality matching rules to one image's pairs.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from libcpp.algorithm cimport sort
from libcpp.pair cimport pair
from libcpp.vector cimport vector

import numpy as np

include "_counting.pxi"


cdef int _pair_pass(const uint32_t* a, const uint32_t* b, size_t n, Table* t) noexcept nogil:
    cdef PairRun s
    _pair_run_init(&s)
    if _pair_run_chunk(&s, a, b, n, t) != 0:
        return -1
    return _pair_run_flush(&s, t)


def pair_counts(const uint32_t[::1] a, const uint32_t[::1] b):
    """Count the distinct pairs (a[i], b[i]).

    Parameters
    ----------
    a, b : uint32 arrays of shape (N,), C-contiguous

    Returns
    -------
    tuple of numpy.ndarray
        ``(a_ids uint32 (K,), b_ids uint32 (K,), counts int64 (K,))``, unsorted, counts > 0.
    """
    cdef Table t
    cdef int err
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a, b: expected the same length, got {a.shape[0]} and {b.shape[0]}")
    if _table_init(&t, 1024) != 0:
        _table_free(&t)
        raise MemoryError()
    try:
        with nogil:
            err = _pair_pass(&a[0] if a.shape[0] else NULL, &b[0] if b.shape[0] else NULL,
                             <size_t>a.shape[0], &t)
        if err != 0:
            raise MemoryError()
        return _table_export(&t)
    finally:
        _table_free(&t)


cdef int _masked_pass(const uint32_t* ids, const uint8_t* mask, size_t n, Table* t,
                      int64_t* npix) noexcept nogil:
    cdef size_t i = 0, run_start
    cdef uint64_t w
    cdef uint32_t cur
    cdef int64_t total = 0
    while i < n:
        # Skip zero mask bytes a word at a time (predicted masks are mostly empty).
        while i + 8 <= n:
            memcpy(&w, mask + i, 8)
            if w != 0:
                break
            i += 8
        while i < n and mask[i] == 0:
            i += 1
        if i >= n:
            break
        # A run of non-zero mask bytes with one id.
        cur = ids[i]
        run_start = i
        i += 1
        while i < n and mask[i] != 0 and ids[i] == cur:
            i += 1
        total += <int64_t>(i - run_start)
        if _table_add(t, cur, <int64_t>(i - run_start)) != 0:
            return -1
    npix[0] = total
    return 0


def masked_counts(const uint32_t[::1] ids, const uint8_t[::1] mask):
    """Count the ids under the non-zero entries of ``mask``.

    Parameters
    ----------
    ids : uint32 array of shape (N,)
    mask : uint8 array of shape (N,); non-zero marks the pixels to count

    Returns
    -------
    tuple
        ``(unique ids uint32 (K,), counts int64 (K,), number of non-zero mask pixels)``, unsorted.
    """
    cdef Table t
    cdef int err
    cdef int64_t npix = 0
    if ids.shape[0] != mask.shape[0]:
        raise ValueError(f"ids, mask: expected the same length, got {ids.shape[0]} and {mask.shape[0]}")
    if _table_init(&t, 64) != 0:
        _table_free(&t)
        raise MemoryError()
    try:
        with nogil:
            err = _masked_pass(&ids[0] if ids.shape[0] else NULL, &mask[0] if mask.shape[0] else NULL,
                               <size_t>ids.shape[0], &t, &npix)
        if err != 0:
            raise MemoryError()
        _, second, counts = _table_export(&t)
        return second, counts, int(npix)
    finally:
        _table_free(&t)


cdef int _pair_pass_rgb(const uint8_t* a, const uint8_t* b, size_t height, size_t width,
                        size_t abpp, size_t bbpp, Table* t) noexcept nogil:
    cdef RgbPairs s
    cdef size_t y
    _rgb_pairs_init(&s)
    for y in range(height):
        if _rgb_pairs_row(&s, a + y * (1 + width * abpp) + 1, b + y * (1 + width * bbpp) + 1,
                          width, abpp, bbpp, t) != 0:
            return -1
    return _rgb_pairs_finish(&s, t)


def pair_counts_rgb(const uint8_t[::1] a, const uint8_t[::1] b, Py_ssize_t height,
                    Py_ssize_t width, Py_ssize_t a_bpp, Py_ssize_t b_bpp):
    """Count the distinct (id_a, id_b) pairs of two unfiltered PNG scanline buffers.

    Parameters
    ----------
    a, b : uint8 arrays of shape (height * (1 + width * bpp),)
        Rows of one filter-type byte followed by RGB (bpp 3) or RGBA (bpp 4) pixels, as
        ``pdl_post._png.inflate_rows`` leaves them.
    height, width : int
    a_bpp, b_bpp : int
        3 or 4 bytes per pixel; the id is R + 256 G + 256**2 B (alpha ignored).

    Returns
    -------
    tuple of numpy.ndarray
        ``(a_ids uint32 (K,), b_ids uint32 (K,), counts int64 (K,))``, unsorted.
    """
    cdef Table t
    cdef int err
    if a_bpp not in (3, 4) or b_bpp not in (3, 4):
        raise ValueError(f"a_bpp, b_bpp: expected 3 or 4, got {a_bpp} and {b_bpp}")
    if height < 0 or width < 0:
        raise ValueError(f"height, width: expected >= 0, got {height}, {width}")
    if a.shape[0] != height * (1 + width * a_bpp) or b.shape[0] != height * (1 + width * b_bpp):
        raise ValueError(
            f"a, b: expected {height * (1 + width * a_bpp)} and {height * (1 + width * b_bpp)} "
            f"bytes, got {a.shape[0]} and {b.shape[0]}")
    if _table_init(&t, 1024) != 0:
        _table_free(&t)
        raise MemoryError()
    try:
        if height > 0 and width > 0:
            with nogil:
                err = _pair_pass_rgb(&a[0], &b[0], <size_t>height, <size_t>width,
                                     <size_t>a_bpp, <size_t>b_bpp, &t)
            if err != 0:
                raise MemoryError()
        return _table_export(&t)
    finally:
        _table_free(&t)


cdef inline Py_ssize_t _find(const int64_t* ids, const int64_t* order, Py_ssize_t n,
                             int64_t key) noexcept nogil:
    """Index i with ids[i] == key (ids[order] sorted ascending), or -1."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if ids[order[mid]] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < n and ids[order[lo]] == key:
        return order[lo]
    return -1


cdef Py_ssize_t _pq_core(Py_ssize_t K, const int64_t* g, const int64_t* p, const int64_t* inter,
                         Py_ssize_t G, const int64_t* gt_ids, const int64_t* gorder,
                         const int64_t* gt_cat, const uint8_t* gt_crowd, const int64_t* gt_area,
                         Py_ssize_t P, const int64_t* pred_ids, const int64_t* porder,
                         const int64_t* pred_cat, const int64_t* pred_area, int64_t void_id,
                         Py_ssize_t C, double* iou, int64_t* tp, int64_t* fp,
                         int64_t* fn) noexcept nogil:
    """The PQ matching rules for one image (see pq_match). Returns -1, the index of a pair with a
    non-positive union (nothing added then), or -2 when out of memory."""
    cdef Py_ssize_t k, gi, pi, c, bad = -1
    cdef int64_t u
    cdef double v
    cdef int64_t* gis = <int64_t*>malloc((K + 1) * sizeof(int64_t))
    cdef int64_t* pis = <int64_t*>malloc((K + 1) * sizeof(int64_t))
    cdef int64_t* void_ov = <int64_t*>calloc(P + 1, sizeof(int64_t))
    cdef int64_t* ign = <int64_t*>calloc(P + 1, sizeof(int64_t))
    cdef uint8_t* gm = <uint8_t*>calloc(G + 1, 1)
    cdef uint8_t* pm = <uint8_t*>calloc(P + 1, 1)
    cdef uint8_t* crowd_set = <uint8_t*>calloc(C + 1, 1)
    cdef int64_t* crowd_id = <int64_t*>calloc(C + 1, sizeof(int64_t))
    if (gis == NULL or pis == NULL or void_ov == NULL or ign == NULL or gm == NULL or pm == NULL
            or crowd_set == NULL or crowd_id == NULL):
        bad = -2
    else:
        for k in range(K):
            gis[k] = _find(gt_ids, gorder, G, g[k]) if G else -1
            pis[k] = _find(pred_ids, porder, P, p[k]) if P else -1
            if g[k] == void_id and pis[k] >= 0:
                void_ov[pis[k]] += inter[k]
        # Check every union first, so that nothing is added for an inconsistent image.
        for k in range(K):
            gi = gis[k]
            pi = pis[k]
            if gi < 0 or pi < 0 or gt_crowd[gi] or gt_cat[gi] != pred_cat[pi]:
                continue
            if pred_area[pi] + gt_area[gi] - inter[k] - void_ov[pi] <= 0:
                bad = k
                break
        if bad == -1:
            # Matches, summed in pair order as the official code does.
            for k in range(K):
                gi = gis[k]
                pi = pis[k]
                if gi < 0 or pi < 0 or gt_crowd[gi] or gt_cat[gi] != pred_cat[pi]:
                    continue
                u = pred_area[pi] + gt_area[gi] - inter[k] - void_ov[pi]
                v = <double>inter[k] / <double>u
                if v > 0.5:
                    c = gt_cat[gi]
                    tp[c] += 1
                    iou[c] += v
                    gm[gi] = 1
                    pm[pi] = 1
            # Unmatched non-crowd GT: false negatives. The last listed crowd segment of each
            # category is the one predictions may overlap without counting as false positives.
            for k in range(G):
                if gm[k] == 0 and gt_crowd[k] == 0:
                    fn[gt_cat[k]] += 1
                if gt_crowd[k]:
                    crowd_set[gt_cat[k]] = 1
                    crowd_id[gt_cat[k]] = gt_ids[k]
            for k in range(P):
                ign[k] = void_ov[k]
            for k in range(K):
                pi = pis[k]
                if pi >= 0 and crowd_set[pred_cat[pi]] and g[k] == crowd_id[pred_cat[pi]]:
                    ign[pi] += inter[k]
            for k in range(P):
                if pm[k] == 0 and not (<double>ign[k] / <double>pred_area[k] > 0.5):
                    fp[pred_cat[k]] += 1
    free(gis)
    free(pis)
    free(void_ov)
    free(ign)
    free(gm)
    free(pm)
    free(crowd_set)
    free(crowd_id)
    return bad


def _check_cats(const int64_t[::1] cats, Py_ssize_t C, str name):
    cdef Py_ssize_t k
    for k in range(cats.shape[0]):
        if cats[k] < 0 or cats[k] >= C:
            raise ValueError(f"{name}: index {cats[k]} out of range 0..{C - 1}")


def pq_match(const int64_t[::1] g, const int64_t[::1] p, const int64_t[::1] inter,
             const int64_t[::1] gt_ids, const int64_t[::1] gt_cat, const uint8_t[::1] gt_crowd,
             const int64_t[::1] gt_area, const int64_t[::1] pred_ids, const int64_t[::1] pred_cat,
             const int64_t[::1] pred_area, int64_t void_id,
             double[::1] iou, int64_t[::1] tp, int64_t[::1] fp, int64_t[::1] fn):
    """PQ matching of one image; adds into ``iou``, ``tp``, ``fp``, ``fn`` (per category).

    Parameters
    ----------
    g, p, inter : int64 (K,)
        (GT id, predicted id, intersection) pairs, sorted by (g, p): matches are summed in this
        order, as the official code does.
    gt_ids, gt_cat, gt_crowd, gt_area : (G,)
        GT segments in listing order (the last crowd segment of a category is the one that
        counts), their category indices, crowd flags and areas.
    pred_ids, pred_cat, pred_area : (P,)
        Predicted segments, category indices and areas (pixel counts).
    void_id : int
        GT id of void pixels.
    iou, tp, fp, fn : (C,)
        Accumulators, indexed by category index.

    Returns
    -------
    int
        -1, or the index into the pairs of a match candidate whose union is not positive
        (inconsistent GT areas); nothing is added then.
    """
    cdef Py_ssize_t K = g.shape[0], G = gt_ids.shape[0], P = pred_ids.shape[0], C = iou.shape[0]
    cdef Py_ssize_t bad
    if p.shape[0] != K or inter.shape[0] != K:
        raise ValueError("g, p, inter: expected the same length")
    if gt_cat.shape[0] != G or gt_crowd.shape[0] != G or gt_area.shape[0] != G:
        raise ValueError("gt_*: expected the same length")
    if pred_cat.shape[0] != P or pred_area.shape[0] != P:
        raise ValueError("pred_*: expected the same length")
    if tp.shape[0] != C or fp.shape[0] != C or fn.shape[0] != C:
        raise ValueError("iou, tp, fp, fn: expected the same length")
    _check_cats(gt_cat, C, "gt_cat")
    _check_cats(pred_cat, C, "pred_cat")
    cdef const int64_t[::1] gorder = np.argsort(np.asarray(gt_ids), kind="stable")
    cdef const int64_t[::1] porder = np.argsort(np.asarray(pred_ids), kind="stable")
    with nogil:
        bad = _pq_core(K, &g[0] if K else NULL, &p[0] if K else NULL, &inter[0] if K else NULL,
                       G, &gt_ids[0] if G else NULL, &gorder[0] if G else NULL,
                       &gt_cat[0] if G else NULL, &gt_crowd[0] if G else NULL,
                       &gt_area[0] if G else NULL, P, &pred_ids[0] if P else NULL,
                       &porder[0] if P else NULL, &pred_cat[0] if P else NULL,
                       &pred_area[0] if P else NULL, void_id, C, &iou[0], &tp[0], &fp[0], &fn[0])
    if bad == -2:
        raise MemoryError()
    return bad


def pq_image_coco(const uint32_t[::1] g32, const uint32_t[::1] p32, const int64_t[::1] counts,
                  const int64_t[::1] gt_ids, const int64_t[::1] gt_cat, const uint8_t[::1] gt_crowd,
                  const int64_t[::1] gt_area, const int64_t[::1] pred_ids,
                  const int64_t[::1] pred_cat, double[::1] iou, int64_t[::1] tp, int64_t[::1] fp,
                  int64_t[::1] fn):
    """One COCO-panoptic image from its unsorted (GT id, predicted id, count) pairs: sorts them,
    takes the predicted areas from them, checks the PNG ids against ``segments_info`` and runs
    :func:`pq_match` (GT void id 0).

    Returns
    -------
    tuple
        ``(0, 0)`` on success; ``(1, id)``: a predicted PNG id (not 0) missing from
        ``segments_info``; ``(2, k)``: listed predicted segment ``k`` absent from the PNG;
        ``(3, (gt id, pred id, intersection))``: a non-positive union (inconsistent GT area).
        Nothing is added unless the code is 0.
    """
    cdef Py_ssize_t K = g32.shape[0], G = gt_ids.shape[0], P = pred_ids.shape[0], C = iou.shape[0]
    cdef Py_ssize_t k, pi, bad
    cdef int64_t missing_id = 0
    cdef int code = 0
    cdef vector[pair[uint64_t, int64_t]] keyed
    if p32.shape[0] != K or counts.shape[0] != K:
        raise ValueError("g32, p32, counts: expected the same length")
    if gt_cat.shape[0] != G or gt_crowd.shape[0] != G or gt_area.shape[0] != G:
        raise ValueError("gt_*: expected the same length")
    if pred_cat.shape[0] != P:
        raise ValueError("pred_*: expected the same length")
    if tp.shape[0] != C or fp.shape[0] != C or fn.shape[0] != C:
        raise ValueError("iou, tp, fp, fn: expected the same length")
    _check_cats(gt_cat, C, "gt_cat")
    _check_cats(pred_cat, C, "pred_cat")
    cdef const int64_t[::1] gorder = np.argsort(np.asarray(gt_ids), kind="stable")
    cdef const int64_t[::1] porder = np.argsort(np.asarray(pred_ids), kind="stable")
    g_a = np.empty(K, np.int64)
    p_a = np.empty(K, np.int64)
    c_a = np.empty(K, np.int64)
    area_a = np.zeros(P, np.int64)
    cdef int64_t[::1] gs = g_a
    cdef int64_t[::1] ps = p_a
    cdef int64_t[::1] cs = c_a
    cdef int64_t[::1] area = area_a
    with nogil:
        keyed.resize(K)
        for k in range(K):
            keyed[k].first = (<uint64_t>g32[k] << 32) | p32[k]
            keyed[k].second = counts[k]
        sort(keyed.begin(), keyed.end())
        for k in range(K):
            gs[k] = <int64_t>(keyed[k].first >> 32)
            ps[k] = <int64_t>(keyed[k].first & <uint64_t>0xFFFFFFFF)
            cs[k] = keyed[k].second
            pi = _find(&pred_ids[0], &porder[0], P, ps[k]) if P else -1
            if pi >= 0:
                area[pi] += cs[k]
            elif ps[k] != 0 and code == 0:
                code = 1
                missing_id = ps[k]
        if code == 0:
            for k in range(P):
                if area[k] == 0:
                    code = 2
                    missing_id = k
                    break
        if code == 0:
            bad = _pq_core(K, &gs[0] if K else NULL, &ps[0] if K else NULL, &cs[0] if K else NULL,
                           G, &gt_ids[0] if G else NULL, &gorder[0] if G else NULL,
                           &gt_cat[0] if G else NULL, &gt_crowd[0] if G else NULL,
                           &gt_area[0] if G else NULL, P, &pred_ids[0] if P else NULL,
                           &porder[0] if P else NULL, &pred_cat[0] if P else NULL,
                           &area[0] if P else NULL, 0, C, &iou[0], &tp[0], &fp[0], &fn[0])
    if code:
        return code, int(missing_id)
    if bad == -2:
        raise MemoryError()
    if bad >= 0:
        return 3, (int(gs[bad]), int(ps[bad]), int(cs[bad]))
    return 0, 0
