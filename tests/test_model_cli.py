"""Command line: evaluate / predict / demo / export with the shipped synthetic_tiny weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pdl_post")
Image = pytest.importorskip("PIL.Image")

import panoptic_deeplab  # noqa: E402

WEIGHTS = Path(panoptic_deeplab.__file__).parent / "weights" / "synthetic_tiny.pt"
pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="shipped weights missing")


def run(*args, timeout=120):
    res = subprocess.run(
        [sys.executable, "-m", "panoptic_deeplab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_evaluate_shipped_weights_other_seed():
    out = run("evaluate", "--seed", "4242", "--max-images", "12", "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert res["images"] == 12
    assert res["pq"] >= 0.5, res
    # AP from the segment scores, pixel metrics from the semantic GT: all real numbers.
    for key in ("ap", "ap50", "miou", "pixel_accuracy", "mean_accuracy", "fwiou"):
        assert 0.0 <= res[key] <= 1.0, (key, res)
    assert res["ap50"] >= 0.5, res


def test_demo_and_predict(tmp_path):
    out = run("demo", "--out", str(tmp_path / "demo"), "--images", "2")
    res = json.loads(out.strip().splitlines()[0])
    assert res["images"] == 2 and 0.0 <= res["pq"] <= 1.0
    assert all(0.0 <= res[k] <= 1.0 for k in ("ap", "miou", "pixel_accuracy")), res
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["pq"] == res["pq"]
    pngs = sorted(p.name for p in (tmp_path / "demo").glob("*.png"))
    assert len(pngs) == 6
    image = next((tmp_path / "demo").glob("*_image.png"))
    run("predict", "--image", str(image), "--out", str(tmp_path / "pred.png"), "--flip")
    with Image.open(tmp_path / "pred.png") as a, Image.open(image) as b:
        assert a.size == b.size
