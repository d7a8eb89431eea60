"""In-memory semantic segmentation evaluation (confusion matrix, IoU, accuracy)."""

from __future__ import annotations

import math

import numpy as np

from pdl_post.eval._kernels import pair_counts


class SemanticStats:
    """A confusion matrix (rows: GT class, columns: predicted class), mergeable with ``+``.

    Attributes
    ----------
    confusion : numpy.ndarray of int64, shape (C, C)
    """

    __slots__ = ("confusion",)

    def __init__(self, num_classes: int, confusion=None):
        if confusion is None:
            self.confusion = np.zeros((num_classes, num_classes), np.int64)
        else:
            self.confusion = np.array(confusion, np.int64)
            if self.confusion.shape != (num_classes, num_classes):
                raise ValueError(
                    f"confusion: expected shape {(num_classes, num_classes)}, got {self.confusion.shape}"
                )

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[0]

    def __iadd__(self, other: SemanticStats) -> SemanticStats:
        if not isinstance(other, SemanticStats):
            raise TypeError(f"can only add SemanticStats, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot add statistics of {other.num_classes} and {self.num_classes} classes"
            )
        self.confusion += other.confusion
        return self

    def __add__(self, other: SemanticStats) -> SemanticStats:
        out = SemanticStats(self.num_classes, self.confusion)
        out += other
        return out

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:
            return SemanticStats(self.num_classes, self.confusion)
        return NotImplemented

    def __eq__(self, other) -> bool:
        if not isinstance(other, SemanticStats):
            return NotImplemented
        return np.array_equal(self.confusion, other.confusion)

    __hash__ = None

    def __getstate__(self):
        return self.confusion

    def __setstate__(self, state):
        self.confusion = state

    def to_dict(self) -> dict:
        return {"num_classes": self.num_classes, "confusion": self.confusion.tolist()}

    @classmethod
    def from_dict(cls, d) -> SemanticStats:
        return cls(int(d["num_classes"]), d["confusion"])

    def summarize(self) -> dict:
        """Scores from the confusion matrix.

        Returns
        -------
        dict
            ``"miou"``: mean IoU over classes with GT or predicted pixels;
            ``"per_class_iou"`` (C,) list, NaN for classes with neither; ``"pixel_accuracy"``;
            ``"mean_accuracy"``: mean recall over classes with GT pixels; ``"fwiou"``:
            frequency-weighted IoU; ``"confusion"``.
        """
        conf = self.confusion.astype(np.float64)
        tp = np.diag(conf)
        gt = conf.sum(axis=1)
        pred = conf.sum(axis=0)
        union = gt + pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        total = gt.sum()
        valid = union > 0
        return {
            "miou": float(iou[valid].mean()) if valid.any() else math.nan,
            "per_class_iou": [float(v) for v in iou],
            "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
            "mean_accuracy": float(acc[gt > 0].mean()) if (gt > 0).any() else math.nan,
            "fwiou": float((gt[valid] / total * iou[valid]).sum()) if total else math.nan,
            "confusion": self.confusion.copy(),
        }


class SemanticEvaluator:
    """Semantic segmentation metrics over label maps in memory.

    Parameters
    ----------
    num_classes : int
        Classes 0 .. num_classes - 1.
    ignore_label : int, optional
        GT value of pixels left out (255 by default; None for none). Predicted values must be
        classes.

    Examples
    --------
    >>> ev = SemanticEvaluator(19, ignore_label=255)
    >>> ev.update(pred, gt)             # doctest: +SKIP
    >>> ev.compute()["miou"]            # doctest: +SKIP
    """

    def __init__(self, num_classes: int, ignore_label: int | None = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError(f"num_classes: expected an int, got {type(num_classes).__name__}")
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if ignore_label is not None and (
            isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer))
        ):
            raise TypeError(
                f"ignore_label: expected an int or None, got {type(ignore_label).__name__}"
            )
        if ignore_label is not None and 0 <= ignore_label < num_classes:
            raise ValueError(
                f"ignore_label: expected a value outside 0..{num_classes - 1}, got {ignore_label}"
            )
        self.num_classes = int(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.stats = SemanticStats(self.num_classes)
        self.num_images = 0

    def reset(self) -> None:
        self.stats = SemanticStats(self.num_classes)
        self.num_images = 0

    def image_stats(self, pred, gt) -> SemanticStats:
        """The confusion matrix of one pair (any equal shapes) without adding it."""
        from pdl_post._cuda import as_host_numpy

        pred = as_host_numpy(pred, "pred")
        gt = as_host_numpy(gt, "gt")
        for name, a in (("pred", pred), ("gt", gt)):
            if not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"{name}: expected an integer label map, got dtype {a.dtype}")
        if pred.shape != gt.shape:
            raise ValueError(f"pred, gt: expected the same shape, got {pred.shape} and {gt.shape}")
        g, p, c = pair_counts(gt, pred)
        if self.ignore_label is not None:
            keep = g != self.ignore_label
            g, p, c = g[keep], p[keep], c[keep]
        n = self.num_classes
        bad = (g < 0) | (g >= n)
        if bad.any():
            raise ValueError(
                f"gt: expected labels in 0..{n - 1} or ignore_label={self.ignore_label}, got {int(g[bad][0])}"
            )
        bad = (p < 0) | (p >= n)
        if bad.any():
            raise ValueError(
                f"pred: expected labels in 0..{n - 1} where gt is not ignored, got {int(p[bad][0])}"
            )
        stats = SemanticStats(n)
        np.add.at(stats.confusion, (g, p), c)
        return stats

    def update(self, pred, gt) -> SemanticStats:
        """Add one pair of label maps (or a batch: any shape, the same for both).

        Parameters
        ----------
        pred, gt : array_like of int
            Label maps: numpy arrays, torch tensors or CuPy arrays (CUDA ones are copied to the
            host).

        Returns
        -------
        SemanticStats
            The statistics of the given pixels alone.
        """
        s = self.image_stats(pred, gt)
        self.stats += s
        self.num_images += 1
        return s

    def add_stats(self, stats: SemanticStats) -> None:
        """Add statistics computed elsewhere (another process or machine)."""
        self.stats += stats

    def compute(self) -> dict:
        """See :meth:`SemanticStats.summarize`."""
        return self.stats.summarize()
