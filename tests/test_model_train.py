"""Training: a few steps lower the loss, checkpoint round trip, short runs, resume, DDP."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from panoptic_deeplab.config import apply_overrides, load_config  # noqa: E402
from panoptic_deeplab.data import SyntheticPanoptic, TrainTransform, collate  # noqa: E402
from panoptic_deeplab.losses import PanopticDeepLabLoss  # noqa: E402
from panoptic_deeplab.network import build_model  # noqa: E402
from panoptic_deeplab.train import load_model, save_weights, train  # noqa: E402

torch.set_num_threads(1)

SMALL = [
    "model.backbone_kwargs.widths=[8, 16, 16, 32]",
    "model.sem_channels=16",
    "model.ins_channels=8",
    "data.train.num_images=4",
    "data.train.height=48",
    "data.train.width=48",
    "data.val.num_images=2",
    "data.val.height=48",
    "data.val.width=48",
    "train.batch_size=2",
    "train.crop=[48, 48]",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.log_every=1",
    "train.max_minutes=0",
    "post.stuff_area=16",
]


def small_cfg(*extra):
    return load_config("synthetic_tiny.yaml", [*SMALL, *extra])


def test_overrides():
    cfg = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d.e=x"])
    assert cfg == {"a": {"b": 2, "c": [1, 2]}, "d": {"e": "x"}}
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["oops"])


def test_few_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = small_cfg()
    model = build_model(cfg["model"]).train()
    ds = SyntheticPanoptic(num_images=2, height=48, width=48, seed=3)
    tr = TrainTransform(
        thing_ids=ds.thing_ids, crop=(48, 48), min_scale=1.0, max_scale=1.0, flip=False
    )
    rng = np.random.default_rng(0)
    batch = collate([tr(ds[i], rng) for i in range(2)])
    crit = PanopticDeepLabLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = crit(model(batch["image"]), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_checkpoint_round_trip(tmp_path):
    cfg = small_cfg()
    model = build_model(cfg["model"]).eval()
    x = torch.randn(1, 3, 32, 32)
    save_weights(tmp_path / "w.pt", model, cfg, meta={"pq": 0.1})
    model2, cfg2 = load_model(tmp_path / "w.pt")
    assert cfg2 == cfg
    with torch.no_grad():
        a, b = model(x), model2(x)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_train_writes_outputs_and_resumes(tmp_path):
    cfg = small_cfg("train.iterations=3")
    out = tmp_path / "run"
    metrics = train(cfg, out, progress=False)
    for name in (
        "log.jsonl",
        "checkpoint.pt",
        "model.pt",
        "metrics.json",
        "losses.png",
        "config.json",
    ):
        assert (out / name).exists(), name
    assert metrics["iterations"] == 3
    assert json.loads((out / "metrics.json").read_text())["pq"] == metrics["pq"]
    assert "ap" in metrics and "miou" in metrics  # PQ, mIoU and AP in the evaluation
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss" in r] == [1, 2, 3]
    # resume to 5 iterations
    cfg5 = small_cfg("train.iterations=5")
    m5 = train(cfg5, out, resume=out / "checkpoint.pt", progress=False)
    assert m5["iterations"] == 5
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_ddp_two_processes_cpu(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "panoptic_deeplab",
        "train",
        "--config",
        "synthetic_tiny.yaml",
        "--output",
        str(tmp_path / "ddp"),
        *SMALL,
        "train.iterations=2",
        "train.batch_size=4",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iterations"] == 2


def test_train_and_evaluate_on_histolytics(tmp_path):
    """The real-image set (H&E tiles with nuclei from the histolytics wheel) goes through the
    same training loop and evaluation (PQ, mIoU, AP) as the synthetic one."""
    import importlib.util

    if importlib.util.find_spec("histolytics") is None:
        pytest.skip("histolytics wheel not installed (make venv installs it)")
    cfg = load_config(
        "histolytics_tiny.yaml",
        [
            "model.backbone_kwargs.widths=[8, 16, 16, 32]",
            "model.sem_channels=16",
            "model.ins_channels=8",
            "data.train.tile=128",
            "data.val.tile=128",
            "train.iterations=2",
            "train.batch_size=2",
            "train.crop=[96, 96]",
            "train.eval_every=0",
            "train.eval_images=1",
            "train.checkpoint_every=0",
            "train.max_minutes=0",
        ],
    )
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert metrics["iterations"] == 2
    for key in ("pq", "miou", "ap", "ap50"):
        assert key in metrics, key
    assert metrics["images"] >= 1
