"""The CUDA path of ``merge`` / ``postprocess`` (and of the stages: see find_centers,
group_pixels and fuse below): CUDA arrays in, the same answer as the CPU out.

Inputs are torch CUDA tensors, CuPy arrays or any object exposing ``__cuda_array_interface__`` (v3).
They are read in place on the device (pointer + shape + strides, no host copies); the output is
allocated on the same device by the caller's own library (torch in, torch out; CuPy in, CuPy out)
and the work is queued on the caller's current stream. The core (``cpp/cuda``) synchronises that
stream once per ``merge`` call, for the label range (it decides the output dtype) and the peak
counts, then returns with the rest queued, as other CUDA libraries do; a second synchronisation at
the end reads the error flags only when an image keeps ``label_divisor`` centres or more (the one
error found on the device: too many instances of a class), or when the inputs do not all come
from one array library (see _may_return_early). ``postprocess`` always ends with one
more, after one copy of the flags, centres and segments together; class ids of 65536 and more add
one for the number of distinct ids. Inputs widened here (half precision, small
integer labels, non-bool masks) are made by the caller's library on the same stream, whose
allocator reuses their memory only for work queued after this call's.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np

from pdl_post import _core
from pdl_post._inputs import (
    WIDENED_FLOAT_DTYPES,
    WIDENED_LABEL_DTYPES,
    _describe,
    as_numpy,
    check_instance_layout,
    check_same_shapes,
    ctr_layout,
    is_torch_tensor,
    largest_label_fitting,
    mask_layout,
    off_layout,
    sem_layout,
    without_bfloat16,
)

# Dtypes the core reads directly; bool is read as uint8 (0 / 1).
_CORE_DTYPES = {
    np.dtype(np.uint8): "uint8",
    np.dtype(np.bool_): "uint8",
    np.dtype(np.int16): "int16",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
}

# Changes of the CUDA path that stay off by default until GPU timings decide (cuda_pipeline.h):
# name -> (the build's hook, _core.<hook>(on) returning the previous setting; the environment
# variable with which the tests and benchmarks/gpu_check.sh turn it on).
CANDIDATES = {
    "vote in chunks": ("_set_cuda_vote_chunks", "PDL_POST_VOTE_CHUNKS"),
    "vote by warp box": ("_set_cuda_vote_box", "PDL_POST_VOTE_BOX"),
    "peaks by warp": ("_set_cuda_warp_peaks", "PDL_POST_WARP_PEAKS"),
}


def compiled() -> bool:
    """Whether this build contains the CUDA path."""
    return hasattr(_core, "cuda_device_count")


def available() -> bool:
    """Whether the CUDA path can run here: compiled in, with a driver and at least one device."""
    return compiled() and _core.cuda_device_count() > 0


def release_memory() -> int:
    """Bytes of scratch memory handed back by the CUDA path's pools (0 without CUDA)."""
    return int(_core.cuda_release_memory()) if compiled() else 0


def is_cuda_array(x) -> bool:
    """A torch CUDA tensor or any object exposing ``__cuda_array_interface__``."""
    if x is None:
        return False
    if is_torch_tensor(x):
        return x.is_cuda  # what device.type == "cuda" says, without making a device object
    return hasattr(type(x), "__cuda_array_interface__") or hasattr(x, "__cuda_array_interface__")


def to_host(x, name: str):
    """``x``, or for work that runs on the host whatever the input (evaluation, conversion,
    drawing) a host copy of a torch CUDA tensor or CuPy array, so that the CUDA path's output goes
    straight in. Other CUDA arrays (only ``__cuda_array_interface__``, no library to copy them
    with) are refused by name."""
    library = _library(x)
    if library == "torch":
        return x.detach().cpu() if x.device.type == "cuda" else x
    if library == "cupy":
        return x.get()  # cupy.ndarray -> numpy.ndarray (waits for the array's stream)
    if is_cuda_array(x):
        raise ValueError(
            f"{name}: got a CUDA array ({type(x).__name__}) known only by its "
            "__cuda_array_interface__; copy it to the host first (torch CUDA tensors and CuPy "
            "arrays are copied here)"
        )
    return x


def as_host_numpy(x, name: str) -> np.ndarray:
    """:func:`as_numpy` of :func:`to_host`: CUDA tensors and CuPy arrays are copied, not refused."""
    return as_numpy(to_host(x, name), name)


_TORCH_DTYPES: dict = {}  # torch dtype -> numpy dtype, filled on first use (calls are hot)


def _numpy_dtype_of_torch(dtype, name: str) -> np.dtype:
    if dtype not in _TORCH_DTYPES:
        import torch

        try:
            _TORCH_DTYPES[dtype] = np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
        except TypeError:
            raise TypeError(f"{name}: unsupported torch dtype {dtype}") from None
    return _TORCH_DTYPES[dtype]


_LIBRARY_OF_TYPE: dict = {}  # type -> "torch", "cupy" or None
_DTYPE_OF_TYPESTR: dict = {}  # __cuda_array_interface__ typestr -> numpy dtype


def _library(x) -> str | None:
    kind = type(x)
    if kind not in _LIBRARY_OF_TYPE:
        if is_torch_tensor(x):
            _LIBRARY_OF_TYPE[kind] = "torch"
        else:
            _LIBRARY_OF_TYPE[kind] = "cupy" if kind.__module__.split(".")[0] == "cupy" else None
    return _LIBRARY_OF_TYPE[kind]


class DeviceArray:
    """Pointer, dtype, shape and element strides of a CUDA array, plus where it came from."""

    def __init__(self, obj, name: str):
        self.obj = obj
        self.name = name
        self.library = _library(obj)
        self.stream = None
        self.made_here = False  # a conversion's result (see converted)
        if self.library == "torch":
            t = obj.detach()
            if t.layout != sys.modules["torch"].strided:
                raise TypeError(
                    f"{name}: unsupported torch layout {t.layout}; expected a dense (strided) tensor"
                )
            t = without_bfloat16(t)  # widened on the device
            self.obj = t
            self.ptr = int(t.data_ptr())
            self.shape = tuple(t.shape)  # ints (torch.Size), as stride() returns
            self.strides = t.stride()
            self.dtype = _numpy_dtype_of_torch(t.dtype, name)
            self.device = int(t.device.index)
            self._check_alignment()
            return
        cai = obj.__cuda_array_interface__
        if cai.get("mask") is not None:
            raise TypeError(f"{name}: masked CUDA arrays are not supported")
        typestr = cai["typestr"]
        self.dtype = _DTYPE_OF_TYPESTR.get(typestr)
        if self.dtype is None:
            self.dtype = _DTYPE_OF_TYPESTR[typestr] = np.dtype(typestr)
        if not self.dtype.isnative:
            raise TypeError(f"{name}: expected native byte order, got typestr {typestr}")
        self.ptr = int(cai["data"][0])
        self.shape = tuple(map(int, cai["shape"]))
        itemsize = self.dtype.itemsize
        if cai.get("strides") is None:  # C-contiguous
            strides, step = [], 1
            for s in reversed(self.shape):
                strides.append(step)
                step *= s if s > 1 else 1
            self.strides = tuple(reversed(strides))
        else:
            if any(s % itemsize for s in cai["strides"]):
                raise ValueError(f"{name}: strides must be multiples of the item size")
            self.strides = tuple(int(s) // itemsize for s in cai["strides"])
        self.stream = cai.get("stream")
        if self.stream == 0:
            raise ValueError(
                f"{name}: __cuda_array_interface__ stream 0 is not allowed (version 3: it is "
                "ambiguous); expected None, 1 (legacy default stream), 2 (per-thread default "
                "stream) or a stream handle"
            )
        size = math.prod(self.shape)
        if size and not self.ptr:
            raise ValueError(
                f"{name}: __cuda_array_interface__ has a null data pointer for an array of shape "
                f"{self.shape}"
            )
        if self.library == "cupy":  # known also for an empty array, which has no pointer
            self.device = int(obj.device.id)
        else:
            self.device = _core.cuda_pointer_device(self.ptr) if size else -1
        if size and self.device < 0:
            raise ValueError(f"{name}: __cuda_array_interface__ pointer is not CUDA device memory")
        self._check_alignment()

    def _check_alignment(self) -> None:
        # A misaligned load is a sticky error on a GPU: the CUDA context is lost.
        if self.ptr % self.dtype.itemsize:
            raise ValueError(
                f"{self.name}: the data pointer {self.ptr:#x} is not aligned to the "
                f"{self.dtype.itemsize}-byte items of dtype {self.dtype}"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def view4(self, shape, strides) -> tuple:
        """The core's descriptor: (pointer, dtype name, shape[4], strides[4])."""
        return (self.ptr, _CORE_DTYPES[self.dtype], list(shape), list(strides))

    def converted(self, fn, what: str) -> DeviceArray:
        """A new device array computed on the device by the caller's library."""
        if self.library is None:
            raise TypeError(
                f"{self.name}: {what} needs torch or CuPy on the device; pass a "
                f"{'bool' if 'mask' in self.name else 'supported'} dtype instead of {self.dtype}"
            )
        if self.library == "cupy":  # CuPy works on its current device, not the array's
            import cupy

            with cupy.cuda.Device(self.device):
                made = fn(self.obj)
        else:
            made = fn(self.obj)
        result = DeviceArray(made, self.name)
        result.made_here = True
        return result


def _expand(shape, strides, axes) -> tuple[tuple, tuple]:
    """np.expand_dims on (shape, element strides): stride-0 unit axes at `axes`."""
    shape, strides = list(shape), list(strides)
    for axis in sorted(axes):
        shape.insert(axis, 1)
        strides.insert(axis, 0)
    return tuple(shape), tuple(strides)


def _cast(a: DeviceArray, dtype, what: str) -> DeviceArray:
    """A widened copy made on the device by the caller's library (WIDENED_*_DTYPES)."""
    if a.library == "torch":
        import torch

        torch_dtype = {
            np.int16: torch.int16,
            np.int32: torch.int32,
            np.int64: torch.int64,
            np.float32: torch.float32,
        }[dtype]
        return a.converted(lambda t: t.to(torch_dtype), what)
    return a.converted(lambda x: x.astype(dtype), what)


def _widened_float(a: DeviceArray) -> DeviceArray:
    """float16 -> float32 on the device (exact), as WIDENED_FLOAT_DTYPES on the host."""
    if a.dtype not in WIDENED_FLOAT_DTYPES:
        return a
    return _cast(a, WIDENED_FLOAT_DTYPES[a.dtype], "half-precision input")


def _normalize(a: DeviceArray, axes):
    """-> (the core's descriptor, [B,C,H,W] shape)."""
    shape, strides = _expand(a.shape, a.strides, axes)
    return a.view4(shape, strides), shape


def _normalize_sem(a: DeviceArray):
    """-> ((labels or None, logits or None) descriptors, batched, [B,C,H,W] shape, keep)."""
    logits, batched, axes = sem_layout(a.dtype, a.shape)
    if logits:
        a = _widened_float(a)
    elif a.dtype in WIDENED_LABEL_DTYPES:
        a = _cast(a, WIDENED_LABEL_DTYPES[a.dtype], "widening labels")
    view, shape = _normalize(a, axes)
    return (None, view) if logits else (view, None), batched, shape, a


def positive(x, *, unsigned: bool):
    """``x > 0`` by the array's library (NaN > 0 is False), read as uint8 by the core; ``x != 0``
    for unsigned dtypes, where it is the same and torch has no ``>`` (uint16/32/64)."""
    return x != 0 if unsigned else x > 0


def _normalize_mask(a: DeviceArray, batched: bool):
    drop, axes = mask_layout(a.dtype, a.shape, batched)
    if a.dtype not in (np.dtype(np.bool_), np.dtype(np.uint8)):
        a = a.converted(
            functools.partial(positive, unsigned=a.dtype.kind == "u"), "a non-bool mask"
        )
    shape, strides = a.shape, a.strides
    if drop:  # [1,H,W] / [B,1,H,W]: the unit channel axis -3 goes
        shape, strides = shape[:-3] + shape[-2:], strides[:-3] + strides[-2:]
    shape4, strides4 = _expand(shape, strides, axes)
    return a.view4(shape4, strides4), shape4, a


def _library_stream(library: str, device: int) -> int:
    """The current stream of torch or CuPy on ``device`` in the interface's numbering: their
    handle 0, the legacy default stream (this build's default), is 1 there, as CuPy exports it."""
    if library == "torch":
        import torch

        handle = int(torch.cuda.current_stream(device).cuda_stream)
    else:
        import cupy

        with cupy.cuda.Device(device):
            handle = int(cupy.cuda.get_current_stream().ptr)
    return handle or 1


_LIBRARIES = ("torch", "cupy")  # array libraries with streams, in the order the stream is chosen


def _record_stream(arrays: list[DeviceArray], device: int) -> None:
    """Tells torch's allocator that its tensors are read by work queued on the current stream of
    ``device``, so that dropping one (made on another stream) cannot free its memory for reuse
    before that work is done (what ``Tensor.record_stream`` is for)."""
    import torch

    stream = torch.cuda.current_stream(device)
    for a in arrays:
        if a.library == "torch":
            a.obj.record_stream(stream)


def _stream_library(arrays: list[DeviceArray]) -> str | None:
    """The library whose current stream the call runs on: torch, else CuPy, else None."""
    libraries = {a.library for a in arrays}
    return next((name for name in _LIBRARIES if name in libraries), None)


def _stream(arrays: list[DeviceArray], library: str | None, device: int) -> int:
    """The caller's current stream: that of ``library`` (_stream_library(arrays)) if any, else the
    first one an interface names, else the legacy default stream (v3 numbering: 1)."""
    if library is not None:
        return _library_stream(library, device)
    for a in arrays:
        if a.stream is not None:
            return int(a.stream)
    return 1


def _output_library(arrays: list[DeviceArray]) -> str | None:
    """Who allocates the output: torch for torch inputs, CuPy for CuPy inputs; for other
    ``__cuda_array_interface__`` objects torch (with CUDA), else CuPy; None if neither is here."""
    libraries = {a.library for a in arrays}
    if "torch" in libraries or ("cupy" not in libraries and _torch_has_cuda()):
        return "torch"
    if "cupy" in libraries or _importable("cupy"):
        return "cupy"
    return None


def _allocate(library: str | None, shape, dtype, device: int):
    """The output [B, H, W] or [H, W], int32 or int64, on ``device`` by ``library``
    (_output_library)."""
    if library == "torch":
        import torch

        torch_dtype = torch.int64 if dtype == np.int64 else torch.int32
        return torch.empty(shape, dtype=torch_dtype, device=f"cuda:{device}")
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(device):
            return cupy.empty(shape, dtype=dtype)
    raise TypeError(_NO_OUTPUT_LIBRARY)


_NO_OUTPUT_LIBRARY = (
    "the CUDA path allocates its output with torch (built with CUDA) or CuPy; neither is installed"
)


def _pointer(out) -> int:
    """The device pointer of an output that _allocate made (C-contiguous, aligned)."""
    if is_torch_tensor(out):
        return int(out.data_ptr())
    return int(out.__cuda_array_interface__["data"][0])


def _may_return_early(arrays: list[DeviceArray]) -> bool:
    """Whether ``merge`` may return with its work queued rather than wait for the device.

    Yes when every input (widened copies included) comes from one array library: the call runs on
    that library's current stream and the output is that library's, so the caller's work on the
    output follows the call's, and its allocator reuses the inputs' memory, should the caller drop
    them, only for work queued after the call's (torch tensors made on another stream are marked
    with ``record_stream``; CuPy, like its own kernels, relies on the caller's stream discipline).
    Inputs of two libraries, or known only by their ``__cuda_array_interface__`` (whose owner may
    free them on another stream), make it wait.
    """
    libraries = {a.library for a in arrays}
    return len(libraries) == 1 and None not in libraries


@functools.cache  # asked on every call with interface-only inputs
def _torch_has_cuda() -> bool:
    if not _importable("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def run(sem, ctr, off, foreground_mask, params, output_dtype, with_segments: bool):
    """The whole pipeline on the device; returns (out, per-image results, batched)."""
    named = {"sem": sem, "ctr": ctr, "off": off, "foreground_mask": foreground_mask}
    arrays, device = _device_arrays(named)
    (labels, logits), batched, sem_shape, sem_read = _normalize_sem(arrays["sem"])
    ctr, off = arrays["ctr"], arrays["off"]
    ctr_axes = ctr_layout(ctr.dtype, ctr.shape, batched)
    off_axes = off_layout(off.dtype, off.shape, batched)
    ctr, off = _widened_float(ctr), _widened_float(off)
    ctr4, ctr_shape = _normalize(ctr, ctr_axes)
    off4, off_shape = _normalize(off, off_axes)
    mask4 = mask_shape = mask_read = None
    if "foreground_mask" in arrays:
        mask4, mask_shape, mask_read = _normalize_mask(arrays["foreground_mask"], batched)
    b, h, w = check_same_shapes(
        {"sem": sem_shape, "ctr": ctr_shape, "off": off_shape, "foreground_mask": mask_shape}
    )
    if logits is not None and sem_shape[1] == 0:
        raise ValueError("sem: logits need at least one class channel, got 0")
    # Decided before the job: between its two phases the device idles while the host works.
    queue = _Queue(arrays, (sem_read, ctr, off, mask_read), device)
    wait = queue.wait
    if not (wait or with_segments):
        queue.record_stream()
    # The output is allocated before the job, in the dtype of the smallest label range (int32
    # unless label_divisor or void_label need int64), and handed to the job with the largest class
    # id it fits: where the label range fits, the second phase follows the first phase's
    # synchronisation in the core with no return to Python while the device idles. A label range
    # that needs int64 (or is refused) comes back here.
    out_shape = (b, h, w) if batched else (h, w)
    try:
        guess = output_dtype(0, params.label_divisor, params.void_label)
    except ValueError:  # raised below, after the label range's own checks
        guess = None
    out = None
    if guess is not None:
        out = queue.allocate(out_shape, guess)
    job = _core.CudaMerge(
        labels,
        logits,
        ctr4,
        off4,
        mask4,
        device,
        queue.stream,
        *params.core_options(),
    )
    try:
        per_image = None
        if out is not None:
            per_image = job.finish_if_fits(
                _core_view(out, guess, b, h, w),
                largest_label_fitting(guess, params.label_divisor),
                with_segments,
                wait,
            )
        if per_image is None:
            lo, hi = job.label_range()
            if lo < 0:
                raise ValueError(f"sem: class ids must be >= 0, got a minimum of {lo}")
            dtype = output_dtype(hi, params.label_divisor, params.void_label)
            out = queue.allocate(out_shape, dtype)
            per_image = job.finish(_core_view(out, dtype, b, h, w), with_segments, wait)
    except BaseException:
        # Free the first phase's scratch while the stream is surely alive: the traceback keeps
        # the job, and its stream may be gone (or another thread's) when it is collected. (A
        # finish that raised has freed it already; release is then a no-op.)
        job.release()
        raise
    if not with_segments:
        per_image = [None] * b
    return out, per_image, batched


def _device_arrays(named: dict) -> tuple[dict, int]:
    """The inputs of a call (None: absent) as DeviceArrays, and their device. Host arrays beside
    CUDA arrays, CUDA arrays where the CUDA path cannot run, and two devices are refused by name."""
    host = [n for n, x in named.items() if x is not None and not is_cuda_array(x)]
    if host:
        device_names = [n for n, x in named.items() if is_cuda_array(x)]
        got = named[host[0]]
        where = f"a tensor on device '{got.device}'" if is_torch_tensor(got) else _describe(got)
        raise ValueError(
            f"{host[0]}: expected a CUDA array like {device_names[0]}, got {where}; all inputs "
            "must be on the same device (move them with .cuda() / cupy.asarray or all to the CPU)"
        )
    first_name, first = next((n, x) for n, x in named.items() if x is not None)
    _require_available(first_name, first)  # every input is a CUDA array here
    arrays = {n: DeviceArray(x, n) for n, x in named.items() if x is not None}
    # Empty interface-only arrays own no memory (device -1); the others decide the device.
    placed = [(n, a.device) for n, a in arrays.items() if a.device >= 0]
    first_name, device = placed[0] if placed else (first_name, 0)
    for n, d in placed:
        if d != device:
            raise ValueError(
                f"{n}: on CUDA device {d} while {first_name} is on device {device}; all inputs "
                "must be on the same device"
            )
    return arrays, device


def group_pixels(sem, centers, off, foreground_mask, thing_ids, check_centers):
    """``group_pixels`` on the device: the instance map (int32 [B, H, W] or [H, W]) allocated on
    the inputs' device by the caller's library, as :func:`run` allocates its output.

    ``check_centers(centers, b, h, w, batched)`` gives the host [K, 2] int64 centres per image (a
    device's are copied: a few numbers each). The vote runs on the caller's current stream with
    ``merge``'s kernels and returns with the work queued, as ``merge`` does (it waits where
    ``merge`` would, and reads the labels' minimum back where they are signed: negative class ids
    are an error).
    """
    # With a mask, sem is not read (as on the CPU).
    named = {"sem": sem if foreground_mask is None else None, "off": off}
    named["foreground_mask"] = foreground_mask
    arrays, device = _device_arrays(named)
    given_off = arrays["off"]
    batched = given_off.ndim == 4
    off_axes = off_layout(given_off.dtype, given_off.shape, batched)
    off_read = _widened_float(given_off)
    off4, off_shape = _normalize(off_read, off_axes)
    labels = logits = sem_shape = sem_read = mask4 = mask_shape = mask_read = None
    if "foreground_mask" in arrays:
        mask4, mask_shape, mask_read = _normalize_mask(arrays["foreground_mask"], batched)
    elif "sem" in arrays:
        (labels, logits), sem_batched, sem_shape, sem_read = _normalize_sem(arrays["sem"])
        if sem_batched != batched:
            raise ValueError("sem: batched and unbatched inputs are mixed (sem vs off)")
    else:
        raise TypeError(
            "sem: expected labels or logits (None is only allowed together with foreground_mask)"
        )
    b, h, w = check_same_shapes({"off": off_shape, "sem": sem_shape, "foreground_mask": mask_shape})
    if logits is not None and sem_shape[1] == 0:
        raise ValueError("sem: logits need at least one class channel, got 0")
    center_list = check_centers(centers, b, h, w, batched)
    queue = _Queue(arrays, (sem_read, off_read, mask_read), device)
    if not queue.wait:
        queue.record_stream()
    out = queue.allocate((b, h, w) if batched else (h, w), np.int32)
    _core.cuda_group_pixels(
        labels,
        logits,
        off4,
        mask4,
        device,
        queue.stream,
        list(thing_ids),
        [c.ravel() for c in center_list],
        _core_view(out, np.int32, b, h, w),
        queue.wait,
    )
    return out


def fuse(sem, instance, params, output_dtype):
    """``fuse`` on the device: the panoptic map allocated on the inputs' device by the caller's
    library, as :func:`run` allocates its output.

    The job reads the label range and the instance ids' range (one synchronisation), then runs
    ``merge``'s second phase on the given instance map instead of its votes, and returns with the
    work queued as ``merge`` does. Instance maps that are not int32 and contiguous are converted
    on the device by the caller's library, as are ids beyond H * W (renumbered 1..n in increasing
    order over the batch, as on the CPU); after such a conversion the call waits for the device.
    """
    if sem is None:
        as_numpy(sem, "sem")  # raises the host path's error: fuse needs labels or logits
    arrays, device = _device_arrays({"sem": sem, "instance": instance})
    (labels, logits), batched, sem_shape, sem_read = _normalize_sem(arrays["sem"])
    given = arrays["instance"]
    check_instance_layout(given.dtype, given.shape, batched)
    read = given
    if given.dtype in WIDENED_LABEL_DTYPES:
        read = _cast(given, WIDENED_LABEL_DTYPES[given.dtype], "widening instance ids")
    inst4, inst_shape = _normalize(read, (1,) if batched else (0, 1))
    b, h, w = check_same_shapes({"sem": sem_shape, "instance": inst_shape})
    if logits is not None and sem_shape[1] == 0:
        raise ValueError("sem: logits need at least one class channel, got 0")
    queue = _Queue(arrays, (sem_read, read), device)
    job = _core.CudaMerge.for_fuse(
        labels,
        logits,
        inst4,
        device,
        queue.stream,
        list(params.thing_ids),
        params.label_divisor,
        params.stuff_area,
        params.void_label,
    )
    try:
        lowest, counts = job.instance_range()
        if b * h * w and lowest < 0:
            raise ValueError(f"instance: ids must be >= 0, got a minimum of {lowest}")
        # The core's int32 map: the ids as they are where they fit H * W, else renumbered.
        dense = max(counts, default=0) <= min(h * w, np.iinfo(np.int32).max - 1)
        wait = queue.wait
        ids = read
        if not dense:
            if read.library is None:
                raise TypeError(
                    "instance: ids beyond H * W are renumbered on the device, which needs torch "
                    "or CuPy; renumber them 1..n first"
                )
            compact, counts = _renumbered(read.obj, b)
            ids = DeviceArray(compact, "instance")
            wait = True
        elif read.dtype != np.int32 or not _c_contiguous(read):
            ids = read.converted(_int32_contiguous, "an instance map that is not int32 contiguous")
            wait = True
        lo, hi = job.label_range()
        if b * h * w and lo < 0:
            raise ValueError(f"sem: class ids must be >= 0, got a minimum of {lo}")
        dtype = output_dtype(hi, params.label_divisor, params.void_label)
        out = queue.allocate((b, h, w) if batched else (h, w), dtype)
        if not wait:
            queue.record_stream()
        ids4 = ids.view4((b, 1, h, w), (h * w, h * w, w, 1))
        job.finish_fuse(_core_view(out, dtype, b, h, w), ids4, counts, wait)
    except BaseException:
        job.release()  # as in run: free the scratch while the stream is surely alive
        raise
    return out


def _c_contiguous(a: DeviceArray) -> bool:
    """Whether ``a`` is laid out C-contiguous (unit axes' strides aside)."""
    step = 1
    for size, stride in zip(reversed(a.shape), reversed(a.strides)):
        if size > 1 and stride != step:
            return False
        step *= size
    return True


def _int32_contiguous(x):
    """``x`` as a C-contiguous int32 array of its library (ids that fit int32)."""
    if is_torch_tensor(x):
        import torch

        return x.to(torch.int32).contiguous()
    return x.astype(np.int32, order="C")


def _renumbered(x, batch: int) -> tuple:
    """The ids of ``x`` (a torch tensor or CuPy array, [B, ...]) renumbered 1..n in increasing
    order over the batch (0 stays 0 where present), as the CPU's fuse does: (the int32 [B, H*W]
    array of the same library, each image's largest new id)."""
    if is_torch_tensor(x):
        import torch

        present, inverse = torch.unique(x, sorted=True, return_inverse=True)
        _check_distinct(len(present))
        compact = (inverse + (1 if int(present[0]) > 0 else 0)).to(torch.int32)
        compact = compact.reshape(batch, -1).contiguous()
        return compact, compact.amax(dim=1).tolist()
    present, inverse = _array_module(x).unique(x, return_inverse=True)
    _check_distinct(len(present))
    compact = (inverse.reshape(batch, -1) + (1 if int(present[0]) > 0 else 0)).astype(
        np.int32, order="C"
    )
    return compact, [int(c) for c in compact.max(axis=1).tolist()]


def _check_distinct(n: int) -> None:
    if n > np.iinfo(np.int32).max - 1:
        raise ValueError(f"instance: {n} distinct ids do not fit int32 instance numbers")


def _array_module(x):
    """The array module of a CuPy array (its ``unique``)."""
    import cupy

    return cupy


def find_centers(ctr, params):
    """``find_centers`` on the device: returns ([(centers, scores)] per image, batched).

    The heatmap is read in place on the caller's current stream, as in :func:`run`. The core
    synchronises twice: for the peak counts (they size the top-k selection) and after one copy of
    the kept centres to the host. The centres (int64 [K, 2], y and x) and their heatmap values
    (float64 [K]) then go back to the heatmap's device, by the caller's library (torch in, torch
    out; CuPy in, CuPy out): a few numbers per centre, never an image.
    """
    arrays, device = _device_arrays({"ctr": ctr})
    given = arrays["ctr"]
    batched = given.ndim == 4
    axes = ctr_layout(given.dtype, given.shape, batched)
    read = _widened_float(given)
    ctr4, _ = _normalize(read, axes)
    queue = _Queue(arrays, (read,), device)  # the call always waits for the device
    output_library = queue.output_library
    job = _core.CudaMerge(
        None, None, ctr4, None, None, device, queue.stream, *params.core_options()
    )
    try:
        pairs = job.finish_centers()
    except BaseException:
        job.release()  # as in run: free the scratch while the stream is surely alive
        raise
    # One copy to the device for the whole batch: every image's centres, then every score (its
    # bits as int64); each image's pair is a view of it.
    counts = [len(scores) for _, scores in pairs]
    total = sum(counts)
    packed = np.concatenate(
        [np.empty(0, np.int64)]
        + [c.ravel() for c, _ in pairs]
        + [s.view(np.int64) for _, s in pairs]
    )
    on_device = _to_device(output_library, packed, device)
    centers = on_device[: 2 * total].reshape(total, 2)
    scores = on_device[2 * total :].view(_float64_of(output_library))
    ends = np.cumsum(counts).tolist()
    per_image = [(centers[end - k : end], scores[end - k : end]) for k, end in zip(counts, ends)]
    return per_image, batched


def _float64_of(library: str | None):
    """float64 as ``library``'s arrays' ``view`` takes it."""
    if library == "torch":
        import torch

        return torch.float64
    return np.float64


class _Queue:
    """Where a call on ``arrays`` (name -> DeviceArray) and the ``read`` arrays made from them
    (widened copies; others and None are skipped) queues its work.

    ``stream`` (``library``'s current stream, see _stream_library) already waits for the streams
    the inputs were made on; ``output_library`` allocates the output; ``wait``: whether the call
    must wait for the device before returning (see _may_return_early; inputs converted by another
    library than the stream's, CuPy arrays beside torch tensors, were converted on that library's
    stream, which may reuse their memory at once).
    """

    def __init__(self, arrays: dict, read, device: int):
        # Every array the call reads: the inputs and the copies widened from them, alive until
        # the call returns (their readers are queued by then; the allocators free in stream order).
        copies = [a for a in read if a is not None and a.made_here]
        self.touched = [*arrays.values(), *copies]
        self.device = device
        self.library = _stream_library(self.touched)
        self.stream = _stream(self.touched, self.library, device)
        _wait_for_producers(self.touched, self.library, self.stream, device)
        self.output_library = _output_library(self.touched)
        foreign = {a.library for a in copies} & set(_LIBRARIES)
        foreign.discard(self.library)
        self.wait = bool(foreign) or not _may_return_early(self.touched)

    def allocate(self, shape, dtype):
        """The output, by ``output_library`` on the device (_allocate), with the stream waiting
        for its allocation where another library's stream made it (_wait_for_allocation)."""
        out = _allocate(self.output_library, shape, dtype, self.device)
        _wait_for_allocation(self.output_library, self.library, self.stream, self.device)
        return out

    def record_stream(self) -> None:
        """For a call that returns with its work queued: torch's allocator keeps the inputs'
        memory until that work is done (see _record_stream)."""
        if self.library == "torch":
            _record_stream(self.touched, self.device)


def _require_available(name: str, x) -> None:
    """Raises ValueError where the CUDA array ``x`` (argument ``name``) cannot run here."""
    if available():
        return
    why = (
        "no CUDA device or driver is available"
        if compiled()
        else f"this build has no CUDA backend (pdl_post.build_info()['cuda']: "
        f"{_core.build_info()['cuda']!r})"
    )
    where = f"a tensor on device '{x.device}'" if is_torch_tensor(x) else "a CUDA array"
    raise ValueError(f"{name}: got {where}, but {why}; move the inputs to the CPU")


def _wait_for_producers(touched: list[DeviceArray], stream_library, stream: int, device: int):
    """Makes ``stream`` wait for the streams the inputs were made on: another library's current
    stream on the device (CuPy arrays beside torch tensors, and their conversions), and the
    streams interface-only arrays name (version 3 asks the consumer to). CuPy's interface names
    the current stream of the *current* device, so CuPy arrays are not taken by their interface.
    """
    producers = {int(a.stream) for a in touched if a.library is None and a.stream is not None}
    libraries = {a.library for a in touched} & set(_LIBRARIES)
    producers |= {_library_stream(library, device) for library in libraries - {stream_library}}
    for producer in sorted(producers - {stream}):
        _core.cuda_stream_wait(device, stream, producer)


def _to_device(library: str | None, host: np.ndarray, device: int):
    """A copy of a small host array on ``device`` by ``library`` (_output_library)."""
    if library == "torch":
        import torch

        return torch.from_numpy(host).to(f"cuda:{device}")
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(device):
            return cupy.asarray(host)
    raise TypeError(_NO_OUTPUT_LIBRARY)


def _wait_for_allocation(output_library, stream_library, stream: int, device: int) -> None:
    """Makes ``stream`` wait for the output's allocation where another library's current stream
    made it (CuPy's output beside interface-only inputs and a torch stream, say)."""
    if output_library not in (None, stream_library):
        allocated_on = _library_stream(output_library, device)
        if allocated_on != stream:
            _core.cuda_stream_wait(device, stream, allocated_on)


def _core_view(out, dtype, b: int, h: int, w: int) -> tuple:
    """The core's 4-D view [B, 1, H, W] of an output that _allocate made."""
    return (_pointer(out), _CORE_DTYPES[np.dtype(dtype)], [b, 1, h, w], [h * w, h * w, w, 1])
