# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Evaluation hot loops: one pass over two label maps counting every distinct (a, b) pair.

Everything the evaluators need per image reduces to such counts:

- panoptic quality: (gt segment id, predicted segment id) -> intersection; areas and void overlaps
  are sums over these pairs;
- confusion matrices: (gt label, predicted label) -> pixels;
- Cityscapes iIoU: (gt instance id, predicted label) -> pixels;
- Cityscapes instance AP: (gt instance id) -> pixels inside one predicted mask.

The pass keeps the current run of equal pairs in registers (label maps are piecewise constant, so
runs are long) and flushes a run into an open-addressing hash table keyed by the 64-bit pair.
No limit on the number of distinct ids; the table grows as needed. The GIL is released.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy


cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define PDL_LITTLE_ENDIAN 0
    #else
    #define PDL_LITTLE_ENDIAN 1
    #endif
    static inline uint64_t pdl_bswap64(uint64_t x) {
        x = ((x & 0x00FF00FF00FF00FFULL) << 8) | ((x >> 8) & 0x00FF00FF00FF00FFULL);
        x = ((x & 0x0000FFFF0000FFFFULL) << 16) | ((x >> 16) & 0x0000FFFF0000FFFFULL);
        return (x << 32) | (x >> 32);
    }
    """
    bint LITTLE_ENDIAN "PDL_LITTLE_ENDIAN"
    uint64_t _bswap64 "pdl_bswap64"(uint64_t x) nogil

import numpy as np


cdef struct Table:
    uint64_t* keys
    int64_t* counts
    uint8_t* used
    size_t mask        # capacity - 1 (capacity is a power of two)
    size_t size


cdef inline uint64_t _mix(uint64_t k) noexcept nogil:
    # splitmix64 finaliser: spreads (id << 32 | id) keys over the table.
    k ^= k >> 30
    k *= 0xbf58476d1ce4e5b9ULL
    k ^= k >> 27
    k *= 0x94d049bb133111ebULL
    k ^= k >> 31
    return k


cdef int _table_init(Table* t, size_t capacity) noexcept nogil:
    t.keys = <uint64_t*>malloc(capacity * sizeof(uint64_t))
    t.counts = <int64_t*>malloc(capacity * sizeof(int64_t))
    t.used = <uint8_t*>calloc(capacity, 1)
    t.mask = capacity - 1
    t.size = 0
    if t.keys == NULL or t.counts == NULL or t.used == NULL:
        return -1
    return 0


cdef void _table_free(Table* t) noexcept nogil:
    free(t.keys)
    free(t.counts)
    free(t.used)
    t.keys = NULL
    t.counts = NULL
    t.used = NULL


cdef int _table_grow(Table* t) noexcept nogil:
    cdef Table n
    cdef size_t i, h
    if _table_init(&n, (t.mask + 1) * 2) != 0:
        _table_free(&n)
        return -1
    for i in range(t.mask + 1):
        if t.used[i]:
            h = _mix(t.keys[i]) & n.mask
            while n.used[h]:
                h = (h + 1) & n.mask
            n.used[h] = 1
            n.keys[h] = t.keys[i]
            n.counts[h] = t.counts[i]
    n.size = t.size
    _table_free(t)
    t[0] = n
    return 0


cdef inline int _table_add(Table* t, uint64_t key, int64_t count) noexcept nogil:
    cdef size_t h = _mix(key) & t.mask
    while t.used[h]:
        if t.keys[h] == key:
            t.counts[h] += count
            return 0
        h = (h + 1) & t.mask
    t.used[h] = 1
    t.keys[h] = key
    t.counts[h] = count
    t.size += 1
    if t.size * 2 > t.mask + 1:
        return _table_grow(t)
    return 0


cdef object _table_export(Table* t):
    """(first ids, second ids, counts) as numpy arrays, in table order (unsorted)."""
    cdef size_t i, j = 0
    keys = np.empty(t.size, dtype=np.uint64)
    counts = np.empty(t.size, dtype=np.int64)
    cdef uint64_t[::1] kv = keys
    cdef int64_t[::1] cv = counts
    for i in range(t.mask + 1):
        if t.used[i]:
            kv[j] = t.keys[i]
            cv[j] = t.counts[i]
            j += 1
    return (keys >> np.uint64(32)).astype(np.uint32), (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), counts


cdef int _pair_pass(const uint32_t* a, const uint32_t* b, size_t n, Table* t) noexcept nogil:
    cdef size_t i = 1, j, run_start = 0
    cdef uint64_t key, cur
    cdef uint32_t ca, cb, diff
    if n == 0:
        return 0
    ca = a[0]
    cb = b[0]
    cur = (<uint64_t>ca << 32) | cb
    while i < n:
        # Blocks of 16 that continue the current run are skipped with a branch-free test the
        # compiler vectorises.
        if i + 16 <= n:
            diff = 0
            for j in range(16):
                diff |= (a[i + j] ^ ca) | (b[i + j] ^ cb)
            if diff == 0:
                i += 16
                continue
        # Otherwise walk to the first change, start a new run there, and try blocks again.
        while i < n and a[i] == ca and b[i] == cb:
            i += 1
        if i < n:
            if _table_add(t, cur, <int64_t>(i - run_start)) != 0:
                return -1
            ca = a[i]
            cb = b[i]
            cur = (<uint64_t>ca << 32) | cb
            run_start = i
            i += 1
    return _table_add(t, cur, <int64_t>(n - run_start))


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


cdef inline uint32_t _rgb_id(const uint8_t* p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)


cdef inline bint _same_as_left(const uint8_t* p, size_t bpp) noexcept nogil:
    # The pixel at p equals the one before it, byte for byte (bpp is 3 or 4).
    if bpp == 3:
        return p[0] == p[-3] and p[1] == p[-2] and p[2] == p[-1]
    return p[0] == p[-4] and p[1] == p[-3] and p[2] == p[-2] and p[3] == p[-1]


cdef inline void _pattern(uint64_t* words, const uint8_t* px, size_t bpp) noexcept nogil:
    # 16 copies of the pixel at px as 2 * bpp little-endian words, built in registers.
    cdef uint64_t t, r1, r2, w0, w1, w2
    cdef uint32_t v
    cdef int k
    if bpp == 4:
        memcpy(&v, px, 4)
        w0 = (<uint64_t>v) | ((<uint64_t>v) << 32)
        for k in range(8):
            words[k] = w0
        return
    # bpp 3: the byte stream p0 p1 p2 p0 ... repeats every 24 bytes = 3 words, which start at
    # phases 0, 2 and 1 of the pixel.
    t = px[0] | (<uint64_t>px[1] << 8) | (<uint64_t>px[2] << 16)
    r1 = (t >> 8) | ((t & 0xFF) << 16)
    r2 = (t >> 16) | ((t & 0xFFFF) << 8)
    w0 = t | (t << 24) | (t << 48)
    w1 = r2 | (r2 << 24) | (r2 << 48)
    w2 = r1 | (r1 << 24) | (r1 << 48)
    words[0] = w0
    words[1] = w1
    words[2] = w2
    words[3] = w0
    words[4] = w1
    words[5] = w2
    if LITTLE_ENDIAN == 0:
        for k in range(6):
            words[k] = _bswap64(words[k])


cdef int _pair_pass_rgb(const uint8_t* a, const uint8_t* b, size_t height, size_t width,
                        size_t abpp, size_t bbpp, Table* t) noexcept nogil:
    cdef size_t y, x, j, run = 0
    cdef size_t awords = 2 * abpp, bwords = 2 * bbpp
    cdef size_t astride = 1 + width * abpp, bstride = 1 + width * bbpp
    cdef const uint8_t* ra
    cdef const uint8_t* rb
    cdef uint64_t key, cur = 0, diff, w
    cdef uint64_t pa[8]
    cdef uint64_t pb[8]
    cdef bint started = False, pattern_ok = False
    for y in range(height):
        ra = a + y * astride + 1
        rb = b + y * bstride + 1
        x = 0
        while x < width:
            if x > 0:
                # 16 pixels equal, byte for byte, to the pixel on their left (whose 16-fold
                # pattern is kept in pa / pb): skipped with one word-wise test.
                if x + 16 <= width:
                    if not pattern_ok:
                        # 16 copies of the pixel to the left (the run's pixel).
                        _pattern(pa, ra + (x - 1) * abpp, abpp)
                        _pattern(pb, rb + (x - 1) * bbpp, bbpp)
                        pattern_ok = True
                    diff = 0
                    for j in range(awords):
                        memcpy(&w, ra + x * abpp + 8 * j, 8)
                        diff |= w ^ pa[j]
                    for j in range(bwords):
                        memcpy(&w, rb + x * bbpp + 8 * j, 8)
                        diff |= w ^ pb[j]
                    if diff == 0:
                        run += 16
                        x += 16
                        continue
                # Otherwise walk to the first pixel that differs from its left neighbour.
                while x < width and _same_as_left(ra + x * abpp, abpp) and _same_as_left(rb + x * bbpp, bbpp):
                    run += 1
                    x += 1
                if x >= width:
                    break
            # A pixel that may start a new run (first of a row, or different from its left).
            key = (<uint64_t>_rgb_id(ra + x * abpp) << 32) | _rgb_id(rb + x * bbpp)
            if not started:
                cur = key
                started = True
            elif key != cur:
                if _table_add(t, cur, <int64_t>run) != 0:
                    return -1
                cur = key
                run = 0
            pattern_ok = False
            run += 1
            x += 1
    if started:
        return _table_add(t, cur, <int64_t>run)
    return 0


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
    cdef Py_ssize_t K = g.shape[0], G = gt_ids.shape[0], P = pred_ids.shape[0]
    cdef Py_ssize_t C = iou.shape[0], k, gi, pi, c, bad = -1
    cdef int64_t u
    cdef double v
    if p.shape[0] != K or inter.shape[0] != K:
        raise ValueError("g, p, inter: expected the same length")
    if gt_cat.shape[0] != G or gt_crowd.shape[0] != G or gt_area.shape[0] != G:
        raise ValueError("gt_*: expected the same length")
    if pred_cat.shape[0] != P or pred_area.shape[0] != P:
        raise ValueError("pred_*: expected the same length")
    if tp.shape[0] != C or fp.shape[0] != C or fn.shape[0] != C:
        raise ValueError("iou, tp, fp, fn: expected the same length")
    for k in range(G):
        if gt_cat[k] < 0 or gt_cat[k] >= C:
            raise ValueError(f"gt_cat: index {gt_cat[k]} out of range 0..{C - 1}")
    for k in range(P):
        if pred_cat[k] < 0 or pred_cat[k] >= C:
            raise ValueError(f"pred_cat: index {pred_cat[k]} out of range 0..{C - 1}")
    gorder_a = np.argsort(np.asarray(gt_ids), kind="stable")
    porder_a = np.argsort(np.asarray(pred_ids), kind="stable")
    cdef const int64_t[::1] gorder = gorder_a
    cdef const int64_t[::1] porder = porder_a
    gi_a = np.empty(K, np.int64)
    pi_a = np.empty(K, np.int64)
    cdef int64_t[::1] gis = gi_a
    cdef int64_t[::1] pis = pi_a
    void_ov_a = np.zeros(P, np.int64)
    ign_a = np.zeros(P, np.int64)
    cdef int64_t[::1] void_ov = void_ov_a
    cdef int64_t[::1] ign = ign_a
    gm_a = np.zeros(G, np.uint8)
    pm_a = np.zeros(P, np.uint8)
    cdef uint8_t[::1] gm = gm_a
    cdef uint8_t[::1] pm = pm_a
    crowd_set_a = np.zeros(C, np.uint8)
    crowd_id_a = np.zeros(C, np.int64)
    cdef uint8_t[::1] crowd_set = crowd_set_a
    cdef int64_t[::1] crowd_id = crowd_id_a
    with nogil:
        for k in range(K):
            gis[k] = _find(&gt_ids[0], &gorder[0], G, g[k]) if G else -1
            pis[k] = _find(&pred_ids[0], &porder[0], P, p[k]) if P else -1
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
        if bad < 0:
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
    return bad
