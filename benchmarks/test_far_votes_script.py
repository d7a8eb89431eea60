"""far_votes.py on a small scene: its table's rows (counts and structure, not timings)."""

from __future__ import annotations

import far_votes


def test_far_votes_rows_on_a_small_scene():
    rows = far_votes.measure(96, 160, stds=(0.0, 1e6), threads=(1, 2), rounds=2)
    assert [(r["std"], r["threads"], r["runs"]) for r in rows] == [
        (0.0, 1, 2),
        (0.0, 2, 2),
        (1e6, 1, 2),
        (1e6, 2, 2),
    ]
    assert all(r["centres"] == rows[0]["centres"] > 100 for r in rows)
    assert rows[0]["outside"] == 0.0 and rows[2]["outside"] > 0.99  # std 0: no vote leaves
    assert all(r["seconds"] > 0 for r in rows)
    # Every thing pixel votes: with std 0 each centre keeps at least its own pixel (all its ids
    # plus no void), far votes gather on the centres along the image's edges.
    assert rows[0]["ids"] == rows[0]["centres"]
    assert 1 < rows[2]["ids"] < rows[0]["ids"]
    assert rows[2]["ids"] == rows[3]["ids"]  # thread counts agree


def test_far_votes_with_top_k():
    [row] = far_votes.measure(96, 160, stds=(1e6,), threads=(1,), rounds=3, top_k=5)
    assert row["centres"] == 5 and row["runs"] == 3
    assert 1 < row["ids"] <= 5
