"""Training loop (single process or ``torchrun`` DDP), evaluation and checkpoint helpers.

Adam, lr 0.001 with the poly schedule (power 0.9), batch norm trained, random scale / crop /
flip, AMP on CUDA. Writes to the output directory::

    log.jsonl        one JSON object per logged iteration (and per evaluation)
    losses.png       the loss curves
    checkpoint.pt    model + optimizer + scheduler + iteration (for ``--resume``)
    model.pt         the final weights with their config (what ``--weights`` loads)
    metrics.json     the final evaluation on the val split (PQ, SQ, RQ, mIoU, ...)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from .data import TrainTransform, TransformedDataset, build_dataset, collate
from .losses import PanopticDeepLabLoss
from .metrics import Evaluator, gt_to_panoptic_ids
from .network import PanopticDeepLab, build_model

__all__ = ["evaluate", "load_model", "save_weights", "train"]


class _CachedDataset(torch.utils.data.Dataset):
    def __init__(self, base) -> None:
        self.items = [base[i] for i in range(len(base))]
        self.categories = base.categories
        self.thing_ids = base.thing_ids

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _dist_info() -> tuple[int, int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _maybe_init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        return True
    return False


def _pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def save_weights(path: str | Path, model: torch.nn.Module, cfg: dict, meta: dict | None = None):
    """Save weights + config (+ metadata); what :func:`load_model` reads."""
    m = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    torch.save({"config": cfg, "model": state, "meta": meta or {}}, path)


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", cfg: dict | None = None
) -> tuple[PanopticDeepLab, dict]:
    """Load :func:`save_weights` output or a training checkpoint; returns ``(model, config)``."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg = cfg or blob["config"]
    model = build_model(cfg["model"])
    model.load_state_dict(blob["model"])
    return model.to(device).eval(), cfg


def _dataset_meta(ds) -> tuple[list, tuple]:
    return list(ds.categories), tuple(ds.thing_ids)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    cfg: dict,
    *,
    dataset=None,
    max_images: int = 0,
    device: torch.device | str = "cpu",
    predictor=None,
    on_image=None,
) -> dict[str, Any]:
    """PQ / SQ / RQ, mIoU and AP of ``model`` on the val split of ``cfg`` (images one by one).

    ``on_image(sample, result, gt_panoptic)``, if given, is called for every image (e.g. to
    write overlays); ``result`` is the :class:`Predictor` output.
    """
    from .predict import Predictor

    ds = dataset if dataset is not None else build_dataset(cfg, "val")
    categories, thing_ids = _dataset_meta(ds)
    post = cfg["post"]
    ev = Evaluator(
        categories,
        label_divisor=post["label_divisor"],
        void_label=post["void_label"],
        ignore_label=cfg["targets"]["ignore_label"],
        thing_ids=thing_ids,
        min_instance_area=cfg["test"].get("min_instance_area", 100),
    )
    pred = predictor or Predictor(model, cfg, thing_ids=thing_ids, device=device)
    n = len(ds) if not max_images else min(max_images, len(ds))
    t0 = time.perf_counter()
    for i in range(n):
        sample = ds[i]
        out = pred(sample["image"])
        gt = gt_to_panoptic_ids(
            sample,
            label_divisor=post["label_divisor"],
            void_label=post["void_label"],
            thing_ids=thing_ids,
        )
        sem_gt = np.where(
            gt == post["void_label"], cfg["targets"]["ignore_label"], gt // post["label_divisor"]
        )
        scores = {seg["id"]: seg["score"] for seg in out["segments"][0]}
        ev.update(out["panoptic"][0], gt, out["semantic"][0], sem_gt, scores)
        if on_image is not None:
            on_image(sample, out, gt)
    res = ev.compute()
    res["images"] = n
    res["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _plot_losses(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    it = [r["iteration"] for r in rows]
    for key, scale in (("loss", 1), ("semantic", 1), ("center", 200), ("offset", 0.01)):
        ax.plot(it, [r[key] * scale for r in rows], label=key if scale == 1 else f"{key} x{scale}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def train(
    cfg: dict,
    output_dir: str | Path,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train per ``cfg``; returns the final metrics (also in ``output_dir/metrics.json``)."""
    tc = cfg["train"]
    dev = _pick_device(device)
    started_dist = _maybe_init_distributed(dev)
    rank, world, _ = _dist_info()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if tc.get("num_threads"):
        torch.set_num_threads(int(tc["num_threads"]))
    torch.manual_seed(int(tc["seed"]) + rank)
    out_dir = Path(output_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    base = build_dataset(cfg, "train")
    if cfg["data"]["train"].get("type") == "synthetic":
        base = _CachedDataset(base)
    categories, thing_ids = _dataset_meta(base)
    cfg = {**cfg, "data": {**cfg["data"], "categories": categories, "thing_ids": list(thing_ids)}}
    if rank == 0:
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    tcfg = cfg["targets"]
    transform = TrainTransform(
        thing_ids=thing_ids,
        crop=tuple(tc["crop"]),
        min_scale=tc["min_scale"],
        max_scale=tc["max_scale"],
        flip=tc["flip"],
        ignore_label=tcfg["ignore_label"],
        sigma=tcfg["sigma"],
        small_instance_area=tcfg["small_instance_area"],
        small_instance_weight=tcfg["small_instance_weight"],
    )
    train_set = TransformedDataset(base, transform, seed=int(tc["seed"]))
    sampler = (
        DistributedSampler(train_set, num_replicas=world, rank=rank, seed=int(tc["seed"]))
        if world > 1
        else None
    )
    per_rank_batch = max(1, int(tc["batch_size"]) // world)
    loader = DataLoader(
        train_set,
        batch_size=per_rank_batch,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=int(tc["workers"]),
        collate_fn=collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(int(tc["seed"])),
    )

    model = build_model(cfg["model"]).to(dev)
    if world > 1:
        model = (
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if dev.type == "cuda" else model
        )
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    criterion = PanopticDeepLabLoss(ignore_label=tcfg["ignore_label"], **cfg["loss"])
    opt = torch.optim.Adam(
        model.parameters(), lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"])
    )
    iters = int(tc["iterations"])
    power = float(tc["poly_power"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: max(0.0, 1.0 - min(i, iters) / iters) ** power
    )
    use_amp = dev.type == "cuda" and str(tc.get("amp", "auto")).lower() in ("auto", "true", "1")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_it = 0
    if resume:
        blob = torch.load(resume, map_location=dev, weights_only=False)
        (model.module if world > 1 else model).load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        start_it = int(blob["iteration"])

    log_path = out_dir / "log.jsonl"
    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=iters, initial=start_it, desc="train", dynamic_ncols=True)
    max_seconds = float(tc.get("max_minutes") or 0) * 60.0
    eval_every = int(tc.get("eval_every") or 0)
    ckpt_every = int(tc.get("checkpoint_every") or 0)
    log_every = max(1, int(tc.get("log_every") or 1))

    def checkpoint(it: int) -> None:
        if rank != 0:
            return
        m = model.module if world > 1 else model
        torch.save(
            {
                "config": cfg,
                "model": m.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "iteration": it,
            },
            out_dir / "checkpoint.pt",
        )

    def log(row: dict) -> None:
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    it = start_it
    epoch = 0
    model.train()
    stopped_early = False
    t_loop = time.perf_counter()
    while it < iters:
        train_set.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                outputs = model(batch["image"])
            losses = criterion(outputs, batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            it += 1
            if it % log_every == 0 or it == iters:
                row = {"iteration": it, "lr": sched.get_last_lr()[0]}
                row.update({k: float(v.detach()) for k, v in losses.items()})
                row["elapsed_s"] = round(time.perf_counter() - t_start, 2)
                log(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}")
            if bar is not None:
                bar.update(1)
            if ckpt_every and it % ckpt_every == 0:
                checkpoint(it)
            if eval_every and it % eval_every == 0 and it < iters and rank == 0:
                m = model.module if world > 1 else model
                m.eval()
                res = evaluate(m, cfg, max_images=int(tc.get("eval_images") or 0), device=dev)
                m.train()
                log({"iteration": it, "eval": res})
            if max_seconds and time.perf_counter() - t_start > max_seconds:
                stopped_early = True
            if world > 1:
                flag = torch.tensor([int(stopped_early)], device=dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopped_early = bool(flag.item())
            if it >= iters or stopped_early:
                break
        epoch += 1
        if stopped_early:
            break
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t_loop
    checkpoint(it)

    metrics: dict[str, Any] = {}
    if rank == 0:
        m = model.module if world > 1 else model
        m.eval()
        metrics = evaluate(m, cfg, device=dev)
        metrics.update(
            {
                "iterations": it,
                "stopped_early": stopped_early,
                "train_seconds": round(train_seconds, 1),
                "total_seconds": round(time.perf_counter() - t_start, 1),
                "world_size": world,
                "device": str(dev),
                "num_threads": torch.get_num_threads(),
            }
        )
        save_weights(out_dir / "model.pt", m, cfg, meta=metrics)
        log({"iteration": it, "eval": metrics})
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        with contextlib.suppress(Exception):
            _plot_losses(log_path, out_dir / "losses.png")
    if world > 1:
        dist.barrier()
        if started_dist:
            dist.destroy_process_group()
    return metrics
