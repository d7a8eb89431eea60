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
WEIGHTS = "models/panoptic_deeplab/weights/synthetic_tiny.pt"  # from the repository root


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

    model, cfg = load_model(Path(__file__).resolve().parents[1] / WEIGHTS)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("probabilities", [False, True])
def test_merge_outputs_on_cuda_equals_cpu(probabilities):
    """Network outputs on the GPU are merged there (the CUDA path) and give the CPU's ids and
    segments (scores exactly with logits; with probabilities torch's log runs on each device)."""
    import pdl_post
    from panoptic_deeplab.postprocess import merge_outputs
    from panoptic_deeplab.train import load_model

    if not pdl_post.cuda_available():
        pytest.skip("this build of pdl_post has no CUDA path")
    # The shipped weights: scenes with thing and stuff segments (8 + 3 and 4 + 3 here).
    model, cfg = load_model(Path(__file__).resolve().parents[1] / WEIGHTS)
    images = SyntheticPanoptic(num_images=2, height=128, width=128, seed=77)
    x = torch.stack([normalize(im["image"]) for im in images])
    with torch.no_grad():
        outputs = {k: v.float() for k, v in model(x).items()}
    if probabilities:
        outputs["semantic"] = outputs["semantic"].softmax(1)
    kw = {"thing_ids": (3, 4), "post": cfg["post"], "probabilities": probabilities}
    want_pan, want_segments = merge_outputs(outputs, **kw, segments=True)
    assert all(any(s["isthing"] for s in image) for image in want_segments)
    on_gpu = {k: v.cuda() for k, v in outputs.items()}
    pan, segments = merge_outputs(on_gpu, **kw, segments=True)
    np.testing.assert_array_equal(pan, want_pan)
    np.testing.assert_array_equal(merge_outputs(on_gpu, **kw), want_pan)
    rel = 1e-6 if probabilities else 0
    for got, want in zip(segments, want_segments, strict=True):
        assert [s["id"] for s in got] == [s["id"] for s in want]
        for s, w in zip(got, want, strict=True):
            assert s["score"] == pytest.approx(w["score"], rel=rel, abs=0)


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
