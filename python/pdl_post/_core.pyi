"""Type stubs of the compiled core (pdl_post._core). Use the pdl_post API instead: these
functions take the 4-D [B, C, H, W] views that pdl_post._inputs prepares and do no validation."""

from typing import Any

import numpy as np
import numpy.typing as npt

Segments = dict[str, npt.NDArray[Any]]  # id, category_id, isthing, area, score, instance

def build_info() -> dict[str, Any]: ...
def _single_threaded_after_fork() -> bool: ...
def _set_release_pool_at_fork(release: bool) -> bool: ...
def _get_float_modes() -> int: ...
def _set_float_modes(modes: int) -> None: ...
def _ieee_float_modes(modes: int) -> int: ...
def _set_cpu_avx2(enabled: bool) -> bool: ...

class _NmsStrategy:
    auto: _NmsStrategy
    sparse: _NmsStrategy
    filter: _NmsStrategy

def _set_nms_strategy(strategy: _NmsStrategy) -> _NmsStrategy: ...
def _nms_path_counts() -> dict[str, int]: ...
def label_range(sem: npt.NDArray[np.integer], num_threads: int) -> tuple[int, int]: ...
def argmax_logits(
    logits: npt.NDArray[np.floating], out: npt.NDArray[np.int32], num_threads: int
) -> None: ...
def find_centers(
    ctr: npt.NDArray[np.floating],
    threshold: float,
    nms_kernel: int,
    top_k: int,
    topk_mode: str,
    num_threads: int,
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]: ...
def group_pixels(
    sem: npt.NDArray[np.integer] | None,
    thing_ids: list[int],
    thing_mask: npt.NDArray[np.uint8] | None,
    off: npt.NDArray[np.floating],
    centers: list[npt.NDArray[np.int64]],
    instance: npt.NDArray[np.int32],
    num_threads: int,
) -> None: ...
def fuse(
    sem: npt.NDArray[np.integer],
    instance: npt.NDArray[np.int32],
    num_instances: list[int],
    max_label: int,
    thing_ids: list[int],
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    logits: npt.NDArray[np.floating] | None,
    center_scores: list[list[float]] | None,
    out: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    num_threads: int,
) -> list[Segments]: ...
def merge(
    sem: npt.NDArray[np.integer],
    ctr: npt.NDArray[np.floating],
    off: npt.NDArray[np.floating],
    thing_mask: npt.NDArray[np.uint8] | None,
    logits: npt.NDArray[np.floating] | None,
    max_label: int,
    thing_ids: list[int],
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    threshold: float,
    nms_kernel: int,
    top_k: int,
    topk_mode: str,
    out: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    num_threads: int,
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], Segments]]: ...
def panoptic_targets(
    panoptic: npt.NDArray[np.integer],
    segment_ids: list[int],
    category_ids: list[int],
    iscrowd: list[int],
    thing_ids: list[int],
    ignore_label: int,
    radius: int,
    small_instance_area: int,
    small_instance_weight: float,
    ignore_crowd_in_semantic: bool,
    gaussian: npt.NDArray[np.float32],
    semantic: npt.NDArray[np.int64],
    semantic_weights: npt.NDArray[np.float32],
    center: npt.NDArray[np.float32],
    offset: npt.NDArray[np.float32],
    center_weights: npt.NDArray[np.float32],
    offset_weights: npt.NDArray[np.float32],
    num_threads: int,
) -> None: ...

# Present only when the CUDA path is compiled in (build_info()["cuda_compiled"]).
DeviceView = tuple[int, str, list[int], list[int]]  # pointer, dtype, shape[4], strides[4]

def cuda_device_count() -> int: ...
def cuda_pointer_device(pointer: int) -> int: ...
def cuda_release_memory() -> int: ...
def cuda_stream_wait(device: int, stream: int, producer: int) -> None: ...
def cuda_group_pixels(
    sem: DeviceView | None,
    logits: DeviceView | None,
    off: DeviceView,
    mask: DeviceView | None,
    device: int,
    stream: int,
    thing_ids: list[int],
    centers: list[npt.NDArray[np.int64]],
    out: DeviceView,
    wait: bool,
) -> None: ...

# Test and benchmark hooks (cuda_pipeline.h); each returns the previous setting.
def _set_cuda_vote_chunks(chunks: bool) -> bool: ...
def _set_cuda_vote_box(box: bool) -> bool: ...
def _set_cuda_warp_peaks(by_warp: bool) -> bool: ...
def _set_cuda_packed_loads(packed: bool) -> bool: ...
def _set_cuda_speculation(speculate: bool) -> bool: ...

class CudaMerge:
    # sem, logits and off None (and mask None): a job for finish_centers only.
    def __init__(
        self,
        sem: DeviceView | None,
        logits: DeviceView | None,
        ctr: DeviceView,
        off: DeviceView | None,
        mask: DeviceView | None,
        device: int,
        stream: int,
        thing_ids: list[int],
        label_divisor: int,
        stuff_area: int,
        void_label: int,
        threshold: float,
        nms_kernel: int,
        top_k: int,
        topk_mode: str,
    ) -> None: ...
    @staticmethod
    def for_fuse(
        sem: DeviceView | None,
        logits: DeviceView | None,
        instance: DeviceView,
        device: int,
        stream: int,
        thing_ids: list[int],
        label_divisor: int,
        stuff_area: int,
        void_label: int,
    ) -> CudaMerge: ...
    def label_range(self) -> tuple[int, int]: ...
    def instance_range(self) -> tuple[int, list[int]]: ...
    def finish_fuse(
        self, out: DeviceView, instance: DeviceView, counts: list[int], wait: bool
    ) -> None: ...
    def finish(
        self, out: DeviceView, with_segments: bool, wait: bool
    ) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], Segments]]: ...
    def finish_if_fits(
        self, out: DeviceView, max_label: int, with_segments: bool, wait: bool
    ) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], Segments]] | None: ...
    def finish_centers(self) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]: ...
    def release(self) -> None: ...
