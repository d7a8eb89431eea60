"""float_modes.py on small scenes: its rows, and the same answers with the caller flushing."""

from __future__ import annotations

import platform

import float_modes


def test_float_modes_rows():
    rows = float_modes.measure(96, 160, threads=(1, 2), calls=2, small_calls=2)
    modes = ["default", "flush"] if platform.machine() in ("x86_64", "AMD64") else ["default"]
    cases = ["merge 96x160 labels", "postprocess 96x160 logits", "merge 64x64"]
    assert [(r["mode"], r["case"], r["threads"]) for r in rows] == [
        (m, c, t) for m in modes for c in cases for t in (1, 2)
    ]
    assert all(r["ms"] > 0 for r in rows)
