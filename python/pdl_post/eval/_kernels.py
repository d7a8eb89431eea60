"""Array-level helpers over the compiled kernels (``pdl_post._eval_kernels``), each with a plain
numpy reference implementation that the tests compare it with exactly (``backend="reference"``).
"""

from __future__ import annotations

import numpy as np

BACKENDS = ("compiled", "reference")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def _as_u32(a: np.ndarray, name: str):
    """A flat uint32 map the kernels count, and the function that turns its keys back into the
    ids (int64). 32-bit ids go as they are (signed ones by their bit pattern); wider ones that do
    not fit 32 bits are replaced by their rank among the map's distinct ids (a sort), so any
    int64 id works, e.g. ``merge`` output of class ids above 2**31 / label_divisor."""
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    a = a.ravel()
    if a.dtype == np.uint32:
        return np.ascontiguousarray(a), _unsigned
    if a.dtype == np.int32:
        return np.ascontiguousarray(a).view(np.uint32), _signed
    if a.dtype.itemsize < 4:
        if np.issubdtype(a.dtype, np.signedinteger):
            return a.astype(np.int32).view(np.uint32), _signed
        return a.astype(np.uint32), _unsigned
    if a.size == 0:
        return a.astype(np.uint32), _unsigned
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 0xFFFFFFFF:
        return a.astype(np.uint32), _unsigned
    if lo >= -(2**31) and hi < 2**31:
        return a.astype(np.int32).view(np.uint32), _signed
    if hi > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: ids must fit int64, got a maximum of {hi}")
    ids, rank = np.unique(a, return_inverse=True)
    ids = ids.astype(np.int64)
    return rank.astype(np.uint32).ravel(), lambda keys: ids[keys]


def _unsigned(keys: np.ndarray) -> np.ndarray:
    return keys.astype(np.int64)


def _signed(keys: np.ndarray) -> np.ndarray:
    return keys.view(np.int32).astype(np.int64)


def pair_counts(a: np.ndarray, b: np.ndarray, *, backend: str = "compiled"):
    """Count the distinct pairs (a[i], b[i]) of two integer maps of the same shape.

    Parameters
    ----------
    a, b : numpy.ndarray of integers, same shape (any)
        Any ids up to int64's range (32-bit ones are counted as they are, wider ones by rank).

    Returns
    -------
    a_ids, b_ids, counts : numpy.ndarray of int64, shape (K,)
        Sorted by (a_id, b_id); counts > 0.
    """
    _check_backend(backend)
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {a.shape} and {b.shape}")
    if backend == "reference":
        if a.size == 0:
            e = np.zeros(0, np.int64)
            return e, e.copy(), e.copy()
        pairs = np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)], axis=1)
        uniq, counts = np.unique(pairs, axis=0, return_counts=True)
        return uniq[:, 0].copy(), uniq[:, 1].copy(), counts.astype(np.int64)
    from pdl_post import _eval_kernels

    ua, back_a = _as_u32(a, "a")
    ub, back_b = _as_u32(b, "b")
    if ua.size == 0:
        e = np.zeros(0, np.int64)
        return e, e.copy(), e.copy()
    ka, kb, counts = _eval_kernels.pair_counts(ua, ub)
    ka, kb = back_a(ka), back_b(kb)
    order = np.lexsort((kb, ka))
    return ka[order], kb[order], counts[order]


def masked_counts(ids: np.ndarray, mask: np.ndarray, *, backend: str = "compiled"):
    """Count the ids under the non-zero pixels of ``mask``.

    Parameters
    ----------
    ids : numpy.ndarray of integers
    mask : numpy.ndarray of uint8 or bool, same shape

    Returns
    -------
    uniq : numpy.ndarray of int64, sorted
    counts : numpy.ndarray of int64
    pixels : int
        Number of non-zero mask pixels.
    """
    _check_backend(backend)
    if ids.shape != mask.shape:
        raise ValueError(f"ids and mask of different shapes: {ids.shape} and {mask.shape}")
    if backend == "reference":
        sel = ids[mask != 0].astype(np.int64)
        uniq, counts = np.unique(sel, return_counts=True)
        return uniq, counts.astype(np.int64), int(sel.size)
    from pdl_post import _eval_kernels

    u, back = _as_u32(ids, "ids")
    m = np.ascontiguousarray(mask.ravel()).view(np.uint8) if mask.dtype == bool else mask
    if m.dtype != np.uint8:
        m = (m != 0).view(np.uint8)
    m = np.ascontiguousarray(m.ravel())
    if u.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    uniq, counts, npix = _eval_kernels.masked_counts(u, m)
    uniq = back(uniq)
    order = np.argsort(uniq, kind="stable")
    return uniq[order], counts[order], npix
