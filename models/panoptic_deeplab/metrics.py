"""Evaluation: ``pdl_post.eval`` when it is available, else a small PQ / mIoU of our own.

The fallback follows the COCO panoptic API definition: a predicted and a ground-truth segment
of the same category match when IoU > 0.5 (IoU computed without the void pixels); unmatched
predictions covering more than 50 % void (or crowd of their category) are not counted as FP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Evaluator", "gt_to_panoptic_ids"]


def gt_to_panoptic_ids(
    sample: dict[str, Any], *, label_divisor: int, void_label: int, thing_ids
) -> np.ndarray:
    """Ground-truth sample -> ``class * label_divisor + instance`` ids (crowd/unlabelled: void)."""
    pan = sample["panoptic"]
    out = np.full(pan.shape, void_label, dtype=np.int64)
    things = set(int(t) for t in thing_ids)
    counter: dict[int, int] = {}
    for sid, cat, crowd in zip(
        sample["segment_ids"].tolist(), sample["category_ids"].tolist(), sample["iscrowd"].tolist()
    ):
        if crowd:
            continue
        if cat in things:
            counter[cat] = counter.get(cat, 0) + 1
            out[pan == sid] = cat * label_divisor + counter[cat]
        else:
            out[pan == sid] = cat * label_divisor
    return out


class _FallbackPQ:
    def __init__(self, categories, label_divisor: int, void_label: int) -> None:
        self.cats = {int(c["id"]): c for c in categories}
        self.div = label_divisor
        self.void = void_label
        n = max(self.cats) + 1
        self.iou = np.zeros(n)
        self.tp = np.zeros(n)
        self.fp = np.zeros(n)
        self.fn = np.zeros(n)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred, dtype=np.int64).reshape(-1)
        gt = np.asarray(gt, dtype=np.int64).reshape(-1)
        gt_void = gt == self.void
        pred_ids, pred_inv, pred_area = np.unique(pred, return_inverse=True, return_counts=True)
        gt_ids, gt_inv, gt_area = np.unique(gt, return_inverse=True, return_counts=True)
        pairs, inter = np.unique(
            gt_inv.astype(np.int64) * len(pred_ids) + pred_inv, return_counts=True
        )
        gi, pi = pairs // len(pred_ids), pairs % len(pred_ids)
        gvoid_idx = np.nonzero(gt_ids == self.void)[0]
        pred_void_overlap = np.zeros(len(pred_ids))
        if len(gvoid_idx):
            sel = gi == gvoid_idx[0]
            pred_void_overlap[pi[sel]] = inter[sel]
        matched_g, matched_p = set(), set()
        for g, p, n in zip(gi.tolist(), pi.tolist(), inter.tolist()):
            gid, pid = int(gt_ids[g]), int(pred_ids[p])
            if gid == self.void or pid == self.void or gid // self.div != pid // self.div:
                continue
            union = pred_area[p] + gt_area[g] - n - pred_void_overlap[p]
            iou = n / union
            if iou > 0.5:
                c = gid // self.div
                self.tp[c] += 1
                self.iou[c] += iou
                matched_g.add(g)
                matched_p.add(p)
        for g, gid in enumerate(gt_ids.tolist()):
            if gid != self.void and g not in matched_g and gid // self.div in self.cats:
                self.fn[gid // self.div] += 1
        for p, pid in enumerate(pred_ids.tolist()):
            if pid == self.void or p in matched_p:
                continue
            if pred_void_overlap[p] / pred_area[p] > 0.5:
                continue
            if pid // self.div in self.cats:
                self.fp[pid // self.div] += 1
        del gt_void

    def compute(self) -> dict[str, float]:
        res: dict[str, float] = {}
        for name, sel in (("", None), ("_th", 1), ("_st", 0)):
            pq = sq = rq = 0.0
            n = 0
            for c, cat in self.cats.items():
                if sel is not None and int(cat["isthing"]) != sel:
                    continue
                denom = self.tp[c] + 0.5 * self.fp[c] + 0.5 * self.fn[c]
                if denom == 0:
                    continue
                n += 1
                sq_c = self.iou[c] / self.tp[c] if self.tp[c] else 0.0
                rq_c = self.tp[c] / denom
                pq += sq_c * rq_c
                sq += sq_c
                rq += rq_c
            res["pq" + name] = pq / n if n else 0.0
            res["sq" + name] = sq / n if n else 0.0
            res["rq" + name] = rq / n if n else 0.0
        return res


def _scalars(obj) -> dict[str, float]:
    """Flat ``{lower-case name: float}`` of the scalar entries of a dict / dataclass result."""
    import dataclasses

    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    elif not isinstance(obj, dict):
        obj = dict(vars(obj))
    return {
        str(k).lower(): float(v)
        for k, v in obj.items()
        if np.isscalar(v) and not isinstance(v, str)
    }


class Evaluator:
    """PQ (+ SQ/RQ, things/stuff), mIoU and, with ``pdl_post.eval`` and ``thing_ids``, AP.

    ``update(pred_panoptic, gt_panoptic, pred_semantic, gt_semantic, scores)`` with panoptic ids
    in the ``class * label_divisor + instance`` format; ``scores`` maps predicted thing segment
    ids to their confidence (AP ranks detections by it).
    """

    def __init__(
        self,
        categories,
        *,
        label_divisor: int,
        void_label: int,
        ignore_label: int,
        thing_ids=None,
        min_instance_area: int = 100,
    ) -> None:
        self.categories = list(categories)
        self.num_classes = len(self.categories)
        self.ignore_label = ignore_label
        self.backend = "fallback"
        self._pq: Any
        self._sem: Any = None
        self._ap: Any = None
        try:
            from pdl_post import eval as pe  # type: ignore[attr-defined]

            self._pq = pe.PanopticEvaluator(
                self.categories, label_divisor=label_divisor, void_label=void_label
            )
            self._sem = pe.SemanticEvaluator(self.num_classes, ignore_label=ignore_label)
            if thing_ids is not None:
                self._ap = pe.InstanceEvaluator(
                    thing_ids,
                    label_divisor=label_divisor,
                    void_label=void_label,
                    min_region_size=min_instance_area,
                )
            self.backend = "pdl_post.eval"
        except (ImportError, AttributeError, TypeError):
            self._pq = _FallbackPQ(self.categories, label_divisor, void_label)
        self.conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred_pan, gt_pan, pred_sem=None, gt_sem=None, scores=None) -> None:
        self._pq.update(np.asarray(pred_pan), np.asarray(gt_pan))
        if self._ap is not None:
            self._ap.update(np.asarray(pred_pan), np.asarray(gt_pan), scores)
        if pred_sem is not None and gt_sem is not None:
            if self._sem is not None:
                self._sem.update(np.asarray(pred_sem), np.asarray(gt_sem))
            else:
                p = np.asarray(pred_sem).reshape(-1)
                g = np.asarray(gt_sem).reshape(-1)
                keep = (g != self.ignore_label) & (g >= 0) & (g < self.num_classes)
                self.conf += np.bincount(
                    g[keep] * self.num_classes + p[keep], minlength=self.num_classes**2
                ).reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        raw = dict(self._pq.compute())
        if "All" in raw:  # pdl_post.eval: the pq_compute-style result of the official tools
            res = {
                metric + suffix: float(raw[group][metric])
                for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))
                for metric in ("pq", "sq", "rq")
            }
        else:
            res = {k: float(v) for k, v in raw.items() if np.isscalar(v)}
        if self._sem is not None:
            res.update(
                {k: float(v) for k, v in dict(self._sem.compute()).items() if np.isscalar(v)}
            )
        else:
            tp = np.diag(self.conf).astype(np.float64)
            union = self.conf.sum(0) + self.conf.sum(1) - tp
            valid = union > 0
            res["miou"] = float((tp[valid] / union[valid]).mean()) if valid.any() else 0.0
        if self._ap is not None:
            ap = self._ap.compute()
            res["ap"], res["ap50"] = ap["ap"], ap["ap50"]
        res["eval_backend"] = self.backend  # type: ignore[assignment]
        return res
