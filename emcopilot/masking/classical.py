"""Classical coarse masker: smoothing, background subtraction, global/local threshold, watershed.

The weight-free alternative to SAM for stage 1 (coarse masks). It runs in the bright-particle
convention (``io.bright_particles``), so it handles HAADF (bright particles) and bright-field TEM
(dark particles) alike. Large images are processed at ``work_size`` px on their long side and the
labels scaled back with nearest-neighbour interpolation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import filters as skfilters

from emcopilot.errors import InputError
from emcopilot.instances import binary_to_instances, remove_small_instances
from emcopilot.masking.filters import bright_image, resolve_polarity

__all__ = ["ClassicalMasker", "PRESETS", "THRESHOLD_METHODS", "BACKGROUND_METHODS", "choose_preset",
           "otsu_foreground", "largest_region", "AUTO_SUPPORT_FOREGROUND", "AUTO_MIN_PARTICLES",
           "AUTO_SUPPORT_REGION", "AUTO_ON_REGION_MIN", "AUTO_ON_REGION_SHARE", "AUTO_ON_REGION_COVER",
           "local_noise", "robust_level"]

THRESHOLD_METHODS = ("otsu", "li", "triangle", "local", "noise", "local_noise")
BACKGROUND_METHODS = ("none", "gaussian", "tophat")

#: Named parameter sets. "isolated" = the defaults, chosen on EMPS *train* images (free particles,
#: often large, on a flat background). "supported" = small bright particles on a textured support
#: (HAADF-STEM of catalysts): white top-hat of radius 15 px removes the support, a robust noise
#: threshold (median + 6 MAD-sigmas) keeps particles; chosen on the 33 catalyst images of Genc et
#: al. against their YOLO box counts (no separate tuning split exists; see bench/bench_classical).
PRESETS: dict[str, dict] = {
    "isolated": {},
    "supported": {"sigma": 1.0, "background": "tophat", "background_radius": 15.0,
                  "threshold": "noise", "noise_k": 6.0, "min_area": 10, "split_h": 1.0},
}


@dataclass
class ClassicalMasker:
    """Threshold + watershed particle masker. All lengths are in pixels of the *work* image
    (the input, or the input downscaled so that its long side is ``work_size``).

    Attributes:
        sigma: Gaussian smoothing before thresholding, px (0 = none).
        background: ``"none"``, ``"gaussian"`` (subtract a Gaussian blur of sigma
            ``background_radius``) or ``"tophat"`` (white top-hat with a disc of that radius:
            removes bright structures larger than the disc, e.g. uneven support).
        background_radius: scale of the background, px; choose it larger than the largest
            particle radius.
        threshold: ``"otsu"``, ``"li"``, ``"triangle"`` (global, scikit-image), ``"local"``
            (Gaussian-weighted local mean over ``local_block_size`` px minus ``local_offset``),
            ``"noise"`` (median + ``noise_k`` robust standard deviations) or ``"local_noise"``
            (the same, with median and deviation measured per ``noise_window`` tile:
            :func:`local_noise`).
        threshold_scale: the global threshold is multiplied by this (>1 = stricter).
        local_block_size: odd window size of the local threshold, px.
        local_offset: subtracted from the local mean (image units, 0-1).
        noise_k: for ``threshold="noise"``: foreground = more than ``noise_k`` robust standard
            deviations (1.4826 x median absolute deviation) above the median; suits a
            background-subtracted image of small particles on a support.
        noise_window: for ``threshold="local_noise"``: tile size of the local level, px.
        noise_floor: for ``threshold="local_noise"``: the local deviation is kept at or above
            this share of the whole image's (a flat, quantised region has none).
        min_area: particles smaller than this are removed, px (of the input image).
        min_distance: minimum distance between the centres of touching particles, px; 0 = do not
            split touching particles.
        split_h: how much deeper (px of the distance transform) a particle centre must be than
            the neck to a neighbour to be split from it (see ``instances.binary_to_instances``).
        split_share: and at least this share of the lower centre's depth (0: ``split_h``
            alone; ``bench/bench_split_rules.py`` measured 0.2-0.5 on EMPS train and it was not
            adopted).
        fill_holes: fill holes inside particles (hollow/core-shell particles, bright rims).
        opening_radius: binary opening radius, px, to cut thin bridges and speckle (0 = none).
        work_size: long side, px, above which the image is downscaled for processing.

    Defaults were chosen on 80 random EMPS *train* images (true polarity given): Otsu on a
    sigma-2 smoothed image, no background subtraction (Gaussian/top-hat lowered object F1 there),
    opening 2, holes filled, split_h 4; min_area 30 px rather than the slightly better 50-100 px
    because supported-catalyst particles can be 5-10 px across.
    """

    sigma: float = 2.0
    background: str = "none"
    background_radius: float = 50.0
    threshold: str = "otsu"
    threshold_scale: float = 1.0
    local_block_size: int = 101
    local_offset: float = 0.0
    noise_k: float = 4.0
    noise_window: int = 64
    noise_floor: float = 0.5
    min_area: int = 30
    min_distance: int = 5
    split_h: float = 4.0
    split_share: float = 0.0
    fill_holes: bool = True
    opening_radius: int = 2
    work_size: int = 1024

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLD_METHODS:
            raise InputError(f"threshold must be one of {', '.join(THRESHOLD_METHODS)}, "
                             f"got {self.threshold!r}")
        if self.background not in BACKGROUND_METHODS:
            raise InputError(f"background must be one of {', '.join(BACKGROUND_METHODS)}, "
                             f"got {self.background!r}")
        if self.work_size < 64:
            raise InputError(f"work_size must be at least 64 px, got {self.work_size}")

    @classmethod
    def from_preset(cls, preset: str = "isolated", **overrides) -> "ClassicalMasker":
        """A masker with the parameters of ``PRESETS[preset]``, then ``overrides``."""
        if preset not in PRESETS:
            raise InputError(f"classical preset must be one of {', '.join(PRESETS)}, "
                             f"got {preset!r}")
        try:
            return cls(**{**PRESETS[preset], **overrides})
        except TypeError as exc:
            raise InputError(f"bad classical masker option: {exc}") from None

    def options(self) -> dict:
        """The parameters as a plain dict (for logs and JSON)."""
        return asdict(self)

    def at_work_size(self, bright01: np.ndarray) -> tuple[np.ndarray, float]:
        """``(image, scale)``: the image downscaled (area averaging) so that its long side is at
        most ``work_size``, and the factor used (1.0: as given)."""
        img = np.asarray(bright01, np.float32)
        h, w = img.shape
        scale = min(1.0, self.work_size / max(h, w))
        if scale < 1.0:
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        return img, scale

    def filtered(self, bright01: np.ndarray) -> np.ndarray:
        """The image the threshold is applied to: smoothed (``sigma``) and with its background
        taken out (``background``)."""
        img = np.asarray(bright01, np.float32)
        if self.sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.sigma)
        if self.background == "gaussian":
            img = img - cv2.GaussianBlur(img, (0, 0), self.background_radius)
        elif self.background == "tophat":
            r = max(1, int(round(self.background_radius)))
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            img = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, k)
        return img

    def foreground(self, bright01: np.ndarray) -> np.ndarray:
        """Binary particle mask of an image already in the bright-particle convention."""
        img = self.filtered(bright01)
        if float(img.max()) - float(img.min()) < 1e-6:
            return np.zeros(img.shape, bool)
        if self.threshold == "local":
            block = int(self.local_block_size) | 1
            t = skfilters.threshold_local(img, block, method="gaussian", offset=self.local_offset)
            # A flat region must not be split into random halves: also require the global Otsu
            # level scaled down, so background texture is not picked up.
            binary = (img > t) & (img > skfilters.threshold_otsu(img) * 0.5)
        elif self.threshold == "noise":
            med, mad = robust_level(img)
            binary = img > med + self.noise_k * max(mad, 1e-6) * self.threshold_scale
        elif self.threshold == "local_noise":
            med, sigma = local_noise(img, self.noise_window, self.noise_floor)
            binary = img > med + self.noise_k * sigma * self.threshold_scale
        else:
            fn = {"otsu": skfilters.threshold_otsu, "li": skfilters.threshold_li,
                  "triangle": skfilters.threshold_triangle}[self.threshold]
            binary = img > fn(img) * self.threshold_scale
        if self.opening_radius > 0:
            r = int(self.opening_radius)
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            binary = cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_OPEN, k).astype(bool)
        if self.fill_holes:
            binary = ndi.binary_fill_holes(binary)
        return binary

    def __call__(self, image01: np.ndarray, polarity: str = "auto") -> np.ndarray:
        """Segment particles.

        Args:
            image01: 2-D float32 image in [0, 1] (``io.normalize``).
            polarity: ``"bright"``, ``"dark"`` or ``"auto"`` (``io.detect_polarity``).

        Returns:
            ``numpy.int32`` label map of the input's shape, 0 = background, 1..N = particles.
        """
        image01 = np.asarray(image01, np.float32)
        if image01.ndim != 2:
            raise InputError(f"expected a 2-D greyscale image, got shape {image01.shape}")
        polarity = resolve_polarity(image01, polarity)
        h, w = image01.shape
        bright, scale = self.at_work_size(bright_image(image01, polarity))
        binary = self.foreground(bright)
        work_min_area = max(1, int(round(self.min_area * scale * scale)))
        labels = binary_to_instances(binary, min_distance=self.min_distance, h=self.split_h,
                                     h_share=self.split_share,
                                     min_area=work_min_area)
        if scale < 1.0:
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
            labels = remove_small_instances(labels, self.min_area)
        return labels.astype(np.int32, copy=False)


def robust_level(img: np.ndarray) -> tuple[float, float]:
    """``(median, robust standard deviation)`` of an image's values: the deviation is 1.4826 x
    the median absolute deviation (the standard deviation for Gaussian noise)."""
    med = float(np.median(img))
    return med, float(np.median(np.abs(img - med))) * 1.4826


def local_noise(img: np.ndarray, window: int, floor: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Local median and robust standard deviation (1.4826 x MAD) of ``img``, per pixel.

    Both are measured in tiles of ``window`` px, smoothed over 3 x 3 tiles by a median (so a
    tile full of particles does not raise its neighbours' level) and interpolated bilinearly
    between tile centres, as astronomical background meshes are (SExtractor). The deviation is
    kept at or above ``floor`` times the whole image's, so that a flat, quantised region (MAD 0)
    does not turn its last grey level into particles.
    """
    img = np.asarray(img, np.float32)
    h, w = img.shape
    window = max(8, int(window))
    ny, nx = max(1, round(h / window)), max(1, round(w / window))
    ys = np.linspace(0, h, ny + 1).round().astype(int)
    xs = np.linspace(0, w, nx + 1).round().astype(int)
    med = np.empty((ny, nx), np.float32)
    sig = np.empty((ny, nx), np.float32)
    for i in range(ny):
        for j in range(nx):
            med[i, j], sig[i, j] = robust_level(img[ys[i]:ys[i + 1], xs[j]:xs[j + 1]])
    if ny >= 3 or nx >= 3:
        med = ndi.median_filter(med, size=3, mode="nearest")
        sig = ndi.median_filter(sig, size=3, mode="nearest")
    sig = np.maximum(sig, max(floor * robust_level(img)[1], 1e-6))
    return (cv2.resize(med, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(sig, (w, h), interpolation=cv2.INTER_LINEAR))


#: ``choose_preset``: an Otsu foreground covering more than this fraction of the image means the
#: threshold cut through a textured support rather than around particles (see BENCHMARKS.md).
AUTO_SUPPORT_FOREGROUND = 0.25
#: ... and the "supported" preset must then find at least this many particles to be preferred.
AUTO_MIN_PARTICLES = 10
#: With less Otsu foreground, the largest Otsu region covering more than this fraction of the frame
#: may be a support taken as one particle (PtC1, Pd_silica1, Pt_carbon1 of the catalysts) ...
AUTO_SUPPORT_REGION = 0.10
#: ... and is taken as one when the top-hat masker finds at least this many particles on it,
AUTO_ON_REGION_MIN = 50
#: at least this share of all it finds,
AUTO_ON_REGION_SHARE = 0.7
#: covering at most this fraction of the region.
AUTO_ON_REGION_COVER = 0.3


def choose_preset(image01: np.ndarray, polarity: str = "auto") -> tuple[str, np.ndarray | None]:
    """Pick the classical preset for one image: ``("supported", labels)`` or ``("isolated", None)``.

    Free particles on a flat background give an Otsu foreground of a few to ~20 % of the frame;
    small particles on a textured support (HAADF-STEM of catalysts) make Otsu split the support
    itself (25-60 % foreground). In that case, when the "supported" preset finds at least
    ``AUTO_MIN_PARTICLES`` particles, it is chosen and its labels are returned (not recomputed).

    A support that covers less of the frame can come out of Otsu as one region (PtC1,
    Pd_silica1, Pt_carbon1 of the catalysts: 11-22 % of the frame), which the "isolated"
    preset then takes for one huge particle. So with less foreground, when the largest Otsu
    region covers more than ``AUTO_SUPPORT_REGION`` of the frame and the "supported" preset
    finds many particles on it (:func:`_particles_on_region`), "supported" is chosen too. A large
    free particle is not taken for a support: the top-hat masker finds it as itself (it covers
    its region) or finds few particles, most of them elsewhere. On the EMPS train and test
    splits (465 figure crops) this second rule changed no image's preset
    (``python -m bench.bench_auto_preset``; BENCHMARKS.md, run 25).
    """
    image01 = np.asarray(image01, np.float32)
    polarity = resolve_polarity(image01, polarity)
    otsu = otsu_foreground(bright_image(image01, polarity))
    split_support = otsu.mean() > AUTO_SUPPORT_FOREGROUND
    if not split_support:
        region = largest_region(otsu)
        if region.mean() <= AUTO_SUPPORT_REGION:
            return "isolated", None
    labels = ClassicalMasker.from_preset("supported")(image01, polarity=polarity)
    if split_support:
        supported = labels.max() >= AUTO_MIN_PARTICLES
    else:
        if region.shape != labels.shape:  # the Otsu mask is at the work size
            h, w = labels.shape
            region = cv2.resize(region.astype(np.uint8), (w, h),
                                interpolation=cv2.INTER_NEAREST) > 0
        supported = _particles_on_region(labels, region)
    return ("supported", labels) if supported else ("isolated", None)


def otsu_foreground(bright01: np.ndarray) -> np.ndarray:
    """The "isolated" preset's foreground (Otsu) of a bright-particle image, at its work size
    (downscaled so that the long side is at most ``work_size``): what :func:`choose_preset`
    judges an image by."""
    isolated = ClassicalMasker.from_preset("isolated")
    return isolated.foreground(isolated.at_work_size(bright01)[0])


def largest_region(binary: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a binary image (all False when it is empty)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(binary.shape, bool)
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _particles_on_region(labels: np.ndarray, region: np.ndarray) -> bool:
    """Do the top-hat masker's particles sit on ``region`` (not empty) as on a support?

    Many of them (``AUTO_ON_REGION_MIN``), most of them inside the region
    (``AUTO_ON_REGION_SHARE``), covering little of it (``AUTO_ON_REGION_COVER``: a large free
    particle is found as itself, i.e. covered)."""
    inside = int(np.count_nonzero(np.unique(labels[region])))
    cover = float(np.count_nonzero(labels[region])) / float(np.count_nonzero(region))
    return (inside >= AUTO_ON_REGION_MIN and inside >= AUTO_ON_REGION_SHARE * int(labels.max())
            and cover <= AUTO_ON_REGION_COVER)
