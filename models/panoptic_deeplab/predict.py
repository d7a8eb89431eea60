"""Inference: image(s) -> network (optionally flip / multi-scale TTA) -> ``pdl_post``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import normalize
from .network import upsample_outputs
from .postprocess import merge_outputs

__all__ = ["PAPER_SCALES", "Predictor"]

#: The paper's multi-scale inference scales.
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


class Predictor:
    """Run the network and ``pdl_post.merge`` on images.

    Parameters
    ----------
    model : PanopticDeepLab (or any module returning ``semantic`` / ``center`` / ``offset``)
    cfg : dict
        Config; its ``post`` section parameterises the merge, ``test`` the default TTA.
    thing_ids : sequence of int
    flip : bool, optional
        Also run on the left-right flipped image (outputs flipped back, dx negated).
    scales : sequence of float, optional
        Input scales; outputs are resized back to the input size (offsets rescaled) and
        averaged: semantic as softmax probabilities, centre heatmaps and offsets directly.

    Calling with one ``uint8 [H, W, 3]`` image, a list of them (same size), or a normalised
    float tensor ``[B, 3, H, W]`` returns ``{"panoptic": int [B, H, W], "segments": [B] lists of
    segment dicts (``id``, ``category_id``, ``isthing``, ``area``, ``score``; see
    ``pdl_post.postprocess``), "semantic": int64 [B, H, W], "center": [B, 1, H, W], "offset":
    [B, 2, H, W], "probs": [B, C, H, W]}`` (numpy arrays).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: dict[str, Any],
        *,
        thing_ids: Sequence[int],
        flip: bool | None = None,
        scales: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.thing_ids = tuple(int(t) for t in thing_ids)
        test = cfg.get("test", {})
        self.flip = bool(test.get("flip", False) if flip is None else flip)
        self.scales = tuple(float(s) for s in (scales or test.get("scales", [1.0])))
        self.device = torch.device(device)
        self.align_corners = bool(getattr(model, "align_corners", False))

    def _to_batch(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            x = images if images.ndim == 4 else images[None]
            return x.float()
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        return torch.stack([normalize(im) for im in images])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Averaged network outputs at input size (semantic as probabilities)."""
        x = x.to(self.device)
        H, W = x.shape[-2:]
        acc: dict[str, torch.Tensor] = {}
        n = 0
        for s in self.scales:
            xs = x
            if s != 1.0:
                size = (max(1, round(H * s)), max(1, round(W * s)))
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True) if self.flip else (False,):
                xi = xs.flip(-1) if flipped else xs
                out = dict(self.model(xi))
                if flipped:
                    out = {k: v.flip(-1) for k, v in out.items()}
                    out["offset"] = torch.cat([out["offset"][:, :1], -out["offset"][:, 1:]], 1)
                out = upsample_outputs(out, (H, W), align_corners=False)
                out["semantic"] = out["semantic"].float().softmax(1)
                for k, v in out.items():
                    acc[k] = acc[k] + v.float() if k in acc else v.float()
                n += 1
        return {k: v / n for k, v in acc.items()}

    def __call__(self, images) -> dict[str, np.ndarray]:
        out = self.forward(self._to_batch(images))
        pan, segments = merge_outputs(
            out, thing_ids=self.thing_ids, post=self.cfg["post"], probabilities=True, segments=True
        )
        return {
            "panoptic": pan,
            "segments": segments,
            "semantic": out["semantic"].argmax(1).cpu().numpy(),
            "center": out["center"].cpu().numpy(),
            "offset": out["offset"].cpu().numpy(),
            "probs": out["semantic"].cpu().numpy(),
        }
