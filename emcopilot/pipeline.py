"""The whole self-supervised pipeline on a folder of micrographs, with no manual labels.

Stages (each writes under OUT and is skipped when its outputs are already there, so running the
same command again resumes where it stopped; the two training stages resume from their last
checkpoint):

1. ``images``      the micrographs as 8-bit grey PNGs, normalised and in the bright-particle
                   convention (dark-particle images inverted): one generator, one polarity
2. ``masks``       coarse masks (SAM or classical) + Algorithm 1 filters
3. ``priors``      morphology priors (Algorithm 2)
4. ``synth``       synthetic masks from the priors (Algorithm 3)
5. ``generator``   pix2pix generator trained on (coarse mask, image) pairs (Algorithm 5)
6. ``generate``    synthetic micrographs for the synthetic masks
7. ``segmentor``   CBAM-UNet++ trained on the synthetic pairs with the 18 Algorithm 6 variants
                   applied on the fly (equivalent in distribution to writing all 18 copies),
                   by default together with the real images and their coarse masks
                   (``segmentor_data``)
8. ``segment``     segmentation of the input micrographs + PSD report
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from emcopilot.atomic import atomic_write_text
from emcopilot.errors import InputError
from emcopilot.particle_scale import SCALE_SPLIT_DEFAULT
from emcopilot.postprocess import COARSE_MIN_SNR_DEFAULT, MIN_SNR_DEFAULT, check_min_snr
from emcopilot.support import SUPPORT_CHECK_DEFAULT

Progress = Callable[[int, int, str], None]

STAGES = ("images", "masks", "priors", "synth", "generator", "generate", "segmentor", "segment")

#: Synthetic masks per source mask, per profile (paper: 10 per source).
PER_MASK = {"cpu": 3, "paper": 10}
SEGMENTOR_DATA = ("synthetic", "synthetic+real")


def _state_path(out: Path) -> Path:
    return out / "pipeline.json"


def segmentor_dir(out: Path, recorded: str) -> Path:
    """A trained segmentor's folder from the segmentor stage's record of it. Records are relative
    to the run folder; one from before that (absolute, or relative to where that run was
    started) names the same place under this run folder's ``segmentor/`` when that exists, so a
    copied or moved run segments with its own checkpoints, as a new record does."""
    path = Path(recorded)
    if not path.is_absolute() and (out / path).is_dir():
        return out / path
    if "segmentor" in path.parts:
        last = len(path.parts) - 1 - path.parts[::-1].index("segmentor")
        own = out.joinpath(*path.parts[last:])
        if own.is_dir():
            return own
    return path


def load_state(out: Path) -> dict:
    """The pipeline's record of finished stages (``{"stages": {name: {...}}}``)."""
    f = _state_path(out)
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except ValueError:
            pass
    return {"stages": {}}


def _mark_done(out: Path, state: dict, stage: str, **info) -> None:
    state["stages"][stage] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    atomic_write_text(_state_path(out), json.dumps(state, indent=2, default=str))


def run_pipeline(images_dir: str | Path, out_dir: str | Path, *, profile: str = "cpu",
                 method: str = "auto", polarity: str = "auto", pixel_size_nm: float | None = None,
                 classical_preset: str = "auto",
                 per_mask: int | None = None, seed: int = 0, device: str = "auto",
                 generator_epochs: int | None = None, segmentor_epochs: int | None = None,
                 generator_options: dict | None = None, segmentor_options: dict | None = None,
                 segmentor_data: str = "synthetic+real", particle_scale: bool = True,
                 min_peak: float | str | None = "auto", segmentor_seeds: int = 2,
                 grow_to: float | str | None = "auto", ensemble: bool = True,
                 add_coarse: bool = True, data_bar: bool = True, support_removal: str = "auto",
                 support_check: bool = SUPPORT_CHECK_DEFAULT, support_in_training: bool = False,
                 scale_choice: Sequence[float] = (), min_snr: float | None = MIN_SNR_DEFAULT,
                 coarse_min_snr: float | None = COARSE_MIN_SNR_DEFAULT,
                 scale_split: str = SCALE_SPLIT_DEFAULT, annotations: bool = True,
                 progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Run (or resume) every stage on the micrographs in ``images_dir``; returns the PSD summary
    plus the stages' records. ``progress(stage_index, n_stages, message)``.

    ``generator_options`` / ``segmentor_options`` are passed to ``train_generator`` /
    ``train_segmentor`` (e.g. ``{"base": 8, "image_size": 128}``) on top of the profile.

    ``segmentor_data``: ``"synthetic+real"`` (default: the generated pairs plus the real images
    with their coarse masks as noisy labels; still no manual label) or ``"synthetic"`` (the
    paper: only generated pairs). Measured on EMPS (BENCHMARKS.md) the first is better on every
    metric at the cpu profile's budget.

    ``particle_scale``: train and run the segmentor at a common particle width
    (:mod:`emcopilot.particle_scale`: every pair and every image resized so that the typical
    particle of its mask, coarse or synthetic, is ``DEFAULT_DIAMETER_PX`` wide), instead of each
    micrograph's own pixel scale.

    ``min_peak``: keep only particles whose highest probability exceeds it
    (:func:`emcopilot.postprocess.prob_to_instances`); ``"auto"`` (default) picks it without
    labels, as the value whose particles best match the coarse masks
    (:func:`emcopilot.postprocess.select_min_peak`; the particles scored after the ``min_snr``
    filter below, as the output keeps them), and records it in the segmentor checkpoint
    so that ``emcopilot segment`` and the app use it too; None keeps every particle.
    Measured on EMPS: fewer false particles, a better count, fewer particle pixels.

    ``grow_to``: grow each particle out to a lower probability level without making new ones
    (:func:`emcopilot.postprocess.grow_instances`): ``"auto"`` (default) grows to each image's
    Otsu level only when that matches the coarse masks better (object F1,
    :func:`emcopilot.postprocess.select_growth`; recorded in the checkpoint like ``min_peak``);
    None never grows; ``"otsu"`` or a probability always grows to it. The segmentor's
    probabilities sit low on real images, so particles cut at 0.5 come out small: measured on
    EMPS (BENCHMARKS.md, run 13), growth to Otsu raised Dice on each of five segmentors and
    brought the size distribution closer on four, with object F1 moving -0.017 to +0.023; the
    automatic choice took it on one (where Dice, F1 and KS all improved) and left it on four,
    two of which it would have helped (the coarse masks it compares with are undersized too).
    On the catalysts, where particles come out too large, it is left off.

    ``segmentor_seeds``: train that many segmentors (seeds ``seed``, ``seed + 1``, ...; each in
    ``segmentor/seed<S>/``) and keep the one whose particles best match the coarse masks (object
    F1, no manual label), copied to ``segmentor/selected/``. The segmentor's draw moves its
    accuracy a lot, and on EMPS the agreement with the coarse masks ranked five segmentors
    exactly as the manual labels did, and the one kept beat the classical masker on Dice and
    count error where one of the two draws alone did not (BENCHMARKS.md). Default 2; 1: one
    segmentor in ``segmentor/`` (half the segmentor stage's time).

    ``ensemble``: with several segmentors, also score the mean of their probability maps
    (``segmentation/candidates/mean``; its checkpoint, every segmentor in one folder, in
    ``segmentor/mean``) and keep it when it matches the coarse masks best (ties: a single
    segmentor, which runs faster). On EMPS (BENCHMARKS.md, runs 14-15) the rule took the mean
    on both runs, and it was the better choice by the labels on F1 and Dice both times; the
    kept model then runs every segmentor on each image (``emcopilot segment`` takes that much
    longer).

    ``add_coarse``: the final particles also take the coarse masks' particles that the kept
    segmentor missed (:func:`emcopilot.postprocess.add_coarse_particles`: at most 10 % of the
    particle covered by the segmentor's particles, at least half the image's median coarse
    particle area, the segmentor's mean probability over it at least the image's Otsu level,
    unless the segmentor found no particle in the image);
    recorded in the checkpoint, so ``emcopilot segment`` adds the classical
    masker's missed particles too. The segmentor, trained on synthetic pairs, misses dense
    films whose particles the coarse masker finds: on EMPS (BENCHMARKS.md, "coarse particles
    the segmentor missed") this raised object F1 (+0.01 to +0.07) and Dice (+0.01 to +0.07)
    over the segmentor's own particles on three runs and on the 366 images of the train split,
    and raised the mean relative count error (more particles on images with a few large
    ones).

    ``data_bar``: leave out an instrument data bar at the bottom of an image
    (:func:`emcopilot.data_bar.find_data_bar`) when detecting polarity, masking and segmenting;
    the images stage records each bar's first row (``data_bar_row``).

    ``annotations``: drop the particles on text and scale bars drawn on an image
    (:mod:`emcopilot.annotations`) from its coarse mask and from the output (and score the
    segment stage's choices after that drop); the masks and segment stages record the setting
    and the segment stage how many output particles it dropped (``annotations_dropped``).

    ``support_removal``: before the segmentor sees a real image, take a textured support out of
    it (:mod:`emcopilot.support`: a white top-hat at the particle scale): ``"auto"`` (default)
    as ``classical_preset`` says (``"isolated"``: never; ``"supported"``: every image;
    ``"auto"``: the images where the masker picks its "supported" preset), ``"on"`` every
    image, ``"off"`` none; recorded in the checkpoint, so ``emcopilot segment`` and the app do
    the same. A mask does not say what lies under the particles, so the generator paints the
    support wherever it likes, and on the catalysts the segmentor took the support's bright
    grains for particles and missed small particles on them; measured on run 19's catalysts
    (BENCHMARKS.md, stop 18) "auto" raised box F1 0.29 -> 0.37 and cut the mean count error
    0.83 -> 0.59; on the models of a second whole run (run 24) it left box F1 at 0.26 and cut
    the median count error 0.74 -> 0.55 at the cost of precision and KS. On EMPS the per-image
    judgement misfires (dense films of free particles look "supported"), which is why
    "isolated" turns it off.

    ``support_check``: segment each image whose support is removed without the removal too,
    and keep the particles that match its coarse mask better
    (:func:`emcopilot.support.removal_kept`; the map kept goes in ``segmentation/prob``, the
    images segmented without it are listed in the segment record as
    ``support_removal_dropped``; the images whose support was removed are listed as
    ``support_removed`` in any case); recorded in the checkpoint, so ``emcopilot segment`` and the
    app do the same (:attr:`emcopilot.inference.Segmentor.support_check`). Off by default: on
    run 26's catalyst models (BENCHMARKS.md, stop 24) it raised box F1 0.285 -> 0.303 and cut
    the mean count error 1.10 -> 0.72 (Cu_silica1: 387 particles for 30 boxes -> 13), but it
    also dropped the removal from images under-counted already, so the median count error and
    KS got worse (0.52 -> 0.53, 0.18 -> 0.20).

    ``support_in_training`` (default False): also give the generator (and, with
    ``segmentor_data`` "synthetic+real", the segmentor) the images support removal reaches
    with their support taken out (:func:`emcopilot.support.write_support_removed`, into
    ``images_support_removed/``), so the synthetic micrographs look like what the segmentor
    will see. Measured on the catalysts (BENCHMARKS.md, stop 19: one whole run each way) it
    lost box F1 (0.37 -> 0.30) and KS while the count errors moved either way, so it is off by
    default: the generator learns from the images as they are.

    ``scale_choice`` (default none): further multiples of each image's resize factor (e.g.
    ``(1.5,)``); the kept segmentor also segments every image at them and keeps, per image, the
    particles whose own particles match its coarse mask best
    (:meth:`emcopilot.inference.Segmentor.segment_detail`, which then makes the final particles
    with the run's other choices; the multiples kept are listed in the segment record as
    ``scale_multiples``); recorded in the checkpoint for ``emcopilot segment`` and the app. Off
    by default: measured with one run's segmentor only (BENCHMARKS.md, stop 26), and each
    multiple M costs M^2 x the segment stage's time.

    ``min_snr`` (default :data:`emcopilot.postprocess.MIN_SNR_DEFAULT`; None or 0: off): last,
    drop the particles that stand out from their surroundings by at most that many times their
    noise (:func:`emcopilot.postprocess.drop_faint_particles`: blobs of a noisy support's
    texture); the number dropped is in the segment record as ``faint_dropped``; recorded in the
    checkpoint for ``emcopilot segment`` and the app. Measured in BENCHMARKS.md ("Stop 28:
    faint particles").

    ``coarse_min_snr`` (default :data:`emcopilot.postprocess.COARSE_MIN_SNR_DEFAULT`; None or
    0: off): the same test on the coarse masks, as their filter
    (:func:`emcopilot.masking.filters.filter_regions`), so the priors, the generator and the
    segmentor learn without the faint blobs; recorded in the masks record. Measured in
    BENCHMARKS.md ("Stop 29: faint particles taken out of the coarse masks too" and "Stop 30",
    where it became the default).

    ``scale_split`` ("auto", "on" or "off"; default
    :data:`emcopilot.particle_scale.SCALE_SPLIT_DEFAULT`, "auto"): in the segment stage, split
    the touching particles of each image's coarse mask before measuring the typical width that
    sets its resize factor (:func:`emcopilot.particle_scale.split_touching`): "auto" on the
    images support removal's "auto" reaches (the classical masker judges them to show a
    support), "on" every image. The images it reaches are listed in the segment record as
    ``scale_split``; recorded in the checkpoint for ``emcopilot segment`` and the app. Measured
    in BENCHMARKS.md ("Stop 30")."""
    from emcopilot import io

    images_dir, out = Path(images_dir), Path(out_dir)
    generator_options = dict(generator_options or {})
    segmentor_options = dict(segmentor_options or {})
    out.mkdir(parents=True, exist_ok=True)
    if segmentor_data not in SEGMENTOR_DATA:
        raise InputError(f"unknown segmentor data {segmentor_data!r}; choose one of "
                         f"{', '.join(SEGMENTOR_DATA)}")
    if not (min_peak is None or min_peak == "auto"
            or (isinstance(min_peak, (int, float)) and 0 < min_peak < 1)):
        raise InputError(f"min_peak must be 'auto', None or a probability in (0, 1), "
                         f"got {min_peak!r}")
    if grow_to != "auto":
        from emcopilot.postprocess import check_grow_to

        grow_to = check_grow_to(grow_to)
    if not (isinstance(segmentor_seeds, int) and segmentor_seeds >= 1):
        raise InputError(f"segmentor_seeds must be a whole number >= 1, got {segmentor_seeds!r}")
    from emcopilot.support import resolve_support_mode

    support_removal = resolve_support_mode(support_removal)
    from emcopilot.particle_scale import check_scale_multiples

    scale_choice = check_scale_multiples(scale_choice)
    min_snr = check_min_snr(min_snr)
    coarse_min_snr = check_min_snr(coarse_min_snr)
    from emcopilot.particle_scale import check_scale_split

    scale_split = check_scale_split(scale_split)
    if profile not in PER_MASK:
        raise InputError(f"unknown profile {profile!r}; choose one of {', '.join(PER_MASK)}")
    per_mask = per_mask or PER_MASK[profile]
    state = load_state(out)
    done = state["stages"]
    report = progress or (lambda *_: None)
    stopped = should_stop or (lambda: False)

    files = io.list_images([images_dir])
    img_dir, mask_dir = out / "images", out / "coarse_masks"
    priors_dir, synth_dir = out / "priors", out / "synthetic"
    gen_dir, seg_dir, result_dir = out / "generator", out / "segmentor", out / "segmentation"

    def step(i: int, name: str) -> bool:
        report(i, len(STAGES), name)
        return name not in done

    def within(i: int, name: str) -> Progress:
        """Progress inside stage ``i``, shown in the stage's message."""
        return lambda d, t, m="": report(i, len(STAGES), f"{name} {d}/{t} {m}".strip())

    # 1. images: normalised 8-bit copies with bright particles, the one image set every later
    #    stage reads. A mask->image generator is conditioned on the mask alone, so it cannot
    #    learn from a set that mixes bright- and dark-particle images which polarity to paint.
    if step(0, "images"):
        from emcopilot.polarity import describe_polarity
        from emcopilot.data_bar import find_data_bar

        meta, unsure = {}, []
        for path in files:
            m = io.read_micrograph(path)
            stem = io.safe_stem(path.name)
            image01 = io.normalize(m.image)
            meta[stem] = {"source": str(path), "pixel_size_nm": pixel_size_nm or m.pixel_size_nm}
            top = find_data_bar(image01) if data_bar else None
            meta[stem]["data_bar_row"] = top
            if polarity == "auto":
                detected = describe_polarity(image01)
                pol = detected["polarity"]
                meta[stem]["polarity_score"] = detected["score"]
                if detected["unsure"]:
                    unsure.append(stem)
            else:
                pol = polarity
            meta[stem]["polarity"] = pol
            io.write_image(img_dir / f"{stem}.png", io.bright_particles(image01, pol))
        # images whose detected polarity is unsure: worth a look (`emcopilot info`), and a run
        # with --polarity where a whole set shares one
        _mark_done(out, state, "images", count=len(meta), polarity_unsure=unsure,
                   data_bar=bool(data_bar),
                   data_bars=sum(v["data_bar_row"] is not None for v in meta.values()),
                   images=meta)
    meta = done["images"]["images"]

    # 2. coarse masks
    if step(1, "masks"):
        from emcopilot.masking import coarse_mask, resolve_method

        resolved = resolve_method(method)
        # images where the masker found nothing: no particle width to bring to the trained one,
        # and a pair that says "no particle here" to the generator and the segmentor
        empty = []
        for k, stem in enumerate(meta):
            report(1, len(STAGES), f"masks {k}/{len(meta)}")
            target = mask_dir / f"{stem}.png"
            if target.exists():  # made by an interrupted earlier run
                labels = io.read_label_map(target)
            else:
                image01 = io.normalize(io.read_micrograph(img_dir / f"{stem}.png").image)
                labels = coarse_mask(image01, method=resolved, polarity="bright",
                                     classical_options={"preset": classical_preset},
                                     filters={"min_snr": coarse_min_snr,
                                              "annotations": bool(annotations)},
                                     data_bar=data_bar)
                io.write_label_map(target, labels)
            if not labels.any():
                empty.append(stem)
        _mark_done(out, state, "masks", method=resolved, classical_preset=classical_preset,
                   coarse_min_snr=coarse_min_snr, annotations=bool(annotations),
                   no_particles=empty)

    # 3. priors
    if step(2, "priors"):
        from emcopilot.priors import compute_priors

        items = ((stem, io.read_label_map(mask_dir / f"{stem}.png"), meta[stem]["pixel_size_nm"])
                 for stem in meta)
        table = compute_priors(items, priors_dir, progress=within(2, "priors"))
        if len(table) == 0:
            raise InputError("the coarse masks contain no particles: check the polarity and the "
                             "intensity threshold, or try --method sam")
        _mark_done(out, state, "priors", particles=len(table))

    # 4. synthetic masks
    if step(3, "synth"):
        from emcopilot.synthesis import synthesize_from_priors_dir

        synthesize_from_priors_dir(priors_dir, synth_dir, per_mask=per_mask, seed=seed,
                                   progress=within(3, "synth"))
        _mark_done(out, state, "synth", per_mask=per_mask)

    # 5. generator (resumes from its last checkpoint by itself), on the real images as the
    #    segmentor will see them: with the support taken out where support removal reaches
    if step(4, "generator"):
        from emcopilot.support import scope, write_support_removed
        from emcopilot.training.generator import train_generator

        reach = scope(support_removal, classical_preset) if support_in_training else "none"
        train_dir, removed = img_dir, []
        if reach != "none":
            train_dir = out / "images_support_removed"
            removed = write_support_removed(
                img_dir, mask_dir, train_dir, reach,
                data_bar_rows={k: v.get("data_bar_row") for k, v in meta.items()},
                progress=within(4, "support removal"))
        result = train_generator(train_dir, mask_dir, gen_dir, profile=profile, epochs=generator_epochs,
                                 seed=seed, device=device, resume=True, should_stop=should_stop,
                                 progress=within(4, "generator epoch"), **generator_options)
        if stopped():
            return {"stopped": "generator", "stages": done}
        _mark_done(out, state, "generator", result=result, training_images=train_dir.name,
                   support_removed=removed)
    train_dir = out / done["generator"].get("training_images", img_dir.name)

    # 6. synthetic images
    if step(5, "generate"):
        from emcopilot.training.generator import generate_images

        ckpt = gen_dir / "best_ssim"
        generate_images(ckpt if ckpt.is_dir() else gen_dir / "last", synth_dir / "masks",
                        synth_dir / "images", device=device, progress=within(5, "generate"))
        _mark_done(out, state, "generate")

    # 7. segmentor on synthetic pairs, Algorithm 6 variants on the fly
    if step(6, "segmentor"):
        from emcopilot.particle_scale import DEFAULT_DIAMETER_PX
        from emcopilot.training.datasets import gather_pairs
        from emcopilot.training.segmentor import train_segmentor

        diameter = DEFAULT_DIAMETER_PX if particle_scale else None
        sources = [(synth_dir / "images", synth_dir / "masks", "")]
        if segmentor_data == "synthetic+real":
            sources.append((train_dir, mask_dir, "real_"))
        data_images, data_masks = gather_pairs(sources, out / "segmentor_data",
                                               particle_diameter_px=diameter,
                                               progress=within(6, "segmentor data"))
        # the segmentors to train: seg_dir itself, or one folder per seed to choose from
        candidates = ({seed: seg_dir} if segmentor_seeds == 1 else
                      {seed + k: seg_dir / f"seed{seed + k}" for k in range(segmentor_seeds)})
        results = {}
        for k, (s, cdir) in enumerate(candidates.items()):
            name = "segmentor epoch" if len(candidates) == 1 else \
                f"segmentor {k + 1}/{len(candidates)} (seed {s}) epoch"
            results[f"seed{s}"] = train_segmentor(
                data_images, data_masks, cdir, profile=profile, epochs=segmentor_epochs,
                augment=True, seed=s, device=device, resume=True, should_stop=should_stop,
                input_polarity="bright", particle_diameter_px=diameter,
                scale_preset=classical_preset, progress=within(6, name), **segmentor_options)
            if stopped():
                return {"stopped": "segmentor", "stages": done}
        _mark_done(out, state, "segmentor",
                   result=results[f"seed{seed}"] if len(results) == 1 else results,
                   data=segmentor_data, particle_diameter_px=diameter,
                   # within the run folder, so a copied run uses its own segmentors
                   candidates={str(s): str(Path(d).relative_to(out))
                               for s, d in candidates.items()})

    # 8. segmentation of the real images + PSD
    if step(7, "segment"):
        from emcopilot.analysis import write_psd_report
        from emcopilot.evaluate import read_probability_map
        from emcopilot.inference import (OutputFilter, Segmentor, best_segmentor,
                                         choose_min_peak)
        from emcopilot.training.checkpoint import update_config

        def checkpoint(run_dir: Path) -> Path:
            ckpt = run_dir / "best_miou"
            return ckpt if ckpt.is_dir() else run_dir / "last"

        prob_dir = result_dir / "prob"

        # particles come from the stored 8-bit maps, so the outputs can be re-derived from disk
        def stored(stem: str, folder: Path = prob_dir) -> np.ndarray:
            return read_probability_map(folder / f"{stem}.png")

        # the segmentors the segmentor stage trained (a run resumed with another
        # segmentor_seeds keeps them; a run from before the option: segmentor/ itself)
        trained = done["segmentor"].get("candidates") or {str(seed): str(seg_dir)}
        candidates = {int(s): segmentor_dir(out, d) for s, d in trained.items()}
        choices, segmentors = {}, {}
        # whether each image has its support taken out: judged once (the candidates share the
        # run's settings), for every segmentor and for support_check
        # (and whether its coarse particles are split for its scale)
        takes_out: dict[str, bool] = {}
        splits: dict[str, bool] = {}
        maps = {s: prob_dir if len(candidates) == 1 else result_dir / "candidates" / f"seed{s}"
                for s in candidates}
        stems = list(meta)
        # the core probability is chosen for the particles the output keeps: scored after the
        # faint-particle filter applied below (the images are bright-particle copies)
        kept_as_output = {"images": lambda k: io.normalize(
            io.read_micrograph(img_dir / f"{stems[k]}.png").image),
            "min_snr": min_snr, "data_bar": data_bar, "annotations": bool(annotations)}
        for k, (s, cdir) in enumerate(candidates.items()):
            segmentors[s] = segmentor = Segmentor.load(checkpoint(cdir), device=device)
            for i, stem in enumerate(meta):
                report(7, len(STAGES), f"segment {i}/{len(meta)}" if len(candidates) == 1
                       else f"segment with segmentor {k + 1}/{len(candidates)}: {i}/{len(meta)}")
                image01 = io.normalize(io.read_micrograph(img_dir / f"{stem}.png").image)
                # the images are bright-particle copies; the coarse mask measures the scale
                coarse = (io.read_label_map(mask_dir / f"{stem}.png")
                          if segmentor.particle_diameter_px else None)
                if stem not in takes_out:
                    takes_out[stem], splits[stem] = segmentor.removes_and_splits(
                        image01, polarity="bright", data_bar=data_bar, support=support_removal,
                        scale_split=scale_split)
                prob = segmentor.probability(image01, polarity="bright", scale_labels=coarse,
                                             data_bar=data_bar, support=takes_out[stem],
                                             scale_split=splits[stem])
                io.write_image(maps[s] / f"{stem}.png", prob)
            report(7, len(STAGES), "segment: matching the particles with the coarse masks")
            choices[s] = choose_min_peak(
                segmentor, checkpoint(cdir), (stored(x, maps[s]) for x in meta),
                (io.read_label_map(mask_dir / f"{x}.png") for x in meta), min_peak=min_peak,
                grow_to=grow_to, **kept_as_output)
        ckpts = {s: checkpoint(cdir) for s, cdir in candidates.items()}
        if len(candidates) > 1 and ensemble:
            # the segmentors together: each image's mean map, scored the same way
            from emcopilot.training.checkpoint import ensemble_checkpoint

            first = next(iter(candidates))
            maps["mean"] = result_dir / "candidates" / "mean"
            for stem in meta:
                io.write_image(maps["mean"] / f"{stem}.png",
                               np.mean([stored(stem, maps[s]) for s in candidates], axis=0))
            ckpts["mean"] = ensemble_checkpoint([ckpts[s] for s in candidates], seg_dir / "mean")
            segmentors["mean"] = segmentors[first]  # same threshold and hole filling
            report(7, len(STAGES), "segment: matching the segmentors' mean with the coarse masks")
            choices["mean"] = choose_min_peak(
                segmentors[first], ckpts["mean"], (stored(x, maps["mean"]) for x in meta),
                (io.read_label_map(mask_dir / f"{x}.png") for x in meta), min_peak=min_peak,
                grow_to=grow_to, **kept_as_output)
        best = best_segmentor({s: c["score"] for s, c in choices.items()})
        chosen, grown = choices[best]["min_peak"], choices[best]["grow_to"]
        ckpt = ckpts[best]
        if len(candidates) > 1:  # the kept one: segmentor/selected, its maps in prob/
            selected = seg_dir / "selected"
            if selected.exists():
                shutil.rmtree(selected)
            shutil.copytree(ckpt, selected)
            ckpt = selected
            prob_dir.mkdir(parents=True, exist_ok=True)
            for stem in meta:
                shutil.copyfile(maps[best] / f"{stem}.png", prob_dir / f"{stem}.png")
        update_config(ckpt, add_coarse=bool(add_coarse), support_removal=support_removal,
                      support_check=bool(support_check), scale_choice=list(scale_choice),
                      min_snr=min_snr, scale_split=scale_split)
        kept = Segmentor.load(ckpt, device=device) if support_check or scale_choice else None
        unremoved_dir = result_dir / "candidates" / "without_support_removal"

        def particles(prob: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, int]:
            return segmentors[best].map_particles(prob, coarse, min_peak=chosen, grow_to=grown,
                                                  add_coarse=bool(add_coarse))

        items, added, dropped, multiples, faint, drawn = [], 0, [], {}, 0, 0
        for i, stem in enumerate(meta):
            image01 = io.normalize(io.read_micrograph(img_dir / f"{stem}.png").image)
            coarse = io.read_label_map(mask_dir / f"{stem}.png")
            if scale_choice:
                # every factor, support check and coarse addition as `segment` does them: the
                # kept checkpoint records each choice. This maps the image at the resize factor
                # again (the stored map above is 8-bit; `segment` works on the float map), about
                # 1 / (1 + sum M^2) of this pass's time
                report(7, len(STAGES), f"segment: {stem} at {len(scale_choice) + 1} scales "
                                       f"{i}/{len(meta)}")
                labels, prob, info = kept.segment_detail(
                    image01, polarity="bright",
                    scale_labels=coarse if kept.particle_diameter_px else None,
                    data_bar=data_bar, support=takes_out[stem], min_snr=None,
                    scale_split=splits[stem], annotations=False)
                io.write_image(prob_dir / f"{stem}.png", prob)
                multiples[stem] = info["scale_multiple"]
                more = info["coarse_added"]
                if takes_out[stem] and not info["support_removed"]:
                    dropped.append(stem)
            else:
                labels, more = particles(stored(stem), coarse)
            if kept is not None and takes_out[stem] and not scale_choice:
                from emcopilot.support import removal_kept

                report(7, len(STAGES), f"segment: {stem} without support removal "
                                       f"{i}/{len(meta)}")
                io.write_image(unremoved_dir / f"{stem}.png", kept.probability(
                    image01, polarity="bright",
                    scale_labels=coarse if kept.particle_diameter_px else None,
                    data_bar=data_bar, support=False, scale_split=splits[stem]))
                without, more_without = particles(stored(stem, unremoved_dir), coarse)
                if not removal_kept(labels, without, coarse):
                    labels, more = without, more_without
                    shutil.copyfile(unremoved_dir / f"{stem}.png", prob_dir / f"{stem}.png")
                    dropped.append(stem)
            added += more
            labels, n_drawn, n_faint = OutputFilter(
                image01, min_snr=min_snr, annotations=annotations, data_bar=data_bar)(labels)
            drawn += n_drawn
            faint += n_faint
            io.write_label_map(result_dir / f"{stem}.png", labels)
            items.append((stem, labels, meta[stem]["pixel_size_nm"], image01))
        summary = write_psd_report(items, result_dir)
        _mark_done(out, state, "segment", count=summary.get("batch", {}).get("count"),
                   min_peak=chosen, grow_to=grown, model=str(ckpt),
                   add_coarse=bool(add_coarse), coarse_particles_added=added,
                   support_removal=support_removal,
                   support_removed=[x for x in meta if takes_out[x]],
                   support_check=bool(support_check),
                   **({"support_removal_dropped": dropped} if support_check else {}),
                   **({"scale_multiples": multiples} if scale_choice else {}),
                   min_snr=min_snr, faint_dropped=faint, scale_split_mode=scale_split,
                   annotations=bool(annotations), annotations_dropped=drawn,
                   scale_split=[x for x in meta if splits.get(x)],
                   f1_vs_coarse={(s if s == "mean" else f"seed{s}"): c["score"]
                                 for s, c in choices.items()})
    report(len(STAGES), len(STAGES), "done")
    summary = json.loads((result_dir / "summary.json").read_text())
    return {"summary": summary.get("batch", summary), "stages": {k: {kk: vv for kk, vv in v.items()
                                                                     if kk != "images"}
                                                                 for k, v in done.items()}}
