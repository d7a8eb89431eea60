"""Cityscapes pixel-level (IoU, iIoU) and instance-level (AP) evaluation, as cityscapesScripts.

The definitions follow cityscapesScripts 2.x (``evalPixelLevelSemanticLabeling.py`` and
``evalInstanceLevelSemanticLabeling.py``) rule for rule; the per-image statistics are plain
mergeable objects (``+=``), so ``workers=N`` runs a process pool.

Where the official code crashes, these functions return the mathematically sensible value instead:

- instance AP of a class that has GT instances and predictions, none of which are counted (all
  predictions ignored, every GT missed): 0.0 (the official code indexes an empty array);
- an instance id in the GT whose label has no instances (e.g. 7001): skipped for iIoU (the official
  code raises KeyError);
- blank lines in a prediction ``.txt`` are skipped, and absolute mask paths are allowed.

Bad input (unknown label ids, mismatched image sizes, multi-channel predictions, missing files)
raises ``ValueError`` / ``FileNotFoundError`` with the file named.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from pdl_post.eval._kernels import masked_counts, pair_counts
from pdl_post.eval._parallel import check_workers, run_images
from pdl_post.io import CITYSCAPES_LABELS

NUM_LABELS = 34  # label ids 0..33 (license plate, -1, is not evaluated)
_BY_ID = {lab.id: lab for lab in CITYSCAPES_LABELS}
EVAL_LABELS = [lab.id for lab in CITYSCAPES_LABELS if lab.id >= 0]  # 0..33 in table order
# cityscapesScripts' args.avgClassSize: weights of the instance-level IoU (iIoU).
AVG_CLASS_SIZE = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}
# Classes with instances that are evaluated (8), in label-table order.
INSTANCE_CLASSES = [
    lab.name for lab in CITYSCAPES_LABELS if lab.has_instances and not lab.ignore_in_eval
]
_INSTANCE_CLASS_INDEX = {name: k for k, name in enumerate(INSTANCE_CLASSES)}
_NAME_TO_ID = {lab.name: lab.id for lab in CITYSCAPES_LABELS}
CATEGORIES = list(dict.fromkeys(lab.category for lab in CITYSCAPES_LABELS))
# Categories all of whose labels (id >= 0) have instances: "human" and "vehicle".
INSTANCE_CATEGORIES = [
    cat
    for cat in CATEGORIES
    if all(lab.has_instances for lab in CITYSCAPES_LABELS if lab.category == cat and lab.id >= 0)
]
_INSTANCE_CATEGORY_LABELS = {
    cat: [lab.id for lab in CITYSCAPES_LABELS if lab.category == cat and lab.id >= 0]
    for cat in INSTANCE_CATEGORIES
}
# Instance-level AP: overlaps 0.5:0.95:0.05 with the official float values, minimum region size.
OVERLAPS = np.arange(0.5, 1.0, 0.05)
MIN_REGION_SIZE = 100
_VOID_IDS = np.array(
    sorted(lab.id for lab in CITYSCAPES_LABELS if lab.ignore_in_eval and lab.id >= 0)
)


def _check_files(files, name: str) -> list[str]:
    if isinstance(files, (str, bytes, os.PathLike)):
        raise TypeError(f"{name}: expected a sequence of paths, got a single path {files!r}")
    try:
        out = [os.fspath(f) for f in files]
    except TypeError:
        raise TypeError(
            f"{name}: expected a sequence of paths, got {type(files).__name__}"
        ) from None
    return out


# --------------------------------------------------------------------------------------------
# Pixel level


class CityscapesPixelStats:
    """Mergeable statistics of the pixel-level evaluation.

    Attributes
    ----------
    confusion : numpy.ndarray of int64, shape (34, 34)
        Rows: GT label id, columns: predicted label id.
    class_tp, class_fn : numpy.ndarray of int64, shape (8,)
        Per instance class (:data:`INSTANCE_CLASSES`): pixels of GT instances predicted as their
        class / not.
    class_tp_weighted, class_fn_weighted : numpy.ndarray of float64, shape (8,)
        The same, each instance weighted by average class size / instance size.
    cat_tp, cat_fn, cat_tp_weighted, cat_fn_weighted : shape (2,)
        The same for the categories ``human`` and ``vehicle``.
    num_images, num_with_instances : int
    """

    _ARRAYS = (
        "confusion",
        "class_tp",
        "class_fn",
        "class_tp_weighted",
        "class_fn_weighted",
        "cat_tp",
        "cat_fn",
        "cat_tp_weighted",
        "cat_fn_weighted",
    )

    def __init__(self):
        self.confusion = np.zeros((NUM_LABELS, NUM_LABELS), np.int64)
        n, m = len(INSTANCE_CLASSES), len(INSTANCE_CATEGORIES)
        self.class_tp = np.zeros(n, np.int64)
        self.class_fn = np.zeros(n, np.int64)
        self.class_tp_weighted = np.zeros(n, np.float64)
        self.class_fn_weighted = np.zeros(n, np.float64)
        self.cat_tp = np.zeros(m, np.int64)
        self.cat_fn = np.zeros(m, np.int64)
        self.cat_tp_weighted = np.zeros(m, np.float64)
        self.cat_fn_weighted = np.zeros(m, np.float64)
        self.num_images = 0
        self.num_with_instances = 0

    def __iadd__(self, other: CityscapesPixelStats) -> CityscapesPixelStats:
        if not isinstance(other, CityscapesPixelStats):
            raise TypeError(f"can only add CityscapesPixelStats, got {type(other).__name__}")
        for k in self._ARRAYS:
            getattr(self, k).__iadd__(getattr(other, k))
        self.num_images += other.num_images
        self.num_with_instances += other.num_with_instances
        return self

    def __add__(self, other: CityscapesPixelStats) -> CityscapesPixelStats:
        out = CityscapesPixelStats()
        out += self
        out += other
        return out

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:
            return self + CityscapesPixelStats()
        return NotImplemented

    def to_dict(self) -> dict:
        d = {k: getattr(self, k).tolist() for k in self._ARRAYS}
        d["num_images"] = self.num_images
        d["num_with_instances"] = self.num_with_instances
        return d

    @classmethod
    def from_dict(cls, d) -> CityscapesPixelStats:
        out = cls()
        for k in cls._ARRAYS:
            v = np.array(d[k], dtype=getattr(out, k).dtype)
            if v.shape != getattr(out, k).shape:
                raise ValueError(f"{k}: expected shape {getattr(out, k).shape}, got {v.shape}")
            setattr(out, k, v)
        out.num_images = int(d["num_images"])
        out.num_with_instances = int(d["num_with_instances"])
        return out

    def add_image(
        self, pred: np.ndarray, gt: np.ndarray, inst: np.ndarray | None, where: str
    ) -> None:
        """Add one image: label-id maps ``pred`` and ``gt`` (H, W), optional instance ids."""
        if pred.shape != gt.shape:
            raise ValueError(
                f"{where}: prediction and GT differ in size: {pred.shape} vs {gt.shape}"
            )
        g, p, c = pair_counts(gt, pred)
        if g.size and (g.min() < 0 or g.max() >= NUM_LABELS):
            bad = g[(g < 0) | (g >= NUM_LABELS)][0]
            raise ValueError(f"{where}: unknown GT label id {int(bad)} (expected 0..33)")
        if p.size and (p.min() < 0 or p.max() >= NUM_LABELS):
            bad = p[(p < 0) | (p >= NUM_LABELS)][0]
            raise ValueError(
                f"{where}: predicted label id {int(bad)} is not a Cityscapes label id (0..33)"
            )
        np.add.at(self.confusion, (g, p), c)
        self.num_images += 1
        if inst is None:
            return
        if inst.shape != gt.shape:
            raise ValueError(
                f"{where}: instance image and GT differ in size: {inst.shape} vs {gt.shape}"
            )
        self.num_with_instances += 1
        i, p, c = pair_counts(inst, pred)
        keep = i > 1000  # the official test: instance ids strictly above 1000
        i, p, c = i[keep], p[keep], c[keep]
        if i.size == 0:
            return
        ids, start = np.unique(i, return_index=True)
        stop = np.append(start[1:], i.size)
        for k, inst_id in enumerate(ids.tolist()):
            label_id = int(inst_id / 1000)
            lab = _BY_ID.get(label_id)
            if lab is None:
                raise ValueError(f"{where}: instance id {inst_id} has unknown label id {label_id}")
            if lab.ignore_in_eval or lab.name not in _INSTANCE_CLASS_INDEX:
                continue
            pp, cc = p[start[k] : stop[k]], c[start[k] : stop[k]]
            size = int(cc.sum())
            tp = int(cc[pp == label_id].sum())
            fn = size - tp
            weight = AVG_CLASS_SIZE[lab.name] / float(size)
            ci = _INSTANCE_CLASS_INDEX[lab.name]
            self.class_tp[ci] += tp
            self.class_fn[ci] += fn
            self.class_tp_weighted[ci] += float(tp) * weight
            self.class_fn_weighted[ci] += float(fn) * weight
            if lab.category in INSTANCE_CATEGORIES:
                cj = INSTANCE_CATEGORIES.index(lab.category)
                cat_tp = int(cc[np.isin(pp, _INSTANCE_CATEGORY_LABELS[lab.category])].sum())
                cat_fn = size - cat_tp
                self.cat_tp[cj] += cat_tp
                self.cat_fn[cj] += cat_fn
                self.cat_tp_weighted[cj] += float(cat_tp) * weight
                self.cat_fn_weighted[cj] += float(cat_fn) * weight

    def summarize(self) -> dict:
        """Scores as cityscapesScripts computes them; iIoU entries are None without instances."""
        conf = self.confusion
        have_inst = self.num_with_instances > 0
        if have_inst and self.num_with_instances != self.num_images:
            raise ValueError(
                f"instance ids were given for {self.num_with_instances} of {self.num_images} images; "
                "iIoU needs them for all or none"
            )
        not_ignored = [lab for lab in EVAL_LABELS if not _BY_ID[lab].ignore_in_eval]
        class_iou: dict[str, float] = {}
        class_iiou: dict[str, float] = {}
        for lab_id in EVAL_LABELS:
            lab = _BY_ID[lab_id]
            others = [x for x in not_ignored if x != lab_id]
            fp = int(conf[others, lab_id].sum())
            if lab.ignore_in_eval:
                class_iou[lab.name] = math.nan
                class_iiou[lab.name] = math.nan
                continue
            tp = int(conf[lab_id, lab_id])
            fn = int(conf[lab_id, :].sum()) - tp
            denom = tp + fp + fn
            class_iou[lab.name] = math.nan if denom == 0 else float(tp) / denom
            if lab.name in _INSTANCE_CLASS_INDEX and have_inst:
                ci = _INSTANCE_CLASS_INDEX[lab.name]
                wtp = float(self.class_tp_weighted[ci])
                wfn = float(self.class_fn_weighted[ci])
                d = wtp + fp + wfn
                class_iiou[lab.name] = math.nan if d == 0 else wtp / d
            else:
                class_iiou[lab.name] = math.nan
        cat_iou: dict[str, float] = {}
        cat_iiou: dict[str, float] = {}
        for cat in CATEGORIES:
            ids = [
                lab.id
                for lab in CITYSCAPES_LABELS
                if lab.category == cat and not lab.ignore_in_eval and lab.id in EVAL_LABELS
            ]
            outside = [x for x in not_ignored if _BY_ID[x].category != cat]
            if not ids:
                cat_iou[cat] = math.nan
            else:
                tp = int(conf[np.ix_(ids, ids)].sum())
                fn = int(conf[ids, :].sum()) - tp
                fp = int(conf[np.ix_(outside, ids)].sum())
                denom = tp + fp + fn
                cat_iou[cat] = math.nan if denom == 0 else float(tp) / denom
            if cat in INSTANCE_CATEGORIES and have_inst:
                cj = INSTANCE_CATEGORIES.index(cat)
                lids = _INSTANCE_CATEGORY_LABELS[cat]
                fp = int(conf[np.ix_(outside, lids)].sum())
                wtp = float(self.cat_tp_weighted[cj])
                wfn = float(self.cat_fn_weighted[cj])
                d = wtp + fp + wfn
                cat_iiou[cat] = math.nan if d == 0 else wtp / d
            else:
                cat_iiou[cat] = math.nan

        def average(scores):
            valid = [v for v in scores.values() if not math.isnan(v)]
            if not valid:
                return math.nan
            total = 0.0
            for v in valid:
                total += v
            return total / len(valid)

        total = conf.sum()
        return {
            "miou": average(class_iou),
            "miiou": average(class_iiou) if have_inst else None,
            "category_miou": average(cat_iou),
            "category_miiou": average(cat_iiou) if have_inst else None,
            "per_class": {
                _BY_ID[lab_id].name: {
                    "id": lab_id,
                    "iou": class_iou[_BY_ID[lab_id].name],
                    "iiou": class_iiou[_BY_ID[lab_id].name] if have_inst else None,
                }
                for lab_id in EVAL_LABELS
            },
            "per_category": {
                cat: {"iou": cat_iou[cat], "iiou": cat_iiou[cat] if have_inst else None}
                for cat in CATEGORIES
            },
            "priors": {
                _BY_ID[lab_id].name: (float(conf[lab_id, :].sum()) / total if total else math.nan)
                for lab_id in EVAL_LABELS
            },
            "confusion": conf.copy(),
            "num_images": self.num_images,
        }


def instance_file_for(gt_file: str) -> str | None:
    """The ``*_instanceIds.png`` beside a ``*_labelIds.png`` (None if the name has no labelIds)."""
    base = os.path.basename(gt_file)
    if "labelIds" not in base:
        return None
    # cityscapesScripts replaces "labelIds" in the whole path; only the file name matters here.
    return os.path.join(os.path.dirname(gt_file), base.replace("labelIds", "instanceIds"))


def _pixel_images(items, stats: CityscapesPixelStats, tick) -> None:
    from pdl_post.io import read_label_png

    for pred_file, gt_file, inst_file in items:
        pred = _read_single_channel(pred_file, "prediction")
        gt = read_label_png(gt_file)
        inst = read_label_png(inst_file) if inst_file is not None else None
        stats.add_image(pred, gt, inst, f"{pred_file} vs {gt_file}")
        if tick is not None:
            tick(1)


def _read_single_channel(path: str, what: str) -> np.ndarray:
    from pdl_post.io import read_png

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    arr = read_png(path)
    if arr.ndim != 2:
        raise ValueError(
            f"{path}: the {what} has {arr.shape[2]} channels; expected a label-id image"
        )
    return arr


def cityscapes_pixel(
    pred_label_id_files: Sequence,
    gt_label_id_files: Sequence,
    *,
    instances: bool | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Cityscapes pixel-level semantic labeling scores, as cityscapesScripts computes them.

    Parameters
    ----------
    pred_label_id_files : sequence of paths
        Predicted label-id PNGs (label ids 0..33, not train ids), one per GT file, same order.
    gt_label_id_files : sequence of paths
        ``*_gtFine_labelIds.png`` files.
    instances : bool, optional
        Use the ``*_instanceIds.png`` beside each GT file for the instance-level scores (iIoU).
        ``None`` (default): use them when every one exists.
    workers : int, optional
        Processes (None/1: this process, 0: all CPUs).
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    dict
        ``"miou"`` (cityscapesScripts' averageScoreClasses), ``"miiou"``, ``"category_miou"``,
        ``"category_miiou"`` (None without instance files), ``"per_class"`` (all 34 label names
        -> ``{"id", "iou", "iiou"}``, NaN for classes not evaluated or without pixels),
        ``"per_category"``, ``"priors"``, ``"confusion"`` ((34, 34) int64, rows GT) and
        ``"num_images"``.
    """
    preds = _check_files(pred_label_id_files, "pred_label_id_files")
    gts = _check_files(gt_label_id_files, "gt_label_id_files")
    if len(preds) != len(gts):
        raise ValueError(
            f"pred_label_id_files, gt_label_id_files: expected the same number of files, got "
            f"{len(preds)} and {len(gts)}"
        )
    if not gts:
        raise ValueError("gt_label_id_files: expected at least one file")
    for f in gts:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"GT file not found: {f}")
    inst_files = [instance_file_for(f) for f in gts]
    exists = [f is not None and os.path.isfile(f) for f in inst_files]
    if instances is None:
        instances = all(exists)
    elif instances and not all(exists):
        missing = inst_files[exists.index(False)] or gts[exists.index(False)]
        raise FileNotFoundError(f"instances=True but the instance-id file is missing: {missing}")
    items = list(zip(preds, gts, inst_files if instances else [None] * len(gts)))
    stats = run_images(
        _pixel_images,
        items,
        CityscapesPixelStats(),
        CityscapesPixelStats,
        workers=check_workers(workers),
        progress=progress,
        desc="pixel",
    )
    return stats.summarize()


# --------------------------------------------------------------------------------------------
# Instance level


def read_prediction_txt(path) -> list[tuple[str, int, float]]:
    """Parse a cityscapesScripts instance prediction file: ``mask_path label_id confidence`` per
    line, mask paths relative to the file's folder. Later lines for the same mask replace earlier
    ones (keeping the first one's place), as the official dict does."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prediction file not found: {path}")
    entries: dict[str, tuple[int, float]] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise ValueError(
                    f"{path}:{lineno}: expected 'mask_path label_id confidence', got {line.strip()!r}"
                )
            mask = os.path.abspath(os.path.join(os.path.dirname(path), parts[0]))
            try:
                label_id = int(float(parts[1]))
                conf = float(parts[2])
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: label id and confidence must be numbers, got {line.strip()!r}"
                ) from None
            entries[mask] = (label_id, conf)
    return [(m, lab, conf) for m, (lab, conf) in entries.items()]


class CityscapesInstanceStats:
    """Mergeable per-image matching records of the instance-level evaluation (``+=`` concatenates).

    ``images`` is a list with one entry per image: a dict mapping each instance class name to
    ``(gt_ids, gt_pixels, pred_conf, pred_pixels, pred_void, pair_pred, pair_gt, pair_inter)``
    numpy arrays (the GT instances of the class, groups included; the non-empty predictions; and
    their non-zero intersections).
    """

    def __init__(self, images=None):
        self.images = list(images) if images is not None else []

    def __iadd__(self, other: CityscapesInstanceStats) -> CityscapesInstanceStats:
        if not isinstance(other, CityscapesInstanceStats):
            raise TypeError(f"can only add CityscapesInstanceStats, got {type(other).__name__}")
        self.images.extend(other.images)
        return self

    def __add__(self, other: CityscapesInstanceStats) -> CityscapesInstanceStats:
        out = CityscapesInstanceStats(self.images)
        out += other
        return out

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:
            return CityscapesInstanceStats(self.images)
        return NotImplemented

    def add_image(self, gt: np.ndarray, predictions, where: str) -> None:
        """Add one image: GT instance ids (H, W) and ``(mask (H, W), label_id, conf)`` tuples
        (masks: non-zero = instance; use :func:`read_instance_mask` for files)."""
        uniq, counts, _ = masked_counts(gt, np.ones(gt.shape, np.uint8))
        labels = np.where(uniq < 1000, uniq, (uniq / 1000).astype(np.int64))
        for u, lab in zip(uniq.tolist(), labels.tolist()):
            if lab not in _BY_ID:
                raise ValueError(f"{where}: GT instance id {u} has unknown label id {lab}")
        per_class = {}
        for name in INSTANCE_CLASSES:
            sel = labels == _NAME_TO_ID[name]
            per_class[name] = {
                "gt_ids": uniq[sel],
                "gt_pixels": counts[sel],
                "conf": [],
                "pixels": [],
                "void": [],
                "pair_pred": [],
                "pair_gt": [],
                "pair_inter": [],
            }
        for mask, label_id, conf in predictions:
            lab = _BY_ID.get(label_id)
            if lab is None:
                raise ValueError(
                    f"{where}: predicted label id {label_id} is not a Cityscapes label id"
                )
            if lab.name not in per_class:
                continue
            if mask.shape != gt.shape:
                raise ValueError(
                    f"{where}: a predicted mask of shape {mask.shape} does not match the GT {gt.shape}"
                )
            ids, cnt, npix = masked_counts(gt, mask)
            if npix == 0:
                continue
            rec = per_class[lab.name]
            k = len(rec["conf"])
            rec["conf"].append(float(conf))
            rec["pixels"].append(npix)
            rec["void"].append(int(cnt[np.isin(ids, _VOID_IDS)].sum()))
            gid = rec["gt_ids"]
            if gid.size:
                pos = np.minimum(np.searchsorted(gid, ids), gid.size - 1)
                hit = gid[pos] == ids
            else:
                pos, hit = np.zeros(ids.size, np.int64), np.zeros(ids.size, bool)
            rec["pair_pred"].extend([k] * int(hit.sum()))
            rec["pair_gt"].extend(pos[hit].tolist())
            rec["pair_inter"].extend(cnt[hit].tolist())
        img = {}
        for name, rec in per_class.items():
            img[name] = (
                rec["gt_ids"].astype(np.int64),
                rec["gt_pixels"].astype(np.int64),
                np.array(rec["conf"], np.float64),
                np.array(rec["pixels"], np.int64),
                np.array(rec["void"], np.int64),
                np.array(rec["pair_pred"], np.int64),
                np.array(rec["pair_gt"], np.int64),
                np.array(rec["pair_inter"], np.int64),
            )
        self.images.append(img)

    def ap_matrix(self) -> np.ndarray:
        """AP per class and overlap threshold, shape (8, 10); NaN for classes without GT."""
        ap = np.full((len(INSTANCE_CLASSES), len(OVERLAPS)), np.nan)
        for ci, name in enumerate(INSTANCE_CLASSES):
            # GT ids below 1000 are groups (crowd regions) of the class, not instances.
            recs = [(img[name][0] >= 1000, *img[name][1:]) for img in self.images]
            for oi, th in enumerate(OVERLAPS):
                ap[ci, oi] = class_ap(recs, float(th), MIN_REGION_SIZE)
        return ap

    def summarize(self) -> dict:
        ap = self.ap_matrix()
        o50 = int(np.flatnonzero(np.isclose(OVERLAPS, 0.5))[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
            all_ap = float(np.nanmean(ap))
            all_ap50 = float(np.nanmean(ap[:, o50]))
        return {
            "ap": all_ap,
            "ap50": all_ap50,
            "per_class": {
                name: {"ap": float(np.average(ap[k, :])), "ap50": float(ap[k, o50])}
                for k, name in enumerate(INSTANCE_CLASSES)
            },
            "ap_matrix": ap,
            "overlaps": OVERLAPS.tolist(),
            "num_images": len(self.images),
        }


def class_ap(recs, th: float, min_region_size: int) -> float:
    """AP of one class at one overlap threshold over all images (cityscapesScripts' rules).

    ``recs`` holds one tuple per image: ``(gt_is_instance, gt_pixels, pred_conf, pred_pixels,
    pred_void, pair_pred, pair_gt, pair_inter)``, numpy arrays over the GT segments of the class
    (instances and groups), its non-empty predictions and their non-zero intersections. GT
    instances smaller than ``min_region_size`` pixels are neither matched nor missed.
    """
    y_true: list[np.ndarray] = []
    y_score: list[np.ndarray] = []
    hard_fns = 0
    have_gt = False
    have_pred = False
    for is_instance, gt_pix, conf, pix, void, pp, pg, pi in recs:
        valid = is_instance & (gt_pix >= min_region_size)
        if valid.any():
            have_gt = True
        if conf.size:
            have_pred = True
        iou = pi / (gt_pix[pg] + pix[pp] - pi) if pi.size else np.zeros(0)
        above = iou > th
        # GT side: each valid GT with predictions above the threshold is a TP scored by the
        # highest confidence; every other such prediction is a false positive (scored by its own
        # confidence), as the official pairwise max/min bookkeeping yields.
        m = above & valid[pg]
        n_gt = is_instance.size
        matched = np.zeros(n_gt, bool)
        matched[pg[m]] = True
        hard_fns += int((valid & ~matched).sum())
        if m.any():
            gsel, csel = pg[m], conf[pp[m]]
            order = np.lexsort((-csel, gsel))  # by GT, highest confidence first
            gsel, csel = gsel[order], csel[order]
            first = np.ones(gsel.size, bool)
            first[1:] = gsel[1:] != gsel[:-1]
            y_true.append(np.ones(int(first.sum())))
            y_score.append(csel[first])
            y_true.append(np.zeros(int((~first).sum())))
            y_score.append(csel[~first])
        # Prediction side: predictions above the threshold with no GT (groups and small
        # instances included) are false positives unless mostly on void / groups / small GTs.
        found = np.zeros(conf.size, bool)
        found[pp[above]] = True
        ignored = void.astype(np.int64)
        extra = pi * ~is_instance[pg] + pi * (gt_pix[pg] < min_region_size)
        if extra.size:
            ignored = ignored + np.bincount(pp, weights=extra, minlength=conf.size).astype(np.int64)
        fp = ~found & (ignored / pix <= th)
        y_true.append(np.zeros(int(fp.sum())))
        y_score.append(conf[fp])
    if not have_gt:
        return math.nan
    if not have_pred:
        return 0.0
    yt = np.concatenate(y_true) if y_true else np.zeros(0)
    ys = np.concatenate(y_score) if y_score else np.zeros(0)
    if ys.size == 0:
        # Nothing to rank (the official code fails here): no detection, AP 0.
        return 0.0
    order = np.argsort(ys, kind="stable")
    ys, yt = ys[order], yt[order]
    cum = np.cumsum(yt)
    _, first = np.unique(ys, return_index=True)
    n = ys.size
    n_true = cum[-1]
    before = np.append(cum, 0)[first - 1]  # true examples scored below each threshold
    tp = n_true - before
    fp = n - first - tp
    fn = before + hard_fns
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (tp + fn), 0.0)
    padded = np.append(np.append(recall[0], recall), 0.0)
    widths = np.convolve(padded, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, widths))


def read_instance_mask(path: str) -> np.ndarray:
    """A predicted instance mask as the official code reads it: converted to 8-bit gray ("L"),
    non-zero = instance. Returns a ``uint8`` (H, W) array (0 / non-zero)."""
    from pdl_post.io import _fast_path, _parse_png, _pillow, _read_bytes, read_png

    if not os.path.isfile(path):
        raise FileNotFoundError(f"predicted mask not found: {path}")
    info = _parse_png(_read_bytes(path), path)
    if _fast_path(info) and info.colortype == 0 and info.bitdepth == 8:
        return read_png(path)
    return np.array(_pillow().open(path).convert("L"))


def _instance_images(items, stats: CityscapesInstanceStats, tick) -> None:
    from pdl_post.io import read_label_png

    for pred_txt, gt_file in items:
        if not os.path.isfile(gt_file):
            raise FileNotFoundError(f"GT file not found: {gt_file}")
        gt = read_label_png(gt_file)
        preds = []
        for mask_file, label_id, conf in read_prediction_txt(pred_txt):
            lab = _BY_ID.get(label_id)
            if lab is None:
                raise ValueError(f"{pred_txt}: label id {label_id} is not a Cityscapes label id")
            if lab.name not in _INSTANCE_CLASS_INDEX:
                continue  # not read, as in the official code
            preds.append((read_instance_mask(mask_file), label_id, conf))
        stats.add_image(gt, preds, f"{pred_txt} vs {gt_file}")
        if tick is not None:
            tick(1)


def cityscapes_instance(
    pred_txt_files: Sequence,
    gt_instance_id_files: Sequence,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Cityscapes instance-level semantic labeling AP, as cityscapesScripts computes it.

    Its own AP, not COCO's: overlaps 0.5:0.95:0.05 (``np.arange`` values), IoU > threshold
    strictly, GT instances under 100 pixels and groups (ids < 1000) ignored, a GT matched by
    several predictions keeps the best-scored one (the others are false positives), unmatched
    predictions are ignored when more than the threshold's share of their pixels lie on void,
    groups or small instances, and a step-wise integration of its precision/recall curve.

    Parameters
    ----------
    pred_txt_files : sequence of paths
        One ``.txt`` per image: lines ``mask.png label_id confidence`` (label ids, not train ids;
        mask paths relative to the ``.txt``).
    gt_instance_id_files : sequence of paths
        ``*_gtFine_instanceIds.png`` files, same order.
    workers : int, optional
    progress : bool

    Returns
    -------
    dict
        ``"ap"``, ``"ap50"`` (averages over the classes that have GT), ``"per_class"`` (the 8
        classes -> ``{"ap", "ap50"}``, NaN without GT), ``"ap_matrix"`` ((8, 10) array),
        ``"overlaps"``, ``"num_images"``.
    """
    preds = _check_files(pred_txt_files, "pred_txt_files")
    gts = _check_files(gt_instance_id_files, "gt_instance_id_files")
    if len(preds) != len(gts):
        raise ValueError(
            f"pred_txt_files, gt_instance_id_files: expected the same number of files, got "
            f"{len(preds)} and {len(gts)}"
        )
    if not gts:
        raise ValueError("gt_instance_id_files: expected at least one file")
    stats = run_images(
        _instance_images,
        list(zip(preds, gts)),
        CityscapesInstanceStats(),
        CityscapesInstanceStats,
        workers=check_workers(workers),
        progress=progress,
        desc="instance",
    )
    return stats.summarize()


__all__ = [
    "CityscapesInstanceStats",
    "CityscapesPixelStats",
    "cityscapes_instance",
    "cityscapes_pixel",
]
