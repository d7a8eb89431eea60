"""``python -m panoptic_deeplab summary|train|evaluate|predict|export|demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "synthetic_tiny.pt"


def _cmd_summary(args) -> int:
    import torch

    from .config import load_config
    from .network import build_model
    from .summary import summarize

    cfg = load_config(args.config, args.overrides)
    with torch.device("meta"):
        model = build_model(cfg["model"])
    res = summarize(model, args.height, args.width)
    if args.json:
        print(json.dumps({"params_m": res["params_m"], "madds_b": res["madds_b"]}))
    else:
        print(json.dumps(res, indent=2))
    return 0


def _cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    metrics = train(cfg, args.output, resume=args.resume, device=args.device)
    if metrics:
        print(json.dumps({k: metrics[k] for k in ("pq", "sq", "rq", "miou") if k in metrics}))
    return 0


def _load(args):
    from .config import apply_overrides
    from .train import load_model

    weights = args.weights or DEFAULT_WEIGHTS
    model, cfg = load_model(weights, device=args.device or "cpu")
    if getattr(args, "config", None):
        from .config import load_config

        cfg = load_config(args.config)
    return model, apply_overrides(cfg, args.overrides)


def _thing_ids(cfg) -> tuple:
    """Thing train ids: from the config (written by ``train``) or the val data set."""
    if "thing_ids" in cfg.get("data", {}):
        return tuple(cfg["data"]["thing_ids"])
    from .data import build_dataset

    return tuple(build_dataset(cfg, "val").thing_ids)


def _cmd_evaluate(args) -> int:
    import torch

    from .train import evaluate

    torch.set_num_threads(args.threads)
    model, cfg = _load(args)
    if args.seed is not None:
        cfg["data"]["val"]["seed"] = args.seed
    if args.flip or args.scales:
        cfg["test"] = {"flip": args.flip, "scales": args.scales or [1.0]}
    res = evaluate(model, cfg, device=args.device or "cpu", max_images=args.max_images)
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))
    return 0


def _cmd_predict(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .predict import Predictor

    torch.set_num_threads(args.threads)
    model, cfg = _load(args)
    with Image.open(args.image) as im:
        image = np.asarray(im.convert("RGB"))
    pred = Predictor(
        model, cfg, thing_ids=_thing_ids(cfg), flip=args.flip, scales=args.scales or None
    )(image)
    _write_overlay(args.out, image, pred["panoptic"][0], cfg)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"panoptic_ids": np.unique(pred["panoptic"]).tolist()})
        )
    print(f"wrote {args.out}")
    return 0


def _write_overlay(path, image, panoptic, cfg) -> None:
    import numpy as np
    from PIL import Image

    try:
        from pdl_post.viz import overlay

        ov = overlay(
            image,
            panoptic,
            label_divisor=cfg["post"]["label_divisor"],
            void_label=cfg["post"]["void_label"],
        )
    except ImportError:  # pragma: no cover - pdl_post.viz is part of the library
        ov = image
    Image.fromarray(np.asarray(ov, dtype=np.uint8)).save(path)


def _cmd_export(args) -> int:
    import torch

    from .export import export_model

    torch.set_num_threads(args.threads)
    model, _ = _load(args)
    path = export_model(model, args.out, fmt=args.format, height=args.height, width=args.width)
    print(f"wrote {path}")
    return 0


def _cmd_demo(args) -> int:
    import torch
    from PIL import Image

    from .data import build_dataset
    from .train import evaluate

    torch.set_num_threads(args.threads)
    model, cfg = _load(args)
    ds = build_dataset(cfg, "val")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write_overlays(sample, result, gt) -> None:
        name = sample["name"]
        Image.fromarray(sample["image"]).save(out / f"{name}_image.png")
        _write_overlay(out / f"{name}_panoptic.png", sample["image"], result["panoptic"][0], cfg)
        _write_overlay(out / f"{name}_groundtruth.png", sample["image"], gt, cfg)

    m = evaluate(model, cfg, dataset=ds, max_images=args.images, on_image=write_overlays)
    print(json.dumps(m))
    (out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    print(f"wrote overlays to {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panoptic_deeplab", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, *, weights: bool, config_required: bool = False) -> None:
        sp.add_argument(
            "--config", required=config_required, help="YAML path or packaged config name"
        )
        if weights:
            sp.add_argument(
                "--weights", help=f"model.pt / checkpoint (default: {DEFAULT_WEIGHTS.name})"
            )
        sp.add_argument("--device", default=None)
        sp.add_argument("--threads", type=int, default=1)
        sp.add_argument("overrides", nargs="*", help="config overrides: section.key=value")

    sp = sub.add_parser("summary", help="parameters and multiply-adds")
    common(sp, weights=False, config_required=True)
    sp.add_argument("--height", type=int, default=1025)
    sp.add_argument("--width", type=int, default=2049)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_cmd_summary)

    sp = sub.add_parser("train", help="train (torchrun for DDP)")
    common(sp, weights=False, config_required=True)
    sp.add_argument("--output", required=True)
    sp.add_argument("--resume", default=None, help="checkpoint.pt to resume from")
    sp.set_defaults(fn=_cmd_train)

    sp = sub.add_parser("evaluate", help="PQ / SQ / RQ, mIoU and AP on the val split")
    common(sp, weights=True)
    sp.add_argument("--seed", type=int, default=None, help="seed of the synthetic val split")
    sp.add_argument("--max-images", type=int, default=0)
    sp.add_argument("--flip", action="store_true")
    sp.add_argument("--scales", type=float, nargs="*", default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_cmd_evaluate)

    sp = sub.add_parser("predict", help="image -> overlay PNG")
    common(sp, weights=True)
    sp.add_argument("--image", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--json-out", default=None)
    sp.add_argument("--flip", action="store_true")
    sp.add_argument("--scales", type=float, nargs="*", default=None)
    sp.set_defaults(fn=_cmd_predict)

    sp = sub.add_parser("export", help="export the network (post-processing stays in pdl_post)")
    common(sp, weights=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--format", choices=["export", "torchscript", "onnx"], default="export")
    sp.add_argument("--height", type=int, default=128)
    sp.add_argument("--width", type=int, default=128)
    sp.set_defaults(fn=_cmd_export)

    sp = sub.add_parser("demo", help="val images -> network -> pdl_post -> overlays + PQ")
    common(sp, weights=True)
    sp.add_argument("--out", default="demo-out")
    sp.add_argument("--images", type=int, default=8)
    sp.set_defaults(fn=_cmd_demo)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
