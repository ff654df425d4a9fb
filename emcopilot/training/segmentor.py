"""Segmentor training (Algorithm 7): attention UNet++ with focal + Jaccard loss.

Adam with cosine LR decay; every epoch the validation split (20 %) is segmented (centre crops of
the training size, probability > 0.5) and scored: mPA, mIoU, mDice, precision, recall; the
probability threshold with the best validation Dice is stored in the checkpoint's config as
``calibrated_threshold`` (opt-in at inference: measured on EMPS, a threshold calibrated on
synthetic pairs does not transfer to real images, see BENCHMARKS.md). The best
model by mIoU is kept in ``best_miou/``, the latest state in ``last/`` (resumable), one JSON line
per epoch in ``log.jsonl``. With ``augment=True`` each training crop gets a random domain
adaptation variant of Algorithm 6 (:func:`emcopilot.augment.apply_variant`) on the fly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..device import (autocast, channels_last, grad_scaler, loader_options, pick_device,
                      set_cpu_threads)
from ..errors import InputError
from ..nets import UNetPlusPlus
from ..postprocess import calibrate_threshold
from .checkpoint import load_training_state, save_checkpoint
from .common import (append_log, lr_factor, seed_everything, set_lr, training_result,
                     truncate_log)
from .datasets import PairedDataset, describe_data, find_pairs, load_pairs, split_pairs
from .evaluation import segmentation_scores
from .losses import segmentation_loss
from .profiles import resolve_profile

__all__ = ["train_segmentor", "make_augmenter"]


def make_augmenter(prob: float = 0.9) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """``f(image01, rng)``: with probability ``prob`` apply one random Algorithm 6 variant."""
    from .. import augment

    variants = list(augment.VARIANTS)

    def f(image01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= prob:
            return image01
        v = variants[int(rng.integers(0, len(variants)))]
        out = augment.apply_variant(image01, v, rng)
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    return f


@torch.no_grad()
def _validate(model: UNetPlusPlus, val_ds: PairedDataset, device: torch.device, fmt,
              batch_size: int) -> dict[str, float]:
    """Scores at probability 0.5 plus the calibrated threshold (best mean Dice on these pairs,
    :func:`emcopilot.postprocess.calibrate_threshold`) as ``threshold`` / ``dice_at_threshold``."""
    model.eval()
    probs, truths = [], []
    for k in range(0, len(val_ds), batch_size):
        items = [val_ds[i] for i in range(k, min(k + batch_size, len(val_ds)))]
        x = torch.stack([it[0] for it in items]).to(device).contiguous(memory_format=fmt)
        with autocast(device):
            y = model(x)
        probs.extend(torch.sigmoid(y.float()[:, 0]).cpu().numpy())
        truths.extend(it[1][0].numpy() > 0.5 for it in items)
    model.train()
    scores = segmentation_scores([p > 0.5 for p in probs], truths)
    cal = calibrate_threshold(probs, truths)
    scores["threshold"] = cal["threshold"]
    scores["dice_at_threshold"] = cal["dice"]
    return scores


def train_segmentor(images_dir: str | os.PathLike, masks_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, *, profile: str = "cpu", epochs: int | None = None,
                    augment: bool = False, batch_size: int | None = None,
                    image_size: int | None = None, lr: float | None = None,
                    base: int | None = None, depth: int | None = None,
                    attention: str | None = None, deep_supervision: bool | None = None,
                    seed: int = 0, device: str = "auto", resume: bool = True,
                    val_fraction: float = 0.2, samples_per_epoch: int | None = None,
                    input_polarity: str | None = None,
                    particle_diameter_px: float | None = None, scale_preset: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train the segmentor on (image, mask) pairs with matching stems (synthetic or labelled).

    Args:
        images_dir, masks_dir: folders of images and label maps (mask > 0 = particle).
        out_dir: run folder: ``log.jsonl``, ``last/``, ``best_miou/``.
        profile: "cpu" or "paper"; other keyword arguments override its values when not None
            (``image_size`` = crop side in px, ``base``/``depth``/``attention``/
            ``deep_supervision`` = architecture).
        augment: apply random Algorithm 6 variants to training crops on the fly.
        samples_per_epoch: crops per epoch (default: the profile's; 0 = one per training pair).
        input_polarity: ``"bright"`` when every training image shows bright particles
            (``io.bright_particles``, as the pipeline and the app prepare them): recorded in the
            checkpoint, and inference then converts each image to that convention first.
            None: images as they are.
        particle_diameter_px: when the training images were resized so that their typical
            particle is this wide (:mod:`emcopilot.particle_scale`): recorded in the checkpoint,
            and inference resizes each image the same way. None: pixel scale as it is.
        scale_preset: the classical masker preset whose particles measured that scale
            (inference uses it to measure a new image's scale; default "auto").
        resume: continue from ``out_dir/last`` when present; ``epochs`` is the total.
        progress: ``progress(epoch, epochs, message)`` after every epoch.
        should_stop: checked between steps; True saves ``last/`` and returns ``cancelled=True``.

    Returns:
        dict with ``epoch``, ``epochs``, ``history``, ``best`` (mIoU and its epoch),
        ``checkpoints``, ``cancelled``.
    """
    cfg = resolve_profile(profile, "segmentor", epochs=epochs, batch_size=batch_size,
                          image_size=image_size, lr=lr, base=base, depth=depth,
                          attention=attention, deep_supervision=deep_supervision,
                          samples_per_epoch=samples_per_epoch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    if dev.type == "cpu":
        set_cpu_threads()
    seed_everything(seed)
    size = int(cfg["image_size"])
    if size % (2 ** int(cfg["depth"])):
        raise InputError(f"image_size {size} must be a multiple of {2 ** int(cfg['depth'])} for a "
                         f"segmentor of depth {cfg['depth']}")

    if input_polarity not in (None, "bright"):
        raise InputError(f"input_polarity must be 'bright' or None, got {input_polarity!r}")
    if particle_diameter_px is not None and not float(particle_diameter_px) > 0:
        raise InputError(f"particle_diameter_px must be > 0, got {particle_diameter_px}")
    items = find_pairs(images_dir, masks_dir)
    pairs = load_pairs(items)
    train_idx, val_idx = split_pairs(len(pairs), val_fraction, seed)
    transform = make_augmenter(cfg["augment_prob"]) if augment else None
    train_ds = PairedDataset([pairs[i] for i in train_idx], size, train=True, transform=transform,
                             samples_per_epoch=cfg["samples_per_epoch"], seed=seed)
    val_ds = PairedDataset([pairs[i] for i in val_idx], size, train=False)
    data = describe_data(images_dir, masks_dir, pairs, train_idx, val_idx)

    model = UNetPlusPlus(1, 1, base=cfg["base"], depth=cfg["depth"], attention=cfg["attention"],
                         deep_supervision=bool(cfg["deep_supervision"]))
    fmt = torch.channels_last if channels_last(dev) else torch.contiguous_format
    model.to(dev, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scaler = grad_scaler(dev)

    start_epoch, best = 0, {"miou": None, "epoch": None}
    if resume and (out / "last" / "config.json").is_file():
        ck = load_training_state(out / "last", {"segmentor": model}, {"segmentor": opt}, scaler,
                                 dev)
        start_epoch = int(ck["epoch"])
        best.update(ck.get("state", {}).get("best", {}))
    truncate_log(out, start_epoch)
    total = int(cfg["epochs"])
    config = {"kind": "segmentor", "training": {**cfg, "augment": bool(augment)}, "data": data,
              "seed": seed, "image_size": size, "threshold": 0.5,
              "input": "grey image in [0, 1] (io.normalize)", "output": "particle logit",
              "input_polarity": input_polarity,
              "particle_diameter_px": (None if particle_diameter_px is None
                                       else float(particle_diameter_px)),
              "scale_preset": scale_preset}
    history: list[dict] = []
    cancelled = False
    epoch = start_epoch

    def save(name: str, ep: int, metrics: dict) -> Path:
        return save_checkpoint(out / name, {"segmentor": model}, {"segmentor": opt}, config, ep,
                               metrics, scaler=scaler, state={"best": best})

    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=int(cfg["batch_size"]), shuffle=True, generator=g,
                        drop_last=len(train_ds) > int(cfg["batch_size"]), **loader_options(dev))
    model.train()
    for epoch in range(start_epoch, total):
        t0 = time.perf_counter()
        factor = lr_factor("cosine", epoch, total)
        set_lr(opt, cfg["lr"] * factor)
        train_ds.set_epoch(epoch)
        loss_sum, steps = 0.0, 0
        for img, msk in loader:
            if should_stop is not None and should_stop():
                cancelled = True
                break
            x = img.to(dev, non_blocking=True).contiguous(memory_format=fmt)
            t = msk.to(dev, non_blocking=True)
            with autocast(dev):
                outs = model(x)
            loss = segmentation_loss(outs, t, cfg["focal_alpha"], cfg["focal_gamma"])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += float(loss.detach())
            steps += 1
        if cancelled:
            save("last", epoch, {"cancelled_in_epoch": epoch + 1})
            break
        metrics = _validate(model, val_ds, dev, fmt, int(cfg["batch_size"]))
        rec = {"epoch": epoch + 1, "epochs": total, "lr": cfg["lr"] * factor,
               "loss": loss_sum / max(steps, 1), **{f"val_{k}": v for k, v in metrics.items()},
               "seconds": round(time.perf_counter() - t0, 3), "steps": steps}
        config["calibrated_threshold"] = float(metrics["threshold"])
        if best["miou"] is None or metrics["mIoU"] > best["miou"]:
            best["miou"], best["epoch"] = metrics["mIoU"], epoch + 1
            save("best_miou", epoch + 1, metrics)
        save("last", epoch + 1, metrics)
        append_log(out, rec)
        history.append(rec)
        if progress:
            progress(epoch + 1, total, f"epoch {epoch + 1}/{total}: loss {rec['loss']:.3f}, "
                     f"val mIoU {metrics['mIoU']:.3f}")
    return training_result(out, ("last", "best_miou"), epoch=epoch, start_epoch=start_epoch,
                           epochs=total, cancelled=cancelled, history=history, best=best,
                           device=dev)
