"""The background jobs of the web app: each calls library functions with a project's folders.

Every job is ``fn(project, params, ctx) -> dict`` registered with :func:`emcopilot.jobs.register_job`
(``ctx.progress(done, total, message)``, ``ctx.should_stop()``). The worker imports this module
(``emcopilot.jobs.load_job_modules``); the pages only submit ``(kind, params)`` and read the job
record. The returned dict is stored as the job's result (small, JSON-serialisable).

Kinds: ``coarse_masks``, ``priors``, ``synthesize``, ``train_generator``, ``generate_images``,
``train_segmentor``, ``segment``.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emcopilot.atomic import atomic_write_text
from emcopilot.errors import InputError
from emcopilot.jobs import register_job

__all__ = ["REGISTERED_KINDS", "KINDS", "project_path", "prefer_masks", "training_pairs_dir",
           "segmentor_runs", "generator_checkpoint", "segmentor_checkpoint", "synthetic_masks",
           "build_report_zip", "REPORT_ZIP"]

KINDS = ("coarse_masks", "priors", "synthesize", "train_generator", "generate_images",
         "train_segmentor", "segment")
#: Names of the job kinds this module registers.
REGISTERED_KINDS: list[str] = list(KINDS)

#: Name of the one-file report inside the results folder.
REPORT_ZIP = "emcopilot_report.zip"


def project_path(project: Any, attr: str, *args: Any) -> Path:
    """A project folder whether the store exposes it as a method or a property; created."""
    value = getattr(project, attr)
    p = Path(value(*args) if callable(value) else value)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _stems(project: Any) -> list[str]:
    return [str(rec["stem"]) for rec in project.images()]


def _record(project: Any, stem: str) -> dict:
    for rec in project.images():
        if rec.get("stem") == stem:
            return rec
    return {}


def _image01(project: Any, stem: str) -> np.ndarray:
    from emcopilot.io import normalize

    return normalize(project.read_image(stem).image)


def _load_mask(project: Any, stem: str) -> np.ndarray | None:
    m = project.load_mask(stem, prefer_edited=True)
    return None if m is None else np.asarray(m)


def pixel_size(project: Any, stem: str) -> float | None:
    """The image's pixel size in nm (None = unknown)."""
    v = _record(project, stem).get("pixel_size_nm")
    return None if v in (None, "") else float(v)


def _polarity(project: Any, stem: str, override: str | None = None) -> str:
    if override and override != "auto":
        return override
    return str(_record(project, stem).get("polarity") or "auto")


def prefer_masks(project: Any) -> dict[str, np.ndarray]:
    """Each image's mask (edited when saved, else coarse); images without any are left out."""
    out = {}
    for stem in _stems(project):
        m = _load_mask(project, stem)
        if m is not None:
            out[stem] = m
    return out


def training_pairs_dir(project: Any, out: Path) -> tuple[Path, Path, int]:
    """Write (image PNG, mask PNG) pairs with matching stems into ``out/images``/``out/masks``
    for the trainers (edited masks win over coarse ones). Images are written with bright
    particles (each image's polarity setting, "auto" = detected), the convention of the
    pipeline: a mask->image generator conditioned on the mask alone cannot learn from a set
    that mixes bright- and dark-particle images which one to paint. Returns the two folders and
    the count."""
    from emcopilot.io import bright_particles, write_image, write_label_map

    img_dir, mask_dir = out / "images", out / "masks"
    for d in (img_dir, mask_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    n = 0
    for stem, labels in prefer_masks(project).items():
        write_image(img_dir / f"{stem}.png",
                    bright_particles(_image01(project, stem), _polarity(project, stem)))
        write_label_map(mask_dir / f"{stem}.png", labels)
        n += 1
    if n == 0:
        raise InputError("no masks in this project yet: make coarse masks first")
    return img_dir, mask_dir, n


def synthetic_masks(project: Any) -> Path:
    """Folder of the synthetic label maps (``synthesize_from_priors_dir`` writes ``masks/``,
    ``particles.csv`` and ``comparison.csv`` into its parent)."""
    d = project_path(project, "synthetic_masks_dir")
    if d.name != "masks":
        d = d / "masks"
        d.mkdir(parents=True, exist_ok=True)
    return d


def _progress(ctx: Any) -> Callable[[int, int, str], None]:
    return lambda done, total, message="": ctx.progress(done, total, message)


def _checkpoint(run_dir: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` that holds a checkpoint with at least one completed epoch (a
    training cancelled during its first epoch leaves an untrained ``last/``: not offered)."""
    for name in names:
        cfg = run_dir / name / "config.json"
        if not cfg.is_file():
            continue
        try:
            epoch = int(json.loads(cfg.read_text()).get("epoch", 0))
        except (OSError, ValueError, TypeError):
            continue
        if epoch >= 1:
            return run_dir / name
    return None


def generator_checkpoint(project: Any) -> Path | None:
    """The generator checkpoint to use (best SSIM, else last), or None before training."""
    return _checkpoint(project_path(project, "models_dir", "generator"),
                       ("best_ssim", "best_lpips", "last"))


def segmentor_runs(project: Any) -> Path:
    """The segmentor's run folder (log.jsonl, last/, best_miou/)."""
    return project_path(project, "models_dir", "segmentor")


def segmentor_checkpoint(project: Any) -> Path | None:
    """The segmentor checkpoint to use (best mIoU, else last), or None before training."""
    return _checkpoint(segmentor_runs(project), ("best_miou", "last"))


def segmentor_threshold(ckpt: Path | None, key: str = "calibrated_threshold") -> float | None:
    """A probability recorded in a checkpoint's config.json: the threshold calibrated on the
    validation pairs during training (default), or ``key="min_peak"``, the particle core
    probability chosen after training (None when absent or unreadable)."""
    from emcopilot.postprocess import config_threshold

    cfg = _checkpoint_config(ckpt)
    return config_threshold(cfg, key) if cfg is not None else None


def segmentor_grow_to(ckpt: Path | None) -> float | str | None:
    """The particle growth recorded in a checkpoint's config.json (``"otsu"``, a probability,
    or None: no growth, also when absent or unreadable)."""
    from emcopilot.postprocess import config_grow_to

    cfg = _checkpoint_config(ckpt)
    return config_grow_to(cfg) if cfg is not None else None


def _recorded_flag(ckpt: Path | None, key: str) -> bool:
    """A yes/no setting a checkpoint's config.json records (False when absent or unreadable)."""
    return bool((_checkpoint_config(ckpt) or {}).get("config", {}).get(key, False))


def segmentor_add_coarse(ckpt: Path | None) -> bool:
    """Whether a checkpoint's config.json records ``add_coarse`` (segmenting also keeps the
    masks' particles the segmentor missed; False when absent or unreadable)."""
    return _recorded_flag(ckpt, "add_coarse")


def segmentor_support_removal(ckpt: Path | None) -> str:
    """The support removal a checkpoint's config.json records (``"auto"``, ``"on"`` or
    ``"off"``; "off" when absent or unreadable)."""
    from emcopilot.support import recorded_mode

    return recorded_mode((_checkpoint_config(ckpt) or {}).get("config", {}))


def segmentor_support_check(ckpt: Path | None) -> bool:
    """Whether a checkpoint's config.json records ``support_check`` (an image's support removal
    kept only where it matches the masks at least as well; False when absent or unreadable)."""
    return _recorded_flag(ckpt, "support_check")


def segmentor_min_snr(ckpt: Path | None) -> float | None:
    """The faint-particle level a checkpoint's config.json records (``min_snr``; None when
    absent, unreadable or invalid), read without torch as
    :attr:`emcopilot.inference.Segmentor.min_snr` reads it."""
    from emcopilot.postprocess import recorded_min_snr

    return recorded_min_snr((_checkpoint_config(ckpt) or {}).get("config", {}))


def segmentor_scale_choice(ckpt: Path | None) -> tuple[float, ...]:
    """The further multiples of the resize factor a checkpoint's config.json records
    (``scale_choice``: each image is also segmented at them and the factor whose particles match
    its mask best is kept; none when absent, unreadable or invalid), read without torch as
    :attr:`emcopilot.inference.Segmentor.scale_choice` reads it."""
    from emcopilot.particle_scale import recorded_scale_choice

    return recorded_scale_choice((_checkpoint_config(ckpt) or {}).get("config", {}))


def segmentor_scale_split(ckpt: Path | None) -> str:
    """Whether a checkpoint's config.json records that each image's particle width is measured
    with touching mask particles split (``scale_split``: "auto", "on", "off"; "off" when absent
    or unreadable), read without torch as :attr:`emcopilot.inference.Segmentor.scale_split`
    reads it."""
    from emcopilot.particle_scale import recorded_scale_split

    return recorded_scale_split((_checkpoint_config(ckpt) or {}).get("config", {}))


def segmentor_support_scope(ckpt: Path | None) -> str:
    """Which images a checkpoint's recorded support removal reaches: "none", "all" or "per
    image" (:meth:`emcopilot.inference.Segmentor.support_scope`, read without torch)."""
    from emcopilot.support import preset_followed, recorded_mode, scope

    cfg = (_checkpoint_config(ckpt) or {}).get("config", {})
    if not cfg.get("particle_diameter_px"):
        return "none"
    return scope(recorded_mode(cfg), preset_followed(cfg))


def segmentor_ensemble_size(ckpt: Path | None) -> int:
    """How many segmentors a checkpoint averages (its config's ``ensemble``; 1 for a single
    segmentor, or when absent or unreadable)."""
    cfg = _checkpoint_config(ckpt)
    names = (cfg or {}).get("config", {}).get("ensemble")
    return len(names) if isinstance(names, list) and names else 1


def _checkpoint_config(ckpt: Path | None) -> dict | None:
    """A checkpoint's config.json as a dict whose ``config`` section is a dict, or None when
    absent or unreadable (the pages call this on every render: no torch import)."""
    try:
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
    except (OSError, TypeError, ValueError):
        return None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("config", {}), dict):
        return None
    return cfg


# -- jobs ----------------------------------------------------------------------------------------

#: the coarse-mask job's record of how the project's coarse masks were made
COARSE_MASKS_RECORD = "masks/coarse_masks.json"


def coarse_masks_preset(project: Any) -> str:
    """The classical preset the project's coarse masks were made with ("auto" when not
    recorded: masks from before the record, or none yet)."""
    try:
        record = project.read_json(COARSE_MASKS_RECORD, {}) or {}
    except InputError:
        return "auto"
    preset = record.get("classical_preset", "auto") if isinstance(record, dict) else "auto"
    return preset if preset in ("auto", "isolated", "supported") else "auto"


@register_job("coarse_masks")
def coarse_masks_job(project: Any, params: dict, ctx: Any) -> dict:
    """Coarse masks (SAM or classical + Algorithm 1 filters) of every image of the project.
    params: method, polarity ("auto" = each image's setting), filters, sam_options,
    classical_options, stems (optional subset)."""
    from emcopilot.masking import coarse_mask, resolve_method

    stems = list(params.get("stems") or _stems(project))
    if not stems:
        raise InputError("this project has no images: upload micrographs first")
    sam_options = dict(params.get("sam_options") or {})
    method = resolve_method(params.get("method", "auto"), sam_options.get("model_type", "vit_b"))
    counts = {}
    for i, stem in enumerate(stems):
        if ctx.should_stop():
            return {"cancelled": True, "masks": counts, "method": method}
        ctx.progress(i, len(stems), f"masking {stem}")
        labels = coarse_mask(_image01(project, stem), method=method,
                             polarity=_polarity(project, stem, params.get("polarity")),
                             filters=params.get("filters"), sam_options=sam_options,
                             classical_options=params.get("classical_options"))
        project.save_mask(stem, labels, kind="coarse")
        counts[stem] = int(labels.max())
    ctx.progress(len(stems), len(stems), f"{len(stems)} coarse masks saved")
    # what made them: a segmentor trained on them records the classical preset (its particle
    # scale and support removal follow it, as in the pipeline)
    preset = str((params.get("classical_options") or {}).get("preset", "auto"))
    project.write_json(COARSE_MASKS_RECORD, {"method": method, "classical_preset": preset})
    return {"method": method, "masks": counts, "particles": int(sum(counts.values()))}


@register_job("priors")
def priors_job(project: Any, params: dict, ctx: Any) -> dict:
    """Morphology priors (Algorithm 2) of the project's masks (edited preferred)."""
    from emcopilot.priors import compute_priors

    masks = prefer_masks(project)
    if not masks:
        raise InputError("no masks in this project yet: make coarse masks first")
    items = [(stem, m, pixel_size(project, stem)) for stem, m in masks.items()]
    table = compute_priors(items, project_path(project, "priors_dir"),
                           min_area=int(params.get("min_area", 10)), progress=_progress(ctx))
    return {"images": len(items), "particles": int(len(table))}


@register_job("synthesize")
def synthesize_job(project: Any, params: dict, ctx: Any) -> dict:
    """Synthetic masks from the priors (Algorithm 3) or random ones (Algorithm 4)."""
    from emcopilot.synthesis import synthesize_from_priors_dir

    masks = synthetic_masks(project)
    comparison = synthesize_from_priors_dir(
        project_path(project, "priors_dir"), masks.parent,
        per_mask=int(params.get("per_mask", 3)),
        random=bool(params.get("random", False)), seed=int(params.get("seed", 0)),
        progress=_progress(ctx))
    n = len(list(masks.glob("*.png")))
    return {"masks": n, "comparison_rows": int(len(comparison))}


def _small(result: Any) -> dict:
    """The JSON-friendly scalars of a training result."""
    if not isinstance(result, dict):
        return {}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()
            if isinstance(v, (int, float, str, bool, Path)) or v is None}


@register_job("train_generator")
def train_generator_job(project: Any, params: dict, ctx: Any) -> dict:
    """pix2pix generator on (mask, image) pairs of the project (Algorithm 5)."""
    from emcopilot.training.generator import train_generator

    run = project_path(project, "models_dir", "generator")
    img_dir, mask_dir, n = training_pairs_dir(project, run / "pairs")
    keys = ("profile", "epochs", "batch_size", "image_size", "lambda_l1", "lambda_ssim", "seed")
    kw = {k: params[k] for k in keys if params.get(k) is not None}
    result = train_generator(img_dir, mask_dir, run, device=params.get("device", "auto"),
                             resume=bool(params.get("resume", True)), progress=_progress(ctx),
                             should_stop=ctx.should_stop, **kw)
    return {"pairs": n, **_small(result)}


@register_job("generate_images")
def generate_images_job(project: Any, params: dict, ctx: Any) -> dict:
    """Synthetic micrographs for the synthetic masks with the trained generator."""
    from emcopilot.training.generator import generate_images

    ckpt = generator_checkpoint(project)
    if ckpt is None:
        raise InputError("no trained generator in this project: train the generator first")
    paths = generate_images(ckpt, synthetic_masks(project),
                            project_path(project, "synthetic_images_dir"),
                            device=params.get("device", "auto"), progress=_progress(ctx))
    return {"images": len(paths), "checkpoint": ckpt.name}


@register_job("train_segmentor")
def train_segmentor_job(project: Any, params: dict, ctx: Any) -> dict:
    """CBAM-UNet++ segmentor (Algorithm 7). params["data"]: "synthetic" (generated pairs,
    the paper's self-supervised path), "masks" (the project's own images and masks) or
    "synthetic+masks" (both in one training set); params["particle_scale"] (default True):
    train at a common particle width (:mod:`emcopilot.particle_scale`); params["min_peak"]
    ("auto", default, or None): choose the particle core probability and growth against the
    project's masks after training (:func:`_match_masks`; None: every particle, no growth);
    params["seeds"] (default 1): train that many segmentors and keep the one that best matches
    the project's masks, or with params["ensemble"] (default True) the mean of all of them
    when that matches better (as ``emcopilot pipeline --ensemble on``); params["add_coarse"]
    (default True): record with the model that segmenting also keeps the masks' particles it
    missed (as ``emcopilot pipeline --add-coarse on``); params["support_removal"] ("auto",
    default, "on" or "off"): record with the model whether it takes a textured support out of
    an image first (:mod:`emcopilot.support`, as ``emcopilot pipeline --support-removal``),
    which follows the classical preset the project's coarse masks were made with
    (:func:`coarse_masks_preset`, recorded as the model's ``scale_preset``);
    params["support_check"] (default :data:`emcopilot.support.SUPPORT_CHECK_DEFAULT`): record
    that the removal is kept per image only where it matches the masks at least as well (as
    ``emcopilot pipeline --support-check``); params["min_snr"] (default
    :data:`emcopilot.postprocess.MIN_SNR_DEFAULT`, None: off): record that segmenting drops the
    particles that stand out from their surroundings by at most that many times their noise
    (as ``emcopilot pipeline --min-snr``); params["scale_split"] (default
    :data:`emcopilot.particle_scale.SCALE_SPLIT_DEFAULT`): record whether each image's particle
    width is measured with touching mask particles split (as ``emcopilot pipeline
    --scale-split``)."""
    from emcopilot.training.datasets import gather_pairs
    from emcopilot.training.segmentor import train_segmentor

    from emcopilot.particle_scale import DEFAULT_DIAMETER_PX

    run = segmentor_runs(project)
    seeds = params.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 8:
        raise InputError(f"seeds must be a whole number from 1 to 8, got {seeds!r}")
    if params.get("min_peak", "auto") not in ("auto", None):
        raise InputError("min_peak must be 'auto' (choose it against the project's masks after "
                         "training) or None (keep every particle)")
    from emcopilot.support import SUPPORT_CHECK_DEFAULT, resolve_support_mode

    support_removal = resolve_support_mode(params.get("support_removal", "auto"))
    support_check = params.get("support_check", SUPPORT_CHECK_DEFAULT)
    if not isinstance(support_check, bool):
        raise InputError(f"support_check must be true or false, got {support_check!r}")
    from emcopilot.postprocess import MIN_SNR_DEFAULT, check_min_snr

    min_snr = check_min_snr(params.get("min_snr", MIN_SNR_DEFAULT))
    from emcopilot.particle_scale import SCALE_SPLIT_DEFAULT, check_scale_split

    scale_split = check_scale_split(params.get("scale_split", SCALE_SPLIT_DEFAULT))
    data = params.get("data", "synthetic")
    if data not in ("synthetic", "masks", "synthetic+masks"):
        raise InputError(f"unknown training data {data!r}: synthetic, masks or synthetic+masks")
    sources = []
    if data in ("synthetic", "synthetic+masks"):
        img_dir = project_path(project, "synthetic_images_dir")
        if not any(img_dir.glob("*.png")):
            raise InputError("no synthetic images yet: train the generator and generate images "
                             "first, or train on the project's own masks")
        sources.append((img_dir, synthetic_masks(project), ""))
    if data in ("masks", "synthetic+masks"):
        own_images, own_masks, _ = training_pairs_dir(project, run / "pairs")
        sources.append((own_images, own_masks, "real_" if data == "synthetic+masks" else ""))
    # as in the pipeline: every pair resized so that its typical particle is 32 px wide (the
    # segmentor then sees every magnification at one scale; inference resizes the same way)
    diameter = DEFAULT_DIAMETER_PX if params.get("particle_scale", True) else None
    img_dir, mask_dir = gather_pairs(sources, run / "training_data",
                                     particle_diameter_px=diameter)
    keys = ("profile", "epochs", "batch_size", "image_size", "seed", "samples_per_epoch",
            "base")
    kw = {k: params[k] for k in keys if params.get(k) is not None}
    # every training image has bright particles: the project's pairs are written so, and the
    # generator learnt from them; inference converts each image the same way
    train = dict(augment=bool(params.get("augment", True)), input_polarity="bright",
                 particle_diameter_px=diameter, scale_preset=coarse_masks_preset(project),
                 device=params.get("device", "auto"),
                 resume=bool(params.get("resume", True)), should_stop=ctx.should_stop)
    min_peak = params.get("min_peak", "auto")  # "auto": choose it; None: keep every particle
    device = params.get("device", "auto")
    # recorded with the model: segmenting then adds the masks' particles it missed (as the
    # pipeline does with its coarse masks; the Results page can switch it off)
    add_coarse = bool(params.get("add_coarse", True))
    if seeds > 1:
        return _train_segmentor_seeds(project, ctx, img_dir, mask_dir, seeds, min_peak, device,
                                      train, kw, ensemble=bool(params.get("ensemble", True)),
                                      add_coarse=add_coarse, support_removal=support_removal,
                                      support_check=support_check, min_snr=min_snr,
                                      scale_split=scale_split)
    result = train_segmentor(img_dir, mask_dir, run, progress=_progress(ctx), **train, **kw)
    out = _small(result)
    ckpt = None if result.get("cancelled") else segmentor_checkpoint(project)
    if ckpt is not None:
        choice = _match_masks(project, ctx, ckpt, prefer_masks(project), device, min_peak,
                              add_coarse=add_coarse, support_removal=support_removal,
                              support_check=support_check, min_snr=min_snr,
                              scale_split=scale_split)
        out.update(min_peak=choice["min_peak"], grow_to=choice["grow_to"],
                   f1_vs_masks={f"seed{kw.get('seed', 0)}": choice["score"]})
    return out


def _train_segmentor_seeds(project: Any, ctx: Any, img_dir: Path, mask_dir: Path, seeds: int,
                           min_peak: str | None, device: str, train: dict, kw: dict, *,
                           ensemble: bool = True, add_coarse: bool = True,
                           support_removal: str = "auto", support_check: bool = False,
                           min_snr: float | None = None, scale_split: str = "off") -> dict:
    """Train ``seeds`` segmentors (``candidates/seed<S>/``) and make the one whose particles
    best match the project's masks the project's segmentor (its ``best_miou/``, ``last/`` and
    log copied to the run folder), as ``emcopilot pipeline --segmentor-seeds`` does against
    its coarse masks; with ``ensemble`` their mean (``candidates/mean/``, every segmentor in
    one checkpoint) competes too and, when kept, becomes the run's ``best_miou/``."""
    from emcopilot.inference import best_segmentor
    from emcopilot.training.segmentor import train_segmentor

    masks = prefer_masks(project)
    if not masks:
        raise InputError("choosing among several segmentors needs masks of the project's "
                         "images: make coarse masks first, or train one segmentor")
    run = segmentor_runs(project)
    first = int(kw.pop("seed", 0))
    choices: dict[int | str, dict] = {}
    ckpts: dict[int, Path] = {}
    maps: dict[int, list[np.ndarray]] = {}  # each segmentor's 8-bit maps of the masked images
    for k in range(seeds):
        seed, cdir = first + k, run / "candidates" / f"seed{first + k}"
        result = train_segmentor(
            img_dir, mask_dir, cdir, seed=seed, **train, **kw,
            progress=lambda d, t, m="", k=k: ctx.progress(d, t, f"segmentor {k + 1}/{seeds}: {m}"))
        if result.get("cancelled"):
            return {**_small(result), "seed": seed}
        ckpts[seed] = _checkpoint(cdir, ("best_miou", "last"))
        choices[seed] = _match_masks(project, ctx, ckpts[seed], masks, device, min_peak,
                                     keep=maps.setdefault(seed, []), add_coarse=add_coarse,
                                     support_removal=support_removal,
                                     support_check=support_check, min_snr=min_snr,
                                     scale_split=scale_split)
    if ensemble:  # the segmentors' mean: their maps averaged (as the pipeline does), no rerun
        from emcopilot import io
        from emcopilot.training.checkpoint import ensemble_checkpoint

        mean = ensemble_checkpoint(list(ckpts.values()), run / "candidates" / "mean")
        averaged = [io.to_uint8(np.mean(per_image, axis=0) / 255.0)
                    for per_image in zip(*maps.values())]
        choices["mean"] = _match_masks(project, ctx, mean, masks, device, min_peak,
                                       maps=averaged, add_coarse=add_coarse,
                                       support_removal=support_removal,
                                       support_check=support_check, min_snr=min_snr,
                                       scale_split=scale_split)
    best = best_segmentor({s: c["score"] for s, c in choices.items()})
    # the kept one's checkpoints (the mean has one: best_miou) and curves (the mean: the first's)
    winner = run / "candidates" / (f"seed{best}" if best != "mean" else f"seed{first}")
    kept = {"best_miou": run / "candidates" / "mean"} if best == "mean" else \
        {name: winner / name for name in ("best_miou", "last")}
    for name in ("best_miou", "last"):
        if (run / name).exists():
            shutil.rmtree(run / name)
        if name in kept and kept[name].is_dir():
            shutil.copytree(kept[name], run / name)
    if (winner / "log.jsonl").is_file():
        shutil.copyfile(winner / "log.jsonl", run / "log.jsonl")
    return {"seeds": seeds, "selected_seed": best, "min_peak": choices[best]["min_peak"],
            "grow_to": choices[best]["grow_to"],
            "f1_vs_masks": {(s if s == "mean" else f"seed{s}"): c["score"]
                            for s, c in choices.items()}}


def _match_masks(project: Any, ctx: Any, ckpt: Path, masks: dict[str, np.ndarray],
                 device: str, min_peak: str | None = "auto", *,
                 maps: list[np.ndarray] | None = None,
                 keep: list[np.ndarray] | None = None, add_coarse: bool = False,
                 support_removal: str = "off", support_check: bool = False,
                 min_snr: float | None = None, scale_split: str = "off") -> dict:
    """A trained segmentor against the project's masks (edited where saved, else coarse):
    :func:`emcopilot.inference.choose_min_peak` on its probability maps of those images, which
    records the particle core probability ("auto": the one that best matches the masks; None:
    every particle) and the particle growth (to each image's Otsu level when that matches the
    masks better) that the Results page then applies. Without masks nothing is chosen (every
    particle, no growth). ``maps``: 8-bit probability maps of the masked images (in the order
    of ``masks``) to use instead of running the segmentor (e.g. the mean of several
    segmentors' maps); ``keep``: a list that gets the maps the segmentor made, as 8-bit;
    ``add_coarse``: record that segmenting adds the masks' particles the segmentor missed
    (:attr:`emcopilot.inference.Segmentor.add_coarse`; only with masks); ``support_removal``:
    recorded first, so the maps are made as segmenting will make them
    (:attr:`emcopilot.inference.Segmentor.support_removal`); ``support_check``: record that
    segmenting keeps an image's support removal only where it matches the masks at least as
    well as without it (:attr:`emcopilot.inference.Segmentor.support_check`); ``min_snr``:
    record that segmenting drops faint particles (:attr:`emcopilot.inference.Segmentor.min_snr`,
    None: none), and the core probability is chosen for the particles that filter keeps;
    ``scale_split``: recorded first too, as the particle width is then measured
    (:attr:`emcopilot.inference.Segmentor.scale_split`)."""
    from emcopilot import io
    from emcopilot.inference import Segmentor, choose_min_peak
    from emcopilot.training.checkpoint import update_config

    update_config(ckpt, support_removal=support_removal, support_check=bool(support_check),
                  min_snr=min_snr, scale_split=scale_split)
    seg = Segmentor.load(ckpt, device=device)

    def probs():  # one map at a time (kept as 8-bit copies for the two choices)
        for k, (stem, labels) in enumerate(masks.items()):
            ctx.progress(k, len(masks), f"matching the particles with the masks: {stem}")
            if maps is not None:
                yield maps[k].astype(np.float32) / 255.0
                continue
            prob = seg.probability(_image01(project, stem), polarity=_polarity(project, stem),
                                   scale_labels=labels if seg.particle_diameter_px else None)
            if keep is not None:
                keep.append(io.to_uint8(prob))
            yield prob

    stems = list(masks)

    def bright(k: int) -> np.ndarray:  # scored after the faint filter segmenting applies
        return io.bright_particles(_image01(project, stems[k]), _polarity(project, stems[k]))

    choice = choose_min_peak(seg, ckpt, probs(), masks.values(),
                             min_peak=min_peak if masks else None,
                             grow_to="auto" if masks and min_peak is not None else None,
                             reference="project masks", images=bright, min_snr=min_snr)
    if not masks:
        choice["score"] = None  # nothing to match
    update_config(ckpt, add_coarse=bool(add_coarse and masks))
    ctx.progress(len(masks), len(masks), f"particle core probability: {choice['min_peak']}, "
                 f"growth: {choice['grow_to'] or 'none'}")
    return choice


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("emcopilot", "numpy", "scikit-image", "scipy", "torch", "segment-anything",
                "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build_report_zip(out: Path, provenance: dict) -> Path:
    """Write ``provenance.json`` into ``out`` and zip the whole results folder (except older
    zips) into ``out/REPORT_ZIP``; returns the zip's path."""
    atomic_write_text(out / "provenance.json", json.dumps(provenance, indent=2, default=str))
    zpath = out / REPORT_ZIP
    tmp = out / f".{REPORT_ZIP}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(out.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and p.suffix != ".zip":
                zf.write(p, p.relative_to(out).as_posix())
    tmp.replace(zpath)
    return zpath


@register_job("segment")
def segment_job(project: Any, params: dict, ctx: Any) -> dict:
    """Segment every image and write the PSD report + ZIP into the results folder.
    params["model"]: "segmentor" (the project's trained segmentor) or "coarse" (the coarse
    masker with the same options as the coarse-mask job: quick report with no training).
    params["use_edited"]: with "coarse", use the saved (edited) masks where they exist.
    With "segmentor", params["min_peak"], ["grow_to"], ["add_coarse"], ["support_removal"]
    ("auto", "on" or "off"), ["support_check"] (true or false) and ["scale_choice"] (a list of
    further multiples of each image's resize factor, [] for none) and ["min_snr"] (a number,
    None or 0 for none) override what the checkpoint records ("model", the default); with
    multiples, the one kept for each image is in the report's provenance
    (model.scale_multiples); the particles dropped as faint are in model.faint_dropped.
    params["annotations"] (true, the default, or false): drop the particles on text and scale
    bars drawn on the image (:func:`emcopilot.annotations.drop_annotation_particles`); how many
    per image is in model.annotations_dropped."""
    from emcopilot.analysis import write_psd_report
    from emcopilot.io import write_label_map

    stems = _stems(project)
    if not stems:
        raise InputError("this project has no images: upload micrographs first")
    model = params.get("model", "segmentor")
    out = project_path(project, "results_dir")
    for old in ("masks", "overlays"):
        if (out / old).exists():
            shutil.rmtree(out / old)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    model_info: dict[str, Any] = {"kind": model}
    if model == "segmentor":
        from emcopilot.inference import Segmentor

        ckpt = (Path(params["checkpoint"]) if params.get("checkpoint")
                else segmentor_checkpoint(project))
        if ckpt is None:
            raise InputError("no trained segmentor in this project: train one on the Segmentor "
                             "page, or use the coarse masker for a quick report")
        seg = Segmentor.load(ckpt, device=params.get("device", "auto"))
        model_info["checkpoint"] = str(ckpt)
        for name in ("config.json", "meta.json"):
            if (ckpt / name).is_file():
                model_info[name] = json.loads((ckpt / name).read_text())
        thr = seg.resolve_threshold(params.get("threshold"))  # None: the model's default (0.5)
        model_info["threshold"] = thr
        # "model": the particle core probability recorded in the checkpoint; None: every particle
        min_peak = params.get("min_peak", "model")
        if not (min_peak in ("model", None) or (isinstance(min_peak, (int, float))
                                                and 0 < min_peak < 1)):
            raise InputError(f"min_peak must be 'model', None or a probability in (0, 1), "
                             f"got {min_peak!r}")
        model_info["min_peak"] = seg.min_peak if min_peak == "model" else min_peak
        # "model": the particle growth recorded in the checkpoint; None: no growth
        grow_to = params.get("grow_to", "model")
        if grow_to != "model":
            from emcopilot.postprocess import check_grow_to

            grow_to = check_grow_to(grow_to)
        model_info["grow_to"] = seg.grow_to if grow_to == "model" else grow_to
        # "model": as recorded in the checkpoint (the pipeline records on); True/False
        add_coarse = params.get("add_coarse", "model")
        if add_coarse not in ("model", True, False):
            raise InputError(f"add_coarse must be 'model', true or false, got {add_coarse!r}")
        add_coarse = seg.add_coarse if add_coarse == "model" else add_coarse
        model_info["add_coarse"] = add_coarse
        # "model": as recorded in the checkpoint (the pipeline and training record auto)
        support = params.get("support_removal", "model")
        if support != "model":
            from emcopilot.support import resolve_support_mode

            support = resolve_support_mode(support)
        model_info["support_removal"] = seg.support_removal if support == "model" else support
        # "model": as recorded in the checkpoint; True/False
        support_check = params.get("support_check", "model")
        if support_check not in ("model", True, False):
            raise InputError(f"support_check must be 'model', true or false, got "
                             f"{support_check!r}")
        model_info["support_check"] = (seg.support_check if support_check == "model"
                                       else support_check)
        # "model": as recorded in the checkpoint; a list of multiples ([]: one factor)
        scale_choice = params.get("scale_choice", "model")
        if scale_choice != "model":
            from emcopilot.particle_scale import check_scale_multiples

            scale_choice = check_scale_multiples(scale_choice)
        multiples = seg.scale_choice if scale_choice == "model" else scale_choice
        model_info["scale_choice"] = list(multiples)
        if multiples:
            model_info["scale_multiples"] = {}
        # "model": as recorded in the checkpoint; None/0: keep every particle
        min_snr = params.get("min_snr", "model")
        if not (isinstance(min_snr, str) and min_snr == "model"):
            from emcopilot.postprocess import check_min_snr

            min_snr = check_min_snr(min_snr)
        model_info["min_snr"] = seg.min_snr if min_snr == "model" else min_snr
        model_info["faint_dropped"] = {}
        # "model": as recorded in the checkpoint; "auto", "on" or "off"
        scale_split = params.get("scale_split", "model")
        if scale_split != "model":
            from emcopilot.particle_scale import check_scale_split

            scale_split = check_scale_split(scale_split)
        model_info["scale_split"] = seg.scale_split if scale_split == "model" else scale_split
        # True (default): drop the particles on text and scale bars drawn on the image
        annotations = params.get("annotations", True)
        if annotations not in (True, False):
            raise InputError(f"annotations must be true or false, got {annotations!r}")
        model_info["annotations"] = annotations
        model_info["annotations_dropped"] = {}
    else:
        from emcopilot.masking import coarse_mask, resolve_method

        sam_options = dict(params.get("sam_options") or {})
        model_info["method"] = resolve_method(params.get("method", "auto"),
                                              sam_options.get("model_type", "vit_b"))
    items = []
    for i, stem in enumerate(stems):
        if ctx.should_stop():
            return {"cancelled": True}
        ctx.progress(i, len(stems) + 1, f"segmenting {stem}")
        image01 = _image01(project, stem)
        labels = None
        if model == "segmentor":
            labels, _, info = seg.segment_detail(
                image01, threshold=thr, polarity=_polarity(project, stem), min_peak=min_peak,
                grow_to=grow_to, add_coarse=add_coarse, support=support,
                support_check=support_check, scale_choice=multiples,
                min_snr=model_info["min_snr"], scale_split=model_info["scale_split"],
                annotations=annotations,
                # the project's mask (coarse or edited): the particle scale, the particles
                # added with add_coarse and the reference of the scale choice
                scale_labels=(_load_mask(project, stem)
                              if seg.particle_diameter_px or add_coarse or multiples else None))
            if multiples:
                model_info["scale_multiples"][stem] = info["scale_multiple"]
            model_info["faint_dropped"][stem] = info["faint_dropped"]
            model_info["annotations_dropped"][stem] = info["annotations_dropped"]
        else:
            if params.get("use_edited", True):
                labels = _load_mask(project, stem)
            if labels is None:
                labels = coarse_mask(image01, method=model_info["method"],
                                     polarity=_polarity(project, stem),
                                     filters=params.get("filters"), sam_options=sam_options,
                                     classical_options=params.get("classical_options"))
        write_label_map(out / "masks" / f"{stem}.png", labels)
        items.append((stem, labels, pixel_size(project, stem), image01))
    ctx.progress(len(stems), len(stems) + 1, "writing the report")
    summary = write_psd_report(items, out)
    provenance = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "project": {"id": getattr(project, "id", None), "name": getattr(project, "name", None)},
        "inputs": [{k: rec.get(k) for k in ("stem", "filename", "pixel_size_nm",
                                             "pixel_size_source", "polarity", "width", "height")
                    if k in rec} for rec in project.images()],
        "parameters": params,
        "model": model_info,
        "versions": _versions(),
    }
    zpath = build_report_zip(out, provenance)
    ctx.progress(len(stems) + 1, len(stems) + 1, "report written")
    batch = summary.get("batch", {}) if isinstance(summary, dict) else {}
    return {"images": len(stems), "zip": zpath.name,
            "particles": batch.get("count") if isinstance(batch, dict) else None}
