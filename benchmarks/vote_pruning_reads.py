"""Work count of the CUDA vote's warp-pruned nearest-centre search, without a GPU.

With at most kBruteForceCentersMax (256) centres per image, vote_kernel (cpp/cuda/fusion.cu)
compares every voting pixel with every centre: a warp of 32 consecutive pixels holding a voting
lane runs K distance steps. The warp-pruned search (``nearest_pruned``, VoteSearch::kWarpPruned,
off by default until a GPU times it) first bounds each centre's distance from below by its
distance to the box of the warp's votes; the centre with the smallest bound gives every lane an
upper bound of its nearest distance, the warp's largest of these is the cut, and only the centres
whose bound does not exceed the cut are read. Its fixed cost per warp: 2 x ceil(K / 32) bound
steps per lane (the nearest bound, then the candidates' ballots) and 15 shuffle rounds.

This model replays both searches on the scenes of benchmarks/gpu_bench.py (1024x2048, 40 centres
requested, batch 1 and the batch; the same synthetic seeds, thing pixels as ``sem in thing_ids``)
in float32, checks on every voting pixel that the pruned search finds brute force's centre (ties to
the lower index), and counts per warp with a voting lane: distance steps of brute force (K) and of
the pruned search (its candidates), and the distribution of the candidates. With
``--model-images N`` also on the shipped model's predictions of N validation images
(models/panoptic_deeplab, weights/synthetic_tiny.pt, 128x128: votes as a trained network spreads
them, not as the generator draws them).

A count, not a timing: which search is faster is for benchmarks/gpu_bench.py on a GPU to say.

    .venv/bin/python benchmarks/vote_pruning_reads.py --model-images 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numba
import numpy as np

import pdl_post
from gpu_bench import add_scene_arguments
from pdl_post import synthetic
from vote_grid_reads import _distance, _gap  # center_distance, VoteGrid::interval_gap in float32

WARP = 32
SHUFFLE_ROUNDS = 15  # three warp reductions (the box, the nearest bound, the cut), 5 rounds each


@numba.njit(cache=False)
def _warps(cy, cx, qy, qx, voting, candidates, mismatches):
    """For each warp (32 consecutive pixels) with a voting lane: candidates[w] = centres the
    pruned search reads (-1 for a warp without voters); mismatches[0] += lanes whose pruned
    answer differs from brute force's."""
    k = cy.shape[0]
    inf = np.float32(np.inf)
    for w in range(candidates.shape[0]):
        lo_y, hi_y, lo_x, hi_x = inf, -inf, inf, -inf
        any_vote = False
        for lane in range(WARP):
            p = w * WARP + lane
            if p < voting.shape[0] and voting[p]:
                any_vote = True
                lo_y, hi_y = min(lo_y, qy[p]), max(hi_y, qy[p])
                lo_x, hi_x = min(lo_x, qx[p]), max(hi_x, qx[p])
        if not any_vote:
            candidates[w] = -1
            continue
        bounds = np.empty(k, np.float32)
        nearest, nearest_bound = 0, inf
        for c in range(k):
            gy, gx = _gap(lo_y, hi_y, cy[c]), _gap(lo_x, hi_x, cx[c])
            bounds[c] = np.float32(np.float32(gy * gy) + np.float32(gx * gx))
            if bounds[c] < nearest_bound:
                nearest, nearest_bound = c, bounds[c]
        cut = -inf
        for lane in range(WARP):
            p = w * WARP + lane
            if p < voting.shape[0] and voting[p]:
                cut = max(cut, _distance(cy[nearest], cx[nearest], qy[p], qx[p]))
        read = 0
        for c in range(k):
            if not bounds[c] > cut:
                read += 1
        candidates[w] = read
        for lane in range(WARP):
            p = w * WARP + lane
            if not (p < voting.shape[0] and voting[p]):
                continue
            brute, brute_d = 0, inf
            pruned, pruned_d = 0, inf
            for c in range(k):
                d = _distance(cy[c], cx[c], qy[p], qx[p])
                if d < brute_d:
                    brute, brute_d = c, d
                if not bounds[c] > cut and d < pruned_d:
                    pruned, pruned_d = c, d
            if pruned != brute:
                mismatches[0] += 1


def count_image(sem, ctr, off, kw) -> tuple[int, np.ndarray, int]:
    """(K, candidates per warp with a voting lane, lanes where the searches disagree)."""
    centers = np.asarray(pdl_post.postprocess(sem, ctr, off, **kw).centers, np.int64).reshape(-1, 2)
    cy, cx = centers[:, 0].astype(np.float32), centers[:, 1].astype(np.float32)
    h, w = sem.shape
    ys, xs = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    qy = (ys + off[0].astype(np.float32)).ravel()
    qx = (xs + off[1].astype(np.float32)).ravel()
    voting = np.isin(sem, list(kw["thing_ids"])).ravel() & np.isfinite(qy) & np.isfinite(qx)
    voting &= len(cy) > 0
    candidates = np.empty(-(-h * w // WARP), np.int64)
    mismatches = np.zeros(1, np.int64)
    if len(cy):
        _warps(cy, cx, qy, qx, voting, candidates, mismatches)
    else:
        candidates[:] = -1
    return len(cy), candidates[candidates >= 0], int(mismatches[0])


def model_images(count: int):
    """(sem, ctr, off, merge options) of the shipped model's predictions of ``count``
    validation images."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's models/
    from models.panoptic_deeplab.data import build_dataset
    from models.panoptic_deeplab.predict import Predictor
    from models.panoptic_deeplab.train import load_model

    weights = Path(__file__).resolve().parents[1] / "models/panoptic_deeplab/weights"
    model, cfg = load_model(weights / "synthetic_tiny.pt", device="cpu")
    val = build_dataset(cfg, "val")
    post = cfg["post"]
    options = ("label_divisor", "stuff_area", "void_label", "threshold", "nms_kernel", "top_k")
    kw = {"thing_ids": tuple(val.thing_ids), **{k: post[k] for k in options}}
    predict = Predictor(model, cfg, thing_ids=kw["thing_ids"])
    with torch.no_grad():
        for i in range(count):
            out = predict(val[i]["image"])
            yield out["semantic"][0].astype(np.int32), out["center"][0], out["offset"][0], kw


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scene_arguments(parser)
    parser.add_argument(
        "--model-images", type=int, default=0, help="also the shipped model's predictions"
    )
    args = parser.parse_args(argv)
    kw = pdl_post.presets.CITYSCAPES.kwargs()
    h, w, n, b = args.height, args.width, args.centers, args.batch
    scene = synthetic.make_scene(h, w, n, seed=0)
    batch = synthetic.make_batch(b, h, w, n, seed=0)
    cases = {"batch 1": [(scene.sem, scene.ctr, scene.off, kw)]}
    cases[f"batch {b}"] = [(batch.sem[i], batch.ctr[i], batch.off[i], kw) for i in range(b)]
    if args.model_images:
        cases[f"shipped model, {args.model_images} images"] = list(model_images(args.model_images))
    print(f"synthetic {h}x{w}, {n} centres requested (benchmarks/gpu_bench.py's scenes)\n")
    print(
        "| case | K | warps with a voter | brute force distances / warp | pruned: candidates / "
        "warp (mean) | median | 90th pct | max | bound steps / lane | pruned == brute force |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    disagreements = 0
    for label, images in cases.items():
        counted = [count_image(*image) for image in images]
        ks = np.array([k for k, _, _ in counted])
        reads = np.concatenate([c for _, c, _ in counted])
        brute = np.concatenate([np.full(len(c), k) for k, c, _ in counted])
        bound_steps = np.concatenate([np.full(len(c), 2 * -(-k // WARP)) for k, c, _ in counted])
        wrong = sum(m for _, _, m in counted)
        disagreements += wrong
        k_text = str(ks[0]) if len(set(ks)) == 1 else f"{ks.min()}-{ks.max()}"
        print(
            f"| {label} | {k_text} | {len(reads)} | {brute.mean():.1f} | {reads.mean():.2f} | "
            f"{np.median(reads):.0f} | {np.percentile(reads, 90):.0f} | {reads.max()} | "
            f"{bound_steps.mean():.1f} + {SHUFFLE_ROUNDS} shuffle rounds | "
            f"{'yes' if wrong == 0 else f'NO ({wrong} lanes)'} |"
        )
    return 1 if disagreements else 0


if __name__ == "__main__":
    raise SystemExit(main())
