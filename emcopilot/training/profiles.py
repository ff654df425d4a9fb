"""Training profiles: the paper's sizes and a CPU profile small enough for a laptop.

``resolve_profile(name, **overrides)`` returns a flat dict with a ``generator`` and a
``segmentor`` section. The "cpu" profile is sized so that the whole pipeline on a few dozen
images of 512 px (generator training, synthesis, segmentor training) runs in about an hour on
2 cores (measured times in BENCHMARKS.md).
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import InputError

__all__ = ["PROFILES", "resolve_profile"]

PROFILES: dict[str, dict[str, Any]] = {
    # Paper (SI, Algorithms 5 and 7): pix2pix U-Net 64 filters on 512 px pairs, 1000 epochs,
    # Adam 2e-4 betas (0.5, 0.999), L1 weight 100; CBAM-UNet++ 32 filters, depth 4,
    # 40 epochs on labelled (15 on the 5,940 synthetic) images.
    "paper": {
        "generator": {
            "image_size": 512, "base": 64, "depth": 8, "dropout": 0.5, "norm": "instance",
            "disc_base": 64, "disc_layers": 3, "epochs": 1000, "batch_size": 1,
            "lr": 2e-4, "beta1": 0.5, "lambda_l1": 100.0, "lambda_ssim": 10.0,
            "decay_start": 0.5,  # linear LR decay to 0 over the second half (pix2pix)
        },
        "segmentor": {
            "image_size": 512, "base": 32, "depth": 4, "attention": "cbam",
            "deep_supervision": False, "epochs": 40, "batch_size": 8, "lr": 1e-4,
            "weight_decay": 1e-5, "focal_alpha": 0.25, "focal_gamma": 2.0,
            "augment_prob": 0.9, "samples_per_epoch": None,  # None: one crop per pair
        },
    },
    # CPU: 256 px crops, narrow nets, few epochs. Same classes, same losses. Measured on 2 shared
    # cores (bench/bench_nets.py): generator step ~0.1 s (100 epochs x 24 pairs ~ 5 min),
    # segmentor ~0.3 s per 256 px sample (12 epochs x 300 crops ~ 20 min per segmentor in the
    # pipeline). 12 segmentor epochs, not 6-8: on EMPS (BENCHMARKS.md, run 16) both seeds
    # trained 12 epochs on run 14's synthetic pairs matched the manual labels far better than
    # at 6 (object F1 0.357 -> 0.526 and 0.375 -> 0.448).
    "cpu": {
        "generator": {
            "image_size": 256, "base": 16, "depth": 8, "dropout": 0.5, "norm": "instance",
            "disc_base": 16, "disc_layers": 3, "epochs": 100, "batch_size": 1,
            "lr": 2e-4, "beta1": 0.5, "lambda_l1": 100.0, "lambda_ssim": 10.0,
            "decay_start": 0.5,
        },
        "segmentor": {
            "image_size": 256, "base": 8, "depth": 4, "attention": "cbam",
            "deep_supervision": False, "epochs": 12, "batch_size": 4, "lr": 1e-3,
            "weight_decay": 1e-5, "focal_alpha": 0.25, "focal_gamma": 2.0,
            "augment_prob": 0.9, "samples_per_epoch": 300,
        },
    },
}


def resolve_profile(name: str, section: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A copy of profile ``name``; with ``section`` ("generator" or "segmentor") only that part.

    Overrides whose value is None are ignored, so callers can pass their keyword arguments
    straight through. Unknown override keys raise InputError.
    """
    if name not in PROFILES:
        raise InputError(f"unknown training profile {name!r}; use one of {', '.join(PROFILES)}")
    prof = copy.deepcopy(PROFILES[name])
    if section is None:
        if overrides:
            raise InputError("overrides need a section ('generator' or 'segmentor')")
        return prof
    if section not in prof:
        raise InputError(f"unknown profile section {section!r}; use 'generator' or 'segmentor'")
    out = prof[section]
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in out:
            raise InputError(f"unknown {section} setting {key!r}; known: {', '.join(sorted(out))}")
        out[key] = value
    out["profile"] = name
    return out
