"""Seeded synthetic Cityscapes-like scenes: the main test and benchmark input (DESIGN §4).

A scene is what a Panoptic-DeepLab network would output for a street image, plus its ground truth:

- stuff in horizontal bands with wavy borders (Cityscapes train ids: sky 10 at the top, building 2,
  vegetation 8, sidewalk 1, road 0 at the bottom) and a few small stuff rectangles (poles, signs,
  ...; some smaller than the usual ``stuff_area``);
- elliptic thing instances of random thing classes, painted far-to-near (a lower bottom edge paints
  later and occludes), so some are partly or fully hidden (fully hidden ones are dropped);
- a centre heatmap: a Gaussian (sigma 8, value 1 at the centre) at each visible instance's
  centroid rounded to a pixel, max over instances;
- offsets (dy, dx) = centre - pixel on thing pixels, 0 elsewhere, plus Gaussian noise;
- semantic noise: a fraction of pixels flipped to a random class (the ground truth stays clean).

Everything is vectorised numpy (a loop over instances touches only each instance's bounding box)
and deterministic from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Batch", "Scene", "make_batch", "make_scene"]

CITYSCAPES_THING_IDS = tuple(range(11, 19))
# Cityscapes train ids of the stuff bands, top to bottom, and the fraction of the height each
# band's lower border sits at.
_CITYSCAPES_BANDS = ((10, 0.18), (2, 0.40), (8, 0.50), (1, 0.62), (0, 1.0))
# Thing classes drawn tall (person, rider) vs wide (car, truck, bus, train, motorcycle, bicycle).
_TALL_CLASSES = {11, 12}


@dataclass
class Scene:
    """One synthetic image's network outputs and ground truth.

    Attributes
    ----------
    sem : ndarray, shape [H, W], integer (``sem_dtype``)
        Noisy semantic labels (the network's argmax).
    ctr : ndarray, shape [1, H, W], ``ctr_dtype``
        Centre heatmap.
    off : ndarray, shape [2, H, W], ``off_dtype``
        Offsets, channel 0 = dy, channel 1 = dx (centre minus pixel).
    panoptic_gt : ndarray, shape [H, W], int32
        Clean ground truth: ``class * label_divisor + n`` for things (n from 1 per class, in
        row-major order of the centres), ``class * label_divisor`` for stuff.
    centers_gt : ndarray, shape [N, 2], int64
        (y, x) of the visible instances' centres, row-major order.
    logits : ndarray, shape [C, H, W], float32, or None
        Semantic logits whose argmax is ``sem`` (only with ``logits=True``).
    thing_ids : tuple of int
    num_classes : int
    label_divisor : int
    """

    sem: np.ndarray
    ctr: np.ndarray
    off: np.ndarray
    panoptic_gt: np.ndarray
    centers_gt: np.ndarray
    logits: np.ndarray | None
    thing_ids: tuple[int, ...]
    num_classes: int
    label_divisor: int

    @property
    def sem_input(self) -> np.ndarray:
        """The semantic input for ``merge``: ``logits`` when generated, else ``sem``."""
        return self.logits if self.logits is not None else self.sem


@dataclass
class Batch:
    """A stack of scenes: ``sem`` [B,H,W], ``ctr`` [B,1,H,W], ``off`` [B,2,H,W],
    ``panoptic_gt`` [B,H,W], ``logits`` [B,C,H,W] or None, ``centers_gt`` list of [N_b, 2]."""

    sem: np.ndarray
    ctr: np.ndarray
    off: np.ndarray
    panoptic_gt: np.ndarray
    centers_gt: list[np.ndarray]
    logits: np.ndarray | None
    thing_ids: tuple[int, ...]
    num_classes: int
    label_divisor: int

    @property
    def sem_input(self) -> np.ndarray:
        """The semantic input for ``merge``: ``logits`` when generated, else ``sem``."""
        return self.logits if self.logits is not None else self.sem


def _stuff_layout(rng, height, width, stuff):
    """Stuff label map [H, W] int64: wavy horizontal bands plus small rectangles."""
    stuff_set = set(stuff)
    if {c for c, _ in _CITYSCAPES_BANDS} <= stuff_set:
        bands = _CITYSCAPES_BANDS
    else:
        chosen = stuff[:5]
        bands = tuple((c, (i + 1) / len(chosen)) for i, c in enumerate(chosen))
    band_classes = [c for c, _ in bands]
    extras = [c for c in stuff if c not in band_classes]

    sem = np.full((height, width), band_classes[-1], dtype=np.int64)
    xs = np.arange(width, dtype=np.float64)
    rows = np.arange(height, dtype=np.float64)[:, None]
    # Paint bottom-up: each band covers everything above its wavy lower border.
    for c, frac in reversed(bands[:-1]):
        period = width * rng.uniform(0.3, 1.0)
        amp = height * rng.uniform(0.0, 0.03)
        border = frac * height + amp * np.sin(2 * np.pi * xs / period + rng.uniform(0, 2 * np.pi))
        sem[rows < border[None, :]] = c

    # Small stuff rectangles (poles, signs, walls, ...): some under the usual stuff_area.
    n_rect = 2 * len(extras) if extras else 0
    for _ in range(n_rect):
        c = extras[int(rng.integers(len(extras)))]
        rh = max(1, int(height * rng.uniform(0.01, 0.25)))
        rw = max(1, int(width * rng.uniform(0.003, 0.08)))
        y0 = int(rng.integers(0, max(1, height - rh + 1)))
        x0 = int(rng.integers(0, max(1, width - rw + 1)))
        sem[y0 : y0 + rh, x0 : x0 + rw] = c
    return sem


def make_scene(
    height: int,
    width: int,
    num_centers: int,
    *,
    seed: int | Sequence[int] = 0,
    num_classes: int = 19,
    thing_ids: Iterable[int] = CITYSCAPES_THING_IDS,
    offset_noise: float = 0.5,
    semantic_noise: float = 0.01,
    center_sigma: float = 8.0,
    logits: bool = False,
    integer_offsets: bool = False,
    label_divisor: int = 1000,
    sem_dtype: Any = np.int32,
    ctr_dtype: Any = np.float32,
    off_dtype: Any = np.float32,
) -> Scene:
    """Generate one seeded synthetic scene.

    Parameters
    ----------
    height, width : int
        Image size.
    num_centers : int
        Number of thing instances drawn (fully occluded ones are dropped, so the scene may have
        fewer). Thousands work (e.g. 3000 on 2048x4096).
    seed : int or sequence of int
        Seed for ``numpy.random.default_rng``; the same seed gives the same scene.
    num_classes : int
        Number of semantic classes C; stuff classes are those not in ``thing_ids``.
    thing_ids : iterable of int
        Thing classes (default: Cityscapes train ids 11..18).
    offset_noise : float
        Standard deviation (pixels) of the Gaussian noise added to both offset channels.
    semantic_noise : float
        Fraction of pixels whose label is replaced by a uniformly random class.
    center_sigma : float
        Standard deviation of the heatmap Gaussians.
    logits : bool
        Also produce logits [C, H, W] float32 whose argmax (strict, unique) is ``sem``.
    integer_offsets : bool
        Round the offsets (noise included) to integers.
    label_divisor : int
        Used for ``panoptic_gt``.
    sem_dtype, ctr_dtype, off_dtype : numpy dtypes
        Output dtypes of ``sem``, ``ctr`` and ``off``.

    Returns
    -------
    Scene
    """
    assert height >= 1 and width >= 1 and num_centers >= 0
    rng = np.random.default_rng(seed)
    thing_ids = tuple(sorted({int(t) for t in thing_ids}))
    thing_set = set(thing_ids)
    stuff = [c for c in range(num_classes) if c not in thing_set]
    things = [t for t in thing_ids if 0 <= t < num_classes]
    assert stuff, "need at least one stuff class"

    sem_gt = _stuff_layout(rng, height, width, stuff)

    # ---- thing instances: random ellipses, painted far to near -------------------------------
    n = num_centers if things else 0
    base = math.sqrt(height * width / max(n, 1))
    cls = np.array(things or [0], dtype=np.int64)[rng.integers(0, max(len(things), 1), n)]
    cy = rng.uniform(0.15 * height, height, n)
    cx = rng.uniform(0.0, width, n)
    size = np.clip(base * rng.uniform(0.2, 0.6, n), 1.5, max(1.5, min(height, width) / 4))
    aspect = np.exp(rng.uniform(-0.3, 0.3, n))
    tall = np.isin(cls, list(_TALL_CLASSES))
    ay = np.where(tall, 1.5, 0.7) * size * aspect  # vertical semi-axis
    ax = np.where(tall, 0.5, 1.2) * size / aspect  # horizontal semi-axis

    inst = np.zeros((height, width), dtype=np.int32)  # 1-based index into the drawn instances
    boxes = []
    for j in np.argsort(cy + ay, kind="stable"):  # lower bottom edge = nearer = painted later
        y0 = max(0, math.floor(cy[j] - ay[j]))
        y1 = min(height, math.ceil(cy[j] + ay[j]) + 1)
        x0 = max(0, math.floor(cx[j] - ax[j]))
        x1 = min(width, math.ceil(cx[j] + ax[j]) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float64)[:, None]
        xx = np.arange(x0, x1, dtype=np.float64)[None, :]
        inside = ((yy - cy[j]) / ay[j]) ** 2 + ((xx - cx[j]) / ax[j]) ** 2 <= 1.0
        inst[y0:y1, x0:x1][inside] = j + 1
        boxes.append((j, y0, y1, x0, x1))

    # Centroid of each visible instance (only its bounding box is scanned), rounded to a pixel.
    vis_j, vis_cy, vis_cx = [], [], []
    for j, y0, y1, x0, x1 in boxes:
        ys, xs = np.nonzero(inst[y0:y1, x0:x1] == j + 1)
        if ys.size:
            vis_j.append(j)
            vis_cy.append(int(np.rint(ys.mean())) + y0)
            vis_cx.append(int(np.rint(xs.mean())) + x0)
    vis_j = np.asarray(vis_j, dtype=np.int64)
    centers = np.stack(
        [np.asarray(vis_cy, dtype=np.int64), np.asarray(vis_cx, dtype=np.int64)], axis=1
    ).reshape(-1, 2)
    # Row-major order of the centres defines the ground-truth instance numbering.
    order = np.lexsort((centers[:, 1], centers[:, 0]))
    vis_j, centers = vis_j[order], centers[order]

    # Per drawn instance (index j + 1): its class, centre and ground-truth number.
    lut_cls = np.zeros(n + 1, dtype=np.int64)
    lut_cy = np.zeros(n + 1, dtype=np.float64)
    lut_cx = np.zeros(n + 1, dtype=np.float64)
    lut_num = np.zeros(n + 1, dtype=np.int64)
    count: dict[int, int] = {}
    for k, j in enumerate(vis_j.tolist()):
        c = int(cls[j])
        count[c] = count.get(c, 0) + 1
        if count[c] >= label_divisor:
            raise ValueError(
                f"label_divisor={label_divisor} too small for {count[c]} instances of class {c}"
            )
        lut_cls[j + 1], lut_num[j + 1] = c, count[c]
        lut_cy[j + 1], lut_cx[j + 1] = centers[k]

    is_thing = inst > 0
    sem_gt = np.where(is_thing, lut_cls[inst], sem_gt)
    panoptic_gt = (sem_gt * label_divisor + lut_num[inst]).astype(np.int32)

    # ---- centre heatmap: Gaussians, max over instances ----------------------------------------
    ctr = np.zeros((height, width), dtype=np.float32)
    r = math.ceil(3 * center_sigma)
    for py, px in centers.tolist():
        y0, y1 = max(0, py - r), min(height, py + r + 1)
        x0, x1 = max(0, px - r), min(width, px + r + 1)
        gy = np.arange(y0, y1, dtype=np.float64)[:, None] - py
        gx = np.arange(x0, x1, dtype=np.float64)[None, :] - px
        g = np.exp(-(gy**2 + gx**2) / (2 * center_sigma**2)).astype(np.float32)
        np.maximum(ctr[y0:y1, x0:x1], g, out=ctr[y0:y1, x0:x1])

    # ---- offsets: centre - pixel on thing pixels, plus noise ---------------------------------
    # float32 is exact here: coordinates are integers below 2**24.
    off = np.empty((2, height, width), dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    np.subtract(lut_cy.astype(np.float32)[inst], rows, out=off[0])
    np.subtract(lut_cx.astype(np.float32)[inst], cols, out=off[1])
    not_thing = ~is_thing
    off[0][not_thing] = 0.0
    off[1][not_thing] = 0.0
    if offset_noise > 0:
        off += np.float32(offset_noise) * rng.standard_normal((2, height, width), dtype=np.float32)
    if integer_offsets:
        np.rint(off, out=off)

    # ---- semantic noise ----------------------------------------------------------------------
    sem = sem_gt.copy()
    if semantic_noise > 0:
        flip = rng.random((height, width), dtype=np.float32) < semantic_noise
        sem[flip] = rng.integers(0, num_classes, int(flip.sum()))

    out_logits = None
    if logits:
        lg = rng.standard_normal((num_classes, height, width), dtype=np.float32)
        top = lg.max(axis=0) + rng.uniform(0.5, 3.0, (height, width)).astype(np.float32)
        np.put_along_axis(lg, sem[None], top[None], axis=0)
        out_logits = lg

    return Scene(
        sem=sem.astype(sem_dtype),
        ctr=ctr[None].astype(ctr_dtype, copy=False),
        off=off.astype(off_dtype, copy=False),
        panoptic_gt=panoptic_gt,
        centers_gt=centers,
        logits=out_logits,
        thing_ids=thing_ids,
        num_classes=num_classes,
        label_divisor=label_divisor,
    )


def make_batch(
    batch: int,
    height: int,
    width: int,
    num_centers: int,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> Batch:
    """Stack ``batch`` scenes; image ``i`` is ``make_scene(height, width, num_centers,
    seed=(seed, i), **kwargs)``.

    Returns
    -------
    Batch
        ``sem`` [B,H,W], ``ctr`` [B,1,H,W], ``off`` [B,2,H,W], ``panoptic_gt`` [B,H,W],
        ``logits`` [B,C,H,W] or None, ``centers_gt`` list of [N_b, 2].
    """
    assert batch >= 1
    scenes = [
        make_scene(height, width, num_centers, seed=(seed, i), **kwargs) for i in range(batch)
    ]
    first = scenes[0]
    return Batch(
        sem=np.stack([s.sem for s in scenes]),
        ctr=np.stack([s.ctr for s in scenes]),
        off=np.stack([s.off for s in scenes]),
        panoptic_gt=np.stack([s.panoptic_gt for s in scenes]),
        centers_gt=[s.centers_gt for s in scenes],
        logits=np.stack([s.logits for s in scenes]) if first.logits is not None else None,
        thing_ids=first.thing_ids,
        num_classes=first.num_classes,
        label_divisor=first.label_divisor,
    )
