"""Panoptic quality: every rule of the official pq_compute as a hand-made case, parity with
cityscapesScripts on seeded synthetic data, the in-memory evaluator and the compiled matcher."""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest

from eval_data import write_scene_set
from official_env import require_official
from pdl_post.eval import PanopticEvaluator, PQStats, pq_compute
from pdl_post.eval.panoptic import accumulate_image
from pdl_post.io import to_coco_panoptic, write_panoptic_png

CATS = [
    {"id": 1, "name": "thing_a", "isthing": 1},
    {"id": 2, "name": "thing_b", "isthing": 1},
    {"id": 3, "name": "stuff_s", "isthing": 0},
]


def write_dataset(root, cases, categories=CATS):
    """cases: list of (gt_ids, gt_segments, pred_ids, pred_segments); segments are dicts
    (``area`` defaults to the GT PNG pixel count). Returns pq_compute's arguments."""
    gt_dir, pred_dir = os.path.join(root, "gt"), os.path.join(root, "pred")
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(pred_dir, exist_ok=True)
    gt_anns, pred_anns = [], []
    for k, (g, gsegs, p, psegs) in enumerate(cases):
        g = np.asarray(g, np.uint32)
        p = np.asarray(p, np.uint32)
        write_panoptic_png(os.path.join(gt_dir, f"{k}.png"), g)
        write_panoptic_png(os.path.join(pred_dir, f"{k}.png"), p)
        gs = []
        for s in gsegs:
            s = {"iscrowd": 0, **s}
            s.setdefault("area", int((g == s["id"]).sum()))
            gs.append(s)
        gt_anns.append({"image_id": k, "file_name": f"{k}.png", "segments_info": gs})
        pred_anns.append({"image_id": k, "file_name": f"{k}.png", "segments_info": list(psegs)})
    gt_json, pred_json = os.path.join(root, "gt.json"), os.path.join(root, "pred.json")
    with open(gt_json, "w") as f:
        json.dump({"annotations": gt_anns, "categories": categories}, f)
    with open(pred_json, "w") as f:
        json.dump({"annotations": pred_anns, "categories": categories}, f)
    return gt_json, pred_json, gt_dir, pred_dir


def run_case(tmp_path, g, gsegs, p, psegs, categories=CATS):
    return pq_compute(*write_dataset(str(tmp_path), [(g, gsegs, p, psegs)], categories))


def counts(res, cat):
    r = res["per_class"][cat]
    return r["tp"], r["fp"], r["fn"]


def strip(width, starts_values):
    """A 1 x width map with runs: [(start, value), ...]."""
    row = np.zeros(width, np.uint32)
    for start, value in starts_values:
        row[start:] = value
    return row[None, :]


# ----------------------------------------------------------------------------------------------
# Hand-made cases, one per rule (and the official numbers for all of them at once at the end).

HAND_CASES = {}


def case(name):
    def deco(f):
        HAND_CASES[name] = f
        return f

    return deco


@case("perfect")
def _perfect():
    g = strip(8, [(0, 5), (4, 6)])
    gs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 3}]
    p = strip(8, [(0, 9), (4, 11)])
    ps = [{"id": 9, "category_id": 1}, {"id": 11, "category_id": 3}]
    return (g, gs, p, ps), {1: (1, 0, 0), 3: (1, 0, 0)}


@case("iou_exactly_half_is_no_match")
def _half():
    # GT 5: 2 px inside the 4 px prediction 7, whose other 2 px lie on the stuff segment 6 (not
    # void): IoU = 2 / 4 = 0.5, not > 0.5. The stuff (4 px vs 2 px predicted) does not match either.
    g = strip(6, [(0, 6), (1, 5), (3, 6)])
    p = strip(6, [(0, 8), (1, 7), (5, 8)])
    gs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 3}]
    ps = [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 3}]
    return (g, gs, p, ps), {1: (0, 1, 1), 3: (0, 1, 1)}


@case("iou_above_half_matches")
def _above():
    # GT 5: 3 px inside the 5 px prediction: IoU 0.6.
    g = strip(6, [(0, 6), (1, 5), (4, 6)])
    p = strip(6, [(0, 8), (1, 7)])
    gs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 3}]
    ps = [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 3}]
    return (g, gs, p, ps), {1: (1, 0, 0), 3: (0, 1, 1)}


@case("category_must_agree")
def _category():
    g = strip(4, [(0, 5)])
    p = strip(4, [(0, 7)])
    return (g, [{"id": 5, "category_id": 1}], p, [{"id": 7, "category_id": 2}]), {
        1: (0, 0, 1),
        2: (0, 1, 0),
    }


@case("union_leaves_out_void_overlap")
def _void_union():
    # GT 4 px, the prediction covers it and 4 void pixels: IoU 4 / (8 + 4 - 4 - 4) = 1.
    g = strip(8, [(0, 5), (4, 0)])
    p = strip(8, [(0, 7)])
    return (g, [{"id": 5, "category_id": 1}], p, [{"id": 7, "category_id": 1}]), {1: (1, 0, 0)}


@case("gt_area_from_json")
def _json_area():
    # PNG: 4 GT pixels, JSON says 10: IoU 4 / (4 + 10 - 4) = 0.4, no match.
    g = strip(4, [(0, 5)])
    p = strip(4, [(0, 7)])
    return (g, [{"id": 5, "category_id": 1, "area": 10}], p, [{"id": 7, "category_id": 1}]), {
        1: (0, 1, 1)
    }


@case("pred_zero_unlisted_is_void")
def _zero_void():
    g = strip(6, [(0, 5), (3, 6)])
    p = strip(6, [(0, 9), (3, 0)])  # 0 not listed: void, no false positive for it
    gs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 3}]
    return (g, gs, p, [{"id": 9, "category_id": 1}]), {1: (1, 0, 0), 3: (0, 0, 1)}


@case("pred_zero_listed_is_a_segment")
def _zero_listed():
    g = strip(6, [(0, 5), (3, 6)])
    p = strip(6, [(0, 9), (3, 0)])
    gs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 3}]
    ps = [{"id": 9, "category_id": 1}, {"id": 0, "category_id": 3}]
    return (g, gs, p, ps), {1: (1, 0, 0), 3: (1, 0, 0)}


@case("unmatched_pred_mostly_void_is_ignored")
def _fp_void():
    # 3 of the prediction's 5 pixels lie on void: 0.6 > 0.5, not a false positive.
    g = strip(10, [(0, 0), (3, 5), (5, 6)])
    p = strip(10, [(0, 7), (5, 6)])
    gs = [{"id": 5, "category_id": 2}, {"id": 6, "category_id": 3}]
    ps = [{"id": 7, "category_id": 1}, {"id": 6, "category_id": 3}]
    return (g, gs, p, ps), {1: (0, 0, 0), 2: (0, 0, 1), 3: (1, 0, 0)}


@case("unmatched_pred_half_void_is_fp")
def _fp_half():
    # 2 of 4 pixels on void: 0.5 is not > 0.5, a false positive.
    g = strip(10, [(0, 0), (2, 5), (4, 6)])
    p = strip(10, [(0, 7), (4, 6)])
    gs = [{"id": 5, "category_id": 2}, {"id": 6, "category_id": 3}]
    ps = [{"id": 7, "category_id": 1}, {"id": 6, "category_id": 3}]
    return (g, gs, p, ps), {1: (0, 1, 0), 2: (0, 0, 1), 3: (1, 0, 0)}


@case("unmatched_pred_on_crowd_of_its_category_is_ignored")
def _fp_crowd():
    # 2 px void + 2 px crowd of category 1 out of 5: 0.8 > 0.5.
    g = strip(10, [(0, 0), (2, 40), (4, 5), (5, 6)])
    p = strip(10, [(0, 7), (5, 6)])
    gs = [
        {"id": 40, "category_id": 1, "iscrowd": 1},
        {"id": 5, "category_id": 2},
        {"id": 6, "category_id": 3},
    ]
    ps = [{"id": 7, "category_id": 1}, {"id": 6, "category_id": 3}]
    return (g, gs, p, ps), {1: (0, 0, 0), 2: (0, 0, 1), 3: (1, 0, 0)}


@case("crowd_of_another_category_does_not_help")
def _fp_crowd_other():
    g = strip(10, [(0, 40), (4, 5), (5, 6)])
    p = strip(10, [(0, 7), (5, 6)])
    gs = [
        {"id": 40, "category_id": 2, "iscrowd": 1},
        {"id": 5, "category_id": 2},
        {"id": 6, "category_id": 3},
    ]
    ps = [{"id": 7, "category_id": 1}, {"id": 6, "category_id": 3}]
    return (g, gs, p, ps), {1: (0, 1, 0), 2: (0, 0, 1), 3: (1, 0, 0)}


@case("only_the_last_listed_crowd_counts")
def _fp_last_crowd():
    # Two crowd segments of category 1; the prediction lies on the first one: a false positive.
    g = strip(12, [(0, 40), (4, 41), (6, 6)])
    p = strip(12, [(0, 7), (6, 6)])
    gs = [
        {"id": 40, "category_id": 1, "iscrowd": 1},
        {"id": 41, "category_id": 1, "iscrowd": 1},
        {"id": 6, "category_id": 3},
    ]
    ps = [{"id": 7, "category_id": 1}, {"id": 6, "category_id": 3}]
    return (g, gs, p, ps), {1: (0, 1, 0), 3: (1, 0, 0)}


@case("crowd_is_never_tp_or_fn")
def _crowd_never():
    g = strip(8, [(0, 40), (4, 41)])
    p = strip(8, [(0, 7), (4, 0)])
    gs = [{"id": 40, "category_id": 1, "iscrowd": 1}, {"id": 41, "category_id": 2, "iscrowd": 1}]
    return (g, gs, p, [{"id": 7, "category_id": 1}]), {1: (0, 0, 0), 2: (0, 0, 0)}


@case("class_with_only_fn_counts_with_zero")
def _only_fn():
    g = strip(8, [(0, 5), (4, 6)])
    p = strip(8, [(0, 9), (4, 0)])
    gs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 2}]
    return (g, gs, p, [{"id": 9, "category_id": 1}]), {1: (1, 0, 0), 2: (0, 0, 1)}


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_case_counts(tmp_path, name):
    data, expected = HAND_CASES[name]()
    res = run_case(tmp_path, *data)
    for cat, tpfpfn in expected.items():
        assert counts(res, cat) == tpfpfn, (cat, res["per_class"][cat])
    for cat in {1, 2, 3} - set(expected):
        assert counts(res, cat) == (0, 0, 0)


def test_averaging_rules(tmp_path):
    # Category 1: one match with IoU 0.75 and one FP; category 2: one FN only (pq = sq = rq = 0,
    # still counted); category 3 has no segment at all and is left out of the average.
    g = strip(12, [(0, 5), (3, 40), (8, 6)])
    p = strip(12, [(0, 7), (4, 8), (8, 0)])
    gs = [
        {"id": 5, "category_id": 1},
        {"id": 40, "category_id": 2, "iscrowd": 1},
        {"id": 6, "category_id": 2},
    ]
    ps = [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 1}]
    res = run_case(tmp_path, g, gs, p, ps)
    c1 = res["per_class"][1]
    assert (c1["tp"], c1["fp"], c1["fn"]) == (1, 1, 0)
    assert c1["sq"] == 0.75 and c1["rq"] == 1 / 1.5 and c1["pq"] == 0.75 / 1.5
    assert res["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert res["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert res["All"] == {"pq": (0.5 + 0.0) / 2, "sq": 0.75 / 2, "rq": (1 / 1.5) / 2, "n": 2}
    assert res["Things"]["n"] == 2
    # No stuff category has a segment: the official code divides by zero; here NaN with n = 0.
    assert res["Stuff"]["n"] == 0 and math.isnan(res["Stuff"]["pq"])


def test_hand_cases_match_official(tmp_path):
    """All hand-made cases as one data set: our numbers equal the official ones exactly."""
    official = require_official()
    cases = [HAND_CASES[name]()[0] for name in sorted(HAND_CASES)]
    args = write_dataset(str(tmp_path), cases)
    ours = pq_compute(*args)
    theirs = official(
        {
            "kind": "pq",
            "gt_json": args[0],
            "pred_json": args[1],
            "gt_folder": args[2],
            "pred_folder": args[3],
        }
    )
    assert "error" not in theirs, theirs.get("error")
    assert_official_equal(ours, theirs)


def assert_official_equal(ours, theirs):
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            assert abs(ours[group][key] - theirs[group][key]) <= 1e-12, (group, key)
        assert ours[group]["n"] == theirs[group]["n"]
    assert set(ours["per_class"]) == {int(c) for c in theirs["per_class"]}
    for cat, raw in theirs["raw"].items():
        mine = ours["per_class"][int(cat)]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (raw["tp"], raw["fp"], raw["fn"]), cat
        for key in ("pq", "sq", "rq"):
            assert abs(mine[key] - theirs["per_class"][cat][key]) <= 1e-12, (cat, key)


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_cityscapes_matches_official(tmp_path, seed):
    official = require_official()
    paths = write_scene_set(str(tmp_path), 5, seed=seed)
    args = (paths["gt_json"], paths["pred_json"], paths["gt_folder"], paths["pred_folder"])
    ours = pq_compute(*args)
    theirs = official(
        {
            "kind": "pq",
            "gt_json": args[0],
            "pred_json": args[1],
            "gt_folder": args[2],
            "pred_folder": args[3],
        }
    )
    assert "error" not in theirs, theirs.get("error")
    assert_official_equal(ours, theirs)
    # Single process: the same additions in the same order, so bit-identical.
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["pq"] == theirs[group]["pq"]


def test_workers_pool_agrees(tmp_path):
    paths = write_scene_set(str(tmp_path), 6, seed=3)
    args = (paths["gt_json"], paths["pred_json"], paths["gt_folder"], paths["pred_folder"])
    one = pq_compute(*args)
    two = pq_compute(*args, workers=2)
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            assert abs(one[group][key] - two[group][key]) <= 1e-12
    for cat in one["per_class"]:
        for key in ("tp", "fp", "fn"):
            assert one["per_class"][cat][key] == two["per_class"][cat][key]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    data, _ = HAND_CASES["perfect"]()
    pq_compute(*write_dataset(str(tmp_path), [data]), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "1/1" in captured.err


def test_default_folders_are_json_paths_without_extension(tmp_path):
    data, _ = HAND_CASES["perfect"]()
    gt_json, pred_json, gt_dir, pred_dir = write_dataset(str(tmp_path), [data])
    os.rename(gt_dir, gt_json[:-5])
    os.rename(pred_dir, pred_json[:-5])
    assert pq_compute(gt_json, pred_json)["All"]["pq"] == 1.0


# ----------------------------------------------------------------------------------------------
# Bad input: clear ValueError / FileNotFoundError, never KeyError


def _perfect_files(tmp_path):
    data, _ = HAND_CASES["perfect"]()
    return write_dataset(str(tmp_path), [data])


def _edit_json(path, fn):
    with open(path) as f:
        d = json.load(f)
    fn(d)
    with open(path, "w") as f:
        json.dump(d, f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda gt, pr: pr["annotations"][0]["segments_info"].pop(),
            "in the predicted PNG but not in its segments_info",
        ),
        (
            lambda gt, pr: pr["annotations"][0]["segments_info"].append(
                {"id": 77, "category_id": 1}
            ),
            "are in the predicted segments_info but not in its PNG",
        ),
        (
            lambda gt, pr: pr["annotations"][0]["segments_info"][0].update(category_id=99),
            "unknown category_id 99",
        ),
        (
            lambda gt, pr: gt["annotations"][0]["segments_info"][0].update(category_id=98),
            "unknown category_id 98",
        ),
        (
            lambda gt, pr: pr["annotations"][0].update(image_id=12),
            "no prediction for the image with id 0",
        ),
        (
            lambda gt, pr: pr["annotations"][0]["segments_info"].append(
                pr["annotations"][0]["segments_info"][0]
            ),
            "listed twice",
        ),
        (lambda gt, pr: gt["annotations"][0]["segments_info"][0].pop("area"), "needs an 'area'"),
        (lambda gt, pr: gt["annotations"][0].pop("file_name"), "without 'file_name'"),
        (
            lambda gt, pr: pr["annotations"][0].update(image_id=[1]),
            r"pred_json_file: image_id must be a string or an integer, got \[1\]",
        ),
    ],
)
def test_bad_input_messages(tmp_path, edit, message):
    gt_json, pred_json, gt_dir, pred_dir = _perfect_files(tmp_path)
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pr = json.load(f)
    edit(gt, pr)
    with open(gt_json, "w") as f:
        json.dump(gt, f)
    with open(pred_json, "w") as f:
        json.dump(pr, f)
    with pytest.raises(ValueError, match=message):
        pq_compute(gt_json, pred_json, gt_dir, pred_dir)


def test_a_json_of_the_wrong_shape_is_named_before_its_folder(tmp_path):
    # A JSON list has no folder beside it: the error is about the file, not the folder.
    _, pred_json, _, _ = _perfect_files(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="gt_json_file: expected a COCO-panoptic JSON"):
        pq_compute(tmp_path / "list.json", pred_json)
    with pytest.raises(ValueError, match="pred_json_file: expected a COCO-panoptic JSON"):
        pq_compute(pred_json, tmp_path / "list.json")


def test_missing_files(tmp_path):
    gt_json, pred_json, gt_dir, pred_dir = _perfect_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="gt_json_file"):
        pq_compute(str(tmp_path / "nope.json"), pred_json, gt_dir, pred_dir)
    with pytest.raises(FileNotFoundError, match="pred_folder"):
        pq_compute(gt_json, pred_json, gt_dir, str(tmp_path / "nope"))
    os.remove(os.path.join(pred_dir, "0.png"))
    with pytest.raises(FileNotFoundError):
        pq_compute(gt_json, pred_json, gt_dir, pred_dir)


def test_size_mismatch(tmp_path):
    gt_json, pred_json, gt_dir, pred_dir = _perfect_files(tmp_path)
    write_panoptic_png(os.path.join(pred_dir, "0.png"), np.full((2, 8), 9, np.uint32))
    with pytest.raises(ValueError, match="differ in size"):
        pq_compute(gt_json, pred_json, gt_dir, pred_dir)


def test_unknown_arguments(tmp_path):
    gt_json, pred_json, gt_dir, pred_dir = _perfect_files(tmp_path)
    with pytest.raises(TypeError, match="workers"):
        pq_compute(gt_json, pred_json, gt_dir, pred_dir, workers="2")
    with pytest.raises(ValueError, match="workers"):
        pq_compute(gt_json, pred_json, gt_dir, pred_dir, workers=-1)


# ----------------------------------------------------------------------------------------------
# In-memory evaluator


CS_CATS = [{"id": c, "isthing": int(c >= 11)} for c in range(19)]


def _merge_pair(seed, h=64, w=96):
    """A merge-style (train id * 1000 + instance) GT and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.int32)
    gt[: h // 3] = 10 * 1000
    gt[h // 3 : 2 * h // 3] = 2 * 1000
    gt[2 * h // 3 :] = 0
    gt[:2, :] = -1  # void
    for k in range(6):
        cls = int(rng.integers(11, 19))
        y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 16))
        gt[y : y + rng.integers(4, 12), x : x + rng.integers(4, 16)] = cls * 1000 + (
            0 if k == 5 else k + 1
        )
    pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)).copy()
    pred[rng.random((h, w)) < 0.02] = 13 * 1000 + 50
    pred[h - 3 :, : w // 4] = -1
    return pred, gt


def _coco_pq(tmp_path, pairs, gt_crowd=True):
    """The same pairs through to_coco_panoptic + pq_compute (crowd = thing id with instance 0)."""
    gt_dir, pred_dir = tmp_path / "g", tmp_path / "p"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_anns, pred_anns = [], []
    for k, (pred, gt) in enumerate(pairs):
        ids, ann = to_coco_panoptic(gt, image_id=k, file_name=f"{k}.png")
        for s in ann["segments_info"]:
            vals = np.unique(gt[ids == s["id"]])
            assert vals.size == 1
            s["iscrowd"] = int(gt_crowd and vals[0] % 1000 == 0 and vals[0] // 1000 >= 11)
        write_panoptic_png(gt_dir / f"{k}.png", ids)
        gt_anns.append(ann)
        ids, ann = to_coco_panoptic(pred, image_id=k, file_name=f"{k}.png")
        write_panoptic_png(pred_dir / f"{k}.png", ids)
        pred_anns.append(ann)
    cats = [{"id": c["id"], "name": str(c["id"]), "isthing": c["isthing"]} for c in CS_CATS]
    (tmp_path / "g.json").write_text(json.dumps({"annotations": gt_anns, "categories": cats}))
    (tmp_path / "p.json").write_text(json.dumps({"annotations": pred_anns, "categories": cats}))
    return pq_compute(tmp_path / "g.json", tmp_path / "p.json", gt_dir, pred_dir)


@pytest.mark.parametrize("gt_crowd", [True, False])
def test_evaluator_equals_files(tmp_path, gt_crowd):
    pairs = [_merge_pair(s) for s in range(4)]
    ev = PanopticEvaluator(CS_CATS, gt_crowd=gt_crowd)
    for pred, gt in pairs:
        ev.update(pred, gt)
    assert ev.num_images == 4
    assert ev.compute() == _coco_pq(tmp_path, pairs, gt_crowd)


def test_evaluator_batch_and_torch(tmp_path):
    torch = pytest.importorskip("torch")
    pairs = [_merge_pair(s) for s in range(3)]
    a = PanopticEvaluator(CS_CATS)
    for pred, gt in pairs:
        a.update(pred, gt)
    b = PanopticEvaluator(CS_CATS)
    stats = b.update(
        torch.from_numpy(np.stack([p for p, _ in pairs])),
        torch.from_numpy(np.stack([g for _, g in pairs])),
    )
    assert stats == a.stats == b.stats
    assert a.compute() == b.compute()


def test_stats_are_mergeable():
    pairs = [_merge_pair(s) for s in range(4)]
    ev = PanopticEvaluator(CS_CATS)
    parts = [ev.image_stats(p, g) for p, g in pairs]
    total = sum(parts)
    assert isinstance(total, PQStats)
    for p, g in pairs:
        ev.update(p, g)
    assert total == ev.stats
    # Across processes / machines: pickling and JSON keep every bit.
    assert pickle.loads(pickle.dumps(total)) == total
    assert PQStats.from_dict(json.loads(json.dumps(total.to_dict()))) == total
    other = PanopticEvaluator(CS_CATS)
    other.add_stats(parts[0] + parts[1])
    other.add_stats(parts[2] + parts[3])
    np.testing.assert_array_equal(other.stats.tp, ev.stats.tp)
    np.testing.assert_allclose(other.stats.iou, ev.stats.iou, rtol=1e-13)  # another summation order
    assert other.compute()["All"]["pq"] == pytest.approx(ev.compute()["All"]["pq"], rel=1e-12)
    ev.reset()
    assert ev.num_images == 0 and ev.stats == PQStats(CS_CATS)
    with pytest.raises(ValueError, match="different categories"):
        total + PQStats(CS_CATS[:5])


def test_evaluator_speed_sanity():
    """update on a 1024x2048 pair is a single compiled pass (the 5 ms target is measured in
    benchmarks/test_bench_eval.py); here only that it works at that size."""
    pred, gt = _merge_pair(7, 1024, 2048)
    ev = PanopticEvaluator(CS_CATS)
    s = ev.update(pred, gt)
    assert int(s.tp.sum()) > 0


@pytest.mark.parametrize(
    "pred, gt, exc, message",
    [
        (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), ValueError, "the same shape"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32), TypeError, "integer id map"),
        (np.zeros(4, np.int32), np.zeros(4, np.int32), ValueError, r"shape \(H, W\)"),
        (np.full((4, 4), 99000, np.int32), np.zeros((4, 4), np.int32), ValueError, "class 99"),
        (np.full((4, 4), -5, np.int32), np.zeros((4, 4), np.int32), ValueError, "void_label=-1"),
        ("x", np.zeros((4, 4), np.int32), TypeError, "pred"),
    ],
)
def test_evaluator_bad_input(pred, gt, exc, message):
    with pytest.raises(exc, match=message):
        PanopticEvaluator(CS_CATS).update(pred, gt)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"categories": "abc"}, TypeError, "categories"),
        ({"categories": [{"id": 1}, {"id": 1}]}, ValueError, "unique"),
        ({"categories": CS_CATS, "label_divisor": 0}, ValueError, "label_divisor"),
        ({"categories": CS_CATS, "void_label": 1.5}, TypeError, "void_label"),
    ],
)
def test_evaluator_bad_arguments(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        PanopticEvaluator(**kwargs)


# ----------------------------------------------------------------------------------------------
# The compiled matcher against the numpy transcription of the rules


def _random_image(rng):
    """Random segments and pairs exercising void, crowd, id 0 and category mismatches."""
    h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    ncat = int(rng.integers(1, 4))
    gt = rng.integers(0, 6, (h, w))
    pred = np.where(rng.random((h, w)) < 0.7, gt, rng.integers(0, 7, (h, w)))
    from pdl_post.eval._kernels import pair_counts

    pairs = pair_counts(gt, pred)
    gt_ids = np.unique(gt)
    gt_ids = gt_ids[(gt_ids != 0) & (rng.random(gt_ids.size) < 0.9)]  # 0 is void; some unlisted
    pred_ids = np.unique(pred)
    pred_ids = pred_ids[(pred_ids != 0) | (rng.random(pred_ids.size) < 0.5)]
    rng.shuffle(gt_ids)
    gt_cat = rng.integers(0, ncat, gt_ids.size)
    gt_crowd = rng.random(gt_ids.size) < 0.25
    gt_area = np.array([(gt == i).sum() for i in gt_ids], np.int64) + rng.integers(
        0, 2, gt_ids.size
    )
    pred_cat = rng.integers(0, ncat, pred_ids.size)
    pred_area = np.array([(pred == i).sum() for i in pred_ids], np.int64)
    return ncat, pairs, gt_ids, gt_cat, gt_crowd, gt_area, pred_ids, pred_cat, pred_area


def test_compiled_matcher_equals_reference():
    rng = np.random.default_rng(0)
    for _ in range(300):
        ncat, pairs, *segs = _random_image(rng)
        cats = [{"id": c, "isthing": 1} for c in range(ncat)]
        a, b = PQStats(cats), PQStats(cats)
        for _ in range(2):  # accumulate twice: additions land on existing sums
            accumulate_image(a, pairs, *segs, 0, "x", backend="compiled")
            accumulate_image(b, pairs, *segs, 0, "x", backend="reference")
        assert a == b  # bit for bit, including the IoU sums


def test_inconsistent_gt_area_is_an_error():
    g = np.array([5, 5, 5, 0], np.int64)
    p = np.array([7, 7, 7, 7], np.int64)
    from pdl_post.eval._kernels import pair_counts

    pairs = pair_counts(g, p)
    for backend in ("compiled", "reference"):
        stats = PQStats([{"id": 0, "isthing": 1}])
        with pytest.raises(ValueError, match="inconsistent 'area'"):
            accumulate_image(
                stats, pairs, np.array([5]), np.array([0]), np.array([False]), np.array([0]),
                np.array([7]), np.array([0]), np.array([4]), 0, "x", backend=backend,
            )  # fmt: skip
        assert stats == PQStats([{"id": 0, "isthing": 1}])  # nothing added


def test_coco_image_compiled_equals_reference():
    """pq_image_from_pairs: the compiled path (sorting, areas, id checks and matching in one
    call) against the numpy transcription, on random images, including its errors."""
    from pdl_post.eval._kernels import pair_counts
    from pdl_post.eval.panoptic import pq_image_from_pairs

    rng = np.random.default_rng(1)
    cats = [{"id": c, "isthing": c % 2} for c in (3, 5, 8)]
    cat_index = {3: 0, 5: 1, 8: 2}
    outcomes = set()
    for _ in range(300):
        h, w = int(rng.integers(1, 16)), int(rng.integers(1, 16))
        gt = rng.integers(0, 6, (h, w))
        pred = np.where(rng.random((h, w)) < 0.7, gt + 10, rng.integers(10, 17, (h, w)))
        pred[rng.random((h, w)) < 0.1] = 0
        g, p, c = pair_counts(gt, pred)
        order = rng.permutation(g.size)  # the compiled path sorts
        pairs = (g[order].astype(np.uint32), p[order].astype(np.uint32), c[order])
        gsegs = [
            {
                "id": int(i),
                "category_id": int(rng.choice([3, 5, 8])),
                "area": int((gt == i).sum()),
                "iscrowd": int(rng.random() < 0.2),
            }
            for i in np.unique(gt)
            if i != 0 and rng.random() < 0.9
        ]
        present = [int(i) for i in np.unique(pred) if i != 0]
        listed = [i for i in present if rng.random() < 0.97]
        if rng.random() < 0.05:
            listed.append(99)  # listed but not in the PNG
        psegs = [{"id": i, "category_id": int(rng.choice([3, 5, 8]))} for i in listed]
        results = []
        for backend in ("compiled", "reference"):
            stats = PQStats(cats)
            try:
                pq_image_from_pairs(
                    stats,
                    pairs,
                    {"segments_info": gsegs},
                    {"segments_info": psegs},
                    cat_index,
                    "x",
                    backend=backend,
                )
                results.append(stats)
            except ValueError as e:
                results.append(str(e))
        assert results[0] == results[1]
        outcomes.add(
            type(results[0]).__name__
            if not isinstance(results[0], str)
            else results[0].split(": ")[1][:20]
        )
    assert len(outcomes) >= 3  # successes and both kinds of id errors were exercised


def test_evaluator_takes_ids_beyond_32_bits():
    # merge gives int64 ids once class * label_divisor passes int32 (here class 5,000,000 + 10):
    # the evaluator counts them as the same maps with small class ids.
    pred, gt = _merge_pair(11)
    shift = 5_000_000
    cats = [{"id": c + (shift if c >= 10 else 0), "isthing": int(c >= 11)} for c in range(19)]

    def lifted(m):
        m = m.astype(np.int64)
        return np.where(m >= 10 * 1000, m + shift * 1000, m)

    small = PanopticEvaluator(CS_CATS).update(pred, gt)
    big = PanopticEvaluator(cats).update(lifted(pred), lifted(gt))
    assert lifted(gt).max() > 2**32
    for field in ("tp", "fp", "fn", "iou"):
        np.testing.assert_array_equal(getattr(big, field), getattr(small, field))
