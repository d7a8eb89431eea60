"""nms_paths.py's own logic on a small scene (no number of this run means anything): it runs,
checks that the two NMS paths agree, and prints its table with the path the library took."""

from __future__ import annotations

import nms_paths


def test_nms_paths_script_runs(monkeypatch, capsys):
    monkeypatch.setattr(
        nms_paths, "SCENES", [("small", 96, 160, 8, 200, 7), ("wide window", 96, 160, 8, None, 41)]
    )
    assert nms_paths.main(["--threads", "2", "--rounds", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| small")]
    assert len(rows) == 1 and rows[0].endswith("| sparse |")
