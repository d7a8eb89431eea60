"""Reading and writing panoptic data: PNG, COCO-panoptic PNG + JSON, Cityscapes ids.

- PNG: :func:`read_png` / :func:`write_png` need no Pillow for the common label-map formats
  (8-bit gray, gray+alpha, RGB, RGBA; 16-bit gray/RGB(A); not interlaced): a compiled decoder
  (``pdl_post._png``) inflates and unfilters the image data, chunk CRCs and the zlib checksum are
  verified. Other PNGs (palette, 1/2/4-bit, interlaced) are read with Pillow, imported only then.
- COCO panoptic: segment ids are stored as RGB with id = R + 256 G + 256**2 B
  (:func:`rgb2id`, :func:`id2rgb`, :func:`read_panoptic_png`, :func:`write_panoptic_png`); the
  JSON holds one annotation per image with ``segments_info`` (:func:`read_json`,
  :func:`write_json`).
- Conversion between ``merge`` output (``class * label_divisor + instance``, void ``-1``) and
  COCO panoptic with a category map: :func:`to_coco_panoptic`, :func:`from_coco_panoptic`.
- Cityscapes: the label table (:data:`CITYSCAPES_LABELS`) and label id <-> train id helpers
  (:func:`cityscapes_label_to_train`, :func:`cityscapes_train_to_label`,
  :func:`cityscapes_categories`).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pdl_post._inputs import integral_value

__all__ = [
    "CITYSCAPES_LABELS",
    "CITYSCAPES_TRAIN_TO_LABEL",
    "CityscapesLabel",
    "cityscapes_categories",
    "cityscapes_label_to_train",
    "cityscapes_train_to_label",
    "from_coco_panoptic",
    "id2rgb",
    "read_json",
    "read_label_png",
    "read_panoptic_png",
    "read_png",
    "rgb2id",
    "to_coco_panoptic",
    "write_json",
    "write_label_png",
    "write_panoptic_png",
    "write_png",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel (3 = palette)
MAX_SEGMENT_ID = 256**3 - 1


# --------------------------------------------------------------------------------------------
# PNG


def _pillow():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - exercised only without Pillow
        raise ImportError(
            "this PNG needs Pillow (palette, 1/2/4-bit or interlaced images): pip install pillow"
        ) from None
    return Image


class _PngInfo(NamedTuple):
    width: int
    height: int
    bitdepth: int
    colortype: int
    interlace: int
    idat: bytes | memoryview


def _parse_png(data: bytes, name: str) -> _PngInfo:
    """Walk the chunks of a PNG file, checking CRCs; return the header and the IDAT payload
    (a zero-copy view when there is one IDAT chunk)."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError(f"{name}: not a PNG file (bad signature)")
    view = memoryview(data)
    pos, n = 8, len(data)
    header = None
    idat: list = []
    unpack = struct.unpack_from
    crc32 = zlib.crc32
    while True:
        if pos + 8 > n:
            raise ValueError(f"{name}: truncated PNG (no IEND chunk)")
        (length,) = unpack(">I", data, pos)
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            raise ValueError(f"{name}: truncated PNG (chunk {ctype!r} runs past the end)")
        body = view[pos + 8 : pos + 8 + length]
        (crc,) = unpack(">I", data, pos + 8 + length)
        if crc32(body, crc32(ctype)) != crc:
            raise ValueError(f"{name}: corrupt PNG (CRC mismatch in chunk {ctype!r})")
        if ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IHDR":
            if length != 13:
                raise ValueError(f"{name}: corrupt PNG (IHDR of {length} bytes)")
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IEND":
            break
        pos = end
    if header is None:
        raise ValueError(f"{name}: corrupt PNG (no IHDR chunk)")
    width, height, bitdepth, colortype, compression, filtering, interlace = header
    if compression != 0 or filtering != 0:
        raise ValueError(f"{name}: unsupported PNG compression/filter method")
    payload = idat[0] if len(idat) == 1 else b"".join(idat)
    return _PngInfo(width, height, bitdepth, colortype, interlace, payload)


def _read_bytes(path) -> bytes:
    with open(os.fspath(path), "rb") as f:
        return f.read()


def _fast_path(info: _PngInfo) -> bool:
    return info.interlace == 0 and info.colortype in _CHANNELS and info.bitdepth in (8, 16)


def read_png(path) -> np.ndarray:
    """Read a PNG file into an array.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` for gray images, ``(H, W, C)`` with C = 2 (gray+alpha), 3 (RGB) or 4 (RGBA);
        ``uint8`` or ``uint16`` as stored. Palette images come back as RGB(A), 1/2/4-bit gray as
        ``uint8`` values (read with Pillow).
    """
    from pdl_post import _png

    name = os.fspath(path)
    info = _parse_png(_read_bytes(path), name)
    if _fast_path(info):
        try:
            return _png.decode(
                np.frombuffer(info.idat, np.uint8),
                info.height,
                info.width,
                _CHANNELS[info.colortype],
                info.bitdepth,
            )
        except ValueError as e:
            raise ValueError(f"{name}: corrupt PNG image data ({e})") from None
    image = _pillow().open(name)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return np.array(image)


def read_label_png(path) -> np.ndarray:
    """Read a single-channel label map (8- or 16-bit gray PNG).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` ``uint8`` or ``uint16``.

    Raises
    ------
    ValueError
        If the PNG has more than one channel.
    """
    arr = read_png(path)
    if arr.ndim != 2:
        raise ValueError(
            f"{os.fspath(path)}: expected a single-channel label PNG, got {arr.shape[2]} channels"
        )
    return arr


def read_panoptic_png(path, *, out: np.ndarray | None = None) -> np.ndarray:
    """Read a COCO-panoptic PNG into segment ids, id = R + 256 G + 256**2 B.

    Parameters
    ----------
    path : str or os.PathLike
    out : numpy.ndarray, optional
        A C-contiguous ``uint32`` array of the image's shape ``(H, W)`` to decode into; reusing one
        across many files saves the page faults of a fresh allocation. Ignored (a new array is
        returned) when its shape does not match the file.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` ``uint32`` (``out`` when it was used).

    Raises
    ------
    ValueError
        If the PNG is not an RGB or RGBA image (alpha is ignored, as panopticapi does).
    """
    from pdl_post import _png

    name = os.fspath(path)
    info = _parse_png(_read_bytes(path), name)
    if _fast_path(info) and info.bitdepth == 8 and info.colortype in (2, 6):
        if out is not None and (
            out.shape != (info.height, info.width)
            or out.dtype != np.uint32
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            out = None
        try:
            return _png.decode_ids(
                np.frombuffer(info.idat, np.uint8),
                info.height,
                info.width,
                _CHANNELS[info.colortype],
                8,
                out,
            )
        except ValueError as e:
            raise ValueError(f"{name}: corrupt PNG image data ({e})") from None
    arr = read_png(path)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        got = f"{arr.shape[2]}-channel" if arr.ndim == 3 else "single-channel"
        raise ValueError(
            f"{name}: expected an 8-bit RGB panoptic PNG, got a {got} {arr.dtype} image"
        )
    return rgb2id(arr)


def _rgb_idat(path):
    """``(idat bytes, height, width, bytes per pixel)`` of an 8-bit RGB/RGBA PNG for the fused
    PQ kernel, or ``None`` when the file needs the general path (:func:`read_panoptic_png`)."""
    name = os.fspath(path)
    info = _parse_png(_read_bytes(path), name)
    if not (_fast_path(info) and info.bitdepth == 8 and info.colortype in (2, 6)):
        return None
    return info.idat, info.height, info.width, _CHANNELS[info.colortype]


def rgb2id(rgb) -> np.ndarray:
    """COCO-panoptic colours to segment ids: ``(..., 3 or 4) uint8`` -> ``(...) uint32``."""
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"rgb: expected shape (..., 3) or (..., 4), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"rgb: expected dtype uint8, got {rgb.dtype}")
    c = rgb[..., :3].astype(np.uint32)
    return c[..., 0] + (c[..., 1] << 8) + (c[..., 2] << 16)


def id2rgb(ids) -> np.ndarray:
    """Segment ids to COCO-panoptic colours: ``(...)`` integers in [0, 2**24) -> ``(..., 3) uint8``."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids: expected an integer array, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(
            f"ids: expected values in [0, {MAX_SEGMENT_ID}], got [{ids.min()}, {ids.max()}]"
        )
    v = ids.astype(np.uint32)
    return np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], axis=-1).astype(np.uint8)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + ctype
        + body
        + struct.pack(">I", zlib.crc32(body, zlib.crc32(ctype)))
    )


def write_png(path, array, *, compress_level: int = 6) -> None:
    """Write a PNG (no Pillow needed).

    Parameters
    ----------
    path : str or os.PathLike
    array : numpy.ndarray
        ``(H, W)`` gray or ``(H, W, C)`` with C in 1..4 (gray, gray+alpha, RGB, RGBA);
        ``uint8`` or ``uint16`` (16-bit samples).
    compress_level : int
        zlib level 0..9.

    Each row gets the filter (None, Sub or Up) with the smallest sum of absolute residuals.
    """
    a = np.asarray(array)
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"array: expected dtype uint8 or uint16, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        channels = 1
    elif a.ndim == 3 and a.shape[2] in (2, 3, 4):
        channels = a.shape[2]
    else:
        raise ValueError(f"array: expected shape (H, W) or (H, W, 1..4), got {a.shape}")
    h, w = a.shape[:2]
    if h == 0 or w == 0 or h >= 2**31 or w >= 2**31:
        raise ValueError(
            f"array: expected a non-empty image smaller than 2**31 a side, got {a.shape}"
        )
    if not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level: expected an int in 0..9, got {compress_level!r}")
    bitdepth = 8 if a.dtype == np.uint8 else 16
    colortype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = channels * bitdepth // 8
    rows = np.ascontiguousarray(a.astype(">u2") if bitdepth == 16 else a).view(np.uint8)
    rows = rows.reshape(h, w * bpp)
    sub = rows.copy()
    sub[:, bpp:] -= rows[:, :-bpp]
    up = rows.copy()
    up[1:] -= rows[:-1]

    def cost(r):  # residuals as signed bytes, PNG's usual heuristic
        return np.abs(r.view(np.int8).astype(np.int32)).sum(axis=1)

    choice = np.argmin(np.stack([cost(rows), cost(sub), cost(up)]), axis=0)
    filtered = np.empty((h, w * bpp + 1), np.uint8)
    filtered[:, 0] = choice
    filtered[:, 1:] = np.where(
        (choice == 0)[:, None], rows, np.where((choice == 1)[:, None], sub, up)
    )
    body = (
        PNG_SIGNATURE
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), compress_level))
        + _chunk(b"IEND", b"")
    )
    with open(os.fspath(path), "wb") as f:
        f.write(body)


def write_panoptic_png(path, ids) -> None:
    """Write segment ids ``(H, W)`` in [0, 2**24) as a COCO-panoptic RGB PNG."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected shape (H, W), got {ids.shape}")
    write_png(path, id2rgb(ids))


def write_label_png(path, labels) -> None:
    """Write a label map ``(H, W)`` as an 8-bit (values < 256) or 16-bit (< 65536) gray PNG."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels: expected shape (H, W), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels: expected an integer array, got dtype {labels.dtype}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(f"labels: expected values in [0, 65535], got [{lo}, {hi}]")
    write_png(
        path, labels.astype(np.uint8 if hi < 256 and labels.dtype.itemsize == 1 else np.uint16)
    )


# --------------------------------------------------------------------------------------------
# JSON


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def read_json(path) -> Any:
    """Read a JSON file (COCO-panoptic annotations or predictions)."""
    with open(os.fspath(path)) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.fspath(path)}: invalid JSON ({e})") from None


def write_json(path, data, *, indent: int | None = None) -> None:
    """Write JSON; numpy scalars and arrays are converted, NaN is written as ``null``."""

    def clean(o):
        if isinstance(o, float) and o != o:
            return None
        if isinstance(o, np.floating) and np.isnan(o):
            return None
        if isinstance(o, dict):
            return {(int(k) if isinstance(k, np.integer) else k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.ndarray):
            return clean(o.tolist())
        return o

    with open(os.fspath(path), "w") as f:
        json.dump(clean(data), f, indent=indent, default=_json_default, allow_nan=False)


# --------------------------------------------------------------------------------------------
# merge output <-> COCO panoptic


def _check_divisor(label_divisor) -> int:
    if isinstance(label_divisor, bool) or not isinstance(label_divisor, (int, np.integer)):
        raise TypeError(f"label_divisor: expected an int, got {type(label_divisor).__name__}")
    if label_divisor < 1:
        raise ValueError(f"label_divisor: expected >= 1, got {label_divisor}")
    return int(label_divisor)


def _areas_and_boxes(inverse: np.ndarray, k: int) -> tuple[np.ndarray, list[list[int]]]:
    """Pixel count and COCO bbox [x, y, width, height] of each label 0..k-1 of a (H, W) map
    (every label present). Few labels: per-label row / column occupancy (k x (H + W) flags);
    many (up to one per pixel): a stable sort of the pixels by label, O(H W) memory."""
    h, w = inverse.shape
    flat = inverse.astype(np.int64).ravel()
    areas = np.bincount(flat, minlength=k)
    if flat.size == 0:  # an empty map: no segments
        return areas, []
    if k * (h + w) <= 4 * h * w:
        grid = flat.reshape(h, w)
        rows = np.bincount((grid * h + np.arange(h)[:, None]).ravel(), minlength=k * h)
        cols = np.bincount((grid * w + np.arange(w)[None, :]).ravel(), minlength=k * w)
        rows, cols = rows.reshape(k, h) > 0, cols.reshape(k, w) > 0
        y0, y1 = rows.argmax(axis=1), h - 1 - rows[:, ::-1].argmax(axis=1)
        x0, x1 = cols.argmax(axis=1), w - 1 - cols[:, ::-1].argmax(axis=1)
    else:
        pixels = np.argsort(flat, kind="stable")  # row-major order within each label
        starts = np.concatenate(([0], np.cumsum(areas)[:-1]))
        y0, y1 = pixels[starts] // w, pixels[starts + areas - 1] // w
        columns = pixels % w
        x0, x1 = np.minimum.reduceat(columns, starts), np.maximum.reduceat(columns, starts)
    boxes = [
        [int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)] for i in range(k)
    ]
    return areas, boxes


def to_coco_panoptic(
    panoptic,
    *,
    category_map: Mapping[int, int] | None = None,
    thing_classes: Sequence[int] | None = None,
    label_divisor: int = 1000,
    void_label: int = -1,
    segment_ids: str = "sequential",
    image_id: Any = None,
    file_name: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Convert a ``merge`` output map to a COCO-panoptic id map and its annotation.

    Parameters
    ----------
    panoptic : array_like of int, shape (H, W)
        ``class * label_divisor + instance``; ``void_label`` marks void pixels. Torch CUDA tensors
        and CuPy arrays (the CUDA path's output) are copied to the host.
    category_map : mapping of int to int, optional
        Class (``id // label_divisor``) -> COCO ``category_id`` (e.g.
        :data:`CITYSCAPES_TRAIN_TO_LABEL`). Identity when omitted; a class missing from the map is
        an error.
    thing_classes : sequence of int, optional
        Classes (before mapping) whose segments are instances; used only with
        ``segment_ids="cityscapes"``.
    label_divisor : int
    void_label : int
    segment_ids : {"sequential", "cityscapes"}
        ``"sequential"``: segments numbered 1, 2, ... in increasing ``panoptic`` id order.
        ``"cityscapes"``: like cityscapesScripts' conversion: a stuff segment's id is its
        category id, a thing segment's is ``category_id * 1000 + instance`` (requires
        ``thing_classes``).
    image_id, file_name : optional
        Stored in the annotation as ``"image_id"`` and ``"file_name"`` when given.

    Returns
    -------
    ids : numpy.ndarray, shape (H, W), uint32
        Segment ids (0 = void), ready for :func:`write_panoptic_png`.
    annotation : dict
        ``{"segments_info": [{"id", "category_id", "area", "bbox", "iscrowd"}, ...]}`` plus
        ``image_id`` / ``file_name`` when given.
    """
    from pdl_post._cuda import as_host_numpy

    pan = as_host_numpy(panoptic, "panoptic")  # the CUDA path's output is copied here
    if pan.ndim != 2:
        raise ValueError(f"panoptic: expected shape (H, W), got {pan.shape}")
    if not np.issubdtype(pan.dtype, np.integer):
        raise TypeError(f"panoptic: expected an integer array, got dtype {pan.dtype}")
    label_divisor = _check_divisor(label_divisor)
    if segment_ids not in ("sequential", "cityscapes"):
        raise ValueError(f"segment_ids: expected 'sequential' or 'cityscapes', got {segment_ids!r}")
    if segment_ids == "cityscapes" and thing_classes is None:
        raise ValueError("thing_classes: required with segment_ids='cityscapes'")
    things = set(int(c) for c in thing_classes) if thing_classes is not None else set()
    uniq, inverse = np.unique(pan.ravel(), return_inverse=True)
    inverse = inverse.reshape(pan.shape)
    out_ids = np.zeros(len(uniq), np.int64)
    segments = []
    next_id = 1
    for k, value in enumerate(uniq.tolist()):
        if value == void_label:
            continue
        if value < 0:
            raise ValueError(f"panoptic: expected ids >= 0 or void_label={void_label}, got {value}")
        cls, inst = divmod(value, label_divisor)
        if category_map is None:
            cat = cls
        elif cls in category_map:
            cat = int(category_map[cls])
        else:
            raise ValueError(f"category_map: no entry for class {cls} (panoptic id {value})")
        if segment_ids == "sequential":
            seg = next_id
            next_id += 1
        elif cls in things:
            seg = cat * 1000 + inst
        else:
            seg = cat
        if not 0 < seg <= MAX_SEGMENT_ID:
            raise ValueError(
                f"segment id {seg} for panoptic id {value} does not fit a COCO-panoptic PNG "
                f"(1 .. {MAX_SEGMENT_ID}); use segment_ids='sequential'"
            )
        out_ids[k] = seg
        segments.append({"id": seg, "category_id": cat, "iscrowd": 0, "_k": k})
    if len({s["id"] for s in segments}) != len(segments):
        raise ValueError("segment_ids='cityscapes' gives two segments the same id")
    ids = out_ids[inverse].astype(np.uint32)
    areas, boxes = _areas_and_boxes(inverse, len(uniq))
    for s in segments:
        k = s.pop("_k")
        s["area"] = int(areas[k])
        s["bbox"] = boxes[k]
    segments.sort(key=lambda s: s["id"])
    ann: dict = {}
    if image_id is not None:
        ann["image_id"] = image_id
    if file_name is not None:
        ann["file_name"] = file_name
    ann["segments_info"] = segments
    return ids, ann


def _json_int(value: Any, what: str) -> int:
    """An integer field of a COCO annotation: ints (and integral floats, as JSON may hold them)."""
    integer = integral_value(value)
    if integer is None:
        raise TypeError(f"{what} must be an integer, got {value!r}")
    return integer


def from_coco_panoptic(
    ids,
    segments_info: Sequence[Mapping[str, Any]],
    *,
    category_map: Mapping[int, int] | None = None,
    label_divisor: int = 1000,
    void_label: int = -1,
    thing_classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Convert a COCO-panoptic id map and its ``segments_info`` to a ``merge``-style map.

    Parameters
    ----------
    ids : array_like, shape (H, W) or (H, W, 3)
        Segment ids, or the RGB PNG content (converted with :func:`rgb2id`).
    segments_info : sequence of dict
        ``{"id", "category_id", "iscrowd" (optional)}`` per segment.
    category_map : mapping of int to int, optional
        COCO ``category_id`` -> class (e.g. label id -> train id); identity when omitted.
    label_divisor, void_label : int
    thing_classes : sequence of int, optional
        Classes (after mapping) that have instances: their non-crowd segments get instance
        numbers 1, 2, ... per class in ``segments_info`` order, their crowd segments instance 0,
        and segments of other classes instance 0 (as ``merge`` writes stuff). Without it every
        non-crowd segment is numbered as an instance.

    Returns
    -------
    numpy.ndarray, shape (H, W), int32 (int64 when the ids need it)
        ``class * label_divisor + instance``; pixels of unlisted ids (0 included) are
        ``void_label``.
    """
    ids = np.asarray(ids)
    if ids.ndim == 3:
        ids = rgb2id(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected shape (H, W) or (H, W, 3), got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids: expected integer segment ids (or RGB uint8), got dtype {ids.dtype}")
    label_divisor = _check_divisor(label_divisor)
    if isinstance(segments_info, (str, bytes, Mapping)) or not isinstance(segments_info, Iterable):
        raise TypeError(
            f"segments_info: expected a list of segment dicts, got {type(segments_info).__name__}"
        )
    classes = []
    for s in segments_info:
        try:
            cat = _json_int(s["category_id"], "category_id")
            sid = _json_int(s["id"], "id")
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"segments_info: each segment needs integer 'id' and 'category_id' ({e})"
            ) from None
        if sid < 0:
            raise ValueError(f"segments_info: segment ids are >= 0, got {sid}")
        if category_map is None:
            cls = cat
        elif cat in category_map:
            try:
                cls = _json_int(category_map[cat], f"category_map[{cat}]")
            except TypeError as e:
                raise ValueError(f"category_map: {e}") from None
        else:
            raise ValueError(f"category_map: no entry for category_id {cat} (segment {sid})")
        classes.append((sid, cls, bool(s.get("iscrowd", 0))))
    things = None if thing_classes is None else {int(c) for c in thing_classes}
    values = {}
    next_inst: dict[int, int] = {}
    largest = np.iinfo(np.int64).max
    for sid, cls, crowd in classes:
        if sid in values:
            raise ValueError(f"segments_info: segment id {sid} is listed twice")
        if cls < 0:
            raise ValueError(f"segments_info: classes must be >= 0, got {cls} (segment {sid})")
        if cls > (largest - (label_divisor - 1)) // label_divisor:
            raise ValueError(
                f"segments_info: class {cls} (segment {sid}) times label_divisor={label_divisor} "
                "does not fit int64"
            )
        if not crowd and (things is None or cls in things):
            n = next_inst.get(cls, 0) + 1
            next_inst[cls] = n
            if n >= label_divisor:
                raise ValueError(
                    f"class {cls} has more than {label_divisor - 1} instances; raise label_divisor"
                )
            values[sid] = cls * label_divisor + n
        else:
            values[sid] = cls * label_divisor
    uniq, inverse = np.unique(ids.ravel(), return_inverse=True)
    lut = np.array([values.get(int(u), void_label) for u in uniq.tolist()], dtype=np.int64)
    out = lut[inverse].reshape(ids.shape)
    info = np.iinfo(np.int32)
    if out.size == 0 or (out.min() >= info.min and out.max() <= info.max):
        return out.astype(np.int32)
    return out


# --------------------------------------------------------------------------------------------
# Cityscapes labels (cityscapesScripts' helpers/labels.py table: name, id, trainId, category,
# categoryId, hasInstances, ignoreInEval, color)


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = tuple(
    CityscapesLabel(*row)
    for row in [
        ("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
        ("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
        ("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
        ("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
        ("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
        ("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
        ("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
        ("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
        ("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
        ("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
        ("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
        ("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
        ("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
        ("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
        ("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
        ("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
        ("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
        ("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
        ("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
        ("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
        ("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
        ("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
        ("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
        ("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
        ("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
        ("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
        ("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
        ("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
        ("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
        ("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
        ("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
        ("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
        ("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
        ("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
        ("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
    ]
)

#: Cityscapes train id (0..18) -> label id.
CITYSCAPES_TRAIN_TO_LABEL: dict[int, int] = {
    lab.train_id: lab.id for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255
}

_LABEL_TO_TRAIN_LUT = np.array(
    [next(lab.train_id for lab in CITYSCAPES_LABELS if lab.id == i) for i in range(34)], np.int64
)


def cityscapes_label_to_train(labels, *, ignore_train_id: int = 255) -> np.ndarray:
    """Cityscapes label ids (0..33) -> train ids (0..18, ``ignore_train_id`` for ignored labels).

    Parameters
    ----------
    labels : array_like of int, any shape
    ignore_train_id : int
        Value for labels without a train id (cityscapesScripts uses 255).

    Returns
    -------
    numpy.ndarray
        Same shape; ``uint8`` when ``ignore_train_id`` fits, else ``int64``.
    """
    a = np.asarray(labels)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"labels: expected an integer array, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 33):
        raise ValueError(f"labels: expected Cityscapes label ids 0..33, got [{a.min()}, {a.max()}]")
    lut = np.where(_LABEL_TO_TRAIN_LUT == 255, ignore_train_id, _LABEL_TO_TRAIN_LUT)
    dtype = np.uint8 if 0 <= ignore_train_id <= 255 else np.int64
    return lut.astype(dtype)[a]


def cityscapes_train_to_label(
    train_ids, *, ignore_label_id: int = 0, ignore_train_id: int = 255
) -> np.ndarray:
    """Cityscapes train ids (0..18) -> label ids, e.g. to submit predictions in label ids.

    Parameters
    ----------
    train_ids : array_like of int, any shape
        Values 0..18 or ``ignore_train_id``.
    ignore_label_id : int
        Label id written for ``ignore_train_id`` (0, "unlabeled", by default).
    ignore_train_id : int

    Returns
    -------
    numpy.ndarray of uint8, same shape
    """
    a = np.asarray(train_ids)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"train_ids: expected an integer array, got dtype {a.dtype}")
    if not 0 <= ignore_label_id <= 33:
        raise ValueError(f"ignore_label_id: expected a label id 0..33, got {ignore_label_id}")
    out = np.full(a.shape, ignore_label_id, np.uint8)
    valid = (a >= 0) & (a <= 18)
    bad = ~valid & (a != ignore_train_id)
    if bad.any():
        raise ValueError(
            f"train_ids: expected 0..18 or ignore_train_id={ignore_train_id}, got {a[bad].flat[0]}"
        )
    lut = np.array([CITYSCAPES_TRAIN_TO_LABEL[t] for t in range(19)], np.uint8)
    out[valid] = lut[a[valid]]
    return out


def cityscapes_categories(*, train_ids: bool = False) -> list[dict]:
    """COCO-style categories of the Cityscapes labels used in evaluation.

    As cityscapesScripts' ``createPanopticImgs``: one entry per label without ``ignoreInEval``
    (19), ``{"id", "name", "color", "supercategory", "isthing"}``, ``id`` the label id or, with
    ``train_ids=True``, the train id.
    """
    return [
        {
            "id": lab.train_id if train_ids else lab.id,
            "name": lab.name,
            "color": list(lab.color),
            "supercategory": lab.category,
            "isthing": 1 if lab.has_instances else 0,
        }
        for lab in CITYSCAPES_LABELS
        if not lab.ignore_in_eval
    ]
