"""vote_pruning_reads.py's model on hand-made warps and a small scene (its counts, not timings)."""

from __future__ import annotations

import numpy as np

import vote_pruning_reads as model


def _warp(qy, qx, cy, cx):
    qy, qx = np.asarray(qy, np.float32), np.asarray(qx, np.float32)
    voting = np.isfinite(qy)
    candidates, mismatches = np.empty(1, np.int64), np.zeros(1, np.int64)
    model._warps(
        np.asarray(cy, np.float32),
        np.asarray(cx, np.float32),
        qy,
        qx,
        voting,
        candidates,
        mismatches,
    )
    return int(candidates[0]), int(mismatches[0])


def test_a_warp_voting_at_one_centre_reads_only_it():
    # 32 votes on centre 1 of three: the box is that point, the cut 0, the other bounds above it.
    assert _warp([5.0] * 32, [7.0] * 32, [0, 5, 50], [0, 7, 50]) == (1, 0)


def test_a_warp_split_between_two_centres_reads_both():
    # The cut is the farther lanes' distance to centre 1 (35^2 + 33^2): centre 0 at (0, 0), whose
    # bound from the box is 5^2 + 7^2, is read too; one 100 further out is not.
    qy, qx = [5.0] * 16 + [40.0] * 16, [7.0] * 16 + [40.0] * 16
    assert _warp(qy, qx, [0, 5, 40, 1000], [0, 7, 40, 1000]) == (3, 0)
    assert _warp(qy, qx, [-100, 5, 40, 1000], [-100, 7, 40, 1000]) == (2, 0)


def test_tied_centres_are_all_read_and_the_lower_index_wins():
    # Two centres at the same spot tie for every vote: both are candidates, no disagreement.
    assert _warp([3.0] * 32, [3.0] * 32, [9, 3, 3], [9, 3, 3]) == (2, 0)


def test_a_warp_without_voters_is_not_counted():
    assert _warp([np.nan] * 32, [np.nan] * 32, [1], [1]) == (-1, 0)


def test_the_script_runs_on_a_small_scene(capsys):
    args = [
        "--height",
        "64",
        "--width",
        "128",
        "--centers",
        "6",
        "--batch",
        "2",
        "--model-images",
        "2",
    ]
    assert model.main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = [row for row in rows if not row.startswith("| case")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| batch 1",
        "| batch 2",
        "| shipped model, 2 images",
    ]
    assert all(row.endswith("| yes |") for row in rows)
