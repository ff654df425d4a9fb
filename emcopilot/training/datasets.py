"""Paired (image, mask) data from two folders with matching file stems.

Images are read with :func:`emcopilot.io.read_micrograph` and normalised to [0, 1]; masks with
:func:`emcopilot.io.read_label_map` and binarised (label > 0). Everything is held in memory
(the paper's sets are tens to a few thousand 512 px images). Training samples are random
``image_size`` crops at the native pixel scale (images smaller than that are reflect-padded)
with random flips and 90-degree rotations; validation samples are centre crops.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import io
from ..errors import InputError

__all__ = ["Pair", "find_pairs", "load_pairs", "split_pairs", "PairedDataset", "describe_data"]


@dataclass
class Pair:
    """One training pair: float32 image in [0, 1] and float32 binary mask, same (H, W)."""

    stem: str
    image: np.ndarray
    mask: np.ndarray


def find_pairs(images_dir: str | os.PathLike, masks_dir: str | os.PathLike
               ) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) for every image whose stem has a mask (sorted by stem).

    InputError if a folder is missing or no stem matches.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise InputError(f"{what} folder not found: {d}")
    images = {p.stem: p for p in io.list_images(images_dir)}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir())
             if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in (".png", ".tif", ".tiff")}
    stems = sorted(set(images) & set(masks))
    if not stems:
        raise InputError(f"no image in {images_dir} has a mask with the same name in {masks_dir}")
    return [(s, images[s], masks[s]) for s in stems]


def gather_pairs(sources: Sequence[tuple[str | os.PathLike, str | os.PathLike, str]],
                 dest: str | os.PathLike, *, particle_diameter_px: float | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> tuple[Path, Path]:
    """Gather several (images folder, masks folder, name prefix) sources into one training set,
    ``dest/images`` and ``dest/masks``, by hard link (copy where links are not possible); the
    prefix keeps stems from different sources apart. ``dest`` is rebuilt on every call, so it
    never holds pairs that the sources no longer have (links are cheap). Returns the two
    folders.

    With ``particle_diameter_px`` every pair is resized instead, so that the typical particle of
    its mask is that wide (:func:`emcopilot.particle_scale.normalising_scale`); the factors are
    written to ``dest/scales.json``. Only images with a mask of the same stem are taken then.

    A single source without a prefix and without resizing is returned as it is (nothing to
    gather; ``dest`` is not touched).
    """
    if particle_diameter_px is None and len(sources) == 1 and not sources[0][2]:
        return Path(sources[0][0]), Path(sources[0][1])
    dest = Path(dest)
    for sub in ("images", "masks"):
        if (dest / sub).exists():
            shutil.rmtree(dest / sub)
        (dest / sub).mkdir(parents=True)
    if particle_diameter_px is not None:
        return _gather_rescaled(sources, dest, float(particle_diameter_px), progress)
    for images, masks, prefix in sources:
        for sub, folder in (("images", images), ("masks", masks)):
            for f in sorted(Path(folder).glob("*.png")):
                target = dest / sub / f"{prefix}{f.name}"
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copyfile(f, target)
    return dest / "images", dest / "masks"


def _gather_rescaled(sources, dest: Path, target: float,
                     progress: Callable[[int, int, str], None] | None) -> tuple[Path, Path]:
    from emcopilot.atomic import atomic_write_text
    from emcopilot.particle_scale import normalising_scale, resize_image, resize_labels

    items = [(prefix, ip, mp) for images, masks, prefix in sources
             for _, ip, mp in find_pairs(images, masks)]
    scales: dict[str, float] = {}
    for k, (prefix, ip, mp) in enumerate(items):
        labels = io.read_label_map(mp)
        image = io.read_micrograph(ip).image
        if image.shape[:2] != labels.shape:
            raise InputError(f"{ip.stem}: image is {image.shape[1]}x{image.shape[0]} px but its "
                             f"mask is {labels.shape[1]}x{labels.shape[0]} px")
        s = normalising_scale(labels, target)
        name = f"{prefix}{ip.stem}.png"
        io.write_image(dest / "images" / name, resize_image(io.normalize(image), s))
        io.write_label_map(dest / "masks" / name, resize_labels(labels, s))
        scales[name[:-4]] = round(s, 4)
        if progress:
            progress(k + 1, len(items), f"resized {name} x{s:.2f}")
    atomic_write_text(dest / "scales.json", json.dumps(scales, indent=1, sort_keys=True))
    return dest / "images", dest / "masks"


def load_pairs(items: Sequence[tuple[str, Path, Path]],
               progress: Callable[[int, int, str], None] | None = None) -> list[Pair]:
    """Read and normalise the pairs. InputError if an image and its mask differ in size."""
    out = []
    for k, (stem, ip, mp) in enumerate(items):
        image = io.normalize(io.read_micrograph(ip).image)
        mask = (io.read_label_map(mp) > 0).astype(np.float32)
        if image.shape != mask.shape:
            raise InputError(f"{stem}: image is {image.shape[1]}x{image.shape[0]} px but its mask "
                             f"is {mask.shape[1]}x{mask.shape[0]} px")
        out.append(Pair(stem, image, mask))
        if progress:
            progress(k + 1, len(items), f"loaded {stem}")
    return out


def split_pairs(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of ``n`` items (at least one in each; with one item it is
    used for both)."""
    if n <= 0:
        raise InputError("no training pairs")
    if n == 1:
        return [0], [0]
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def describe_data(images_dir: str | os.PathLike, masks_dir: str | os.PathLike,
                  pairs: Sequence[Pair], train_idx: Sequence[int], val_idx: Sequence[int]) -> dict:
    """JSON description of the training data kept in checkpoints."""
    return {
        "images_dir": str(images_dir), "masks_dir": str(masks_dir), "n_pairs": len(pairs),
        "train": [pairs[i].stem for i in train_idx], "val": [pairs[i].stem for i in val_idx],
        "mean_foreground": float(np.mean([p.mask.mean() for p in pairs])) if pairs else 0.0,
    }


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - a.shape[0]), max(0, size - a.shape[1])
    if ph or pw:
        a = np.pad(a, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")
    return a


class PairedDataset(Dataset):
    """Torch dataset of (image, mask) crops, each a float32 tensor (1, S, S).

    Args:
        pairs: loaded pairs.
        image_size: crop side S in px.
        train: random crops + flips/rot90 (and ``transform``) if True, centre crops otherwise.
        transform: ``f(image01_crop, rng) -> image01_crop`` applied to training images only
            (domain adaptation variants, Algorithm 6).
        samples_per_epoch: length of an epoch in samples (default: one per pair).
        seed: base seed; the crop of sample ``i`` in epoch ``e`` depends on (seed, e, i) only.
    """

    def __init__(self, pairs: Sequence[Pair], image_size: int, train: bool = True,
                 transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 samples_per_epoch: int | None = None, seed: int = 0) -> None:
        self.pairs = list(pairs)
        self.size = int(image_size)
        self.train = train
        self.transform = transform
        self.n = samples_per_epoch or len(self.pairs)
        self.seed = seed
        self.epoch = 0
        # Pad once so every crop is a plain slice.
        self._images = [_pad_to(p.image, self.size) for p in self.pairs]
        self._masks = [_pad_to(p.mask, self.size) for p in self.pairs]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def crop(self, index: int, rng: np.random.Generator | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """The (image, mask) numpy crop of pair ``index % len(pairs)``."""
        k = index % len(self.pairs)
        img, msk = self._images[k], self._masks[k]
        h, w = img.shape
        s = self.size
        if rng is None:
            y0, x0 = (h - s) // 2, (w - s) // 2
        else:
            y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        img, msk = img[y0:y0 + s, x0:x0 + s], msk[y0:y0 + s, x0:x0 + s]
        if rng is not None:
            r = int(rng.integers(0, 4))
            if r:
                img, msk = np.rot90(img, r), np.rot90(msk, r)
            if rng.random() < 0.5:
                img, msk = img[:, ::-1], msk[:, ::-1]
        return img, msk

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        img, msk = self.crop(index, rng)
        if self.train and self.transform is not None:
            img = self.transform(np.ascontiguousarray(img), rng)
        img = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
        msk = torch.from_numpy(np.ascontiguousarray(msk, dtype=np.float32))[None]
        return img, msk
