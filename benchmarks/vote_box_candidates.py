"""Work count of the CUDA vote's warp box (set_cuda_vote_box in cpp/cuda/fusion.cu), without a GPU.

With at most kBruteForceCentersMax (256) centres per image, the default vote compares every centre
for each voting pixel: K distances, and a warp of 32 consecutive pixels runs K iterations when
any of its lanes votes. The candidate ``set_cuda_vote_box`` first takes the box of the warp's
votes (two warp reductions) and a lower and an upper bound of each centre's distance to it,
rounded as the distance is, then compares only the centres whose lower bound is at most the
smallest upper bound: the CPU vote cells' rule (offset_voting.h). This counts those candidates
per warp with votes on gpu_bench.py's scene (1024x2048, 40 centres requested, Cityscapes'
settings; warps of 32 consecutive pixels as the kernel walks them) and noisier variants, and
checks for every voting pixel that its brute-force centre (ties to the lower index) is among its
warp's candidates. A count, not a timing: the GPU timings come from benchmarks/gpu_bench.py.

    .venv/bin/python benchmarks/vote_box_candidates.py
"""

from __future__ import annotations

import argparse

import numpy as np

import pdl_post
from pdl_post import synthetic

WARP = 32


def _gap_min(c, lo, hi):
    """offset_voting.h's axis_gap_min in float32: [warps, K]."""
    return np.where(c < lo, lo - c, np.where(c > hi, c - hi, np.float32(0)))


def _gap_max(c, lo, hi):
    return np.maximum(np.abs(c - lo), np.abs(c - hi))


def _squared(dy, dx):
    return (dy * dy).astype(np.float32) + (dx * dx).astype(np.float32)


def count(height: int, width: int, centers: int, *, offset_noise: float = 0.0, seed: int = 0):
    """Candidates per warp with votes for one scene; the brute force's centre of every voting
    pixel is checked to be among its warp's candidates. Returns a row of the table."""
    kw = pdl_post.presets.CITYSCAPES.kwargs()
    s = synthetic.make_scene(height, width, centers, seed=seed)
    off = s.off
    if offset_noise:
        rng = np.random.default_rng(seed)
        off = (off + rng.normal(0, offset_noise, off.shape)).astype(np.float32)
    found, _ = pdl_post.find_centers(
        s.ctr, threshold=kw["threshold"], nms_kernel=kw["nms_kernel"], top_k=kw["top_k"]
    )
    cy = found[:, 0].astype(np.float32)[None, :]
    cx = found[:, 1].astype(np.float32)[None, :]
    k = cy.shape[1]
    yy, xx = np.mgrid[0:height, 0:width]
    qy = (yy.astype(np.float32) + off[0].astype(np.float32)).reshape(-1)
    qx = (xx.astype(np.float32) + off[1].astype(np.float32)).reshape(-1)
    voting = np.isin(s.sem, kw["thing_ids"]).reshape(-1) & np.isfinite(qy) & np.isfinite(qx)
    pad = -len(voting) % WARP
    voting = np.pad(voting, (0, pad)).reshape(-1, WARP)
    qy = np.pad(qy, (0, pad)).reshape(-1, WARP)
    qx = np.pad(qx, (0, pad)).reshape(-1, WARP)
    with_votes = voting.any(axis=1)
    v, qy, qx = voting[with_votes], qy[with_votes], qx[with_votes]
    inf = np.float32(np.inf)
    y_lo = np.where(v, qy, inf).min(axis=1)[:, None]
    y_hi = np.where(v, qy, -inf).max(axis=1)[:, None]
    x_lo = np.where(v, qx, inf).min(axis=1)[:, None]
    x_hi = np.where(v, qx, -inf).max(axis=1)[:, None]
    upper = _squared(_gap_max(cy, y_lo, y_hi), _gap_max(cx, x_lo, x_hi))
    lower = _squared(_gap_min(cy, y_lo, y_hi), _gap_min(cx, x_lo, x_hi))
    candidate = ~(lower > upper.min(axis=1, keepdims=True))  # [warps, K]
    per_warp = candidate.sum(axis=1)
    # Every voting pixel's brute-force centre (float32 distances, first minimum) is a candidate.
    distance = _squared(cy[:, :, None] - qy[:, None, :], cx[:, :, None] - qx[:, None, :])
    nearest = distance.argmin(axis=1)  # [warps, 32]: ties to the lower index, as the kernel
    kept = np.take_along_axis(candidate, nearest, axis=1)
    missed = int((v & ~kept).sum())
    return {
        "noise": offset_noise,
        "centres": k,
        "warps": len(with_votes),
        "voting warps": float(with_votes.mean()),
        "mean": float(per_warp.mean()),
        "p90": float(np.percentile(per_warp, 90)),
        "max": int(per_warp.max()),
        "missed": missed,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--centers", type=int, nargs="+", default=[40])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 4.0, 16.0])
    args = parser.parse_args(argv)
    print(f"scenes {args.height}x{args.width}, seed 0")
    print(
        "| centres requested | offset noise (std, px) | K | warps with votes | candidates per "
        "such warp: mean | p90 | max | pixels whose centre is not a candidate |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for centers in args.centers:
        for noise in args.noise:
            r = count(args.height, args.width, centers, offset_noise=noise)
            print(
                f"| {centers} | {noise:g} | {r['centres']} | {r['voting warps']:.0%} | "
                f"{r['mean']:.2f} | {r['p90']:g} | {r['max']} | {r['missed']} |"
            )


if __name__ == "__main__":
    main()
