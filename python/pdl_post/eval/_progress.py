"""Progress reporting for long evaluations: tqdm when installed, else a small stderr bar."""

from __future__ import annotations

import sys
import time


class _StderrBar:
    def __init__(self, total: int, desc: str):
        self.total = max(int(total), 0)
        self.desc = desc
        self.n = 0
        self._last = 0.0
        self._start = time.monotonic()
        self._draw(force=True)

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1 and self.n < self.total:
            return
        self._last = now
        width = 30
        frac = self.n / self.total if self.total else 1.0
        filled = int(frac * width)
        rate = self.n / max(now - self._start, 1e-9)
        sys.stderr.write(
            f"\r{self.desc}: {100 * frac:3.0f}%|{'#' * filled}{' ' * (width - filled)}| "
            f"{self.n}/{self.total} [{rate:.1f}/s]"
        )
        sys.stderr.flush()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def close(self) -> None:
        self._draw(force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A bar with ``update(n)`` and ``close()``; a no-op when ``enabled`` is false."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _StderrBar(total, desc)
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=True)
