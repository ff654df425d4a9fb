"""Generator training (Algorithm 5): pix2pix mask -> image, and synthetic image generation.

Loss_G = BCE(D(mask, G(mask)), 1) + lambda_L1 * |G(mask) - image| + lambda_SSIM * (1 - SSIM);
Loss_D = (BCE(D(mask, image), 1) + BCE(D(mask, G(mask)), 0)) / 2. Adam (lr, betas (beta1, 0.999)),
pix2pix LR schedule (constant, then linear decay to 0 over the second half). Images and masks
enter the networks scaled to [-1, 1]. Every epoch: validation SSIM, MS-SSIM, LPIPS and FID (the
last two when their weights are available, else null with the reason logged once) on the 20 %
split, one line in ``out_dir/log.jsonl``, checkpoints
``last/``, ``best_ssim/`` and ``best_lpips/`` (see :mod:`.checkpoint`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import io
from ..device import (autocast, channels_last, grad_scaler, loader_options, pick_device,
                      set_cpu_threads)
from ..errors import InputError
from ..nets import PatchDiscriminator, UNetGenerator
from .checkpoint import load_model, load_training_state, save_checkpoint
from .common import (append_log, lr_factor, seed_everything, set_lr, training_result,
                     truncate_log)
from .datasets import PairedDataset, describe_data, find_pairs, load_pairs, split_pairs
from .evaluation import FidScorer, image_scores, lpips_metric
from .evaluation import fid_metric as _standard_fid_metric
from .losses import ssim_loss
from .profiles import resolve_profile

__all__ = ["train_generator", "generate_images", "generate_image"]

logger = logging.getLogger(__name__)


def _to_pm1(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 - 1.0


@torch.no_grad()
def _validate(G: UNetGenerator, val_ds: PairedDataset, device: torch.device, lpips,
              fid: FidScorer | None = None) -> dict:
    """Mean SSIM, MS-SSIM, LPIPS over the validation pairs and the FID of the generated set
    against the real one (each None when it cannot be computed)."""
    G.eval()
    scores: dict[str, list[float]] = {"ssim": [], "ms_ssim": [], "lpips": []}
    reals: list[np.ndarray] = []
    fakes: list[np.ndarray] = []
    for i in range(len(val_ds)):
        img, msk = val_ds[i]
        with autocast(device):
            fake = G(_to_pm1(msk[None].to(device)))
        fake01 = ((fake.float()[0, 0] + 1) / 2).clamp(0, 1).cpu().numpy()
        real01 = img[0].numpy()
        if fid is not None and fid.available:
            reals.append(real01)
            fakes.append(fake01)
        for k, v in image_scores(real01, fake01).items():
            if v is not None:
                scores[k].append(v)
        if lpips is not None:
            v = lpips.compute(real01, fake01)
            if v is not None:
                scores["lpips"].append(float(v))
    G.train()
    out: dict[str, float | None] = {k: (float(np.mean(v)) if v else None)
                                    for k, v in scores.items()}
    out["fid"] = fid.score(reals, fakes) if fid is not None else None
    return out


def train_generator(images_dir: str | os.PathLike, masks_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, *, profile: str = "cpu", epochs: int | None = None,
                    batch_size: int | None = None, image_size: int | None = None,
                    lambda_l1: float | None = None, lambda_ssim: float | None = None,
                    lr: float | None = None, base: int | None = None, depth: int | None = None,
                    seed: int = 0,
                    device: str = "auto", resume: bool = True, val_fraction: float = 0.2,
                    progress: Callable[[int, int, str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    fid_metric: Any | None = None) -> dict[str, Any]:
    """Train the pix2pix generator on (image, mask) pairs with matching stems.

    Args:
        images_dir, masks_dir: folders of micrographs and label maps (same stems, same sizes).
        out_dir: run folder: ``log.jsonl``, ``last/``, ``best_ssim/``, ``best_lpips/``.
        profile: "cpu" or "paper" (:data:`.profiles.PROFILES`); the other keyword arguments
            override its values when not None. ``image_size`` is the crop side in px.
        seed: seeds the split, crops and initial weights.
        device: "auto", "cuda", "mps" or "cpu".
        resume: continue from ``out_dir/last`` when it exists (after a crash or cancel);
            ``epochs`` is the total, so calling again with a larger value trains further.
        progress: ``progress(epoch, epochs, message)`` after every epoch.
        should_stop: checked between steps; when it returns True the current state is saved to
            ``last/`` (resumable) and the function returns with ``cancelled=True``.
        fid_metric: an ``emcopilot.metrics.FidMetric`` to use for the validation FID instead of
            the standard Inception one (e.g. one with an injected feature extractor). FID needs
            at least 2 validation images; it is null in the log otherwise or when unavailable.

    Returns:
        dict with ``epoch`` (completed), ``epochs``, ``history`` (this call's log lines),
        ``best`` scores, ``checkpoints`` paths, ``cancelled`` and ``unavailable`` (metric name
        -> reason, for the validation metrics that could not be computed in this run).
    """
    cfg = resolve_profile(profile, "generator", epochs=epochs, batch_size=batch_size,
                          image_size=image_size, lambda_l1=lambda_l1, lambda_ssim=lambda_ssim,
                          lr=lr, base=base, depth=depth)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    if dev.type == "cpu":
        set_cpu_threads()
    seed_everything(seed)
    size = int(cfg["image_size"])
    depth = int(cfg["depth"])
    if size % (2 ** depth):
        raise InputError(f"image_size {size} must be a multiple of {2 ** depth} for a generator of "
                         f"depth {depth}")

    items = find_pairs(images_dir, masks_dir)
    pairs = load_pairs(items)
    train_idx, val_idx = split_pairs(len(pairs), val_fraction, seed)
    train_ds = PairedDataset([pairs[i] for i in train_idx], size, train=True, seed=seed)
    val_ds = PairedDataset([pairs[i] for i in val_idx], size, train=False)
    data = describe_data(images_dir, masks_dir, pairs, train_idx, val_idx)

    G = UNetGenerator(1, 1, base=cfg["base"], depth=depth, dropout=cfg["dropout"], norm=cfg["norm"])
    D = PatchDiscriminator(2, base=cfg["disc_base"], n_layers=cfg["disc_layers"], norm=cfg["norm"])
    fmt = torch.channels_last if channels_last(dev) else torch.contiguous_format
    G.to(dev, memory_format=fmt)
    D.to(dev, memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], 0.999))
    scaler = grad_scaler(dev)

    start_epoch, best = 0, {"ssim": None, "lpips": None}
    if resume and (out / "last" / "config.json").is_file():
        ck = load_training_state(out / "last", {"generator": G, "discriminator": D},
                                 {"generator": opt_g, "discriminator": opt_d}, scaler, dev)
        start_epoch = int(ck["epoch"])
        best.update(ck.get("state", {}).get("best", {}))
    truncate_log(out, start_epoch)
    total = int(cfg["epochs"])
    config = {"kind": "generator", "training": cfg, "data": data, "seed": seed,
              "image_size": size, "input": "binary mask in [-1, 1]", "output": "image in [-1, 1]"}
    lpips = lpips_metric()
    fid = FidScorer(fid_metric if fid_metric is not None else
                    (_standard_fid_metric(dev) if len(val_ds) >= 2 else None))
    unavailable: dict[str, str] = {}
    if lpips is None:
        unavailable["lpips"] = ("LPIPS unavailable: the lpips package or its 'lpips_alex' "
                                "weights are missing")
    if len(val_ds) < 2:
        unavailable["fid"] = f"FID skipped: {len(val_ds)} validation image(s), it needs 2"
    elif not fid.available:
        unavailable["fid"] = fid.reason
    for name, why in unavailable.items():
        logger.warning("validation %s will be null: %s", name.upper(), why)
    models = {"generator": G, "discriminator": D}
    opts = {"generator": opt_g, "discriminator": opt_d}
    history: list[dict] = []
    cancelled = False
    epoch = start_epoch

    def save(name: str, ep: int, metrics: dict) -> Path:
        return save_checkpoint(out / name, models, opts, config, ep, metrics, scaler=scaler,
                               state={"best": best})

    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=int(cfg["batch_size"]), shuffle=True, generator=g,
                        drop_last=False, **loader_options(dev))
    G.train()
    D.train()
    for epoch in range(start_epoch, total):
        t0 = time.perf_counter()
        factor = lr_factor("linear", epoch, total, cfg["decay_start"])
        set_lr(opt_g, cfg["lr"] * factor)
        set_lr(opt_d, cfg["lr"] * factor)
        train_ds.set_epoch(epoch)
        sums = {"loss_g": 0.0, "loss_d": 0.0, "l1": 0.0, "ssim_loss": 0.0, "adv": 0.0}
        steps = 0
        for img, msk in loader:
            if should_stop is not None and should_stop():
                cancelled = True
                break
            real = _to_pm1(img.to(dev, non_blocking=True)).contiguous(memory_format=fmt)
            cond = _to_pm1(msk.to(dev, non_blocking=True)).contiguous(memory_format=fmt)
            with autocast(dev):
                fake = G(cond)
                # discriminator
                d_real = D(torch.cat([cond, real], 1))
                d_fake = D(torch.cat([cond, fake.detach()], 1))
                loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d_real.float(),
                                                                   torch.ones_like(d_real.float()))
                                + F.binary_cross_entropy_with_logits(
                                    d_fake.float(), torch.zeros_like(d_fake.float())))
            opt_d.zero_grad(set_to_none=True)
            scaler.scale(loss_d).backward()
            scaler.step(opt_d)
            with autocast(dev):
                d_fake = D(torch.cat([cond, fake], 1))
                adv = F.binary_cross_entropy_with_logits(d_fake.float(),
                                                         torch.ones_like(d_fake.float()))
            fake32 = fake.float()
            l1 = F.l1_loss(fake32, real.float())
            sl = ssim_loss((fake32 + 1) / 2, (real.float() + 1) / 2)
            loss_g = adv + cfg["lambda_l1"] * l1 + cfg["lambda_ssim"] * sl
            opt_g.zero_grad(set_to_none=True)
            scaler.scale(loss_g).backward()
            scaler.step(opt_g)
            scaler.update()
            steps += 1
            for k, v in (("loss_g", loss_g), ("loss_d", loss_d), ("l1", l1), ("ssim_loss", sl),
                         ("adv", adv)):
                sums[k] += float(v.detach())
        if cancelled:
            # Partly trained weights; the epoch counter stays at the last completed epoch.
            save("last", epoch, {"cancelled_in_epoch": epoch + 1})
            break
        metrics = _validate(G, val_ds, dev, lpips, fid)
        if metrics["fid"] is None and fid.reason and "fid" not in unavailable:
            unavailable["fid"] = fid.reason  # failed during this run: logged once
            logger.warning("validation FID will be null: %s", fid.reason)
        rec = {"epoch": epoch + 1, "epochs": total, "lr": cfg["lr"] * factor,
               **{k: v / max(steps, 1) for k, v in sums.items()},
               **{f"val_{k}": v for k, v in metrics.items()},
               "seconds": round(time.perf_counter() - t0, 3), "steps": steps}
        if metrics["ssim"] is not None and (best["ssim"] is None or metrics["ssim"] > best["ssim"]):
            best["ssim"] = metrics["ssim"]
            save("best_ssim", epoch + 1, metrics)
        if metrics["lpips"] is not None and (best["lpips"] is None or
                                             metrics["lpips"] < best["lpips"]):
            best["lpips"] = metrics["lpips"]
            save("best_lpips", epoch + 1, metrics)
        save("last", epoch + 1, metrics)
        append_log(out, rec)
        history.append(rec)
        if progress:
            progress(epoch + 1, total, f"epoch {epoch + 1}/{total}: val SSIM "
                     f"{metrics['ssim'] if metrics['ssim'] is not None else float('nan'):.3f}")
    return training_result(out, ("last", "best_ssim", "best_lpips"), epoch=epoch,
                           start_epoch=start_epoch, epochs=total, cancelled=cancelled,
                           history=history, best=best, device=dev, unavailable=unavailable)


#: Longest side generated in one pass by ``mode="whole"``; larger masks fall back to tiles.
WHOLE_MAX_SIDE = 2048


def generate_image(G: UNetGenerator, mask: np.ndarray, tile: int, device: torch.device,
                   mode: str = "whole", *, stochastic: bool = True,
                   seed: int | None = None) -> np.ndarray:
    """One synthetic image (float32 [0, 1], same shape as ``mask``) from a binary mask.

    ``mode="whole"`` (default) runs the fully convolutional generator once over the mask,
    reflect-padded to a multiple of ``2**depth``: the pixel scale of training is kept and, unlike
    tiles, the instance-norm statistics are those of the whole image, so no seams appear. Masks
    longer than ``WHOLE_MAX_SIDE`` use ``"tile"`` (Hann-blended tiles of the training size);
    ``"resize"`` resizes the mask to the training size and the image back.
    ``stochastic`` keeps the generator's dropout active, as pix2pix does at test time: it is the
    generator's only noise source, and without it backgrounds come out flat.
    """
    from ..inference import tiled_apply

    m = (np.asarray(mask) > 0).astype(np.float32)
    if seed is not None:
        torch.manual_seed(seed)
    G.eval()
    if stochastic:
        for module in G.modules():
            if isinstance(module, torch.nn.Dropout):
                module.train()

    @torch.no_grad()
    def run(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            y = G(batch * 2 - 1)
        return ((y.float() + 1) / 2).clamp(0, 1)

    try:
        if m.shape == (tile, tile):
            return run(torch.from_numpy(m)[None, None].to(device))[0, 0].cpu().numpy()
        if mode == "resize":
            import cv2

            small = cv2.resize(m, (tile, tile), interpolation=cv2.INTER_NEAREST)
            y = run(torch.from_numpy(small)[None, None].to(device))[0, 0].cpu().numpy()
            return cv2.resize(y, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_LINEAR)
        if mode == "whole" and max(m.shape) <= WHOLE_MAX_SIDE:
            unit = 2 ** int(G.depth)
            h, w = m.shape
            ph, pw = -(-h // unit) * unit, -(-w // unit) * unit
            top, left = (ph - h) // 2, (pw - w) // 2
            padded = np.pad(m, ((top, ph - h - top), (left, pw - w - left)), mode="reflect"
                            if min(h, w) > max(ph - h, pw - w) else "edge")
            y = run(torch.from_numpy(padded)[None, None].to(device))[0, 0].cpu().numpy()
            return np.ascontiguousarray(y[top:top + h, left:left + w])
        return tiled_apply(run, m, tile, device=device)
    finally:
        G.eval()


def generate_images(generator_ckpt: str | os.PathLike, masks_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, *, device: str = "auto", mode: str = "whole",
                    stochastic: bool = True, seed: int = 0,
                    progress: Callable[[int, int, str], None] | None = None) -> list[Path]:
    """Turn every label map in ``masks_dir`` into a synthetic micrograph PNG (8-bit) named after
    the mask's stem in ``out_dir``, at the training pixel scale (see :func:`generate_image` for
    ``mode`` and ``stochastic``). Seeded: the same seed gives the same images. Returns the paths."""
    if mode not in ("whole", "tile", "resize"):
        raise InputError(f"mode must be 'whole', 'tile' or 'resize', got {mode!r}")
    dev = pick_device(device)
    if dev.type == "cpu":
        set_cpu_threads()
    G, cfg = load_model(generator_ckpt, device=dev)
    if not isinstance(G, UNetGenerator):
        raise InputError(f"{generator_ckpt}: not a generator checkpoint")
    tile = int(cfg.get("config", {}).get("image_size", 256))
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise InputError(f"masks folder not found: {masks_dir}")
    files = sorted(p for p in masks_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in (".png", ".tif", ".tiff"))
    if not files:
        raise InputError(f"no mask files (.png/.tif) in {masks_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, f in enumerate(files):
        mask = io.read_label_map(f)
        img = generate_image(G, mask, tile, dev, mode, stochastic=stochastic, seed=seed + k)
        written.append(io.write_image(out / f"{f.stem}.png", img))
        if progress:
            progress(k + 1, len(files), f"generated {f.stem}")
    return written
