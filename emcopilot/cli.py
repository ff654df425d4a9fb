"""`emcopilot` command line: a thin layer over the library, one sub-command per pipeline step.

Every command exits 0 on success, 2 on bad input (a one-line message, no traceback), 3 when model
weights are missing, 1 on other errors. Set EMCOPILOT_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from emcopilot import __version__
from emcopilot.errors import EMCopilotError, InputError

T = TypeVar("T")

MASKS_MANIFEST = "masks.json"


# --------------------------------------------------------------------------- helpers
class _Progress:
    """A tqdm bar behind the library's ``progress(done, total, message)`` callback."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.desc, unit="step", file=sys.stderr, leave=True)
        self.bar.n = done
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _progress(args: argparse.Namespace, desc: str) -> _Progress:
    return _Progress(desc, enabled=not getattr(args, "quiet", False))


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _existing_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{what} {p} is not a folder")
    return p


def _number(kind: Callable[[str], T], accepts: Callable[[T], bool],
            wanted: str) -> Callable[[str], T]:
    """An argparse type: ``kind(text)`` where ``accepts`` says yes, else a one-line usage error
    "'TEXT' is not WANTED" (NaN and infinity fail every range below)."""

    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accepts(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    return parse


_positive = _number(float, lambda v: 0 < v < math.inf, "a positive finite number")
#: a network width: a whole number of filters from 2 to 256
_width = _number(int, lambda v: 2 <= v <= 256, "a whole number of filters between 2 and 256")
#: a probability in (0, 1)
_threshold_number = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1")


#: the rule of postprocess.add_coarse_particles, for --add-coarse help ("%%": argparse)
ADD_COARSE_RULE = ("at least 90 %% uncovered by its particles, at least half the image's median "
                   "coarse particle area, its probability there at least the image's Otsu level "
                   "(any probability on an image where the segmentor found no particle)")
#: the support removal of ``emcopilot.support`` (``SUPPORT_RADIUS_WIDTHS``, written out so that
#: the CLI starts without numpy; a test keeps the two equal), for the help texts
SUPPORT_RULE = ("a white top-hat whose disc has a radius of 1.5 typical particle widths, at the "
                "segmentor's particle scale; see BENCHMARKS.md")
#: ``emcopilot.support.SUPPORT_CHECK_DEFAULT``, written out for the same reason (a test keeps the
#: two equal): the pipeline's default for --support-check
SUPPORT_CHECK_DEFAULT = False
#: ``emcopilot.postprocess.MIN_SNR_DEFAULT``, written out for the same reason (a test keeps the
#: two equal): the pipeline's default for --min-snr
MIN_SNR_DEFAULT = 25.0
#: ``emcopilot.particle_scale.SCALE_SPLIT_DEFAULT``, written out for the same reason (a test
#: keeps the two equal): the pipeline's default for --scale-split
SCALE_SPLIT_DEFAULT = "auto"
#: ``emcopilot.postprocess.COARSE_MIN_SNR_DEFAULT``, written out for the same reason (a test
#: keeps the two equal): the pipeline's default for --coarse-min-snr
COARSE_MIN_SNR_DEFAULT = 25.0


def _add_data_bar(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-bar", choices=("on", "off"), default="on",
                   help="on (default): leave out an instrument data bar at the bottom of an image "
                        "(the strip of text and numbers many microscopes burn in): its characters "
                        "are not particles, and particles cut by it are dropped like those cut by "
                        "the border; off: use every row")


def _add_annotations(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", choices=("on", "off"), default="on",
                   help="on (default): drop the particles on text (panel letters, scale-bar "
                        "labels, instrument lines) and scale bars drawn on an image in its "
                        "darkest or brightest grey; off: keep them")


def _probability_or(*words: str) -> Callable[[str], float | str | None]:
    """An argparse type: a probability in (0, 1) or one of ``words`` ("none" gives None)."""

    def parse(text: str) -> float | str | None:
        t = text.strip().lower()
        if t in words:
            return None if t == "none" else t
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {', '.join(words)} or a number in "
                                             f"(0, 1), got {text!r}") from None
        return _threshold_number(text)

    return parse


# --min-peak and --grow-to: "model" (segment's default) is the value recorded in the checkpoint;
# "auto" (pipeline's default) chooses one against the coarse masks
_min_peak = _probability_or("model", "none")
_pipeline_min_peak = _probability_or("auto", "none")
_grow_to = _probability_or("model", "none", "otsu")
_pipeline_grow_to = _probability_or("auto", "none", "otsu")


def _on_off_or_model(text: str) -> bool | str:
    """An argparse type: "model" (the value recorded in the checkpoint), "on" or "off"."""
    t = text.strip().lower()
    if t not in ("model", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected model, on or off, got {text!r}")
    return t if t == "model" else t == "on"


def _scale_choice(text: str) -> tuple[float, ...]:
    """argparse type: further multiples of the resize factor, comma-separated (e.g. "1.5"), or
    "none"."""
    from emcopilot.particle_scale import check_scale_multiples

    t = text.strip().lower()
    if t == "none":
        return ()
    try:
        return check_scale_multiples([x for x in t.split(",") if x.strip()])
    except InputError as exc:  # argparse reports it as a usage error
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scale_choice_or_model(text: str) -> tuple[float, ...] | str:
    """argparse type: "model" (as recorded in the checkpoint) or :func:`_scale_choice`."""
    return "model" if text.strip().lower() == "model" else _scale_choice(text)


def _min_snr(text: str) -> float | None:
    """argparse type: a signal-to-noise level >= 0 ('none' or 0: keep every particle; as
    ``emcopilot.postprocess.check_min_snr``, without numpy)."""
    import math

    t = text.strip().lower()
    if t == "none":
        return None
    try:
        value = float(t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected none or a number >= 0, got {text!r}")
    return value or None


def _min_snr_or_model(text: str) -> float | str | None:
    """argparse type: "model" (as recorded in the checkpoint) or :func:`_min_snr`."""
    return "model" if text.strip().lower() == "model" else _min_snr(text)


def _threshold(text: str) -> float | str:
    """argparse type: a probability threshold in (0, 1), 'otsu' or 'calibrated'."""
    t = text.strip().lower()
    if t in ("otsu", "calibrated"):
        return t
    try:
        return _threshold_number(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or 'otsu' or 'calibrated'") from None


def _read_manifest(folder: Path) -> dict:
    f = folder / MASKS_MANIFEST
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text()).get("images", {})
    except (ValueError, AttributeError):
        return {}


def _label_files(paths: Sequence[str]) -> list[Path]:
    """Label maps given as files or folders (PNG/TIFF), sorted, de-duplicated."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir()
                            if q.suffix.lower() in (".png", ".tif", ".tiff") and not q.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not files:
        raise InputError(f"no label maps (PNG/TIFF) found in {', '.join(paths)}")
    return list(dict.fromkeys(files))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- commands
def cmd_info(args: argparse.Namespace) -> int:
    from emcopilot import io
    from emcopilot.polarity import describe_polarity

    rows = []
    for path in args.files:
        m = io.read_micrograph(path)
        pol = describe_polarity(io.normalize(m.image))
        img = m.image
        rows.append({
            "file": str(path), "name": m.name, "shape": list(img.shape), "dtype": str(img.dtype),
            "frames": m.n_frames, "pixel_size_nm": m.pixel_size_nm,
            "min": float(img.min()), "max": float(img.max()), "mean": float(img.mean()),
            "polarity": pol["polarity"], "polarity_score": pol["score"],
            "polarity_unsure": pol["unsure"],
            "warnings": m.metadata.get("warnings", []) if isinstance(m.metadata, dict) else [],
        })
    if args.json:
        _print_json(rows if len(rows) > 1 else rows[0])
    else:
        for r in rows:
            px = f"{r['pixel_size_nm']:.4g} nm" if r["pixel_size_nm"] else "unknown (enter it with --pixel-size)"
            print(f"{r['file']}: {r['shape'][1]}x{r['shape'][0]} px, {r['frames']} frame(s), "
                  f"pixel size {px}, polarity {r['polarity']}"
                  + (" (unsure: check by eye, set it with --polarity)" if r["polarity_unsure"]
                     else ""))
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from emcopilot import io
    from emcopilot.data_bar import find_data_bar
    from emcopilot.masking import coarse_mask, resolve_method

    files = io.list_images(args.images)
    out = _out_dir(args.out)
    method = resolve_method(args.method, model_type=args.sam_model)
    if args.method == "auto" and method == "classical":
        print("emcopilot: SAM weights not found; using the classical masker "
              "(see `emcopilot mask --help` for SAM weights)", file=sys.stderr)
    filters = {"intensity_threshold": args.intensity_threshold, "edge_margin": args.edge_margin,
               "min_area": args.min_area, "max_area": args.max_area,
               "min_snr": args.min_snr or 0, "annotations": args.annotations == "on"}
    sam_options = None
    if method == "sam":
        sam_options = {"model_type": args.sam_model, "checkpoint": args.sam_checkpoint,
                       "points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
                       "pred_iou_thresh": args.pred_iou_thresh,
                       "stability_score_thresh": args.stability_score_thresh,
                       "crop_n_layers": args.crop_n_layers, "max_mask_region_area": args.max_area}
    manifest_path = out / MASKS_MANIFEST
    manifest = {"method": method, "filters": filters, "sam": sam_options,
                "data_bar": args.data_bar,
                "classical_preset": args.classical_preset if method == "classical" else None,
                "images": _read_manifest(out)}
    failed: list[str] = []
    with _progress(args, "coarse masks") as bar:
        for i, path in enumerate(files):
            bar(i, len(files), path.name)
            try:
                m = io.read_micrograph(path)
                stem = io.safe_stem(path.name)
            except InputError as exc:
                if not args.keep_going:
                    raise
                failed.append(str(exc))
                continue
            pixel = args.pixel_size or m.pixel_size_nm
            image01 = io.normalize(m.image)
            labels = coarse_mask(image01, method=method, polarity=args.polarity,
                                 filters=filters, sam_options=sam_options,
                                 classical_options={"preset": args.classical_preset},
                                 data_bar=args.data_bar == "on")
            io.write_label_map(out / f"{stem}.png", labels)
            manifest["images"][stem] = {"source": str(path), "pixel_size_nm": pixel,
                                        "particles": int(labels.max()),
                                        "data_bar_row": (find_data_bar(image01)
                                                         if args.data_bar == "on" else None)}
            from emcopilot.atomic import atomic_write_text

            atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
        bar(len(files), len(files), "done")
    for line in failed:
        print(f"emcopilot: skipped: {line}", file=sys.stderr)
    print(f"wrote {len(files) - len(failed)} mask(s) to {out}")
    return 2 if failed else 0


def _mask_items(files: Sequence[Path], pixel_size: float | None):
    """(name, labels, pixel_size_nm) for each label map of ``files`` (from ``_label_files``);
    pixel size from --pixel-size, else from the masks.json `emcopilot mask` wrote beside them."""
    from emcopilot import io

    manifests: dict[Path, dict] = {}
    for f in files:
        folder = f.parent
        if folder not in manifests:
            manifests[folder] = _read_manifest(folder)
        stem = io.safe_stem(f.name)
        px = pixel_size or manifests[folder].get(stem, {}).get("pixel_size_nm")
        yield stem, io.read_label_map(f), px


def cmd_priors(args: argparse.Namespace) -> int:
    from emcopilot.priors import compute_priors

    files = _label_files([args.masks])
    out = _out_dir(args.out)
    with _progress(args, "priors") as bar:
        table = compute_priors(_mask_items(files, args.pixel_size), out,
                               min_area=args.min_area, progress=bar)
    print(f"{len(table)} particles from {len(files)} mask(s); priors written to {out}")
    return 0


def cmd_synth_masks(args: argparse.Namespace) -> int:
    from emcopilot.synthesis import synthesize_from_priors_dir

    priors = _existing_dir(args.priors_dir, "PRIORS_DIR")
    out = _out_dir(args.out)
    with _progress(args, "synthetic masks") as bar:
        comparison = synthesize_from_priors_dir(priors, out, per_mask=args.per_mask, random=args.random,
                                                n_random=args.n_random, seed=args.seed,
                                                max_shift=args.max_shift, attempts=args.attempts,
                                                progress=bar)
    print(comparison.to_string(index=False))
    print(f"synthetic masks written to {out / 'masks'}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from emcopilot.augment import augment_folder

    images = _existing_dir(args.images_dir, "IMAGES_DIR")
    masks = _existing_dir(args.masks, "--masks") if args.masks else None
    out = _out_dir(args.out)
    with _progress(args, "augment") as bar:
        written = augment_folder(images, out, masks_dir=masks, seed=args.seed, progress=bar)
    print(f"wrote {len(written)} augmented image(s) to {out}")
    return 0


def cmd_psd(args: argparse.Namespace) -> int:
    from emcopilot import io
    from emcopilot.analysis import write_psd_report

    files = _label_files(args.masks)
    images = {}
    if args.images:
        for p in io.list_images([args.images]):
            images[io.safe_stem(p.name)] = p
    out = _out_dir(args.out)

    def items():
        for name, labels, px in _mask_items(files, args.pixel_size):
            image01 = None
            if name in images:
                m = io.read_micrograph(images[name])
                px = px or m.pixel_size_nm
                image01 = io.normalize(m.image)
            yield name, labels, px, image01

    with _progress(args, "psd") as bar:
        summary = write_psd_report(items(), out, min_area=args.min_area, progress=bar)
    batch = summary.get("batch", summary)
    unit = batch.get("unit", "px")
    if batch.get("count"):
        print(f"{batch['count']} particles; mean {batch['mean']:.3g} {unit}, D10/D50/D90 "
              f"{batch['d10']:.3g}/{batch['d50']:.3g}/{batch['d90']:.3g} {unit}")
    else:
        print("no particles found")
    print(f"wrote particles.csv, summary.json, psd.png, psd.svg to {out}")
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from emcopilot.training.generator import train_generator

    with _progress(args, "generator") as bar:
        result = train_generator(_existing_dir(args.images, "--images"), _existing_dir(args.masks, "--masks"),
                                 _out_dir(args.out), profile=args.profile, epochs=args.epochs,
                                 batch_size=args.batch_size, image_size=args.image_size, seed=args.seed,
                                 device=args.device, resume=not args.no_resume, progress=bar)
    _print_json(result)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from emcopilot.training.generator import generate_images

    with _progress(args, "generate") as bar:
        written = generate_images(args.generator, _existing_dir(args.masks, "--masks"),
                                  _out_dir(args.out), device=args.device, progress=bar)
    print(f"wrote {len(written)} synthetic image(s) to {args.out}")
    return 0


def cmd_train_segmentor(args: argparse.Namespace) -> int:
    from emcopilot.training.datasets import gather_pairs
    from emcopilot.training.segmentor import train_segmentor

    folders = (_existing_dir(args.images, "--images"), _existing_dir(args.masks, "--masks"), "")
    out = _out_dir(args.out)
    # resized copies with --particle-width, else the folders as they are
    images, masks = gather_pairs([folders],
                                 out / "training_data", particle_diameter_px=args.particle_width)
    with _progress(args, "segmentor") as bar:
        result = train_segmentor(images, masks, out, profile=args.profile, epochs=args.epochs,
                                 batch_size=args.batch_size, image_size=args.image_size, augment=args.augment,
                                 samples_per_epoch=args.samples_per_epoch, base=args.base,
                                 input_polarity="bright" if args.bright_particles else None,
                                 particle_diameter_px=args.particle_width,
                                 seed=args.seed, device=args.device, resume=not args.no_resume, progress=bar)
    _print_json(result)
    return 0


def _model_dir(model: str) -> Path:
    """A checkpoint folder (config.json + model.safetensors) or a weights-registry name."""
    path = Path(model)
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is not a checkpoint folder (no config.json); "
                             "pass OUT/best_miou from `emcopilot train-segmentor`")
        return path
    from emcopilot import weights

    if model not in weights.registry():
        raise InputError(f"--model {model}: no such checkpoint folder or registry name "
                         "(`emcopilot weights list` shows the names)")
    return weights.resolve_weights(model).parent


def cmd_segment(args: argparse.Namespace) -> int:
    from emcopilot import io
    from emcopilot.analysis import write_psd_report
    from emcopilot.inference import Segmentor

    files = io.list_images(args.images)
    out = _out_dir(args.out)
    segmentor = Segmentor.load(_model_dir(args.model), device=args.device)
    results, barred, drawn = [], 0, 0
    with _progress(args, "segment") as bar:
        for i, path in enumerate(files):
            bar(i, len(files), path.name)
            m = io.read_micrograph(path)
            stem = io.safe_stem(path.name)
            image01 = io.normalize(m.image)
            labels, prob, info = segmentor.segment_detail(
                image01, threshold=args.threshold, polarity=args.polarity, scale=args.scale,
                min_peak=args.min_peak, grow_to=args.grow_to, add_coarse=args.add_coarse,
                data_bar=args.data_bar == "on", support=args.support_removal,
                support_check=args.support_check, scale_choice=args.scale_choice,
                min_snr=args.min_snr, scale_split=args.scale_split,
                annotations=args.annotations == "on")
            drawn += info["annotations_dropped"]
            barred += info["data_bar_row"] is not None
            io.write_label_map(out / f"{stem}.png", labels)
            io.write_image(out / "prob" / f"{stem}.png", prob)
            results.append((stem, labels, args.pixel_size or m.pixel_size_nm, image01))
        bar(len(files), len(files), "psd")
        summary = write_psd_report(results, out, min_area=args.min_area)
    batch = summary.get("batch", summary)
    core = segmentor.min_peak if args.min_peak == "model" else args.min_peak
    kept = ("every particle kept" if core is None else
            f"particles with core probability > {core:g} kept (--min-peak none keeps every one)")
    grow = segmentor.grow_to if args.grow_to == "model" else args.grow_to
    if grow is not None:
        kept += (f"; grown to each image's Otsu level" if grow == "otsu" else
                 f"; grown to probability {grow:g}") + " (--grow-to none: not grown)"
    if segmentor.ensemble_size > 1:
        kept += f"; the mean of {segmentor.ensemble_size} segmentors' probabilities"
    added = segmentor.add_coarse if args.add_coarse == "model" else args.add_coarse
    if added:
        kept += ("; plus the classical coarse masker's particles the segmentor missed "
                 "(--add-coarse off: without)")
    reach = segmentor.support_scope(args.support_removal)
    if reach != "none":
        kept += ("; the support removed from " + (
            "every image" if reach == "all" else
            "the images where the classical masker sees particles on a support")
            + " (--support-removal off: never)")
        check = segmentor.support_check if args.support_check == "model" else args.support_check
        if check:
            kept += (", kept only where its particles match the coarse mask at least as well "
                     "as without it (--support-check off: always kept)")
    split_reach = segmentor.split_scope(args.scale_split)
    if split_reach != "none":
        kept += ("; each image's particle width measured with touching coarse particles split, "
                 "on " + ("every image" if split_reach == "all" else
                          "the images where the classical masker sees a support")
                 + " (--scale-split off: not split)")
    multiples = (segmentor.scale_choice if args.scale_choice == "model" else args.scale_choice)
    if multiples:
        kept += ("; each image also segmented at " + ", ".join(f"{m:g}x" for m in multiples)
                 + " its resize factor, the particles matching the coarse mask best kept "
                   "(--scale-choice none: one factor)")
    level = segmentor.min_snr if args.min_snr == "model" else args.min_snr
    if level:
        kept += (f"; particles standing out from their surroundings by at most {level:g} x "
                 "their noise dropped (--min-snr none: kept)")
    if args.annotations == "on":
        kept += (f"; {drawn} particle(s) on drawn text and scale bars dropped (--annotations off: "
                 "kept)")
    if barred:
        kept += (f"; the data bar at the bottom of {barred} image(s) left out (--data-bar off: "
                 "every row)")
    print(f"segmented {len(files)} image(s), {batch.get('count', 0)} particles ({kept}); "
          f"results in {out}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from emcopilot.pipeline import run_pipeline

    with _progress(args, "pipeline") as bar:
        summary = run_pipeline(_existing_dir(args.images_dir, "IMAGES_DIR"), _out_dir(args.out),
                               profile=args.profile, method=args.method, polarity=args.polarity,
                               classical_preset=args.classical_preset,
                               pixel_size_nm=args.pixel_size, per_mask=args.per_mask, seed=args.seed,
                               device=args.device, generator_epochs=args.generator_epochs,
                               segmentor_epochs=args.segmentor_epochs,
                               segmentor_options=({"base": args.segmentor_base}
                                                  if args.segmentor_base else None),
                               segmentor_data=args.segmentor_data,
                               particle_scale=args.particle_scale == "on",
                               min_peak=args.min_peak, segmentor_seeds=args.segmentor_seeds,
                               ensemble=args.ensemble == "on",
                               grow_to=args.grow_to, add_coarse=args.add_coarse == "on",
                               data_bar=args.data_bar == "on",
                               support_removal=args.support_removal,
                               support_check=args.support_check == "on",
                               support_in_training=args.support_in_training == "on",
                               scale_choice=args.scale_choice, min_snr=args.min_snr,
                               coarse_min_snr=args.coarse_min_snr,
                               scale_split=args.scale_split,
                               annotations=args.annotations == "on", progress=bar)
    unsure = summary.get("stages", {}).get("images", {}).get("polarity_unsure") or []
    if unsure:
        print(f"warning: the particle polarity detected for {len(unsure)} image(s) is unsure: "
              f"{', '.join(unsure[:10])}{' ...' if len(unsure) > 10 else ''}. Check them "
              f"(`emcopilot info FILE`); if one polarity holds for the whole set, run again with "
              f"--polarity bright or dark into a new --out folder.", file=sys.stderr)
    empty = summary.get("stages", {}).get("masks", {}).get("no_particles") or []
    if empty:
        print(f"warning: the coarse masker found no particle in {len(empty)} image(s): "
              f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}. No particle width "
              f"could be measured on them (they were segmented at their own pixel scale), and "
              f"the generator, and the segmentor's real pairs, took them as images without "
              f"particles. If they hold particles, run again into a new --out "
              f"folder with another --classical-preset or --method sam, or without them.",
              file=sys.stderr)
    _print_json(summary)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emcopilot.evaluate import evaluate_dirs, write_evaluation_report

    result = evaluate_dirs(_existing_dir(args.pred, "--pred"), _existing_dir(args.truth, "--truth"),
                           truth_format=args.truth_format,
                           prob_dir=_existing_dir(args.prob, "--prob") if args.prob else None,
                           pixel_size_nm=args.pixel_size)
    if args.out:
        write_evaluation_report(result, _out_dir(args.out))
    _print_json(result.get("aggregate", result))
    return 0


def cmd_push_model(args: argparse.Namespace) -> int:
    from emcopilot.weights import push_model

    card = {"material_system": args.material, "imaging_mode": args.imaging_mode,
            "pixel_size_nm": args.pixel_size}
    url = push_model(_existing_dir(args.checkpoint, "CKPT"), args.repo, token=args.token, card=card,
                     private=args.private)
    print(f"uploaded to {url}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from emcopilot import weights

    if args.action == "list":
        for name, entry in weights.registry().items():
            here = "available" if weights.weights_available(name) else "not on this machine"
            print(f"{name:28s} {here:20s} {getattr(entry, 'description', '')}")
    elif args.action == "add":
        if not args.name or not args.file:
            raise InputError("usage: emcopilot weights add NAME FILE")
        print(weights.add_local_weights(args.name, args.file))
    elif args.action == "download":
        if not args.name:
            raise InputError("usage: emcopilot weights download NAME")
        print(weights.resolve_weights(args.name))
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from emcopilot.store import ProjectStore

    store = ProjectStore(args.data)
    if args.action == "create":
        p = store.create_project(args.name, owner=args.owner)
        print(p.id)
    elif args.action == "list":
        for p in store.list_projects(owner=args.owner_filter):
            print(f"{p.id}\t{p.name}\t{p.owner}")
    elif args.action == "add":
        project = store.open_project(args.project)
        for f in args.files:
            path = Path(f)
            if not path.is_file():
                raise InputError(f"{path}: no such file")
            name = args.name or path.name
            rec = project.add_image(name, path.read_bytes(), pixel_size_nm=args.pixel_size)
            print(f"added {rec['stem']}")
    elif args.action == "delete":
        store.delete_project(args.project)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from emcopilot.jobs import run_worker

    run_worker(args.data)
    return 0


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), like every other error of the CLI."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder of training images")
    p.add_argument("--masks", required=True, help="folder of label maps named after the images' stems")
    p.add_argument("--out", required=True, help="output folder: checkpoints (safetensors + config.json), log.jsonl")
    p.add_argument("--profile", choices=("cpu", "paper"), default="cpu",
                   help="cpu: small model, finishes on a laptop CPU; paper: the paper's sizes, for a GPU")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the profile's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the profile's)")
    p.add_argument("--image-size", type=int, help="training crop size in px (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    p.add_argument("--no-resume", action="store_true", help="start afresh instead of resuming from last/")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="emcopilot",
        description="Particle segmentation and size distributions from electron micrographs, without manual labels.")
    parser.add_argument("--version", action="version", version=f"emcopilot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", help="shape, dtype and pixel size of micrographs")
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, TIFF, DM3, DM4, EMD or HSPY files")
    p.add_argument("--json", action="store_true", help="print JSON instead of a line per file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("mask", help="coarse particle masks (SAM or classical) with the Algorithm 1 filters")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the label maps (16-bit PNG named after each image)")
    p.add_argument("--method", choices=("auto", "sam", "classical"), default="auto",
                   help="auto: SAM when its weights are on this machine, else classical (default auto)")
    p.add_argument("--polarity", choices=("auto", "bright", "dark"), default="auto",
                   help="bright particles (HAADF) or dark particles (bright-field); auto detects (default)")
    p.add_argument("--pixel-size", type=_positive, help="pixel size in nm, overriding the file's metadata")
    p.add_argument("--intensity-threshold", type=float, default=60,
                   help="drop regions whose mean intensity (0-255, particle-bright scale) is below this (default 60)")
    p.add_argument("--edge-margin", type=int, default=5,
                   help="drop regions within this many px of the image border (default 5)")
    p.add_argument("--min-area", type=int, default=0, help="drop regions smaller than this, px (default 0)")
    p.add_argument("--max-area", type=int, default=None,
                   help="drop regions larger than this, px (SAM: support regions; default none)")
    p.add_argument("--min-snr", type=_min_snr, default=None, metavar="none|S",
                   help="drop regions whose mean stands out from their surroundings by at most S "
                        "times its noise (contrast x sqrt(area) / pixel noise: blobs of a noisy "
                        "support's texture; see BENCHMARKS.md, stop 28); default none")
    _add_data_bar(p)
    _add_annotations(p)
    p.add_argument("--classical-preset", choices=("auto", "isolated", "supported"), default="auto",
                   help="classical masker settings: isolated (free particles on a flat background), "
                        "supported (small particles on a textured support, e.g. HAADF of catalysts), "
                        "auto (chosen per image; default)")
    p.add_argument("--sam-model", choices=("vit_b", "vit_l", "vit_h"), default="vit_b",
                   help="SAM model size (default vit_b: same accuracy, fastest)")
    p.add_argument("--sam-checkpoint", help="SAM checkpoint file; default: the Hub cache or $EMCOPILOT_WEIGHTS_DIR")
    p.add_argument("--points-per-side", type=int, default=32, help="SAM grid prompts per side (default 32)")
    p.add_argument("--points-per-batch", type=int, default=64, help="SAM prompts per batch (memory; default 64)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.5,
                   help="SAM predicted-IoU threshold (default 0.5; higher drops low-contrast particles)")
    p.add_argument("--stability-score-thresh", type=float, default=0.9,
                   help="SAM stability threshold (default 0.9; lower segments the support)")
    p.add_argument("--crop-n-layers", type=int, default=0, help="SAM crop layers (default 0)")
    p.add_argument("--keep-going", action="store_true",
                   help="skip unreadable images (exit code 2 at the end) instead of stopping at the first")
    _add_common(p)
    p.set_defaults(func=cmd_mask)

    p = sub.add_parser("priors", help="morphology priors (Algorithm 2) from a folder of masks")
    p.add_argument("masks", metavar="MASKS_DIR", help="folder of label maps (e.g. the output of `mask`)")
    p.add_argument("--out", required=True, help="output folder: CSV tables, contours JSON, plots")
    p.add_argument("--pixel-size", type=_positive, help="pixel size in nm (default: from masks.json, else px)")
    p.add_argument("--min-area", type=int, default=10, help="ignore particles smaller than this, px (default 10)")
    _add_common(p)
    p.set_defaults(func=cmd_priors)

    p = sub.add_parser("synth-masks", help="synthetic masks from priors (Algorithm 3) or at random (Algorithm 4)")
    p.add_argument("priors_dir", metavar="PRIORS_DIR", help="output folder of `emcopilot priors`")
    p.add_argument("--out", required=True, help="output folder: masks/, particles.csv, comparison.csv")
    p.add_argument("--per-mask", type=int, default=10, help="synthetic masks per source mask (paper: 10)")
    p.add_argument("--attempts", type=_positive_int, default=1,
                   help="placements tried per particle (default 1: the paper, a particle that "
                        "overlaps or leaves the frame is skipped; e.g. 20 keeps about every "
                        "particle of dense sources, largest first)")
    p.add_argument("--random", action="store_true", help="Algorithm 4: random masks without priors (baseline)")
    p.add_argument("--n-random", type=int, help="number of random masks (default: per-mask x sources)")
    p.add_argument("--max-shift", type=float, default=0.5,
                   help="largest random shift as a fraction of the image size (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_common(p)
    p.set_defaults(func=cmd_synth_masks)

    p = sub.add_parser("augment", help="the 18 noise x contrast variants of Algorithm 6")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images (e.g. synthetic micrographs)")
    p.add_argument("--out", required=True, help="output folder: images/ (and masks/ with --masks)")
    p.add_argument("--masks", help="folder of masks paired with the images; copied alongside each variant")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_common(p)
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("psd", help="particle size distribution report from label maps")
    p.add_argument("masks", nargs="+", metavar="MASKS", help="label map files or folders")
    p.add_argument("--out", required=True, help="output folder: particles.csv, summary.json, psd.png, psd.svg")
    p.add_argument("--pixel-size", type=_positive, help="pixel size in nm (default: masks.json or px)")
    p.add_argument("--images", help="folder of the matching images, for overlays and metadata pixel sizes")
    p.add_argument("--min-area", type=int, default=10, help="ignore particles smaller than this, px (default 10)")
    _add_common(p)
    p.set_defaults(func=cmd_psd)

    p = sub.add_parser("train-generator", help="train the pix2pix mask->image generator (Algorithm 5)")
    _add_train_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_train_generator)

    p = sub.add_parser("generate", help="synthetic micrographs from masks with a trained generator")
    p.add_argument("--generator", required=True, help="generator checkpoint folder (e.g. OUT/best_ssim)")
    p.add_argument("--masks", required=True, help="folder of label maps")
    p.add_argument("--out", required=True, help="output folder for the images (named after the masks)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    _add_common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train-segmentor", help="train the CBAM-UNet++ segmentor (Algorithm 7)")
    _add_train_options(p)
    p.add_argument("--augment", action="store_true", help="apply the 18 Algorithm 6 variants on the fly")
    p.add_argument("--samples-per-epoch", type=int,
                   help="random training crops per epoch (default: the profile's)")
    p.add_argument("--base", type=_width, default=None, metavar="N",
                   help="filters of the net's first level (default: the profile's, cpu 8, paper 32); "
                        "--profile paper --base 16 on a GPU gives a model that segments a 512 px "
                        "image in ~0.5 s on 2 CPU cores (BENCHMARKS.md)")
    p.add_argument("--particle-width", type=_positive, default=None, metavar="PX",
                   help="resize every pair so that its typical particle (from its mask) is PX wide "
                        "(the pipeline uses 32); `segment` then resizes each image the same way")
    p.add_argument("--bright-particles", action="store_true",
                   help="the training images all show bright particles: `segment` then converts "
                        "dark-particle images (--polarity) before the model")
    _add_common(p)
    p.set_defaults(func=cmd_train_segmentor)

    p = sub.add_parser("segment", help="segment micrographs with a trained segmentor, plus the PSD report")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    p.add_argument("--model", required=True, help="segmentor checkpoint folder, or a registry name")
    p.add_argument("--out", required=True, help="output folder: label maps, prob/, PSD report")
    p.add_argument("--pixel-size", type=_positive, help="pixel size in nm, overriding metadata")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="probability threshold in (0, 1) (default 0.5), 'otsu' (per image) or "
                        "'calibrated' (the one with the best Dice on the model's validation "
                        "pairs, recorded at training)")
    p.add_argument("--min-area", type=int, default=10, help="ignore particles smaller than this, px (default 10)")
    p.add_argument("--polarity", choices=("auto", "bright", "dark"), default="auto",
                   help="particle polarity of the images, for a model trained on bright-particle "
                        "images (the pipeline's and the app's): auto (default) = detected per image")
    p.add_argument("--min-peak", type=_min_peak, default="model", metavar="P",
                   help="keep only particles whose highest probability exceeds P (a confident "
                        "core: fewer false particles, but fewer particle pixels; see "
                        "BENCHMARKS.md); 'none' = every particle; default: the value recorded "
                        "in the model (the pipeline chooses one), else none")
    p.add_argument("--grow-to", type=_grow_to, default="model", metavar="G",
                   help="grow each particle out to probability G ('otsu': each image's Otsu "
                        "level) without making new ones (larger, truer outlines where the model "
                        "is under-confident; see BENCHMARKS.md); 'none' = no growth; default: "
                        "the value recorded in the model (the pipeline chooses), else none")
    p.add_argument("--add-coarse", type=_on_off_or_model, default="model", metavar="model|on|off",
                   help="on: also keep the particles of the classical coarse masker (with the "
                        f"model's preset) that the segmentor missed ({ADD_COARSE_RULE}; see "
                        "BENCHMARKS.md); default: as recorded in the model (the pipeline "
                        "records on), else off")
    p.add_argument("--support-removal", choices=("model", "auto", "on", "off"), default="model",
                   help=f"take a textured support out of each image before the segmentor sees "
                        f"it ({SUPPORT_RULE}); auto: as the classical preset the model was "
                        "trained with says (isolated: none; supported: all; auto: the images "
                        "where the classical masker picks its supported preset); default: as "
                        "recorded in the model (the pipeline records auto), else off")
    p.add_argument("--support-check", type=_on_off_or_model, default="model",
                   metavar="model|on|off",
                   help="on: segment each image whose support is removed without the removal "
                        "too and keep the particles that match the classical coarse mask better "
                        "(object F1; see BENCHMARKS.md); default: as recorded in the model, "
                        "else off")
    p.add_argument("--scale-choice", type=_scale_choice_or_model, default="model",
                   metavar="model|none|M[,M...]",
                   help="also segment each image at these multiples of its resize factor (e.g. "
                        "1.5) and keep, per image, the particles that match the classical "
                        "coarse mask best (object F1; see BENCHMARKS.md, stop 26; each multiple "
                        "costs M^2 x the time); default: as recorded in the model, else none")
    p.add_argument("--min-snr", type=_min_snr_or_model, default="model", metavar="model|none|S",
                   help="drop the particles whose mean stands out from their surroundings by at "
                        "most S times its noise (contrast x sqrt(area) / pixel noise: blobs of a "
                        "noisy support; see BENCHMARKS.md, stop 28); none: keep every particle; "
                        "default: as recorded in the model (the pipeline records "
                        f"{MIN_SNR_DEFAULT:g}), else none")
    p.add_argument("--scale-split", choices=("model", "auto", "on", "off"), default="model",
                   help="split touching particles of the classical coarse mask before measuring "
                        "the particle width that sets each image's resize factor (models trained "
                        "at a common particle width; see BENCHMARKS.md, stop 30); auto: on the "
                        "images --support-removal auto reaches; default: as recorded in the "
                        "model, else off")
    _add_data_bar(p)
    _add_annotations(p)
    p.add_argument("--scale", type=_positive, default=None,
                   help="resize factor applied before the model (default: 1, or for a model "
                        "trained at a common particle width, measured per image)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    _add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("pipeline", help="every stage with no labels: masks -> ... -> segmentation -> PSD")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of micrographs")
    p.add_argument("--out", required=True, help="output folder; running again resumes where it stopped")
    p.add_argument("--profile", choices=("cpu", "paper"), default="cpu", help="model sizes/epochs (default cpu)")
    p.add_argument("--method", choices=("auto", "sam", "classical"), default="auto", help="coarse masker")
    p.add_argument("--polarity", choices=("auto", "bright", "dark"), default="auto", help="particle polarity")
    p.add_argument("--classical-preset", choices=("auto", "isolated", "supported"), default="auto",
                   help="classical masker settings when SAM is not used (see `emcopilot mask --help`)")
    p.add_argument("--pixel-size", type=_positive, help="pixel size in nm, overriding metadata")
    p.add_argument("--per-mask", type=int, default=None, help="synthetic masks per source (default: profile's)")
    p.add_argument("--generator-epochs", type=int, help="override the profile's generator epochs")
    p.add_argument("--segmentor-epochs", type=int, help="override the profile's segmentor epochs")
    p.add_argument("--segmentor-base", type=_width, default=None, metavar="N",
                   help="the segmentor's width (default: the profile's, cpu 8, paper 32); with "
                        "--profile paper on a GPU, 16 keeps CPU segmentation under a second per "
                        "512 px image (see `train-segmentor --base`)")
    p.add_argument("--segmentor-data", choices=("synthetic+real", "synthetic"), default="synthetic+real",
                   help="what the segmentor trains on: the generated pairs plus the real images "
                        "with their coarse masks as noisy labels (default; measured better, see "
                        "BENCHMARKS.md), or the generated pairs only (the paper)")
    p.add_argument("--particle-scale", choices=("on", "off"), default="on",
                   help="on (default): train and run the segmentor with every image resized so "
                        "that its typical particle (measured on its coarse or synthetic mask) is "
                        "32 px wide; off: each micrograph's own pixel scale")
    p.add_argument("--min-peak", type=_pipeline_min_peak, default="auto", metavar="auto|none|P",
                   help="keep only particles whose highest probability exceeds P; auto "
                        "(default): the P whose particles, less the faint ones --min-snr "
                        "drops, best match the coarse masks; none: every particle. The value is "
                        "recorded in the segmentor for `segment`")
    p.add_argument("--grow-to", type=_pipeline_grow_to, default="auto", metavar="auto|none|otsu|G",
                   help="grow each particle out to a lower probability without making new ones; "
                        "auto (default): to each image's Otsu level when that matches the coarse "
                        "masks better, else not; none: never; otsu or G: always. Recorded in "
                        "the segmentor for `segment`")
    p.add_argument("--segmentor-seeds", type=_positive_int, default=2, metavar="N",
                   help="train N segmentors (seeds SEED..SEED+N-1) and keep the one whose "
                        "particles best match the coarse masks, in OUT/segmentor/selected "
                        "(default 2; 1: one segmentor in OUT/segmentor, half the time)")
    p.add_argument("--ensemble", choices=("on", "off"), default="on",
                   help="with several segmentor seeds, also try the mean of their probability "
                        "maps and keep it when it best matches the coarse masks (the kept model "
                        "then runs every segmentor on each image); off: keep one segmentor")
    p.add_argument("--add-coarse", choices=("on", "off"), default="on",
                   help="on (default): the final particles also take the coarse masks' "
                        f"particles that the segmentor missed ({ADD_COARSE_RULE}; measured in "
                        "BENCHMARKS.md); recorded in the segmentor for `segment`")
    p.add_argument("--support-removal", choices=("auto", "on", "off"), default="auto",
                   help=f"take a textured support out of each real image before the segmentor "
                        f"sees it ({SUPPORT_RULE}); auto (default): as --classical-preset says "
                        "(isolated: none; supported: every image; auto: the images where the "
                        "classical masker picks its supported preset); on: every image; off: "
                        "none. Recorded in the segmentor for `segment`")
    p.add_argument("--support-check", choices=("on", "off"),
                   default="on" if SUPPORT_CHECK_DEFAULT else "off",
                   help="on: segment each image whose support is removed without the removal "
                        "too and keep the particles that match its coarse mask better (object "
                        f"F1; see BENCHMARKS.md); off: keep the removal (default: "
                        f"{'on' if SUPPORT_CHECK_DEFAULT else 'off'}). Recorded in the "
                        "segmentor for `segment`")
    p.add_argument("--support-in-training", choices=("on", "off"), default="off",
                   help="on: the generator (and the segmentor's real pairs) learn from the "
                        "images --support-removal reaches with their support taken out, as the "
                        "segmentor will see them; off (default, measured better on the "
                        "catalysts): from the images as they are")
    p.add_argument("--scale-choice", type=_scale_choice, default=(), metavar="none|M[,M...]",
                   help="also segment each image at these multiples of its resize factor (e.g. "
                        "1.5) and keep, per image, the particles whose own particles match its "
                        "coarse mask best (object F1; BENCHMARKS.md, stop 26); default none. "
                        "Each multiple M costs M^2 x the segment stage's time. Recorded in the "
                        "segmentor for `segment`")
    p.add_argument("--min-snr", type=_min_snr, default=MIN_SNR_DEFAULT, metavar="none|S",
                   help="last, drop the particles whose mean stands out from their "
                        "surroundings by at most S times its noise (contrast x sqrt(area) / "
                        "pixel noise: blobs of a noisy support's texture; see BENCHMARKS.md, "
                        f"stop 28); default {MIN_SNR_DEFAULT:g}; none: keep every particle. "
                        "Recorded in the segmentor for `segment`")
    p.add_argument("--coarse-min-snr", type=_min_snr, default=COARSE_MIN_SNR_DEFAULT,
                   metavar="none|S",
                   help="the same test on the coarse masks (as `emcopilot mask --min-snr`), so "
                        "the priors, the generator and the segmentor learn without the faint "
                        f"blobs; default {COARSE_MIN_SNR_DEFAULT:g}; none: keep them (see "
                        "BENCHMARKS.md, stops 29-30)")
    p.add_argument("--scale-split", choices=("auto", "on", "off"), default=SCALE_SPLIT_DEFAULT,
                   help="in the segment stage, split touching particles of each image's coarse "
                        "mask before measuring the particle width that sets its resize factor: "
                        "auto = on the images --support-removal auto reaches (a support seen), "
                        f"on = every image; default {SCALE_SPLIT_DEFAULT} (see BENCHMARKS.md, "
                        "stop 30). Recorded in the segmentor for `segment`")
    _add_data_bar(p)
    _add_annotations(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    _add_common(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("evaluate", help="compare predicted label maps with ground truth")
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--truth", required=True, help="folder of ground truth (matched by file stem)")
    p.add_argument("--truth-format", default="instance",
                   help="instance (label maps), binary, class:N (pixels equal to N), or yolo (box txt files)")
    p.add_argument("--prob", help="folder of probability maps (8-bit PNG) for AUC and AP")
    p.add_argument("--pixel-size", type=_positive, help="pixel size in nm for size errors")
    p.add_argument("--out", help="write evaluation.json and per_image.csv here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("push-model", help="upload a trained model with a model card to the Hugging Face Hub")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--repo", required=True, help="Hub repository id, e.g. mylab/emcopilot-ptsn-haadf")
    p.add_argument("--material", default="", help="material system, e.g. 'PtSn on Al2O3'")
    p.add_argument("--imaging-mode", default="", help="e.g. HAADF-STEM or BF-TEM")
    p.add_argument("--pixel-size", type=_positive, help="pixel size of the training images, nm")
    p.add_argument("--token", default=os.environ.get("HF_TOKEN"), help="Hub token (default $HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create a private repository")
    p.set_defaults(func=cmd_push_model)

    p = sub.add_parser("weights", help="list, add or download pretrained weights")
    p.add_argument("action", choices=("list", "add", "download"))
    p.add_argument("name", nargs="?", help="registry name, e.g. sam_vit_b")
    p.add_argument("file", nargs="?", help="with add: a weights file you downloaded elsewhere")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("project", help="projects in the data folder (the store the web app uses)")
    p.add_argument("action", choices=("create", "list", "add", "delete"))
    p.add_argument("project", nargs="?", help="project id (add, delete)")
    p.add_argument("files", nargs="*", help="with add: micrograph files")
    p.add_argument("--name", help="with create: the project name; with add: the image name to store")
    p.add_argument("--owner", default="local", help="owner user id (default local)")
    p.add_argument("--owner-filter", default=None, help="with list: only this owner's projects")
    p.add_argument("--pixel-size", type=_positive, help="with add: pixel size in nm")
    p.add_argument("--data", default=None, help="data folder (default $EMCOPILOT_DATA)")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("worker", help="run a job-queue worker (one job at a time)")
    p.add_argument("--data", default=None, help="data folder (default $EMCOPILOT_DATA)")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "project" and args.action == "create" and not args.name:
        if args.project:
            args.name = args.project
        else:
            parser.error("project create needs --name NAME")
    debug = os.environ.get("EMCOPILOT_DEBUG") == "1"
    new_out = _folders_to_make(getattr(args, "out", None))
    code = 1
    try:
        code = _run(args, debug)
        return code
    finally:
        if code != 0:  # a failed command leaves no empty --out behind (nothing written is lost)
            _remove_empty(new_out)


def _folders_to_make(path: str | None) -> list[Path]:
    """The folders that making ``path`` would create, deepest first."""
    new: list[Path] = []
    p = Path(path).absolute() if path else None
    while p is not None and not p.exists() and p != p.parent:
        new.append(p)
        p = p.parent
    return new


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            if folder.exists():
                return


def _run(args: argparse.Namespace, debug: bool) -> int:
    """Run the command; errors become one line on stderr and an exit code."""
    try:
        return int(args.func(args) or 0)
    except EMCopilotError as exc:
        if debug:
            raise
        print(f"emcopilot: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("emcopilot: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:  # unreadable paths, bad values the library rejected
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"emcopilot: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the user sees one line, never a traceback
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"emcopilot: internal error: {type(exc).__name__}: {msg} "
              "(run again with EMCOPILOT_DEBUG=1 for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
