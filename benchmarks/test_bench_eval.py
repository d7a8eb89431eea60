"""Evaluation benchmarks (issue 3), as ratios in one run on one machine.

- PQ from COCO-panoptic PNG + JSON, 30 pairs of 512x1024 (group ``pq``): ``pdl_post.eval.pq_compute``
  vs cityscapesScripts' single-process ``pq_compute`` (JSON loading, matching,
  ``pq_compute_single_core`` and ``average_pq``: its ``evaluatePanoptic`` without the process pool
  and the prints) vs ``hotcoco.panoptic.pq_compute`` with one thread (``RAYON_NUM_THREADS=1``,
  set before hotcoco loads). Targets: >= 10x cityscapesScripts, >= 1x hotcoco.
- ``PanopticEvaluator.update`` on one 1024x2048 pair in memory (group ``update``), beside the
  memory floor (one ``numpy.copyto`` of both maps). Target: <= 5 ms.

Data: ``pdl_post.synthetic.make_scene`` scenes (40 centres, seeds 0..29); GT = the scene's clean
panoptic map, prediction = ``pdl_post.merge`` of its noisy network outputs; both converted to
COCO panoptic with Cityscapes label ids (``pdl_post.io.to_coco_panoptic``) and written with Pillow
as cityscapesScripts' own conversion writes them. Every run checks the three give the same PQ.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_eval.py --benchmark-group-by=group``
(add ``--bench-quick`` / ``PDL_BENCH_QUICK=1`` for a smoke run on tiny scenes). Needs Pillow, and
``cityscapesscripts`` (``--no-deps`` plus ``pyquaternion``) and ``hotcoco`` for the baselines
(skipped when missing).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # hotcoco's thread pool: one thread
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no spinning BLAS threads beside the timings

import numpy as np
import pytest

from pdl_post.eval import PanopticEvaluator, pq_compute
from pdl_post.io import CITYSCAPES_TRAIN_TO_LABEL, cityscapes_categories, id2rgb, to_coco_panoptic


def _quick(config) -> bool:
    opt = config.getoption("bench_quick", default=None)
    if opt is not None:
        return bool(opt)
    return os.environ.get("PDL_BENCH_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def _write_pair_set(root, n, h, w, *, semantic_noise=0.01):
    from PIL import Image

    import pdl_post
    from pdl_post.synthetic import make_scene

    gt_dir, pred_dir = os.path.join(root, "gt"), os.path.join(root, "pred")
    os.makedirs(gt_dir)
    os.makedirs(pred_dir)
    gt_anns, pred_anns = [], []
    things = range(11, 19)
    for k in range(n):
        scene = make_scene(h, w, 40, seed=k, semantic_noise=semantic_noise)
        pred = np.asarray(pdl_post.merge(scene.sem, scene.ctr, scene.off))
        name = f"frankfurt_{k:06d}_000019"
        ids, ann = to_coco_panoptic(
            scene.panoptic_gt,
            category_map=CITYSCAPES_TRAIN_TO_LABEL,
            thing_classes=things,
            segment_ids="cityscapes",
            image_id=k,  # integer ids: hotcoco rejects Cityscapes' string ids
            file_name=f"{name}_gtFine_panoptic.png",
        )
        Image.fromarray(id2rgb(ids)).save(os.path.join(gt_dir, ann["file_name"]))
        gt_anns.append(ann)
        ids, ann = to_coco_panoptic(
            pred,
            category_map=CITYSCAPES_TRAIN_TO_LABEL,
            image_id=k,
            file_name=f"{name}_panoptic.png",
        )
        Image.fromarray(id2rgb(ids)).save(os.path.join(pred_dir, ann["file_name"]))
        pred_anns.append(ann)
    images = [
        {"id": a["image_id"], "file_name": a["file_name"], "height": h, "width": w} for a in gt_anns
    ]
    cats = cityscapes_categories()
    gt_json, pred_json = os.path.join(root, "gt.json"), os.path.join(root, "pred.json")
    with open(gt_json, "w") as f:
        json.dump({"images": images, "annotations": gt_anns, "categories": cats}, f)
    with open(pred_json, "w") as f:
        json.dump({"images": images, "annotations": pred_anns, "categories": cats}, f)
    return gt_json, pred_json, gt_dir, pred_dir


@pytest.fixture(scope="module")
def pq_files(request, tmp_path_factory):
    pytest.importorskip("PIL")
    n, h, w = (3, 128, 256) if _quick(request.config) else (30, 512, 1024)
    return _write_pair_set(str(tmp_path_factory.mktemp("pq")), n, h, w)


@pytest.fixture(scope="module")
def pq_files_clean(request, tmp_path_factory):
    """The same scenes with noise-free network outputs (semantic_noise=0): predictions with
    errors at boundaries only, as a trained network makes them (no salt-and-pepper pixels)."""
    pytest.importorskip("PIL")
    n, h, w = (3, 128, 256) if _quick(request.config) else (30, 512, 1024)
    return _write_pair_set(str(tmp_path_factory.mktemp("pqc")), n, h, w, semantic_noise=0.0)


def _official_pq(gt_json, pred_json, gt_dir, pred_dir):
    """cityscapesScripts' evaluatePanoptic with one process and no prints."""
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as ev

    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = json.load(f)
    categories = {el["id"]: el for el in gt["categories"]}
    preds = {el["image_id"]: el for el in pred["annotations"]}
    matched = [(a, preds[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = ev.pq_compute_single_core(0, matched, gt_dir, pred_dir, categories)
    return ev.average_pq(stat, categories)


def _hotcoco_pq(gt_json, pred_json, gt_dir, pred_dir):
    import hotcoco.panoptic

    with contextlib.redirect_stdout(io.StringIO()):
        return hotcoco.panoptic.pq_compute(gt_json, pred_json, gt_dir, pred_dir)


ROUNDS = 7


def test_pq_ours(benchmark, pq_files):
    benchmark.group = "pq: 30 pairs 512x1024 PNG+JSON, 1 thread"
    res = benchmark.pedantic(pq_compute, args=pq_files, rounds=ROUNDS, warmup_rounds=1)
    assert res["All"]["n"] > 0


def test_pq_cityscapesscripts(benchmark, pq_files):
    pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    benchmark.group = "pq: 30 pairs 512x1024 PNG+JSON, 1 thread"
    res = benchmark.pedantic(
        _official_pq, args=pq_files, rounds=max(2, ROUNDS // 2), warmup_rounds=0
    )
    ours = pq_compute(*pq_files)
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["pq"] == res[group]["pq"]  # bit-identical, single process


def test_pq_hotcoco(benchmark, pq_files):
    pytest.importorskip("hotcoco")
    benchmark.group = "pq: 30 pairs 512x1024 PNG+JSON, 1 thread"
    res = benchmark.pedantic(_hotcoco_pq, args=pq_files, rounds=ROUNDS, warmup_rounds=1)
    ours = pq_compute(*pq_files)
    for group in ("All", "Things", "Stuff"):
        assert abs(ours[group]["pq"] - res[group]["pq"]) < 1e-9


@pytest.mark.parametrize("data", ["pq_files", "pq_files_clean"])
def test_pq_ratios_interleaved(data, capsys, request):
    """The same three, interleaved round by round (robust to load changes on a shared machine);
    prints the ratios of the per-implementation minimum wall times. Also on the clean-prediction
    variant of the data set."""
    pq_files = request.getfixturevalue(data)
    impls = {"ours": pq_compute}
    try:
        import cityscapesscripts.evaluation.evalPanopticSemanticLabeling  # noqa: F401

        impls["cityscapesScripts"] = _official_pq
    except ImportError:
        pass
    try:
        import hotcoco  # noqa: F401

        impls["hotcoco(1 thread)"] = _hotcoco_pq
    except ImportError:
        pass
    best = {k: float("inf") for k in impls}
    for _ in range(2 if _quick(request.config) else 5):
        for name, fn in impls.items():
            t = time.perf_counter()
            fn(*pq_files)
            best[name] = min(best[name], time.perf_counter() - t)
    with capsys.disabled():
        parts = [f"{k} {1e3 * v:.1f} ms" for k, v in best.items()]
        ratios = [f"{k}/ours {best[k] / best['ours']:.2f}x" for k in best if k != "ours"]
        print(f"\n[pq interleaved min, {data}] " + ", ".join(parts) + " | " + ", ".join(ratios))


@pytest.fixture(scope="module")
def big_pair(request):
    import pdl_post
    from pdl_post.synthetic import make_scene

    h, w = (256, 512) if _quick(request.config) else (1024, 2048)
    scene = make_scene(h, w, 40, seed=123)
    pred = np.asarray(pdl_post.merge(scene.sem, scene.ctr, scene.off))
    return pred, np.asarray(scene.panoptic_gt)


def test_update_1024x2048(benchmark, big_pair):
    benchmark.group = "update: PanopticEvaluator.update, one 1024x2048 pair"
    pred, gt = big_pair
    ev = PanopticEvaluator([{"id": c, "isthing": int(c >= 11)} for c in range(19)])
    stats = benchmark(ev.update, pred, gt)
    assert int(stats.tp.sum()) > 0


def test_update_floor_copy(benchmark, big_pair):
    """The memory floor: read both maps and write them once."""
    benchmark.group = "update: PanopticEvaluator.update, one 1024x2048 pair"
    pred, gt = big_pair
    out_a, out_b = np.empty_like(pred), np.empty_like(gt)

    def copy():
        np.copyto(out_a, pred)
        np.copyto(out_b, gt)

    benchmark(copy)
