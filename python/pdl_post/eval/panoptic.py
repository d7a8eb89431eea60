"""Panoptic quality (PQ, SQ, RQ), exactly as panopticapi / cityscapesScripts compute it.

The rules (Kirillov et al., "Panoptic Segmentation", and the official ``pq_compute``):

- a GT segment and a predicted segment match when they have the same category, the GT segment is
  not crowd and IoU > 0.5 (strictly), where the union leaves out the prediction's pixels on GT void;
- GT areas come from the GT (the JSON ``area`` for files), predicted areas from the PNG;
- predicted id 0 is void unless ``segments_info`` lists it;
- an unmatched prediction is a false positive unless more than half of it lies on GT void plus the
  (last listed) crowd segment of its category; crowd GT is never a TP or an FN;
- per category PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP (0 when TP = 0),
  RQ = TP / (TP + FP/2 + FN/2); "All", "Things" and "Stuff" average over the GT categories with
  TP + FP + FN > 0.

One deliberate difference: where the official code divides by zero (no category with any segment
in a group) the averages here are NaN with ``n = 0``; ids listed twice in ``segments_info``,
unknown ids and categories are errors (``ValueError``), as are missing predictions.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import numpy as np

from pdl_post.eval._kernels import pair_counts
from pdl_post.eval._parallel import check_workers, run_images

VOID = 0  # COCO-panoptic void segment id (when not listed in segments_info)


# --------------------------------------------------------------------------------------------
# Categories and statistics


def normalize_categories(
    categories, name: str = "categories"
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Category ids and thing flags, in the given order.

    Accepts COCO-style dicts ``[{"id": 7, "isthing": 0, ...}, ...]`` or a mapping
    ``{category_id: isthing}``.
    """
    if isinstance(categories, Mapping):
        items = [(k, v) for k, v in categories.items()]
    elif isinstance(categories, Iterable) and not isinstance(categories, (str, bytes)):
        items = []
        for c in categories:
            if not isinstance(c, Mapping) or "id" not in c:
                raise TypeError(
                    f"{name}: expected dicts with 'id' and 'isthing' (COCO categories), got {c!r}"
                )
            items.append((c["id"], c.get("isthing", 0)))
    else:
        raise TypeError(
            f"{name}: expected a list of COCO category dicts or a mapping id -> isthing, "
            f"got {type(categories).__name__}"
        )
    ids = []
    for k, _ in items:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"{name}: category ids must be ints, got {k!r}")
        ids.append(int(k))
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: category ids must be unique, got {ids}")
    if not ids:
        raise ValueError(f"{name}: expected at least one category")
    things = tuple(bool(v == 1) for _, v in items)  # the official test: isthing == 1
    return tuple(ids), things


class PQStats:
    """Sufficient statistics of PQ per category: summed IoU of matches, TP, FP and FN.

    Plain and mergeable: ``a + b``, ``a += b`` and ``sum(list_of_stats)`` add them (the
    categories must agree), :meth:`to_dict` / :meth:`from_dict` move them through JSON (e.g. to
    reduce across machines), and they pickle.

    Attributes
    ----------
    category_ids : tuple of int, shape (C,)
    isthing : tuple of bool, shape (C,)
    iou : numpy.ndarray of float64, shape (C,)
    tp, fp, fn : numpy.ndarray of int64, shape (C,)
    """

    __slots__ = ("category_ids", "fn", "fp", "iou", "isthing", "tp")

    def __init__(self, categories, *, iou=None, tp=None, fp=None, fn=None):
        if (
            isinstance(categories, tuple)
            and len(categories) == 2
            and isinstance(categories[0], tuple)
        ):
            self.category_ids, self.isthing = categories
        else:
            self.category_ids, self.isthing = normalize_categories(categories)
        c = len(self.category_ids)

        def arr(v, dtype):
            if v is None:
                return np.zeros(c, dtype)
            a = np.array(v, dtype=dtype)
            if a.shape != (c,):
                raise ValueError(f"expected {c} values (one per category), got shape {a.shape}")
            return a

        self.iou = arr(iou, np.float64)
        self.tp = arr(tp, np.int64)
        self.fp = arr(fp, np.int64)
        self.fn = arr(fn, np.int64)

    @property
    def categories(self) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        return self.category_ids, self.isthing

    def copy(self) -> PQStats:
        return PQStats(self.categories, iou=self.iou, tp=self.tp, fp=self.fp, fn=self.fn)

    def _check(self, other) -> None:
        if not isinstance(other, PQStats):
            raise TypeError(f"can only add PQStats, got {type(other).__name__}")
        if other.category_ids != self.category_ids or other.isthing != self.isthing:
            raise ValueError("cannot add PQStats over different categories")

    def __iadd__(self, other: PQStats) -> PQStats:
        self._check(other)
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def __add__(self, other: PQStats) -> PQStats:
        out = self.copy()
        out += other
        return out

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:  # sum() starts from 0
            return self.copy()
        return NotImplemented

    def __eq__(self, other) -> bool:
        if not isinstance(other, PQStats):
            return NotImplemented
        return (
            self.categories == other.categories
            and np.array_equal(self.iou, other.iou)
            and np.array_equal(self.tp, other.tp)
            and np.array_equal(self.fp, other.fp)
            and np.array_equal(self.fn, other.fn)
        )

    __hash__ = None  # mutable

    def __getstate__(self):
        return self.to_dict()

    def __setstate__(self, state):
        other = PQStats.from_dict(state)
        for k in self.__slots__:
            setattr(self, k, getattr(other, k))

    def __repr__(self) -> str:
        return (
            f"PQStats({len(self.category_ids)} categories, tp={int(self.tp.sum())}, "
            f"fp={int(self.fp.sum())}, fn={int(self.fn.sum())})"
        )

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (floats keep every bit through ``json``)."""
        return {
            "categories": [
                {"id": i, "isthing": int(t)} for i, t in zip(self.category_ids, self.isthing)
            ],
            "iou": [float(v) for v in self.iou],
            "tp": [int(v) for v in self.tp],
            "fp": [int(v) for v in self.fp],
            "fn": [int(v) for v in self.fn],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PQStats:
        return cls(d["categories"], iou=d["iou"], tp=d["tp"], fp=d["fp"], fn=d["fn"])

    def summarize(self) -> dict:
        """The result dict of ``pq_compute``: ``"All"``, ``"Things"``, ``"Stuff"``, ``"per_class"``."""
        results: dict[str, Any] = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            avg, per_class = self._average(isthing)
            results[name] = avg
            if name == "All":
                results["per_class"] = per_class
        return results

    def _average(self, isthing):
        # Same operations in the same order as the official pq_average, so results agree bit
        # for bit with its single-process run.
        pq, sq, rq, n = 0.0, 0.0, 0.0, 0
        per_class = {}
        for k, cat in enumerate(self.category_ids):
            if isthing is not None and self.isthing[k] != isthing:
                continue
            iou = float(self.iou[k])
            tp, fp, fn = int(self.tp[k]), int(self.fp[k]), int(self.fn[k])
            if tp + fp + fn == 0:
                per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
                continue
            n += 1
            pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_c = iou / tp if tp != 0 else 0.0
            rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[cat] = {"pq": pq_c, "sq": sq_c, "rq": rq_c, "tp": tp, "fp": fp, "fn": fn}
            pq += pq_c
            sq += sq_c
            rq += rq_c
        if n == 0:
            return {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


# --------------------------------------------------------------------------------------------
# One image


def _lookup(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query in keys (unique), -1 where absent."""
    if keys.size == 0:
        return np.full(queries.shape, -1, np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.minimum(np.searchsorted(sk, queries), sk.size - 1)
    return np.where(sk[pos] == queries, order[pos], -1)


def accumulate_image(
    stats: PQStats,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    gt_ids: np.ndarray,
    gt_cat: np.ndarray,
    gt_crowd: np.ndarray,
    gt_area: np.ndarray,
    pred_ids: np.ndarray,
    pred_cat: np.ndarray,
    pred_area: np.ndarray,
    void_id: int,
    where: str,
    *,
    backend: str = "compiled",
) -> None:
    """Add one image's TP/FP/FN/IoU into ``stats`` (in place).

    Parameters
    ----------
    pairs : (gt id, pred id, intersection) int64 arrays of shape (K,), sorted by (gt, pred)
    gt_ids, gt_cat, gt_crowd, gt_area : shape (G,)
        GT segments in listing order (the last crowd segment of a category counts), category
        indices into ``stats``, crowd flags and areas.
    pred_ids, pred_cat, pred_area : shape (P,)
        Predicted segments, category indices and areas.
    void_id : int
        GT id of void pixels.
    where : str
        Names the image in error messages.
    backend : {"compiled", "reference"}
        ``pdl_post._eval_kernels.pq_match`` or the numpy transcription of the rules below.
    """
    g, p, inter = pairs
    if backend == "compiled":
        from pdl_post import _eval_kernels

        i64 = np.int64
        bad = _eval_kernels.pq_match(
            np.ascontiguousarray(g, i64), np.ascontiguousarray(p, i64),
            np.ascontiguousarray(inter, i64), np.ascontiguousarray(gt_ids, i64),
            np.ascontiguousarray(gt_cat, i64), np.ascontiguousarray(gt_crowd, np.uint8),
            np.ascontiguousarray(gt_area, i64), np.ascontiguousarray(pred_ids, i64),
            np.ascontiguousarray(pred_cat, i64), np.ascontiguousarray(pred_area, i64),
            int(void_id), stats.iou, stats.tp, stats.fp, stats.fn,
        )  # fmt: skip
        if bad >= 0:
            gi = int(_lookup(gt_ids, g[bad : bad + 1])[0])
            raise ValueError(
                f"{where}: GT segment {int(g[bad])} has area {int(gt_area[gi])} but overlaps "
                f"predicted segment {int(p[bad])} on {int(inter[bad])} pixels (inconsistent 'area')"
            )
        return
    if backend != "reference":
        raise ValueError(f"backend: expected 'compiled' or 'reference', got {backend!r}")
    gi = _lookup(gt_ids, g)
    pi = _lookup(pred_ids, p)
    npred = pred_ids.size

    void_ov = np.zeros(npred, np.int64)
    vm = (g == void_id) & (pi >= 0)
    np.add.at(void_ov, pi[vm], inter[vm])

    cand = (gi >= 0) & (pi >= 0)
    cg, cp, ci = gi[cand], pi[cand], inter[cand]
    keep = ~gt_crowd[cg] & (gt_cat[cg] == pred_cat[cp])
    cg, cp, ci = cg[keep], cp[keep], ci[keep]
    union = pred_area[cp] + gt_area[cg] - ci - void_ov[cp]
    if np.any(union <= 0):
        k = int(np.flatnonzero(union <= 0)[0])
        raise ValueError(
            f"{where}: GT segment {int(gt_ids[cg[k]])} has area {int(gt_area[cg[k]])} but overlaps "
            f"predicted segment {int(pred_ids[cp[k]])} on {int(ci[k])} pixels (inconsistent 'area')"
        )
    iou = ci / union
    m = iou > 0.5
    mcats = gt_cat[cg[m]]
    np.add.at(stats.tp, mcats, 1)
    np.add.at(stats.iou, mcats, iou[m])

    gt_matched = np.zeros(gt_ids.size, bool)
    gt_matched[cg[m]] = True
    pred_matched = np.zeros(npred, bool)
    pred_matched[cp[m]] = True

    np.add.at(stats.fn, gt_cat[~gt_matched & ~gt_crowd], 1)

    ignore = void_ov.astype(np.float64)
    crowd_idx = np.flatnonzero(gt_crowd)
    if crowd_idx.size and npred:
        crowd_of_cat: dict[int, int] = {}
        for k in crowd_idx.tolist():  # listing order: the last crowd segment of a category wins
            crowd_of_cat[int(gt_cat[k])] = int(gt_ids[k])
        sentinel = np.iinfo(np.int64).min
        crowd_for_pred = np.array([crowd_of_cat.get(int(c), sentinel) for c in pred_cat], np.int64)
        sel = (pi >= 0) & (g == crowd_for_pred[np.maximum(pi, 0)])
        crowd_ov = np.zeros(npred, np.int64)
        np.add.at(crowd_ov, pi[sel], inter[sel])
        ignore = (void_ov + crowd_ov).astype(np.float64)
    fp = ~pred_matched & ~(ignore / pred_area > 0.5)
    np.add.at(stats.fp, pred_cat[fp], 1)


def _parse_segments(segments, cat_index: Mapping[int, int], where: str, what: str, *, gt: bool):
    """ids, category indices (and for GT: crowd flags, areas) of a ``segments_info`` list."""
    if not isinstance(segments, list):
        raise ValueError(
            f"{where}: 'segments_info' of the {what} must be a list, got {type(segments).__name__}"
        )
    try:
        ids = [int(s["id"]) for s in segments]
        cats = [cat_index.get(s["category_id"], -1) for s in segments]
        if gt:
            crowd = [s.get("iscrowd", 0) == 1 for s in segments]
    except (KeyError, TypeError, AttributeError):
        bad = next(
            s
            for s in segments
            if not isinstance(s, Mapping) or "id" not in s or "category_id" not in s
        )
        raise ValueError(
            f"{where}: each {what} segment needs 'id' and 'category_id', got {bad!r}"
        ) from None
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"{where}: {what} segment id {dup} is listed twice in segments_info")
    if -1 in cats:
        k = cats.index(-1)
        raise ValueError(
            f"{where}: {what} segment {ids[k]} has unknown category_id {segments[k]['category_id']}"
        )
    out = [np.array(ids, np.int64), np.array(cats, np.int64)]
    if gt:
        try:
            area = [int(s["area"]) for s in segments]
        except KeyError:
            raise ValueError(f"{where}: every GT segment needs an 'area'") from None
        out += [np.array(crowd, bool), np.array(area, np.int64)]
    return out


def pq_image_from_pairs(
    stats: PQStats,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    gt_ann: Mapping,
    pred_ann: Mapping,
    cat_index: Mapping[int, int],
    where: str,
    *,
    backend: str = "compiled",
) -> None:
    """Add one image given its (GT id, predicted id, count) pairs (any order) and JSON
    annotations; predicted areas come from the pairs (the PNG), GT areas from the JSON."""
    gt_ids, gt_cat, gt_crowd, gt_area = _parse_segments(
        gt_ann.get("segments_info"), cat_index, where, "GT", gt=True
    )
    pred_ids, pred_cat = _parse_segments(
        pred_ann.get("segments_info"), cat_index, where, "predicted", gt=False
    )
    g, p, c = pairs
    if backend == "compiled":
        from pdl_post import _eval_kernels

        code, value = _eval_kernels.pq_image_coco(
            np.ascontiguousarray(g, np.uint32),
            np.ascontiguousarray(p, np.uint32),
            np.ascontiguousarray(c, np.int64),
            gt_ids,
            gt_cat,
            gt_crowd.view(np.uint8),
            gt_area,
            pred_ids,
            pred_cat,
            stats.iou,
            stats.tp,
            stats.fp,
            stats.fn,
        )
        if code == 1:
            raise ValueError(
                f"{where}: segment id {value} is in the predicted PNG but not in its segments_info"
            )
        if code == 2:
            raise ValueError(
                f"{where}: segment ids [{int(pred_ids[value])}] are in the predicted segments_info "
                f"but not in its PNG"
            )
        if code == 3:
            gid, pid, inter = value
            area = int(gt_area[list(gt_ids).index(gid)])
            raise ValueError(
                f"{where}: GT segment {gid} has area {area} but overlaps predicted segment {pid} "
                f"on {inter} pixels (inconsistent 'area')"
            )
        return
    if backend != "reference":
        raise ValueError(f"backend: expected 'compiled' or 'reference', got {backend!r}")
    g, p, c = (np.asarray(x, np.int64) for x in (g, p, c))
    order = np.lexsort((p, g))
    g, p, c = g[order], p[order], c[order]
    png_ids, inv = np.unique(p, return_inverse=True)
    png_area = np.bincount(inv, weights=c, minlength=png_ids.size).astype(np.int64)
    pos = _lookup(pred_ids, png_ids)
    unlisted = (pos < 0) & (png_ids != VOID)
    if unlisted.any():
        raise ValueError(
            f"{where}: segment id {int(png_ids[unlisted][0])} is in the predicted PNG but not in "
            f"its segments_info"
        )
    pred_area = np.zeros(pred_ids.size, np.int64)
    pred_area[pos[pos >= 0]] = png_area[pos >= 0]
    missing = pred_area == 0
    if missing.any():
        raise ValueError(
            f"{where}: segment ids {pred_ids[missing][:1].tolist()} are in the predicted "
            f"segments_info but not in its PNG"
        )
    accumulate_image(
        stats,
        (g, p, c),
        gt_ids,
        gt_cat,
        gt_crowd,
        gt_area,
        pred_ids,
        pred_cat,
        pred_area,
        VOID,
        where,
        backend="reference",
    )


def _size_mismatch(where, gshape, pshape):
    return ValueError(
        f"{where}: GT and prediction PNGs differ in size: {gshape[1]}x{gshape[0]} vs "
        f"{pshape[1]}x{pshape[0]} (width x height)"
    )


_LOCAL = threading.local()


def _buffers() -> dict:
    """Per-thread scanline buffers reused across images and calls: fresh multi-megabyte
    allocations cost page faults comparable to decoding an image."""
    d = getattr(_LOCAL, "buffers", None)
    if d is None:
        d = _LOCAL.buffers = {}
    return d


def _buffer(buffers: dict, key: str, size: int) -> np.ndarray:
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, np.uint8)
    return buf[:size]


def image_pairs(gt_file, pred_file, buffers: dict, where: str):
    """(GT id, predicted id, count) pairs of two COCO-panoptic PNGs, in no particular order.

    8-bit RGB/RGBA PNGs take the fused path (``pdl_post._png.pair_counts_png``: inflate both into
    reused buffers, then unfilter and count row by row); anything else is decoded to id maps.
    """
    from pdl_post import _png
    from pdl_post.io import _rgb_idat, read_panoptic_png

    ga = _rgb_idat(gt_file)
    pa = _rgb_idat(pred_file) if ga is not None else None
    if ga is not None and pa is not None:
        if ga[1:3] != pa[1:3]:
            raise _size_mismatch(where, ga[1:3], pa[1:3])
        h, w = ga[1], ga[2]
        try:
            g, p, c = _png.pair_counts_png(
                np.frombuffer(ga[0], np.uint8),
                np.frombuffer(pa[0], np.uint8),
                h,
                w,
                ga[3],
                pa[3],
                _buffer(buffers, "gt", h * (1 + w * ga[3])),
                _buffer(buffers, "pred", h * (1 + w * pa[3])),
            )
        except ValueError as e:
            which, msg = str(e).split(": ", 1)
            raise ValueError(
                f"{gt_file if which == 'a' else pred_file}: corrupt PNG image data ({msg})"
            ) from None
        return g, p, c
    gt_map = read_panoptic_png(gt_file)
    pred_map = read_panoptic_png(pred_file)
    if gt_map.shape != pred_map.shape:
        raise _size_mismatch(where, gt_map.shape, pred_map.shape)
    return pair_counts(gt_map, pred_map)


def _pq_files(items, stats: PQStats, tick, *, gt_folder, pred_folder, cat_index) -> None:
    buffers = _buffers()
    for gt_ann, pred_ann in items:
        where = f"image {gt_ann.get('image_id')!r}"
        try:
            gt_file = os.path.join(gt_folder, gt_ann["file_name"])
            pred_file = os.path.join(pred_folder, pred_ann["file_name"])
        except KeyError:
            raise ValueError(f"{where}: annotation without 'file_name'") from None
        pairs = image_pairs(gt_file, pred_file, buffers, where)
        pq_image_from_pairs(stats, pairs, gt_ann, pred_ann, cat_index, where)
        if tick is not None:
            tick(1)


# --------------------------------------------------------------------------------------------
# Public API


def _load_json(path, what: str):
    from pdl_post.io import read_json

    if isinstance(path, Mapping):
        return path
    if not os.path.isfile(os.fspath(path)):
        raise FileNotFoundError(f"{what}: no such file: {os.fspath(path)}")
    return read_json(path)


def _check_image_id(ann: object, what: str) -> None:
    if not isinstance(ann, Mapping) or "image_id" not in ann:
        raise ValueError(f"{what}: annotation without 'image_id': {ann!r}")
    image_id = ann["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        raise ValueError(f"{what}: image_id must be a string or an integer, got {image_id!r}")


def match_annotations(gt_json: Mapping, pred_json: Mapping) -> list[tuple[Mapping, Mapping]]:
    """Pair every GT annotation with the prediction of the same ``image_id`` (in GT order)."""
    for what, js in (("gt_json_file", gt_json), ("pred_json_file", pred_json)):
        if not isinstance(js, Mapping) or not isinstance(js.get("annotations"), list):
            raise ValueError(f"{what}: expected a COCO-panoptic JSON with an 'annotations' list")
    preds: dict = {}
    for ann in pred_json["annotations"]:
        _check_image_id(ann, "pred_json_file")
        if ann["image_id"] in preds:
            raise ValueError(f"pred_json_file: two annotations for image_id {ann['image_id']!r}")
        preds[ann["image_id"]] = ann
    out = []
    for ann in gt_json["annotations"]:
        _check_image_id(ann, "gt_json_file")
        if ann["image_id"] not in preds:
            raise ValueError(f"no prediction for the image with id {ann['image_id']!r}")
        out.append((ann, preds[ann["image_id"]]))
    return out


def pq_compute(
    gt_json_file,
    pred_json_file,
    gt_folder=None,
    pred_folder=None,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Panoptic quality of COCO-panoptic predictions (PNG + JSON), as the official ``pq_compute``.

    Parameters
    ----------
    gt_json_file, pred_json_file : str or os.PathLike (or an already loaded dict)
        COCO-panoptic JSON files; the categories (with ``isthing``) come from the GT.
    gt_folder, pred_folder : str or os.PathLike, optional
        Folders of the PNGs; default: the JSON path without ``.json``.
    workers : int, optional
        Processes: ``None`` or 1 in this process, ``N`` a pool of N, 0 all CPUs.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    dict
        ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"},
        "per_class": {category_id: {"pq", "sq", "rq", "tp", "fp", "fn"}}}``.

    Raises
    ------
    FileNotFoundError
        A JSON file or PNG is missing.
    ValueError
        A prediction is missing, ids in a PNG and its ``segments_info`` disagree, a category is
        unknown, or a file is malformed.
    """
    workers = check_workers(workers)
    gt_json = _load_json(gt_json_file, "gt_json_file")
    pred_json = _load_json(pred_json_file, "pred_json_file")
    if gt_folder is None:
        if isinstance(gt_json_file, Mapping):
            raise ValueError("gt_folder: required when gt_json_file is a dict")
        gt_folder = os.path.splitext(os.fspath(gt_json_file))[0]
    if pred_folder is None:
        if isinstance(pred_json_file, Mapping):
            raise ValueError("pred_folder: required when pred_json_file is a dict")
        pred_folder = os.path.splitext(os.fspath(pred_json_file))[0]
    # The files' structure first: a folder derived from a wrong file would name the wrong problem.
    if not isinstance(gt_json, Mapping) or "categories" not in gt_json:
        raise ValueError("gt_json_file: expected a COCO-panoptic JSON with 'categories'")
    if not isinstance(pred_json, Mapping) or not isinstance(pred_json.get("annotations"), list):
        raise ValueError("pred_json_file: expected a COCO-panoptic JSON with an 'annotations' list")
    for what, folder in (("gt_folder", gt_folder), ("pred_folder", pred_folder)):
        if not os.path.isdir(os.fspath(folder)):
            raise FileNotFoundError(f"{what}: no such folder: {os.fspath(folder)}")
    categories = normalize_categories(gt_json["categories"], "gt_json_file categories")
    cat_index = {c: k for k, c in enumerate(categories[0])}
    items = match_annotations(gt_json, pred_json)
    func = partial(
        _pq_files,
        gt_folder=os.fspath(gt_folder),
        pred_folder=os.fspath(pred_folder),
        cat_index=cat_index,
    )
    stats = run_images(
        func,
        items,
        PQStats(categories),
        partial(PQStats, categories),
        workers=workers,
        progress=progress,
        desc="PQ",
    )
    return stats.summarize()


def id_map_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """One image's predicted and GT id maps as numpy arrays: integer, (H, W), the same shape."""
    from pdl_post._cuda import as_host_numpy

    pred = as_host_numpy(pred, "pred")
    gt = as_host_numpy(gt, "gt")
    for name, a in (("pred", pred), ("gt", gt)):
        if a.ndim != 2:
            raise ValueError(f"{name}: expected shape (H, W), got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name}: expected an integer id map, got dtype {a.dtype}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred, gt: expected the same shape, got {pred.shape} and {gt.shape}")
    return pred, gt


class PanopticEvaluator:
    """PQ over ``merge``-style id maps in memory (no PNG round trip), for training/inference loops.

    Parameters
    ----------
    categories : list of dict or mapping
        COCO-style ``[{"id": class, "isthing": 0 or 1}, ...]`` or ``{class: isthing}``, where
        ``class = id // label_divisor``; the order sets the order of ``per_class``.
    label_divisor : int
        ``id = class * label_divisor + instance``.
    void_label : int
        Id of void pixels in both maps (GT void is left out of the union; predicted void is no
        segment).
    gt_crowd : bool
        If true (default), a GT id ``class * label_divisor`` of a thing class (instance 0) is a
        crowd region, as Cityscapes' instance ids below 1000; if false it is an ordinary segment.

    Examples
    --------
    >>> ev = PanopticEvaluator([{"id": 0, "isthing": 0}, {"id": 11, "isthing": 1}])
    >>> for pred, gt in batches:           # doctest: +SKIP
    ...     ev.update(pred, gt)
    >>> ev.compute()["All"]["pq"]          # doctest: +SKIP
    """

    def __init__(
        self, categories, *, label_divisor: int = 1000, void_label: int = -1, gt_crowd: bool = True
    ):
        self.categories = normalize_categories(categories)
        if isinstance(label_divisor, bool) or not isinstance(label_divisor, (int, np.integer)):
            raise TypeError(f"label_divisor: expected an int, got {type(label_divisor).__name__}")
        if label_divisor < 1:
            raise ValueError(f"label_divisor: expected >= 1, got {label_divisor}")
        if isinstance(void_label, bool) or not isinstance(void_label, (int, np.integer)):
            raise TypeError(f"void_label: expected an int, got {type(void_label).__name__}")
        self.label_divisor = int(label_divisor)
        self.void_label = int(void_label)
        self.gt_crowd = bool(gt_crowd)
        ids = np.array(self.categories[0], np.int64)
        self._cat_ids = ids
        self._isthing = np.array(self.categories[1], bool)
        self.stats = PQStats(self.categories)
        self.num_images = 0

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.stats = PQStats(self.categories)
        self.num_images = 0

    def _segments(self, ids: np.ndarray, counts: np.ndarray, what: str):
        """Unique non-void ids, their pixel counts and category indices."""
        uniq, inv = np.unique(ids, return_inverse=True)
        area = np.zeros(uniq.size, np.int64)
        np.add.at(area, inv, counts)
        keep = uniq != self.void_label
        uniq, area = uniq[keep], area[keep]
        if uniq.size and uniq[0] < 0:
            raise ValueError(
                f"{what}: expected ids >= 0 or void_label={self.void_label}, got {int(uniq[0])}"
            )
        cls = uniq // self.label_divisor
        cat = _lookup(self._cat_ids, cls)
        if np.any(cat < 0):
            k = int(np.flatnonzero(cat < 0)[0])
            raise ValueError(
                f"{what}: id {int(uniq[k])} has class {int(cls[k])} (id // label_divisor), which is "
                f"not among the categories {list(self.categories[0])}"
            )
        return uniq, area, cat

    def image_stats(self, pred, gt) -> PQStats:
        """Statistics of one image pair ``(H, W)`` without adding them (see :meth:`update`)."""
        pred, gt = id_map_pair(pred, gt)
        stats = PQStats(self.categories)
        pairs = pair_counts(gt, pred)
        g, p, c = pairs
        gt_ids, gt_area, gt_cat = self._segments(g, c, "gt")
        pred_ids, pred_area, pred_cat = self._segments(p, c, "pred")
        if self.gt_crowd:
            gt_crowd = self._isthing[gt_cat] & (gt_ids % self.label_divisor == 0)
        else:
            gt_crowd = np.zeros(gt_ids.size, bool)
        accumulate_image(
            stats,
            pairs,
            gt_ids,
            gt_cat,
            gt_crowd,
            gt_area,
            pred_ids,
            pred_cat,
            pred_area,
            self.void_label,
            "image",
        )
        return stats

    def update(self, pred, gt) -> PQStats:
        """Add one image pair, or a batch.

        Parameters
        ----------
        pred, gt : array_like of int, shape (H, W) or (B, H, W)
            ``merge``-style id maps: numpy arrays, torch tensors or CuPy arrays (CUDA ones, as
            the CUDA path returns them, are copied to the host).

        Returns
        -------
        PQStats
            The statistics of the given image(s) alone.
        """
        from pdl_post._cuda import as_host_numpy

        pred = as_host_numpy(pred, "pred")
        gt = as_host_numpy(gt, "gt")
        if pred.ndim == 3 and gt.ndim == 3:
            if pred.shape[0] != gt.shape[0]:
                raise ValueError(f"pred, gt: batch sizes differ: {pred.shape[0]} and {gt.shape[0]}")
            total = PQStats(self.categories)
            for b in range(pred.shape[0]):
                total += self.image_stats(pred[b], gt[b])
            self.stats += total
            self.num_images += pred.shape[0]
            return total
        s = self.image_stats(pred, gt)
        self.stats += s
        self.num_images += 1
        return s

    def add_stats(self, stats: PQStats) -> None:
        """Add statistics computed elsewhere (another process or machine)."""
        self.stats += stats

    def compute(self) -> dict:
        """The ``pq_compute``-style result over every image added so far."""
        return self.stats.summarize()
