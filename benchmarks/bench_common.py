"""Shared pieces of the benchmark suite and ``benchmarks/run.py``.

- the scene grid (DESIGN §4) at three scales: ``full`` (the issue's grid), ``small`` (512x1024 only,
  ``run.py --quick``) and ``tiny`` (smoke runs, ``pytest benchmarks --bench-quick``);
- adapters that call our fast backend, the reference backend and the dense PyTorch baseline through
  whatever the package provides (the public stage API when it exists, else the reference module);
- the copy floor: one pass reading every input byte and writing every output byte with
  ``numpy.copyto`` on N threads;
- peak-memory measurement from ``/proc/self/status`` (VmHWM after resetting it).

Nothing here times anything: pytest-benchmark does.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

STAGES = ("merge", "find_centers", "group_pixels", "fuse")
BACKENDS = ("ours", "reference", "dense_torch", "floor")
BACKEND_LABELS = {
    "ours": "pdl_post (cpu)",
    "reference": "reference (numba)",
    "dense_torch": "dense PyTorch",
    "floor": "copy floor",
}
SCALES = ("tiny", "small", "full")

# Default merge parameters (DESIGN §3, Cityscapes).
THRESHOLD = 0.1
NMS_KERNEL = 7
LABEL_DIVISOR = 1000
STUFF_AREA = 2048
VOID_LABEL = -1

#: Dense PyTorch is skipped where its K x H*W tensors would need more than this (GiB).
DEFAULT_DENSE_MAX_GB = 8.0
#: Bytes per (centre, pixel) pair the dense baseline holds at its peak (three float32 [K, H*W]
#: temporaries); measured 12.0-12.6 at 512x1024 with 40 and 200 centres.
DENSE_BYTES_PER_PAIR = 12.5
#: Rough seconds per (centre, pixel) pair of the dense baseline (2 threads, distances plus the
#: per-instance loop; measured 38-47 ns) and of the reference's brute-force voting (~1.2 ns per
#: (centre, thing pixel) pair, single-threaded numba). Only used to choose the number of rounds.
DENSE_SECONDS_PER_PAIR = 50e-9
REFERENCE_SECONDS_PER_PAIR = 1.5e-9
REFERENCE_SECONDS_PER_PIXEL = 2e-7


@dataclass(frozen=True)
class SceneSpec:
    """One benchmark scene: size, number of instances drawn, and the ``top_k`` used on it."""

    height: int
    width: int
    centers: int  # instances drawn by the generator (the scene may show a few fewer)
    top_k: int | None  # 200 (the default) or None ("unbounded" scenes)
    seed: int = 0

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def ident(self) -> str:
        k = "all" if self.top_k is None else str(self.top_k)
        return f"{self.size}-n{self.centers}-top{k}"


def scene_specs(scale: str) -> list[SceneSpec]:
    """The scene grid of a scale (see the module docstring)."""
    if scale == "full":
        sizes, counts, big = [(512, 1024), (1024, 2048)], (10, 40, 200), 2200
        extra = [SceneSpec(2048, 4096, 3100, None)]
    elif scale == "small":
        sizes, counts, big = [(512, 1024)], (10, 40, 200), 2200
        extra = []
    elif scale == "tiny":
        sizes, counts, big = [(48, 96), (96, 192)], (2, 5, 20), 80
        extra = [SceneSpec(128, 256, 160, None)]
    else:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    specs = [SceneSpec(h, w, n, 200) for h, w in sizes for n in counts]
    specs += [SceneSpec(h, w, big, None) for h, w in sizes]
    return specs + extra


def default_threads() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU model name (as ``lscpu`` shows it), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    import platform

    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# scenes and the backends
# ---------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A generated scene with the inputs of every stage computed once by our backend."""

    spec: SceneSpec
    sem: np.ndarray  # [H, W] int32
    ctr: np.ndarray  # [1, H, W] float32
    off: np.ndarray  # [2, H, W] float32
    thing_ids: tuple[int, ...]
    centers: np.ndarray  # [K, 2] (y, x) from find_centers
    instance: np.ndarray  # [H, W] int32 from group_pixels
    panoptic_gt: np.ndarray
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def num_centers(self) -> int:
        return int(self.centers.shape[0])

    @property
    def thing_mask(self) -> np.ndarray:
        if "thing_mask" not in self.cache:
            self.cache["thing_mask"] = np.isin(self.sem, np.asarray(self.thing_ids))
        return self.cache["thing_mask"]


def make_prepared(spec: SceneSpec, *, threads: int) -> Prepared:
    """Generate a scene and its stage inputs (centres, instance map).

    The stage inputs come from our backend when it is built (fast), else from the reference; the
    reference benchmarks check that both agree.
    """
    from pdl_post.synthetic import make_scene

    scene = make_scene(spec.height, spec.width, spec.centers, seed=spec.seed)
    prep = Prepared(
        spec=spec,
        sem=np.ascontiguousarray(scene.sem),
        ctr=np.ascontiguousarray(scene.ctr),
        off=np.ascontiguousarray(scene.off),
        thing_ids=tuple(int(t) for t in scene.thing_ids),
        centers=np.zeros((0, 2), np.int64),
        instance=np.zeros(scene.sem.shape, np.int32),
        panoptic_gt=scene.panoptic_gt,
    )
    find = ours_stage("find_centers", prep, threads) or reference_stage("find_centers", prep)
    prep.centers = stage_output("find_centers", find())
    group = ours_stage("group_pixels", prep, threads) or reference_stage("group_pixels", prep)
    prep.instance = np.ascontiguousarray(stage_output("group_pixels", group()), dtype=np.int32)
    return prep


def _first(result: Any) -> Any:
    """The array of a stage's result: stages may return a tuple (e.g. centres, scores)."""
    if isinstance(result, tuple):
        return result[0]
    if hasattr(result, "panoptic"):
        return result.panoptic
    return result


def public_api() -> Any:
    """The ``pdl_post`` package when it exposes ``merge`` (the compiled core is built), else None."""
    try:
        import pdl_post
    except ImportError:  # pragma: no cover
        return None
    return pdl_post if hasattr(pdl_post, "merge") else None


def ours_stage(stage: str, prep: Prepared, threads: int) -> Callable[[], Any] | None:
    """A no-argument callable running one stage with our compiled backend, or None."""
    api = public_api()
    if api is None or not hasattr(api, stage):
        return None
    return _api_stage(api, stage, prep, threads=threads, backend="cpu")


def reference_stage(stage: str, prep: Prepared) -> Callable[[], Any]:
    """A no-argument callable running one stage with the reference backend."""
    api = public_api()
    if api is not None and hasattr(api, stage):
        return _api_stage(api, stage, prep, threads=1, backend="reference")
    from pdl_post import reference

    sp = prep.spec
    if stage == "find_centers":
        return lambda: reference.find_centers(
            prep.ctr[0], threshold=THRESHOLD, nms_kernel=NMS_KERNEL, top_k=sp.top_k
        )
    if stage == "group_pixels":
        return lambda: reference.group_pixels(
            prep.centers, prep.off, np.isin(prep.sem, np.asarray(prep.thing_ids))
        )
    fuse_kw = {
        "thing_ids": prep.thing_ids,
        "label_divisor": LABEL_DIVISOR,
        "stuff_area": STUFF_AREA,
        "void_label": VOID_LABEL,
    }
    if stage == "fuse":
        return lambda: reference.fuse(prep.sem, prep.instance, **fuse_kw)
    return lambda: reference.postprocess_image(
        prep.sem,
        prep.ctr,
        prep.off,
        threshold=THRESHOLD,
        nms_kernel=NMS_KERNEL,
        top_k=sp.top_k,
        **fuse_kw,
    )["panoptic"]


def _api_stage(api: Any, stage: str, prep: Prepared, *, threads: int, backend: str):
    sp = prep.spec
    common = {"num_threads": threads, "backend": backend}
    fuse_kw = {
        "thing_ids": prep.thing_ids,
        "label_divisor": LABEL_DIVISOR,
        "stuff_area": STUFF_AREA,
        "void_label": VOID_LABEL,
    }
    ctr_kw = {"threshold": THRESHOLD, "nms_kernel": NMS_KERNEL, "top_k": sp.top_k}
    if stage == "find_centers":
        return lambda: api.find_centers(prep.ctr, **ctr_kw, **common)
    if stage == "group_pixels":
        return lambda: api.group_pixels(
            prep.sem, prep.centers, prep.off, thing_ids=prep.thing_ids, **common
        )
    if stage == "fuse":
        return lambda: api.fuse(prep.sem, prep.instance, **fuse_kw, **common)
    return lambda: api.merge(prep.sem, prep.ctr, prep.off, **ctr_kw, **fuse_kw, **common)


def stage_output(stage: str, result: Any) -> np.ndarray:
    """The array to compare between backends: centres, instance map or panoptic map."""
    out = _first(result)
    if stage == "find_centers":
        return np.asarray(out).reshape(-1, 2).astype(np.int64)
    return np.asarray(out)


def dense_module() -> Any:
    """``pdl_post.baselines.dense_torch`` when torch and the module import, else None."""
    try:
        from pdl_post.baselines import dense_torch
    except ImportError:
        return None
    return dense_torch


def dense_bytes(num_centers: int, height: int, width: int) -> float:
    """Estimated peak bytes of the dense baseline on a scene (its K x H*W tensors)."""
    return DENSE_BYTES_PER_PAIR * max(num_centers, 1) * height * width


def dense_stage(stage: str, prep: Prepared, threads: int) -> Callable[[], Any] | None:
    """A callable running the dense PyTorch baseline for a stage, or None where it has none.

    The baseline is one function for the whole merge; per-stage functions are used when the
    module provides them (``find_centers``, ``group_pixels``, ``fuse``).
    """
    mod = dense_module()
    if mod is None:
        return None
    import torch

    torch.set_num_threads(threads)
    sem = torch.from_numpy(prep.sem)
    ctr = torch.from_numpy(prep.ctr)
    off = torch.from_numpy(prep.off)
    sp = prep.spec
    fuse_kw = {
        "thing_ids": prep.thing_ids,
        "label_divisor": LABEL_DIVISOR,
        "stuff_area": STUFF_AREA,
        "void_label": VOID_LABEL,
    }
    ctr_kw = {"threshold": THRESHOLD, "nms_kernel": NMS_KERNEL, "top_k": sp.top_k}
    if stage == "merge":
        fn = getattr(mod, "panoptic_dense_torch", None)
        if fn is None:
            return None
        return lambda: fn(sem, ctr, off, **ctr_kw, **fuse_kw)
    fn = getattr(mod, stage, None)
    if fn is None:
        return None
    if stage == "find_centers":
        return lambda: fn(ctr, **ctr_kw)
    if stage == "group_pixels":
        centers = torch.from_numpy(prep.centers)
        mask = torch.from_numpy(prep.thing_mask)
        return lambda: fn(centers, off, mask)
    instance = torch.from_numpy(prep.instance)
    return lambda: fn(sem, instance, **fuse_kw)


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array or a CPU torch tensor."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# the copy floor
# ---------------------------------------------------------------------------------------------


class CopyFloor:
    """One pass reading every input byte and writing every output byte, on ``threads`` threads.

    Per block of rows, ``numpy.copyto`` writes the output block from the first input (a ``[H, W]``
    map of the same shape, cast to the output dtype) and reads every other input block into a
    small per-thread scratch buffer that stays in cache, so memory sees exactly the input bytes
    read and the output bytes written. The output is allocated on every call, as a function that
    returns a new array must. numpy's copy is single-threaded, so ``threads > 1`` splits the rows
    into one contiguous range per worker of a thread pool (numpy releases the GIL while copying).
    Below ``MIN_PARALLEL_BYTES`` one thread is used: there a pool's hand-off costs more than the
    copy, and the floor should be the fastest honest pass.

    Parameters
    ----------
    inputs : sequence of numpy.ndarray, each ``[H, W]`` or ``[C, H, W]``
        C-contiguous inputs sharing H and W.
    out_dtype : numpy dtype or None
        Dtype of the ``[H, W]`` output; None when the stage's output is negligible (read only).
    threads : int
        Number of threads.
    """

    #: bytes of one block of all inputs together: large enough that the per-call overhead of
    #: ``numpy.copyto`` is negligible, small enough that the scratch stays in cache
    BLOCK_BYTES = 1 << 20
    #: below this many bytes moved, copy on one thread
    MIN_PARALLEL_BYTES = 2 << 20

    def __init__(self, inputs: Sequence[np.ndarray], *, out_dtype: Any, threads: int) -> None:
        self.inputs = [np.ascontiguousarray(a) for a in inputs]
        self.hw = self.inputs[0].shape[-2:]
        for a in self.inputs:
            if a.shape[-2:] != self.hw or a.ndim not in (2, 3):
                raise ValueError(f"floor inputs must share [H, W] = {self.hw}, got {a.shape}")
        self.out_dtype = None if out_dtype is None else np.dtype(out_dtype)
        if self.out_dtype is not None and self.inputs[0].ndim != 2:
            raise ValueError("the first floor input must be the [H, W] map the output copies")
        h, w = self.hw
        row_bytes = sum(a.nbytes // max(h, 1) for a in self.inputs)
        self.block_rows = max(1, min(h, self.BLOCK_BYTES // max(row_bytes, 1)))
        self.threads = max(1, int(threads))
        if self.bytes_moved < self.MIN_PARALLEL_BYTES:
            self.threads = 1
        bounds = np.linspace(0, h, self.threads + 1).astype(int)
        self.ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        first_read = 1 if self.out_dtype is not None else 0
        self.scratch = [
            [
                np.empty((*a.shape[:-2], self.block_rows, w), dtype=a.dtype)
                for a in self.inputs[first_read:]
            ]
            for _ in self.ranges
        ]
        self.pool = ThreadPoolExecutor(self.threads) if len(self.ranges) > 1 else None

    @property
    def bytes_moved(self) -> int:
        """Input bytes read plus output bytes written by one call."""
        h, w = self.hw
        out = 0 if self.out_dtype is None else h * w * self.out_dtype.itemsize
        return sum(a.nbytes for a in self.inputs) + out

    def _work(self, i: int, out: np.ndarray | None) -> None:
        y0, y1 = self.ranges[i]
        scratch = self.scratch[i]
        first_read = 0 if out is None else 1
        for r0 in range(y0, y1, self.block_rows):
            r1 = min(r0 + self.block_rows, y1)
            n = r1 - r0
            if out is not None:
                np.copyto(out[r0:r1], self.inputs[0][r0:r1], casting="unsafe")
            for a, s in zip(self.inputs[first_read:], scratch):
                np.copyto(s[..., :n, :], a[..., r0:r1, :])

    def __call__(self) -> np.ndarray | None:
        out = None if self.out_dtype is None else np.empty(self.hw, dtype=self.out_dtype)
        if self.pool is None:
            self._work(0, out)
        else:
            for f in [self.pool.submit(self._work, i, out) for i in range(len(self.ranges))]:
                f.result()
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def floor_for(stage: str, prep: Prepared, threads: int) -> CopyFloor:
    """The copy floor of a stage: its inputs read, its ``[H, W]`` int32 output written.

    - merge: sem, ctr, off in; panoptic out.
    - find_centers: ctr in; the centres are negligible (read only).
    - group_pixels: sem, off in; instance map out.
    - fuse: sem, instance in; panoptic out.
    """
    if stage == "merge":
        return CopyFloor([prep.sem, prep.ctr[0], prep.off], out_dtype=np.int32, threads=threads)
    if stage == "find_centers":
        return CopyFloor([prep.ctr[0]], out_dtype=None, threads=threads)
    if stage == "group_pixels":
        return CopyFloor([prep.sem, prep.off], out_dtype=np.int32, threads=threads)
    if stage == "fuse":
        return CopyFloor([prep.sem, prep.instance], out_dtype=np.int32, threads=threads)
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


# ---------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(re.findall(r"\d+", line)[0])
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset the peak RSS (VmHWM) to the current RSS; returns the current RSS in bytes or None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return None if rss is None else rss * 1024


def peak_rss() -> int | None:
    """Peak RSS (VmHWM) in bytes since the last :func:`reset_peak_rss`, or None."""
    hwm = _status_kib("VmHWM")
    return None if hwm is None else hwm * 1024


def measure_peak_extra(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """Run ``fn`` once; return its result and the peak RSS above the RSS before, in bytes.

    Accurate for allocations the allocator returns to the system (glibc: above its mmap
    threshold, which ``MALLOC_MMAP_THRESHOLD_`` pins); smaller reused heap blocks may be missed.
    """
    before = reset_peak_rss()
    result = fn()
    after = peak_rss()
    if before is None or after is None:
        return result, None
    return result, max(0, after - before)


def predicted_seconds(backend: str, stage: str, prep: Prepared) -> float:
    """Rough run time of a slow baseline, to decide whether to probe it before timing."""
    h, w, k = prep.spec.height, prep.spec.width, max(prep.num_centers, 1)
    if backend == "dense_torch":
        return DENSE_SECONDS_PER_PAIR * k * h * w
    if backend == "reference":
        t = REFERENCE_SECONDS_PER_PIXEL * h * w
        if stage in ("merge", "group_pixels"):
            t += REFERENCE_SECONDS_PER_PAIR * k * int(prep.thing_mask.sum())
        return t
    return 0.0


def rounds_for(seconds_estimate: float, *, budget: float = 3.0, max_rounds: int = 5) -> int:
    """Rounds for a slow baseline in pedantic mode: as many as fit ``budget`` s, 1..max_rounds."""
    if seconds_estimate <= 0:
        return max_rounds
    return int(max(1, min(max_rounds, math.floor(budget / seconds_estimate))))


# ---------------------------------------------------------------------------------------------
# peak memory of our merge, in a fresh process
# ---------------------------------------------------------------------------------------------


def measure_ours_memory_subprocess(spec: SceneSpec, *, threads: int, timeout: float = 600) -> dict:
    """Peak extra RSS of one ``pdl_post.merge`` call on ``spec``'s scene, in a fresh process.

    The child pins glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_=65536``) so that every large
    buffer is mapped on allocation and unmapped on free: the peak RSS above the RSS before the
    call is then the call's own peak working memory (output included). One warm-up call first.

    Returns
    -------
    dict
        ``{"peak_extra_bytes": int | None, "bytes_per_pixel": float | None, "centers": int}``
    """
    import json
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "memory",
        str(spec.height),
        str(spec.width),
        str(spec.centers),
        "none" if spec.top_k is None else str(spec.top_k),
        str(spec.seed),
        str(threads),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_child(argv: list[str]) -> None:
    import json

    h, w, n = (int(v) for v in argv[:3])
    top_k = None if argv[3] == "none" else int(argv[3])
    seed, threads = int(argv[4]), int(argv[5])
    spec = SceneSpec(h, w, n, top_k, seed)
    prep = make_prepared(spec, threads=threads)
    fn = ours_stage("merge", prep, threads)
    if fn is None:
        raise SystemExit("pdl_post.merge is not available")
    fn()  # warm-up: thread pools, lazy imports
    _, extra = measure_peak_extra(fn)
    print(
        json.dumps(
            {
                "peak_extra_bytes": extra,
                "bytes_per_pixel": None if extra is None else extra / (h * w),
                "centers": prep.num_centers,
            }
        )
    )


if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 2 and sys.argv[1] == "memory":
        _memory_child(sys.argv[2:])
    else:
        raise SystemExit("usage: bench_common.py memory H W N TOPK|none SEED THREADS")
