"""Seeded synthetic Cityscapes-style evaluation data for the eval tests (GT and perturbed predictions).

A GT scene has Cityscapes label ids (stuff bands, small stuff boxes including ignored and void
labels, thing instances of every thing label including the ignored caravan/trailer, crowd groups
with ids < 1000 and instances under 100 pixels) and the matching instance-id map. Predictions are
made by perturbing the GT: shifted and eroded instances, wrong classes, split and merged
instances, dropped instances, false-positive blobs, noise.

Writers produce the on-disk formats of the official tools: COCO-panoptic PNG + JSON (GT as
cityscapesScripts' createPanopticImgs makes it), label-id PNGs and instance-level ``.txt`` files
with their masks.
"""

from __future__ import annotations

import json
import os

import numpy as np

from pdl_post.io import (
    CITYSCAPES_LABELS,
    cityscapes_categories,
    write_label_png,
    write_panoptic_png,
)

BY_ID = {lab.id: lab for lab in CITYSCAPES_LABELS if lab.id >= 0}
THING_LABELS = [lab.id for lab in CITYSCAPES_LABELS if lab.has_instances]  # 24..33
BANDS = (23, 11, 21, 8, 7)  # sky, building, vegetation, sidewalk, road (top to bottom)
BOX_LABELS = (17, 20, 19, 12, 13, 22, 9, 14, 4, 0, 18, 5, 15)  # incl. ignored and void ones


def _ellipse(h, w, cy, cx, ry, rx):
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def make_gt(h: int, w: int, seed: int, *, num_instances: int = 14):
    """(label_ids uint8 (H, W), instance_ids int32 (H, W)) of one synthetic Cityscapes scene."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int32)
    borders = np.sort(rng.uniform(0.1, 0.9, len(BANDS) - 1)) * h
    rows = np.arange(h)[:, None] + 3 * np.sin(np.arange(w)[None, :] / (7 + 5 * rng.random()))
    band = np.searchsorted(borders, rows)
    labels[:] = np.array(BANDS)[band]
    for _ in range(rng.integers(4, 9)):
        lab = int(rng.choice(BOX_LABELS))
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        labels[y0 : y0 + rng.integers(3, h // 4), x0 : x0 + rng.integers(2, w // 6)] = lab
    labels[h - max(2, h // 16) :, :] = 1  # ego vehicle at the bottom (void)
    inst = labels.copy()
    per_label: dict[int, int] = {}
    for k in range(num_instances):
        lab = int(rng.choice(THING_LABELS))
        cy, cx = rng.uniform(0.2, 0.95) * h, rng.uniform(0, 1) * w
        small = k % 5 == 4
        ry = rng.uniform(2, 4) if small else rng.uniform(5, h / 5)
        rx = rng.uniform(2, 4) if small else rng.uniform(5, w / 7)
        m = _ellipse(h, w, cy, cx, ry, rx)
        labels[m] = lab
        if k % 7 == 6:
            inst[m] = lab  # a crowd group: id < 1000
        else:
            per_label[lab] = per_label.get(lab, 0) + 1
            inst[m] = lab * 1000 + per_label[lab]
    return labels.astype(np.uint8), inst.astype(np.int32)


def panoptic_gt(inst: np.ndarray):
    """COCO-panoptic segments of an instance-id map, as cityscapesScripts' createPanopticImgs:
    (ids uint32 (H, W), segments_info list)."""
    ids = np.zeros(inst.shape, np.uint32)
    segments = []
    for value in np.unique(inst).tolist():
        sem = value if value < 1000 else value // 1000
        lab = BY_ID[sem]
        if lab.ignore_in_eval:
            continue
        crowd = 1 if (value < 1000 and lab.has_instances) else 0
        m = inst == value
        ids[m] = value
        ys, xs = np.nonzero(m)
        segments.append(
            {
                "id": int(value),
                "category_id": int(sem),
                "area": int(m.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
                "iscrowd": crowd,
            }
        )
    return ids, segments


def _shift(a, dy, dx):
    return np.roll(np.roll(a, dy, axis=0), dx, axis=1)


def perturb_panoptic(inst: np.ndarray, seed: int):
    """A predicted COCO-panoptic (ids uint32, segments_info) from a GT instance map."""
    rng = np.random.default_rng(seed)
    h, w = inst.shape
    out = np.zeros((h, w), np.int64)
    cats: dict[int, int] = {}
    next_id = 1

    def new_segment(cat):
        nonlocal next_id
        sid = next_id
        next_id += int(rng.integers(1, 4))  # gaps in the ids
        cats[sid] = cat
        return sid

    values = np.unique(inst).tolist()
    rng.shuffle(values)
    for value in values:
        sem = value if value < 1000 else value // 1000
        lab = BY_ID[sem]
        m = inst == value
        r = rng.random()
        if lab.has_instances:
            if r < 0.1:
                continue  # missed
            cat = sem
            if r > 0.9 or lab.ignore_in_eval:
                cat = int(rng.choice([c for c in THING_LABELS if not BY_ID[c].ignore_in_eval]))
            m2 = _shift(m, int(rng.integers(-2, 3)), int(rng.integers(-3, 4)))
            if 0.8 < r <= 0.9 and m2.sum() > 40:
                _, xs = np.nonzero(m2)
                cut = np.median(xs)
                left = m2.copy()
                left[:, int(cut) :] = False
                out[m2] = new_segment(cat)
                out[left] = new_segment(cat)  # split in two
            else:
                out[m2] = new_segment(cat)
        else:
            if lab.ignore_in_eval and r < 0.5:
                continue  # left as void
            cat = sem if not lab.ignore_in_eval else int(rng.choice([7, 8, 11, 21]))
            if r > 0.93:
                cat = int(rng.choice([7, 8, 11, 17, 21, 23]))
            out[m & (out == 0)] = new_segment(cat)
    # False-positive blobs and a void scratch.
    for _ in range(rng.integers(1, 4)):
        m = _ellipse(
            h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, h / 8), rng.uniform(3, w / 8)
        )
        out[m] = new_segment(int(rng.choice([24, 26, 27, 33, 7, 21])))
    y0 = int(rng.integers(0, h - 3))
    out[y0 : y0 + 2, : w // 3] = 0
    present = set(np.unique(out).tolist()) - {0}
    segments = [{"id": int(s), "category_id": int(cats[s])} for s in sorted(present)]
    rng.shuffle(segments)
    return out.astype(np.uint32), segments


def perturb_labels(labels: np.ndarray, seed: int):
    """A predicted label-id map: shifted, with wrong-class blobs and salt noise (any 0..33)."""
    rng = np.random.default_rng(seed)
    h, w = labels.shape
    pred = _shift(labels, int(rng.integers(-2, 3)), int(rng.integers(-2, 3))).astype(np.int32)
    for _ in range(rng.integers(2, 6)):
        m = _ellipse(
            h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, h / 6), rng.uniform(2, w / 6)
        )
        pred[m] = int(rng.integers(0, 34))
    noise = rng.random((h, w)) < 0.002
    pred[noise] = rng.integers(0, 34, int(noise.sum()))
    return pred.astype(np.uint8)


def perturb_instances(inst: np.ndarray, seed: int):
    """Predicted instance masks: list of (mask bool (H, W), label_id, confidence)."""
    rng = np.random.default_rng(seed)
    h, w = inst.shape
    preds = []
    confs = [0.9, 0.8, 0.8, 0.5, 0.3]  # ties on purpose
    for value in np.unique(inst).tolist():
        sem = value if value < 1000 else value // 1000
        if not BY_ID[sem].has_instances:
            continue
        m = inst == value
        r = rng.random()
        if r < 0.15:
            continue
        m2 = _shift(m, int(rng.integers(-2, 3)), int(rng.integers(-3, 4)))
        lab = sem if r < 0.85 else int(rng.choice(THING_LABELS))
        preds.append((m2, lab, float(rng.choice(confs))))
        if r > 0.7:  # a duplicate, a bit worse
            preds.append((_shift(m2, 1, 1), lab, float(rng.choice(confs))))
    for _ in range(rng.integers(1, 4)):  # false positives, some on void
        m = _ellipse(
            h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 12), rng.uniform(2, 12)
        )
        preds.append((m, int(rng.choice([*THING_LABELS, 7])), float(rng.random())))
    preds.append((np.zeros((h, w), bool), 26, 0.99))  # empty mask: skipped
    preds.append((inst == 1, 26, 0.4))  # on the ego vehicle (void)
    return preds


def write_scene_set(root: str, n: int, *, h: int = 96, w: int = 192, seed: int = 0) -> dict:
    """Write n scenes in every format under root; returns the paths."""
    gt_pan_dir = os.path.join(root, "gt_panoptic")
    pred_pan_dir = os.path.join(root, "pred_panoptic")
    gt_dir = os.path.join(root, "gtFine", "val", "city")
    pix_dir = os.path.join(root, "results", "pixel")
    pred_dir = os.path.join(root, "results", "instance")
    for d in (gt_pan_dir, pred_pan_dir, gt_dir, pix_dir, pred_dir, os.path.join(pred_dir, "masks")):
        os.makedirs(d, exist_ok=True)
    gt_anns, pred_anns, images = [], [], []
    label_files, inst_files, pred_label_files, pred_txts = [], [], [], []
    for k in range(n):
        name = f"city_{k:06d}_000019"
        labels, inst = make_gt(h, w, seed * 1000 + k)
        # GT files
        lf = os.path.join(gt_dir, f"{name}_gtFine_labelIds.png")
        inf = os.path.join(gt_dir, f"{name}_gtFine_instanceIds.png")
        write_label_png(lf, labels)
        write_label_png(inf, inst.astype(np.uint16))
        label_files.append(lf)
        inst_files.append(inf)
        ids, segs = panoptic_gt(inst)
        write_panoptic_png(os.path.join(gt_pan_dir, f"{name}_gtFine_panoptic.png"), ids)
        gt_anns.append(
            {"image_id": name, "file_name": f"{name}_gtFine_panoptic.png", "segments_info": segs}
        )
        images.append({"id": name, "file_name": f"{name}_leftImg8bit.png", "width": w, "height": h})
        # Predictions
        pids, psegs = perturb_panoptic(inst, seed * 1000 + k + 500)
        write_panoptic_png(os.path.join(pred_pan_dir, f"{name}_pred.png"), pids)
        pred_anns.append(
            {"image_id": name, "file_name": f"{name}_pred.png", "segments_info": psegs}
        )
        pf = os.path.join(pix_dir, f"{name}_pred_labelIds.png")
        write_label_png(pf, perturb_labels(labels, seed * 1000 + k + 700))
        pred_label_files.append(pf)
        txt = os.path.join(pred_dir, f"{name}_pred.txt")
        with open(txt, "w") as f:
            for j, (m, lab, conf) in enumerate(perturb_instances(inst, seed * 1000 + k + 900)):
                mf = f"masks/{name}_{j}.png"
                write_label_png(os.path.join(pred_dir, mf), m.astype(np.uint8) * 255)
                f.write(f"{mf} {lab} {conf}\n")
        pred_txts.append(txt)
    cats = cityscapes_categories()
    gt_json = os.path.join(root, "gt_panoptic.json")
    pred_json = os.path.join(root, "pred_panoptic.json")
    with open(gt_json, "w") as f:
        json.dump({"images": images, "annotations": gt_anns, "categories": cats}, f)
    with open(pred_json, "w") as f:
        json.dump({"images": images, "annotations": pred_anns, "categories": cats}, f)
    return {
        "gt_json": gt_json,
        "pred_json": pred_json,
        "gt_folder": gt_pan_dir,
        "pred_folder": pred_pan_dir,
        "gt_label_files": label_files,
        "gt_instance_files": inst_files,
        "pred_label_files": pred_label_files,
        "pred_txts": pred_txts,
        "pred_root": pred_dir,
        "pixel_root": pix_dir,
    }
