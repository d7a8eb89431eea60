"""Evaluation: panoptic quality, Cityscapes pixel- and instance-level metrics.

The numbers are those of the official tools (panopticapi / cityscapesScripts), computed with
compiled kernels (``pdl_post._eval_kernels``, ``pdl_post._png``):

- :func:`pq_compute`: PQ / SQ / RQ from COCO-panoptic PNG + JSON files;
- :func:`cityscapes_pixel`: Cityscapes pixel-level IoU / iIoU (classes and categories);
- :func:`cityscapes_instance`: Cityscapes instance-level AP / AP50;
- :class:`PanopticEvaluator`, :class:`SemanticEvaluator`, :class:`InstanceEvaluator` (AP for any
  thing classes): in-memory evaluators for training and inference loops.

Per-image statistics (:class:`PQStats`, :class:`SemanticStats`, :class:`CityscapesPixelStats`,
:class:`CityscapesInstanceStats`) are plain objects that add up with ``+``, so ``workers=N`` runs a
process pool and statistics can be reduced across machines.
"""

from pdl_post.eval.cityscapes import (
    CityscapesInstanceStats,
    CityscapesPixelStats,
    cityscapes_instance,
    cityscapes_pixel,
)
from pdl_post.eval.instance import InstanceEvaluator
from pdl_post.eval.panoptic import PanopticEvaluator, PQStats, pq_compute
from pdl_post.eval.semantic import SemanticEvaluator, SemanticStats

__all__ = [
    "CityscapesInstanceStats",
    "CityscapesPixelStats",
    "InstanceEvaluator",
    "PQStats",
    "PanopticEvaluator",
    "SemanticEvaluator",
    "SemanticStats",
    "cityscapes_instance",
    "cityscapes_pixel",
    "pq_compute",
]
