# Shared by _eval_kernels.pyx and _png.pyx (textual include): the (a, b) pair-count hash table
# and the pair count over rows of RGB(A) pixels. Not a module of its own.
#
# Needs: from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
#        from libc.stdlib cimport calloc, free, malloc; from libc.string cimport memcpy;
#        import numpy as np

cdef extern from *:
    """
    #include <string.h>
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define PDL_LITTLE_ENDIAN 0
    #else
    #define PDL_LITTLE_ENDIAN 1
    #endif
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    /* Non-zero iff one of the 16 pixels (bpp 3 or 4) at p differs from its left neighbour. */
    static inline int pdl_block_changes(const uint8_t* p, size_t bpp) {
        __m128i d = _mm_xor_si128(_mm_loadu_si128((const __m128i*)p),
                                  _mm_loadu_si128((const __m128i*)(p - bpp)));
        d = _mm_or_si128(d, _mm_xor_si128(_mm_loadu_si128((const __m128i*)(p + 16)),
                                          _mm_loadu_si128((const __m128i*)(p + 16 - bpp))));
        d = _mm_or_si128(d, _mm_xor_si128(_mm_loadu_si128((const __m128i*)(p + 32)),
                                          _mm_loadu_si128((const __m128i*)(p + 32 - bpp))));
        if (bpp == 4)
            d = _mm_or_si128(d, _mm_xor_si128(_mm_loadu_si128((const __m128i*)(p + 48)),
                                              _mm_loadu_si128((const __m128i*)(p + 44))));
        return _mm_movemask_epi8(_mm_cmpeq_epi8(d, _mm_setzero_si128())) != 0xFFFF;
    }
    /* Bits of the bytes of p[0:16*k] equal to the byte bpp before them (k = 3 or 4 vectors). */
    static inline uint64_t pdl_eq_bits(const uint8_t* p, size_t bpp) {
        uint64_t m = 0;
        int v, nv = bpp == 4 ? 4 : 3;
        for (v = 0; v < nv; v++) {
            __m128i x = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(p + 16 * v)),
                                       _mm_loadu_si128((const __m128i*)(p + 16 * v - bpp)));
            m |= (uint64_t)(unsigned)_mm_movemask_epi8(x) << (16 * v);
        }
        return m;
    }
    #else
    static inline uint64_t pdl_eq_bits(const uint8_t* p, size_t bpp) {
        uint64_t m = 0;
        size_t j, n = 16 * bpp;
        for (j = 0; j < n; j++) m |= (uint64_t)(p[j] == p[j - bpp]) << j;
        return m;
    }
    static inline int pdl_block_changes(const uint8_t* p, size_t bpp) {
        uint64_t w, v, d = 0;
        size_t j;
        for (j = 0; j < 2 * bpp; j++) {
            memcpy(&w, p + 8 * j, 8);
            memcpy(&v, p + 8 * j - bpp, 8);
            d |= w ^ v;
        }
        return d != 0;
    }
    #endif

    /* For 16 pixels of bpp 3 or 4 bytes at a and b (same bpp): bit bpp * j is set iff pixel j
       differs from its left neighbour in a or in b. */
    static inline uint64_t pdl_pixel_changes(const uint8_t* a, const uint8_t* b, size_t bpp) {
        uint64_t e = pdl_eq_bits(a, bpp) & pdl_eq_bits(b, bpp);
        if (bpp == 4)
            return ~(e & (e >> 1) & (e >> 2) & (e >> 3)) & 0x1111111111111111ULL;
        return ~(e & (e >> 1) & (e >> 2)) & 0x249249249249ULL;
    }
    static inline unsigned pdl_ctz64(uint64_t x) {
    #if defined(__GNUC__) || defined(__clang__)
        return (unsigned)__builtin_ctzll(x);
    #else
        unsigned n = 0;
        while (!(x & 1)) { x >>= 1; n++; }
        return n;
    #endif
    }

    /* Index of the first (lowest-address) non-zero byte of a word loaded from memory. */
    static inline unsigned pdl_first_byte(uint64_t x) {
    #if defined(__GNUC__) || defined(__clang__)
    #if PDL_LITTLE_ENDIAN
        return (unsigned)__builtin_ctzll(x) >> 3;
    #else
        return (unsigned)__builtin_clzll(x) >> 3;
    #endif
    #else
        unsigned i;
        unsigned char b[8];
        memcpy(b, &x, 8);
        for (i = 0; i < 8 && b[i] == 0; i++) {}
        return i;
    #endif
    }
    static inline uint64_t pdl_bswap64(uint64_t x) {
        x = ((x & 0x00FF00FF00FF00FFULL) << 8) | ((x >> 8) & 0x00FF00FF00FF00FFULL);
        x = ((x & 0x0000FFFF0000FFFFULL) << 16) | ((x >> 16) & 0x0000FFFF0000FFFFULL);
        return (x << 32) | (x >> 32);
    }
    """
    bint PDL_IS_LITTLE_ENDIAN "PDL_LITTLE_ENDIAN"
    uint64_t _bswap64 "pdl_bswap64"(uint64_t x) nogil
    unsigned _first_byte "pdl_first_byte"(uint64_t x) nogil
    int _block_changes "pdl_block_changes"(const uint8_t* p, size_t bpp) nogil
    uint64_t _pixel_changes "pdl_pixel_changes"(const uint8_t* a, const uint8_t* b, size_t bpp) nogil
    unsigned _ctz64 "pdl_ctz64"(uint64_t x) nogil



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


cdef inline Py_ssize_t _table_slot(Table* t, uint64_t key) noexcept nogil:
    """Slot of key, inserted with count 0 if absent (the table may grow). -1: out of memory."""
    cdef size_t h = _mix(key) & t.mask
    while t.used[h]:
        if t.keys[h] == key:
            return <Py_ssize_t>h
        h = (h + 1) & t.mask
    t.used[h] = 1
    t.keys[h] = key
    t.counts[h] = 0
    t.size += 1
    if t.size * 2 > t.mask + 1:
        if _table_grow(t) != 0:
            return -1
        h = _mix(key) & t.mask
        while t.keys[h] != key or not t.used[h]:
            h = (h + 1) & t.mask
    return <Py_ssize_t>h


cdef struct RecentKeys:
    # The slots of the two most recently added keys (label maps alternate between few pairs).
    uint64_t key0
    uint64_t key1
    Py_ssize_t slot0
    Py_ssize_t slot1
    size_t mask           # the table's mask when the slots were taken (0: none yet)


cdef inline void _recent_init(RecentKeys* r) noexcept nogil:
    r.key0 = 0
    r.key1 = 0
    r.slot0 = 0
    r.slot1 = 0
    r.mask = 0


cdef inline int _table_add_recent(Table* t, uint64_t key, int64_t count, RecentKeys* r) noexcept nogil:
    cdef Py_ssize_t slot
    if r.mask == t.mask:
        if r.key0 == key:
            t.counts[r.slot0] += count
            return 0
        if r.key1 == key:
            t.counts[r.slot1] += count
            r.key1, r.key0 = r.key0, key
            r.slot1, r.slot0 = r.slot0, r.slot1
            return 0
    slot = _table_slot(t, key)
    if slot < 0:
        return -1
    t.counts[slot] += count
    if r.mask != t.mask:  # first use, or the table grew: forget the old slots
        r.mask = t.mask
        r.key1 = key
        r.slot1 = slot
    else:
        r.key1 = r.key0
        r.slot1 = r.slot0
    r.key0 = key
    r.slot0 = slot
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


cdef struct PairRun:
    # Running state of a pair count over consecutive chunks (rows) of two id sequences.
    uint32_t ca           # the current run's ids
    uint32_t cb
    size_t run            # its length so far
    bint started
    RecentKeys recent


cdef inline void _pair_run_init(PairRun* s) noexcept nogil:
    s.ca = 0
    s.cb = 0
    s.run = 0
    s.started = False
    _recent_init(&s.recent)


cdef inline int _pair_run_flush(PairRun* s, Table* t) noexcept nogil:
    if s.started and s.run:
        return _table_add_recent(t, (<uint64_t>s.ca << 32) | s.cb, <int64_t>s.run, &s.recent)
    return 0


cdef inline int _pair_run_chunk(PairRun* s, const uint32_t* a, const uint32_t* b, size_t n,
                         Table* t) noexcept nogil:
    """Count the pairs (a[i], b[i]) of one chunk; runs continue from the previous chunk."""
    cdef size_t i = 0, j, start
    cdef uint32_t ca, cb, diff
    if n == 0:
        return 0
    if not s.started:
        s.ca = a[0]
        s.cb = b[0]
        s.run = 0
        s.started = True
    ca = s.ca
    cb = s.cb
    start = 0  # index in this chunk where the current run's part in this chunk starts
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
            if _table_add_recent(t, (<uint64_t>ca << 32) | cb, <int64_t>(s.run + i - start),
                                 &s.recent) != 0:
                return -1
            ca = a[i]
            cb = b[i]
            s.run = 0
            start = i
            i += 1
    s.run += n - start
    s.ca = ca
    s.cb = cb
    return 0


cdef inline uint32_t _rgb_id(const uint8_t* p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)


cdef inline bint _same_as_left(const uint8_t* p, size_t bpp) noexcept nogil:
    # The pixel at p equals the one before it, byte for byte (bpp is 3 or 4).
    cdef const uint8_t* q = p - bpp
    if bpp == 3:
        return p[0] == q[0] and p[1] == q[1] and p[2] == q[2]
    return p[0] == q[0] and p[1] == q[1] and p[2] == q[2] and p[3] == q[3]


cdef struct RgbPairs:
    # Running state of the pair count over consecutive rows of two RGB(A) images.
    uint64_t cur          # key (id_a << 32 | id_b) of the current run
    size_t run            # its length so far
    bint started
    RecentKeys recent


cdef inline void _rgb_pairs_init(RgbPairs* s) noexcept nogil:
    s.cur = 0
    s.run = 0
    s.started = False
    _recent_init(&s.recent)


cdef inline size_t _first_diff(const uint8_t* p, size_t bpp, size_t nwords) noexcept nogil:
    """Index of the first byte of p[0 : 8 * nwords] that differs from the byte bpp before it
    (or 8 * nwords)."""
    cdef size_t j
    cdef uint64_t w, v
    for j in range(nwords):
        memcpy(&w, p + 8 * j, 8)
        memcpy(&v, p + 8 * j - bpp, 8)
        w ^= v
        if w != 0:
            return 8 * j + _first_byte(w)
    return 8 * nwords


cdef inline size_t _div_bpp(size_t d, size_t bpp) noexcept nogil:
    # d // bpp for d < 128 and bpp 3 or 4, without a division.
    return (d >> 2) if bpp == 4 else ((d * 171) >> 9)


cdef inline int _rgb_pairs_row(RgbPairs* s, const uint8_t* ra, const uint8_t* rb, size_t width,
                        size_t abpp, size_t bbpp, Table* t) noexcept nogil:
    """Count one row (pixels only, no filter byte); runs continue across rows."""
    cdef size_t x = 0, k, kb
    cdef size_t awords = 2 * abpp, bwords = 2 * bbpp
    cdef uint64_t key
    while x < width:
        if x > 0:
            if x + 16 <= width:
                # The next 16 pixels against their left neighbours, word by word: skip to the
                # first pixel that differs in either image (all 16 if none does).
                if _block_changes(ra + x * abpp, abpp) == 0 and _block_changes(rb + x * bbpp, bbpp) == 0:
                    s.run += 16
                    x += 16
                    continue
                k = _div_bpp(_first_diff(ra + x * abpp, abpp, awords), abpp)
                if k > 0:
                    kb = _div_bpp(_first_diff(rb + x * bbpp, bbpp, bwords), bbpp)
                    if kb < k:
                        k = kb
                if k > 0:
                    s.run += k
                    x += k
                    continue
            else:
                # The row's tail: walk to the first pixel that differs from its left neighbour.
                while x < width and _same_as_left(ra + x * abpp, abpp) and _same_as_left(rb + x * bbpp, bbpp):
                    s.run += 1
                    x += 1
                if x >= width:
                    break
        # A pixel that may start a new run (first of a row, or different from its left).
        key = (<uint64_t>_rgb_id(ra + x * abpp) << 32) | _rgb_id(rb + x * bbpp)
        if not s.started:
            s.cur = key
            s.started = True
        elif key != s.cur:
            if _table_add_recent(t, s.cur, <int64_t>s.run, &s.recent) != 0:
                return -1
            s.cur = key
            s.run = 0
        s.run += 1
        x += 1
    return 0


cdef inline int _rgb_pairs_key(RgbPairs* s, uint64_t key, Table* t) noexcept nogil:
    """A pixel with this key follows the current run: extend it or start a new one."""
    if not s.started:
        s.cur = key
        s.started = True
    elif key != s.cur:
        if _table_add_recent(t, s.cur, <int64_t>s.run, &s.recent) != 0:
            return -1
        s.cur = key
        s.run = 0
    s.run += 1
    return 0


cdef inline int _rgb_pairs_row_same(RgbPairs* s, const uint8_t* ra, const uint8_t* rb, size_t width,
                             size_t bpp, Table* t) noexcept nogil:
    """_rgb_pairs_row for two images with the same bytes per pixel: 16 pixels at a time, the
    positions of the pixels that differ from their left neighbour (in either image) come as a
    bit mask (SSE2 compares), so the loop visits only those; no branch per block to mispredict
    on noisy maps."""
    cdef size_t x = 1, j, last = 0
    cdef uint64_t m
    if width == 0:
        return 0
    if _rgb_pairs_key(s, (<uint64_t>_rgb_id(ra) << 32) | _rgb_id(rb), t) != 0:
        return -1
    while x + 16 <= width:
        m = _pixel_changes(ra + x * bpp, rb + x * bpp, bpp)
        last = 0
        while m != 0:
            j = _div_bpp(_ctz64(m), bpp)
            m &= m - 1
            s.run += j - last  # the unchanged pixels before this one continue the run
            last = j + 1
            if _rgb_pairs_key(s, (<uint64_t>_rgb_id(ra + (x + j) * bpp) << 32)
                              | _rgb_id(rb + (x + j) * bpp), t) != 0:
                return -1
        s.run += 16 - last
        x += 16
    while x < width:
        if _same_as_left(ra + x * bpp, bpp) and _same_as_left(rb + x * bpp, bpp):
            s.run += 1
        elif _rgb_pairs_key(s, (<uint64_t>_rgb_id(ra + x * bpp) << 32) | _rgb_id(rb + x * bpp), t) != 0:
            return -1
        x += 1
    return 0


cdef inline int _rgb_pairs_finish(RgbPairs* s, Table* t) noexcept nogil:
    if s.started:
        return _table_add_recent(t, s.cur, <int64_t>s.run, &s.recent)
    return 0
