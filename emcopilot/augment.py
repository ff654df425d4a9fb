"""Domain adaptation (Algorithm 6): 6 noise x 3 contrast strategies = 18 variants per image.

Every function takes ``image01`` (float32 in [0, 1], made by :func:`emcopilot.io.normalize`)
and returns float32 in [0, 1]. A variant is ``contrast`` first, then ``noise``:

    out = clip(noise(contrast(image01)), 0, 1)

Contrast is a property of the specimen and the imaging mode; noise is added by the scan and the
detector, so it is applied last and keeps its stated size in the output (a Gaussian std of 0.03
is 0.03 in the final image, whatever the contrast curve).

Noise strategies (the paper's parameters; names are safe in file names):

- ``shot150`` / ``shot250``: Poisson shot noise at dose D = 150 / 250 electrons per pixel at full
  intensity: ``out = Poisson(x * D) / D``, so a flat field at level x gets mean x and variance
  ``x / D`` (dark pixels stay quiet, as in a counting detector).
- ``gauss003`` / ``gauss005``: additive Gaussian noise with std 0.03 / 0.05 (in [0, 1] units).
- ``shot250_gauss003``: shot noise at 250, then Gaussian 0.03 (variances add).
- ``shot250_gauss003_scan``: scan distortion, then shot 250, then Gaussian 0.03.

Scan noise (interpretation; the paper gives "sine-wave line distortion, jitter sigma 2,
frequency 0.001"): each scan line (row) ``r`` is shifted horizontally by

    shift(r) = A * sin(2 pi f r + phi) + N(0, sigma^2)     [px]

with f = 0.001 cycles per row, sigma = 2 px (independent line jitter), amplitude A = 2 px (not
stated in the paper; our choice, same size as the jitter) and a random phase phi. Rows are
resampled with linear (sub-pixel) interpolation, edges padded with the nearest pixel. The
distortion is applied to the clean image before the shot and Gaussian noise, because the noise
is generated at each (displaced) beam position; interpolating noise would smooth it. An image
that is constant along every row is left unchanged.

Contrast strategies: ``sigmoid_k2`` = S(k=2, i0=0.3), ``sigmoid_k5`` = S(k=5, i0=0.3), ``none``.
The sigmoid is

    s(x) = 1 / (1 + exp(-k (x - i0))),   S(x) = (s(x) - s(0)) / (s(1) - s(0)),

so S(0) = 0, S(1) = 1, S is strictly increasing and steepest at x = i0 (slope
k s(i0)(1 - s(i0)) / (s(1) - s(0)): 1.12 for k = 2, 1.58 for k = 5); grey levels near 0.3 are
spread apart and bright ones compressed.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> img = np.full((64, 64), 0.5, np.float32)
>>> out = apply_variant(img, "shot150__sigmoid_k5", rng)
>>> out.dtype, out.shape
(dtype('float32'), (64, 64))
>>> len(augment_image(img, seed=0))
18
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from emcopilot.atomic import atomic_write_bytes, atomic_write_text
from emcopilot.errors import InputError

__all__ = [
    "NOISE_STRATEGIES",
    "CONTRAST_STRATEGIES",
    "VARIANTS",
    "SCAN_AMPLITUDE_PX",
    "scan_distort",
    "sigmoid_contrast",
    "apply_noise",
    "apply_contrast",
    "apply_variant",
    "augment_image",
    "augment_folder",
]

Progress = Callable[[int, int, str], None]

#: Amplitude (px) of the slow sine-wave line distortion of the scan noise (not given in the paper).
SCAN_AMPLITUDE_PX = 2.0

#: name -> parameters. ``dose``: electrons/pixel at intensity 1 (None = no shot noise);
#: ``gauss_std``: additive Gaussian std in [0, 1] units (None = none); ``scan``: None or
#: {amplitude_px, sigma_px, frequency} (frequency in cycles per row).
NOISE_STRATEGIES: dict[str, dict] = {
    "shot150": {"dose": 150.0, "gauss_std": None, "scan": None},
    "shot250": {"dose": 250.0, "gauss_std": None, "scan": None},
    "gauss003": {"dose": None, "gauss_std": 0.03, "scan": None},
    "gauss005": {"dose": None, "gauss_std": 0.05, "scan": None},
    "shot250_gauss003": {"dose": 250.0, "gauss_std": 0.03, "scan": None},
    "shot250_gauss003_scan": {
        "dose": 250.0, "gauss_std": 0.03,
        "scan": {"amplitude_px": SCAN_AMPLITUDE_PX, "sigma_px": 2.0, "frequency": 0.001},
    },
}

#: name -> parameters of S(k, i0) (None = identity).
CONTRAST_STRATEGIES: dict[str, dict | None] = {
    "sigmoid_k2": {"k": 2.0, "i0": 0.3},
    "sigmoid_k5": {"k": 5.0, "i0": 0.3},
    "none": None,
}

#: "<noise>__<contrast>" -> (noise, contrast): the 18 variants, noise-major order.
VARIANTS: dict[str, tuple[str, str]] = {
    f"{n}__{c}": (n, c) for n in NOISE_STRATEGIES for c in CONTRAST_STRATEGIES
}


def _as_image01(image01: np.ndarray) -> np.ndarray:
    a = np.asarray(image01)
    if a.ndim != 2:
        raise InputError(f"augmentation needs a 2-D grey image, got shape {a.shape}")
    a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(a, 0.0, 1.0)


def scan_distort(image01: np.ndarray, rng: np.random.Generator, *,
                 amplitude_px: float = SCAN_AMPLITUDE_PX, sigma_px: float = 2.0,
                 frequency: float = 0.001, return_shifts: bool = False):
    """Shift every row horizontally by ``amplitude_px * sin(2 pi frequency row + phi) +
    N(0, sigma_px^2)`` px (phi uniform in [0, 2 pi)), with linear sub-pixel interpolation and
    nearest-pixel padding. ``frequency`` in cycles per row. Returns float32 (H, W), and the
    per-row shifts (px, positive = content moves right) when ``return_shifts``.
    """
    from scipy.ndimage import map_coordinates

    a = _as_image01(image01)
    h, w = a.shape
    rows = np.arange(h, dtype=np.float64)
    phase = float(rng.uniform(0.0, 2.0 * np.pi))
    shifts = amplitude_px * np.sin(2.0 * np.pi * frequency * rows + phase)
    if sigma_px > 0:
        shifts = shifts + rng.normal(0.0, sigma_px, size=h)
    rr, cc = np.meshgrid(rows, np.arange(w, dtype=np.float64), indexing="ij")
    out = map_coordinates(a, [rr, cc - shifts[:, None]], order=1, mode="nearest")
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return (out, shifts) if return_shifts else out


def sigmoid_contrast(image01: np.ndarray, k: float, i0: float) -> np.ndarray:
    """S(x) = (s(x) - s(0)) / (s(1) - s(0)) with s(x) = 1 / (1 + exp(-k (x - i0))).

    Maps [0, 1] onto [0, 1] monotonically with S(0) = 0 and S(1) = 1. Returns float32.
    """
    if not k > 0:
        raise InputError(f"sigmoid contrast needs k > 0, got {k}")
    x = _as_image01(image01).astype(np.float64)

    def s(v):
        return 1.0 / (1.0 + np.exp(-k * (v - i0)))

    s0, s1 = s(0.0), s(1.0)
    return np.clip((s(x) - s0) / (s1 - s0), 0.0, 1.0).astype(np.float32)


def apply_noise(image01: np.ndarray, strategy: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one of :data:`NOISE_STRATEGIES` (scan distortion -> shot noise -> Gaussian noise).

    Returns float32 (H, W) clipped to [0, 1].
    """
    if strategy not in NOISE_STRATEGIES:
        raise InputError(f"unknown noise strategy {strategy!r}; use one of "
                         f"{', '.join(NOISE_STRATEGIES)}")
    p = NOISE_STRATEGIES[strategy]
    a = _as_image01(image01).astype(np.float32)
    if p["scan"] is not None:
        a = scan_distort(a, rng, **p["scan"])
    if p["dose"] is not None:
        dose = float(p["dose"])
        a = (rng.poisson(a.astype(np.float64) * dose) / dose).astype(np.float32)
    if p["gauss_std"] is not None:
        a = a + rng.normal(0.0, float(p["gauss_std"]), size=a.shape).astype(np.float32)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def apply_contrast(image01: np.ndarray, strategy: str) -> np.ndarray:
    """Apply one of :data:`CONTRAST_STRATEGIES` (``none`` = identity). Returns float32 [0, 1]."""
    if strategy not in CONTRAST_STRATEGIES:
        raise InputError(f"unknown contrast strategy {strategy!r}; use one of "
                         f"{', '.join(CONTRAST_STRATEGIES)}")
    p = CONTRAST_STRATEGIES[strategy]
    if p is None:
        return _as_image01(image01).astype(np.float32, copy=True)
    return sigmoid_contrast(image01, p["k"], p["i0"])


def _resolve_variant(variant: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise InputError(f"unknown augmentation variant {variant!r}; names are "
                             "'<noise>__<contrast>', e.g. 'shot150__sigmoid_k2'")
        return VARIANTS[variant]
    noise, contrast = variant
    if (noise not in NOISE_STRATEGIES) or (contrast not in CONTRAST_STRATEGIES):
        raise InputError(f"unknown augmentation variant {variant!r}")
    return noise, contrast


def apply_variant(image01: np.ndarray, variant: str | tuple[str, str],
                  rng: np.random.Generator) -> np.ndarray:
    """Apply one variant (a name of :data:`VARIANTS` or a (noise, contrast) pair): contrast,
    then noise. Returns float32 (H, W) in [0, 1]."""
    noise, contrast = _resolve_variant(variant)
    return apply_noise(apply_contrast(image01, contrast), noise, rng)


def _augment(image01: np.ndarray, entropy: list[int]) -> dict[str, np.ndarray]:
    out = {}
    for i, name in enumerate(VARIANTS):
        rng = np.random.default_rng([*entropy, i])
        out[name] = apply_variant(image01, name, rng)
    return out


def augment_image(image01: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """All 18 variants of one image: {variant name: float32 (H, W) in [0, 1]}.

    Each variant uses its own generator seeded by (seed, variant index), so the result is
    reproducible and does not depend on which other variants are computed.
    """
    return _augment(image01, [int(seed)])


def _find_mask(masks_dir: Path, stem: str) -> Path | None:
    for suffix in (".png", ".tif", ".tiff"):
        p = masks_dir / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def augment_folder(images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   masks_dir: str | os.PathLike | None = None, seed: int = 0,
                   progress: Progress | None = None) -> list[Path]:
    """Write the 18 variants of every image in ``images_dir``.

    Each image is read with :func:`emcopilot.io.read_micrograph` (frame 0) and normalised with
    :func:`emcopilot.io.normalize`; its variants go to ``out_dir/images/<stem>__<variant>.png``
    (8-bit). With ``masks_dir``, the mask ``masks_dir/<stem>.png`` (or .tif/.tiff) is written
    unchanged (16-bit label PNG) as ``out_dir/masks/<stem>__<variant>.png`` for each variant, so
    image/mask pairs share names. ``out_dir/manifest.json`` records the seed, the parameters and
    the files. The generator of each (image, variant) is seeded by (seed, crc32(stem), variant
    index): re-running gives identical files. Returns the image paths written.

    Raises InputError when a mask is missing or its shape differs from the image's.
    """
    from emcopilot import io

    images_dir = Path(images_dir)
    out = Path(out_dir)
    files = io.list_images(images_dir)
    mdir = Path(masks_dir) if masks_dir is not None else None
    if mdir is not None and not mdir.is_dir():
        raise InputError(f"masks folder not found: {mdir}")
    pairs: list[tuple[Path, Path | None]] = []
    for f in files:
        stem = io.safe_stem(f.name)
        mask = None
        if mdir is not None:
            mask = _find_mask(mdir, stem)
            if mask is None:
                raise InputError(f"no mask for {f.name} in {mdir} (expected {stem}.png)")
        pairs.append((f, mask))

    total = len(pairs)
    written: list[Path] = []
    records = []
    for n, (f, mask_path) in enumerate(pairs):
        stem = io.safe_stem(f.name)
        if progress:
            progress(n, total, f.name)
        image01 = io.normalize(io.read_micrograph(f).image)
        mask_bytes = None
        if mask_path is not None:
            labels = io.read_label_map(mask_path)
            if labels.shape != image01.shape:
                raise InputError(f"{mask_path.name}: mask is {labels.shape[1]} x {labels.shape[0]} px "
                                 f"but {f.name} is {image01.shape[1]} x {image01.shape[0]} px")
            first = out / "masks" / f"{stem}__{next(iter(VARIANTS))}.png"
            io.write_label_map(first, labels)
            mask_bytes = first.read_bytes()
        variants = _augment(image01, [int(seed), zlib.crc32(stem.encode("utf-8"))])
        for name, img in variants.items():
            target = out / "images" / f"{stem}__{name}.png"
            io.write_image(target, img)
            written.append(target)
            rec = {"source": f.name, "variant": name, "image": f"images/{target.name}"}
            if mask_bytes is not None:
                mtarget = out / "masks" / target.name
                if not mtarget.exists() or mtarget.read_bytes() != mask_bytes:
                    atomic_write_bytes(mtarget, mask_bytes)
                rec["mask"] = f"masks/{mtarget.name}"
            records.append(rec)
    if progress:
        progress(total, total, "done")
    manifest = {
        "algorithm": "Algorithm 6 (domain adaptation): contrast, then noise",
        "seed": int(seed),
        "rng": "numpy default_rng([seed, crc32(stem), variant_index])",
        "noise_strategies": NOISE_STRATEGIES,
        "contrast_strategies": CONTRAST_STRATEGIES,
        "variants": {k: list(v) for k, v in VARIANTS.items()},
        "n_inputs": total,
        "files": records,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return written

