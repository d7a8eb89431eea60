"""Small building blocks shared by the backbones and the Panoptic-DeepLab heads."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBNReLU", "SeparableConv", "same_padding"]


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps ``ceil(size / stride)`` outputs for an odd kernel."""
    return dilation * (kernel_size - 1) // 2


class ConvBNReLU(nn.Sequential):
    """``Conv2d`` (no bias) -> ``BatchNorm2d`` -> optional ``ReLU``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_ch,
                out_ch,
                kernel_size,
                stride=stride,
                padding=same_padding(kernel_size, dilation),
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_ch),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableConv(nn.Module):
    """Depthwise ``k x k`` conv + BN (+ ReLU), then pointwise ``1 x 1`` conv + BN (+ ReLU).

    ``inner_relu`` controls the activation after the depthwise conv, ``relu`` the one after
    the pointwise conv (DeepLab's Xception uses neither in its entry/middle flow, both in the
    last exit block; the Panoptic-DeepLab decoder and heads use both).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        inner_relu: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_ch,
            in_ch,
            kernel_size,
            stride=stride,
            padding=same_padding(kernel_size, dilation),
            dilation=dilation,
            groups=in_ch,
            bias=False,
        )
        self.bn_depthwise = nn.BatchNorm2d(in_ch)
        self.inner_relu = nn.ReLU(inplace=True) if inner_relu else nn.Identity()
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn_pointwise = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inner_relu(self.bn_depthwise(self.depthwise(x)))
        return self.relu(self.bn_pointwise(self.pointwise(x)))
