"""What IEEE float modes on every thread cost: ``merge`` / ``postprocess`` timings in the default
modes and with the caller flushing subnormals.

The library sets round to nearest, subnormals kept and exceptions masked on each thread while it
computes and puts the caller's modes back after (``cpp/include/pdl_post/float_mode.h``): one read
per parallel region and thread, two writes where the modes differ. "flush" sets the caller's
MXCSR flush-to-zero and denormals-are-zero bits (x86-64; builds with the hook only), so that every
guard writes; the answers must equal the default modes'. Prints a markdown table; the label names
the build in its header, so that runs from two environments (one build each) compare::

    .venv/bin/python benchmarks/float_modes.py after [--threads 2] [--calls 40]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np

import pdl_post
from pdl_post import _core, synthetic

MXCSR_FLUSH = 0x8040  # FTZ (bit 15) and DAZ (bit 6)


def _modes() -> list[str]:
    can_flush = hasattr(_core, "_get_float_modes") and platform.machine() in ("x86_64", "AMD64")
    return ["default", "flush"] if can_flush else ["default"]


def _median_ms(call, calls: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(height=1024, width=2048, threads=(1, 2), calls=30, small_calls=3000) -> list[dict]:
    """One row per (mode, case, thread count): median milliseconds of `calls` calls."""
    labels = synthetic.make_scene(height, width, 40, seed=0)
    logits = synthetic.make_scene(height, width, 40, seed=0, logits=True)
    small = synthetic.make_scene(64, 64, 3, seed=0)
    cases = {
        f"merge {height}x{width} labels": (pdl_post.merge, labels, calls),
        f"postprocess {height}x{width} logits": (pdl_post.postprocess, logits, max(1, calls // 3)),
        "merge 64x64": (pdl_post.merge, small, small_calls),
    }
    rows, answers = [], {}
    for mode in _modes():
        found = _core._get_float_modes() if mode == "flush" else None
        if mode == "flush":
            _core._set_float_modes(found | MXCSR_FLUSH)
        try:
            for name, (function, scene, n) in cases.items():
                for t in threads:

                    def call(function=function, scene=scene, t=t):
                        return function(scene.sem, scene.ctr, scene.off, num_threads=t)

                    out = call()
                    panoptic = out if isinstance(out, np.ndarray) else out.panoptic
                    if (name, t) in answers:
                        assert np.array_equal(panoptic, answers[name, t]), (mode, name, t)
                    answers[name, t] = panoptic
                    rows.append(
                        {"mode": mode, "case": name, "threads": t, "ms": _median_ms(call, n)}
                    )
        finally:
            if found is not None:
                _core._set_float_modes(found)
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label", nargs="?", default="this build", help="the build's name")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calls", type=int, default=30, help="calls per 1024x2048 merge row")
    args = parser.parse_args(argv[1:])
    label = args.label
    rows = measure(threads=tuple(args.threads), calls=args.calls)
    print(f"| case | threads | mode | {label} (ms) |")
    print("|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['threads']} | {r['mode']} | {r['ms']:.3f} |")


if __name__ == "__main__":
    main(sys.argv)
