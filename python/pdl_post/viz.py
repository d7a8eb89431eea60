"""Visualisation of panoptic maps: colours, overlays, centre markers and a dependency-free PNG writer.

Everything here is vectorised numpy (no per-pixel Python loops) and needs nothing beyond numpy and
the standard library: :func:`write_png` is a small PNG encoder built on :mod:`zlib` and :mod:`struct`,
so the library does not depend on Pillow.

Colour scheme of :func:`colorize` for ``id = class * label_divisor + n``:

- stuff (``n == 0``): a fixed colour per class (the Cityscapes palette for train ids 0..18, a
  hashed colour for larger class ids);
- things (``n > 0``): the class colour jittered per instance, deterministic in ``(class, n, seed)``,
  and distinct from every other colour in the same image;
- void (``void_label`` and any other negative id): black.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Union

import numpy as np

from pdl_post._inputs import integral_value

__all__ = ["CITYSCAPES_PALETTE", "class_colors", "colorize", "draw_centers", "overlay", "write_png"]

PathLike = Union[str, "os.PathLike[str]"]

#: Colours of the 19 Cityscapes train ids (road, sidewalk, ..., bicycle), ``[19, 3]`` uint8.
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)

_VOID_COLOR = np.zeros(3, dtype=np.uint8)
_JITTER = 48  # per-channel half-range of the instance jitter around the class colour
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic, no warnings)."""
    x = np.asarray(x, dtype=np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x & _MASK64


def _hash3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Hash three integer arrays (broadcast) to uint64."""
    h = _mix64(np.asarray(a, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    h = _mix64(h ^ np.asarray(b, dtype=np.int64).astype(np.uint64))
    return _mix64(h ^ np.asarray(c, dtype=np.int64).astype(np.uint64))


def _bytes_of(h: np.ndarray, shift: int) -> np.ndarray:
    return ((h >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.int64)


def class_colors(classes: np.ndarray) -> np.ndarray:
    """Fixed colour of each class id.

    Parameters
    ----------
    classes : array_like of int, shape ``[N]``
        Non-negative class ids.

    Returns
    -------
    numpy.ndarray, shape ``[N, 3]``, uint8
        The Cityscapes palette for ids 0..18, a hashed (seed-independent) colour above.
    """
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    out = np.empty((classes.size, 3), dtype=np.uint8)
    known = (classes >= 0) & (classes < len(CITYSCAPES_PALETTE))
    out[known] = CITYSCAPES_PALETTE[classes[known]]
    if not known.all():
        h = _hash3(classes[~known], 0x5EED, 0xC1A55)
        # keep hashed class colours away from black so they never look like void
        out[~known] = np.stack([_bytes_of(h, s) for s in (0, 8, 16)], axis=1) // 4 * 3 + 64
    return out


def _salted(seed: int, salt: int) -> int:
    return (int(seed) * 1_000_003 + salt) % (1 << 63)


def _instance_colors(classes: np.ndarray, numbers: np.ndarray, seed: int, salt: int) -> np.ndarray:
    base = class_colors(classes).astype(np.int64)
    h = _hash3(classes, numbers, _salted(seed, salt))
    jitter = np.stack([_bytes_of(h, s) for s in (0, 8, 16)], axis=1) % (2 * _JITTER + 1) - _JITTER
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def _segment_colors(
    ids: np.ndarray, *, label_divisor: int, void_label: int, seed: int
) -> np.ndarray:
    """Colour of each (unique, sorted) panoptic id, ``[N] -> [N, 3]`` uint8."""
    ids = ids.astype(np.int64)
    colors = np.zeros((ids.size, 3), dtype=np.uint8)
    void = (ids == void_label) | (ids < 0)
    cls = np.where(void, 0, ids // label_divisor)
    num = np.where(void, 0, ids % label_divisor)
    stuff = ~void & (num == 0)
    thing = ~void & (num > 0)
    colors[void] = _VOID_COLOR
    colors[stuff] = class_colors(cls[stuff])
    if not thing.any():
        return colors
    t_idx = np.flatnonzero(thing)
    colors[t_idx] = _instance_colors(cls[t_idx], num[t_idx], seed, 0)
    # Make every instance colour unique in this image (and different from void and the stuff
    # colours): re-draw colliding instances with a new salt. Loops over colliding *segments* only.
    reserved = np.concatenate([_pack(colors[void | stuff]), _pack(_VOID_COLOR[None])])
    capacity = (1 << 24) - np.unique(reserved).size
    if t_idx.size > capacity:  # pragma: no cover - more instances than RGB colours
        return colors
    salt = 1
    while True:
        packed = _pack(colors[t_idx])
        _, first = np.unique(packed, return_index=True)
        dup = np.ones(t_idx.size, dtype=bool)
        dup[first] = False
        dup |= np.isin(packed, reserved)
        if not dup.any():
            return colors
        bad = t_idx[dup]
        if salt < 64:
            colors[bad] = _instance_colors(cls[bad], num[bad], seed, salt)
        else:  # jitter space around the class colour exhausted: any colour will do
            h = _hash3(cls[bad], num[bad], _salted(seed, salt))
            colors[bad] = np.stack([_bytes_of(h, s) for s in (0, 8, 16)], axis=1)
        salt += 1


def _check_int_map(name: str, arr: object) -> np.ndarray:
    from pdl_post._cuda import to_host

    a = np.asarray(to_host(arr, name))  # the CUDA path's output is copied here
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape [..., H, W], got shape {a.shape}")
    return a


def colorize(
    panoptic: np.ndarray, *, label_divisor: int = 1000, void_label: int = -1, seed: int = 0
) -> np.ndarray:
    """Colour a panoptic id map.

    Parameters
    ----------
    panoptic : numpy.ndarray of int, shape ``[H, W]`` or ``[..., H, W]``
        Panoptic ids ``class * label_divisor + n`` (``n == 0``: stuff, ``n > 0``: thing instance);
        torch tensors and CuPy arrays too (CUDA ones are copied to the host).
    label_divisor : int, keyword-only
        The divisor used to build the ids (> 0).
    void_label : int, keyword-only
        The void id; void (and any negative id) is drawn black.
    seed : int, keyword-only
        Seed of the per-instance jitter; stuff colours do not depend on it.

    Returns
    -------
    numpy.ndarray, shape ``[..., H, W, 3]``, uint8
        RGB image. Void ids (and negative ones) are black. Stuff ids take their class's fixed
        colour (the Cityscapes palette for classes 0-18, a hashed colour of 64 levels per
        channel above, so that among thousands of classes two can share one); every instance
        gets a colour of its own, different from void, from the stuff colours of the image and
        from the other instances (while there are fewer than 2**24 colours' worth of them).
    """
    pan = _check_int_map("panoptic", panoptic)
    if isinstance(label_divisor, bool) or not isinstance(label_divisor, (int, np.integer)):
        raise TypeError(f"label_divisor must be an int, got {type(label_divisor).__name__}")
    if label_divisor <= 0:
        raise ValueError(f"label_divisor must be > 0, got {label_divisor}")
    ids, inverse = np.unique(pan, return_inverse=True)
    colors = _segment_colors(
        ids, label_divisor=int(label_divisor), void_label=void_label, seed=seed
    )
    return colors[inverse.reshape(pan.shape)]


def _as_rgb_u8(name: str, image: object) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must have shape [H, W], [H, W, 3] or [H, W, 4], got {img.shape}")
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        return (np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise TypeError(f"{name} must be uint8 or float in [0, 1], got dtype {img.dtype}")


def overlay(
    image: np.ndarray,
    panoptic: np.ndarray,
    *,
    alpha: float = 0.5,
    label_divisor: int = 1000,
    void_label: int = -1,
    seed: int = 0,
    boundary_color: tuple[int, int, int] | None = (255, 255, 255),
) -> np.ndarray:
    """Blend the colourised panoptic map over an image.

    Parameters
    ----------
    image : numpy.ndarray, shape ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``
        uint8, or float in ``[0, 1]``; grey images are repeated to RGB, alpha is dropped.
    panoptic : numpy.ndarray of int, shape ``[H, W]``
        Panoptic ids (see :func:`colorize`; CUDA tensors and CuPy arrays are copied to the host).
    alpha : float, keyword-only
        Weight of the segment colour, in ``[0, 1]``. Void pixels keep the image.
    label_divisor, void_label, seed : keyword-only
        As in :func:`colorize`.
    boundary_color : (r, g, b) or None, keyword-only
        Colour of the pixels on a segment boundary (4-neighbourhood); None draws no boundaries.

    Returns
    -------
    numpy.ndarray, shape ``[H, W, 3]``, uint8
    """
    img = _as_rgb_u8("image", image)
    pan = _check_int_map("panoptic", panoptic)
    if pan.ndim != 2 or pan.shape != img.shape[:2]:
        raise ValueError(
            f"panoptic must have shape [H, W] = {img.shape[:2]} (the image's), got {pan.shape}"
        )
    if (
        isinstance(alpha, (bool, np.bool_, str, bytes))
        or np.ndim(alpha) != 0
        or not np.isrealobj(alpha)
    ):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}")
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if boundary_color is not None:
        boundary_color = _check_rgb_color("boundary_color", boundary_color)
    col = colorize(pan, label_divisor=label_divisor, void_label=void_label, seed=seed)
    blend = img.astype(np.float32) * (1.0 - alpha) + col.astype(np.float32) * alpha
    out = (blend + 0.5).astype(np.uint8)
    void = (pan == void_label) | (pan < 0)
    out[void] = img[void]
    if boundary_color is not None:
        edge = np.zeros(pan.shape, dtype=bool)
        dy = pan[1:, :] != pan[:-1, :]
        dx = pan[:, 1:] != pan[:, :-1]
        edge[1:, :] |= dy
        edge[:-1, :] |= dy
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        out[edge] = np.asarray(boundary_color, dtype=np.uint8)
    return out


_DISC_CHUNK_PIXELS = 1 << 22  # draw_centers: marked pixels computed at once


def _check_rgb_color(name: str, value: object) -> tuple[int, int, int]:
    """An (r, g, b) colour of three integers (integral floats too) in [0, 255]."""
    try:
        channels = tuple(integral_value(c) for c in value)  # type: ignore[attr-defined]
    except TypeError:
        raise TypeError(f"{name} must be an (r, g, b) tuple of ints, got {value!r}") from None
    if len(channels) != 3 or None in channels:
        raise TypeError(f"{name} must be an (r, g, b) tuple of ints, got {value!r}")
    if not all(0 <= c <= 255 for c in channels):  # type: ignore[operator]
        raise ValueError(f"{name} channels must lie in [0, 255], got {value!r}")
    return channels  # type: ignore[return-value]


def draw_centers(
    rgb: np.ndarray,
    centers: np.ndarray,
    *,
    radius: int = 4,
    color: tuple[int, int, int] = (255, 255, 255),
    outline: tuple[int, int, int] | None = (0, 0, 0),
) -> np.ndarray:
    """Mark centres with filled discs.

    Parameters
    ----------
    rgb : numpy.ndarray, shape ``[H, W, 3]``, uint8
        The image to draw on (not modified).
    centers : array_like, shape ``[K, 2]``
        Centre coordinates ``(y, x)``, integer or float (rounded to the nearest pixel). Discs are
        clipped at the image border. ``find_centers``' centres of a CUDA heatmap (torch CUDA
        tensors, CuPy arrays) are copied to the host here.
    radius : int, keyword-only
        Disc radius in pixels (>= 0).
    color : (r, g, b), keyword-only
        Fill colour.
    outline : (r, g, b) or None, keyword-only
        Colour of a one-pixel ring around each disc; None draws no ring.

    Returns
    -------
    numpy.ndarray, shape ``[H, W, 3]``, uint8
        A copy of ``rgb`` with the markers.
    """
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"rgb must be a uint8 array of shape [H, W, 3], got {img.dtype} {img.shape}"
        )
    from pdl_post._cuda import to_host

    ctr = np.asarray(to_host(centers, "centers"))
    if ctr.size == 0:
        return img.copy()
    if ctr.ndim != 2 or ctr.shape[1] != 2:
        raise ValueError(f"centers must have shape [K, 2] (y, x), got {ctr.shape}")
    integer = integral_value(radius)
    if integer is None:
        raise TypeError(f"radius must be an int (pixels), got {radius!r}")
    radius = integer
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    color = _check_rgb_color("color", color)
    if outline is not None:
        outline = _check_rgb_color("outline", outline)
    out = img.copy()
    h, w = out.shape[:2]
    pts = np.rint(ctr.astype(np.float64)).astype(np.int64)

    def disc(r: int, rgb_color: tuple[int, int, int]) -> None:
        # Only the offsets that can land in the image for some centre: a radius far beyond the
        # image costs the image's size, not r^2.
        y_lo, y_hi = max(-r, -int(pts[:, 0].max())), min(r, h - 1 - int(pts[:, 0].min()))
        x_lo, x_hi = max(-r, -int(pts[:, 1].max())), min(r, w - 1 - int(pts[:, 1].min()))
        if y_lo > y_hi or x_lo > x_hi:
            return
        yy, xx = np.mgrid[y_lo : y_hi + 1, x_lo : x_hi + 1]
        keep = yy * yy + xx * xx <= r * r + r  # a round-looking digital disc
        oy, ox = yy[keep], xx[keep]
        # Centres in chunks of about _DISC_CHUNK_PIXELS marked pixels: memory stays bounded
        # however many centres there are (a flat heatmap gives one per pixel). One colour per
        # call, so the order of the writes does not matter.
        step = max(1, _DISC_CHUNK_PIXELS // max(1, oy.size))
        for first in range(0, len(pts), step):
            chunk = pts[first : first + step]
            py = (chunk[:, 0:1] + oy[None, :]).ravel()
            px = (chunk[:, 1:2] + ox[None, :]).ravel()
            inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
            out[py[inside], px[inside]] = np.asarray(rgb_color, dtype=np.uint8)

    r = int(radius)
    if outline is not None:
        disc(r + 1, outline)
    disc(r, color)
    return out


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_png(path: PathLike, image: np.ndarray, *, compress_level: int = 6) -> None:
    """Write an image as PNG with nothing but :mod:`zlib` and :mod:`struct`.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    image : numpy.ndarray, shape ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]``, ``[H, W, 3]`` or ``[H, W, 4]``
        uint8 or uint16: grey, grey + alpha, RGB or RGBA. H and W must be >= 1.
    compress_level : int, keyword-only
        zlib level 0..9.

    Notes
    -----
    Rows are written with PNG filter 1 ("Sub"), computed vectorised; no interlacing.
    """
    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"image must be uint8 or uint16, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"image must have shape [H, W] or [H, W, C] with C in 1..4, got {np.asarray(image).shape}"
        )
    h, w, c = img.shape
    if h < 1 or w < 1 or h >= 2**31 or w >= 2**31:
        raise ValueError(f"image height and width must be in [1, 2**31), got {h} x {w}")
    if not 0 <= int(compress_level) <= 9:
        raise ValueError(f"compress_level must be in 0..9, got {compress_level}")
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bit_depth = 8 * img.dtype.itemsize
    bpp = c * img.dtype.itemsize  # bytes per pixel
    raw = np.ascontiguousarray(img.astype(img.dtype.newbyteorder(">"), copy=False))
    rows = raw.view(np.uint8).reshape(h, w * bpp)
    filtered = np.empty((h, w * bpp + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub: byte - byte bpp to the left (mod 256)
    filtered[:, 1 : 1 + bpp] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, 1 + bpp :])
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(filtered.tobytes(), int(compress_level))
    with open(os.fspath(path), "wb") as f:
        f.write(_PNG_SIGNATURE)
        f.write(_chunk(b"IHDR", ihdr))
        f.write(_chunk(b"IDAT", data))
        f.write(_chunk(b"IEND", b""))
