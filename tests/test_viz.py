"""Tests of pdl_post.viz: colours, overlays, centre markers and the zlib-only PNG writer."""

from __future__ import annotations

import numpy as np
import pytest

from pdl_post import viz

PIL_Image = pytest.importorskip("PIL.Image")


def _read_png(path):
    with PIL_Image.open(path) as im:
        im.load()
        return im.mode, np.array(im)


def _toy_panoptic() -> np.ndarray:
    """[6, 8] map: stuff 0 and 21, three cars (13), two persons (11), void."""
    pan = np.full((6, 8), 0, dtype=np.int32)
    pan[:, 6:] = 21000
    pan[0:2, 0:2] = 13001
    pan[0:2, 2:4] = 13002
    pan[2:4, 0:2] = 13003
    pan[2:4, 2:4] = 11001
    pan[4:6, 0:2] = 11002
    pan[4:6, 2:4] = -1
    return pan


# ---------------------------------------------------------------------------- write_png


@pytest.mark.parametrize(
    ("shape", "dtype", "mode"),
    [
        ((7, 5), np.uint8, "L"),
        ((7, 5, 1), np.uint8, "L"),
        ((7, 5, 2), np.uint8, "LA"),
        ((7, 5, 3), np.uint8, "RGB"),
        ((7, 5, 4), np.uint8, "RGBA"),
        ((1, 1, 3), np.uint8, "RGB"),
        ((3, 300, 3), np.uint8, "RGB"),
        ((9, 4), np.uint16, None),
    ],
)
def test_write_png_roundtrip_byte_exact(tmp_path, shape, dtype, mode):
    rng = np.random.default_rng(0)
    img = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    path = tmp_path / "x.png"
    viz.write_png(path, img)
    got_mode, got = _read_png(path)
    if mode is not None:
        assert got_mode == mode
    np.testing.assert_array_equal(got.astype(dtype), img.reshape(got.shape))
    assert got.shape == (img.shape if img.ndim == 2 or img.shape[2] > 1 else img.shape[:2])


def test_write_png_noncontiguous_and_levels(tmp_path):
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)[:, ::-1]
    for level in (0, 9):
        path = tmp_path / f"l{level}.png"
        viz.write_png(str(path), img, compress_level=level)
        np.testing.assert_array_equal(_read_png(path)[1], img)


def test_write_png_starts_with_signature(tmp_path):
    path = tmp_path / "s.png"
    viz.write_png(path, np.zeros((2, 2, 3), np.uint8))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("img", "exc", "match"),
    [
        (np.zeros((2, 2), np.float32), TypeError, "uint8 or uint16"),
        (np.zeros((2, 2), bool), TypeError, "uint8 or uint16"),
        (np.zeros((2, 2, 5), np.uint8), ValueError, "C in 1..4"),
        (np.zeros(4, np.uint8), ValueError, "shape"),
        (np.zeros((0, 3, 3), np.uint8), ValueError, "height and width"),
    ],
)
def test_write_png_bad_input(tmp_path, img, exc, match):
    with pytest.raises(exc, match=match):
        viz.write_png(tmp_path / "bad.png", img)


def test_write_png_bad_level(tmp_path):
    with pytest.raises(ValueError, match="compress_level"):
        viz.write_png(tmp_path / "bad.png", np.zeros((2, 2), np.uint8), compress_level=10)


# ---------------------------------------------------------------------------- colorize


def test_colorize_shape_dtype_and_void_black():
    pan = _toy_panoptic()
    rgb = viz.colorize(pan)
    assert rgb.shape == (*pan.shape, 3)
    assert rgb.dtype == np.uint8
    assert (rgb[pan == -1] == 0).all()


def test_colorize_stuff_uses_fixed_class_colour():
    pan = _toy_panoptic()
    rgb = viz.colorize(pan, seed=3)
    np.testing.assert_array_equal(rgb[0, 7], viz.class_colors([21])[0])
    np.testing.assert_array_equal(rgb[5, 5], viz.CITYSCAPES_PALETTE[0])
    # stuff colours do not depend on the seed
    np.testing.assert_array_equal(viz.colorize(pan, seed=99)[0, 7], rgb[0, 7])


def test_colorize_distinct_colour_per_segment():
    pan = _toy_panoptic()
    rgb = viz.colorize(pan)
    ids = np.unique(pan)
    colours = {tuple(rgb[pan == i][0]) for i in ids}
    assert len(colours) == len(ids)
    # every pixel of a segment has the same colour
    for i in ids:
        assert (rgb[pan == i] == rgb[pan == i][0]).all()


def test_colorize_instances_near_their_class_colour():
    pan = _toy_panoptic()
    rgb = viz.colorize(pan).astype(int)
    car = viz.CITYSCAPES_PALETTE[13].astype(int)
    for i in (13001, 13002, 13003):
        c = rgb[pan == i][0]
        assert np.abs(c - car).max() <= 48


def test_colorize_many_instances_all_distinct():
    # 3000 instances of one class plus stuff: more than the jitter cube around some colours holds
    rng = np.random.default_rng(1)
    n = 3000
    ids = np.concatenate([13000 + np.arange(1, n + 1), [0, 1000, 21000, -1]])
    pan = rng.permutation(np.repeat(ids, 3)).reshape(-1, 12).astype(np.int64)
    rgb = viz.colorize(pan)
    packed = (
        (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    )
    u_ids, first = np.unique(pan, return_index=True)
    assert np.unique(packed.ravel()[first]).size == u_ids.size
    # consistent: same id -> same colour
    for i in u_ids[:50]:
        assert np.unique(packed[pan == i]).size == 1


def test_colorize_deterministic_and_seeded():
    pan = _toy_panoptic()
    np.testing.assert_array_equal(viz.colorize(pan, seed=5), viz.colorize(pan, seed=5))
    assert not np.array_equal(viz.colorize(pan, seed=5), viz.colorize(pan, seed=6))


def test_colorize_instance_colour_independent_of_other_segments():
    pan = _toy_panoptic()
    small = np.full((2, 2), 13002, dtype=np.int32)
    np.testing.assert_array_equal(viz.colorize(small)[0, 0], viz.colorize(pan)[0, 2])


def test_colorize_batch_and_dtypes():
    pan = _toy_panoptic()
    batch = np.stack([pan, pan[::-1]])
    rgb = viz.colorize(batch)
    assert rgb.shape == (2, *pan.shape, 3)
    np.testing.assert_array_equal(rgb[0], viz.colorize(pan))
    np.testing.assert_array_equal(viz.colorize(pan.astype(np.int64)), viz.colorize(pan))


def test_colorize_custom_divisor_and_void():
    pan = np.array([[0, 256, 257], [513, 7, 7]], dtype=np.int32)
    rgb = viz.colorize(pan, label_divisor=256, void_label=7)
    assert (rgb[1, 1:] == 0).all()
    np.testing.assert_array_equal(rgb[0, 1], viz.CITYSCAPES_PALETTE[1])


@pytest.mark.parametrize(
    ("pan", "kwargs", "exc", "match"),
    [
        (np.zeros((2, 2), np.float32), {}, TypeError, "panoptic must be an integer array"),
        (np.zeros(3, np.int32), {}, ValueError, r"\[\.\.\., H, W\]"),
        (np.zeros((2, 2), np.int32), {"label_divisor": 0}, ValueError, "label_divisor must be > 0"),
        (np.zeros((2, 2), np.int32), {"label_divisor": 1.5}, TypeError, "label_divisor"),
    ],
)
def test_colorize_bad_input(pan, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        viz.colorize(pan, **kwargs)


# ---------------------------------------------------------------------------- overlay


def test_overlay_blends_and_keeps_void():
    pan = _toy_panoptic()
    img = np.full((*pan.shape, 3), 100, dtype=np.uint8)
    out = viz.overlay(img, pan, alpha=0.5, boundary_color=None)
    col = viz.colorize(pan).astype(np.float32)
    expect = (img * 0.5 + col * 0.5 + 0.5).astype(np.uint8)
    expect[pan == -1] = 100
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(viz.overlay(img, pan, alpha=0.0, boundary_color=None), img)


def test_overlay_boundaries_grey_and_float_images():
    pan = _toy_panoptic()
    grey = np.linspace(0, 1, pan.size, dtype=np.float32).reshape(pan.shape)
    out = viz.overlay(grey, pan, alpha=1.0, boundary_color=(1, 2, 3))
    assert out.shape == (*pan.shape, 3)
    # pixel (0, 1) borders 13001 | 13002 at (0, 2): boundary
    np.testing.assert_array_equal(out[0, 1], (1, 2, 3))
    # interior pixel of a constant region far from any border keeps the full segment colour
    big = np.zeros((5, 5), np.int32)
    out2 = viz.overlay(np.zeros((5, 5, 3), np.uint8), big, alpha=1.0)
    np.testing.assert_array_equal(out2[2, 2], viz.CITYSCAPES_PALETTE[0])


def test_overlay_bad_input():
    pan = _toy_panoptic()
    with pytest.raises(ValueError, match="panoptic must have shape"):
        viz.overlay(np.zeros((3, 3, 3), np.uint8), pan)
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(np.zeros((*pan.shape, 3), np.uint8), pan, alpha=1.5)
    with pytest.raises(TypeError, match="image must be uint8"):
        viz.overlay(np.zeros(pan.shape, np.int32), pan)
    img = np.zeros((*pan.shape, 3), np.uint8)
    with pytest.raises(TypeError, match=r"alpha must be a number in \[0, 1\], got 'x'"):
        viz.overlay(img, pan, alpha="x")
    with pytest.raises(ValueError, match=r"boundary_color channels must lie in \[0, 255\]"):
        viz.overlay(img, pan, boundary_color=(300, 0, 0))
    with pytest.raises(TypeError, match=r"boundary_color must be an \(r, g, b\) tuple of ints"):
        viz.overlay(img, pan, boundary_color=(1.5, 0, 0))


# ---------------------------------------------------------------------------- draw_centers


def test_draw_centers_marks_and_clips():
    img = np.zeros((20, 30, 3), np.uint8)
    centers = np.array([[10, 15], [0, 0], [19.6, 29.4], [-50, 500]])
    out = viz.draw_centers(img, centers, radius=2, color=(255, 0, 0), outline=(0, 255, 0))
    assert (img == 0).all()  # input untouched
    np.testing.assert_array_equal(out[10, 15], (255, 0, 0))
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(out[19, 29], (255, 0, 0))  # rounded to (20, 29): clipped disc
    np.testing.assert_array_equal(out[10, 18], (0, 255, 0))  # ring at distance 3
    np.testing.assert_array_equal(out[10, 25], (0, 0, 0))


def test_draw_centers_empty_and_bad():
    img = np.zeros((4, 4, 3), np.uint8)
    np.testing.assert_array_equal(viz.draw_centers(img, np.zeros((0, 2))), img)
    with pytest.raises(ValueError, match="centers must have shape"):
        viz.draw_centers(img, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="rgb must be"):
        viz.draw_centers(img[..., 0], np.zeros((1, 2)))
    one = np.zeros((1, 2))
    with pytest.raises(TypeError, match=r"radius must be an int \(pixels\), got 2\.9"):
        viz.draw_centers(img, one, radius=2.9)
    with pytest.raises(ValueError, match=r"color channels must lie in \[0, 255\]"):
        viz.draw_centers(img, one, color=(256, 0, 0))
    with pytest.raises(TypeError, match="outline must be an"):
        viz.draw_centers(img, one, outline="red")
    # Integral floats are integers: the same drawing.
    np.testing.assert_array_equal(
        viz.draw_centers(img, one, radius=1.0, color=(255.0, 0, 0)),
        viz.draw_centers(img, one, radius=1, color=(255, 0, 0)),
    )


def test_draw_centers_in_chunks_draws_the_same(monkeypatch):
    # Centres are drawn in chunks (memory bounded with a centre per pixel): the same image.
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    centers = rng.uniform(-5, 55, (300, 2))
    whole = viz.draw_centers(img, centers, radius=3, color=(1, 2, 3), outline=(4, 5, 6))
    monkeypatch.setattr(viz, "_DISC_CHUNK_PIXELS", 100)
    chunked = viz.draw_centers(img, centers, radius=3, color=(1, 2, 3), outline=(4, 5, 6))
    np.testing.assert_array_equal(chunked, whole)


def test_draw_centers_huge_radius_costs_the_image_size():
    # Only the offsets that reach the image are drawn: a radius of 20000 on a small image fills
    # it (from a centre inside, and partly from one outside) without a 20000^2 grid.
    img = np.zeros((30, 40, 3), np.uint8)
    out = viz.draw_centers(img, [[5, 5]], radius=20_000, color=(9, 9, 9), outline=None)
    assert (out == 9).all()
    far = viz.draw_centers(img, [[-20_000, 20]], radius=20_010, color=(9, 9, 9), outline=None)
    small = viz.draw_centers(np.zeros((30, 40, 3), np.uint8), [[-20_000, 20]], radius=20_010)
    assert (far[:5] == 9).all() and (far[-1] == 0).all() and small.shape == img.shape


def test_colorize_then_png_roundtrip(tmp_path):
    pan = _toy_panoptic()
    rgb = viz.draw_centers(viz.colorize(pan), [[1, 1]], radius=0)
    viz.write_png(tmp_path / "pan.png", rgb)
    mode, got = _read_png(tmp_path / "pan.png")
    assert mode == "RGB"
    np.testing.assert_array_equal(got, rgb)
