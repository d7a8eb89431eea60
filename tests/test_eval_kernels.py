"""The compiled counting kernels (pdl_post._eval_kernels) against numpy references, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pdl_post import _eval_kernels
from pdl_post.eval._kernels import masked_counts, pair_counts


def _maps(rng, shape, dtype, *, distinct, runs):
    """Piecewise-constant (runs) or noisy maps with a given number of distinct values."""
    info = np.iinfo(dtype)
    lo = max(info.min, -(2**31))  # 64-bit maps must fit 32 bits (signed or unsigned)
    hi = min(info.max, 2**31 - 1 if lo < 0 else 2**32 - 1)
    values = rng.integers(lo, hi, distinct, endpoint=True)
    n = int(np.prod(shape))
    if runs:
        lengths = rng.integers(1, 60, n // 10 + 2)
        idx = np.repeat(rng.integers(0, distinct, lengths.size), lengths)[:n]
        idx = np.resize(idx, n)
    else:
        idx = rng.integers(0, distinct, n)
    return values[idx].astype(dtype).reshape(shape)


@pytest.mark.parametrize(
    "dtype", [np.int32, np.uint32, np.uint8, np.uint16, np.int16, np.int64, np.uint64]
)
@pytest.mark.parametrize("runs", [True, False])
def test_pair_counts_equals_reference(dtype, runs):
    rng = np.random.default_rng(0)
    for distinct in (1, 2, 7, 300, 5000):
        for shape in [(1,), (5,), (17,), (16,), (33, 47), (3, 5, 7)]:
            a = _maps(rng, shape, dtype, distinct=distinct, runs=runs)
            b = _maps(rng, shape, dtype, distinct=min(distinct, 50), runs=runs)
            got = pair_counts(a, b)
            ref = pair_counts(a, b, backend="reference")
            for x, y in zip(got, ref):
                assert x.dtype == np.int64
                np.testing.assert_array_equal(x, y)


def test_pair_counts_negative_and_large_ids():
    a = np.array([-1, -1, 2**31 - 1, -(2**31), 0, 0], np.int32)
    b = np.array([-1, 5, 7, 7, 0, 0], np.int32)
    g, p, c = pair_counts(a, b)
    assert list(zip(g.tolist(), p.tolist(), c.tolist())) == [
        (-(2**31), 7, 1),
        (-1, -1, 1),
        (-1, 5, 1),
        (0, 0, 2),
        (2**31 - 1, 7, 1),
    ]
    u = np.array([2**32 - 1, 0], np.uint64)
    assert pair_counts(u, u)[0].tolist() == [0, 2**32 - 1]
    # Wider ids are counted by rank (a sort), any int64 ones: the same counts as the reference.
    rng = np.random.default_rng(1)
    wide = rng.choice(np.array([-(2**63), -1, 0, 2**40, 2**63 - 1], np.int64), 500)
    narrow = rng.integers(-3, 3, 500).astype(np.int64)
    for x, y in ((wide, narrow), (narrow, wide), (wide, wide[::-1].copy())):
        for got, ref in zip(pair_counts(x, y), pair_counts(x, y, backend="reference")):
            np.testing.assert_array_equal(got, ref)
        for got, ref in zip(masked_counts(x, y > 0), masked_counts(x, y > 0, backend="reference")):
            np.testing.assert_array_equal(got, ref)
    with pytest.raises(
        ValueError, match="a: ids must fit int64, got a maximum of 18446744073709551615"
    ):
        pair_counts(np.array([2**64 - 1], np.uint64), np.array([0], np.int64))


def test_pair_counts_many_distinct_pairs_grow_the_table():
    n = 200_000
    a = np.arange(n, dtype=np.uint32)
    b = (np.arange(n, dtype=np.uint32) * 7) % 1000
    g, p, c = pair_counts(a, b)
    assert g.size == n and (c == 1).all()
    np.testing.assert_array_equal(g, np.arange(n))
    np.testing.assert_array_equal(p, b.astype(np.int64))


def test_pair_counts_empty_and_errors():
    e = np.zeros(0, np.int32)
    assert all(x.size == 0 for x in pair_counts(e, e))
    with pytest.raises(ValueError, match="different shapes"):
        pair_counts(np.zeros(3, np.int32), np.zeros(4, np.int32))
    with pytest.raises(TypeError, match="integer"):
        pair_counts(np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="backend"):
        pair_counts(e, e, backend="gpu")
    with pytest.raises(ValueError, match="same length"):
        _eval_kernels.pair_counts(np.zeros(3, np.uint32), np.zeros(4, np.uint32))


@given(
    hnp.arrays(np.int32, st.integers(0, 300), elements=st.integers(-3, 3)),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_pair_counts_hypothesis(a, seed):
    b = np.random.default_rng(seed).integers(-2, 2, a.size).astype(np.int32)
    for x, y in zip(pair_counts(a, b), pair_counts(a, b, backend="reference")):
        np.testing.assert_array_equal(x, y)


def test_masked_counts_equals_reference():
    rng = np.random.default_rng(1)
    for trial in range(60):
        n = int(rng.integers(0, 3000))
        ids = _maps(rng, (n,), np.int32, distinct=int(rng.integers(1, 40)), runs=trial % 2 == 0)
        dens = rng.choice([0.0, 0.01, 0.3, 1.0])
        mask = (rng.random(n) < dens).astype(np.uint8) * rng.integers(1, 256, n).astype(np.uint8)
        for m in (mask, mask != 0):
            got = masked_counts(ids, m)
            ref = masked_counts(ids, m, backend="reference")
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])
            assert got[2] == ref[2]
    with pytest.raises(ValueError, match="different shapes"):
        masked_counts(np.zeros(3, np.int32), np.zeros(2, np.uint8))


@pytest.mark.parametrize("bpp_a, bpp_b", [(3, 3), (3, 4), (4, 4), (4, 3)])
def test_pair_counts_rgb_equals_decoded(bpp_a, bpp_b):
    """The fused count over RGB(A) scanlines equals counting the decoded ids; alpha is ignored."""
    rng = np.random.default_rng(2)
    for trial in range(40):
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 70))

        def rows(bpp, h=h, w=w, trial=trial):
            ids = _maps(
                rng, (h, w), np.uint32, distinct=int(rng.integers(1, 6)), runs=trial % 3 != 0
            )
            ids &= 0xFFFFFF
            px = np.zeros((h, w, bpp), np.uint8)
            px[..., 0], px[..., 1], px[..., 2] = ids & 255, (ids >> 8) & 255, ids >> 16
            if bpp == 4:
                px[..., 3] = rng.integers(0, 2, (h, w)) * 255
            raw = np.zeros((h, 1 + w * bpp), np.uint8)
            raw[:, 0] = rng.integers(0, 5, h)  # filter bytes are skipped
            raw[:, 1:] = px.reshape(h, -1)
            return raw.ravel(), ids

        ra, ia = rows(bpp_a)
        rb, ib = rows(bpp_b)
        g, p, c = _eval_kernels.pair_counts_rgb(ra, rb, h, w, bpp_a, bpp_b)
        order = np.lexsort((p, g))
        ref = pair_counts(ia, ib, backend="reference")
        np.testing.assert_array_equal(g[order], ref[0])
        np.testing.assert_array_equal(p[order], ref[1])
        np.testing.assert_array_equal(c[order], ref[2])


def test_pair_counts_rgb_errors():
    buf = np.zeros(2 * (1 + 3 * 3), np.uint8)
    with pytest.raises(ValueError, match="3 or 4"):
        _eval_kernels.pair_counts_rgb(buf, buf, 2, 3, 2, 3)
    with pytest.raises(ValueError, match="bytes"):
        _eval_kernels.pair_counts_rgb(buf, buf, 2, 4, 3, 3)


def _png_pair(tmp_path, rng, bpp_a, bpp_b, h, w, writer):
    from pdl_post.io import id2rgb, write_png

    out = []
    for k, bpp in enumerate((bpp_a, bpp_b)):
        ids = (
            _maps(rng, (h, w), np.uint32, distinct=int(rng.integers(1, 30)), runs=k == 0) & 0xFFFFFF
        )
        px = id2rgb(ids)
        if bpp == 4:
            px = np.dstack([px, rng.integers(0, 2, (h, w)).astype(np.uint8) * 255])
        path = tmp_path / f"{k}.png"
        if writer == "pillow":
            from PIL import Image

            Image.fromarray(px).save(path)
        else:
            write_png(path, px)
        out.append((path, ids))
    return out


@pytest.mark.parametrize("bpp_a, bpp_b", [(3, 3), (4, 4), (3, 4), (4, 3)])
@pytest.mark.parametrize("writer", ["pdl_post", "pillow"])
def test_pair_counts_png_equals_decoded(tmp_path, bpp_a, bpp_b, writer):
    """The fused inflate + unfilter + count of two PNG files equals counting decoded id maps."""
    pytest.importorskip("PIL")
    from pdl_post import _png
    from pdl_post.io import _rgb_idat

    rng = np.random.default_rng(3)
    for h, w in [(1, 1), (3, 17), (20, 16), (37, 90)]:
        (pa, ia), (pb, ib) = _png_pair(tmp_path, rng, bpp_a, bpp_b, h, w, writer)
        da, db = _rgb_idat(pa), _rgb_idat(pb)
        assert (da[3], db[3]) == (bpp_a, bpp_b)
        bufs = [np.empty(h * (1 + w * b), np.uint8) for b in (bpp_a, bpp_b)]
        g, p, c = _png.pair_counts_png(
            np.frombuffer(da[0], np.uint8),
            np.frombuffer(db[0], np.uint8),
            h,
            w,
            bpp_a,
            bpp_b,
            *bufs,
        )
        order = np.lexsort((p, g))
        ref = pair_counts(ia, ib, backend="reference")
        np.testing.assert_array_equal(g[order], ref[0])
        np.testing.assert_array_equal(p[order], ref[1])
        np.testing.assert_array_equal(c[order], ref[2])


def test_pair_counts_png_errors(tmp_path):
    import zlib

    from pdl_post import _png

    rows = np.zeros((2, 1 + 3 * 4), np.uint8)
    good = np.frombuffer(zlib.compress(rows.tobytes()), np.uint8)
    bad_filter = rows.copy()
    bad_filter[1, 0] = 9
    bad = np.frombuffer(zlib.compress(bad_filter.tobytes()), np.uint8)
    buf = [np.empty(rows.size, np.uint8) for _ in range(2)]
    with pytest.raises(ValueError, match=r"^b: invalid PNG filter type 9 in row 1"):
        _png.pair_counts_png(good, bad, 2, 4, 3, 3, *buf)
    with pytest.raises(ValueError, match=r"^a: .*ends early"):
        _png.pair_counts_png(good[:-6], good, 2, 4, 3, 3, *buf)
    corrupt = good.copy()
    corrupt[-1] ^= 1
    with pytest.raises(ValueError, match=r"^a: Adler-32"):
        _png.pair_counts_png(corrupt, good, 2, 4, 3, 3, *buf)
    with pytest.raises(ValueError, match="3 or 4"):
        _png.pair_counts_png(good, good, 2, 4, 1, 3, *buf)
    with pytest.raises(ValueError, match="bytes"):
        _png.pair_counts_png(good, good, 2, 5, 3, 3, *buf)
