"""Export the network (post-processing stays in ``pdl_post``).

Formats:

``export``      ``torch.export`` ExportedProgram saved with ``torch.export.save`` (``.pt2``);
                needs nothing beyond torch. Static input shape ``[batch, 3, height, width]``.
``torchscript`` ``torch.jit.trace`` (deprecated in torch 2.x, but still the format most C++
                deployments load); its warnings are silenced here. Fixed input shape.
``onnx``        ``torch.onnx.export`` (needs the ``onnx`` and ``onnxscript`` packages).

The exported graph takes the normalised image and returns ``(semantic, center, offset)`` at
input resolution, exactly what :func:`pdl_post.merge` consumes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["TupleOutput", "export_model", "load_exported"]


class TupleOutput(nn.Module):
    """Wrap the network so it returns ``(semantic, center, offset)`` (export-friendly)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out["semantic"], out["center"], out["offset"]


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    fmt: str = "export",
    height: int = 128,
    width: int = 128,
    batch: int = 1,
) -> Path:
    """Export ``model`` (in eval mode) for a ``[batch, 3, height, width]`` input to ``path``."""
    path = Path(path)
    wrapped = TupleOutput(model).eval()
    example = torch.zeros(batch, 3, height, width)
    if fmt == "export":
        ep = torch.export.export(wrapped, (example,))
        torch.export.save(ep, path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            # jit is deprecated; its TracerWarnings about shape-derived Python values are
            # expected for a fixed-shape trace.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapped, example)
        traced.save(str(path))
    elif fmt == "onnx":
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["semantic", "center", "offset"],
        )
    else:
        raise ValueError(f"fmt must be 'export', 'torchscript' or 'onnx', got {fmt!r}")
    return path


def load_exported(path: str | Path, fmt: str = "export"):
    """Load an exported network; returns a callable ``x -> (semantic, center, offset)``."""
    if fmt == "export":
        return torch.export.load(str(path)).module()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path))
    raise ValueError(f"fmt must be 'export' or 'torchscript' to load here, got {fmt!r}")
