"""vote_box_candidates.py on small scenes: its counts (not timings) and its brute-force check."""

from __future__ import annotations

import vote_box_candidates


def test_a_warp_compares_few_centres_and_never_misses_the_nearest():
    calm = vote_box_candidates.count(128, 256, 12, seed=1)
    wild = vote_box_candidates.count(128, 256, 12, offset_noise=60.0, seed=1)
    for row in (calm, wild):
        assert row["missed"] == 0  # every voting pixel's brute-force centre is a candidate
        assert row["centres"] > 6 and row["warps"] == 128 * 256 // 32
        assert 0 < row["voting warps"] < 1
        assert 1 <= row["mean"] <= row["p90"] <= row["max"] <= row["centres"]
    assert calm["mean"] < 2 < wild["mean"]  # votes spread far: wider boxes, more candidates


def test_the_table_prints_a_row_per_scene_and_noise(capsys):
    vote_box_candidates.main(
        ["--height", "64", "--width", "96", "--centers", "5", "9", "--noise", "0", "8"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "scenes 64x96, seed 0"
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in lines[3:]]
    assert rows == [["5", "0"], ["5", "8"], ["9", "0"], ["9", "8"]]
    assert all(line.rstrip().endswith("| 0 |") for line in lines[3:])  # nothing missed
