"""Channel/spatial attention modules used in the segmentor's ablations (written by hand).

- :class:`CBAM`: Woo et al. 2018, channel attention (shared MLP over average- and max-pooled
  features) followed by spatial attention (7x7 conv over channel mean and max).
- :class:`SqueezeExcitation`: Hu et al. 2018.
- :class:`ECA`: Wang et al. 2020, efficient channel attention (1-D conv across channels).
All keep the input shape (N, C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM", "SqueezeExcitation", "ECA",
           "make_attention", "ATTENTIONS"]


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) * x."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        mx = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7x7([mean_c(x), max_c(x)])) * x."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([torch.mean(x, dim=1, keepdim=True),
                          torch.amax(x, dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel attention then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation: sigmoid(FC(ReLU(FC(avgpool(x))))) * x."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.mean(x, dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class ECA(nn.Module):
    """Efficient Channel Attention: 1-D convolution (adaptive odd kernel) over pooled channels."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = int(abs((math.log2(max(channels, 1)) + b) / gamma))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.mean(x, dim=(2, 3))  # (N, C)
        w = self.conv(s.unsqueeze(1)).squeeze(1)  # (N, C)
        return x * torch.sigmoid(w)[:, :, None, None]


ATTENTIONS = ("cbam", "se", "eca", "none")


def make_attention(kind: str, channels: int) -> nn.Module:
    """Build an attention module by name (``"cbam"``, ``"se"``, ``"eca"``, ``"none"``)."""
    kind = (kind or "none").lower()
    if kind == "cbam":
        return CBAM(channels)
    if kind == "se":
        return SqueezeExcitation(channels)
    if kind == "eca":
        return ECA(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown attention {kind!r}; use one of {', '.join(ATTENTIONS)}")
