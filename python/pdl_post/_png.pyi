"""Type stubs of the compiled PNG image-data kernels (src/_png.pyx)."""

import numpy as np
import numpy.typing as npt

def adler32(data: npt.NDArray[np.uint8], value: int = 1, *, portable: bool = False) -> int: ...
def inflate(data: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8]) -> None: ...
def unfilter(buf: npt.NDArray[np.uint8], height: int, rowbytes: int, bpp: int) -> None: ...
def inflate_rows(
    data: npt.NDArray[np.uint8], height: int, width: int, bpp: int, out: npt.NDArray[np.uint8]
) -> None: ...
def decode(
    data: npt.NDArray[np.uint8],
    height: int,
    width: int,
    channels: int,
    bitdepth: int,
    out: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | None = None,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]: ...
def decode_ids(
    data: npt.NDArray[np.uint8],
    height: int,
    width: int,
    channels: int,
    bitdepth: int,
    out: npt.NDArray[np.uint32] | None = None,
) -> npt.NDArray[np.uint32]: ...
def pair_counts_png(
    data_a: npt.NDArray[np.uint8],
    data_b: npt.NDArray[np.uint8],
    height: int,
    width: int,
    a_bpp: int,
    b_bpp: int,
    buf_a: npt.NDArray[np.uint8],
    buf_b: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], npt.NDArray[np.int64]]: ...
