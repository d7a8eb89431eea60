"""``python -m pdl_post.demo`` end to end, at a small size, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pdl_post.synthetic")


def _run_demo(tmp_path, *extra):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "pdl_post.demo", "--out", str(out), "--height", "96",
           "--width", "160", "--centers", "6", "--seed", "3", "--threads", "1", "--repeats", "2",
           *extra]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_demo_writes_pngs_and_reports(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    out, stdout = _run_demo(tmp_path)
    for name in ("panoptic.png", "centers.png"):
        with pil.open(out / name) as im:
            assert im.mode == "RGB"
            assert im.size == (160, 96)
            rgb = np.array(im)
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 3
    assert "pdl_post.merge:" in stdout
    assert "median of 2 runs" in stdout
    assert "segments:" in stdout
    assert "PQ" in stdout
    # torch is a test dependency: the baseline runs and agrees with merge (fewer than top_k peaks)
    if "skipped (torch" not in stdout:
        assert "dense PyTorch:" in stdout
        assert "same output: yes" in stdout
        assert "speed-up:" in stdout


def test_demo_panoptic_png_matches_colorize(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    import pdl_post
    from pdl_post import viz
    from pdl_post.synthetic import make_scene

    out, _ = _run_demo(tmp_path, "--no-torch")
    scene = make_scene(96, 160, 6, seed=3)
    pan = pdl_post.merge(scene.sem, scene.ctr, scene.off, thing_ids=scene.thing_ids)
    with pil.open(out / "panoptic.png") as im:
        np.testing.assert_array_equal(np.array(im), viz.colorize(np.asarray(pan), seed=3))


def test_demo_no_torch_and_bad_args(tmp_path):
    _, stdout = _run_demo(tmp_path, "--no-torch")
    assert "skipped (--no-torch)" in stdout
    proc = subprocess.run(
        [sys.executable, "-m", "pdl_post.demo", "--out", str(tmp_path), "--height", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "--height must be >= 1" in proc.stderr
