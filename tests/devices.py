"""Devices of the parametrised tests: the CPU path, the CUDA path on the host emulator, a GPU.

``cpu`` runs everywhere; ``emulated`` runs the CUDA sources (cpp/cuda) on the host emulator
(cpp/cuda_emulation, module pdl_post._cuda_emulation, built by ``make test``) fed numpy memory
through ``__cuda_array_interface__``; ``cuda`` runs on a GPU with torch or CuPy arrays and is
skipped without one. The fixtures ``device`` and ``cuda_device`` (conftest.py) take these values.
"""

from __future__ import annotations

import ctypes
import gc
import types
import weakref

import numpy as np
import pytest

import pdl_post


def _gpu_library():
    if not pdl_post.cuda_available():
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:  # pragma: no cover
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy"
    except Exception:  # pragma: no cover - CuPy absent or without a driver
        pass
    return None


GPU = _gpu_library()
needs_gpu = pytest.mark.skipif(
    GPU is None,
    reason="no GPU: pdl_post.cuda_available() is False or neither torch nor CuPy sees a device",
)
try:
    from pdl_post import _cuda_emulation as EMULATION
except ImportError:  # pragma: no cover - a build without PDL_POST_CUDA_EMULATION
    EMULATION = None
needs_emulation = pytest.mark.skipif(
    EMULATION is None, reason="pdl_post._cuda_emulation not built (PDL_POST_CUDA_EMULATION=OFF)"
)
# "emulated": the CUDA sources on the host emulator (cpp/cuda_emulation), fed numpy memory
# through __cuda_array_interface__; runs everywhere the test build runs.
DEVICES = [
    "cpu",
    pytest.param("emulated", marks=needs_emulation),
    pytest.param("cuda", marks=needs_gpu),
]


class HostCudaArray:
    """numpy memory exposed through __cuda_array_interface__ (what the emulated device reads)."""

    def __init__(self, a: np.ndarray):
        self.a = a
        self.__cuda_array_interface__ = {
            "shape": a.shape,
            "typestr": a.dtype.str,
            "data": (a.ctypes.data if a.size else 0, False),
            "strides": None if a.flags.c_contiguous else a.strides,
            "version": 3,
        }

    @property
    def shape(self) -> tuple:
        return self.a.shape

    @property
    def device(self):  # as CuPy's arrays: the device's id (the emulator has device 0 only)
        return types.SimpleNamespace(id=0)

    def __getitem__(self, index):  # a view on the same "device", as CuPy's and torch's indexing
        return type(self)(np.asarray(self.a[index]))  # a 0-d array for one element, as CuPy's

    # The conversions the CUDA dispatch asks of the caller's array library (as CuPy's).
    def __gt__(self, other):
        return HostCudaArray(self.a > other)

    def __ne__(self, other):
        return HostCudaArray(self.a != other)

    def astype(self, dtype, order="K"):
        return HostCudaArray(self.a.astype(dtype, order=order))

    def reshape(self, *shape):  # views on the same "device", as CuPy's
        return HostCudaArray(self.a.reshape(*shape))

    def view(self, dtype):
        return HostCudaArray(self.a.view(dtype))

    # What the renumbering of fuse's instance ids asks of CuPy's arrays (see HOST_ARRAY_MODULE).
    def __add__(self, other):
        return HostCudaArray(self.a + other)

    def max(self, axis=None):
        return HostCudaArray(np.asarray(self.a.max(axis=axis)))

    def tolist(self):
        return self.a.tolist()

    def __int__(self):
        return int(self.a)

    def __len__(self):
        return len(self.a)


# The functions of CuPy's module that the CUDA dispatch calls (_cuda._array_module), on the
# emulator's arrays.
HOST_ARRAY_MODULE = types.SimpleNamespace(
    unique=lambda x, return_inverse: tuple(
        HostCudaArray(r) for r in np.unique(x.a, return_inverse=return_inverse)
    )
)


class InterfaceOnlyArray(HostCudaArray):
    """Only __cuda_array_interface__: no array library that could convert it on the device."""


def use_emulation(monkeypatch):
    """Route CUDA arrays through pdl_post._cuda_emulation; returns a check for after the test."""
    from pdl_post import _core, _cuda

    monkeypatch.setattr(_cuda, "available", lambda: True)
    monkeypatch.setattr(_core, "cuda_pointer_device", EMULATION.cuda_pointer_device, raising=False)
    monkeypatch.setattr(_core, "CudaMerge", EMULATION.CudaMerge, raising=False)
    monkeypatch.setattr(_core, "cuda_group_pixels", EMULATION.cuda_group_pixels, raising=False)
    monkeypatch.setattr(_core, "cuda_release_memory", EMULATION.cuda_release_memory, raising=False)
    monkeypatch.setattr(_core, "cuda_stream_wait", EMULATION.cuda_stream_wait, raising=False)
    library = _cuda._library
    monkeypatch.setattr(
        _cuda, "_library", lambda x: "host" if type(x) is HostCudaArray else library(x)
    )
    monkeypatch.setattr(
        _cuda,
        "_allocate",
        lambda library, shape, dtype, device: HostCudaArray(np.empty(shape, dtype)),
    )
    monkeypatch.setattr(_cuda, "_to_device", lambda library, host, device: HostCudaArray(host))
    monkeypatch.setattr(_cuda, "_array_module", lambda x: HOST_ARRAY_MODULE)
    to_host_ = _cuda.to_host  # the emulator's arrays go to the host as CuPy's do (.get())
    monkeypatch.setattr(
        _cuda, "to_host", lambda x, name: x.a if type(x) is HostCudaArray else to_host_(x, name)
    )
    EMULATION.take_violations()
    allocations = EMULATION.live_allocations()

    def check():
        gc.collect()  # exception tracebacks may hold a CudaMerge (and its scratch) in a cycle
        assert EMULATION.take_violations() == []
        assert EMULATION.live_allocations() == allocations, "device memory leaked"

    return check


def on_emulated_device(a: np.ndarray, device: int) -> HostCudaArray:
    """A copy of `a` in the emulator's memory of `device` (set_device_count), freed with the
    last view of it. The emulator fails a kernel of another device that touches it, and its
    pointer names its device (cudaPointerGetAttributes), as a GPU's would."""
    nbytes = max(a.nbytes, 1)
    pointer = EMULATION.allocate_on_device(nbytes, device)
    memory = (ctypes.c_char * nbytes).from_address(pointer)
    view = np.frombuffer(memory, dtype=a.dtype, count=a.size).reshape(a.shape)
    view[...] = a
    weakref.finalize(memory, EMULATION.free_on_device, pointer)  # once no view holds it
    return HostCudaArray(view)


def speculation_seen(timeline, raised=False):
    """How the speculative phase went in an emulated call's timeline (take_timeline): held,
    failed, not tried, or the call raised (the CPU's error) after trying."""
    is_vote = [name in ("kernel", "vote_kernel") for name in timeline]
    if "plan_check_kernel" not in timeline:
        return "none"
    # The stream's order that the speculation relies on: the tables' upload (page-locked, freed
    # once the header's copy is waited for), the plan's check, the header's copy, the speculative
    # kernels (the vote among them), and only then the host's first wait.
    upload = timeline.index("copy host_to_device_copies")
    check = timeline.index("plan_check_kernel")
    header = timeline.index("copy device_to_host_copies")
    wait = timeline.index("synchronisation")
    assert upload < check < header < is_vote.index(True) < wait, timeline
    if raised:
        return "raises"
    # Held: no vote after the wait (merge ends there, postprocess reads back its results).
    # Failed: the phase again after it.
    return "holds" if sum(is_vote) == 1 else "fails"


def forget_capacities(device="emulated"):
    """The speculative second phase (cuda_pipeline.h) of the device's build forgets the capacities
    earlier calls taught it: the next call on a size waits for its counts, and the one after it
    speculates with that call's (so counts of runtime calls do not depend on the calls before).
    Returns the build's module."""
    module = EMULATION if device == "emulated" else pdl_post._core
    module._set_cuda_speculation(False)
    module._set_cuda_speculation(True)
    return module


def to_device(a, device):
    """numpy -> the device's array (numpy itself for 'cpu'); None stays None."""
    if a is None or device == "cpu":
        return a
    if device == "emulated":
        return HostCudaArray(np.array(a))  # a private copy: the kernels must not write inputs
    if GPU == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).cuda()
    import cupy

    return cupy.asarray(a)


def to_host(a) -> np.ndarray:
    """numpy, the emulator's arrays, CuPy arrays and torch tensors (any device, subclasses too)
    as a numpy array."""
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, HostCudaArray):
        return a.a
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.asnumpy(a)
    if hasattr(a, "cpu"):
        return a.cpu().numpy()
    return np.asarray(a)


def run_on(device, sem, ctr, off, *, mask=None, **kw):
    """postprocess and merge on a CUDA `device` equal the CPU path's; returns the CPU result.

    Scores are compared exactly, logits scores included (the CPU's summation order and the
    library's own exp on both).
    """
    from conftest import assert_results_equal

    cpu = pdl_post.postprocess(sem, ctr, off, foreground_mask=mask, backend="cpu", **kw)
    args = [to_device(a, device) for a in (sem, ctr, off, mask)]
    gpu = pdl_post.postprocess(*args[:3], foreground_mask=args[3], **kw)
    merged = pdl_post.merge(*args[:3], foreground_mask=args[3], **kw)
    batched = isinstance(cpu, list)
    for r in gpu if batched else [gpu]:
        r.panoptic = to_host(r.panoptic)
    assert_results_equal(gpu, cpu, score_rtol=0)
    cpu_panoptic = pdl_post.merge(sem, ctr, off, foreground_mask=mask, backend="cpu", **kw)
    host = to_host(merged)
    assert host.dtype == cpu_panoptic.dtype
    np.testing.assert_array_equal(host, cpu_panoptic)
    return cpu
