"""Type stubs of the compiled evaluation kernels (src/_eval_kernels.pyx)."""

import numpy as np
import numpy.typing as npt

_U32 = npt.NDArray[np.uint32]
_I64 = npt.NDArray[np.int64]

def pair_counts(a: _U32, b: _U32) -> tuple[_U32, _U32, _I64]: ...
def masked_counts(ids: _U32, mask: npt.NDArray[np.uint8]) -> tuple[_U32, _I64, int]: ...
def pair_counts_rgb(
    a: npt.NDArray[np.uint8],
    b: npt.NDArray[np.uint8],
    height: int,
    width: int,
    a_bpp: int,
    b_bpp: int,
) -> tuple[_U32, _U32, _I64]: ...
def pq_match(
    g: _I64,
    p: _I64,
    inter: _I64,
    gt_ids: _I64,
    gt_cat: _I64,
    gt_crowd: npt.NDArray[np.uint8],
    gt_area: _I64,
    pred_ids: _I64,
    pred_cat: _I64,
    pred_area: _I64,
    void_id: int,
    iou: npt.NDArray[np.float64],
    tp: _I64,
    fp: _I64,
    fn: _I64,
) -> int: ...
def pq_image_coco(
    g32: _U32,
    p32: _U32,
    counts: _I64,
    gt_ids: _I64,
    gt_cat: _I64,
    gt_crowd: npt.NDArray[np.uint8],
    gt_area: _I64,
    pred_ids: _I64,
    pred_cat: _I64,
    iou: npt.NDArray[np.float64],
    tp: _I64,
    fp: _I64,
    fn: _I64,
) -> tuple[int, int | tuple[int, int, int]]: ...
