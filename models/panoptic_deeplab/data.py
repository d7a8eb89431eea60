"""Data sets (synthetic, COCO-panoptic format, histolytics H&E) and training transforms.

Every data set yields samples::

    {"image": uint8 [H, W, 3], "panoptic": int64 [H, W] segment ids (-1 = unlabelled),
     "segment_ids": int64 [S], "category_ids": int64 [S] (contiguous train ids),
     "iscrowd": int64 [S], "name": str}

and has ``categories`` (list of ``{"id", "name", "isthing"}`` with contiguous train ids) and
``thing_ids``. :class:`TrainTransform` augments (random scale, crop, flip) and computes the
training targets with :func:`panoptic_deeplab.targets.panoptic_targets`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .targets import panoptic_targets

__all__ = [
    "MEAN",
    "STD",
    "CocoPanoptic",
    "EvalTransform",
    "SyntheticPanoptic",
    "TrainTransform",
    "build_dataset",
    "collate",
    "normalize",
]

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] normalised with the ImageNet mean / std."""
    x = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------------
# Synthetic scenes
# --------------------------------------------------------------------------------------

SYNTHETIC_CATEGORIES = [
    {"id": 0, "name": "ground", "isthing": 0},
    {"id": 1, "name": "sky", "isthing": 0},
    {"id": 2, "name": "wall", "isthing": 0},
    {"id": 3, "name": "disc", "isthing": 1},
    {"id": 4, "name": "box", "isthing": 1},
]

_STUFF_COLORS = np.array([[90, 140, 60], [120, 170, 230], [150, 110, 90]], dtype=np.float32)
_THING_COLORS = np.array([[230, 60, 50], [250, 210, 40]], dtype=np.float32)


class SyntheticPanoptic(Dataset):
    """Seeded synthetic scenes: textured discs and boxes (things) on textured stuff bands.

    Image ``index`` is generated from ``(seed, index)`` alone, so splits with different seeds
    are disjoint and every run sees the same data. Things never overlap (they keep a gap of
    ``gap`` pixels), sizes and counts are drawn per image.
    """

    categories = SYNTHETIC_CATEGORIES
    thing_ids = (3, 4)

    def __init__(
        self,
        *,
        num_images: int = 200,
        height: int = 128,
        width: int = 128,
        seed: int = 0,
        min_things: int = 2,
        max_things: int = 6,
        min_radius: int = 7,
        max_radius: int = 18,
        gap: int = 4,
        noise: float = 12.0,
    ) -> None:
        self.num_images = num_images
        self.size = (height, width)
        self.seed = seed
        self.things = (min_things, max_things)
        self.radius = (min_radius, max_radius)
        self.gap = gap
        self.noise = noise

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        H, W = self.size
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        # --- stuff: two wavy horizontal boundaries split the image into up to 3 bands
        order = rng.permutation(3)
        b1 = rng.uniform(0.25, 0.45) * H + rng.uniform(3, 10) * np.sin(
            xx[0] / rng.uniform(8, 30) + rng.uniform(0, 6.3)
        )
        b2 = rng.uniform(0.6, 0.8) * H + rng.uniform(3, 10) * np.sin(
            xx[0] / rng.uniform(8, 30) + rng.uniform(0, 6.3)
        )
        band = (yy > b1[None]).astype(np.int64) + (yy > b2[None]).astype(np.int64)
        stuff_cls = order[band]
        img = _STUFF_COLORS[stuff_cls] + rng.uniform(-25, 25, size=3).astype(np.float32)
        # class-specific textures
        tex = np.stack(
            [
                8 * np.sin(xx / 2.0 + yy / 3.0),  # ground: diagonal ripples
                6 * np.sin(yy / 6.0),  # sky: soft horizontal bands
                10 * ((xx // 6 + yy // 6) % 2) - 5,  # wall: checker
            ]
        ).astype(np.float32)
        img += np.take_along_axis(tex, stuff_cls[None], 0)[0][..., None]
        panoptic = stuff_cls * 1000
        # --- things
        n = int(rng.integers(self.things[0], self.things[1] + 1))
        placed: list[tuple[float, float, float]] = []
        k = 0
        for _ in range(n * 20):
            if k >= n:
                break
            r = float(rng.uniform(*self.radius))
            cy, cx = float(rng.uniform(0, H)), float(rng.uniform(0, W))
            if any(
                math.hypot(cy - py, cx - px) < (r + pr) * 1.42 + self.gap for py, px, pr in placed
            ):
                continue
            cls = int(rng.integers(0, 2))
            if cls == 0:
                ry, rx = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.0)
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            else:
                hy, hx = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
                mask = (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)
            if mask.sum() < 16:
                continue
            placed.append((cy, cx, r))
            k += 1
            color = _THING_COLORS[cls] + rng.uniform(-30, 30, size=3).astype(np.float32)
            shade = 1.0 - 0.25 * np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
            img[mask] = color * shade[mask][:, None]
            panoptic[mask] = (3 + cls) * 1000 + k
        img += rng.normal(0, self.noise, size=img.shape).astype(np.float32)
        image = np.clip(img, 0, 255).astype(np.uint8)
        ids = np.unique(panoptic)
        return {
            "image": image,
            "panoptic": panoptic.astype(np.int64),
            "segment_ids": ids.astype(np.int64),
            "category_ids": (ids // 1000).astype(np.int64),
            "iscrowd": np.zeros(len(ids), dtype=np.int64),
            "name": f"synthetic_{self.seed}_{index:05d}",
        }


# --------------------------------------------------------------------------------------
# COCO-panoptic format (COCO, Cityscapes after cityscapesScripts' conversion, Vistas)
# --------------------------------------------------------------------------------------


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO-panoptic PNG colour -> segment id (``R + 256 G + 256^2 B``)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class CocoPanoptic(Dataset):
    """A COCO-panoptic-format data set: ``image_dir``, ``panoptic_dir`` of PNGs and a JSON.

    Category ids are mapped to contiguous train ids in the order of ``categories`` in the
    JSON (sorted by id). Image files are looked up by the JSON ``file_name`` of the image
    entry (``images``), the PNG by the annotation's ``file_name``.
    """

    def __init__(self, *, image_dir: str, panoptic_dir: str, json_file: str) -> None:
        from PIL import Image  # noqa: F401  (fail early if Pillow is missing)

        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir)
        with open(json_file) as f:
            meta = json.load(f)
        cats = sorted(meta["categories"], key=lambda c: c["id"])
        self.cat_to_train = {c["id"]: i for i, c in enumerate(cats)}
        self.categories = [
            {"id": i, "name": c["name"], "isthing": int(c.get("isthing", 0))}
            for i, c in enumerate(cats)
        ]
        self.thing_ids = tuple(c["id"] for c in self.categories if c["isthing"])
        images = {im["id"]: im for im in meta.get("images", [])}
        self.items = []
        for ann in meta["annotations"]:
            im = images.get(ann["image_id"], {})
            name = im.get("file_name") or Path(ann["file_name"]).with_suffix(".jpg").name
            self.items.append((name, ann))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        name, ann = self.items[index]
        with Image.open(self.image_dir / name) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(self.panoptic_dir / ann["file_name"]) as im:
            pan = rgb_to_id(np.asarray(im.convert("RGB")))
        segs = ann["segments_info"]
        seg_ids = np.array([s["id"] for s in segs], dtype=np.int64)
        labelled = np.isin(pan, seg_ids)
        pan = np.where(labelled, pan, -1)
        return {
            "image": image,
            "panoptic": pan,
            "segment_ids": seg_ids,
            "category_ids": np.array(
                [self.cat_to_train[s["category_id"]] for s in segs], dtype=np.int64
            ),
            "iscrowd": np.array([s.get("iscrowd", 0) for s in segs], dtype=np.int64),
            "name": Path(name).stem,
        }


# --------------------------------------------------------------------------------------
# histolytics H&E tile (optional, offline from the installed wheel)
# --------------------------------------------------------------------------------------


class HistolyticsHE(Dataset):
    """Tiles of the H&E image with nuclei labels shipped inside the ``histolytics`` wheel.

    ``hgsc_nest.jpg`` (1500 x 1500, HGSC tumour nest, ~1.3k nuclei; BSD-3-Clause, HautaniemiLab)
    with ``hgsc_nest_inst_mask.npz`` / ``hgsc_nest_type_mask.npz``. The image is split into a
    top (``train``) and bottom (``val``) region, cut into ``tile`` x ``tile`` crops. Nucleus
    types 1..3 are things (class = majority type of the nucleus); background is stuff class 0.
    Needs the wheel installed (``pip install --no-deps histolytics`` is enough: only its data
    files are read, with numpy / Pillow) or ``data_dir``.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        tile: int = 256,
        val_fraction: float = 0.25,
        data_dir: str | None = None,
    ) -> None:
        image, inst, cls = _load_histolytics(data_dir)
        H = image.shape[0]
        cut = int(H * (1 - val_fraction))
        rows = (0, cut) if split == "train" else (cut, H)
        nclass = int(cls.max()) + 1
        self.categories = [{"id": 0, "name": "background", "isthing": 0}] + [
            {"id": c, "name": f"nucleus_{c}", "isthing": 1} for c in range(1, nclass)
        ]
        self.thing_ids = tuple(range(1, nclass))
        self.tiles = []
        for y in range(rows[0], rows[1] - tile + 1, tile):
            for x in range(0, image.shape[1] - tile + 1, tile):
                self.tiles.append((y, x))
        self.image, self.inst, self.cls, self.tile = image, inst, cls, tile

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, Any]:
        y, x = self.tiles[index]
        t = self.tile
        inst = self.inst[y : y + t, x : x + t].astype(np.int64)
        cls = self.cls[y : y + t, x : x + t].astype(np.int64)
        pan = np.where(inst > 0, inst + 1, 0)  # segment 0 = background stuff
        ids = np.unique(pan)
        cats = np.zeros(len(ids), dtype=np.int64)
        for i, s in enumerate(ids.tolist()):
            if s > 0:
                vals, counts = np.unique(cls[pan == s], return_counts=True)
                cats[i] = max(int(vals[np.argmax(counts)]), 1)
        return {
            "image": self.image[y : y + t, x : x + t],
            "panoptic": pan,
            "segment_ids": ids,
            "category_ids": cats,
            "iscrowd": np.zeros(len(ids), dtype=np.int64),
            "name": f"he_{y}_{x}",
        }


def _load_histolytics(data_dir: str | Path | None = None):
    """``(image uint8 [1500, 1500, 3], instance int32 map, class int32 map)`` of the HGSC nest.

    Read straight from the files of the installed ``histolytics`` wheel (found without
    importing it, so its heavy dependencies are not needed) or from ``data_dir``.
    """
    from PIL import Image

    if data_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("histolytics")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "the histolytics data set needs the histolytics wheel "
                "(`pip install --no-deps histolytics`) or data_dir=<folder with its data files>"
            )
        data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    d = Path(data_dir)
    with Image.open(d / "hgsc_nest.jpg") as im:
        image = np.asarray(im.convert("RGB"))
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    cls = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"]
    return image, inst, cls


def build_dataset(cfg: dict[str, Any], split: str) -> Dataset:
    """Build ``cfg["data"][split]`` (``train`` / ``val``): ``{"type": ..., **kwargs}``."""
    spec = dict(cfg["data"][split])
    kind = spec.pop("type")
    if kind == "synthetic":
        return SyntheticPanoptic(**spec)
    if kind == "coco_panoptic":
        return CocoPanoptic(**spec)
    if kind == "histolytics":
        return HistolyticsHE(split=split, **spec)
    raise ValueError(
        f"data type must be 'synthetic', 'coco_panoptic' or 'histolytics', got {kind!r}"
    )


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------


def _resize(image: np.ndarray, panoptic: np.ndarray, scale: float):
    H, W = panoptic.shape
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    if (h, w) == (H, W):
        return image, panoptic
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
    img = img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    pan = torch.from_numpy(np.ascontiguousarray(panoptic))[None, None].double()
    pan = F.interpolate(pan, size=(h, w), mode="nearest")[0, 0].long().numpy()
    return img, pan


class TrainTransform:
    """Random scale, random crop (padding with unlabelled pixels), random flip; targets."""

    def __init__(
        self,
        *,
        thing_ids,
        crop: tuple[int, int] = (128, 128),
        min_scale: float = 0.5,
        max_scale: float = 2.0,
        flip: bool = True,
        ignore_label: int = 255,
        sigma: float = 8.0,
        small_instance_area: int = 4096,
        small_instance_weight: float = 3.0,
    ) -> None:
        self.thing_ids = tuple(thing_ids)
        self.crop = tuple(crop)
        self.scale = (min_scale, max_scale)
        self.flip = flip
        self.target_kw = {
            "thing_ids": self.thing_ids,
            "ignore_label": ignore_label,
            "sigma": sigma,
            "small_instance_area": small_instance_area,
            "small_instance_weight": small_instance_weight,
        }

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image, pan = sample["image"], sample["panoptic"]
        image, pan = _resize(image, pan, float(rng.uniform(*self.scale)))
        ch, cw = self.crop
        H, W = pan.shape
        ph, pw = max(ch - H, 0), max(cw - W, 0)
        if ph or pw:
            fill = (MEAN * 255).round().astype(np.uint8)
            image = (
                np.concatenate([image, np.broadcast_to(fill, (H, pw, 3))], axis=1) if pw else image
            )
            image = (
                np.concatenate([image, np.broadcast_to(fill, (ph, W + pw, 3))], axis=0)
                if ph
                else image
            )
            pan = np.pad(pan, ((0, ph), (0, pw)), constant_values=-1)
            H, W = pan.shape
        y = int(rng.integers(0, H - ch + 1))
        x = int(rng.integers(0, W - cw + 1))
        image = image[y : y + ch, x : x + cw]
        pan = pan[y : y + ch, x : x + cw]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            pan = pan[:, ::-1]
        pan = np.ascontiguousarray(pan)
        t = panoptic_targets(
            pan, sample["segment_ids"], sample["category_ids"], sample["iscrowd"], **self.target_kw
        )
        out = {"image": normalize(image)}
        for k, v in t.items():
            out[k] = torch.from_numpy(v)
        return out


class EvalTransform:
    """Normalise the image; keep the ground truth for evaluation."""

    def __call__(self, sample: dict[str, Any], rng=None) -> dict[str, Any]:
        out = dict(sample)
        out["image"] = normalize(sample["image"])
        return out


class TransformedDataset(Dataset):
    """Applies a transform with a per-(epoch, index) seeded generator (reproducible)."""

    def __init__(self, base: Dataset, transform, *, seed: int = 0) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.transform(self.base[index], rng)


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack training samples into a batch."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
