"""YAML configs with ``key=value`` overrides (dotted keys, YAML-parsed values)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONFIG_DIR", "DEFAULTS", "apply_overrides", "load_config", "merge_dicts"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULTS: dict[str, Any] = {
    "model": {},
    "data": {},
    "targets": {
        "ignore_label": 255,
        "sigma": 8.0,
        "small_instance_area": 4096,
        "small_instance_weight": 3.0,
    },
    "loss": {
        "top_k_percent": 0.2,
        "semantic_weight": 1.0,
        "center_weight": 200.0,
        "offset_weight": 0.01,
    },
    "post": {
        "threshold": 0.1,
        "nms_kernel": 7,
        "top_k": 200,
        "stuff_area": 2048,
        "label_divisor": 1000,
        "void_label": -1,
    },
    "train": {
        "batch_size": 8,
        "iterations": 1000,
        "lr": 0.001,
        "poly_power": 0.9,
        "weight_decay": 0.0,
        "crop": [513, 1025],
        "min_scale": 0.5,
        "max_scale": 2.0,
        "flip": True,
        "amp": "auto",
        "eval_every": 0,
        "checkpoint_every": 500,
        "log_every": 20,
        "num_threads": 1,
        "workers": 0,
        "seed": 0,
        "max_minutes": 0,
        "eval_images": 0,
    },
    "test": {"flip": False, "scales": [1.0], "min_instance_area": 100},
}


def merge_dicts(base: dict, extra: dict) -> dict:
    """Recursive merge: ``extra`` wins; returns a new dict."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``section.key=value`` strings (value parsed as YAML) to a copy of ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load a YAML config (a path, or a file name in the package's ``configs/``)."""
    p = Path(path)
    if not p.exists():
        cand = CONFIG_DIR / p.name
        if not cand.exists():
            cand = CONFIG_DIR / f"{p.name}.yaml"
        if not cand.exists():
            known = sorted(x.name for x in CONFIG_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"config {path!r} not found (package configs: {known})")
        p = cand
    with open(p) as f:
        cfg = yaml.safe_load(f) or {}
    return apply_overrides(merge_dicts(DEFAULTS, cfg), overrides)
