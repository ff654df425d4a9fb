"""UNet++ (Zhou et al. 2018) with optional attention in every conv block (Algorithm 7).

Node X[i][j] (level i, column j) = block(concat(X[i][0..j-1], up(X[i+1][j-1]))), X[i][0] is the
encoder. Each block is two 3x3 conv-BN-ReLU layers followed by the attention module
(CBAM in the paper; SE, ECA or none for the ablations). Level i has ``base * 2**i`` filters.
With ``deep_supervision`` every X[0][j] (j >= 1) gets a 1x1 head: training returns the list of
logits (the loss averages them), evaluation returns their mean. Input sides must be multiples of
``2**depth``. Output: logits (N, classes, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import make_attention
from .pix2pix import check_size

__all__ = ["UNetPlusPlus", "ConvBlock"]


class ConvBlock(nn.Module):
    """(3x3 conv, BN, ReLU) x 2, then attention."""

    def __init__(self, in_ch: int, out_ch: int, attention: str = "cbam") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )
        self.attention = make_attention(attention, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.body(x))


class UNetPlusPlus(nn.Module):
    """Nested U-Net segmentor with attention.

    Args:
        in_channels: input channels (1: grey micrograph in [0, 1]).
        classes: output channels (1: particle vs background, sigmoid logits).
        base: filters of level 0 (paper size 32; the cpu profile uses 8-16).
        depth: number of down-sampling steps (4 as in UNet++ L4).
        attention: ``"cbam"`` (paper), ``"se"``, ``"eca"`` or ``"none"`` (plain UNet++).
        deep_supervision: add a head to every top-level node (see module docstring).
    """

    def __init__(self, in_channels: int = 1, classes: int = 1, base: int = 32, depth: int = 4,
                 attention: str = "cbam", deep_supervision: bool = False) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.arch_kwargs = dict(in_channels=in_channels, classes=classes, base=base, depth=depth,
                                attention=attention, deep_supervision=deep_supervision)
        self.depth = depth
        self.deep_supervision = deep_supervision
        ch = [base * 2 ** i for i in range(depth + 1)]
        self.nodes = nn.ModuleDict()
        for i in range(depth + 1):
            self.nodes[f"{i}_0"] = ConvBlock(in_channels if i == 0 else ch[i - 1], ch[i], attention)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.nodes[f"{i}_{j}"] = ConvBlock(ch[i] * j + ch[i + 1], ch[i], attention)
        n_heads = depth if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(ch[0], classes, 1) for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_size(x.shape[-2], x.shape[-1], self.depth, "UNetPlusPlus")
        grid: list[list[torch.Tensor]] = [[] for _ in range(self.depth + 1)]
        grid[0].append(self.nodes["0_0"](x))
        for i in range(1, self.depth + 1):
            grid[i].append(self.nodes[f"{i}_0"](F.max_pool2d(grid[i - 1][0], 2)))
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                up = F.interpolate(grid[i + 1][j - 1], scale_factor=2.0, mode="bilinear",
                                   align_corners=False)
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(grid[i][:j] + [up], dim=1)))
        if not self.deep_supervision:
            return self.heads[0](grid[0][self.depth])
        outs = [head(grid[0][j + 1]) for j, head in enumerate(self.heads)]
        if self.training:
            return outs
        return torch.stack(outs, dim=0).mean(dim=0)
