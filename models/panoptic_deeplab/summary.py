"""Parameter and multiply-add counts (the paper's "Params (M)" / "M-Adds (B)")."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_madds", "count_params", "summarize"]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (weights, biases, BN scale/offset)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_madds(model: nn.Module, height: int, width: int) -> dict[str, int]:
    """Multiply-adds of one forward pass on a ``[1, 3, height, width]`` input.

    Counted: every ``Conv2d`` (``out_elements * in_ch / groups * kh * kw``) and ``Linear``.
    Not counted (as in the usual M-Adds convention): biases, batch norm, activations,
    pooling, bilinear resizing, concatenation. Returns ``{"conv": ..., "by_module": {...}}``
    keyed by the top-level child name. Build the model under ``torch.device("meta")`` to
    count without computing anything (the input is created on the model's device).
    """
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(top: str):
        def hook(mod: nn.Module, inp, out) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1]
                n = out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * k
            else:
                n = out.numel() // out.shape[0] * mod.in_features
            counts[top] = counts.get(top, 0) + n

        return hook

    for top, child in model.named_children():
        for m in child.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(make_hook(top)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fwd = getattr(model, "forward_stride4", model.forward)
            dev = next(model.parameters()).device
            fwd(torch.zeros(1, 3, height, width, device=dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {"total": sum(counts.values()), "by_module": counts}


def summarize(model: nn.Module, height: int, width: int) -> dict:
    """``{"params_m", "madds_b", "params_by_module", "madds_by_module_b"}``."""
    madds = count_madds(model, height, width)
    by_mod = {
        name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()
    }
    return {
        "params_m": round(count_params(model) / 1e6, 4),
        "madds_b": round(madds["total"] / 1e9, 4),
        "params_by_module_m": {k: round(v / 1e6, 4) for k, v in by_mod.items()},
        "madds_by_module_b": {k: round(v / 1e9, 4) for k, v in madds["by_module"].items()},
        "height": height,
        "width": width,
    }
