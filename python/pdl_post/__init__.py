"""pdl_post: fast, exact Panoptic-DeepLab post-processing.

>>> import pdl_post
>>> panoptic = pdl_post.merge(sem, ctr, off)            # doctest: +SKIP

The rules are in ``docs/merge-semantics.md``; the compiled core (C++17, OpenMP), its CUDA path
(CUDA arrays in, ``pdl_post.cuda_available()``) and the readable reference backend give identical
results.
"""

from pdl_post import _core, presets
from pdl_post._api import (
    PanopticResult,
    available_backends,
    cuda_available,
    cuda_release_memory,
    find_centers,
    fuse,
    group_pixels,
    merge,
    postprocess,
)

__version__ = _core.build_info()["version"]

__all__ = [
    "PanopticResult",
    "__version__",
    "available_backends",
    "build_info",
    "cuda_available",
    "cuda_release_memory",
    "find_centers",
    "fuse",
    "group_pixels",
    "merge",
    "postprocess",
    "presets",
]


def build_info() -> dict:
    """How this installation was built: version, compiler, build type, OpenMP, threads, CUDA.

    ``cpu_avx2`` says whether the CPU's AVX2 copies of its vector loops run (the processor has
    AVX2; the results are the same bits either way). ``cuda`` is "enabled" or why not;
    ``cuda_compiled`` says whether the CUDA path is in this build and ``cuda_build`` (when it is)
    the CUDA runtime and architectures compiled for.
    """
    return dict(_core.build_info())
