"""Demo: merge a synthetic scene, write colourised PNGs, compare with the dense PyTorch baseline.

Run ``python -m pdl_post.demo --out DIR`` (what ``make demo`` runs)::

    python -m pdl_post.demo --out demo-out [--height 1024] [--width 2048] [--centers 40]
                            [--seed 0] [--threads N] [--repeats 7] [--no-torch]

It builds a seeded synthetic Cityscapes-like scene (:mod:`pdl_post.synthetic`), runs
:func:`pdl_post.merge` (median latency of several runs after one warm-up), runs the dense
PyTorch implementation once (when torch is importable), prints both latencies and the speed-up
(measured in the same process, on the same threads), the number of segments, and PQ against the
generator's ground truth when :mod:`pdl_post.eval` exists. It writes

- ``DIR/panoptic.png``: the colourised panoptic map (stuff by class, things jittered per instance);
- ``DIR/centers.png``: the panoptic map blended over the centre heatmap, with the centres marked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "run_demo"]


def _timed(fn: Any, repeats: int) -> tuple[Any, list[float]]:
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.2f} ms"


def _segments(pdl_post: Any, scene: Any, params: dict, threads: int | None) -> tuple[Any, Any]:
    """(centres [K, 2], segments list or None) from ``postprocess`` or ``find_centers``."""
    if hasattr(pdl_post, "postprocess"):
        res = pdl_post.postprocess(scene.sem, scene.ctr, scene.off, **params, num_threads=threads)
        return np.asarray(res.centers), list(res.segments)
    from pdl_post import reference

    centers, _ = reference.find_centers(
        scene.ctr[0],
        threshold=params["threshold"],
        nms_kernel=params["nms_kernel"],
        top_k=params["top_k"],
    )
    return centers, None


def _pq(scene: Any, panoptic: np.ndarray, params: dict) -> str:
    """PQ of ``panoptic`` against the scene's ground truth, or why it is not computed."""
    try:
        from pdl_post import eval as pdl_eval
    except ImportError:
        return "PQ: skipped (pdl_post.eval is not available)"
    if not hasattr(pdl_eval, "PanopticEvaluator"):
        return "PQ: skipped (pdl_post.eval has no PanopticEvaluator)"
    thing = set(params["thing_ids"])
    categories = [{"id": c, "isthing": c in thing} for c in range(scene.num_classes)]
    ev = pdl_eval.PanopticEvaluator(
        categories, label_divisor=params["label_divisor"], void_label=params["void_label"]
    )
    ev.update(panoptic, scene.panoptic_gt)
    res = ev.compute()
    allres = res.get("All", res) if isinstance(res, dict) else res
    try:
        return (
            f"PQ vs ground truth: {100 * allres['pq']:.1f} "
            f"(SQ {100 * allres['sq']:.1f}, RQ {100 * allres['rq']:.1f})"
        )
    except (KeyError, TypeError):
        return f"PQ vs ground truth: {res}"


def run_demo(
    out: str | os.PathLike,
    *,
    height: int = 1024,
    width: int = 2048,
    centers: int = 40,
    seed: int = 0,
    threads: int | None = None,
    repeats: int = 7,
    torch_baseline: bool = True,
    backend: str = "auto",
) -> dict[str, Any]:
    """Run the demo, print its report, write the PNGs.

    Parameters
    ----------
    out : path
        Output directory (created).
    height, width : int, keyword-only
        Scene size.
    centers : int, keyword-only
        Instances drawn by the generator (a few may end up fully occluded).
    seed : int, keyword-only
        Generator seed.
    threads : int or None, keyword-only
        ``num_threads`` of ``merge`` and ``torch.set_num_threads`` for the baseline; None: all cores.
    repeats : int, keyword-only
        Timed runs of ``merge`` (after one warm-up); the median is reported.
    torch_baseline : bool, keyword-only
        Run the dense PyTorch implementation once for comparison.
    backend : str, keyword-only
        ``backend`` of ``merge``.

    Returns
    -------
    dict
        ``panoptic`` [H, W], ``merge_s`` (median seconds), ``dense_s`` (seconds or None),
        ``segments`` (count), ``paths`` (written files).
    """
    import pdl_post
    from pdl_post import viz
    from pdl_post.synthetic import make_scene

    if not hasattr(pdl_post, "merge"):
        raise SystemExit("pdl_post.merge is not available: build the package first (make build)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_threads = threads if threads is not None else (os.cpu_count() or 1)

    t0 = time.perf_counter()
    scene = make_scene(height, width, centers, seed=seed)
    gen_s = time.perf_counter() - t0
    params = {
        "thing_ids": tuple(scene.thing_ids),
        "label_divisor": scene.label_divisor,
        "stuff_area": 2048,
        "void_label": -1,
        "threshold": 0.1,
        "nms_kernel": 7,
        "top_k": 200,
    }
    print(
        f"pdl_post demo: synthetic {height}x{width} scene, {centers} instances drawn "
        f"(seed {seed}, generated in {gen_s:.2f} s), {n_threads} threads"
    )

    def run_merge() -> np.ndarray:
        return pdl_post.merge(
            scene.sem, scene.ctr, scene.off, **params, num_threads=threads, backend=backend
        )

    run_merge()  # warm-up
    panoptic, times = _timed(run_merge, max(1, repeats))
    panoptic = np.asarray(panoptic)
    merge_s = statistics.median(times)
    print(f"  pdl_post.merge:      {_fmt_ms(merge_s):>12}  (median of {len(times)} runs)")

    dense_s = None
    if not torch_baseline:
        print("  dense PyTorch:       skipped (--no-torch)")
    else:
        try:
            import torch

            from pdl_post.baselines.dense_torch import panoptic_dense_torch
        except ImportError as exc:
            print(f"  dense PyTorch:       skipped (torch is not importable: {exc})")
        else:
            torch.set_num_threads(n_threads)
            # Warm-up on a small crop: torch's lazy initialisation is not the algorithm's cost.
            crop = (slice(0, min(height, 64)), slice(0, min(width, 64)))
            panoptic_dense_torch(
                torch.from_numpy(np.ascontiguousarray(scene.sem[crop])),
                torch.from_numpy(np.ascontiguousarray(scene.ctr[(slice(None), *crop)])),
                torch.from_numpy(np.ascontiguousarray(scene.off[(slice(None), *crop)])),
                **params,
            )
            args = (torch.from_numpy(scene.sem), torch.from_numpy(scene.ctr))
            t0 = time.perf_counter()
            dense_pan, _ = panoptic_dense_torch(*args, torch.from_numpy(scene.off), **params)
            dense_s = time.perf_counter() - t0
            same = np.array_equal(dense_pan.numpy(), panoptic)
            print(
                f"  dense PyTorch:       {_fmt_ms(dense_s):>12}  (1 run after a warm-up on a crop, "
                f"{torch.get_num_threads()} threads; same output: {'yes' if same else 'no'})"
            )
            print(f"  speed-up:            {dense_s / merge_s:>10,.0f}x")

    kept_centers, segments = _segments(pdl_post, scene, params, threads)
    ids = np.unique(panoptic)
    ids = ids[ids != params["void_label"]]
    n_things = int(np.count_nonzero(ids % params["label_divisor"] != 0))
    n_segments = len(segments) if segments is not None else int(ids.size)
    print(
        f"  segments:            {n_segments} ({n_things} things, {n_segments - n_things} stuff); "
        f"centres kept: {len(kept_centers)}; ground-truth instances: {len(scene.centers_gt)}"
    )
    print("  " + _pq(scene, panoptic, params))

    rgb = viz.colorize(panoptic, label_divisor=params["label_divisor"], seed=seed)
    pan_path = out_dir / "panoptic.png"
    viz.write_png(pan_path, rgb)
    heat = np.clip(np.asarray(scene.ctr[0], dtype=np.float32), 0.0, 1.0)
    over = viz.overlay(
        heat,
        panoptic,
        alpha=0.55,
        label_divisor=params["label_divisor"],
        seed=seed,
        boundary_color=None,  # the semantic noise would turn into a speckle of boundaries
    )
    radius = max(2, min(height, width) // 200)
    over = viz.draw_centers(over, kept_centers, radius=radius)
    ctr_path = out_dir / "centers.png"
    viz.write_png(ctr_path, over)
    print(f"  wrote {pan_path} and {ctr_path}")
    return {
        "panoptic": panoptic,
        "merge_s": merge_s,
        "dense_s": dense_s,
        "segments": n_segments,
        "paths": [pan_path, ctr_path],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pdl_post.demo",
        description="Merge a synthetic scene, write colourised PNGs, compare with dense PyTorch.",
    )
    ap.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--centers", type=int, default=40, help="instances drawn (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--repeats", type=int, default=7, help="timed merge runs (default 7)")
    ap.add_argument("--no-torch", action="store_true", help="skip the dense PyTorch baseline")
    ap.add_argument("--backend", default="auto", help="merge backend (default auto)")
    args = ap.parse_args(argv)
    for name in ("height", "width", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.centers < 0:
        ap.error(f"--centers must be >= 0, got {args.centers}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    run_demo(
        args.out,
        height=args.height,
        width=args.width,
        centers=args.centers,
        seed=args.seed,
        threads=args.threads,
        repeats=args.repeats,
        torch_baseline=not args.no_torch,
        backend=args.backend,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
