"""Work count of the CUDA path's nearest-centre search (cpp/cuda/fusion.cu), without a GPU.

Up to kBruteForceCentersMax (256) centres per image, each voting pixel compares every centre (K
distances). Above it, the centres are bucketed into offset_voting.h's VoteGrid (make_vote_grid,
about two cells per centre, side at least 4) and a vote visits rings of cells outward from its own
until a ring's lower bound exceeds the best distance, nearest to its row and column first,
reading the centres of a cell only when the cell's own lower bound does not exceed the best
distance (cells visited vs cells read). This counts the distances computed per
voting pixel and per warp lane (a warp of 32 consecutive pixels waits for its slowest lane) for
both, on synthetic scenes with every peak kept (top_k=None) and on a heatmap flat above the
threshold (one centre per pixel), and checks on every counted pixel (a sample on the plateau)
that the ring search finds brute force's centre, ties to the lower index. A vote's search starts
at its cell's first ring that holds a centre (found once per cell by a binary search over a
summed-area table of occupied cells: about 4 x log2(rings) table reads, not counted here).

A count, not a timing: the GPU timings come from benchmarks/gpu_bench.py on a GPU.

    .venv/bin/python benchmarks/vote_grid_reads.py
"""

from __future__ import annotations

import math

import numba
import numpy as np

import pdl_post
from pdl_post import synthetic


def make_vote_grid(height: int, width: int, num_centers: int) -> tuple[int, int, int, int]:
    """(shift, origin, rows, cols) as offset_voting.h's make_vote_grid."""
    area = float(height) * float(width)
    target = math.sqrt(max(area / (2.0 * num_centers), area / float(1 << 26)))
    shift = 2
    while shift < 24 and float(1 << (shift + 1)) <= target:
        shift += 1
    side = 1 << shift
    rows = ((height + 2 * side - 1) >> shift) + 1
    cols = ((width + 2 * side - 1) >> shift) + 1
    return shift, -side, rows, cols


@numba.njit(cache=False)
def _distance(cy, cx, qy, qx):
    dy = np.float32(cy - qy)
    dx = np.float32(cx - qx)
    return np.float32(np.float32(dy * dy) + np.float32(dx * dx))


@numba.njit(cache=False)
def _brute_force(cy, cx, qy, qx):
    best, best_d = 0, _distance(cy[0], cx[0], qy, qx)
    for k in range(1, cy.shape[0]):
        d = _distance(cy[k], cx[k], qy, qx)
        if d < best_d:
            best, best_d = k, d
    return best


@numba.njit(cache=False)
def _ring_cells(ci, cj, r, out):
    """The cells of ring r around (ci, cj) in VoteGrid::for_each_ring_cell's order, t by t (cells
    t off the centre row / column); fills out[:, 0:2] and returns how many (before clipping)."""
    if r == 0:
        out[0, 0], out[0, 1] = ci, cj
        return 1
    n = 0
    for t in range(r + 1):
        for i, j, take in (
            (ci - r, cj - t, True),
            (ci + r, cj - t, True),
            (ci - r, cj + t, t > 0),
            (ci + r, cj + t, t > 0),
            (ci - t, cj - r, t < r),
            (ci - t, cj + r, t < r),
            (ci + t, cj - r, 0 < t < r),
            (ci + t, cj + r, 0 < t < r),
        ):
            if take:
                out[n, 0], out[n, 1] = i, j
                n += 1
    return n


@numba.njit(cache=False)
def _gap(lo, hi, q):
    """VoteGrid::interval_gap for a point (q_lo = q_hi = q), float32."""
    if lo > q:
        return np.float32(lo - q)
    if hi < q:
        return np.float32(q - hi)
    return np.float32(0.0)


@numba.njit(cache=False)
def _first_rings(grid, cell_start, ring):
    """Per cell, the first ring holding a centre (VoteGrid::first_occupied_ring, where a binary
    search over a summed-area table finds it; here by walking the rings)."""
    _, _, rows, cols = grid
    first = np.empty(rows * cols, np.int64)
    for ci in range(rows):
        for cj in range(cols):
            last_ring = max(ci, rows - 1 - ci, cj, cols - 1 - cj)
            r = 0
            while r <= last_ring:
                occupied = False
                for m in range(_ring_cells(ci, cj, r, ring)):
                    i, j = ring[m, 0], ring[m, 1]
                    if 0 <= i < rows and 0 <= j < cols:
                        occupied |= cell_start[i * cols + j + 1] > cell_start[i * cols + j]
                if occupied:
                    break
                r += 1
            first[ci * cols + cj] = r
    return first


@numba.njit(cache=False)
def _ring_search(grid, cell_start, first_ring, cell_centers, cy, cx, qy, qx, ring):
    """(nearest centre, distances computed, cells visited, cells read), as nearest_in_grid: a
    visited cell wholly farther than the best distance (VoteGrid::cell_lower_bound) is skipped
    before its slots are read."""
    shift, origin, rows, cols = grid
    side = 1 << shift
    lo = np.float32(origin)
    if not (
        qy >= lo
        and qx >= lo
        and qy < np.float32(origin + rows * side)
        and qx < np.float32(origin + cols * side)
    ):
        return _brute_force(cy, cx, qy, qx), cy.shape[0], 0, 0
    ci = (math.floor(qy) - origin) >> shift
    cj = (math.floor(qx) - origin) >> shift
    last_ring = max(ci, rows - 1 - ci, cj, cols - 1 - cj)
    best, best_d, count, visits, reads = -1, np.float32(0.0), 0, 0, 0
    for r in range(first_ring[ci * cols + cj], last_ring + 1):
        gap = np.float32((r - 1) * side)
        bound = np.float32(0.0) if r <= 1 else np.float32(gap * gap)
        if best >= 0 and bound > best_d:
            break
        for m in range(_ring_cells(ci, cj, r, ring)):
            i, j = ring[m, 0], ring[m, 1]
            if i < 0 or i >= rows or j < 0 or j >= cols:
                continue
            visits += 1
            if best >= 0:
                top = np.float32(origin + i * side)
                left = np.float32(origin + j * side)
                gy = _gap(top, np.float32(top + side - 1), qy)
                gx = _gap(left, np.float32(left + side - 1), qx)
                if np.float32(np.float32(gy * gy) + np.float32(gx * gx)) > best_d:
                    continue
            cell = i * cols + j
            reads += 1
            for s in range(cell_start[cell], cell_start[cell + 1]):
                k = cell_centers[s]
                d = _distance(cy[k], cx[k], qy, qx)
                count += 1
                if best < 0 or d < best_d or (d == best_d and k < best):
                    best, best_d = k, d
    return best, count, visits, reads


@numba.njit(cache=False)
def _count(grid, cell_start, first_ring, cell_centers, cy, cx, ys, xs, dys, dxs, check_every, ring):
    """Distances per voting pixel (brute force: K) and per warp (slowest lane), cells visited,
    and mismatches."""
    n = ys.shape[0]
    grid_total, lane_total, visit_total, read_total, mismatches, checked = 0, 0, 0, 0, 0, 0
    for w0 in range(0, n, 32):
        slowest = 0
        for p in range(w0, min(w0 + 32, n)):
            qy = np.float32(np.float32(ys[p]) + np.float32(dys[p]))
            qx = np.float32(np.float32(xs[p]) + np.float32(dxs[p]))
            best, count, visits, reads = _ring_search(
                grid, cell_start, first_ring, cell_centers, cy, cx, qy, qx, ring
            )
            grid_total += count
            visit_total += visits
            read_total += reads
            slowest = max(slowest, count)
            if p % check_every == 0:
                checked += 1
                mismatches += best != _brute_force(cy, cx, qy, qx)
        lane_total += slowest * min(32, n - w0)
    return grid_total, lane_total, visit_total, read_total, mismatches, checked


def count(name, sem, ctr, off, check_every=1, every_pixel=1):
    """One table row; every_pixel > 1 counts every that-many-th voting pixel only."""
    kw = pdl_post.presets.CITYSCAPES.kwargs()
    centers, _ = pdl_post.find_centers(
        ctr, threshold=kw["threshold"], nms_kernel=kw["nms_kernel"], top_k=None
    )
    h, w = sem.shape
    k = len(centers)
    grid = make_vote_grid(h, w, k)
    shift, origin, rows, cols = grid
    cy = centers[:, 0].astype(np.float32)
    cx = centers[:, 1].astype(np.float32)
    cells = ((centers[:, 0] - origin) >> shift) * cols + ((centers[:, 1] - origin) >> shift)
    order = np.argsort(cells, kind="stable")
    cell_start = np.searchsorted(cells[order], np.arange(rows * cols + 1)).astype(np.int64)
    thing = np.isin(sem, kw["thing_ids"])
    ys, xs = np.nonzero(thing)
    ys, xs = ys[::every_pixel], xs[::every_pixel]
    ring = np.empty((8 * (rows + cols + 2), 2), np.int64)  # a ring's cells, _ring_cells
    first_ring = _first_rings(grid, cell_start, ring)
    grid_total, lane_total, visit_total, read_total, mismatches, checked = _count(
        grid,
        cell_start,
        first_ring,
        order.astype(np.int32),
        cy,
        cx,
        ys.astype(np.int64),
        xs.astype(np.int64),
        off[0][ys, xs],
        off[1][ys, xs],
        check_every,
        ring,
    )
    n = len(ys)
    print(
        f"| {name} | {k} | {1 << shift} | {rows * cols} | {k:,} | {grid_total / n:.1f} | "
        f"{lane_total / n:.1f} | {visit_total / n:.1f} | {read_total / n:.1f} | "
        f"{checked:,}: {mismatches} |"
    )


def main() -> None:
    print(
        "| scene | K | cell side | cells | brute force per pixel | grid per pixel | "
        "grid per warp lane | cells visited per pixel | cells read per pixel | "
        "checked: mismatches |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for h, w, n in ((1024, 2048, 200), (1024, 2048, 2000), (2048, 4096, 3000)):
        s = synthetic.make_scene(h, w, n, seed=0)
        count(f"synthetic {h}x{w}, {n} requested", s.sem, s.ctr, s.off)
    for h, w, offset in ((1024, 2048, 0.0), (1024, 2048, 0.5)):
        sem = np.full((h, w), 11, np.int32)
        ctr = np.full((1, h, w), 0.5, np.float32)
        off = np.full((2, h, w), offset, np.float32)
        count(f"flat heatmap {h}x{w}, offsets {offset}", sem, ctr, off, check_every=20_011)
    # The search's worst layout: centres packed in one part of the image (the top quarter flat
    # above the threshold) and votes landing far from all of them (the bottom half, offsets 0):
    # few distances, but rings of empty cells out to the centres, which the search skips from
    # its cell's first ring holding a centre. Every 101st pixel counted (so its warp-lane column
    # groups pixels 101 apart), every 50th of those checked against brute force.
    h, w = 1024, 2048
    sem = np.full((h, w), 3, np.int32)
    sem[h // 2 :] = 11
    ctr = np.zeros((1, h, w), np.float32)
    ctr[0, : h // 4] = 0.5
    off = np.zeros((2, h, w), np.float32)
    count(
        f"top quarter flat {h}x{w}, votes in the bottom half",
        sem, ctr, off, check_every=50, every_pixel=101,
    )  # fmt: skip


if __name__ == "__main__":
    main()
