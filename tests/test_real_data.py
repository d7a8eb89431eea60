"""A real label map: Panoptic-DeepLab targets derived from nuclei instance labels give back every
instance.

Data: ``tests/data/stardist_mask2d.npz``, the 512 x 512 nuclei instance labels (125 nuclei, many
touching, some non-convex) shipped in the ``stardist`` wheel; source and licence in
``tests/data/LICENSE-stardist.txt``.

Targets, as a Panoptic-DeepLab network trained to perfection would output them:

- centre of an instance = its centroid rounded to a pixel (for non-convex nuclei this pixel may lie
  outside the nucleus: instance 10 of this map is such a crescent);
- heatmap = max over instances of a Gaussian of value 1 at the centre, sigma scaled to the nucleus
  (0.25 * sqrt(area), clipped to [3, 8]);
- offsets = centre - pixel on nucleus pixels, 0 elsewhere;
- sem = 1 (the one thing class) on nuclei, 0 (stuff) on background.

Why recovery is exact by construction: every centre has heatmap value exactly 1.0, the maximum, so
it survives NMS for any window (equal neighbours form a plateau, which keeps every tied pixel), and
no other pixel is a local maximum (a neighbour one step towards the centre of the Gaussian that
dominates it is strictly higher). With exact offsets every pixel votes exactly its own centre, at
distance 0; all 125 rounded centroids are distinct (the closest two are 11.7 px apart), so no other
centre ties. The nearest-centre rule can split a non-convex or touching nucleus only when votes miss
their own centre by more than half the distance to another centre: the sub-pixel variant below
votes the unrounded centroid (at most 0.71 px off), still far below 11.7 / 2, so every nucleus is
recovered there too; the variant without offsets (every pixel votes itself) shows the rule splitting
touching nuclei, and is checked only for what can be proved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pdl_post
from conftest import assert_results_equal

DATA = Path(__file__).parent / "data" / "stardist_mask2d.npz"
LABEL_DIVISOR = 1000


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    with np.load(DATA) as f:
        lab = f["labels"]
    assert lab.shape == (512, 512) and lab.dtype == np.uint16
    return lab


def _centroids(lab: np.ndarray):
    """ids (ascending), float centroids [N, 2], areas [N] of the instances of ``lab``."""
    ys, xs = np.nonzero(lab)
    ids_px = lab[ys, xs].astype(np.int64)
    ids = np.unique(ids_px)
    area = np.bincount(ids_px)
    cy = np.bincount(ids_px, ys) / np.maximum(area, 1)
    cx = np.bincount(ids_px, xs) / np.maximum(area, 1)
    return ids, np.stack([cy[ids], cx[ids]], axis=1), area[ids]


def make_targets(lab: np.ndarray, *, subpixel: bool = False, dtype=np.float32):
    """sem [H,W] uint8, ctr [1,H,W], off [2,H,W] from an instance label map (see module doc)."""
    h, w = lab.shape
    ids, cent, area = _centroids(lab)
    centres = np.rint(cent).astype(np.int64)
    ctr = np.zeros((h, w), dtype=np.float64)
    for (py, px), a in zip(centres.tolist(), area.tolist()):
        sigma = float(np.clip(0.25 * np.sqrt(a), 3.0, 8.0))
        r = int(np.ceil(3 * sigma))
        y0, y1, x0, x1 = max(0, py - r), min(h, py + r + 1), max(0, px - r), min(w, px + r + 1)
        gy = np.arange(y0, y1, dtype=np.float64)[:, None] - py
        gx = np.arange(x0, x1, dtype=np.float64)[None, :] - px
        g = np.exp(-(gy**2 + gx**2) / (2 * sigma**2))
        np.maximum(ctr[y0:y1, x0:x1], g, out=ctr[y0:y1, x0:x1])
    lut = np.zeros((int(lab.max()) + 1, 2), dtype=np.float64)
    lut[ids] = cent if subpixel else centres
    target = lut[lab]  # [H, W, 2]
    yy, xx = np.mgrid[0:h, 0:w]
    fg = lab > 0
    off = np.zeros((2, h, w), dtype=np.float64)
    off[0][fg] = (target[..., 0] - yy)[fg]
    off[1][fg] = (target[..., 1] - xx)[fg]
    sem = fg.astype(np.uint8)
    return sem, ctr[None].astype(dtype), off.astype(dtype), ids, centres


def match_instances(lab: np.ndarray, panoptic: np.ndarray):
    """Pairs (gt id, predicted id) with their overlap, and per-id areas, over nucleus pixels."""
    fg = lab > 0
    pairs, counts = np.unique(
        np.stack([lab[fg].astype(np.int64), panoptic[fg].astype(np.int64)]),
        axis=1,
        return_counts=True,
    )
    return pairs, counts


def assert_bijection(lab: np.ndarray, panoptic: np.ndarray):
    """Every GT nucleus is exactly one predicted thing segment with the identical pixel set."""
    panoptic = np.asarray(panoptic)
    fg = lab > 0
    # background stays background (stuff class 0, id 0), nuclei are all things
    assert (panoptic[~fg] == 0).all()
    thing = panoptic >= LABEL_DIVISOR
    np.testing.assert_array_equal(thing, fg)
    pairs, _ = match_instances(lab, panoptic)
    gt, pred = pairs
    # one predicted id per GT id and one GT id per predicted id
    assert np.unique(gt).size == gt.size, "a GT nucleus is split"
    assert np.unique(pred).size == pred.size, "a predicted segment merges nuclei"
    assert gt.size == np.unique(lab[fg]).size


@pytest.mark.parametrize("nms_kernel", [3, 7, 13])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_instance_recovered_exactly(labels, nms_kernel, dtype):
    sem, ctr, off, ids, centres = make_targets(labels, dtype=dtype)
    r = pdl_post.postprocess(
        sem,
        ctr,
        off,
        thing_ids=[1],
        stuff_area=0,
        top_k=None,
        nms_kernel=nms_kernel,
        label_divisor=LABEL_DIVISOR,
    )
    # the centres are exactly the rounded centroids, in row-major order
    order = np.lexsort((centres[:, 1], centres[:, 0]))
    np.testing.assert_array_equal(r.centers, centres[order])
    np.testing.assert_array_equal(r.center_scores, np.ones(len(ids)))
    assert_bijection(labels, r.panoptic)
    # instance n (1-based, row-major order of the centres) is GT nucleus ids[order[n - 1]]
    expected = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    expected[ids[order]] = LABEL_DIVISOR + np.arange(1, len(ids) + 1)
    np.testing.assert_array_equal(r.panoptic, expected[labels])
    # segments: one thing per nucleus with its exact area, then the background stuff
    things = [s for s in r.segments if s["isthing"]]
    assert len(things) == 125
    gt_area = np.bincount(labels.ravel())
    assert [s["area"] for s in things] == gt_area[ids[order]].tolist()
    assert [s for s in r.segments if not s["isthing"]] == [
        {"id": 0, "category_id": 0, "isthing": False, "area": int(gt_area[0]), "score": 1.0}
    ]


def test_non_convex_nucleus_recovered(labels):
    """Nucleus 10 is a crescent whose centroid lies outside it: exact offsets still recover it."""
    sem, ctr, off, ids, centres = make_targets(labels)
    k = int(np.flatnonzero(ids == 10)[0])
    assert labels[tuple(centres[k])] != 10
    pan = np.asarray(
        pdl_post.merge(sem, ctr, off, thing_ids=[1], stuff_area=0, top_k=None, nms_kernel=3)
    )
    values = np.unique(pan[labels == 10])
    assert values.size == 1 and values[0] >= LABEL_DIVISOR
    assert ((pan == values[0]) == (labels == 10)).all()


def test_subpixel_offsets_recover_every_instance(labels):
    """Votes at the unrounded centroid (<= 0.71 px from the centre) still recover every nucleus."""
    sem, ctr, off, _, _ = make_targets(labels, subpixel=True)
    assert not np.all(off == np.rint(off))
    pan = pdl_post.merge(sem, ctr, off, thing_ids=[1], stuff_area=0, top_k=None, nms_kernel=7)
    assert_bijection(labels, pan)


def test_without_offsets_only_voronoi(labels):
    """No offsets: every pixel votes itself and joins the nearest centre (a Voronoi partition).
    Touching nuclei then get split along the Voronoi border; what still holds by construction:
    every nucleus' own centre pixel, when inside the nucleus, gets that nucleus' instance."""
    sem, ctr, _, ids, centres = make_targets(labels)
    pan = np.asarray(
        pdl_post.merge(
            sem,
            ctr,
            np.zeros((2, *labels.shape), np.float32),
            thing_ids=[1],
            stuff_area=0,
            top_k=None,
            nms_kernel=3,
        )
    )
    order = np.lexsort((centres[:, 1], centres[:, 0]))
    for n, k in enumerate(order, start=1):
        y, x = centres[k]
        if labels[y, x] == ids[k]:
            assert pan[y, x] == LABEL_DIVISOR + n
    pairs, _ = match_instances(labels, pan)
    split = np.unique(pairs[0], return_counts=True)[1] > 1
    assert split.any(), "expected touching nuclei to be split without offsets"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("subpixel", [False, True])
def test_compiled_equals_reference(labels, threads, subpixel):
    sem, ctr, off, _, _ = make_targets(labels, subpixel=subpixel)
    kw = {"thing_ids": [1], "stuff_area": 0, "top_k": None, "nms_kernel": 7, "num_threads": threads}
    fast = pdl_post.postprocess(sem, ctr, off, backend="cpu", **kw)
    ref = pdl_post.postprocess(sem, ctr, off, backend="reference", **kw)
    assert_results_equal(fast, ref)
    # also with the default top_k (200 > 125 nuclei), noisy offsets and a foreground mask
    rng = np.random.default_rng(threads)
    noisy = (off + rng.normal(0, 2.0, off.shape)).astype(np.float32)
    kw.update(top_k=200, foreground_mask=labels > 0)
    assert_results_equal(
        pdl_post.postprocess(sem, ctr, noisy, backend="cpu", **kw),
        pdl_post.postprocess(sem, ctr, noisy, backend="reference", **kw),
    )


def test_batch_of_real_maps(labels):
    """The map and its transpose as a batch: each image recovered exactly, batched == single."""
    maps = [labels, np.ascontiguousarray(labels.T)]
    targets = [make_targets(m) for m in maps]
    sem = np.stack([t[0] for t in targets])
    ctr = np.stack([t[1] for t in targets])
    off = np.stack([t[2] for t in targets])
    pan = pdl_post.merge(sem, ctr, off, thing_ids=[1], stuff_area=0, top_k=None, nms_kernel=7)
    for i, m in enumerate(maps):
        assert_bijection(m, pan[i])
