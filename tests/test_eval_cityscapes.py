"""Cityscapes pixel-level (IoU, iIoU) and instance-level (AP) evaluation: hand-made cases for the
rules, parity with cityscapesScripts on seeded synthetic data, pools and bad input."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from eval_data import write_scene_set
from official_env import require_official
from pdl_post.eval import (
    CityscapesInstanceStats,
    CityscapesPixelStats,
    cityscapes_instance,
    cityscapes_pixel,
)
from pdl_post.eval.cityscapes import AVG_CLASS_SIZE, OVERLAPS
from pdl_post.io import write_label_png

# ----------------------------------------------------------------------------------------------
# Pixel level: hand-made


def _write_pixel(tmp_path, preds, gts, insts=None):
    pf, gf = [], []
    for k, (p, g) in enumerate(zip(preds, gts)):
        pf.append(str(tmp_path / f"c_{k:06d}_000019_pred.png"))
        gf.append(str(tmp_path / f"c_{k:06d}_000019_gtFine_labelIds.png"))
        write_label_png(pf[-1], np.asarray(p, np.uint8))
        write_label_png(gf[-1], np.asarray(g, np.uint8))
        if insts is not None:
            write_label_png(
                gf[-1].replace("labelIds", "instanceIds"), np.asarray(insts[k], np.uint16)
            )
    return pf, gf


def _pixel_official(official, files, res, instances):
    theirs = official({"kind": "pixel", "preds": files[0], "gts": files[1], "instances": instances})
    assert "error" not in theirs, theirs.get("error")
    for name, v in theirs["classScores"].items():
        assert _close(res["per_class"][name]["iou"], v), name
    if instances:
        for name, v in theirs["classInstScores"].items():
            assert _close(res["per_class"][name]["iiou"], v), name
    for name, v in theirs["categoryScores"].items():
        assert _close(res["per_category"][name]["iou"], v), name


def test_pixel_iou_by_hand(tmp_path):
    official = require_official()
    # GT: road (7) x4, sidewalk (8) x2, unlabeled (0, ignored) x2.
    gt = [[7, 7, 7, 7, 8, 8, 0, 0]]
    pred = [[7, 7, 7, 8, 8, 7, 7, 26]]
    files = _write_pixel(tmp_path, [pred], [gt])
    res = cityscapes_pixel(*files)
    _pixel_official(official, files, res, False)
    # road: tp 3, fn 1, fp 1 (the sidewalk pixel; predictions on ignored GT pixels do not count).
    assert res["per_class"]["road"]["iou"] == 3 / 5
    assert res["per_class"]["sidewalk"]["iou"] == 1 / 3
    assert math.isnan(res["per_class"]["car"]["iou"])  # only predicted on ignored pixels
    assert math.isnan(res["per_class"]["unlabeled"]["iou"])  # ignoreInEval
    assert res["miou"] == (3 / 5 + 1 / 3) / 2
    assert res["per_category"]["flat"]["iou"] == 6 / 6
    assert res["miiou"] is None  # no instance files
    assert res["confusion"].shape == (34, 34) and res["confusion"].sum() == 8
    assert res["confusion"][0, 26] == 1


def test_pixel_iiou_weights(tmp_path):
    official = require_official()
    # One person (24001) of 4 pixels, 3 predicted as person, 1 as rider (same category "human").
    gt = [[24, 24, 24, 24, 7, 7]]
    inst = [[24001, 24001, 24001, 24001, 7, 7]]
    pred = [[24, 24, 24, 25, 7, 7]]
    files = _write_pixel(tmp_path, [pred], [gt], [inst])
    res = cityscapes_pixel(*files)
    _pixel_official(official, files, res, True)
    w = AVG_CLASS_SIZE["person"] / 4.0
    assert res["per_class"]["person"]["iiou"] == 3 * w / (3 * w + 0 + 1 * w)
    # rider: fp 1 pixel, no rider instances: 0 / (0 + 1 + 0)
    assert res["per_class"]["rider"]["iiou"] == 0.0
    assert res["per_category"]["human"]["iiou"] == 4 * w / (4 * w)
    assert res["per_class"]["person"]["iou"] == 3 / 4


def test_pixel_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown GT label id 40"):
        cityscapes_pixel(*_write_pixel(tmp_path, [[[7, 7]]], [[[7, 40]]]))
    with pytest.raises(ValueError, match="predicted label id 34"):
        cityscapes_pixel(*_write_pixel(tmp_path, [[[34, 7]]], [[[7, 7]]]))
    pf, gf = _write_pixel(tmp_path, [[[7, 7]]], [[[7, 7, 7]]])
    with pytest.raises(ValueError, match="differ in size"):
        cityscapes_pixel(pf, gf)
    pf, gf = _write_pixel(tmp_path, [[[7, 7]]], [[[7, 7]]])
    write_label_png(pf[0], np.zeros((1, 2), np.uint8))
    from pdl_post.io import write_png

    write_png(pf[0], np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        cityscapes_pixel(pf, gf)
    with pytest.raises(ValueError, match="same number of files"):
        cityscapes_pixel(pf, gf * 2)
    with pytest.raises(TypeError, match="single path"):
        cityscapes_pixel(pf[0], gf)
    with pytest.raises(FileNotFoundError, match="instance-id file is missing"):
        cityscapes_pixel(pf, gf, instances=True)
    with pytest.raises(FileNotFoundError):
        cityscapes_pixel([str(tmp_path / "nope.png")], [str(tmp_path / "nope_labelIds.png")])


def test_pixel_stats_merge_and_serialise():
    rng = np.random.default_rng(0)
    a, b = CityscapesPixelStats(), CityscapesPixelStats()
    gt = rng.integers(0, 34, (20, 30))
    inst = np.where(gt >= 24, gt * 1000 + rng.integers(1, 3, gt.shape), gt)
    a.add_image(rng.integers(0, 34, gt.shape), gt, inst, "a")
    b.add_image(rng.integers(0, 34, gt.shape), gt, inst, "b")
    total = sum([a, b])
    assert total.num_images == 2
    again = CityscapesPixelStats.from_dict(total.to_dict())
    assert again.summarize()["miou"] == total.summarize()["miou"]
    assert again.summarize()["miiou"] == total.summarize()["miiou"]


# ----------------------------------------------------------------------------------------------
# Instance level: hand-made


def _write_instance(tmp_path, gt_inst, preds, name="c_000000_000019", *, blank_line=True):
    """preds: list of (mask, label_id, conf). Returns (txt files, gt files)."""
    gt_file = str(tmp_path / f"{name}_gtFine_instanceIds.png")
    write_label_png(gt_file, np.asarray(gt_inst, np.uint16))
    os.makedirs(tmp_path / "masks", exist_ok=True)
    txt = str(tmp_path / f"{name}_pred.txt")
    with open(txt, "w") as f:
        for j, (mask, lab, conf) in enumerate(preds):
            write_label_png(
                tmp_path / "masks" / f"{name}_{j}.png", np.asarray(mask, np.uint8) * 255
            )
            f.write(f"masks/{name}_{j}.png {lab} {conf}\n")
        if blank_line:
            f.write("\n")  # a blank line (the official parser rejects it; skipped here)
    return [txt], [gt_file]


def _scene():
    gt = np.full((30, 40), 7, np.int64)
    gt[0:10, 0:20] = 26001  # a car of 200 px
    gt[15:25, 0:12] = 24001  # a person of 120 px
    gt[15:20, 20:30] = 26  # a car group (crowd)
    gt[25:28, 30:33] = 26002  # a car of 9 px (< 100: ignored)
    gt[28:, :] = 1  # ego vehicle (void)
    return gt


def _check_official(official, tmp_path, files, res):
    theirs = official(
        {"kind": "instance", "preds": files[0], "gts": files[1], "root": str(tmp_path)}
    )
    assert "error" not in theirs, theirs.get("error")
    np.testing.assert_array_equal(res["ap_matrix"], np.array(theirs["resultApMatrix"], float)[0])


def test_instance_float_thresholds(tmp_path):
    official = require_official()
    gt = _scene()
    m = gt == 26001
    m[0:1, :] = False  # 180 of 200 px: IoU exactly 0.9
    files = _write_instance(tmp_path, gt, [(m, 26, 0.7)], blank_line=False)
    res = cityscapes_instance(*files)
    _check_official(official, tmp_path, files, res)
    # 0.9 > 0.5 ... 0.8500000000000003 but not > 0.9000000000000004 (np.arange's values).
    assert OVERLAPS[8] > 0.9
    assert res["ap_matrix"][2].tolist() == [1.0] * 8 + [0.0] * 2
    assert res["per_class"]["car"] == {"ap": 0.8, "ap50": 1.0}
    assert res["per_class"]["person"]["ap"] == 0.0  # GT without prediction
    assert math.isnan(res["per_class"]["bus"]["ap"])  # no GT: left out of the average
    assert res["ap"] == pytest.approx((0.8 + 0.0) / 2, rel=1e-15)


def test_instance_duplicates_groups_small_and_void(tmp_path):
    official = require_official()
    gt = _scene()
    car = gt == 26001
    group = gt == 26
    small = gt == 26002
    void = np.zeros_like(car)
    void[28:, 0:10] = True
    preds = [
        (car, 26, 0.9),  # TP
        (car, 26, 0.6),  # duplicate: FP with the lower score
        (group, 26, 0.95),  # on a group: ignored
        (small, 26, 0.97),  # on a small GT instance: ignored
        (void, 26, 0.99),  # on void: ignored
        (np.zeros_like(car), 26, 1.0),  # empty: skipped
        (car, 7, 1.0),  # not an instance class: skipped
        (car, 29, 1.0),  # caravan, not evaluated: skipped
    ]
    files = _write_instance(tmp_path, gt, preds, blank_line=False)
    res = cityscapes_instance(*files)
    _check_official(official, tmp_path, files, res)
    # Ranked: TP 0.9 then FP 0.6: precision 1 at recall 1, AP 1.
    assert res["per_class"]["car"] == {"ap": 1.0, "ap50": 1.0}
    # A false positive scoring above the TP: the curve has (p, r) = (0.5, 1) at score 0.9,
    # (0, 0) at 0.95 and the artificial (1, 0); the step widths 0.5 * (r[i-1] - r[i+1]) are
    # 0.5, 0.5 and 0, so AP = 0.5 * 0.5 = 0.25 (the official integration).
    fp = np.zeros_like(car)
    fp[20:28, 34:40] = True
    files = _write_instance(tmp_path, gt, [(car, 26, 0.9), (fp, 26, 0.95)], blank_line=False)
    res = cityscapes_instance(*files)
    _check_official(official, tmp_path, files, res)
    assert res["per_class"]["car"]["ap"] == 0.25


def test_instance_all_predictions_ignored_is_zero(tmp_path):
    """GT and predictions exist but no prediction is counted: the official code indexes an empty
    array and fails; the sensible AP is 0."""
    official = require_official()
    gt = _scene()
    void = np.zeros(gt.shape, bool)
    void[28:, :] = True
    txts, gts = _write_instance(tmp_path, gt, [(void, 26, 0.5)])
    res = cityscapes_instance(txts, gts)
    assert res["per_class"]["car"]["ap"] == 0.0
    # Blank lines trip the official parser: rewrite without, then the official run fails.
    with open(txts[0]) as f:
        lines = [ln for ln in f if ln.strip()]
    with open(txts[0], "w") as f:
        f.writelines(lines)
    theirs = official({"kind": "instance", "preds": txts, "gts": gts, "root": str(tmp_path)})
    assert "error" in theirs and "IndexError" in theirs["error"]


def test_instance_errors(tmp_path):
    gt = _scene()
    txts, gts = _write_instance(tmp_path, gt, [(gt == 26001, 26, 0.5)])
    with open(txts[0], "a") as f:
        f.write("masks/x.png 99 0.5\n")
    with pytest.raises(ValueError, match="label id 99"):
        cityscapes_instance(txts, gts)
    with open(txts[0], "w") as f:
        f.write("masks/x.png 26\n")
    with pytest.raises(ValueError, match="expected 'mask_path label_id confidence'"):
        cityscapes_instance(txts, gts)
    with open(txts[0], "w") as f:
        f.write("masks/missing.png 26 0.5\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        cityscapes_instance(txts, gts)
    write_label_png(tmp_path / "masks" / "small.png", np.zeros((3, 3), np.uint8))
    with open(txts[0], "w") as f:
        f.write("masks/small.png 26 0.5\n")
    with pytest.raises(ValueError, match="does not match the GT"):
        cityscapes_instance(txts, gts)
    bad = gt.copy()
    bad[0, 0] = 50001
    write_label_png(gts[0], bad.astype(np.uint16))
    with pytest.raises(ValueError, match="unknown label id 50"):
        cityscapes_instance(txts, gts)
    with pytest.raises(ValueError, match="same number of files"):
        cityscapes_instance(txts, gts * 2)


def test_instance_stats_merge():
    gt = _scene()
    a, b = CityscapesInstanceStats(), CityscapesInstanceStats()
    a.add_image(gt, [((gt == 26001).astype(np.uint8), 26, 0.9)], "a")
    b.add_image(gt, [((gt == 24001).astype(np.uint8), 24, 0.8)], "b")
    total = a + b
    assert sum([a, b]).summarize()["ap"] == total.summarize()["ap"]
    assert total.summarize()["num_images"] == 2


# ----------------------------------------------------------------------------------------------
# Parity with cityscapesScripts on seeded synthetic data


def _close(a, b):
    return (a is None and b is None) or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory):
    return write_scene_set(str(tmp_path_factory.mktemp("cs")), 6, seed=11)


def test_pixel_matches_official(scene_set):
    official = require_official()
    p = scene_set
    theirs = official(
        {
            "kind": "pixel",
            "preds": p["pred_label_files"],
            "gts": p["gt_label_files"],
            "instances": True,
        }
    )
    assert "error" not in theirs, theirs.get("error")
    ours = cityscapes_pixel(p["pred_label_files"], p["gt_label_files"])
    np.testing.assert_array_equal(ours["confusion"], np.array(theirs["confMatrix"]))
    for name, v in theirs["classScores"].items():
        assert _close(ours["per_class"][name]["iou"], v), name
    for name, v in theirs["classInstScores"].items():
        assert _close(ours["per_class"][name]["iiou"], v), name
    for name, v in theirs["categoryScores"].items():
        assert _close(ours["per_category"][name]["iou"], v), name
    for name, v in theirs["categoryInstScores"].items():
        assert _close(ours["per_category"][name]["iiou"], v), name
    assert _close(ours["miou"], theirs["averageScoreClasses"])
    assert _close(ours["miiou"], theirs["averageScoreInstClasses"])
    assert _close(ours["category_miou"], theirs["averageScoreCategories"])
    assert _close(ours["category_miiou"], theirs["averageScoreInstCategories"])
    # The same operations in the same order: bit-identical.
    assert ours["miou"] == theirs["averageScoreClasses"]


def test_instance_matches_official(scene_set):
    official = require_official()
    p = scene_set
    theirs = official(
        {
            "kind": "instance",
            "preds": p["pred_txts"],
            "gts": p["gt_instance_files"],
            "root": p["pred_root"],
        }
    )
    assert "error" not in theirs, theirs.get("error")
    ours = cityscapes_instance(p["pred_txts"], p["gt_instance_files"])
    official_matrix = np.array(theirs["resultApMatrix"], dtype=float)[0]
    np.testing.assert_array_equal(np.isnan(ours["ap_matrix"]), np.isnan(official_matrix))
    np.testing.assert_allclose(ours["ap_matrix"], official_matrix, rtol=0, atol=1e-12)
    assert _close(ours["ap"], theirs["allAp"]) and _close(ours["ap50"], theirs["allAp50%"])
    for name, v in theirs["classes"].items():
        assert _close(ours["per_class"][name]["ap"], v["ap"]), name
        assert _close(ours["per_class"][name]["ap50"], v["ap50%"]), name


def test_pools_agree(scene_set):
    p = scene_set
    one = cityscapes_pixel(p["pred_label_files"], p["gt_label_files"])
    two = cityscapes_pixel(p["pred_label_files"], p["gt_label_files"], workers=2)
    np.testing.assert_array_equal(one["confusion"], two["confusion"])
    assert _close(one["miiou"], two["miiou"])
    a = cityscapes_instance(p["pred_txts"], p["gt_instance_files"])
    b = cityscapes_instance(p["pred_txts"], p["gt_instance_files"], workers=2)
    np.testing.assert_array_equal(a["ap_matrix"], b["ap_matrix"])
