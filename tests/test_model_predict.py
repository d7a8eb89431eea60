"""Predictor (flip / multi-scale TTA via pdl_post) and export equality."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pdl_post")

from panoptic_deeplab.config import load_config  # noqa: E402
from panoptic_deeplab.data import SyntheticPanoptic, normalize  # noqa: E402
from panoptic_deeplab.export import export_model, load_exported  # noqa: E402
from panoptic_deeplab.network import build_model  # noqa: E402
from panoptic_deeplab.predict import PAPER_SCALES, Predictor  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_cfg():
    torch.manual_seed(0)
    cfg = load_config(
        "synthetic_tiny.yaml",
        [
            "model.backbone_kwargs.widths=[8, 16, 16, 32]",
            "model.sem_channels=16",
            "post.stuff_area=16",
        ],
    )
    model = build_model(cfg["model"]).eval()
    # non-trivial BN statistics so that outputs are not all alike
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, cfg


@pytest.fixture(scope="module")
def image():
    return SyntheticPanoptic(num_images=1, height=64, width=80, seed=5)[0]["image"]


def test_predictor_shapes_and_batch(model_cfg, image):
    model, cfg = model_cfg
    pred = Predictor(model, cfg, thing_ids=(3, 4))
    one = pred(image)
    assert one["panoptic"].shape == (1, 64, 80)
    assert one["semantic"].shape == (1, 64, 80)
    assert one["center"].shape == (1, 1, 64, 80) and one["offset"].shape == (1, 2, 64, 80)
    two = pred([image, image[:, ::-1]])
    assert two["panoptic"].shape == (2, 64, 80)
    np.testing.assert_array_equal(two["panoptic"][0], one["panoptic"][0])
    assert len(two["segments"]) == 2
    # The network's batched convolutions may round differently: scores agree to float precision.
    for a, b in zip(two["segments"][0], one["segments"][0], strict=True):
        assert {**a, "score": 0} == {**b, "score": 0}
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)


def test_predictor_segments_and_scores():
    """Segments describe the panoptic map; scores use the averaged probabilities (not a second
    softmax): thing score = centre heatmap value x mean class probability over the segment."""
    from panoptic_deeplab.train import load_model

    weights = Path(__file__).resolve().parents[1] / "models/panoptic_deeplab/weights"
    model, cfg = load_model(weights / "synthetic_tiny.pt")
    cfg = load_config("synthetic_tiny.yaml", [])  # the same post section, with every default
    image = SyntheticPanoptic(num_images=1, height=128, width=128, seed=77)[0]["image"]
    pred = Predictor(model, cfg, thing_ids=(3, 4), flip=True)
    out = pred(image)
    pan, segs = out["panoptic"][0], out["segments"][0]
    ids = np.unique(pan[pan != cfg["post"]["void_label"]])
    assert sorted(s["id"] for s in segs) == ids.tolist()
    probs = out["probs"][0]
    div = cfg["post"]["label_divisor"]
    import pdl_post

    heat = out["center"][0, 0]
    _, center_scores = pdl_post.find_centers(
        heat,
        threshold=cfg["post"]["threshold"],
        nms_kernel=cfg["post"]["nms_kernel"],
        top_k=cfg["post"]["top_k"],
    )
    assert any(s["isthing"] for s in segs), "the test needs at least one thing segment"
    for s in segs:
        mask = pan == s["id"]
        assert s["area"] == int(mask.sum()) and s["category_id"] == s["id"] // div
        mean_prob = float(probs[s["category_id"]][mask].astype(np.float64).mean())
        if s["isthing"]:
            # score / mean probability is the heatmap value at one of the kept centres
            ratio = s["score"] / mean_prob
            assert np.abs(center_scores - ratio).min() <= 1e-5 * ratio, s
        else:
            assert s["score"] == pytest.approx(mean_prob, rel=1e-5), s
    # The log-probabilities handed to pdl_post give the probabilities' own argmax.
    direct = pdl_post.merge(
        torch.from_numpy(probs)[None],
        torch.from_numpy(out["center"]),
        torch.from_numpy(out["offset"]),
        thing_ids=(3, 4),
        label_divisor=div,
        stuff_area=cfg["post"]["stuff_area"],
        void_label=cfg["post"]["void_label"],
        threshold=cfg["post"]["threshold"],
        nms_kernel=cfg["post"]["nms_kernel"],
        top_k=cfg["post"]["top_k"],
    )
    np.testing.assert_array_equal(np.asarray(direct)[0], pan)


def test_flip_tta_is_flip_equivariant(model_cfg, image):
    model, cfg = model_cfg
    pred = Predictor(model, cfg, thing_ids=(3, 4), flip=True)
    a = pred.forward(normalize(image)[None])
    b = pred.forward(normalize(np.ascontiguousarray(image[:, ::-1]))[None])
    torch.testing.assert_close(b["semantic"].flip(-1), a["semantic"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["center"].flip(-1), a["center"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["offset"][:, 0].flip(-1), a["offset"][:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(-b["offset"][:, 1].flip(-1), a["offset"][:, 1], rtol=1e-4, atol=1e-4)


def test_flip_tta_averages_two_passes(model_cfg, image):
    model, cfg = model_cfg
    x = normalize(image)[None]
    with torch.no_grad():
        o = model(x)
        f = model(x.flip(-1))
    expect = (o["center"] + f["center"].flip(-1)) / 2
    got = Predictor(model, cfg, thing_ids=(3, 4), flip=True).forward(x)["center"]
    torch.testing.assert_close(got, expect)


def test_multiscale_runs(model_cfg, image):
    model, cfg = model_cfg
    out = Predictor(model, cfg, thing_ids=(3, 4), flip=True, scales=PAPER_SCALES)(image)
    assert out["panoptic"].shape == (1, 64, 80)
    assert np.isfinite(out["offset"]).all()


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_export_equality(model_cfg, tmp_path, fmt):
    model, _ = model_cfg
    path = export_model(model, tmp_path / f"net.{fmt}", fmt=fmt, height=64, width=80)
    net = load_exported(path, fmt)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        got = net(x)
    for k, g in zip(("semantic", "center", "offset"), got):
        torch.testing.assert_close(g, ref[k], rtol=1e-5, atol=1e-5)
