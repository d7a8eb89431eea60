"""Predictor (flip / multi-scale TTA via pdl_post) and export equality."""

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
