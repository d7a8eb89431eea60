"""Input handling of the public API: array interop, shape normalisation and argument checks.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong value or
shape) naming the argument, what was expected and what was received. Arrays are normalised to the
4-D views [B, C, H, W] the core reads (numpy views, no copies).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

LABEL_DTYPES = (np.uint8, np.int16, np.int32, np.int64)
# Accepted and widened (one copy): common PNG label dtypes.
WIDENED_LABEL_DTYPES = {
    np.dtype(np.uint16): np.int32,
    np.dtype(np.uint32): np.int64,
    np.dtype(np.int8): np.int16,
}
FLOAT_DTYPES = (np.float32, np.float64)
# Accepted and widened (one copy) for logits, heatmaps and offsets: half precision from networks
# run in float16 / bfloat16 (torch bfloat16 is widened on conversion). Every such value is a
# float32 value, so the answer is the one for the float32 copy.
WIDENED_FLOAT_DTYPES = {np.dtype(np.float16): np.float32}
ACCEPTED_FLOAT_DTYPES = (*FLOAT_DTYPES, *WIDENED_FLOAT_DTYPES)
MAX_SIDE = 1 << 24  # pixel coordinates must be exact in float32
INT32_MAX = np.iinfo(np.int32).max
INT64_MAX = np.iinfo(np.int64).max


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (str, bytes)) else type(x).__name__


def is_torch_tensor(x) -> bool:
    """A torch tensor, subclasses included (nn.Parameter, torchvision's tv_tensors ...)."""
    torch = sys.modules.get("torch")  # no tensor exists before torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


def without_bfloat16(t):
    """A torch tensor, bfloat16 widened to float32 (exact; numpy has no bfloat16)."""
    return t.float() if str(t.dtype) == "torch.bfloat16" else t


def as_numpy(x, name: str) -> np.ndarray:
    """A numpy view of ``x`` (numpy array, torch CPU tensor or array-like), without copying.

    Non-native byte order (e.g. big-endian data read from disk) is converted once to native.
    """
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(
            f"{name}: expected an array (numpy array or torch tensor), got {_describe(x)}"
        )
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(
                f"{name}: got a tensor on device '{x.device}'; only merge(), postprocess(), "
                "the stages and detectron2's functions take CUDA tensors (see "
                "pdl_post.cuda_available()), move it to the CPU with .cpu()"
            )
        x = without_bfloat16(x.detach())
        if x.is_neg():  # a lazily negated view (torch's _neg_view): its values, one copy
            x = x.resolve_neg()
        try:
            return x.numpy()
        except (TypeError, RuntimeError) as e:  # float8, sparse, nested, conjugated ...
            raise TypeError(
                f"{name}: unsupported torch dtype {x.dtype} or layout {x.layout}; expected a dense "
                f"tensor with a numpy dtype ({e})"
            ) from None
    if not isinstance(x, np.ndarray) and hasattr(x, "__cuda_array_interface__"):
        raise ValueError(
            f"{name}: got a CUDA array ({type(x).__name__}); only merge(), postprocess(), "
            "the stages and detectron2's functions take CUDA arrays (see "
            "pdl_post.cuda_available()), copy it to the host first"
        )
    if isinstance(x, np.ndarray):
        a = x  # dtype checks follow in the caller, with the argument's own expectations
    else:
        try:
            a = np.asarray(x)
        except Exception as e:
            raise TypeError(f"{name}: expected an array, got {_describe(x)} ({e})") from None
        if a.dtype == object:
            raise TypeError(f"{name}: expected a numeric array, got {_describe(x)} of dtype object")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def integral_value(value) -> int | None:
    """value as an int when it is an integer, integral floats included (JSON and float-typed
    arguments hold them), else None (booleans, fractions, anything else)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def check_int(value, name: str, *, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    # type(...) first: the common case skips the abstract-class checks (this runs on every call).
    if type(value) is not int and (
        isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
    ):
        expected = "an integer or None" if allow_none else "an integer"
        raise TypeError(f"{name}: expected {expected}, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"{name}: expected a value that fits int64, got {value}")
    return value


def check_real(value, name: str) -> float:
    if type(value) not in (float, int) and (
        isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
    ):
        raise TypeError(f"{name}: expected a real number, got {_describe(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(
            f"{name}: expected a value representable as a float, got {value}"
        ) from None
    if math.isnan(value):
        raise ValueError(f"{name}: expected a number, got nan")
    return value


def check_thing_ids(thing_ids) -> list[int]:
    if (
        thing_ids is None
        or isinstance(thing_ids, (str, bytes))
        or not hasattr(thing_ids, "__iter__")
    ):
        raise TypeError(
            f"thing_ids: expected an iterable of non-negative integers, got {_describe(thing_ids)}"
        )
    if isinstance(thing_ids, np.ndarray) or is_torch_tensor(thing_ids):
        values = thing_ids.tolist() if thing_ids.ndim == 1 else [thing_ids.tolist()]
    else:
        values = list(thing_ids)
    ids = [check_int(t, "thing_ids", minimum=0) for t in values]
    return sorted(set(ids))


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


@dataclass(frozen=True)
class MergeParams:
    thing_ids: tuple  # sorted, distinct (shared by calls with the same options: immutable)
    label_divisor: int
    stuff_area: int
    void_label: int
    threshold: float
    nms_kernel: int
    top_k: int | None
    topk_mode: str
    num_threads: int  # 0 = all cores

    def center_options(self) -> tuple:
        """threshold, nms_kernel, top_k (-1: all), topk_mode: as the core's calls take them."""
        return (
            self.threshold,
            self.nms_kernel,
            -1 if self.top_k is None else self.top_k,
            self.topk_mode,
        )

    def core_options(self) -> tuple:
        """The options of the core's merge and CudaMerge, in their order."""
        return (
            self.thing_ids,
            self.label_divisor,
            self.stuff_area,
            self.void_label,
            *self.center_options(),
        )


def check_params(**options) -> MergeParams:
    """The checked options of merge / postprocess / fuse (their keyword arguments, by name).

    Checked once per distinct set: calls mostly repeat theirs, and checking takes a GPU call's
    share of host time (15 us of a 57 us Python layer on the development VM). Sets of plain values
    (int, float, str, None; thing ids as a tuple of ints) are remembered by exact type and value,
    so that ``True`` or ``np.int64(7)`` is checked on its own; any other set is checked every time.
    """
    key = _options_key(options)
    return _check_params(**options) if key is None else _checked_params(key)


_PLAIN_TYPES = (int, float, str, type(None))


def _options_key(options: dict) -> tuple | None:
    key = []
    for name, value in options.items():
        kind = type(value)
        if kind is tuple:
            if not all(type(t) is int for t in value):
                return None
        elif kind not in _PLAIN_TYPES:
            return None
        key.append((name, kind, value))
    return tuple(key)


@functools.lru_cache(maxsize=64)
def _checked_params(key: tuple) -> MergeParams:
    return _check_params(**{name: value for name, _, value in key})


# A child of fork() checks its parameters afresh: asking for threads there warns (check_threads).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_checked_params.cache_clear)


def _check_params(
    *,
    thing_ids,
    label_divisor,
    stuff_area,
    void_label,
    threshold,
    nms_kernel,
    top_k,
    topk_mode,
    num_threads,
) -> MergeParams:
    kernel = check_int(nms_kernel, "nms_kernel", minimum=1)
    if kernel % 2 == 0:
        raise ValueError(f"nms_kernel: expected an odd window size (1, 3, 5, ...), got {kernel}")
    threads = check_threads(num_threads)
    return MergeParams(
        thing_ids=tuple(check_thing_ids(thing_ids)),
        label_divisor=check_int(label_divisor, "label_divisor", minimum=1),
        stuff_area=check_int(stuff_area, "stuff_area", minimum=0),
        void_label=check_int(void_label, "void_label"),
        threshold=check_real(threshold, "threshold"),
        nms_kernel=kernel,
        top_k=check_int(top_k, "top_k", minimum=0, allow_none=True),
        topk_mode=check_choice(topk_mode, "topk_mode", ("exact", "detectron2")),
        num_threads=threads,
    )


_warned_forked_child = False


def check_threads(num_threads) -> int:
    """0 (OpenMP's default) for None, else the thread count (at most 2**31 - 1, OpenMP's int).

    Where a child of fork() must run on one thread (pipeline_cpu.cpp), asking for more warns,
    once."""
    global _warned_forked_child
    threads = check_int(num_threads, "num_threads", minimum=1, allow_none=True)
    if threads is not None and threads > INT32_MAX:
        raise ValueError(f"num_threads: expected at most {INT32_MAX} threads, got {threads}")
    if threads is not None and threads > 1 and not _warned_forked_child:
        from pdl_post import _core

        if _core._single_threaded_after_fork():
            _warned_forked_child = True
            warnings.warn(
                f"num_threads={threads}: this process is a child of fork() whose parent's "
                "OpenMP threads could not be released before the fork (a fork from inside a "
                "parallel region, or an OpenMP runtime without omp_pause_resource_all), and a "
                "team here would wait for them for ever, so pdl_post runs on one thread; start "
                "workers with the spawn or forkserver method to keep threads (shown once)",
                RuntimeWarning,
                stacklevel=2,
            )
    return 0 if threads is None else threads


@dataclass
class Batch:
    """Inputs normalised to 4-D views: sem labels [B,1,H,W] (None for logits-only), logits
    [B,C,H,W] or None, ctr [B,1,H,W], off [B,2,H,W], mask [B,1,H,W] uint8 or None."""

    labels: np.ndarray | None
    logits: np.ndarray | None
    ctr: np.ndarray | None
    off: np.ndarray | None
    mask: np.ndarray | None
    batched: bool
    height: int
    width: int

    @property
    def batch(self) -> int:
        for a in (self.labels, self.logits, self.ctr, self.off, self.mask):
            if a is not None:
                return a.shape[0]
        return 0


def _shape_str(shape) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


# The rules for each input's dtype and shape, on (dtype, shape) alone so that host arrays here and
# device arrays in _cuda.py follow the same ones. Each returns the positions of the unit axes that
# np.expand_dims inserts to make the input [B, C, H, W].


def sem_layout(dtype, shape, *, allow_logits=True) -> tuple[bool, bool, tuple[int, ...]]:
    """-> (logits?, batched?, unit axes); label dtypes outside LABEL_DTYPES are widened by the
    caller (WIDENED_LABEL_DTYPES)."""
    if dtype.kind == "f":
        if not allow_logits:
            raise TypeError(f"sem: expected integer labels, got dtype {dtype}")
        if dtype not in ACCEPTED_FLOAT_DTYPES:
            raise TypeError(
                f"sem: float logits must be float16, bfloat16, float32 or float64, got {dtype}"
            )
        if len(shape) == 3:
            return True, False, (0,)
        if len(shape) == 4:
            return True, True, ()
        raise ValueError(
            f"sem: float logits must have shape [C,H,W] or [B,C,H,W], got {_shape_str(shape)}"
        )
    if dtype.kind not in "ui" or dtype == np.uint64:
        raise TypeError(
            f"sem: expected integer labels (uint8, int16, int32, int64) or float "
            f"logits (float32, float64), got dtype {dtype}"
        )
    if len(shape) == 2:
        return False, False, (0, 1)
    if len(shape) == 3:
        return False, True, (1,)
    raise ValueError(
        f"sem: integer labels must have shape [H,W] or [B,H,W], got {_shape_str(shape)}"
    )


def ctr_layout(dtype, shape, batched: bool) -> tuple[int, ...]:
    """-> unit axes of the heatmap [H,W] / [1,H,W] (one image) or [B,1,H,W] (batch)."""
    if dtype not in ACCEPTED_FLOAT_DTYPES:
        raise TypeError(
            f"ctr: expected a float16, bfloat16, float32 or float64 heatmap, got dtype {dtype}"
        )
    if not batched:
        if len(shape) == 2:
            return (0, 1)
        if len(shape) == 3 and shape[0] == 1:
            return (0,)
        raise ValueError(
            f"ctr: expected shape [H,W] or [1,H,W] for one image, got {_shape_str(shape)}"
        )
    if len(shape) == 4 and shape[1] == 1:
        return ()
    raise ValueError(f"ctr: expected shape [B,1,H,W] for a batch, got {_shape_str(shape)}")


def off_layout(dtype, shape, batched: bool) -> tuple[int, ...]:
    """-> unit axes of the offsets [2,H,W] (one image) or [B,2,H,W] (batch)."""
    if dtype not in ACCEPTED_FLOAT_DTYPES:
        raise TypeError(
            f"off: expected float16, bfloat16, float32 or float64 offsets, got dtype {dtype}"
        )
    if not batched:
        if len(shape) == 3 and shape[0] == 2:
            return (0,)
        raise ValueError(
            f"off: expected shape [2,H,W] (dy, dx) for one image, got {_shape_str(shape)}"
        )
    if len(shape) == 4 and shape[1] == 2:
        return ()
    raise ValueError(f"off: expected shape [B,2,H,W] (dy, dx) for a batch, got {_shape_str(shape)}")


def mask_layout(dtype, shape, batched: bool) -> tuple[bool, tuple[int, ...]]:
    """-> (drop the unit channel axis -3?, unit axes after that) of [H,W] / [1,H,W] (one image) or
    [B,H,W] / [B,1,H,W] (batch)."""
    if dtype.kind not in "buif":
        raise TypeError(f"foreground_mask: expected a bool or numeric array, got dtype {dtype}")
    expected = 3 if batched else 2
    drop = len(shape) == expected + 1 and shape[-3] == 1
    if len(shape) - drop != expected:
        want = "[B,H,W]" if batched else "[H,W]"
        raise ValueError(f"foreground_mask: expected shape {want}, got {_shape_str(shape)}")
    return drop, (1,) if batched else (0, 1)


def _widened_float(a: np.ndarray) -> np.ndarray:
    return a.astype(WIDENED_FLOAT_DTYPES[a.dtype]) if a.dtype in WIDENED_FLOAT_DTYPES else a


def normalize_sem(sem, *, allow_logits=True):
    """sem -> (labels or None, logits or None, batched)."""
    a = as_numpy(sem, "sem")
    logits, batched, axes = sem_layout(a.dtype, a.shape, allow_logits=allow_logits)
    if logits:
        return None, np.expand_dims(_widened_float(a), axes), batched
    if a.dtype in WIDENED_LABEL_DTYPES:
        a = a.astype(WIDENED_LABEL_DTYPES[a.dtype])
    return np.expand_dims(a, axes), None, batched


def check_instance_layout(dtype, shape, batched: bool) -> None:
    """fuse's instance map: integer ids (uint64 aside), [B,H,W] or [H,W] like the labels."""
    if dtype.kind not in "ui" or dtype == np.uint64:
        raise TypeError(f"instance: expected an integer instance map, got dtype {dtype}")
    if len(shape) != (3 if batched else 2):
        raise ValueError(
            f"instance: expected shape {'[B,H,W]' if batched else '[H,W]'} like sem, "
            f"got {list(shape)}"
        )


def normalize_ctr(ctr, batched: bool) -> np.ndarray:
    a = as_numpy(ctr, "ctr")
    return np.expand_dims(_widened_float(a), ctr_layout(a.dtype, a.shape, batched))


def normalize_off(off, batched: bool) -> np.ndarray:
    a = as_numpy(off, "off")
    return np.expand_dims(_widened_float(a), off_layout(a.dtype, a.shape, batched))


def normalize_mask(mask, batched: bool) -> np.ndarray | None:
    if mask is None:
        return None
    a = as_numpy(mask, "foreground_mask")
    drop, axes = mask_layout(a.dtype, a.shape, batched)
    if drop:
        a = a[..., 0, :, :]
    thing = a if a.dtype == np.bool_ else (a > 0)  # NaN > 0 is False
    return np.expand_dims(thing.view(np.uint8), axes)


def check_same_geometry(named: dict) -> tuple[int, int, int]:
    """All arrays (4-D) agree on batch, height and width; returns (B, H, W)."""
    return check_same_shapes({n: a.shape for n, a in named.items() if a is not None})


def check_same_shapes(named: dict) -> tuple[int, int, int]:
    """All [B, C, H, W] shapes (None: absent) agree on batch, height and width; -> (B, H, W)."""
    items = [(n, s) for n, s in named.items() if s is not None]
    ref_name, ref = items[0]
    for name, s in items[1:]:
        if s[0] != ref[0]:
            raise ValueError(
                f"{name}: batch size {s[0]} does not match {ref_name}'s batch size {ref[0]}"
            )
        if tuple(s[2:]) != tuple(ref[2:]):
            raise ValueError(
                f"{name}: image size {s[2]}x{s[3]} does not match {ref_name}'s {ref[2]}x{ref[3]}"
            )
    b, _, h, w = ref
    if h >= MAX_SIDE or w >= MAX_SIDE:
        raise ValueError(
            f"{ref_name}: image sides must be < 2**24 (exact float32 pixel "
            f"coordinates), got {h}x{w}"
        )
    return b, h, w


def output_dtype(max_label: int, label_divisor: int, void_label: int):
    """int32 when every possible id fits, else int64 (ValueError beyond int64).

    Instance numbers stay below label_divisor, so every id is < (max_label + 1) * label_divisor.
    """
    largest = (max(max_label, 0) + 1) * label_divisor - 1
    if largest > INT64_MAX:
        raise ValueError(
            f"label_divisor: ids up to {largest} (max class {max_label} x "
            f"label_divisor {label_divisor}) do not fit int64"
        )
    if largest <= INT32_MAX and -INT32_MAX - 1 <= void_label <= INT32_MAX:
        return np.int32
    return np.int64


def largest_label_fitting(dtype, label_divisor: int) -> int:
    """The largest class id whose panoptic ids all fit ``dtype`` (int32 or int64): for every
    ``max_label`` >= 0, ``output_dtype(max_label, ...)`` is ``dtype`` or narrower exactly when
    ``max_label`` is at most this."""
    return (int(np.iinfo(dtype).max) + 1) // label_divisor - 1
