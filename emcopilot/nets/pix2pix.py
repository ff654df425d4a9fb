"""pix2pix conditional GAN (Isola et al. 2017) for mask -> micrograph synthesis (Algorithm 5).

:class:`UNetGenerator` is the pix2pix U-Net: ``depth`` stride-2 4x4 convolutions down, the same
number of transposed convolutions up, skip connections between mirrored levels, dropout in the
innermost decoder levels and a tanh output in [-1, 1]. Inputs must have sides divisible by
``2**depth`` (depth 8: 256 px gives a 1x1 bottleneck, 512 px a 2x2 one).
:class:`PatchDiscriminator` is the 70x70 PatchGAN (``n_layers=3``) on concatenated
(mask, image) pairs; it returns one logit per patch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNetGenerator", "PatchDiscriminator", "check_size"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use 'batch', 'instance' or 'none'")


def check_size(height: int, width: int, depth: int, what: str = "network") -> None:
    """Raise ValueError unless both sides are positive multiples of ``2**depth``."""
    m = 2 ** depth
    if height <= 0 or width <= 0 or height % m or width % m:
        raise ValueError(f"{what} of depth {depth} needs image sides that are multiples of {m} px, "
                         f"got {height}x{width}; crop/pad/tile the input or lower depth")


class UNetGenerator(nn.Module):
    """pix2pix U-Net generator.

    Args:
        in_channels: channels of the condition (1: binary mask scaled to [-1, 1]).
        out_channels: channels of the generated image (1: grey micrograph in [-1, 1]).
        base: filters of the first level; level i has ``base * min(2**i, 8)`` filters.
        depth: number of down-sampling steps (8 for 256 and 512 px, as pix2pix ``unet_256``).
        dropout: dropout rate in the innermost decoder levels (pix2pix: 0.5); 0 disables.
        norm: ``"instance"`` (default: pix2pix with batch size 1 normalises each image by its own
            statistics, which is what instance norm does in training and at test time),
            ``"batch"`` or ``"none"``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 64, depth: int = 8,
                 dropout: float = 0.5, norm: str = "instance") -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        self.arch_kwargs = dict(in_channels=in_channels, out_channels=out_channels, base=base,
                                depth=depth, dropout=dropout, norm=norm)
        self.depth = depth
        ch = [base * min(2 ** i, 8) for i in range(depth)]
        use_bias = norm != "batch"
        downs = [nn.Conv2d(in_channels, ch[0], 4, 2, 1, bias=use_bias)]
        for i in range(1, depth):
            innermost = i == depth - 1
            layers: list[nn.Module] = [nn.LeakyReLU(0.2, inplace=True),
                                       nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1, bias=use_bias)]
            if not innermost:  # pix2pix: no norm at the 1x1 bottleneck
                layers.append(_norm(norm, ch[i]))
            downs.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)
        ups = []
        n_dropout = 3  # pix2pix: dropout in the three decoder levels below the innermost one
        for i in range(depth - 1, 0, -1):  # decoder level i produces ch[i-1] channels
            in_ch = ch[i] if i == depth - 1 else ch[i] * 2
            layers = [nn.ReLU(inplace=True),
                      nn.ConvTranspose2d(in_ch, ch[i - 1], 4, 2, 1, bias=use_bias),
                      _norm(norm, ch[i - 1])]
            if dropout > 0 and 1 <= depth - 1 - i <= n_dropout:
                layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.final = nn.Sequential(nn.ReLU(inplace=True),
                                   nn.ConvTranspose2d(ch[0] * 2, out_channels, 4, 2, 1),
                                   nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_size(x.shape[-2], x.shape[-1], self.depth, "UNetGenerator")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = up(x)
            x = torch.cat([x, skips.pop()], dim=1)
        return self.final(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator on (mask, image) pairs; ``n_layers=3`` has 70x70 px patches.

    Returns raw logits (N, 1, h, w); use with ``BCEWithLogitsLoss``.
    """

    def __init__(self, in_channels: int = 2, base: int = 64, n_layers: int = 3,
                 norm: str = "instance") -> None:
        super().__init__()
        self.arch_kwargs = dict(in_channels=in_channels, base=base, n_layers=n_layers, norm=norm)
        use_bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(base * prev, base * mult, 4, 2, 1, bias=use_bias),
                       _norm(norm, base * mult), nn.LeakyReLU(0.2, inplace=True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(base * prev, base * mult, 4, 1, 1, bias=use_bias),
                   _norm(norm, base * mult), nn.LeakyReLU(0.2, inplace=True),
                   nn.Conv2d(base * mult, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
