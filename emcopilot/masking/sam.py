"""Coarse masks with Segment Anything (stage 1 of the paper).

:class:`SamMasker` wraps segment_anything's ``SamAutomaticMaskGenerator``: a grid of point
prompts, SAM's own quality filters (predicted IoU, stability), then EMcopilot's additions: the
maximum-area filter (drops support regions) and overlap resolution into one instance label map.
Every knob is a named argument with the paper's value as default; :meth:`SamMasker.preset`
gives the paper's settings and those of the authors' published scripts.

>>> masker = SamMasker()                         # doctest: +SKIP   (needs sam_vit_b weights)
>>> labels = masker(image01)                     # int32, 0 = background, 1..N = particles
>>> one = masker.prompt(image01, points=[(120, 80)])   # bool mask of one clicked particle
>>> fast = SamMasker.preset("paper-fast")        # doctest: +SKIP   (prompts at blob centres)

Prompting: ``prompt_mode="grid"`` is SAM's stock automatic generator (points_per_side**2 prompts;
on a 2-core CPU the ViT-B mask decoder costs ~0.15-0.25 s per prompt, so the 1024-prompt grid takes
minutes). ``prompt_mode="blobs"`` prompts SAM only at candidate particle centres found by a
Laplacian-of-Gaussian blob detector on the smoothed, background-subtracted, bright-particle image
(at most ``max_prompts`` of them, strongest first); SAM's own filters (predicted IoU, stability,
box NMS) then run unchanged. The image embedding is computed once per image in either mode.

Weights are loaded with :func:`emcopilot.weights.load_state_dict` (no unpickling); without them
the constructor raises :class:`~emcopilot.errors.WeightsUnavailableError` saying how to get them.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from .. import io as _io
from ..weights import load_state_dict, resolve_weights

__all__ = ["SamMasker", "SAM_PRESETS", "PROMPT_MODES", "load_sam_checkpoint",
           "masks_to_labels", "detect_blobs"]

Progress = Callable[[int, int, str], None]

#: Named settings. "paper": the text of Yuan et al. (SI); "authors": their published scripts.
SAM_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(model_type="vit_b", points_per_side=32, points_per_batch=64,
                  pred_iou_thresh=0.5, stability_score_thresh=0.9, crop_n_layers=0,
                  min_mask_region_area=0, max_mask_region_area=None, work_size=512),
    "authors": dict(model_type="vit_h", points_per_side=32, points_per_batch=64,
                    pred_iou_thresh=0.01, stability_score_thresh=0.9, crop_n_layers=1,
                    min_mask_region_area=0, max_mask_region_area=1000, work_size=512),
    # the paper's settings, prompted at <= 128 blob centres instead of the 32x32 grid (8-20x
    # fewer decoder runs; bench/bench_sam.py measures time and agreement with "paper"). The
    # encoder stays fp32: encoder_precision="bf16" is ~1.5-2x faster on bf16 CPUs, unverified
    # against the trained weights here.
    "paper-fast": dict(model_type="vit_b", points_per_side=32, points_per_batch=64,
                       pred_iou_thresh=0.5, stability_score_thresh=0.9, crop_n_layers=0,
                       min_mask_region_area=0, max_mask_region_area=None, work_size=512,
                       prompt_mode="blobs", max_prompts=128, encoder_precision="fp32"),
}

PROMPT_MODES = ("grid", "blobs")
ENCODER_PRECISIONS = ("fp32", "bf16")

#: Defaults of the knobs added for speed (also used by :meth:`SamMasker.from_model`).
FAST_DEFAULTS: dict[str, Any] = dict(
    prompt_mode="grid", max_prompts=128, blob_min_sigma=1.5, blob_max_sigma=12.0,
    blob_num_sigma=6, blob_threshold=0.7, blob_min_strength=2.5,
    blob_background_sigma=25.0,
    encoder_precision="fp32")

_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


def load_sam_checkpoint(model: Any, checkpoint: str | os.PathLike, *,
                        model_type: str = "custom") -> Any:
    """Load a SAM state dict (``.pth``/``.pt`` with ``weights_only``, or ``.safetensors``) into
    ``model`` (strict). Returns the model.

    Raises:
        InputError: unreadable file, or weights that do not fit the model's architecture.
    """
    state = load_state_dict(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise InputError(
            f"checkpoint {checkpoint} does not fit the SAM model ({model_type}): {first}: pass "
            "the checkpoint that matches model_type (vit_b, vit_l or vit_h)") from None
    return model


def masks_to_labels(masks: Sequence[dict[str, Any]], shape: tuple[int, int], *,
                    overlap: str = "smaller") -> np.ndarray:
    """Paint SAM mask records into one int32 label map (0 = background, 1..N consecutive).

    Where masks overlap, ``overlap="smaller"`` gives the pixel to the smaller mask (a particle
    on top of a support region keeps its own label); ``"iou"`` to the higher predicted IoU.
    Masks left with no pixel are dropped.
    """
    if overlap not in ("smaller", "iou"):
        raise InputError(f"overlap must be 'smaller' or 'iou', got {overlap!r}")
    labels = np.zeros(shape, dtype=np.int32)
    if not masks:
        return labels
    if overlap == "smaller":
        order = sorted(range(len(masks)), key=lambda i: -int(masks[i]["area"]))
    else:
        order = sorted(range(len(masks)), key=lambda i: float(masks[i]["predicted_iou"]))
    for k, i in enumerate(order, start=1):  # later paints win
        labels[np.asarray(masks[i]["segmentation"], dtype=bool)] = k
    from skimage.segmentation import relabel_sequential

    out, _, _ = relabel_sequential(labels)
    return out.astype(np.int32, copy=False)


def detect_blobs(bright01: np.ndarray, *, min_sigma: float = 1.5, max_sigma: float = 12.0,
                 num_sigma: int = 6, threshold: float = 0.7, background_sigma: float = 25.0,
                 min_strength: float = 2.5, max_points: int | None = None) -> np.ndarray:
    """Candidate particle centres: Laplacian-of-Gaussian blobs of a bright-particle image.

    The image is smoothed (Gaussian, sigma 1 px), background-subtracted (minus its Gaussian blur
    of ``background_sigma`` px, mirrored at the edges; 0 = off), expressed in robust noise units
    ((x - median) / (1.4826 MAD), negatives clipped), then passed to
    :func:`skimage.feature.blob_log` (log-spaced sigmas, overlapping blobs pruned). ~0.2 s for
    512x512 px. Defaults: on the 33 catalyst images of Genc et al. at 512 px they find a median
    0.7x the number of YOLO-labelled particles (10-90 %: 0.2-1.6x; the labels include faint
    particles). Dark particles leave bright halos: correct the polarity first.

    Args:
        bright01: 2-D float image, particles bright (``io.bright_particles``).
        min_sigma, max_sigma: blob scales, px; a disc of radius r responds best at
            sigma = r / sqrt(2).
        num_sigma: number of scales between them.
        threshold: minimum scale-normalised LoG response, in robust noise standard deviations
            (lower finds fainter particles and more noise).
        background_sigma: scale of the subtracted background, px (larger than the particles).
        min_strength: drop blobs whose centre (image smoothed with ``min_sigma``) is less than
            this many noise standard deviations above the median (noise peaks reach ~2).
        max_points: keep at most this many, strongest (highest smoothed intensity) first.
    Returns:
        float32 array (N, 3) of (x, y, sigma) in pixels of ``bright01``, strongest first.
    """
    from scipy import ndimage as ndi
    from skimage.feature import blob_log

    img = np.asarray(bright01, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        raise InputError(f"blob detection expects a non-empty 2-D image, got shape {img.shape}")
    img = ndi.gaussian_filter(img, 1.0, mode="reflect")
    if background_sigma > 0:
        img = img - ndi.gaussian_filter(img, background_sigma, mode="reflect")
    med = float(np.median(img))
    mad = 1.4826 * float(np.median(np.abs(img - med)))
    if not mad > 0:  # flat background: fall back to the range
        mad = float(img.max() - med)
    if not mad > 0:
        return np.zeros((0, 3), dtype=np.float32)
    img = np.clip((img - med) / mad, 0.0, None)
    blobs = blob_log(img, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=int(num_sigma),
                     threshold=threshold, overlap=0.5, log_scale=num_sigma > 1,
                     exclude_border=False)
    if len(blobs) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    rows, cols = blobs[:, 0].astype(np.intp), blobs[:, 1].astype(np.intp)
    strength = ndi.gaussian_filter(img, min_sigma)[rows, cols]
    ok = strength >= min_strength
    blobs, rows, cols, strength = blobs[ok], rows[ok], cols[ok], strength[ok]
    order = np.lexsort((cols, rows, -strength))  # strongest first, then by position
    if max_points is not None:
        order = order[:max(int(max_points), 0)]
    b = blobs[order]
    return np.stack([b[:, 1], b[:, 0], b[:, 2]], axis=1).astype(np.float32)


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``shape`` (pixel centres mapped)."""
    h, w = labels.shape
    H, W = shape
    if (h, w) == (H, W):
        return labels
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.intp), w - 1)
    return labels[rows[:, None], cols[None, :]]


def _predictor(model: Any, encoder_precision: str = "fp32") -> Any:
    """A ``SamPredictor`` whose image encoder runs under inference mode, and under bfloat16
    autocast when ``encoder_precision == "bf16"`` (the embedding is returned as float32, so the
    prompt encoder and mask decoder run in float32 either way)."""
    import torch
    from segment_anything import SamPredictor

    class _Predictor(SamPredictor):
        def set_torch_image(self, transformed_image, original_image_size):  # noqa: D102
            with torch.inference_mode():
                if encoder_precision != "bf16":
                    return super().set_torch_image(transformed_image, original_image_size)
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                    super().set_torch_image(transformed_image, original_image_size)
                self.features = self.features.float()

    return _Predictor(model)


class SamMasker:
    """Segment Anything automatic masks -> instance label map.

    Args:
        model_type: "vit_b" (default, fastest: the paper found B/L/H about equally good),
            "vit_l" or "vit_h".
        checkpoint: SAM weights file (``.pth``/``.pt``/``.safetensors``); default: the registered
            ``sam_<model_type>`` weights via :func:`emcopilot.weights.resolve_weights`.
        points_per_side: grid of prompts per image side (points_per_side**2 prompts); fewer
            misses particles, more costs time.
        points_per_batch: prompts run at once (memory, not results).
        pred_iou_thresh: drop masks whose predicted IoU is at or below this (higher drops
            low-contrast particles).
        stability_score_thresh: drop masks less stable than this (lower segments the support).
        stability_score_offset, box_nms_thresh: SAM's own defaults (1.0, 0.7).
        crop_n_layers: also run on 2**i x 2**i crops for i = 1..n (authors: 1).
        crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor: SAM's crop knobs.
        min_mask_region_area: SAM's post-processing: remove islands and holes smaller than this
            (px of the working image; 0 = off).
        max_mask_region_area: drop masks larger than this (px of the working image; None = keep
            all). Large effect: too high keeps support regions, too low drops big particles.
        work_size: resize the image so its longer side is this many px before SAM (the paper's
            Algorithm 1 works at 512); None = native size. Labels come back at the input size
            (nearest neighbour).
        overlap: "smaller" (smaller mask wins overlapping pixels) or "iou" (higher predicted IoU).
        prompt_mode: "grid" (stock: points_per_side**2 grid prompts) or "blobs" (prompts only
            at candidate particle centres from :func:`detect_blobs`; points_per_side and the
            crop layers are then not used: the whole image is prompted once).
        max_prompts: "blobs" mode: at most this many prompts, strongest blobs first (CPU time
            grows linearly with it: ~0.15-0.25 s per prompt for ViT-B on 2 cores).
        blob_min_sigma, blob_max_sigma, blob_num_sigma, blob_threshold, blob_min_strength,
        blob_background_sigma:
            the detector's knobs (px of the working image; see :func:`detect_blobs`). Defaults
            suit particles ~4-35 px across at work_size 512.
        encoder_precision: "fp32" (stock) or "bf16" (image encoder under bfloat16 autocast;
            CPUs with bf16 support and GPUs; see bench/bench_sam.py for its speed and error).
        device: "cuda", "cpu", ...; None = CUDA when available, else CPU.
        cache_dir, offline: passed to :func:`~emcopilot.weights.resolve_weights`.

    Raises:
        WeightsUnavailableError: no checkpoint given and the registered weights are not here.
        InputError: a bad setting or a checkpoint that does not fit ``model_type``.
    """

    def __init__(self, model_type: str = "vit_b", checkpoint: str | os.PathLike | None = None, *,
                 points_per_side: int = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.5, stability_score_thresh: float = 0.9,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                 crop_n_layers: int = 0, crop_nms_thresh: float = 0.7,
                 crop_overlap_ratio: float = 512 / 1500, crop_n_points_downscale_factor: int = 1,
                 min_mask_region_area: int = 0, max_mask_region_area: int | None = None,
                 work_size: int | None = 512, overlap: str = "smaller",
                 prompt_mode: str = "grid", max_prompts: int = 128,
                 blob_min_sigma: float = 1.5, blob_max_sigma: float = 12.0,
                 blob_num_sigma: int = 6, blob_threshold: float = 0.7,
                 blob_min_strength: float = 2.5,
                 blob_background_sigma: float = 25.0, encoder_precision: str = "fp32",
                 device: str | None = None, cache_dir: str | os.PathLike | None = None,
                 offline: bool | None = None) -> None:
        if model_type not in _MODEL_TYPES:
            raise InputError(f"SAM model_type must be one of {', '.join(_MODEL_TYPES)}, "
                             f"got {model_type!r}")
        knobs = dict(points_per_side=points_per_side, points_per_batch=points_per_batch,
                     pred_iou_thresh=pred_iou_thresh,
                     stability_score_thresh=stability_score_thresh,
                     stability_score_offset=stability_score_offset,
                     box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers,
                     crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
                     crop_n_points_downscale_factor=crop_n_points_downscale_factor,
                     min_mask_region_area=min_mask_region_area,
                     max_mask_region_area=max_mask_region_area, work_size=work_size,
                     overlap=overlap, prompt_mode=prompt_mode, max_prompts=max_prompts,
                     blob_min_sigma=blob_min_sigma, blob_max_sigma=blob_max_sigma,
                     blob_num_sigma=blob_num_sigma, blob_threshold=blob_threshold,
                     blob_min_strength=blob_min_strength,
                     blob_background_sigma=blob_background_sigma,
                     encoder_precision=encoder_precision)
        self._check(knobs)  # before any download or model build
        if checkpoint is None:
            checkpoint = resolve_weights(f"sam_{model_type}", cache_dir=cache_dir,
                                         offline=offline)
        import torch
        from segment_anything import sam_model_registry

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = sam_model_registry[model_type](checkpoint=None)
        load_sam_checkpoint(model, checkpoint, model_type=model_type)
        self._setup(model.to(dev), model_type=model_type, checkpoint=str(checkpoint), **knobs)

    # -- construction helpers ------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SamMasker":
        """Build from a named preset ("paper", "authors" or "paper-fast", see
        :data:`SAM_PRESETS`); keyword
        ``overrides`` replace single settings, e.g. ``preset("authors", device="cpu")``."""
        if name not in SAM_PRESETS:
            raise InputError(f"unknown SAM preset {name!r}: use one of "
                             f"{', '.join(SAM_PRESETS)}")
        return cls(**{**SAM_PRESETS[name], **overrides})

    @classmethod
    def from_model(cls, sam_module: Any, *, checkpoint: str | os.PathLike | None = None,
                   device: str | None = None, **kwargs: Any) -> "SamMasker":
        """Wrap an already built ``segment_anything.modeling.Sam`` (any size; e.g. fine-tuned).

        ``checkpoint`` (optional) is loaded into it first; ``device`` None keeps the module where
        it is; other keyword arguments are the knobs of :class:`SamMasker`.
        """
        allowed = set(SAM_PRESETS["paper"]) - {"model_type"} | {
            "stability_score_offset", "box_nms_thresh", "crop_nms_thresh", "crop_overlap_ratio",
            "crop_n_points_downscale_factor", "overlap", *FAST_DEFAULTS}
        unknown = set(kwargs) - allowed
        if unknown:
            raise InputError(f"unknown SAM setting(s) {', '.join(sorted(unknown))}")
        defaults = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.5,
                        stability_score_thresh=0.9, stability_score_offset=1.0,
                        box_nms_thresh=0.7, crop_n_layers=0, crop_nms_thresh=0.7,
                        crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1,
                        min_mask_region_area=0, max_mask_region_area=None, work_size=512,
                        overlap="smaller", **FAST_DEFAULTS)
        knobs = {**defaults, **kwargs}
        cls._check(knobs)
        if checkpoint is not None:
            load_sam_checkpoint(sam_module, checkpoint)
        if device is not None:
            sam_module = sam_module.to(device)
        self = cls.__new__(cls)
        self._setup(sam_module, model_type="custom",
                    checkpoint=str(checkpoint) if checkpoint else None, **knobs)
        return self

    @staticmethod
    def _check(k: dict[str, Any]) -> None:
        def bad(msg: str) -> None:
            raise InputError(f"SAM setting {msg}")

        if k["points_per_side"] is None or int(k["points_per_side"]) < 1:
            bad(f"points_per_side must be >= 1, got {k['points_per_side']!r}")
        if int(k["points_per_batch"]) < 1:
            bad(f"points_per_batch must be >= 1, got {k['points_per_batch']!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                     "crop_nms_thresh"):
            if not 0.0 <= float(k[name]) <= 1.0:
                bad(f"{name} must be in [0, 1], got {k[name]!r}")
        if int(k["crop_n_layers"]) < 0:
            bad(f"crop_n_layers must be >= 0, got {k['crop_n_layers']!r}")
        if int(k["min_mask_region_area"]) < 0:
            bad(f"min_mask_region_area must be >= 0 px, got {k['min_mask_region_area']!r}")
        if k["max_mask_region_area"] is not None and float(k["max_mask_region_area"]) <= 0:
            bad(f"max_mask_region_area must be > 0 px or None, got {k['max_mask_region_area']!r}")
        if k["work_size"] is not None and int(k["work_size"]) < 32:
            bad(f"work_size must be >= 32 px or None, got {k['work_size']!r}")
        if k["overlap"] not in ("smaller", "iou"):
            bad(f"overlap must be 'smaller' or 'iou', got {k['overlap']!r}")
        if k["prompt_mode"] not in PROMPT_MODES:
            bad(f"prompt_mode must be 'grid' or 'blobs', got {k['prompt_mode']!r}")
        if k["encoder_precision"] not in ENCODER_PRECISIONS:
            bad(f"encoder_precision must be 'fp32' or 'bf16', got {k['encoder_precision']!r}")
        if int(k["max_prompts"]) < 1:
            bad(f"max_prompts must be >= 1, got {k['max_prompts']!r}")
        if not 0 < float(k["blob_min_sigma"]) <= float(k["blob_max_sigma"]):
            bad(f"blob sigmas need 0 < blob_min_sigma <= blob_max_sigma px, got "
                f"{k['blob_min_sigma']!r} and {k['blob_max_sigma']!r}")
        if int(k["blob_num_sigma"]) < 1:
            bad(f"blob_num_sigma must be >= 1, got {k['blob_num_sigma']!r}")
        if min(float(k["blob_threshold"]), float(k["blob_background_sigma"]),
               float(k["blob_min_strength"])) < 0:
            bad("blob_threshold, blob_min_strength and blob_background_sigma must be >= 0")

    def _setup(self, model: Any, *, model_type: str, checkpoint: str | None,
               **knobs: Any) -> None:
        model.eval()
        self.model = model
        self.model_type = model_type
        self.checkpoint = checkpoint
        self.points_per_side = int(knobs["points_per_side"])
        self.points_per_batch = int(knobs["points_per_batch"])
        self.pred_iou_thresh = float(knobs["pred_iou_thresh"])
        self.stability_score_thresh = float(knobs["stability_score_thresh"])
        self.stability_score_offset = float(knobs["stability_score_offset"])
        self.box_nms_thresh = float(knobs["box_nms_thresh"])
        self.crop_n_layers = int(knobs["crop_n_layers"])
        self.crop_nms_thresh = float(knobs["crop_nms_thresh"])
        self.crop_overlap_ratio = float(knobs["crop_overlap_ratio"])
        self.crop_n_points_downscale_factor = int(knobs["crop_n_points_downscale_factor"])
        self.min_mask_region_area = int(knobs["min_mask_region_area"])
        mx = knobs["max_mask_region_area"]
        self.max_mask_region_area = None if mx is None else float(mx)
        self.work_size = None if knobs["work_size"] is None else int(knobs["work_size"])
        self.overlap = knobs["overlap"]
        self.prompt_mode = str(knobs["prompt_mode"])
        self.max_prompts = int(knobs["max_prompts"])
        self.blob_min_sigma = float(knobs["blob_min_sigma"])
        self.blob_max_sigma = float(knobs["blob_max_sigma"])
        self.blob_num_sigma = int(knobs["blob_num_sigma"])
        self.blob_threshold = float(knobs["blob_threshold"])
        self.blob_min_strength = float(knobs["blob_min_strength"])
        self.blob_background_sigma = float(knobs["blob_background_sigma"])
        self.encoder_precision = str(knobs["encoder_precision"])
        self._predictor = _predictor(model, self.encoder_precision)
        self._n_prompts: int | None = None  # prompts of the last blobs-mode image
        self._prompt_key: str | None = None

    @property
    def device(self) -> str:
        """Device the model runs on."""
        return str(next(self.model.parameters()).device)

    def settings(self) -> dict[str, Any]:
        """The knobs in effect (for reports and job records)."""
        keys = ["model_type", "checkpoint", *SAM_PRESETS["paper"].keys(), "overlap",
                "stability_score_offset", "box_nms_thresh", "crop_nms_thresh",
                "crop_overlap_ratio", "crop_n_points_downscale_factor", *FAST_DEFAULTS]
        return {k: getattr(self, k) for k in dict.fromkeys(keys)}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "checkpoint")
        return f"SamMasker({body})"

    # -- images --------------------------------------------------------------------------------

    @staticmethod
    def _rgb(image01: np.ndarray, polarity: str) -> np.ndarray:
        a = np.asarray(image01)
        if a.ndim != 2:
            raise InputError(f"SAM expects a 2-D grey image, got shape {a.shape}: load it with "
                             "emcopilot.io.read_micrograph")
        if a.size == 0:
            raise InputError("SAM got an empty image")
        a = np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0), 0.0, 1.0)
        a = _io.bright_particles(a, polarity)
        u8 = _io.to_uint8(a)
        return np.ascontiguousarray(np.repeat(u8[:, :, None], 3, axis=2))

    def _work_image(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if self.work_size is None or max(h, w) == self.work_size:
            return rgb
        import cv2

        s = self.work_size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        return np.ascontiguousarray(cv2.resize(rgb, (nw, nh), interpolation=interp))

    def _generator(self, progress: Progress | None, total: int,
                   point_grid: np.ndarray | None = None):
        from segment_anything import SamAutomaticMaskGenerator

        class _Gen(SamAutomaticMaskGenerator):
            done = 0

            def _process_batch(gen, *args, **kwargs):  # noqa: N805
                out = super()._process_batch(*args, **kwargs)
                gen.done += 1
                if progress is not None:
                    progress(min(gen.done, total), total, "SAM point batches")
                return out

        grid_mode = point_grid is None
        gen = _Gen(self.model, points_per_side=self.points_per_side if grid_mode else None,
                   point_grids=None if grid_mode else [point_grid],
                   points_per_batch=self.points_per_batch,
                   pred_iou_thresh=self.pred_iou_thresh,
                   stability_score_thresh=self.stability_score_thresh,
                   stability_score_offset=self.stability_score_offset,
                   box_nms_thresh=self.box_nms_thresh,
                   crop_n_layers=self.crop_n_layers if grid_mode else 0,
                   crop_nms_thresh=self.crop_nms_thresh,
                   crop_overlap_ratio=self.crop_overlap_ratio,
                   crop_n_points_downscale_factor=self.crop_n_points_downscale_factor,
                   min_mask_region_area=self.min_mask_region_area, output_mode="binary_mask")
        gen.predictor = self._predictor  # share the predictor (and its cached embedding state)
        self._prompt_key = None  # the generator resets the predictor's image
        return gen

    def n_batches(self) -> int:
        """Number of point batches one image takes (the ``total`` reported to ``progress``); in
        "blobs" mode, for the last image (``max_prompts`` before the first)."""
        if self.prompt_mode == "blobs":
            n = self.max_prompts if self._n_prompts is None else self._n_prompts
            return max(1, math.ceil(n / self.points_per_batch))
        total = 0
        for i in range(self.crop_n_layers + 1):
            n_points = (self.points_per_side // (self.crop_n_points_downscale_factor ** i)) ** 2
            total += (2 ** i) ** 2 * math.ceil(n_points / self.points_per_batch)
        return total

    def masks(self, image01: np.ndarray, polarity: str = "auto",
              progress: Progress | None = None) -> list[dict[str, Any]]:
        """SAM's mask records for ``image01`` at the working size, after the area filters.

        Each record has ``segmentation`` (bool array at the working size), ``area`` (px),
        ``predicted_iou``, ``stability_score``, ``bbox`` (XYWH) and ``point_coords``; empty masks
        and masks larger than ``max_mask_region_area`` are removed.
        """
        import torch

        rgb = self._work_image(self._rgb(image01, polarity))
        grid = None
        if self.prompt_mode == "blobs":
            pts = self._blobs(rgb[:, :, 0])[:, :2]
            self._n_prompts = len(pts)
            if len(pts) == 0:
                if progress is not None:
                    progress(1, 1, "SAM: no candidate particles found")
                return []
            h, w = rgb.shape[:2]
            # normalised (x, y); the generator scales them by the image size (as its own grid)
            grid = (pts.astype(np.float64) + 0.5) / np.array([w, h], dtype=np.float64)
        total = self.n_batches()
        gen = self._generator(progress, total, grid)
        with torch.inference_mode():
            records = gen.generate(rgb)
        keep = [r for r in records if int(r["area"]) > 0 and (
            self.max_mask_region_area is None or int(r["area"]) <= self.max_mask_region_area)]
        if progress is not None:
            progress(total, total, f"SAM: {len(keep)} masks kept of {len(records)}")
        return keep

    def _blobs(self, grey_u8: np.ndarray) -> np.ndarray:
        return detect_blobs(grey_u8.astype(np.float32) / 255.0, min_sigma=self.blob_min_sigma,
                            max_sigma=self.blob_max_sigma, num_sigma=self.blob_num_sigma,
                            threshold=self.blob_threshold,
                            min_strength=self.blob_min_strength,
                            background_sigma=self.blob_background_sigma,
                            max_points=self.max_prompts)

    def candidate_points(self, image01: np.ndarray, polarity: str = "auto") -> np.ndarray:
        """The "blobs"-mode prompts for ``image01``: float32 (N, 2) of (x, y) = (column, row)
        in pixels of ``image01`` (pixel centres at integers), strongest first, N <=
        ``max_prompts``. Detected on the working-size image SAM sees."""
        rgb = self._work_image(self._rgb(image01, polarity))
        pts = self._blobs(rgb[:, :, 0])[:, :2].astype(np.float64)
        h, w = np.asarray(image01).shape
        wh, ww = rgb.shape[:2]
        scale = np.array([w / ww, h / wh])
        return ((pts + 0.5) * scale - 0.5).astype(np.float32)

    def __call__(self, image01: np.ndarray, polarity: str = "auto",
                 progress: Progress | None = None) -> np.ndarray:
        """Instance label map (int32, shape of ``image01``; 0 = background, 1..N = masks).

        Args:
            image01: 2-D float image in [0, 1] (``io.normalize``).
            polarity: "bright", "dark" or "auto"; dark-particle images are inverted so SAM sees
                bright particles, as elsewhere in EMcopilot.
            progress: called as ``progress(done, total, message)`` after each point batch.
        """
        recs = self.masks(image01, polarity, progress)
        shape = np.asarray(image01).shape
        work_shape = recs[0]["segmentation"].shape if recs else shape
        labels = masks_to_labels(recs, tuple(work_shape), overlap=self.overlap)
        return _resize_nearest(labels, tuple(shape)).astype(np.int32, copy=False)

    # -- prompts -------------------------------------------------------------------------------

    def prompt(self, image01: np.ndarray, points: Sequence[Sequence[float]] | None = None,
               box: Sequence[float] | None = None, *,
               point_labels: Sequence[int] | None = None, polarity: str = "auto") -> np.ndarray:
        """Mask of one particle from clicks and/or a box, at the size of ``image01``.

        Args:
            points: (x, y) pixel coordinates (column, row) of clicks on the particle.
            box: (x0, y0, x1, y1) in pixels.
            point_labels: 1 = on the particle (default), 0 = background, one per point.
        Returns:
            bool array of ``image01``'s shape. The image embedding is kept, so further prompts
            on the same image are fast.
        """
        import torch

        if points is None and box is None:
            raise InputError("give at least one point or a box to prompt SAM")
        pts = lab = bx = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            lab = (np.ones(len(pts), dtype=np.int32) if point_labels is None
                   else np.asarray(point_labels, dtype=np.int32).reshape(-1))
            if len(lab) != len(pts):
                raise InputError(f"{len(pts)} points but {len(lab)} point labels")
            if len(pts) == 0:
                pts = lab = None
        if box is not None:
            bx = np.asarray(box, dtype=np.float32).reshape(4)
            if bx[2] <= bx[0] or bx[3] <= bx[1]:
                raise InputError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, "
                                 f"got {tuple(bx.tolist())}")
        if pts is None and bx is None:
            raise InputError("give at least one point or a box to prompt SAM")
        a = np.asarray(image01)
        key = hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).hexdigest()
        key += f"{a.shape}{a.dtype}{polarity}"
        with torch.inference_mode():
            if key != self._prompt_key:
                self._predictor.set_image(self._rgb(a, polarity))
                self._prompt_key = key
            multi = bx is None and pts is not None and len(pts) == 1
            masks, scores, _ = self._predictor.predict(point_coords=pts, point_labels=lab,
                                                       box=bx, multimask_output=multi)
        return np.asarray(masks[int(np.argmax(scores))], dtype=bool)
