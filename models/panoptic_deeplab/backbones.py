"""Backbones: DeepLab-style ResNet-50, aligned Xception-71 and a tiny CPU backbone.

Every backbone maps an image ``[B, 3, H, W]`` to a dict of feature maps::

    {"stride4": [B, C4, H/4, W/4], "stride8": [B, C8, H/8, W/8], "out": [B, C, H/os, W/os]}

and exposes the channel counts as ``self.channels`` (same keys). ``os`` is the output stride
(16 by default; 8 and 32 are accepted). Strides beyond the output stride are replaced by
atrous (dilated) convolution, as in DeepLab.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNReLU, SeparableConv

__all__ = ["ResNet50", "TinyBackbone", "Xception71", "build_backbone"]


class _StrideTracker:
    """Turns nominal strides into (stride, dilation) pairs honouring an output stride."""

    def __init__(self, output_stride: int, start: int = 1) -> None:
        if output_stride not in (4, 8, 16, 32):
            raise ValueError(f"output_stride must be one of 4, 8, 16, 32, got {output_stride}")
        self.output_stride = output_stride
        self.current = start
        self.rate = 1

    def step(self, stride: int) -> tuple[int, int]:
        """Return ``(stride, dilation_before_update)`` for a layer with nominal ``stride``."""
        rate = self.rate
        if stride > 1 and self.current >= self.output_stride:
            self.rate *= stride
            return 1, rate
        self.current *= stride
        return stride, rate


# --------------------------------------------------------------------------------------
# Xception-71 (DeepLab's "modified aligned Xception")
# --------------------------------------------------------------------------------------


class XceptionBlock(nn.Module):
    """Three separable 3x3 convs; the last carries the stride; optional 1x1 shortcut.

    ``skip``: ``"conv"`` (1x1 conv + BN with the block's stride), ``"sum"`` (identity) or
    ``"none"``. With ``act_in_sep`` the ReLUs sit inside the separable convs (after depthwise
    and pointwise BN); otherwise a ReLU precedes each separable conv.
    """

    def __init__(
        self,
        in_ch: int,
        depths: tuple[int, int, int],
        *,
        stride: int,
        dilation: int,
        skip: str,
        act_in_sep: bool = False,
        unit_rates: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        self.act_in_sep = act_in_sep
        convs = []
        ch = in_ch
        for i, d in enumerate(depths):
            convs.append(
                SeparableConv(
                    ch,
                    d,
                    3,
                    stride=stride if i == 2 else 1,
                    dilation=dilation * unit_rates[i],
                    inner_relu=act_in_sep,
                    relu=act_in_sep,
                )
            )
            ch = d
        self.convs = nn.ModuleList(convs)
        self.skip = skip
        if skip == "conv":
            self.shortcut = ConvBNReLU(in_ch, depths[-1], 1, stride=stride, relu=False)
        elif skip not in ("sum", "none"):
            raise ValueError(f"skip must be 'conv', 'sum' or 'none', got {skip!r}")
        self.out_channels = depths[-1]

    def forward_with_mid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, output of the second separable conv)``."""
        r = x
        mid = x
        for i, conv in enumerate(self.convs):
            if not self.act_in_sep:
                r = torch.relu(r)
            r = conv(r)
            if i == 1:
                mid = r
        if self.skip == "conv":
            r = r + self.shortcut(x)
        elif self.skip == "sum":
            r = r + x
        return r, mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_mid(x)[0]


class Xception71(nn.Module):
    """Aligned Xception-71 as used by DeepLab / Panoptic-DeepLab.

    Entry flow: conv 3x3/2 (32), conv 3x3 (64), blocks 128/2, 256, 256/2, 728, 728/2;
    middle flow: 16 residual blocks of 728; exit flow: block (728, 1024, 1024)/2 and a
    block (1536, 1536, 2048) with ReLUs inside its separable convs. The stride-4 and
    stride-8 decoder features are the second separable conv of the blocks that leave
    those strides (entry blocks 3 and 5), like DeepLab's ``separable_conv2_pointwise``.
    """

    def __init__(self, *, output_stride: int = 16, exit_rates: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        t = _StrideTracker(output_stride)
        s, _ = t.step(2)
        self.stem = nn.Sequential(ConvBNReLU(3, 32, 3, stride=s), ConvBNReLU(32, 64, 3))
        entry = [(128, 2), (256, 1), (256, 2), (728, 1), (728, 2)]
        blocks: list[XceptionBlock] = []
        ch = 64
        for depth, stride in entry:
            s, d = t.step(stride)
            blocks.append(XceptionBlock(ch, (depth,) * 3, stride=s, dilation=d, skip="conv"))
            ch = depth
        self.entry = nn.ModuleList(blocks)
        self.middle = nn.Sequential(
            *[
                XceptionBlock(728, (728,) * 3, stride=1, dilation=t.rate, skip="sum")
                for _ in range(16)
            ]
        )
        s, d = t.step(2)
        self.exit1 = XceptionBlock(728, (728, 1024, 1024), stride=s, dilation=d, skip="conv")
        self.exit2 = XceptionBlock(
            1024,
            (1536, 1536, 2048),
            stride=1,
            dilation=t.rate,
            skip="none",
            act_in_sep=True,
            unit_rates=exit_rates,
        )
        self.channels = {"stride4": 256, "stride8": 728, "out": 2048}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        f4 = x
        f8 = x
        for i, block in enumerate(self.entry):
            x, mid = block.forward_with_mid(x)
            if i == 2:
                f4 = mid
            elif i == 4:
                f8 = mid
        x = self.middle(x)
        x = self.exit2(self.exit1(x))
        return {"stride4": f4, "stride8": f8, "out": x}


# --------------------------------------------------------------------------------------
# ResNet-50 (DeepLab style: atrous convolution replaces the strides beyond output_stride)
# --------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, *, stride: int, dilation: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = ConvBNReLU(in_ch, width, 1)
        self.conv2 = ConvBNReLU(width, width, 3, stride=stride, dilation=dilation)
        self.conv3 = ConvBNReLU(width, out_ch, 1, relu=False)
        self.downsample = (
            ConvBNReLU(in_ch, out_ch, 1, stride=stride, relu=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet50(nn.Module):
    """ResNet-50 (7x7 stem, [3, 4, 6, 3] bottlenecks) with an atrous last block.

    ``multi_grid`` multiplies the dilation of the last stage's three units (DeepLabv3).
    Decoder features: ``res2`` (stride 4, 256 ch) and ``res3`` (stride 8, 512 ch).
    """

    def __init__(self, *, output_stride: int = 16, multi_grid: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        t = _StrideTracker(output_stride)
        s, _ = t.step(2)
        self.stem = ConvBNReLU(3, 64, 7, stride=s)
        s, _ = t.step(2)
        self.pool = nn.MaxPool2d(3, stride=s, padding=1)
        stages = []
        in_ch = 64
        for i, (width, n, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
            s, d = t.step(stride)
            units = []
            for j in range(n):
                rate = d if j == 0 else t.rate
                if i == 3 and s != stride:  # atrous last stage: DeepLabv3 multi-grid
                    rate = t.rate * multi_grid[j]
                units.append(Bottleneck(in_ch, width, stride=s if j == 0 else 1, dilation=rate))
                in_ch = width * 4
            stages.append(nn.Sequential(*units))
        self.res2, self.res3, self.res4, self.res5 = stages
        self.channels = {"stride4": 256, "stride8": 512, "out": 2048}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.pool(self.stem(x))
        f4 = self.res2(x)
        f8 = self.res3(f4)
        out = self.res5(self.res4(f8))
        return {"stride4": f4, "stride8": f8, "out": out}


# --------------------------------------------------------------------------------------
# Tiny backbone for CPU tests and demos
# --------------------------------------------------------------------------------------


class TinyBackbone(nn.Module):
    """A small separable-conv backbone (a few hundred thousand parameters).

    ``widths`` = channels at strides 2, 4, 8 and the output stride; ``depth`` separable
    convs per stage after the strided one.
    """

    def __init__(
        self,
        *,
        output_stride: int = 16,
        widths: tuple[int, int, int, int] = (16, 32, 64, 128),
        depth: int = 1,
    ) -> None:
        super().__init__()
        t = _StrideTracker(output_stride)
        s, _ = t.step(2)
        self.stem = ConvBNReLU(3, widths[0], 3, stride=s)
        stages = []
        ch = widths[0]
        for w in widths[1:]:
            s, d = t.step(2)
            layers: list[nn.Module] = [SeparableConv(ch, w, 3, stride=s, dilation=d)]
            layers += [SeparableConv(w, w, 3, dilation=t.rate) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
            ch = w
        self.s4, self.s8, self.s16 = stages
        self.channels = {"stride4": widths[1], "stride8": widths[2], "out": widths[3]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        return {"stride4": f4, "stride8": f8, "out": self.s16(f8)}


def build_backbone(name: str, *, output_stride: int = 16, **kwargs) -> nn.Module:
    """Build a backbone by name: ``xception71``, ``resnet50`` or ``tiny``."""
    name = name.lower()
    if name in ("xception71", "xception_71", "xception-71"):
        return Xception71(output_stride=output_stride, **kwargs)
    if name in ("resnet50", "resnet_50", "resnet-50"):
        return ResNet50(output_stride=output_stride, **kwargs)
    if name == "tiny":
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return TinyBackbone(output_stride=output_stride, **kwargs)
    raise ValueError(f"backbone must be 'xception71', 'resnet50' or 'tiny', got {name!r}")
