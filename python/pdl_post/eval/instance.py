"""Instance-level AP over ``merge``-style id maps in memory, for any set of thing classes.

The AP is cityscapesScripts' (``evalInstanceLevelSemanticLabeling.py``): per class and overlap
threshold (0.5:0.95:0.05), predictions ranked by confidence are matched to GT instances of the same
class with IoU above the threshold (the best-scored one is the true positive, the others false
positives); unmatched predictions whose pixels lie mostly (more than the threshold) on void, on
crowd regions or on GT instances below the minimum size are ignored; AP is the area under the
interpolated precision-recall curve. The same function (:func:`pdl_post.eval.cityscapes.class_ap`)
computes :func:`pdl_post.eval.cityscapes_instance`, whose results match the official tool.

Here GT and predictions are id maps (``class * label_divisor + instance``) instead of Cityscapes
files: a GT id ``class * label_divisor`` of a thing class is a crowd region (Cityscapes' "group");
a predicted segment of a thing class with instance > 0 is one detection, scored by ``scores``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from pdl_post._inputs import check_int
from pdl_post.eval._kernels import pair_counts
from pdl_post.eval.cityscapes import OVERLAPS, class_ap
from pdl_post.eval.panoptic import id_map_pair

__all__ = ["InstanceEvaluator"]


class InstanceEvaluator:
    """Instance-level AP / AP50 (cityscapesScripts' definition) over panoptic id maps.

    Parameters
    ----------
    thing_ids : iterable of int
        The thing classes (``class = id // label_divisor``) to evaluate; their order sets the order
        of ``per_class`` and of the rows of ``ap_matrix``.
    label_divisor : int
        ``id = class * label_divisor + instance``.
    void_label : int
        Id of void pixels in the GT (predictions on them are ignored rather than false) and of
        unlabelled pixels in the predictions.
    min_region_size : int
        GT instances with fewer pixels are neither matched nor missed (Cityscapes: 100).
    gt_crowd : bool
        If true (default), a GT id ``class * label_divisor`` of a thing class is a crowd region
        (Cityscapes' groups): never a GT instance, and predictions on it are ignored.

    Examples
    --------
    >>> ev = InstanceEvaluator([11, 13], label_divisor=1000)
    >>> for result, gt in zip(results, gts):                # doctest: +SKIP
    ...     ev.update(result.panoptic, gt, scores={s["id"]: s["score"] for s in result.segments})
    >>> ev.compute()["ap"]                                  # doctest: +SKIP
    """

    def __init__(
        self,
        thing_ids: Iterable[int],
        *,
        label_divisor: int = 1000,
        void_label: int = -1,
        min_region_size: int = 100,
        gt_crowd: bool = True,
    ) -> None:
        if not isinstance(thing_ids, Iterable) or isinstance(thing_ids, (str, bytes)):
            raise TypeError(
                f"thing_ids: expected an iterable of ints, got {type(thing_ids).__name__}"
            )
        self.thing_ids = [check_int(t, "thing_ids", minimum=0) for t in thing_ids]
        if len(set(self.thing_ids)) != len(self.thing_ids):
            raise ValueError(f"thing_ids: expected unique class ids, got {self.thing_ids}")
        self.label_divisor = check_int(label_divisor, "label_divisor", minimum=1)
        self.void_label = check_int(void_label, "void_label")
        self.min_region_size = check_int(min_region_size, "min_region_size", minimum=0)
        self.gt_crowd = bool(gt_crowd)
        self.images: list[list[tuple]] = []

    @property
    def num_images(self) -> int:
        return len(self.images)

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.images = []

    def update(self, pred, gt, scores: Mapping[int, float] | None = None) -> None:
        """Add one image.

        Parameters
        ----------
        pred, gt : array_like of int, shape (H, W)
            Predicted and GT id maps: numpy arrays, torch tensors or CuPy arrays (CUDA ones
            are copied to the host).
        scores : mapping of int to float, optional
            Confidence of each predicted thing segment id (e.g. ``{s["id"]: s["score"]}`` from
            ``pdl_post.postprocess``'s segments). Without it every detection scores 1.0 (AP
            then ranks them as ties). Ids of predicted thing segments missing from it raise.
        """
        pred, gt = id_map_pair(pred, gt)
        if scores is not None and not isinstance(scores, Mapping):
            raise TypeError(f"scores: expected a mapping id -> score, got {type(scores).__name__}")
        self.images.append(self._image_records(pred, gt, scores))

    def _image_records(self, pred: np.ndarray, gt: np.ndarray, scores) -> list[tuple]:
        """One ``class_ap`` record per thing class (see :func:`class_ap`)."""
        g, p, inter = pair_counts(gt, pred)
        div, void = self.label_divisor, self.void_label
        gt_ids, gt_inv = np.unique(g, return_inverse=True)
        gt_area = np.bincount(gt_inv, weights=inter, minlength=gt_ids.size).astype(np.int64)
        pred_ids, pred_inv = np.unique(p, return_inverse=True)
        pred_area = np.bincount(pred_inv, weights=inter, minlength=pred_ids.size).astype(np.int64)
        on_void = np.bincount(
            pred_inv, weights=inter * (g == void), minlength=pred_ids.size
        ).astype(np.int64)
        gt_cls = np.where(gt_ids == void, -1, gt_ids // div)
        pred_cls = np.where(pred_ids == void, -1, pred_ids // div)
        records = []
        for c in self.thing_ids:
            gsel = np.flatnonzero(gt_cls == c)
            is_instance = (gt_ids[gsel] % div != 0) if self.gt_crowd else np.ones(gsel.size, bool)
            psel = np.flatnonzero((pred_cls == c) & (pred_ids % div != 0))
            conf = np.array([self._score(scores, int(i)) for i in pred_ids[psel]], np.float64)
            # Intersections of this class's predictions with this class's GT segments.
            gpos = np.full(gt_ids.size, -1, np.int64)
            gpos[gsel] = np.arange(gsel.size)
            ppos = np.full(pred_ids.size, -1, np.int64)
            ppos[psel] = np.arange(psel.size)
            pair_gt = gpos[gt_inv]
            pair_pred = ppos[pred_inv]
            hit = (pair_gt >= 0) & (pair_pred >= 0)
            records.append(
                (
                    is_instance,
                    gt_area[gsel],
                    conf,
                    pred_area[psel],
                    on_void[psel],
                    pair_pred[hit],
                    pair_gt[hit],
                    inter[hit].astype(np.int64),
                )
            )
        return records

    @staticmethod
    def _score(scores, segment_id: int) -> float:
        if scores is None:
            return 1.0
        try:
            value = float(scores[segment_id])
        except KeyError:
            raise ValueError(
                f"scores: no score for the predicted thing segment {segment_id}"
            ) from None
        if math.isnan(value):
            raise ValueError(f"scores: the score of segment {segment_id} is NaN")
        return value

    def ap_matrix(self) -> np.ndarray:
        """AP per thing class and overlap threshold, shape (len(thing_ids), 10); NaN for classes
        without GT instances."""
        ap = np.full((len(self.thing_ids), len(OVERLAPS)), np.nan)
        for ci in range(len(self.thing_ids)):
            recs = [img[ci] for img in self.images]
            for oi, th in enumerate(OVERLAPS):
                ap[ci, oi] = class_ap(recs, float(th), self.min_region_size)
        return ap

    def compute(self) -> dict:
        """``ap`` and ``ap50`` (means over the classes with GT), ``per_class``, ``ap_matrix``.

        Returns
        -------
        dict
            ``ap`` (mean over classes and overlaps 0.5:0.95), ``ap50``, ``per_class``
            (``{class: {"ap", "ap50"}}``), ``ap_matrix`` [C, 10], ``overlaps``, ``num_images``.
            NaN where no class has GT instances.
        """
        ap = self.ap_matrix()
        o50 = int(np.flatnonzero(np.isclose(OVERLAPS, 0.5))[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
            all_ap = float(np.nanmean(ap)) if ap.size else math.nan
            all_ap50 = float(np.nanmean(ap[:, o50])) if ap.size else math.nan
        return {
            "ap": all_ap,
            "ap50": all_ap50,
            "per_class": {
                c: {"ap": float(np.average(ap[k, :])), "ap50": float(ap[k, o50])}
                for k, c in enumerate(self.thing_ids)
            },
            "ap_matrix": ap,
            "overlaps": OVERLAPS.tolist(),
            "num_images": self.num_images,
        }
