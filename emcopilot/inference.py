"""Segmentor inference: any image size, at the training pixel scale, probability -> particles.

The segmentor is fully convolutional, so tiles need not be the size of its training crops: an
image whose sides fit in ``max_tile`` (default 1024 px) runs whole, reflect-padded to a multiple
of ``2**depth`` (same pixel scale as training, 2.25x fewer pixels than 256 px tiles with 25 %
overlap on a 512 px image). Larger images are cut into ``max_tile`` tiles with 25 % overlap after
reflect padding; tile outputs are blended with a separable Hann-like window (sin^2, never zero)
and normalised by the summed weights, so seams do not show and the result does not depend on the
tile grid beyond the network's own border effects.

For inference the network is a copy with every BatchNorm folded into the convolution before it
(:func:`fuse_batchnorm`, same outputs within float rounding) in the channels_last memory format
(faster oneDNN convolutions on CPU as well as on CUDA; see ``bench/bench_inference.py``).

>>> seg = Segmentor.load("runs/seg/best_miou")            # doctest: +SKIP
>>> labels, prob = seg.segment(io.normalize(img))           # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import io
from .device import autocast, channels_last, pick_device, set_cpu_threads
from .annotations import drop_annotation_particles, find_annotations
from .data_bar import on_rows_above_bar, pad_below
from .errors import InputError
from .postprocess import (add_coarse_particles, best_matching, check_min_snr, config_grow_to,
                          config_threshold, drop_faint_particles, noise_sigma,
                          prob_to_instances)

__all__ = ["Segmentor", "segment_folder", "choose_min_peak", "best_segmentor", "tiled_apply",
           "blend_window", "drop_faint_above_bar", "noise_level_above_bar",
           "drop_annotations_above_bar", "OutputFilter",
           "fuse_batchnorm", "MAX_TILE"]

MAX_TILE = 1024
"""Default largest side (px) run in one piece; larger images are tiled at this size."""


def fuse_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with each ``Conv2d`` directly followed by a ``BatchNorm2d``
    inside an ``nn.Sequential`` folded into one convolution (BatchNorm replaced by Identity),
    via :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`. ``model`` itself is not changed."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for seq in fused.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        for k in range(len(seq) - 1):
            conv, bn = seq[k], seq[k + 1]
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                    and bn.track_running_stats and bn.running_mean is not None):
                seq[k] = fuse_conv_bn_eval(conv, bn)
                seq[k + 1] = torch.nn.Identity()
    return fused


def _use_channels_last(device: torch.device) -> bool:
    # measured faster for the segmentor on CPU (oneDNN) too; MPS support is uneven
    return channels_last(device) or device.type == "cpu"


def blend_window(tile: int) -> np.ndarray:
    """(tile, tile) float32 blending weights: outer product of sin^2(pi (i + 0.5) / tile)."""
    w = np.sin(np.pi * (np.arange(tile, dtype=np.float64) + 0.5) / tile) ** 2
    return np.outer(w, w).astype(np.float32)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    s = list(range(0, length - tile + 1, stride))
    if s[-1] != length - tile:
        s.append(length - tile)
    return s


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, tile: int, *,
                overlap: float = 0.25, batch_size: int | None = None,
                device: torch.device | str = "cpu") -> np.ndarray:
    """Apply ``fn`` ((N, 1, tile, tile) tensor -> (N, 1, tile, tile) tensor) to a 2-D image of
    any size by overlapping tiles; returns the blended float32 (H, W) result.

    Sides longer than a tile are reflect-padded by ``overlap * tile / 2`` so image borders are
    not at a tile's edge; shorter sides are reflect-padded up to one tile. ``batch_size`` tiles
    go through ``fn`` at once (default: about 1 Mpx per batch, e.g. 4 tiles of 512 px, at most 64).
    """
    if batch_size is None:
        batch_size = int(min(64, max(1, 2 ** 20 // (tile * tile))))
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {a.shape}")
    h, w = a.shape
    ov = int(round(tile * overlap))
    stride = max(1, tile - ov)
    # a margin only along sides longer than a tile: an image that fits is one centred tile
    my, mx = (ov // 2 if h > tile else 0), (ov // 2 if w > tile else 0)
    ph, pw = max(h + 2 * my, tile), max(w + 2 * mx, tile)
    top, left = my + (ph - h - 2 * my) // 2, mx + (pw - w - 2 * mx) // 2
    padded = np.pad(a, ((top, ph - h - top), (left, pw - w - left)), mode="reflect")
    ys, xs = _starts(ph, tile, stride), _starts(pw, tile, stride)
    win = blend_window(tile)
    acc = np.zeros((ph, pw), np.float32)
    wsum = np.zeros((ph, pw), np.float32)
    coords = [(y, x) for y in ys for x in xs]
    dev = torch.device(device)
    for k in range(0, len(coords), batch_size):
        chunk = coords[k:k + batch_size]
        batch = np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])[:, None]
        out = fn(torch.from_numpy(batch).to(dev))
        out = out.float().cpu().numpy()[:, 0]
        for (y, x), o in zip(chunk, out):
            acc[y:y + tile, x:x + tile] += o * win
            wsum[y:y + tile, x:x + tile] += win
    res = acc / np.maximum(wsum, 1e-12)
    return np.ascontiguousarray(res[top:top + h, left:left + w])


class Segmentor:
    """A trained segmentor ready for inference.

    Use :meth:`load` with a checkpoint folder (``best_miou/`` or ``last/`` of a segmentor run,
    or any folder with config.json + model.safetensors).

    Args:
        model: the trained network (kept unchanged as ``self.model``, e.g. for saving).
        config: checkpoint config (``config["config"]["image_size"]``: training crop, px).
        device: where to run.
        fuse: run a BatchNorm-folded copy (:func:`fuse_batchnorm`); build a new Segmentor if
            ``model``'s weights change afterwards.
        max_tile: largest side (px) run in one piece (rounded down to a multiple of
            ``2**depth``, at least the training crop); larger images are tiled at this size.
        members: further networks of the same architecture and inputs (an ensemble, e.g.
            segmentors trained with other seeds): the probability is the mean of every
            network's (:func:`emcopilot.training.checkpoint.ensemble_checkpoint` writes such a
            checkpoint, :meth:`load` reads it).
        cpu_bf16: on CPU, run under bf16 autocast (opt-in: ~1.3-1.7x faster where the CPU has
            native bf16, e.g. AVX512-BF16/AMX, much slower where it has not; probabilities move
            by ~1e-3, not yet validated on a fully trained model). Ignored on other devices
            (CUDA always uses :func:`emcopilot.device.autocast`).
    """

    def __init__(self, model: torch.nn.Module, config: dict, device: torch.device, *,
                 fuse: bool = True, max_tile: int = MAX_TILE, cpu_bf16: bool = False,
                 members: Sequence[torch.nn.Module] = ()) -> None:
        self.model = model.eval()
        self.config = config
        self.device = device
        self.image_size = int(config.get("config", {}).get("image_size", 256))
        self.depth = int(getattr(model, "depth", 4))
        mult = 2 ** self.depth
        self.max_tile = max(self.image_size, int(max_tile) // mult * mult, mult)
        self._fmt = (torch.channels_last if _use_channels_last(device)
                     else torch.contiguous_format)
        self.nets = []
        for m in (self.model, *members):
            m.eval().to(device)
            net = fuse_batchnorm(m) if fuse else m
            self.nets.append(net.to(device, memory_format=self._fmt))
        self.cpu_bf16 = bool(cpu_bf16) and device.type == "cpu"

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike, device: str = "auto", *,
             cpu_bf16: bool = False) -> "Segmentor":
        """Load a segmentor checkpoint (safetensors + config.json only); ``cpu_bf16``: see the
        class docstring."""
        from .nets import UNetPlusPlus
        from .training.checkpoint import load_model, read_config

        dev = pick_device(device)
        if dev.type == "cpu":
            set_cpu_threads()
        # an ensemble names its networks; a single segmentor: its primary model (None)
        names = read_config(ckpt_dir).get("config", {}).get("ensemble")
        if names is None:
            names = [None]
        elif not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise InputError(f"{ckpt_dir}: config.json 'ensemble' must list model names")
        nets = []
        for name in names:
            model, cfg = load_model(ckpt_dir, name=name, device=dev)
            if not isinstance(model, UNetPlusPlus):
                raise InputError(f"{ckpt_dir}: not a segmentor checkpoint "
                                 f"({type(model).__name__})")
            nets.append(model)
        return cls(nets[0], cfg, dev, cpu_bf16=cpu_bf16, members=nets[1:])

    @torch.inference_mode()
    def _logits_to_prob(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.contiguous(memory_format=self._fmt)
        prob = None
        for net in self.nets:  # an ensemble: the mean of its networks' probabilities
            if self.cpu_bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = net(x)
            else:
                with autocast(self.device):
                    y = net(x)
            p = torch.sigmoid(y.float()[:, :1])
            prob = p if prob is None else prob + p
        return prob / len(self.nets)

    def predict_proba(self, image01: np.ndarray, *, scale: float | None = None,
                      overlap: float = 0.25, batch_size: int | None = None, tiled: bool = True,
                      tile: int | None = None) -> np.ndarray:
        """Particle probability (float32 (H, W) in [0, 1]) for a grey image in [0, 1].

        Args:
            image01: 2-D float image, normalised with :func:`emcopilot.io.normalize`.
            scale: resize factor applied first to match the training pixel scale (e.g.
                image pixel size / training pixel size); the probabilities are resized back.
            overlap: tile overlap fraction.
            tiled: False runs the whole (padded to a multiple of ``2**depth``) image at once,
                whatever its size.
            tile: tile side in px (e.g. ``self.image_size``: tiles of the training crop size).
                None: the whole image when both sides fit in ``self.max_tile``, else tiles of
                ``self.max_tile``.
        """
        a = np.asarray(image01, dtype=np.float32)
        if a.ndim != 2:
            raise InputError(f"expected a 2-D grey image, got shape {a.shape}")
        if a.size == 0:
            raise InputError("empty image")
        h, w = a.shape
        if scale is not None and scale != 1.0:
            import cv2

            if not scale > 0:
                raise InputError(f"scale must be > 0, got {scale}")
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            a = cv2.resize(a, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1
                           else cv2.INTER_LINEAR)
        mult = 2 ** self.depth
        if tile is not None:
            tile = int(tile)
            if tile < mult or tile % mult:
                raise InputError(f"tile must be a positive multiple of {mult} px, got {tile}")
        elif max(a.shape) > self.max_tile:
            tile = self.max_tile
        if tiled and tile is not None:
            prob = tiled_apply(self._logits_to_prob, a, tile, overlap=overlap,
                               batch_size=batch_size, device=self.device)
        else:
            ph, pw = -a.shape[0] % mult, -a.shape[1] % mult
            top, left = ph // 2, pw // 2
            p = np.pad(a, ((top, ph - top), (left, pw - left)), mode="reflect")
            t = torch.from_numpy(np.ascontiguousarray(p))[None, None].to(self.device)
            prob = self._logits_to_prob(t)[0, 0].float().cpu().numpy()
            prob = np.ascontiguousarray(prob[top:top + a.shape[0], left:left + a.shape[1]])
        if prob.shape != (h, w):
            import cv2

            prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(prob, 0.0, 1.0).astype(np.float32, copy=False)

    @property
    def threshold(self) -> float:
        """The probability threshold used by default: the checkpoint config's ``threshold``,
        else 0.5."""
        t = config_threshold(self.config, "threshold")
        return 0.5 if t is None else t

    @property
    def calibrated_threshold(self) -> float | None:
        """The threshold with the best Dice on the training run's validation pairs (None for
        checkpoints without one)."""
        return config_threshold(self.config, "calibrated_threshold")

    def resolve_threshold(self, threshold: float | str | None) -> float | str:
        """None -> :attr:`threshold`; ``"calibrated"`` -> :attr:`calibrated_threshold` (InputError
        when the checkpoint has none); numbers and ``"otsu"`` pass through."""
        if threshold is None:
            return self.threshold
        if threshold == "calibrated":
            if self.calibrated_threshold is None:
                raise InputError("this segmentor has no calibrated threshold (trained before "
                                 "calibration was recorded): give a number or 'otsu'")
            return self.calibrated_threshold
        return threshold

    @property
    def min_peak(self) -> float | None:
        """The particle core probability used by default (:func:`prob_to_instances`'s
        ``min_peak``): the checkpoint config's ``min_peak`` (the pipeline records the one it
        chose against the coarse masks), else None (every particle)."""
        return config_threshold(self.config, "min_peak")

    @property
    def ensemble_size(self) -> int:
        """How many networks' probabilities are averaged (1: a single segmentor)."""
        return len(self.nets)

    @property
    def grow_to(self) -> float | str | None:
        """The probability level particles are grown to by default (:func:`prob_to_instances`'s
        ``grow_to``): the checkpoint config's ``grow_to`` (the pipeline records the one it chose
        against the coarse masks: ``"otsu"`` or None), else None (no growth)."""
        return config_grow_to(self.config)

    @property
    def add_coarse(self) -> bool:
        """Whether :meth:`segment` adds the coarse particles the segmentor missed
        (:func:`emcopilot.postprocess.add_coarse_particles`) by default: the checkpoint config's
        ``add_coarse`` (the pipeline records it), False when absent."""
        return bool(self.config.get("config", {}).get("add_coarse", False))

    @property
    def min_snr(self) -> float | None:
        """The level below which :meth:`segment` drops faint particles by default
        (:func:`emcopilot.postprocess.drop_faint_particles`): the checkpoint config's
        ``min_snr`` (the pipeline records it), None (keep all) when absent or invalid."""
        from .postprocess import recorded_min_snr

        return recorded_min_snr(self.config.get("config", {}))

    @property
    def support_removal(self) -> str:
        """Whether :meth:`probability` and :meth:`segment` take a textured support out of an
        image first (:mod:`emcopilot.support`): the checkpoint config's ``support_removal``
        ("auto": as the classical preset says, :meth:`resolve_support`; "on"; "off"),
        recorded by the pipeline and the app; "off" when absent (checkpoints from before
        it)."""
        from .support import recorded_mode

        return recorded_mode(self.config.get("config", {}))

    @property
    def scale_choice(self) -> tuple[float, ...]:
        """Further multiples of an image's resize factor that :meth:`segment` tries, keeping per
        image the factor whose own particles match the coarse mask best
        (:func:`emcopilot.postprocess.best_matching`): the checkpoint config's
        ``scale_choice`` (the pipeline records it; BENCHMARKS.md, stop 26), none when absent or
        not valid."""
        from .particle_scale import recorded_scale_choice

        return recorded_scale_choice(self.config.get("config", {}))

    @property
    def scale_split(self) -> str:
        """Whether :meth:`resolve_scale` splits touching particles of the mask it measures
        before taking their typical width (:func:`emcopilot.particle_scale.split_touching`):
        the checkpoint config's ``scale_split`` ("auto": on the images the classical masker
        judges to show a support, as support removal's "auto"; "on"; "off"), recorded by the
        pipeline; "off" when absent (checkpoints from before it)."""
        from .particle_scale import recorded_scale_split

        return recorded_scale_split(self.config.get("config", {}))

    def split_scope(self, scale_split: str = "model") -> str:
        """Which images ``scale_split`` ("model": :attr:`scale_split`; "auto", "on", "off")
        reaches for this segmentor: "none", "all" or "per image", as support removal's modes
        reach them (:func:`emcopilot.support.scope` with :attr:`support_preset`); "none" for a
        segmentor that does not work at a common particle width."""
        from .particle_scale import check_scale_split
        from .support import scope

        mode = self.scale_split if scale_split == "model" else check_scale_split(scale_split)
        if self.particle_diameter_px is None:
            return "none"
        return scope(mode, self.support_preset)

    def resolve_scale_split(self, prepared01: np.ndarray, scale_split: str | bool = "model",
                            *, shows_support: bool | None = None) -> bool:
        """Whether to split touching particles before measuring one image's particle width
        (image already in the segmentor's conventions, data bar cut off): ``scale_split`` True/
        False, or a mode (:meth:`split_scope`); per image the classical masker's judgement
        (:func:`emcopilot.support.shows_support`, or the one ``shows_support`` already made).
        False for a segmentor that does not work at a common particle width."""
        if isinstance(scale_split, bool):
            return scale_split and self.particle_diameter_px is not None
        reach = self.split_scope(scale_split)
        if reach != "per image":
            return reach == "all"
        if shows_support is not None:
            return bool(shows_support)
        from .support import shows_support as judged

        return judged(prepared01, "bright" if self.input_polarity == "bright" else "auto")

    @property
    def support_check(self) -> bool:
        """Whether :meth:`segment` keeps an image's support removal only where its particles
        match the image's coarse mask at least as well as without it
        (:func:`emcopilot.support.removal_kept`): the checkpoint config's ``support_check``
        (the pipeline records it), False when absent (checkpoints from before it)."""
        return bool(self.config.get("config", {}).get("support_check", False))

    @property
    def support_radius_widths(self) -> float:
        """Disc radius of the support removal in typical particle widths: the checkpoint
        config's ``support_radius_widths``, else
        :data:`emcopilot.support.SUPPORT_RADIUS_WIDTHS`."""
        from .support import SUPPORT_RADIUS_WIDTHS

        try:
            r = float(self.config.get("config", {}).get("support_radius_widths",
                                                        SUPPORT_RADIUS_WIDTHS))
        except (TypeError, ValueError):
            return SUPPORT_RADIUS_WIDTHS
        return r if r > 0 else SUPPORT_RADIUS_WIDTHS

    @property
    def support_preset(self) -> str:
        """The classical preset the "auto" support removal follows: the checkpoint config's
        ``support_preset``, else its ``scale_preset``, else "auto"
        (:func:`emcopilot.support.preset_followed`)."""
        from .support import preset_followed

        return preset_followed(self.config.get("config", {}))

    def resolve_support(self, prepared01: np.ndarray, support: str | bool = "model") -> bool:
        """Whether to remove the support from one image already in the segmentor's conventions
        (:meth:`prepare`, data bar cut off): ``support`` True/False, "on"/"off", "auto" or
        "model" (:attr:`support_removal`). "auto" follows the classical preset the segmentor
        was trained with (the checkpoint's ``scale_preset``, the one its coarse masks were made
        with, unless a ``support_preset`` is recorded to decide this alone): "isolated" (free
        particles) never, "supported" always, "auto" (or none recorded) per image where the
        masker picks "supported"
        (:func:`emcopilot.support.shows_support`). Only a segmentor trained at a common
        particle scale (:attr:`particle_diameter_px`) knows how wide its particles are, so for
        any other it is False."""
        from .support import shows_support

        reach = self.support_scope(support)
        if reach != "per image":
            return reach == "all"
        return shows_support(prepared01, "bright" if self.input_polarity == "bright" else "auto")

    def support_scope(self, support: str | bool = "model") -> str:
        """Which images ``support`` (as :meth:`resolve_support` takes it) reaches for this
        segmentor: "none", "all" or "per image" (:func:`emcopilot.support.scope`); "none" for a
        segmentor that does not know its particles' width."""
        from .support import resolve_support_mode, scope

        if isinstance(support, bool):
            mode = "on" if support else "off"
        else:
            mode = self.support_removal if support == "model" else resolve_support_mode(support)
        if self.particle_diameter_px is None:
            return "none"
        return scope(mode, self.support_preset)

    def removes_support(self, image01: np.ndarray, *, polarity: str = "auto",
                        data_bar: bool = True, support: str | bool = "model") -> bool:
        """Whether :meth:`probability` and :meth:`segment` take this image's support out
        (:meth:`removes_and_splits`' first answer)."""
        return self.removes_and_splits(image01, polarity=polarity, data_bar=data_bar,
                                       support=support, scale_split=False)[0]

    def removes_and_splits(self, image01: np.ndarray, *, polarity: str = "auto",
                           data_bar: bool = True, support: str | bool = "model",
                           scale_split: str | bool = "model") -> tuple[bool, bool]:
        """Whether :meth:`probability` and :meth:`segment` take this image's support out
        (:meth:`resolve_support`) and split its mask's touching particles before measuring its
        particle width (:meth:`resolve_scale_split`), judged on the image in the segmentor's
        conventions with the rows of a data bar left out (``data_bar``); the classical
        masker's judgement is made once for both."""
        prepared = self.prepare(image01, polarity)
        _, prepared, _ = _above_bar(prepared, None, data_bar)
        remove = self.resolve_support(prepared, support)
        return remove, self._split_as_support(prepared, scale_split, support, remove)

    def _predict(self, prepared01: np.ndarray, scale: float | None, support: bool) -> np.ndarray:
        """:meth:`predict_proba` at ``scale``; with ``support`` the resized image has its support
        removed first (:func:`emcopilot.support.remove_support`, a disc of
        :attr:`support_radius_widths` x :attr:`particle_diameter_px`) and the map is resized
        back to the image's size."""
        if not support:
            return self.predict_proba(prepared01, scale=scale)
        import cv2

        from .particle_scale import resize_image
        from .support import remove_support

        a = np.asarray(prepared01, dtype=np.float32)
        small = remove_support(resize_image(a, 1.0 if scale is None else float(scale)),
                               self.particle_diameter_px, self.support_radius_widths)
        prob = self.predict_proba(small)
        if prob.shape != a.shape:
            prob = cv2.resize(prob, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.clip(prob, 0.0, 1.0).astype(np.float32, copy=False)

    def coarse_labels(self, prepared01: np.ndarray, *, data_bar: bool = True) -> np.ndarray:
        """The classical coarse mask of an image already in the segmentor's conventions
        (:meth:`prepare`), with the classical preset the segmentor was trained with (the
        checkpoint's ``scale_preset``; "auto" when absent): the particles
        :meth:`resolve_scale` measures without labels and :meth:`segment` adds with
        ``add_coarse``. ``data_bar``: as :func:`emcopilot.masking.coarse_mask`'s (the rows of
        an instrument data bar hold no particles)."""
        from .masking import coarse_mask

        preset = self.config.get("config", {}).get("scale_preset") or "auto"
        return coarse_mask(np.asarray(prepared01, dtype=np.float32), method="classical",
                           polarity="bright" if self.input_polarity == "bright" else "auto",
                           classical_options={"preset": str(preset)}, data_bar=data_bar)

    @property
    def fill_holes(self) -> bool:
        """Whether particles are made with their holes filled (:func:`prob_to_instances`'s
        ``fill_holes``): the checkpoint config's ``fill_holes``, True when absent. Measured on
        EMPS (BENCHMARKS.md), filling the holes that the segmentor leaves inside particles
        raised pixel Dice by 0.02-0.06 on each of five segmentors and moved object F1 by
        -0.002 to +0.02."""
        return bool(self.config.get("config", {}).get("fill_holes", True))

    @property
    def input_polarity(self) -> str | None:
        """``"bright"`` when the segmentor was trained on bright-particle images (the pipeline
        and the app train it so): :meth:`prepare` converts each image to that convention."""
        p = self.config.get("config", {}).get("input_polarity")
        return p if p == "bright" else None

    @property
    def particle_diameter_px(self) -> float | None:
        """Typical particle width (px) of the training images when they were resized to a common
        particle scale (:mod:`emcopilot.particle_scale`), else None."""
        d = self.config.get("config", {}).get("particle_diameter_px")
        try:
            d = float(d)
        except (TypeError, ValueError):
            return None
        return d if d > 0 else None

    def prepare(self, image01: np.ndarray, polarity: str = "auto") -> np.ndarray:
        """The image in the convention the segmentor was trained on: bright particles
        (``polarity`` of the given image: "bright", "dark" or "auto" = detected) when
        :attr:`input_polarity` is "bright", else unchanged."""
        if self.input_polarity == "bright":
            return io.bright_particles(image01, polarity)
        return np.asarray(image01, dtype=np.float32)

    def resolve_scale(self, prepared01: np.ndarray, scale: float | None = None,
                      labels: np.ndarray | None = None, *, data_bar: bool = True,
                      split: bool = False) -> float | None:
        """Resize factor for one image: ``scale`` when given; for a segmentor trained at a common
        particle scale, the factor that brings this image's typical particle to
        :attr:`particle_diameter_px`, measured on ``labels`` (e.g. its coarse mask) or, without
        them, on the classical masker's particles (:meth:`coarse_labels`, as
        :func:`emcopilot.particle_scale.estimate_scale` does), with touching particles split
        first when ``split`` (:meth:`resolve_scale_split`); None otherwise (the image's own
        pixel scale)."""
        if scale is not None:
            return float(scale)
        target = self.particle_diameter_px
        if target is None:
            return None
        from .particle_scale import normalising_scale

        return normalising_scale(self.coarse_labels(prepared01, data_bar=data_bar)
                                 if labels is None else labels,
                                 target, split=bool(split))

    def probability(self, image01: np.ndarray, *, polarity: str = "auto",
                    scale: float | None = None, scale_labels: np.ndarray | None = None,
                    data_bar: bool = True, support: str | bool = "model",
                    scale_split: str | bool = "model") -> np.ndarray:
        """Particle probability map (the image's size) after bringing the image to the
        segmentor's conventions (:meth:`prepare`: particle polarity; :meth:`resolve_scale`:
        particle scale, from ``scale``, ``scale_labels`` or an estimate). With ``data_bar``
        (default) an instrument data bar at the bottom
        (:func:`emcopilot.data_bar.find_data_bar`) is left out: the map is 0 there. ``support``:
        take a textured support out of the image first (:meth:`resolve_support`).
        ``scale_split``: split touching particles before measuring the particle width
        (:meth:`resolve_scale_split`)."""
        prepared = self.prepare(image01, polarity)  # polarity from the whole frame
        height = prepared.shape[0]
        top, prepared, scale_labels = _above_bar(prepared, scale_labels, data_bar)
        # the rows left are the micrograph (bar cut off) or every row on purpose (data_bar off)
        remove = self.resolve_support(prepared, support)
        # a given factor is not measured: no split to judge
        split = scale is None and self._split_as_support(prepared, scale_split, support, remove)
        prob = self._predict(prepared, self.resolve_scale(prepared, scale, scale_labels,
                                                          data_bar=False, split=split),
                             remove)
        return pad_below(top, height, prob)[0]

    def _split_as_support(self, prepared01: np.ndarray, scale_split: str | bool,
                          support: str | bool, removes: bool) -> bool:
        """:meth:`resolve_scale_split`, reusing the per-image support judgement (``removes``,
        :meth:`resolve_support`'s answer for ``support``) when both reach images one by one."""
        per_image = not isinstance(support, bool) and self.support_scope(support) == "per image"
        return self.resolve_scale_split(prepared01, scale_split,
                                        shows_support=removes if per_image else None)

    def instances(self, prob: np.ndarray, threshold: float | str | None = None, *,
                  min_distance: int = 3, min_area: int = 10,
                  min_peak: float | str | None = "model",
                  grow_to: float | str | None = "model") -> np.ndarray:
        """Particles (int32 label map) of a probability map: pixels with probability >
        ``threshold`` (None: :attr:`threshold`, normally 0.5; ``"calibrated"``:
        :attr:`calibrated_threshold`; ``"otsu"``: per image), touching particles split by a
        probability watershed, holes filled unless the checkpoint says not to
        (:attr:`fill_holes`), with ``min_peak`` (``"model"``: :attr:`min_peak`; None: every
        particle) only particles whose highest probability exceeds it, and with ``grow_to``
        (``"model"``: :attr:`grow_to`; None: no growth; ``"otsu"`` or a probability) each
        particle grown out to that lower level (:func:`emcopilot.postprocess.prob_to_instances`)."""
        labels = prob_to_instances(prob, self.resolve_threshold(threshold),
                                   min_distance=min_distance, min_area=min_area,
                                   fill_holes=self.fill_holes,
                                   min_peak=self.min_peak if min_peak == "model" else min_peak,
                                   grow_to=self.grow_to if grow_to == "model" else grow_to)
        return labels.astype(np.int32, copy=False)

    def map_particles(self, prob: np.ndarray, coarse: np.ndarray | None, *,
                      min_peak: float | str | None = "model",
                      grow_to: float | str | None = "model",
                      add_coarse: bool | str = "model") -> tuple[np.ndarray, int]:
        """Particles of a probability map the size of its image, and how many of them are
        coarse particles added: :meth:`instances` (``min_peak``, ``grow_to`` as there), then,
        with ``add_coarse`` (``"model"``: :attr:`add_coarse`), the particles of ``coarse``
        (the image's coarse mask) that they miss (:func:`emcopilot.postprocess.
        add_coarse_particles`). What :meth:`segment_detail` does after its map at one scale,
        for a caller holding the map already (the pipeline's segment stage, the benches)."""
        add = self.add_coarse if add_coarse == "model" else bool(add_coarse)
        if add and coarse is None:
            raise ValueError("adding the coarse particles needs the image's coarse mask")
        return _with_missed_coarse(self.instances(prob, min_peak=min_peak, grow_to=grow_to),
                                   prob, coarse, add)

    def segment(self, image01: np.ndarray, threshold: float | str | None = None, **options
                ) -> tuple[np.ndarray, np.ndarray]:
        """Instance label map (int32, 0 = background) and probability map of one image, both of
        the image's size; the options and steps are :meth:`segment_detail`'s."""
        labels, prob, _ = self.segment_detail(image01, threshold, **options)
        return labels, prob

    def segment_detail(self, image01: np.ndarray, threshold: float | str | None = None, *,
                       min_distance: int = 3, min_area: int = 10, scale: float | None = None,
                       polarity: str = "auto", scale_labels: np.ndarray | None = None,
                       min_peak: float | str | None = "model",
                       grow_to: float | str | None = "model",
                       add_coarse: bool | str = "model", data_bar: bool = True,
                       support: str | bool = "model", support_check: bool | str = "model",
                       scale_choice: Sequence[float] | str = "model",
                       min_snr: float | str | None = "model",
                       scale_split: str | bool = "model", annotations: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Instance label map (int32, 0 = background) and probability map of one image, both of
        the image's size, and what was chosen for it (``{"scale_multiple": the multiple of the
        resize factor kept, "coarse_added": coarse particles added, "support_removed": whether
        the particles come from the image with its support removed, "faint_dropped": particles
        dropped as faint, "annotations_dropped": particles dropped as annotations,
        "data_bar_row": the first row of the data bar left out, or None}``).

        Steps: :meth:`probability`, then :meth:`instances`; with ``add_coarse``
        (``"model"``: :attr:`add_coarse`) plus the coarse particles the segmentor missed
        (:func:`emcopilot.postprocess.add_coarse_particles`), from ``scale_labels`` when given
        (the image's coarse mask) else from :meth:`coarse_labels`. With ``data_bar`` (default)
        an instrument data bar at the bottom (:func:`emcopilot.data_bar.find_data_bar`) is
        left out: no particles there, probability 0. ``support``: as :meth:`probability`'s;
        with ``support_check`` (``"model"``: :attr:`support_check`) an image whose support is
        removed is segmented without the removal too, and those particles (and map) are
        returned when they match the coarse mask better
        (:func:`emcopilot.support.removal_kept`). ``scale_choice`` (``"model"``:
        :attr:`scale_choice`): further multiples of the resize factor (e.g. ``(1.5,)``); the
        segmentor then runs at each, and the factor whose own particles (before coarse ones are
        added) match the coarse mask best is kept (ties to the resize factor itself). Last, with
        ``min_snr`` (``"model"``: :attr:`min_snr`; None or 0: off) the particles that stand out
        from their surroundings by at most that many times their noise are dropped
        (:func:`emcopilot.postprocess.drop_faint_particles`, on the image polarity-normalised
        and without its data bar); before that, with ``annotations`` (default), the particles on
        text and scale bars drawn on the image (:func:`emcopilot.annotations.
        drop_annotation_particles`). ``scale_split``: as :meth:`probability`'s."""
        from .particle_scale import check_scale_multiples, multiplied_scale
        from .support import removal_kept

        add = self.add_coarse if add_coarse == "model" else bool(add_coarse)
        multiples = (self.scale_choice if isinstance(scale_choice, str) and scale_choice == "model"
                     else check_scale_multiples(scale_choice))
        check = self.support_check if support_check == "model" else bool(support_check)
        level = self.min_snr if isinstance(min_snr, str) and min_snr == "model" \
            else check_min_snr(min_snr)
        prepared = self.prepare(image01, polarity)  # polarity from the whole frame
        height = prepared.shape[0]
        top, prepared, scale_labels = _above_bar(prepared, scale_labels, data_bar)
        remove = self.resolve_support(prepared, support)
        check = check and remove
        coarse = scale_labels
        if (add or check or multiples) and coarse is None:
            # also measures the scale (no second pass); the rows left are the micrograph (bar
            # cut off) or every row on purpose (data_bar off)
            coarse = self.coarse_labels(prepared, data_bar=False)
        factor = self.resolve_scale(prepared, scale, coarse, data_bar=False,
                                    split=scale is None and self._split_as_support(
                                        prepared, scale_split, support, remove))

        scales, multiples_run = [factor], [1.0]
        for m in multiples:  # the same factor twice (held at a limit) is run once
            s = multiplied_scale(factor, m, prepared.shape)
            if all(s != t for t in scales):
                scales.append(s)
                multiples_run.append(m)

        def particles(remove_support: bool) -> tuple[np.ndarray, np.ndarray]:
            own = []
            for s in scales:
                prob = self._predict(prepared, s, remove_support)
                own.append((self.instances(prob, threshold, min_distance=min_distance,
                                           min_area=min_area, min_peak=min_peak,
                                           grow_to=grow_to), prob))
            k = best_matching([o[0] for o in own], coarse) if len(own) > 1 else 0
            labels, added = _with_missed_coarse(*own[k], coarse, add)
            return labels, own[k][1], {"scale_multiple": multiples_run[k],
                                       "coarse_added": added,
                                       "support_removed": bool(remove_support)}

        labels, prob, info = particles(remove)
        if check:
            without = particles(False)
            if not removal_kept(labels, without[0], coarse):
                labels, prob, info = without
        info["data_bar_row"] = top
        info["annotations_dropped"] = info["faint_dropped"] = 0
        if annotations:
            labels, info["annotations_dropped"] = drop_annotation_particles(prepared, labels)
        if level is not None:  # measured in the bright-particle image
            bright = (prepared if self.input_polarity == "bright"
                      else io.bright_particles(prepared, polarity))
            labels, info["faint_dropped"] = drop_faint_particles(bright, labels, level)
        return (*pad_below(top, height, labels, prob), info)


def _with_missed_coarse(labels: np.ndarray, prob: np.ndarray, coarse: np.ndarray | None,
                        add: bool) -> tuple[np.ndarray, int]:
    """``(labels plus the coarse particles they miss, how many were added)`` with ``add``
    (:func:`emcopilot.postprocess.add_coarse_particles`), else ``(labels, 0)``: the step after
    the particles of a map, for :meth:`Segmentor.segment_detail` and
    :meth:`Segmentor.map_particles`."""
    if not add:
        return labels, 0
    found = int(labels.max(initial=0))
    labels = add_coarse_particles(labels, coarse, prob)
    return labels, int(labels.max(initial=0)) - found


class OutputFilter:
    """The last two steps of the output for one whole frame (``image01``: bright particles),
    as :meth:`Segmentor.segment_detail` takes them: with ``annotations`` the particles on text
    and scale bars drawn on the image are dropped
    (:func:`emcopilot.annotations.drop_annotation_particles`), then with a ``min_snr`` the
    faint ones (:func:`emcopilot.postprocess.drop_faint_particles`), both measured on the rows
    above an instrument data bar (with ``data_bar``). The bar, the annotations and the noise
    (``sigma``: :func:`noise_level_above_bar` when already known) are found once, so the label
    maps of one image (a segment stage's output, or every candidate a core probability is
    chosen from) are filtered at the cost of one; with neither step the labels come back as
    given. Calling it with a label map returns ``(labels of the frame's size, dropped on
    annotations, dropped as faint)``."""

    def __init__(self, image01: np.ndarray, *, min_snr: float | None = None,
                 annotations: bool = False, data_bar: bool = True,
                 sigma: float | None = None) -> None:
        self.height = int(np.shape(image01)[0])
        self.level = check_min_snr(min_snr)
        # nothing to drop: the labels as given, no data bar looked for
        self.top, self.rows, _ = _above_bar(image01, None,
                                            data_bar and (annotations or self.level is not None))
        self.drawn = find_annotations(self.rows) if annotations else None
        self.sigma = (None if self.level is None else
                      noise_sigma(self.rows) if sigma is None else sigma)

    def __call__(self, labels: np.ndarray) -> tuple[np.ndarray, int, int]:
        lab = np.asarray(labels).astype(np.int32, copy=False)
        if lab.shape[0] != self.height:
            raise ValueError(f"labels have {lab.shape[0]} rows, the image {self.height}")
        if self.top is not None:
            lab = lab[:self.top]
        n_drawn = n_faint = 0
        if self.drawn is not None:
            lab, n_drawn = drop_annotation_particles(self.rows, lab, annotations=self.drawn)
        if self.level is not None:
            lab, n_faint = drop_faint_particles(self.rows, lab, self.level, sigma=self.sigma)
        return pad_below(self.top, self.height, lab)[0], n_drawn, n_faint


def drop_faint_above_bar(image01: np.ndarray, labels: np.ndarray, min_snr: float | None, *,
                         data_bar: bool = True, sigma: float | None = None
                         ) -> tuple[np.ndarray, int]:
    """:func:`emcopilot.postprocess.drop_faint_particles` of a whole frame's particles
    (``image01``: bright particles) measured, as :meth:`Segmentor.segment_detail` measures
    them, on the rows above an instrument data bar (with ``data_bar``); the label map keeps the
    frame's size. ``sigma``: :func:`noise_level_above_bar` of the image when already known.
    (:class:`OutputFilter` with ``min_snr`` alone.)"""
    lab, _, dropped = OutputFilter(image01, min_snr=min_snr, data_bar=data_bar,
                                   sigma=sigma)(labels)
    return lab, dropped


def drop_annotations_above_bar(image01: np.ndarray, labels: np.ndarray, *,
                               data_bar: bool = True) -> tuple[np.ndarray, int]:
    """:func:`emcopilot.annotations.drop_annotation_particles` of a whole frame's particles,
    the annotations found, as :meth:`Segmentor.segment_detail` finds them, on the rows above an
    instrument data bar (with ``data_bar``); the label map keeps the frame's size.
    (:class:`OutputFilter` with ``annotations`` alone.)"""
    lab, dropped, _ = OutputFilter(image01, annotations=True, data_bar=data_bar)(labels)
    return lab, dropped


def noise_level_above_bar(image01: np.ndarray, *, data_bar: bool = True) -> float:
    """The pixel noise (:func:`emcopilot.postprocess.noise_sigma`) of the rows
    :func:`drop_faint_above_bar` measures particles on: the level it divides by, for a caller
    that filters several label maps of one image."""
    return noise_sigma(_above_bar(image01, None, data_bar)[1])


def _above_bar(image01: np.ndarray, labels: np.ndarray | None, data_bar: bool):
    """``(top, image rows above a data bar, labels' same rows)``; ``top`` None: no bar (or
    ``data_bar`` off), everything as given."""
    if not data_bar:
        return None, image01, labels
    return on_rows_above_bar(image01, labels)


def segment_folder(paths: str | os.PathLike | Iterable[str | os.PathLike],
                   ckpt: str | os.PathLike | Segmentor, out_dir: str | os.PathLike, *,
                   threshold: float | str | None = None, min_distance: int = 3, min_area: int = 10,
                   scale: float | None = None, polarity: str = "auto", device: str = "auto",
                   progress: Callable[[int, int, str], None] | None = None) -> list[Path]:
    """Segment micrographs (files and/or folders) and write, for each image stem,
    ``out_dir/<stem>.png`` (16-bit label map) and ``out_dir/prob/<stem>.png`` (8-bit
    probability). Returns the label map paths."""
    seg = ckpt if isinstance(ckpt, Segmentor) else Segmentor.load(ckpt, device=device)
    files = io.list_images(paths)
    out = Path(out_dir)
    (out / "prob").mkdir(parents=True, exist_ok=True)
    written = []
    for k, f in enumerate(files):
        img = io.normalize(io.read_micrograph(f).image)
        labels, prob = seg.segment(img, threshold, min_distance=min_distance, min_area=min_area,
                                   scale=scale, polarity=polarity)
        stem = io.safe_stem(f.name)
        written.append(io.write_label_map(out / f"{stem}.png", labels))
        io.write_image(out / "prob" / f"{stem}.png", io.to_uint8(prob))
        if progress:
            progress(k + 1, len(files), f"segmented {f.name}: {int(labels.max())} particles")
    return written


class _FloatMaps:
    """Re-iterable float32 probability maps in [0, 1] from 8-bit ones, one at a time."""

    def __init__(self, maps: list[np.ndarray]) -> None:
        self.maps = maps

    def __iter__(self):
        return (m.astype(np.float32) / 255.0 for m in self.maps)


def choose_min_peak(segmentor: Segmentor, checkpoint: str | os.PathLike,
                    probs: Iterable[np.ndarray], references: Iterable[np.ndarray], *,
                    min_peak: float | str | None = "auto", grow_to: float | str | None = "auto",
                    reference: str = "coarse masks",
                    images: Callable[[int], np.ndarray] | None = None,
                    min_snr: float | None = None, data_bar: bool = True,
                    annotations: bool = False) -> dict:
    """A segmentor's particle core probability, recorded in its checkpoint (where
    :attr:`Segmentor.min_peak`, so ``emcopilot segment`` and the app, reads it), and how well its
    particles match reference label maps, without manual labels.

    ``probs`` are the segmentor's probability maps of real images, ``references`` label maps of
    the same images (the coarse masks, or a project's edited masks). The particles are made as
    :meth:`Segmentor.instances` makes them (its threshold and ``fill_holes``) and scored by
    :func:`emcopilot.postprocess.select_min_peak` (object F1): with ``min_peak="auto"`` over its
    grid, keeping the best value; with a probability, or None (every particle), at that value.
    Then, with those particles, the growth level (:attr:`Segmentor.grow_to`) the same way with
    :func:`emcopilot.postprocess.select_growth`: ``grow_to="auto"`` tries no growth and growth to
    each image's Otsu level and keeps growth only when it matches the references better; None,
    ``"otsu"`` or a probability takes that. Both are recorded in the checkpoint.
    With ``images`` (``images(k)``: the ``k``-th map's image, whole frame, bright particles)
    and a ``min_snr``, each candidate's particles are scored as the output keeps them: after
    the faint-particle filter (:func:`drop_faint_above_bar`, with ``data_bar``) that segmenting
    applies at that level, so a core probability is not chosen for removing faint particles the
    filter takes out anyway (on the S/TEM catalysts this moved the choice from 0.85 to 0.8 and
    kept more of the particles the coarse masks miss; BENCHMARKS.md, stop 31); the level is
    recorded as ``min_peak_min_snr``. With ``images`` and ``annotations`` the particles on text
    and scale bars drawn on the image are dropped before scoring too, as the output drops them
    (:func:`emcopilot.annotations.drop_annotation_particles`).
    ``reference`` names the references in the record. Returns ``{"min_peak", "f1": {str(value):
    F1}, "grow_to", "grow_f1": {str(option): F1}, "score": F1 at the chosen pair}``; the score
    is what compares segmentors (``emcopilot pipeline --segmentor-seeds``, the app's "Segmentors
    to train").
    """
    from .postprocess import GROW_OPTIONS, select_growth, select_min_peak
    from .training.checkpoint import update_config

    # kept as 8-bit maps (the pipeline decides from its stored 8-bit maps too): both choices
    # need them, and a large project's float maps need not all fit in memory
    maps = [np.round(np.clip(np.nan_to_num(np.asarray(p, dtype=np.float32), nan=0.0), 0, 1)
                     * 255).astype(np.uint8) for p in probs]
    probs = _FloatMaps(maps)
    references = list(references)
    level = check_min_snr(min_snr) if images is not None else None
    annotations = bool(annotations) and images is not None
    # each image's variants are scored one after another: read it, find its data bar, measure
    # its noise and find its annotations once
    @functools.lru_cache(maxsize=1)
    def output_filter(k: int) -> OutputFilter:
        return OutputFilter(images(k), min_snr=level, annotations=annotations,
                            data_bar=data_bar)

    def finish(k: int, labels: np.ndarray) -> np.ndarray:
        return output_filter(k)(labels)[0]

    finisher = finish if level is not None or annotations else None
    choice = select_min_peak(probs, references, threshold=segmentor.threshold,
                             fill_holes=segmentor.fill_holes, finish=finisher,
                             **({} if min_peak == "auto" else {"grid": [min_peak]}))
    growth = select_growth(probs, references, threshold=segmentor.threshold,
                           fill_holes=segmentor.fill_holes, min_peak=choice["min_peak"],
                           options=GROW_OPTIONS if grow_to == "auto" else [grow_to],
                           finish=finisher)
    update_config(checkpoint, min_peak=choice["min_peak"], min_peak_f1=choice["f1"],
                  grow_to=growth["grow_to"], grow_f1=growth["f1"],
                  min_peak_reference=reference, min_peak_min_snr=level)
    return {**choice, "grow_to": growth["grow_to"], "grow_f1": growth["f1"],
            "score": growth["f1"][str(growth["grow_to"])]}


def best_segmentor(scores: dict[int | str, float]) -> int | str:
    """The candidate with the highest :func:`choose_min_peak` score: a seed (int) or a name
    such as ``"mean"`` (an ensemble); ties go to a single segmentor, the smallest seed."""
    return max(scores, key=lambda k: (scores[k], isinstance(k, int),
                                      -k if isinstance(k, int) else 0))
