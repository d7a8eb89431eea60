"""Post-processing presets of the paper's data sets, in one place.

Each preset is a :class:`Preset` whose :meth:`Preset.kwargs` can be splatted into
:func:`pdl_post.merge` / :func:`pdl_post.postprocess`::

    pdl_post.merge(sem, ctr, off, **pdl_post.presets.COCO.kwargs())
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["CITYSCAPES", "COCO", "MAPILLARY_VISTAS", "PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """Parameters of ``merge`` for one data set (DESIGN §3; the paper's settings)."""

    name: str
    thing_ids: tuple[int, ...]
    label_divisor: int = 1000
    stuff_area: int = 2048
    void_label: int = -1
    threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int | None = 200

    def kwargs(self) -> dict:
        """The keyword arguments of :func:`pdl_post.merge` (everything but ``name``)."""
        d = asdict(self)
        del d["name"]
        return d


#: Cityscapes train ids: 19 classes, things are 11..18 (person .. bicycle).
CITYSCAPES = Preset("cityscapes", thing_ids=tuple(range(11, 19)))

#: COCO panoptic with contiguous ids (133 classes): the 80 thing classes come first (0..79).
COCO = Preset("coco", thing_ids=tuple(range(80)), nms_kernel=41, stuff_area=4096)

#: Mapillary Vistas v1.2 contiguous ids (65 classes): the 37 classes annotated with instances
#: ("instances": true in the data set's config_v1.2; Pothole, On Rails, Car Mount and Ego Vehicle are not).
MAPILLARY_VISTAS = Preset(
    "mapillary_vistas",
    thing_ids=(0, 1, 8, 19, 20, 21, 22, 23, *range(32, 43), *range(44, 58), *range(59, 63)),
    stuff_area=4096,
)

PRESETS = {p.name: p for p in (CITYSCAPES, COCO, MAPILLARY_VISTAS)}
