"""Run a per-image accumulation over many images, in this process or in a process pool.

The per-image statistics of every evaluator are mergeable with ``+=`` (sums), so a pool simply
gives each worker a contiguous chunk of images and a fresh accumulator, and the chunks' results
are added up in chunk order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from pdl_post.eval._progress import progress_bar

A = TypeVar("A")


def check_workers(workers) -> int:
    """``None`` -> 1; ``0`` -> all CPUs; else a positive int."""
    if workers is None:
        return 1
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers: expected an int or None, got {type(workers).__name__}")
    if workers < 0:
        raise ValueError(f"workers: expected >= 0 (0 = all CPUs), got {workers}")
    return workers if workers > 0 else (os.cpu_count() or 1)


def _run_chunk(func, items, acc):
    func(items, acc, None)
    return acc


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def run_images(
    func: Callable[[Sequence[Any], A, Callable[[int], None] | None], None],
    items: Sequence[Any],
    acc: A,
    new_acc: Callable[[], A],
    *,
    workers: int,
    progress: bool,
    desc: str,
) -> A:
    """Accumulate ``func(items, acc, tick)`` over ``items``; returns ``acc``.

    ``func`` must be a module-level function (picklable) that adds every item's statistics into
    ``acc`` and calls ``tick(1)`` after each item when ``tick`` is given.
    """
    bar = progress_bar(len(items), desc, progress)
    try:
        if workers <= 1 or len(items) <= 1:
            func(items, acc, bar.update)
            return acc
        n_chunks = min(len(items), 4 * workers)
        bounds = [round(i * len(items) / n_chunks) for i in range(n_chunks + 1)]
        chunks = [items[bounds[i] : bounds[i + 1]] for i in range(n_chunks)]
        with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as ex:
            futures = [ex.submit(_run_chunk, func, chunk, new_acc()) for chunk in chunks]
            for chunk, fut in zip(chunks, futures):
                acc += fut.result()
                bar.update(len(chunk))
        return acc
    finally:
        bar.close()
