# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""PNG image-data decoding kernels: zlib inflate (RFC 1950/1951), scanline unfiltering, pixel packing.

The Python side (``pdl_post.io``) parses the chunk structure and checks each chunk's CRC; these
kernels turn the concatenated IDAT payload into pixels without the GIL.

Inflate
-------
A table-driven decoder written from RFC 1951. Huffman codes are decoded through a 2**10-entry
lookup table indexed by the next 10 input bits (bit-reversed codes, as deflate sends the code's
most significant bit first); the rare longer codes fall back to canonical decoding bit by bit.
Back-references are copied with ``memset`` (distance 1), one ``memcpy`` (distance >= length) or
by doubling the copied span (short periods such as 3 or 4 bytes per pixel), which is what makes the
long runs of a label map cheap. The zlib Adler-32 trailer is verified.

Unfiltering
-----------
PNG filters 0-4 (None, Sub, Up, Average, Paeth), done in place on the inflated buffer, keeping the
pixel to the left in registers. Stretches whose filtered bytes are all zero (flat regions) take
run-level shortcuts that give the same bytes as the per-byte rule.

Panoptic quality
----------------
``pair_counts_png`` fuses decoding with the (GT id, predicted id) pair count of two COCO-panoptic
PNGs: both streams are inflated, then row by row (while the row is in cache) the Adler-32 share is
taken, the row unfiltered and its pixel pairs counted (``_counting.pxi``).

SIMD: SSE2 (the x86-64 baseline) where it helps, AVX2 for Adler-32 when the CPU has it (checked at
run time); portable C otherwise.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from libc.stdlib cimport abs as c_abs, calloc, free, malloc

import numpy as np

include "_counting.pxi"

# ------------------------------------------------------------------------------------------------
# Inflate

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define PDL_LITTLE_ENDIAN 0
    #else
    #define PDL_LITTLE_ENDIAN 1
    #endif
    """
    bint LITTLE_ENDIAN "PDL_LITTLE_ENDIAN"

cdef enum:
    FAST_BITS = 10
    FAST_SIZE = 1 << FAST_BITS
    MAX_BITS = 15

# Error codes returned by the nogil inflater (mapped to messages below).
cdef enum:
    OK = 0
    ERR_HEADER = 1
    ERR_TRUNCATED = 2
    ERR_BLOCK_TYPE = 3
    ERR_STORED_LEN = 4
    ERR_CODE_LENGTHS = 5
    ERR_BAD_SYMBOL = 6
    ERR_DISTANCE = 7
    ERR_OVERFLOW = 8
    ERR_SHORT = 9
    ERR_CHECKSUM = 10
    ERR_DICTIONARY = 11

_INFLATE_ERRORS = {
    ERR_HEADER: "invalid zlib header",
    ERR_TRUNCATED: "compressed data ends early",
    ERR_BLOCK_TYPE: "invalid deflate block type",
    ERR_STORED_LEN: "stored block length does not match its complement",
    ERR_CODE_LENGTHS: "invalid Huffman code lengths",
    ERR_BAD_SYMBOL: "invalid Huffman code in the data",
    ERR_DISTANCE: "back-reference points before the start of the data",
    ERR_OVERFLOW: "decompressed data is longer than the image",
    ERR_SHORT: "decompressed data is shorter than the image",
    ERR_CHECKSUM: "Adler-32 checksum mismatch",
    ERR_DICTIONARY: "preset dictionaries are not allowed in PNG",
}

cdef uint16_t LEN_BASE[29]
cdef uint8_t LEN_EXTRA[29]
cdef uint16_t DIST_BASE[30]
cdef uint8_t DIST_EXTRA[30]
cdef uint8_t CL_ORDER[19]


cdef void _init_tables() noexcept:
    cdef int i
    cdef int lb[29]
    cdef int le[29]
    cdef int db[30]
    cdef int de[30]
    cdef int order[19]
    lb[:] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
             99, 115, 131, 163, 195, 227, 258]
    le[:] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    db[:] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
             1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    de[:] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12,
             12, 13, 13]
    order[:] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
    for i in range(29):
        LEN_BASE[i] = <uint16_t>lb[i]
        LEN_EXTRA[i] = <uint8_t>le[i]
    for i in range(30):
        DIST_BASE[i] = <uint16_t>db[i]
        DIST_EXTRA[i] = <uint8_t>de[i]
    for i in range(19):
        CL_ORDER[i] = <uint8_t>order[i]


_init_tables()


cdef struct Huffman:
    # fast[bits] = (symbol << 4) | length for codes of <= FAST_BITS bits, 0 otherwise
    uint16_t fast[FAST_SIZE]
    uint16_t count[MAX_BITS + 1]   # number of codes of each length
    uint16_t symbol[288]           # symbols ordered by (length, value): canonical order


cdef struct Stream:
    const uint8_t* src
    const uint8_t* src_end
    uint64_t bitbuf
    int bitcnt
    int pad                        # zero bits appended past the end of the input


cdef inline void _refill(Stream* s) noexcept nogil:
    cdef uint64_t w
    if s.src + 8 <= s.src_end and LITTLE_ENDIAN:
        # Branch-free: load 8 bytes and keep the whole ones that fit (the buffer ends up with 56
        # to 63 valid bits). The bits above bitcnt then hold the low bits of the next unread
        # byte; loading that byte later ORs the same bits into the same places.
        memcpy(&w, s.src, 8)
        s.bitbuf |= w << s.bitcnt
        s.src += (63 - s.bitcnt) >> 3
        s.bitcnt |= 56
        return
    while s.bitcnt <= 56:
        if s.src < s.src_end:
            s.bitbuf |= (<uint64_t>s.src[0]) << s.bitcnt
            s.src += 1
        else:
            # Past the end: supply zero bits and remember how many, so that consuming any of
            # them (a truncated stream) is detected by _overrun().
            s.pad += 8
        s.bitcnt += 8


cdef inline bint _overrun(Stream* s) noexcept nogil:
    return s.bitcnt < s.pad


cdef inline uint32_t _bits(Stream* s, int n) noexcept nogil:
    """Take n (<= 32) bits, LSB first."""
    cdef uint32_t v
    if s.bitcnt < n:
        _refill(s)
    v = <uint32_t>(s.bitbuf & ((1ULL << n) - 1))
    s.bitbuf >>= n
    s.bitcnt -= n
    return v


cdef int _build(Huffman* h, const uint8_t* lengths, int n, bint allow_incomplete) noexcept nogil:
    """Build the decoding tables for n code lengths. Returns 0, or -1 for an invalid set.

    Over-subscribed sets are invalid; incomplete sets are allowed (when allow_incomplete) only
    for a single code of length 1 or no code at all, as zlib accepts them; unused codes then
    decode as errors.
    """
    cdef int i, length, left, code, sym, k, reach, rev, step
    cdef uint16_t offs[MAX_BITS + 2]
    cdef int next_code[MAX_BITS + 1]
    memset(h.count, 0, sizeof(h.count))
    memset(h.fast, 0, sizeof(h.fast))
    for i in range(n):
        h.count[lengths[i]] += 1
    h.count[0] = 0
    left = 1
    for length in range(1, MAX_BITS + 1):
        left <<= 1
        left -= h.count[length]
        if left < 0:
            return -1
    if left > 0:
        # Incomplete: allow an empty set or a single code of length 1 only.
        k = 0
        for length in range(1, MAX_BITS + 1):
            k += h.count[length]
        if not allow_incomplete or k > 1 or (k == 1 and h.count[1] != 1):
            return -1
    offs[1] = 0
    for length in range(1, MAX_BITS + 1):
        offs[length + 1] = offs[length] + h.count[length]
    for i in range(n):
        if lengths[i] != 0:
            h.symbol[offs[lengths[i]]] = <uint16_t>i
            offs[lengths[i]] += 1
    # Canonical codes (RFC 1951 3.2.2) -> bit-reversed fast-table entries.
    code = 0
    next_code[0] = 0
    for length in range(1, MAX_BITS + 1):
        code = (code + (h.count[length - 1] if length > 1 else 0)) << 1
        next_code[length] = code
    for i in range(n):
        length = lengths[i]
        if length == 0 or length > FAST_BITS:
            if length != 0:
                next_code[length] += 1
            continue
        code = next_code[length]
        next_code[length] += 1
        rev = 0
        for k in range(length):
            rev = (rev << 1) | ((code >> k) & 1)
        step = 1 << length
        reach = rev
        while reach < FAST_SIZE:
            h.fast[reach] = <uint16_t>((i << 4) | length)
            reach += step
    return 0


cdef inline int _decode(Stream* s, Huffman* h) noexcept nogil:
    """Decode one symbol; -1 for an invalid code."""
    cdef uint16_t e
    cdef int code, first, index, count, length
    cdef uint64_t bits
    if s.bitcnt < MAX_BITS:
        _refill(s)
    e = h.fast[s.bitbuf & (FAST_SIZE - 1)]
    if e != 0:
        s.bitbuf >>= (e & 15)
        s.bitcnt -= (e & 15)
        return e >> 4
    # Slow path: canonical decoding, one bit at a time (codes longer than FAST_BITS).
    bits = s.bitbuf
    code = 0
    first = 0
    index = 0
    for length in range(1, MAX_BITS + 1):
        code |= <int>(bits & 1)
        bits >>= 1
        count = h.count[length]
        if code - count < first:
            s.bitbuf >>= length
            s.bitcnt -= length
            return h.symbol[index + (code - first)]
        index += count
        first += count
        first <<= 1
        code <<= 1
    return -1


cdef inline void _copy_match(uint8_t* out, size_t pos, size_t dist, size_t length) noexcept nogil:
    cdef uint8_t* dst = out + pos
    cdef const uint8_t* src = dst - dist
    cdef size_t n, span
    if dist >= length:
        if length <= 16:
            for n in range(length):
                dst[n] = src[n]
        else:
            memcpy(dst, src, length)
    elif dist == 1:
        memset(dst, src[0], length)
    elif length <= 16:
        for n in range(length):
            dst[n] = src[n]
    else:
        # Periodic continuation: the copied span doubles each step.
        span = dist
        while length > 0:
            n = span if span < length else length
            memcpy(dst, src, n)
            dst += n
            length -= n
            span += n


cdef int _inflate(const uint8_t* data, size_t size, uint8_t* out, size_t out_size,
                  size_t* produced, uint32_t* trailer) noexcept nogil:
    """Inflate a zlib stream into exactly out_size bytes. With trailer == NULL the Adler-32 of the
    output is verified here; otherwise the stream's checksum is stored in *trailer for the caller
    to verify (e.g. while the data passes through the cache for another reason)."""
    cdef Stream s
    cdef Huffman lit
    cdef Huffman dist
    cdef uint8_t lengths[320]
    cdef int final = 0, btype, sym, i, hlit, hdist, hclen, rep, prev
    cdef size_t pos = 0, length, d
    cdef uint32_t stored_len, stored_nlen, expect
    # The checksum is taken in 64 KiB steps as the output grows, while it is still in cache.
    cdef uint32_t adler = 1
    cdef size_t adler_pos = 0
    produced[0] = 0
    if size < 6:
        return ERR_TRUNCATED
    if (data[0] & 15) != 8 or (data[0] >> 4) > 7 or ((<uint32_t>data[0] << 8) | data[1]) % 31 != 0:
        return ERR_HEADER
    if data[1] & 0x20:
        return ERR_DICTIONARY
    s.src = data + 2
    s.src_end = data + size
    s.bitbuf = 0
    s.bitcnt = 0
    s.pad = 0
    while not final:
        final = <int>_bits(&s, 1)
        btype = <int>_bits(&s, 2)
        if btype == 0:
            # Stored block: drop to a byte boundary, then LEN, NLEN and raw bytes.
            _bits(&s, s.bitcnt & 7)
            stored_len = _bits(&s, 16)
            stored_nlen = _bits(&s, 16)
            if _overrun(&s):
                return ERR_TRUNCATED
            if (stored_len ^ 0xFFFF) != stored_nlen:
                return ERR_STORED_LEN
            # Drain whole bytes still held in the bit buffer first.
            while stored_len > 0 and s.bitcnt - s.pad >= 8:
                if pos >= out_size:
                    return ERR_OVERFLOW
                out[pos] = <uint8_t>(s.bitbuf & 0xFF)
                pos += 1
                s.bitbuf >>= 8
                s.bitcnt -= 8
                stored_len -= 1
            if stored_len > 0:
                # The bit buffer is empty now, except for stale look-ahead bits of the byte at
                # s.src (see _refill), which the copy below consumes: clear them.
                s.bitbuf = 0
                if <size_t>(s.src_end - s.src) < stored_len:
                    return ERR_TRUNCATED
                if pos + stored_len > out_size:
                    return ERR_OVERFLOW
                memcpy(out + pos, s.src, stored_len)
                s.src += stored_len
                pos += stored_len
            continue
        elif btype == 1:
            for i in range(144):
                lengths[i] = 8
            for i in range(144, 256):
                lengths[i] = 9
            for i in range(256, 280):
                lengths[i] = 7
            for i in range(280, 288):
                lengths[i] = 8
            _build(&lit, lengths, 288, False)
            # 32 five-bit codes; 30 and 31 never occur in valid data (checked when decoded).
            for i in range(32):
                lengths[i] = 5
            _build(&dist, lengths, 32, False)
        elif btype == 2:
            hlit = <int>_bits(&s, 5) + 257
            hdist = <int>_bits(&s, 5) + 1
            hclen = <int>_bits(&s, 4) + 4
            if hlit > 286 or hdist > 30:
                return ERR_CODE_LENGTHS
            memset(lengths, 0, 19)
            for i in range(hclen):
                lengths[CL_ORDER[i]] = <uint8_t>_bits(&s, 3)
            if _build(&lit, lengths, 19, False) != 0:
                return ERR_CODE_LENGTHS
            i = 0
            while i < hlit + hdist:
                sym = _decode(&s, &lit)
                if sym < 0:
                    return ERR_CODE_LENGTHS
                if sym < 16:
                    lengths[i] = <uint8_t>sym
                    i += 1
                    continue
                if sym == 16:
                    if i == 0:
                        return ERR_CODE_LENGTHS
                    prev = lengths[i - 1]
                    rep = 3 + <int>_bits(&s, 2)
                elif sym == 17:
                    prev = 0
                    rep = 3 + <int>_bits(&s, 3)
                else:
                    prev = 0
                    rep = 11 + <int>_bits(&s, 7)
                if i + rep > hlit + hdist:
                    return ERR_CODE_LENGTHS
                while rep > 0:
                    lengths[i] = <uint8_t>prev
                    i += 1
                    rep -= 1
            if _overrun(&s):
                return ERR_TRUNCATED
            if lengths[256] == 0:
                return ERR_CODE_LENGTHS
            if _build(&lit, lengths, hlit, True) != 0:
                return ERR_CODE_LENGTHS
            if _build(&dist, lengths + hlit, hdist, True) != 0:
                return ERR_CODE_LENGTHS
        else:
            return ERR_BLOCK_TYPE
        # Huffman-coded block body.
        while True:
            sym = _decode(&s, &lit)
            if sym < 256:
                if sym < 0:
                    return ERR_TRUNCATED if _overrun(&s) else ERR_BAD_SYMBOL
                if pos >= out_size:
                    return ERR_TRUNCATED if _overrun(&s) else ERR_OVERFLOW
                out[pos] = <uint8_t>sym
                pos += 1
                continue
            if sym == 256:
                break
            sym -= 257
            if sym >= 29:
                return ERR_BAD_SYMBOL
            length = LEN_BASE[sym] + _bits(&s, LEN_EXTRA[sym])
            sym = _decode(&s, &dist)
            if sym < 0 or sym >= 30:
                return ERR_TRUNCATED if _overrun(&s) else ERR_BAD_SYMBOL
            d = DIST_BASE[sym] + _bits(&s, DIST_EXTRA[sym])
            if d > pos:
                return ERR_DISTANCE
            if pos + length > out_size:
                return ERR_TRUNCATED if _overrun(&s) else ERR_OVERFLOW
            _copy_match(out, pos, d, length)
            pos += length
            if trailer == NULL and pos - adler_pos >= 65536:
                adler = pdl_adler32(adler, out + adler_pos, pos - adler_pos)
                adler_pos = pos
        if _overrun(&s):
            return ERR_TRUNCATED
    produced[0] = pos
    # Adler-32 trailer, big-endian, on a byte boundary.
    _bits(&s, s.bitcnt & 7)
    expect = 0
    for i in range(4):
        expect = (expect << 8) | _bits(&s, 8)
    if _overrun(&s):
        return ERR_TRUNCATED
    if pos != out_size:
        return ERR_SHORT
    if trailer != NULL:
        trailer[0] = expect
        return OK
    adler = pdl_adler32(adler, out + adler_pos, pos - adler_pos)
    if adler != expect:
        return ERR_CHECKSUM
    return OK


cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    #include <emmintrin.h>
    #define PDL_ADLER_SSE2 1
    #endif

    /* Adler-32 (RFC 1950). Blocks of at most 5552 bytes (zlib's NMAX) keep the running sums
       within 32 bits before each modulo. In a block of K 16-byte chunks, byte j of chunk k
       contributes (K - k) * 16 - j to s2:
         s2 += 16 * K * s1_start + 16 * sum_k(s1 of chunks before k) + sum_j (16 - j) * b_j,
       computed with SSE2 (psadbw for byte sums, pmaddwd for the weighted sums) where
       available, by the same formula in scalar code otherwise. */
    static uint32_t pdl_adler32_base(uint32_t adler, const uint8_t* p, size_t n) {
        uint64_t s1 = adler & 0xFFFF, s2 = adler >> 16;
        while (n > 0) {
            size_t blk = n < 5552 ? n : 5552;
            size_t chunks = blk / 16, k;
            n -= blk;
            blk -= chunks * 16;
    #ifdef PDL_ADLER_SSE2
            if (chunks) {
                const __m128i zero = _mm_setzero_si128();
                const __m128i w_lo = _mm_set_epi16(9, 10, 11, 12, 13, 14, 15, 16);
                const __m128i w_hi = _mm_set_epi16(1, 2, 3, 4, 5, 6, 7, 8);
                __m128i v_s1 = zero, v_prev = zero, v_w = zero;
                for (k = 0; k < chunks; k++) {
                    __m128i v = _mm_loadu_si128((const __m128i*)p);
                    v_prev = _mm_add_epi32(v_prev, v_s1);
                    v_s1 = _mm_add_epi32(v_s1, _mm_sad_epu8(v, zero));
                    v_w = _mm_add_epi32(v_w, _mm_madd_epi16(_mm_unpacklo_epi8(v, zero), w_lo));
                    v_w = _mm_add_epi32(v_w, _mm_madd_epi16(_mm_unpackhi_epi8(v, zero), w_hi));
                    p += 16;
                }
                uint32_t a[4], c[4], w[4];
                _mm_storeu_si128((__m128i*)a, v_s1);
                _mm_storeu_si128((__m128i*)c, v_prev);
                _mm_storeu_si128((__m128i*)w, v_w);
                uint64_t sa = (uint64_t)a[0] + a[2];
                uint64_t sc = (uint64_t)c[0] + c[2];
                uint64_t sw = (uint64_t)w[0] + w[1] + w[2] + w[3];
                s2 += 16 * chunks * s1 + 16 * sc + sw;
                s1 += sa;
            }
    #else
            if (chunks) {
                uint32_t a[16] = {0}, c[16] = {0};
                uint64_t sa = 0, sc = 0, sw = 0;
                int j;
                for (k = 0; k < chunks; k++) {
                    for (j = 0; j < 16; j++) { c[j] += a[j]; a[j] += p[j]; }
                    p += 16;
                }
                for (j = 0; j < 16; j++) {
                    sa += a[j]; sc += c[j]; sw += (uint64_t)(16 - j) * a[j];
                }
                s2 += 16 * chunks * s1 + 16 * sc + sw;
                s1 += sa;
            }
    #endif
            while (blk > 0) { s1 += *p++; s2 += s1; blk--; }
            s1 %= 65521;
            s2 %= 65521;
        }
        return (uint32_t)((s2 << 16) | s1);
    }

    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #include <immintrin.h>
    #define PDL_ADLER_AVX2 1
    /* The same formula, 32 bytes a step: vpsadbw for the byte sums, vpmaddubsw with the weights
       32 .. 1 and vpmaddwd for the weighted sums. Blocks of 5536 = 173 * 32 bytes. */
    __attribute__((target("avx2")))
    static uint32_t pdl_adler32_avx2(uint32_t adler, const uint8_t* p, size_t n) {
        uint64_t s1 = adler & 0xFFFF, s2 = adler >> 16;
        const __m256i zero = _mm256_setzero_si256();
        const __m256i weights = _mm256_set_epi8(
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
            17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32);
        const __m256i ones = _mm256_set1_epi16(1);
        while (n > 0) {
            size_t blk = n < 5536 ? n : 5536;
            size_t chunks = blk / 32, k;
            n -= blk;
            blk -= chunks * 32;
            if (chunks) {
                __m256i v_s1 = zero, v_prev = zero, v_w = zero;
                uint32_t a[8], c[8], w[8];
                int j;
                uint64_t sa = 0, sc = 0, sw = 0;
                for (k = 0; k < chunks; k++) {
                    __m256i v = _mm256_loadu_si256((const __m256i*)p);
                    v_prev = _mm256_add_epi32(v_prev, v_s1);
                    v_s1 = _mm256_add_epi32(v_s1, _mm256_sad_epu8(v, zero));
                    v_w = _mm256_add_epi32(
                        v_w, _mm256_madd_epi16(_mm256_maddubs_epi16(v, weights), ones));
                    p += 32;
                }
                _mm256_storeu_si256((__m256i*)a, v_s1);
                _mm256_storeu_si256((__m256i*)c, v_prev);
                _mm256_storeu_si256((__m256i*)w, v_w);
                for (j = 0; j < 8; j++) {
                    sa += a[j];
                    sc += c[j];
                    sw += w[j];
                }
                s2 += 32 * chunks * s1 + 32 * sc + sw;
                s1 += sa;
            }
            while (blk > 0) { s1 += *p++; s2 += s1; blk--; }
            s1 %= 65521;
            s2 %= 65521;
        }
        return (uint32_t)((s2 << 16) | s1);
    }
    #endif

    /* Picks the AVX2 version once when the CPU has it (benign race: every thread picks the same). */
    static uint32_t (*pdl_adler32_impl)(uint32_t, const uint8_t*, size_t) = 0;
    static uint32_t pdl_adler32(uint32_t adler, const uint8_t* p, size_t n) {
        if (!pdl_adler32_impl) {
    #ifdef PDL_ADLER_AVX2
            __builtin_cpu_init();
            pdl_adler32_impl = __builtin_cpu_supports("avx2") ? pdl_adler32_avx2 : pdl_adler32_base;
    #else
            pdl_adler32_impl = pdl_adler32_base;
    #endif
        }
        return pdl_adler32_impl(adler, p, n);
    }
    """
    uint32_t pdl_adler32(uint32_t adler, const uint8_t* p, size_t n) nogil
    uint32_t pdl_adler32_base(uint32_t adler, const uint8_t* p, size_t n) nogil


cdef inline uint32_t _adler32(const uint8_t* p, size_t n) noexcept nogil:
    return pdl_adler32(1, p, n)


def adler32(const uint8_t[::1] data, uint32_t value=1, *, bint portable=False):
    """Adler-32 of ``data`` continuing from ``value``, as ``zlib.adler32``; exposed for testing.
    ``portable=True`` forces the SSE2/scalar code instead of the AVX2 one."""
    cdef uint32_t r
    cdef const uint8_t* p = &data[0] if data.shape[0] > 0 else NULL
    if (value & 0xFFFF) >= 65521 or (value >> 16) >= 65521:
        raise ValueError(f"value: not an Adler-32 value: {value}")
    with nogil:
        if portable:
            r = pdl_adler32_base(value, p, <size_t>data.shape[0])
        else:
            r = pdl_adler32(value, p, <size_t>data.shape[0])
    return r


def inflate(const uint8_t[::1] data, uint8_t[::1] out):
    """Decompress the zlib stream ``data`` into ``out``, which must be exactly filled.

    Raises ValueError (with the reason) for a corrupt, truncated or wrong-size stream.
    """
    cdef size_t produced = 0
    cdef int err
    cdef const uint8_t* src = &data[0] if data.shape[0] > 0 else NULL
    cdef uint8_t* dst = &out[0] if out.shape[0] > 0 else NULL
    if data.shape[0] == 0:
        raise ValueError("data: empty zlib stream")
    with nogil:
        err = _inflate(src, <size_t>data.shape[0], dst, <size_t>out.shape[0], &produced, NULL)
    if err != OK:
        msg = _INFLATE_ERRORS.get(err, "corrupt data")
        if err == ERR_SHORT:
            msg += f" ({produced} bytes, expected {out.shape[0]})"
        raise ValueError(msg)


# ------------------------------------------------------------------------------------------------
# Unfiltering


cdef inline uint8_t _paeth(int a, int b, int c) noexcept nogil:
    cdef int p = a + b - c
    cdef int pa = c_abs(p - a)
    cdef int pb = c_abs(p - b)
    cdef int pc = c_abs(p - c)
    if pa <= pb and pa <= pc:
        return <uint8_t>a
    if pb <= pc:
        return <uint8_t>b
    return <uint8_t>c


cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define PDL_RUN_SSE2 1
    #endif

    /* First index >= i where a[j] != b[j] (or end); b == NULL compares with zero. */
    static inline size_t pdl_equal_run(const uint8_t* a, const uint8_t* b, size_t i, size_t end) {
    #ifdef PDL_RUN_SSE2
        const __m128i zero = _mm_setzero_si128();
        while (i + 16 <= end) {
            __m128i va = _mm_loadu_si128((const __m128i*)(a + i));
            __m128i vb = b ? _mm_loadu_si128((const __m128i*)(b + i)) : zero;
            unsigned diff = ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(va, vb)) & 0xFFFFu;
            if (diff) {
    #if defined(__GNUC__) || defined(__clang__)
                return i + (size_t)__builtin_ctz(diff);
    #else
                while (!(diff & 1u)) { diff >>= 1; i++; }
                return i;
    #endif
            }
            i += 16;
        }
    #endif
        while (i < end && a[i] == (b ? b[i] : 0)) i++;
        return i;
    }
    """
    size_t pdl_equal_run(const uint8_t* a, const uint8_t* b, size_t i, size_t end) nogil


cdef inline size_t _zero_run(const uint8_t* row, size_t i, size_t end) noexcept nogil:
    """First index >= i where row is non-zero (or end)."""
    return pdl_equal_run(row, NULL, i, end)


cdef inline size_t _flat_run(const uint8_t* prev, size_t i, size_t end, size_t bpp) noexcept nogil:
    """First index >= i where prev[j] != prev[j - bpp] (or end)."""
    return pdl_equal_run(prev, prev - bpp, i, end)


cdef inline void _fill_period(uint8_t* dst, size_t n, size_t bpp) noexcept nogil:
    """dst[k] = dst[k - bpp] for k < n: continue the bpp-byte pattern before dst (a pixel).
    Whole 8-byte words and one memcpy for the tail: a byte loop would wait on its own stores."""
    cdef uint64_t t
    cdef uint64_t w[3]
    cdef const uint8_t* px = dst - bpp
    cdef uint32_t v
    cdef size_t k = 0
    if not LITTLE_ENDIAN or (bpp != 3 and bpp != 4):
        _copy_match(dst, 0, bpp, n)
        return
    if bpp == 4:
        memcpy(&v, px, 4)
        w[0] = (<uint64_t>v) | ((<uint64_t>v) << 32)
        w[1] = w[0]
        w[2] = w[0]
    else:
        # The stream p0 p1 p2 p0 ... repeats every 24 bytes = 3 words (phases 0, 2, 1).
        t = px[0] | (<uint64_t>px[1] << 8) | (<uint64_t>px[2] << 16)
        w[0] = t | (t << 24) | (t << 48)
        t = (t >> 16) | ((t & 0xFFFF) << 8)
        w[1] = t | (t << 24) | (t << 48)
        t = (t >> 16) | ((t & 0xFFFF) << 8)
        w[2] = t | (t << 24) | (t << 48)
    while k + 24 <= n:
        memcpy(dst + k, w, 24)
        k += 24
    memcpy(dst + k, w, n - k)


cdef inline void _unfilter_sub(uint8_t* row, size_t rowbytes, size_t bpp) noexcept nogil:
    """Sub filter for 3 or 4 bytes per pixel: the pixel to the left is kept in registers (a byte
    loop would wait on its own stores); stretches of 8+ zero residual bytes become a periodic
    fill."""
    cdef uint8_t c0 = row[0], c1 = row[1], c2 = row[2], c3 = row[3] if bpp == 4 else 0
    cdef size_t i = bpp, z
    cdef uint64_t w
    while i + bpp <= rowbytes:
        if i + 8 <= rowbytes:
            memcpy(&w, row + i, 8)
            if w == 0:
                z = _zero_run(row, i, rowbytes)
                z -= (z - i) % bpp  # whole pixels
                _fill_period(row + i, z - i, bpp)
                i = z
                continue
        c0 = <uint8_t>(c0 + row[i])
        c1 = <uint8_t>(c1 + row[i + 1])
        c2 = <uint8_t>(c2 + row[i + 2])
        row[i] = c0
        row[i + 1] = c1
        row[i + 2] = c2
        if bpp == 4:
            c3 = <uint8_t>(c3 + row[i + 3])
            row[i + 3] = c3
        i += bpp


cdef int _unfilter_row(uint8_t* row, const uint8_t* prev, size_t rowbytes, size_t bpp,
                       uint8_t ft) noexcept nogil:
    """Unfilter one row in place (prev: the unfiltered row above, NULL for the first row).
    Returns 0, or -1 for an invalid filter type."""
    cdef size_t i, z, e
    if ft == 0:
        return 0
    if ft == 1:  # Sub
        if bpp == 3 or bpp == 4:
            _unfilter_sub(row, rowbytes, bpp)
            return 0
        i = bpp
        while i < rowbytes:
            # Zero residuals continue the previous pixel: a periodic copy, done in bulk.
            z = _zero_run(row, i, rowbytes)
            if z - i >= 2 * bpp:
                _fill_period(row + i, z - i, bpp)
                i = z
                if i >= rowbytes:
                    break
            # Then one pixel's worth of non-zero residuals (or a short zero stretch).
            z = i + bpp if i + bpp < rowbytes else rowbytes
            while i < z:
                row[i] = <uint8_t>(row[i] + row[i - bpp])
                i += 1
    elif ft == 2:  # Up
        if prev != NULL:
            for i in range(rowbytes):
                row[i] = <uint8_t>(row[i] + prev[i])
    elif ft == 3:  # Average
        if prev == NULL:
            for i in range(bpp, rowbytes):
                row[i] = <uint8_t>(row[i] + (row[i - bpp] >> 1))
        else:
            for i in range(min(bpp, rowbytes)):
                row[i] = <uint8_t>(row[i] + (prev[i] >> 1))
            for i in range(bpp, rowbytes):
                row[i] = <uint8_t>(row[i] + ((<int>row[i - bpp] + prev[i]) >> 1))
    elif ft == 4:  # Paeth
        if prev == NULL:
            # Up and up-left are zero: the predictor is the left byte (Sub).
            for i in range(bpp, rowbytes):
                row[i] = <uint8_t>(row[i] + row[i - bpp])
        else:
            for i in range(min(bpp, rowbytes)):
                row[i] = <uint8_t>(row[i] + prev[i])
            i = bpp
            while i < rowbytes:
                if row[i] == 0:
                    # A run of zero residuals: the byte is the Paeth predictor itself.
                    z = _zero_run(row, i, rowbytes)
                    while i < z:
                        if memcmp(row + i - bpp, prev + i - bpp, bpp) == 0:
                            # The pixel to the left equals the one above it (a == c), so
                            # the predictor is "up" (p = b); every later byte of the run
                            # again has a == c, so the rest of the run copies the row above.
                            memcpy(row + i, prev + i, z - i)
                            i = z
                            break
                        e = _flat_run(prev, i, z, bpp)
                        if e > i:
                            # The row above is flat here (b == c): the predictor is the
                            # left byte, so the run continues the previous pixel.
                            _fill_period(row + i, e - i, bpp)
                            i = e
                            continue
                        row[i] = _paeth(row[i - bpp], prev[i], prev[i - bpp])
                        i += 1
                    continue
                row[i] = <uint8_t>(row[i] + _paeth(row[i - bpp], prev[i], prev[i - bpp]))
                i += 1
    else:
        return -1
    return 0


cdef int _unfilter(uint8_t* buf, size_t height, size_t rowbytes, size_t bpp) noexcept nogil:
    """In-place PNG unfiltering of height rows of (1 + rowbytes) bytes. Returns the first bad
    filter type's row + 1, or 0."""
    cdef size_t y, stride = rowbytes + 1
    for y in range(height):
        if _unfilter_row(buf + y * stride + 1, buf + (y - 1) * stride + 1 if y > 0 else NULL,
                         rowbytes, bpp, buf[y * stride]) != 0:
            return <int>(y + 1)
    return 0


def unfilter(uint8_t[::1] buf, Py_ssize_t height, Py_ssize_t rowbytes, Py_ssize_t bpp):
    """Undo PNG filtering in place. ``buf`` holds ``height`` rows of ``1 + rowbytes`` bytes (the
    filter type byte first); ``bpp`` is bytes per complete pixel (>= 1)."""
    cdef int bad
    if height < 0 or rowbytes < 0 or bpp < 1:
        raise ValueError(f"height, rowbytes, bpp: expected >= 0, >= 0, >= 1, got {height}, {rowbytes}, {bpp}")
    if buf.shape[0] != height * (rowbytes + 1):
        raise ValueError(f"buf: expected {height * (rowbytes + 1)} bytes, got {buf.shape[0]}")
    if height == 0:
        return
    with nogil:
        bad = _unfilter(&buf[0], <size_t>height, <size_t>rowbytes, <size_t>bpp)
    if bad:
        raise ValueError(f"invalid PNG filter type {buf[(bad - 1) * (rowbytes + 1)]} in row {bad - 1}")


# ------------------------------------------------------------------------------------------------
# Whole-image decoding (8-bit gray / gray+alpha / RGB / RGBA, 16-bit gray; not interlaced)


import threading

_local = threading.local()


cdef object _scratch(Py_ssize_t n):
    """A per-thread uint8 buffer of at least n bytes, reused across calls (page faults on fresh
    multi-megabyte allocations cost more than decoding a label map)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[0] < n:
        buf = np.empty(max(n, 1), dtype=np.uint8)
        _local.buf = buf
    return buf


cdef object _inflate_unfilter(const uint8_t[::1] data, Py_ssize_t height, Py_ssize_t width,
                              Py_ssize_t bpp):
    """Inflate and unfilter into the thread's scratch buffer; returns it (rows of
    1 + width * bpp bytes, valid until the next call on this thread)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {height}x{width} is empty")
    total = height * (width * bpp + 1)
    raw = _scratch(total)
    inflate_rows(data, height, width, bpp, raw[:total])
    return raw


def inflate_rows(const uint8_t[::1] data, Py_ssize_t height, Py_ssize_t width, Py_ssize_t bpp,
                 uint8_t[::1] out):
    """Inflate and unfilter the IDAT bytes into ``out``: ``height`` rows of one filter-type byte
    followed by ``width * bpp`` pixel bytes (``out`` must hold exactly that many bytes)."""
    cdef Py_ssize_t rowbytes = width * bpp
    cdef Py_ssize_t total = height * (rowbytes + 1)
    cdef size_t produced = 0
    cdef int err, bad = 0
    if bpp < 1:
        raise ValueError(f"bpp: expected >= 1, got {bpp}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {height}x{width} is empty")
    if out.shape[0] != total:
        raise ValueError(f"out: expected {total} bytes, got {out.shape[0]}")
    if data.shape[0] == 0:
        raise ValueError("empty image data (no IDAT bytes)")
    with nogil:
        err = _inflate(&data[0], <size_t>data.shape[0], &out[0], <size_t>total, &produced, NULL)
        if err == OK:
            bad = _unfilter(&out[0], <size_t>height, <size_t>rowbytes, <size_t>bpp)
    if err != OK:
        msg = _INFLATE_ERRORS.get(err, "corrupt data")
        if err == ERR_SHORT:
            msg += f" ({produced} bytes, expected {total})"
        raise ValueError(msg)
    if bad:
        raise ValueError(f"invalid PNG filter type {out[(bad - 1) * (rowbytes + 1)]} in row {bad - 1}")


cdef object _check_out(out, tuple shape, dtype, str name):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous or not out.flags.writeable:
        got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"{name}: expected a writable C-contiguous {np.dtype(dtype)} array of shape {shape}, got {got}")
    return out


def decode(const uint8_t[::1] data, Py_ssize_t height, Py_ssize_t width, Py_ssize_t channels,
           Py_ssize_t bitdepth, out=None):
    """Decode concatenated IDAT bytes of a non-interlaced PNG with 8- or 16-bit samples
    (1-4 channels) into an array.

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` for one channel, else ``(height, width, channels)``; ``uint8`` for
        8-bit samples, native-endian ``uint16`` for 16-bit samples. Written into ``out`` when
        given (same shape and dtype).
    """
    cdef Py_ssize_t bps, bpp, y, x, rowbytes
    cdef const uint8_t* src
    cdef uint8_t* dst
    cdef uint16_t* dst16
    if channels < 1 or channels > 4:
        raise ValueError(f"channels: expected 1 to 4, got {channels}")
    if bitdepth != 8 and bitdepth != 16:
        raise ValueError(f"bitdepth: expected 8 or 16, got {bitdepth}")
    bps = bitdepth // 8
    bpp = channels * bps
    rowbytes = width * bpp
    if channels == 1:
        shape = (height, width)
    else:
        shape = (height, width, channels)
    res = _check_out(out, shape, np.uint8 if bps == 1 else np.uint16, "out")
    raw = _inflate_unfilter(data, height, width, bpp)
    cdef const uint8_t[::1] rv = raw
    cdef uint8_t[::1] ov = res.reshape(-1).view(np.uint8)
    with nogil:
        for y in range(height):
            src = &rv[y * (rowbytes + 1) + 1]
            dst = &ov[y * rowbytes]
            if bps == 1:
                memcpy(dst, src, rowbytes)
            else:
                dst16 = <uint16_t*>dst
                for x in range(width * channels):
                    dst16[x] = <uint16_t>((<uint16_t>src[2 * x] << 8) | src[2 * x + 1])
    return res


def decode_ids(const uint8_t[::1] data, Py_ssize_t height, Py_ssize_t width, Py_ssize_t channels,
               Py_ssize_t bitdepth, out=None):
    """Decode straight to a ``(height, width)`` ``uint32`` id map (into ``out`` when given).

    RGB and RGBA (8-bit): id = R + 256 G + 256**2 B (COCO panoptic; alpha ignored). Gray (8- or
    16-bit): the sample value.
    """
    cdef Py_ssize_t bpp, y, x, rowbytes
    cdef const uint8_t* src
    cdef uint32_t* dst
    cdef uint32_t v
    if bitdepth == 8 and channels in (1, 3, 4):
        bpp = channels
    elif bitdepth == 16 and channels == 1:
        bpp = 2
    else:
        raise ValueError(
            f"channels, bitdepth: expected gray (1 channel, 8 or 16 bits), RGB or RGBA (8 bits), "
            f"got {channels} channels of {bitdepth} bits")
    rowbytes = width * bpp
    ids = _check_out(out, (height, width), np.uint32, "out")
    raw = _inflate_unfilter(data, height, width, bpp)
    cdef const uint8_t[::1] rv = raw
    cdef uint32_t[:, ::1] iv = ids
    with nogil:
        for y in range(height):
            src = &rv[y * (rowbytes + 1) + 1]
            dst = &iv[y, 0]
            if bpp == 3:
                # One 4-byte load per pixel (the byte after each pixel exists: the next pixel or
                # the next row's filter byte), except the image's very last pixel.
                x = 0
                if LITTLE_ENDIAN:
                    while x < width - 1 or (x < width and y + 1 < height):
                        memcpy(&v, src + 3 * x, 4)
                        dst[x] = v & 0xFFFFFF
                        x += 1
                while x < width:
                    dst[x] = src[3 * x] | (<uint32_t>src[3 * x + 1] << 8) | (<uint32_t>src[3 * x + 2] << 16)
                    x += 1
            elif bpp == 4:
                for x in range(width):
                    memcpy(&v, src + 4 * x, 4)
                    dst[x] = (v & 0xFFFFFF) if LITTLE_ENDIAN else (src[4 * x] | (<uint32_t>src[4 * x + 1] << 8) | (<uint32_t>src[4 * x + 2] << 16))
            elif bpp == 1:
                for x in range(width):
                    dst[x] = src[x]
            else:
                for x in range(width):
                    dst[x] = (<uint32_t>src[2 * x] << 8) | src[2 * x + 1]
    return ids


# ------------------------------------------------------------------------------------------------
# Fused decode + count for panoptic quality


def pair_counts_png(const uint8_t[::1] data_a, const uint8_t[::1] data_b, Py_ssize_t height,
                    Py_ssize_t width, Py_ssize_t a_bpp, Py_ssize_t b_bpp, uint8_t[::1] buf_a,
                    uint8_t[::1] buf_b):
    """Count the distinct (id_a, id_b) pixel pairs of two 8-bit RGB(A) PNGs of the same size,
    straight from their IDAT bytes (id = R + 256 G + 256**2 B, alpha ignored).

    Both streams are inflated into ``buf_a`` / ``buf_b`` (``height * (1 + width * bpp)`` bytes
    each, reused across calls); then, row by row while the row is in cache, its Adler-32 share is
    taken, it is unfiltered and its pixel pairs counted.

    Returns
    -------
    tuple of numpy.ndarray
        ``(a_ids uint32 (K,), b_ids uint32 (K,), counts int64 (K,))``, unsorted.

    Raises
    ------
    ValueError
        Corrupt data; the message starts with ``"a: "`` or ``"b: "`` to name the image.
    """
    cdef size_t sa = 1 + <size_t>width * a_bpp, sb = 1 + <size_t>width * b_bpp
    cdef size_t pa_ = 0, pb_ = 0, y
    cdef uint32_t ta = 0, tb = 0, adler_a = 1, adler_b = 1
    cdef int err_a = OK, err_b = OK, bad_a = 0, bad_b = 0, err_t = 0
    cdef RgbPairs st
    cdef Table t
    if a_bpp not in (3, 4) or b_bpp not in (3, 4):
        raise ValueError(f"a_bpp, b_bpp: expected 3 or 4, got {a_bpp} and {b_bpp}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {height}x{width} is empty")
    if <size_t>buf_a.shape[0] != <size_t>height * sa or <size_t>buf_b.shape[0] != <size_t>height * sb:
        raise ValueError(f"buf_a, buf_b: expected {height * sa} and {height * sb} bytes, got "
                         f"{buf_a.shape[0]} and {buf_b.shape[0]}")
    if data_a.shape[0] == 0 or data_b.shape[0] == 0:
        raise ValueError(("a" if data_a.shape[0] == 0 else "b") + ": empty image data (no IDAT bytes)")
    if _table_init(&t, 1024) != 0:
        _table_free(&t)
        raise MemoryError()
    try:
        with nogil:
            err_a = _inflate(&data_a[0], <size_t>data_a.shape[0], &buf_a[0], height * sa, &pa_, &ta)
            if err_a == OK:
                err_b = _inflate(&data_b[0], <size_t>data_b.shape[0], &buf_b[0], height * sb, &pb_, &tb)
            if err_a == OK and err_b == OK:
                _rgb_pairs_init(&st)
                for y in range(<size_t>height):
                    adler_a = pdl_adler32(adler_a, &buf_a[y * sa], sa)
                    adler_b = pdl_adler32(adler_b, &buf_b[y * sb], sb)
                    if _unfilter_row(&buf_a[y * sa + 1], &buf_a[(y - 1) * sa + 1] if y > 0 else NULL,
                                     sa - 1, a_bpp, buf_a[y * sa]) != 0:
                        bad_a = <int>(y + 1)
                        break
                    if _unfilter_row(&buf_b[y * sb + 1], &buf_b[(y - 1) * sb + 1] if y > 0 else NULL,
                                     sb - 1, b_bpp, buf_b[y * sb]) != 0:
                        bad_b = <int>(y + 1)
                        break
                    if a_bpp == b_bpp:
                        err_t = _rgb_pairs_row_same(&st, &buf_a[y * sa + 1], &buf_b[y * sb + 1],
                                                    width, a_bpp, &t)
                    else:
                        err_t = _rgb_pairs_row(&st, &buf_a[y * sa + 1], &buf_b[y * sb + 1], width,
                                               a_bpp, b_bpp, &t)
                    if err_t != 0:
                        break
                if not bad_a and not bad_b and err_t == 0:
                    err_t = _rgb_pairs_finish(&st, &t)
        for name, err, produced, total in (("a", err_a, pa_, height * sa), ("b", err_b, pb_, height * sb)):
            if err != OK:
                msg = _INFLATE_ERRORS.get(err, "corrupt data")
                if err == ERR_SHORT:
                    msg += f" ({produced} bytes, expected {total})"
                raise ValueError(f"{name}: {msg}")
        if bad_a:
            raise ValueError(f"a: invalid PNG filter type {buf_a[(bad_a - 1) * sa]} in row {bad_a - 1}")
        if bad_b:
            raise ValueError(f"b: invalid PNG filter type {buf_b[(bad_b - 1) * sb]} in row {bad_b - 1}")
        if err_t != 0:
            raise MemoryError()
        if adler_a != ta:
            raise ValueError("a: " + _INFLATE_ERRORS[ERR_CHECKSUM])
        if adler_b != tb:
            raise ValueError("b: " + _INFLATE_ERRORS[ERR_CHECKSUM])
        return _table_export(&t)
    finally:
        _table_free(&t)
