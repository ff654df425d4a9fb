"""Networks: pix2pix generator/discriminator (Algorithm 5) and attention UNet++ (Algorithm 7).

``build_generator(config)`` / ``build_segmentor(config)`` build a network from a plain dict
(the ``model`` section of a profile or of a checkpoint's ``config.json``), so the cpu profile and
the paper size come from the same classes.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from torch import nn

from .attention import CBAM, ECA, SqueezeExcitation, make_attention
from .pix2pix import PatchDiscriminator, UNetGenerator, check_size
from .unetpp import UNetPlusPlus

__all__ = ["UNetGenerator", "PatchDiscriminator", "UNetPlusPlus", "CbamUnetPP", "CBAM", "ECA",
           "SqueezeExcitation", "make_attention", "check_size", "build_generator",
           "build_discriminator", "build_segmentor", "build_model", "ARCHITECTURES"]

#: The paper's segmentor: UNet++ with CBAM attention.
CbamUnetPP = functools.partial(UNetPlusPlus, attention="cbam")

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "UNetGenerator": UNetGenerator,
    "PatchDiscriminator": PatchDiscriminator,
    "UNetPlusPlus": UNetPlusPlus,
}

_GEN_KEYS = ("in_channels", "out_channels", "base", "depth", "dropout", "norm")
_DISC_KEYS = ("in_channels", "base", "n_layers", "norm")
_SEG_KEYS = ("in_channels", "classes", "base", "depth", "attention", "deep_supervision")


def _pick(config: Mapping[str, Any], keys: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k in keys:
        if prefix + k in config:
            out[k] = config[prefix + k]
        elif k in config and not prefix:
            out[k] = config[k]
    return out


def build_model(architecture: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build a registered architecture by class name with keyword arguments."""
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; known: "
                         f"{', '.join(ARCHITECTURES)}") from None
    return cls(**dict(kwargs))


def build_generator(config: Mapping[str, Any]) -> UNetGenerator:
    """UNetGenerator from a dict with any of in_channels, out_channels, base, depth, dropout,
    norm (also accepted with a ``generator_`` prefix, as in the profiles)."""
    kw = _pick(config, _GEN_KEYS, "generator_") or _pick(config, _GEN_KEYS)
    return UNetGenerator(**kw)


def build_discriminator(config: Mapping[str, Any]) -> PatchDiscriminator:
    """PatchDiscriminator from a dict (keys in_channels, base, n_layers, norm or with a
    ``discriminator_`` prefix)."""
    kw = _pick(config, _DISC_KEYS, "discriminator_") or _pick(config, _DISC_KEYS)
    return PatchDiscriminator(**kw)


def build_segmentor(config: Mapping[str, Any]) -> UNetPlusPlus:
    """UNetPlusPlus from a dict with any of in_channels, classes, base, depth, attention,
    deep_supervision (also accepted with a ``segmentor_`` prefix)."""
    kw = _pick(config, _SEG_KEYS, "segmentor_") or _pick(config, _SEG_KEYS)
    return UNetPlusPlus(**kw)
