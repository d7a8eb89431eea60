"""Work count of the CUDA path's per-pixel NMS test (cpp/cuda/center_nms.cu), without a GPU.

The GPU tests each above-threshold pixel against its k x k window and stops at the first larger
value. This counts heatmap reads per pixel and per warp lane (a warp of 32 pixels of a row waits
for its slowest lane) for two scan orders on synthetic scenes:

- window: the window in row-major order (the kernel before the neighbours-first change);
- neighbours first: the 3x3 neighbours, then the window (the kernel now), for k > 3.

A count, not a timing: the GPU timings come from benchmarks/gpu_bench.py on a GPU.

    .venv/bin/python benchmarks/nms_window_reads.py
"""

from __future__ import annotations

import numba
import numpy as np

from pdl_post import synthetic


@numba.njit(cache=False)
def _lane_reads(ctr, threshold, radius, neighbours_first, y, x):
    """(reads, is a peak) of pixel (y, x), as the kernel's is_peak scans."""
    height, width = ctr.shape
    value = ctr[y, x]
    h = value if value > threshold else -1.0
    reads = 1
    if not h > 0:
        return reads, 0
    if neighbours_first and radius > 1:
        for yy in range(max(y - 1, 0), min(y + 1, height - 1) + 1):
            for xx in range(max(x - 1, 0), min(x + 1, width - 1) + 1):
                reads += 1
                v = ctr[yy, xx]
                if (v if v > threshold else -1.0) > h:
                    return reads, 0
    for yy in range(max(y - radius, 0), min(y + radius, height - 1) + 1):
        for xx in range(max(x - radius, 0), min(x + radius, width - 1) + 1):
            reads += 1
            v = ctr[yy, xx]
            if (v if v > threshold else -1.0) > h:
                return reads, 0
    return reads, 1


@numba.njit(cache=False)
def _reads(ctr, threshold, radius, neighbours_first):
    """(reads, warp steps, peaks) over the plane, warps of 32 pixels of a row."""
    height, width = ctr.shape
    reads = warp_steps = peaks = 0
    for y in range(height):
        for x0 in range(0, width, 32):
            slowest = 0
            for x in range(x0, min(x0 + 32, width)):
                n, peak = _lane_reads(ctr, threshold, radius, neighbours_first, y, x)
                reads += n
                peaks += peak
                slowest = max(slowest, n)
            warp_steps += slowest
    return reads, warp_steps, peaks


def main() -> None:
    height, width = 1024, 2048
    print(f"synthetic {height}x{width}, threshold 0.1; per pixel: window reads, warp-lane steps")
    print(
        "| centres | nms_kernel | reads (window) | reads (neighbours first) "
        "| lane steps (window) | lane steps (neighbours first) | peaks |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for centers in (40, 200):
        s = synthetic.make_scene(height, width, centers, seed=0)
        ctr = np.ascontiguousarray(s.ctr.reshape(s.ctr.shape[-2:]))
        for kernel in (7, 41):
            before = _reads(ctr, 0.1, kernel // 2, False)
            after = _reads(ctr, 0.1, kernel // 2, True)
            assert before[2] == after[2], "both orders must find the same peaks"
            per = [v / ctr.size for v in (before[0], after[0])]
            lanes = [v * 32 / ctr.size for v in (before[1], after[1])]
            print(
                f"| {centers} | {kernel} | {per[0]:.2f} | {per[1]:.2f} | {lanes[0]:.2f} "
                f"| {lanes[1]:.2f} | {after[2]} |"
            )


if __name__ == "__main__":
    main()
