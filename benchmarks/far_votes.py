"""Votes far outside the image on the CPU: ``merge`` when offsets send votes outside the vote grid.

A scene of thing pixels with a uniform random heatmap (``top_k=None``: 42,871 centres at
1024x2048) and offsets drawn from N(0, std^2) per pixel: std 0 keeps every vote inside the grid
(the image plus one cell, 4 px here), larger spreads send a growing share outside it, where a
vote searches the grid's quadtree (``offset_voting.h``, ``nearest_center_far``; before it, every
centre), and with fewer centres (top_k), where comparing every centre is faster and still
taken. Prints markdown tables; the label names the build in their header, so that runs from
two environments (one build each) compare::

    .venv/bin/python benchmarks/far_votes.py after
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

import pdl_post
from vote_grid_reads import make_vote_grid

STDS = (0.0, 30.0, 300.0, 3000.0)


def measure(
    height: int, width: int, stds=STDS, threads=(1, 2), rounds: int = 3, top_k=None
) -> list[dict]:
    """One row per (std, thread count): the share of votes outside the grid and merge's time.

    `rounds` calls, median; fewer once they add up to 10 s (the brute-force build takes minutes).
    """
    rng = np.random.default_rng(0)
    sem = np.full((height, width), 11, np.int32)
    ctr = rng.random((1, height, width), dtype=np.float32)
    centres = len(pdl_post.find_centers(ctr, top_k=top_k)[0])
    shift, origin, rows, cols = make_vote_grid(height, width, centres)
    ys, xs = np.indices((height, width), dtype=np.float32)
    rows_out = []
    for std in stds:
        off = rng.normal(0, std, (2, height, width)).astype(np.float32)
        qy, qx = ys + off[0], xs + off[1]  # float32, as the library's votes
        outside = (qy < origin) | (qy >= origin + (rows << shift))
        outside |= (qx < origin) | (qx >= origin + (cols << shift))
        for n in threads:
            times = []
            while len(times) < rounds and sum(times) < 10:
                start = time.perf_counter()
                out = pdl_post.merge(
                    sem, ctr, off, top_k=top_k, label_divisor=1 << 22, num_threads=n
                )
                times.append(time.perf_counter() - start)
            rows_out.append(
                {
                    "std": std,
                    "centres": centres,
                    "outside": float(outside.mean()),
                    "threads": n,
                    "seconds": statistics.median(times),
                    "runs": len(times),
                    "ids": int(np.unique(out).size),
                }
            )
    return rows_out


def main(label: str) -> None:
    print(f"# {label}: pdl_post {pdl_post.__version__} from {pdl_post.__file__}")
    rows = measure(1024, 2048)
    print(f"# 1024x2048, top_k=None: {rows[0]['centres']:,} centres")
    print("| offset std (px) | votes outside the grid | threads | merge, median (s) | runs | ids |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['std']:g} | {100 * r['outside']:.1f} % | {r['threads']} | {r['seconds']:.3f}"
            f" | {r['runs']} | {r['ids']} |"
        )
    # Fewer centres (top_k), one thread: where comparing every centre beats the quadtree.
    print("# 1024x2048, top_k set, 1 thread")
    print("| centres | offset std (px) | votes outside the grid | merge, median (ms) | runs |")
    print("|---:|---:|---:|---:|---:|")
    for top_k in (10, 200, 512, 1024, 4096):
        for r in measure(1024, 2048, stds=(300.0, 3000.0), threads=(1,), rounds=5, top_k=top_k):
            print(
                f"| {r['centres']} | {r['std']:g} | {100 * r['outside']:.1f} % |"
                f" {1e3 * r['seconds']:.1f} | {r['runs']} |"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "this build")
