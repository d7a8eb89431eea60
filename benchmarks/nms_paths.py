"""The CPU's two NMS paths (cpp/src/center_nms_cpu.cpp) on the benchmark scenes, in one run.

``auto`` is the library as shipped: sparse heatmaps test each candidate's window, dense ones (or
a sparse pass over its read budget) run the separable max filter. ``filter`` forces the filter
on every heatmap, which is what the library did before the sparse path. Both are timed
interleaved, round by round, for ``find_centers`` and the whole ``merge``, beside the copy floor
of ``merge`` (bench_common.CopyFloor: sem, ctr, off read, int32 written), and every output of the
two is compared first.

    .venv/bin/python benchmarks/nms_paths.py [--threads 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pdl_post
from bench_common import CopyFloor, cpu_model
from pdl_post import _core, synthetic

# (label, height, width, instances drawn, top_k, nms_kernel)
SCENES = [
    ("Cityscapes defaults", 1024, 2048, 10, 200, 7),
    ("Cityscapes defaults", 1024, 2048, 40, 200, 7),
    ("Cityscapes defaults", 1024, 2048, 200, 200, 7),
    ("top_k None", 1024, 2048, 2200, None, 7),
    ("COCO window 41", 1024, 2048, 40, 200, 41),
    ("COCO window 41", 1024, 2048, 200, 200, 41),
]


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="num_threads (default 2)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    args = parser.parse_args(argv)
    strategies = _core._NmsStrategy
    print(f"machine: {cpu_model()}; threads {args.threads}; {args.rounds} rounds, medians")
    print()
    print(
        "| scene | K | k | candidates | find_centers filter / auto ms | speed-up "
        "| merge filter / auto ms | floor ms | merge/floor filter / auto | auto path |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, h, w, n, top_k, kernel in SCENES:
        s = synthetic.make_scene(h, w, n, seed=0)
        kw = {"top_k": top_k, "nms_kernel": kernel, "num_threads": args.threads}
        floor = CopyFloor([s.sem, s.ctr[0], s.off], out_dtype=np.int32, threads=args.threads)
        outputs, times = {}, {}
        try:
            for strategy in (strategies.filter, strategies.auto):
                _core._set_nms_strategy(strategy)
                outputs[strategy.name] = (
                    pdl_post.find_centers(s.ctr, **kw),
                    pdl_post.merge(s.sem, s.ctr, s.off, **kw),
                )
            (centers, scores), panoptic = outputs["auto"]
            (centers_f, scores_f), panoptic_f = outputs["filter"]
            assert np.array_equal(centers, centers_f) and np.array_equal(scores, scores_f), label
            assert np.array_equal(panoptic, panoptic_f), label
            before = _core._nms_path_counts()
            pdl_post.find_centers(s.ctr, **kw)
            after = _core._nms_path_counts()
            path = [key for key in after if after[key] > before[key]]
            for _ in range(args.rounds):
                for strategy in (strategies.filter, strategies.auto):
                    _core._set_nms_strategy(strategy)
                    for name, call in (
                        ("find", partial(pdl_post.find_centers, s.ctr, **kw)),
                        ("merge", partial(pdl_post.merge, s.sem, s.ctr, s.off, **kw)),
                    ):
                        t = time.perf_counter()
                        call()
                        times.setdefault((name, strategy.name), []).append(time.perf_counter() - t)
                t = time.perf_counter()
                floor()
                times.setdefault(("floor", ""), []).append(time.perf_counter() - t)
        finally:
            _core._set_nms_strategy(strategies.auto)
            floor.close()
        ms = {key: _median_ms(v) for key, v in times.items()}
        fl = ms[("floor", "")]
        print(
            f"| {label} | {len(centers)} | {kernel} | {(s.ctr > 0.1).mean():.1%} "
            f"| {ms[('find', 'filter')]:.2f} / {ms[('find', 'auto')]:.2f} "
            f"| {ms[('find', 'filter')] / ms[('find', 'auto')]:.2f}x "
            f"| {ms[('merge', 'filter')]:.2f} / {ms[('merge', 'auto')]:.2f} | {fl:.2f} "
            f"| {ms[('merge', 'filter')] / fl:.2f}x / {ms[('merge', 'auto')] / fl:.2f}x "
            f"| {' + '.join(path)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
