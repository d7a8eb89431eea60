"""Panoptic-DeepLab network: backbone, (dual) ASPP, (dual) light-weight decoder, heads.

Layout (Cheng et al., CVPR 2020, Fig. 1)::

    image -> backbone -> ASPP_sem -> decoder_sem (s16 -> s8 -> s4) -> semantic head
                      -> ASPP_ins -> decoder_ins (s16 -> s8 -> s4) -> centre head, offset head

Each decoder stage upsamples by 2, concatenates a 1x1-projected backbone feature and applies a
*single* 5x5 depthwise-separable convolution. ``dual_aspp`` / ``dual_decoder`` switch off the
sharing (the paper's "ASPP x2" / "De. x2" ablations); ``sem_channels`` / ``ins_channels`` are
C_sem / C_ins (ASPP, decoder and, for the semantic branch, head width).

``forward`` returns a dict with ``semantic`` [B, C, H, W] logits, ``center`` [B, 1, H, W] heatmap
and ``offset`` [B, 2, H, W] (dy, dx in input pixels), all at input resolution; the offsets are
multiplied by the resize factor when upsampled from stride 4.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .layers import ConvBNReLU, SeparableConv

__all__ = ["ASPP", "Decoder", "Head", "PanopticDeepLab", "build_model", "upsample_outputs"]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3, image pooling; 1x1 projection."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        rates: tuple[int, ...] = (6, 12, 18),
        *,
        separable: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_ch, out_ch, 1)]
        for r in rates:
            if separable:
                branches.append(SeparableConv(in_ch, out_ch, 3, dilation=r))
            else:
                branches.append(ConvBNReLU(in_ch, out_ch, 3, dilation=r))
        self.branches = nn.ModuleList(branches)
        # Image pooling: global mean -> 1x1 conv (+ bias, no BN: it sees one value per image).
        self.pool_conv = nn.Conv2d(in_ch, out_ch, 1)
        self.project = ConvBNReLU(out_ch * (len(rates) + 2), out_ch, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        pooled = torch.relu(self.pool_conv(x.mean(dim=(2, 3), keepdim=True)))
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class Decoder(nn.Module):
    """Light-weight decoder: per 2x stage, 1x1 projection of a backbone feature + one 5x5 conv."""

    def __init__(
        self,
        in_ch: int,
        low_channels: dict[str, int],
        project_channels: tuple[int, int],
        out_ch: int,
        *,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.keys = ["stride8", "stride4"]
        self.project = nn.ModuleList(
            [ConvBNReLU(low_channels[k], p, 1) for k, p in zip(self.keys, project_channels)]
        )
        fuse = []
        ch = in_ch
        for p in project_channels:
            fuse.append(SeparableConv(ch + p, out_ch, kernel_size))
            ch = out_ch
        self.fuse = nn.ModuleList(fuse)

    def forward(self, x: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        for i, (proj, fuse) in enumerate(zip(self.project, self.fuse)):
            low = features[self.keys[i]]
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, proj(low)], dim=1))
        return x


class Head(nn.Module):
    """One 5x5 depthwise-separable conv (to ``mid_ch``) and a 1x1 predictor (with bias)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, *, kernel_size: int = 5) -> None:
        super().__init__()
        self.conv = SeparableConv(in_ch, mid_ch, kernel_size)
        self.predictor = nn.Conv2d(mid_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.conv(x))


def upsample_outputs(
    outputs: dict[str, torch.Tensor], size: tuple[int, int], *, align_corners: bool = False
) -> dict[str, torch.Tensor]:
    """Bilinearly resize the three outputs to ``size``; offsets are scaled by the factor.

    With ``align_corners=True`` the factor is ``(H - 1) / (h - 1)`` (DeepLab's odd-size
    convention, e.g. 257 -> 1025 is exactly x4), otherwise ``H / h``.
    """
    h, w = outputs["offset"].shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return outputs
    res: dict[str, torch.Tensor] = {}
    for k, v in outputs.items():
        res[k] = F.interpolate(v, size=size, mode="bilinear", align_corners=align_corners)
    if align_corners:
        sy = (H - 1) / max(h - 1, 1)
        sx = (W - 1) / max(w - 1, 1)
    else:
        sy = H / h
        sx = W / w
    off = res["offset"]
    res["offset"] = torch.cat([off[:, :1] * sy, off[:, 1:] * sx], dim=1)
    return res


class PanopticDeepLab(nn.Module):
    """Panoptic-DeepLab with configurable sharing and widths (see module docstring)."""

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "xception71",
        backbone_kwargs: dict[str, Any] | None = None,
        output_stride: int = 16,
        aspp_rates: tuple[int, ...] = (6, 12, 18),
        aspp_separable: bool = True,
        aspp_dropout: float = 0.1,
        dual_aspp: bool = True,
        dual_decoder: bool = True,
        sem_channels: int = 256,
        ins_channels: int = 128,
        sem_project_channels: tuple[int, int] = (64, 32),
        ins_project_channels: tuple[int, int] = (32, 16),
        sem_head_channels: int | None = None,
        ins_head_channels: int = 32,
        kernel_size: int = 5,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if dual_aspp and not dual_decoder:
            raise ValueError("dual_aspp=True needs dual_decoder=True (an ASPP feeds one decoder)")
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.dual_aspp = dual_aspp
        self.dual_decoder = dual_decoder
        self.backbone = build_backbone(
            backbone, output_stride=output_stride, **(backbone_kwargs or {})
        )
        ch = self.backbone.channels
        rates = tuple(int(r) for r in aspp_rates)
        self.sem_aspp = ASPP(
            ch["out"], sem_channels, rates, separable=aspp_separable, dropout=aspp_dropout
        )
        self.sem_decoder = Decoder(
            sem_channels, ch, tuple(sem_project_channels), sem_channels, kernel_size=kernel_size
        )
        if dual_aspp:
            self.ins_aspp: nn.Module | None = ASPP(
                ch["out"], ins_channels, rates, separable=aspp_separable, dropout=aspp_dropout
            )
        else:
            self.ins_aspp = None
        if dual_decoder:
            ins_in = ins_channels if dual_aspp else sem_channels
            self.ins_decoder: nn.Module | None = Decoder(
                ins_in, ch, tuple(ins_project_channels), ins_channels, kernel_size=kernel_size
            )
            ins_dec_ch = ins_channels
        else:
            self.ins_decoder = None
            ins_dec_ch = sem_channels
        self.semantic_head = Head(
            sem_channels, sem_head_channels or sem_channels, num_classes, kernel_size=kernel_size
        )
        self.center_head = Head(ins_dec_ch, ins_head_channels, 1, kernel_size=kernel_size)
        self.offset_head = Head(ins_dec_ch, ins_head_channels, 2, kernel_size=kernel_size)

    def forward_stride4(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs at stride 4 (offsets in stride-4 pixels), before any upsampling."""
        feats = self.backbone(x)
        sem_ctx = self.sem_aspp(feats["out"])
        sem = self.sem_decoder(sem_ctx, feats)
        if self.ins_decoder is not None:
            ins_ctx = self.ins_aspp(feats["out"]) if self.ins_aspp is not None else sem_ctx
            ins = self.ins_decoder(ins_ctx, feats)
        else:
            ins = sem
        return {
            "semantic": self.semantic_head(sem),
            "center": self.center_head(ins),
            "offset": self.offset_head(ins),
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.forward_stride4(x)
        return upsample_outputs(out, (x.shape[-2], x.shape[-1]), align_corners=self.align_corners)


_MODEL_KEYS = {
    "num_classes",
    "backbone",
    "backbone_kwargs",
    "output_stride",
    "aspp_rates",
    "aspp_separable",
    "aspp_dropout",
    "dual_aspp",
    "dual_decoder",
    "sem_channels",
    "ins_channels",
    "sem_project_channels",
    "ins_project_channels",
    "sem_head_channels",
    "ins_head_channels",
    "kernel_size",
    "align_corners",
}


def build_model(cfg: dict[str, Any]) -> PanopticDeepLab:
    """Build the network from the ``model`` section of a config (a plain dict)."""
    unknown = set(cfg) - _MODEL_KEYS
    if unknown:
        raise ValueError(
            f"unknown model config keys {sorted(unknown)}; expected {sorted(_MODEL_KEYS)}"
        )
    kw = dict(cfg)
    for k in ("aspp_rates", "sem_project_channels", "ins_project_channels"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return PanopticDeepLab(**kw)
