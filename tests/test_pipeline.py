"""`run_pipeline` end to end with tiny networks on bundled real micrographs: every stage runs with
no labels, the outputs are what later tools read, and a second run resumes instead of redoing."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from emcopilot import io
from emcopilot.particle_scale import DEFAULT_DIAMETER_PX, normalising_scale, resize_labels
from emcopilot.pipeline import STAGES, load_state, run_pipeline
from tests.conftest import with_data_bar

TINY = dict(
    profile="cpu", classical_preset="isolated", per_mask=2, seed=0, device="cpu",
    segmentor_seeds=1,
    generator_epochs=1, segmentor_epochs=1,
    generator_options={"base": 4, "image_size": 64, "depth": 6},
    segmentor_options={"base": 4, "image_size": 64, "samples_per_epoch": 8, "batch_size": 4},
)

BAR_STEM, BAR_ROW = "dbbbce5020", 512


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, examples_dir):
    src = tmp_path_factory.mktemp("images")
    for stem in ("f7fa7d1729", "c363833ad2"):
        shutil.copy(examples_dir / "emps" / "images" / f"{stem}.png", src)
    # one image with an instrument data bar below it (BAR_STEM's first BAR_ROW rows: the image)
    grey = io.read_micrograph(examples_dir / "emps" / "images" / f"{BAR_STEM}.png").image
    io.write_image(src / f"{BAR_STEM}.png", with_data_bar(np.asarray(grey, np.uint8)))
    out = tmp_path_factory.mktemp("run")
    calls = []
    result = run_pipeline(src, out, progress=lambda d, t, m="": calls.append((d, t, m)), **TINY)
    return src, out, result, calls


@pytest.fixture(scope="module")
def scaled_run(pipeline_run, tmp_path_factory):
    """A copy of the fixture's run with its segmentor retrained at the common particle width
    (another test retrains the fixture's own without it) and its segment stage redone."""
    src, fixture_run, _, _ = pipeline_run
    first = tmp_path_factory.mktemp("scaled") / "run"
    _copy_run(fixture_run, first, redo=("segmentor", "segment"))
    shutil.rmtree(first / "segmentor")
    run_pipeline(src, first, **TINY)
    return first


def _without_faint(out, stem, labels):
    """``(labels, faint dropped)``: ``labels`` of a run's image less, as the run's segment stage
    ends, the particles on drawn annotations when its record says so
    (drop_annotations_above_bar) and then its faint particles at the level it records
    (drop_faint_above_bar), both on the run's bright-particle image."""
    from emcopilot.inference import drop_annotations_above_bar, drop_faint_above_bar

    record = load_state(out)["stages"]["segment"]
    image01 = io.normalize(io.read_micrograph(out / "images" / f"{stem}.png").image)
    if record.get("annotations"):
        labels = drop_annotations_above_bar(image01, labels)[0]
    return drop_faint_above_bar(image01, labels, record["min_snr"])


def _as_output_keeps(out, stems):
    """select_min_peak's ``finish`` as the run's segment stage passes it: each image's
    particles less those on drawn annotations and the faint ones (:func:`_without_faint`)."""
    return lambda k, labels: _without_faint(out, stems[k], labels)[0]


def _segment_again(pipeline_run, tmp_path, name="run", **options):
    """The fixture's run copied to ``tmp_path / name`` and its segment stage redone with
    ``options`` -> (images folder, the fixture's run, the copy, the copy's segment record)."""
    src, first, _, _ = pipeline_run
    out = tmp_path / name
    _copy_run(first, out)
    run_pipeline(src, out, **{**TINY, **options})
    return src, first, out, load_state(out)["stages"]["segment"]


def _copy_run(first, out, *, redo=("segment",)) -> dict:
    """A copy of a finished run with the records of the stages ``redo`` deleted (the next
    run_pipeline redoes them); returns the copy's state as written."""
    shutil.copytree(first, out)
    state = load_state(out)
    for stage in redo:
        del state["stages"][stage]
    (out / "pipeline.json").write_text(json.dumps(state))
    return state


@pytest.mark.slow
def test_every_stage_runs_without_labels(pipeline_run):
    src, out, result, calls = pipeline_run
    state = load_state(out)
    assert list(state["stages"]) == list(STAGES)
    stems = sorted(p.stem for p in src.iterdir())
    for stem in stems:
        labels = io.read_label_map(out / "segmentation" / f"{stem}.png")
        image = io.read_micrograph(src / f"{stem}.png").image
        assert labels.shape == image.shape
        assert (out / "coarse_masks" / f"{stem}.png").is_file()
    assert len(list((out / "synthetic" / "masks").glob("*.png"))) > 0
    synth_images = sorted((out / "synthetic" / "images").glob("*.png"))
    assert len(synth_images) == len(list((out / "synthetic" / "masks").glob("*.png")))
    assert (out / "generator" / "last" / "model.safetensors").is_file()
    assert (out / "segmentor" / "last" / "model.safetensors").is_file()
    summary = json.loads((out / "segmentation" / "summary.json").read_text())
    assert summary["batch"]["count"] == result["summary"]["count"]
    for name in ("particles.csv", "psd.png", "psd.svg"):
        assert (out / "segmentation" / name).is_file()
    messages = " ".join(m for *_, m in calls)
    assert "generator epoch" in messages and "segmentor epoch" in messages
    assert calls[-1][:2] == (len(STAGES), len(STAGES))
    # each image's detected polarity is recorded with its score; none of these is unsure
    images = state["stages"]["images"]
    assert images["polarity_unsure"] == []
    for stem in stems:
        rec = images["images"][stem]
        assert rec["polarity"] == ("bright" if rec["polarity_score"] >= 0 else "dark")
        assert abs(rec["polarity_score"]) >= 2
    assert images["images"]["c363833ad2"]["polarity"] == "bright"
    assert images["images"]["dbbbce5020"]["polarity"] == "dark"
    # the data bar: found, recorded, and neither masked nor segmented
    assert images["data_bars"] == 1
    for stem in stems:
        assert images["images"][stem]["data_bar_row"] == (BAR_ROW if stem == BAR_STEM else None)
    for folder in ("coarse_masks", "segmentation"):
        labels = io.read_label_map(out / folder / f"{BAR_STEM}.png")
        assert labels[:BAR_ROW].any() and not labels[BAR_ROW:].any(), folder
    assert not io.read_micrograph(out / "segmentation" / "prob" / f"{BAR_STEM}.png").image[
        BAR_ROW:].any()


def test_cli_pipeline_warns_about_unsure_polarity(monkeypatch, tmp_path, capsys):
    """The CLI names the images whose detected polarity is unsure (run_pipeline stubbed: the
    record it reads is what the test above checks the real pipeline writes)."""
    import emcopilot.pipeline
    from emcopilot import cli

    result = {"summary": {"count": 3}, "stages": {"images": {"count": 2,
                                                             "polarity_unsure": ["noise"]}}}
    seen = []
    monkeypatch.setattr(emcopilot.pipeline, "run_pipeline",
                        lambda *a, **k: seen.append(k) or result)
    (tmp_path / "in").mkdir()
    assert cli.main(["pipeline", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "-q"]) == 0
    assert seen[-1]["support_removal"] == "auto" and seen[-1]["support_in_training"] is False
    from emcopilot.support import SUPPORT_CHECK_DEFAULT

    assert seen[-1]["support_check"] is SUPPORT_CHECK_DEFAULT
    assert seen[-1]["segmentor_options"] is None and seen[-1]["scale_choice"] == ()
    from emcopilot.cli import MIN_SNR_DEFAULT as CLI_MIN_SNR
    from emcopilot.postprocess import MIN_SNR_DEFAULT

    assert seen[-1]["min_snr"] == MIN_SNR_DEFAULT == CLI_MIN_SNR
    err = capsys.readouterr().err
    assert "polarity detected for 1 image(s) is unsure: noise" in err and "--polarity" in err
    assert "no particle" not in err
    result["stages"]["images"]["polarity_unsure"] = []
    result["stages"]["masks"] = {"no_particles": ["blank", "PtC2"]}
    assert cli.main(["pipeline", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "-q",
                     "--support-in-training", "on", "--segmentor-base", "16",
                     "--support-check", "off" if SUPPORT_CHECK_DEFAULT else "on",
                     "--scale-choice", "1.5,0.75", "--min-snr", "none"]) == 0
    assert seen[-1]["support_in_training"] is True and seen[-1]["scale_choice"] == (1.5, 0.75)
    assert seen[-1]["min_snr"] is None
    assert seen[-1]["support_check"] is not SUPPORT_CHECK_DEFAULT
    assert seen[-1]["segmentor_options"] == {"base": 16}
    err = capsys.readouterr().err
    assert "unsure" not in err
    assert "found no particle in 2 image(s): blank, PtC2" in err and "--classical-preset" in err


@pytest.mark.slow
def test_images_without_coarse_particles_are_recorded(pipeline_run, tmp_path):
    """The masks stage records the images whose coarse mask holds no particle (the CLI warns
    about them): none in the fixture, the one emptied here when the stage is redone."""
    src, first, _, _ = pipeline_run
    assert load_state(first)["stages"]["masks"]["no_particles"] == []
    out = tmp_path / "run"
    _copy_run(first, out, redo=("masks",))
    blank = out / "coarse_masks" / "c363833ad2.png"
    io.write_label_map(blank, np.zeros_like(io.read_label_map(blank)))
    result = run_pipeline(src, out, **TINY)
    assert load_state(out)["stages"]["masks"]["no_particles"] == ["c363833ad2"]
    assert result["stages"]["masks"]["no_particles"] == ["c363833ad2"]


@pytest.mark.slow
def test_second_run_resumes_and_redoes_only_missing_stages(pipeline_run):
    src, out, _, _ = pipeline_run
    first = f"{sorted(p.stem for p in src.iterdir())[0]}.png"
    before = (out / "segmentation" / first).read_bytes()
    t0 = time.perf_counter()
    run_pipeline(src, out, **TINY)
    assert time.perf_counter() - t0 < 30  # nothing was retrained
    gen_mtime = (out / "generator" / "last" / "model.safetensors").stat().st_mtime
    # forget the last stage: only it runs again, from the same trained segmentor
    state = load_state(out)
    del state["stages"]["segment"]
    (out / "pipeline.json").write_text(json.dumps(state))
    shutil.rmtree(out / "segmentation")
    run_pipeline(src, out, **TINY)
    assert (out / "generator" / "last" / "model.safetensors").stat().st_mtime == gen_mtime
    assert (out / "segmentation" / first).read_bytes() == before  # same model, same result


@pytest.mark.slow
def test_segmentor_trains_on_synthetic_plus_real_by_default_or_synthetic_only(pipeline_run):
    src, out, _, _ = pipeline_run
    stems = sorted(p.stem for p in src.iterdir())
    state = load_state(out)
    assert state["stages"]["segmentor"]["data"] == "synthetic+real"
    data = out / "segmentor_data"
    n_synth = len(list((out / "synthetic" / "masks").glob("*.png")))
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (data / sub).glob("*.png"))
        assert [n for n in names if n.startswith("real_")] == [f"real_{s}.png" for s in stems]
        assert len(names) == n_synth + len(stems)
    # every pair was resized to the common particle width, the real ones by their coarse masks
    assert state["stages"]["segmentor"]["particle_diameter_px"] == DEFAULT_DIAMETER_PX
    scales = json.loads((data / "scales.json").read_text())
    assert len(scales) == n_synth + len(stems)
    coarse = io.read_label_map(out / "coarse_masks" / f"{stems[0]}.png")
    s = scales[f"real_{stems[0]}"]
    assert s == pytest.approx(normalising_scale(coarse), abs=1e-3)
    np.testing.assert_array_equal(io.read_label_map(data / "masks" / f"real_{stems[0]}.png"),
                                  resize_labels(coarse, s))
    cfg = json.loads((out / "segmentor" / "last" / "config.json").read_text())["config"]
    assert 0.1 <= cfg["calibrated_threshold"] <= 0.9
    assert cfg["data"]["images_dir"].endswith("segmentor_data/images")
    assert cfg["input_polarity"] == "bright" and cfg["particle_diameter_px"] == DEFAULT_DIAMETER_PX
    assert cfg["scale_preset"] == "isolated"
    # the paper's variant: the segmentor sees the generated pairs only
    for stage in ("segmentor", "segment"):
        del state["stages"][stage]
    (out / "pipeline.json").write_text(json.dumps(state))
    shutil.rmtree(out / "segmentor")
    run_pipeline(src, out, segmentor_data="synthetic", particle_scale=False, **TINY)
    state = load_state(out)
    assert state["stages"]["segmentor"]["data"] == "synthetic"
    cfg = json.loads((out / "segmentor" / "last" / "config.json").read_text())["config"]
    assert cfg["data"]["images_dir"].endswith("synthetic/images")
    assert cfg["particle_diameter_px"] is None and cfg["input_polarity"] == "bright"
    assert (out / "segmentation" / f"{stems[0]}.png").is_file()


def test_unknown_segmentor_data_is_refused(tmp_path, examples_dir):
    from emcopilot.errors import InputError

    with pytest.raises(InputError, match="segmentor data"):
        run_pipeline(examples_dir / "emps" / "images", tmp_path / "run", segmentor_data="real")


@pytest.mark.slow
def test_particles_follow_the_stored_maps_and_the_chosen_core_probability(pipeline_run):
    """min_peak "auto": chosen against the coarse masks (no labels), recorded in the state and in
    the segmentor checkpoint, and the particles are exactly what the stored probability maps and
    that value give."""
    from emcopilot.evaluate import read_probability_map
    from emcopilot.inference import Segmentor
    from emcopilot.postprocess import (GROW_OPTIONS, MIN_PEAK_GRID, add_coarse_particles,
                                       select_growth, select_min_peak)

    src, out, _, _ = pipeline_run
    stems = sorted(p.stem for p in src.iterdir())
    chosen = load_state(out)["stages"]["segment"]["min_peak"]
    assert chosen in MIN_PEAK_GRID
    probs = [read_probability_map(out / "segmentation" / "prob" / f"{s}.png") for s in stems]
    coarse = [io.read_label_map(out / "coarse_masks" / f"{s}.png") for s in stems]
    # scored as the output keeps the particles: after the faint filter
    finish = _as_output_keeps(out, stems)
    choice = select_min_peak(probs, coarse, fill_holes=True, finish=finish)
    assert choice["min_peak"] == chosen
    # the particle growth: chosen the same way with those particles, recorded in both places
    grown = load_state(out)["stages"]["segment"]["grow_to"]
    assert grown in GROW_OPTIONS
    assert select_growth(probs, coarse, fill_holes=True, min_peak=chosen,
                         finish=finish)["grow_to"] == grown
    ckpt = out / "segmentor" / "best_miou"
    if not ckpt.is_dir():
        ckpt = out / "segmentor" / "last"
    seg = Segmentor.load(ckpt, device="cpu")
    assert seg.min_peak == chosen and seg.grow_to == grown
    assert seg.config["config"]["min_peak_f1"] == choice["f1"]
    assert seg.config["config"]["min_peak_min_snr"] == \
        load_state(out)["stages"]["segment"]["min_snr"]
    # plus the coarse particles the segmentor missed (add_coarse, default on; recorded too)
    assert seg.add_coarse is True and load_state(out)["stages"]["segment"]["add_coarse"] is True
    # the support removal (default auto), recorded in both places too
    assert seg.support_removal == "auto"
    assert load_state(out)["stages"]["segment"]["support_removal"] == "auto"
    # and last, the faint particles dropped (default level; recorded in both places too)
    from emcopilot.postprocess import MIN_SNR_DEFAULT

    record = load_state(out)["stages"]["segment"]
    assert seg.min_snr == record["min_snr"] == MIN_SNR_DEFAULT
    # before them, the particles on drawn annotations (default on; recorded with their number)
    from emcopilot.inference import drop_annotations_above_bar

    assert record["annotations"] is True and load_state(out)["stages"]["masks"]["annotations"]
    added = faint = drawn = 0
    for stem, prob, co in zip(stems, probs, coarse):
        own = seg.instances(prob)
        with_coarse = add_coarse_particles(own, co, prob)
        expected, dropped = _without_faint(out, stem, with_coarse)
        got = io.read_label_map(out / "segmentation" / f"{stem}.png")
        np.testing.assert_array_equal(got, expected)
        added += int(with_coarse.max()) - int(own.max())
        faint += dropped
        drawn += drop_annotations_above_bar(
            io.normalize(io.read_micrograph(out / "images" / f"{stem}.png").image),
            with_coarse)[1]
    assert record["coarse_particles_added"] == added
    assert record["faint_dropped"] == faint
    assert record["annotations_dropped"] == drawn


@pytest.mark.slow
def test_add_coarse_off_keeps_the_segmentors_particles_only(pipeline_run, tmp_path):
    """The segment stage again with add_coarse=False: the particles are the segmentor's alone,
    and the checkpoint records off, so `segment` does not add them either."""
    from emcopilot.evaluate import read_probability_map
    from emcopilot.inference import Segmentor

    src, _, out, record = _segment_again(pipeline_run, tmp_path, add_coarse=False)
    assert record["add_coarse"] is False and record["coarse_particles_added"] == 0
    seg = Segmentor.load(record["model"], device="cpu")
    assert seg.add_coarse is False
    for p in sorted(src.iterdir()):
        prob = read_probability_map(out / "segmentation" / "prob" / f"{p.stem}.png")
        np.testing.assert_array_equal(io.read_label_map(out / "segmentation" / f"{p.stem}.png"),
                                      _without_faint(out, p.stem, seg.instances(prob))[0])


@pytest.mark.slow
def test_the_generator_learns_from_the_images_as_the_segmentor_will_see_them(pipeline_run,
                                                                           tmp_path):
    """support_in_training with support removal reaching every image (preset "supported"): the
    generator and the segmentor's real pairs take the images with their support removed
    (images_support_removed/); preset "isolated" (the fixture) or support_in_training off (the
    default): the images as they are."""
    from emcopilot.particle_scale import resize_image
    from emcopilot.support import remove_support_at_mask_scale

    src, first, _, _ = pipeline_run
    stems = sorted(p.stem for p in src.iterdir())
    record = load_state(first)["stages"]["generator"]
    assert record["training_images"] == "images" and record["support_removed"] == []
    assert not (first / "images_support_removed").exists()
    redo = ("generator", "generate", "segmentor", "segment")
    out = tmp_path / "run"
    _copy_run(first, out, redo=redo)
    for d in ("generator", "segmentor"):
        shutil.rmtree(out / d)
    run_pipeline(src, out, **{**TINY, "classical_preset": "supported",
                              "support_in_training": True})
    record = load_state(out)["stages"]["generator"]
    assert record["training_images"] == "images_support_removed"
    assert record["support_removed"] == stems
    cfg = json.loads((out / "generator" / "last" / "config.json").read_text())["config"]
    assert cfg["data"]["images_dir"].endswith("images_support_removed")
    # the real pair the segmentor learns from is the support-removed image, resized
    stem = BAR_STEM  # the data bar's rows are left as they were
    top = load_state(out)["stages"]["images"]["images"][stem]["data_bar_row"]
    assert top == BAR_ROW
    image01 = io.normalize(io.read_micrograph(out / "images" / f"{stem}.png").image)
    coarse = io.read_label_map(out / "coarse_masks" / f"{stem}.png")
    rows = image01.shape[0] if top is None else top
    removed = io.to_uint8(image01)
    removed[:rows] = io.to_uint8(remove_support_at_mask_scale(image01[:rows], coarse[:rows]))
    np.testing.assert_array_equal(
        io.read_micrograph(out / "images_support_removed" / f"{stem}.png").image, removed)
    scale = normalising_scale(coarse)
    recorded = json.loads((out / "segmentor_data" / "scales.json").read_text())[f"real_{stem}"]
    assert recorded == pytest.approx(scale, abs=1e-4)
    expected = io.to_uint8(resize_image(io.normalize(removed), scale))
    got = io.read_micrograph(out / "segmentor_data" / "images" / f"real_{stem}.png").image
    assert np.abs(got.astype(int) - expected).max() <= 1
    # off (default): the generator learns from the images as they are, whatever the preset
    out2 = tmp_path / "run2"
    _copy_run(first, out2, redo=redo)
    for d in ("generator", "segmentor"):
        shutil.rmtree(out2 / d)
    run_pipeline(src, out2, **{**TINY, "classical_preset": "supported"})
    record = load_state(out2)["stages"]["generator"]
    assert record["training_images"] == "images" and record["support_removed"] == []
    cfg = json.loads((out2 / "generator" / "last" / "config.json").read_text())["config"]
    assert cfg["data"]["images_dir"].endswith("/images")


def test_bad_min_peak_is_refused(tmp_path, examples_dir):
    from emcopilot.errors import InputError

    with pytest.raises(InputError, match="min_peak"):
        run_pipeline(examples_dir / "emps" / "images", tmp_path / "run", min_peak=1.5)
    with pytest.raises(InputError, match="grow_to"):
        run_pipeline(examples_dir / "emps" / "images", tmp_path / "run", grow_to="big")


@pytest.fixture(scope="module")
def two_seed_run(pipeline_run, tmp_path_factory):
    """A copy of the fixture's run with two segmentors (seeds 0 and 1) trained in place of its
    one, and its segment stage redone: (images folder, the copy)."""
    src, first, _, _ = pipeline_run
    out = tmp_path_factory.mktemp("two_seeds") / "run"
    _copy_run(first, out, redo=("segmentor", "segment"))
    shutil.rmtree(out / "segmentor")
    shutil.rmtree(out / "segmentation")
    run_pipeline(src, out, **{**TINY, "segmentor_seeds": 2})
    return src, out


def _manual_masks(src, examples_dir, dest):
    """The bundled manual masks of a run's images in ``dest`` (the data-bar image's bar rows
    hold no particle)."""
    dest.mkdir()
    for p in src.iterdir():
        mask = io.read_label_map(examples_dir / "emps" / "segmaps" / p.name)
        height = io.read_micrograph(p).image.shape[0]
        io.write_label_map(dest / p.name, np.pad(mask, ((0, height - mask.shape[0]), (0, 0))))
    return dest


@pytest.mark.slow
def test_several_segmentor_seeds_keep_the_one_that_best_matches_the_coarse_masks(two_seed_run):
    """segmentor_seeds=2: two segmentors are trained (seeds 0 and 1), each scored against the
    coarse masks at its own chosen core probability and growth (no labels), and so is the mean
    of their maps (an ensemble); the best is copied to segmentor/selected and its maps and
    particles are the run's output."""
    from emcopilot.evaluate import read_probability_map
    from emcopilot.inference import Segmentor
    from emcopilot.postprocess import add_coarse_particles, select_growth, select_min_peak

    src, out = two_seed_run
    state = load_state(out)["stages"]
    assert set(state["segmentor"]["result"]) == {"seed0", "seed1"}
    stems = sorted(p.stem for p in src.iterdir())
    coarse = [io.read_label_map(out / "coarse_masks" / f"{s}.png") for s in stems]
    cand = out / "segmentation" / "candidates"
    maps = {name: [read_probability_map(cand / name / f"{s}.png") for s in stems]
            for name in ("seed0", "seed1", "mean")}
    for m0, m1, mean in zip(maps["seed0"], maps["seed1"], maps["mean"]):
        np.testing.assert_allclose(mean, (m0 + m1) / 2, atol=0.6 / 255)
    scores = {}
    for name, m in maps.items():
        if name != "mean":
            ckpt = out / "segmentor" / name / "last"
            assert json.loads((ckpt / "config.json").read_text())["config"]["seed"] == \
                int(name[4:])
        finish = _as_output_keeps(out, stems)
        core = select_min_peak(m, coarse, fill_holes=True, finish=finish)["min_peak"]
        growth = select_growth(m, coarse, fill_holes=True, min_peak=core, finish=finish)
        scores[name] = growth["f1"][str(growth["grow_to"])]
    assert state["segment"]["f1_vs_coarse"] == pytest.approx(scores)
    # ties: a single segmentor, the smallest seed
    winner = max(scores, key=lambda k: (scores[k], k != "mean", k == "seed0"))
    selected = out / "segmentor" / "selected"
    assert state["segment"]["model"] == str(selected)
    cfg = json.loads((selected / "config.json").read_text())["config"]
    assert ("ensemble" in cfg) == (winner == "mean")
    if winner != "mean":
        assert f"seed{cfg['seed']}" == winner
    seg = Segmentor.load(selected, device="cpu")
    assert seg.ensemble_size == (2 if winner == "mean" else 1)
    assert seg.min_peak == state["segment"]["min_peak"]
    assert seg.add_coarse is True
    for stem, co in zip(stems, coarse):
        got = out / "segmentation" / "prob" / f"{stem}.png"
        assert got.read_bytes() == (cand / winner / f"{stem}.png").read_bytes()
        prob = read_probability_map(got)
        np.testing.assert_array_equal(
            io.read_label_map(out / "segmentation" / f"{stem}.png"),
            _without_faint(out, stem, add_coarse_particles(seg.instances(prob), co, prob))[0])
    # the ensemble's checkpoint runs both segmentors: its map is their maps' mean
    both = Segmentor.load(out / "segmentor" / "mean", device="cpu")
    image01 = io.normalize(io.read_micrograph(out / "images" / f"{stems[0]}.png").image)
    one = [Segmentor.load(out / "segmentor" / f"seed{k}" / "last", device="cpu")
           for k in (0, 1)]
    scale_labels = coarse[0] if both.particle_diameter_px else None
    np.testing.assert_allclose(
        both.probability(image01, polarity="bright", scale_labels=scale_labels),
        np.mean([s.probability(image01, polarity="bright", scale_labels=scale_labels)
                 for s in one], axis=0), atol=1e-5)


def test_segmentor_seeds_must_be_a_positive_whole_number(tmp_path, examples_dir):
    from emcopilot.errors import InputError

    with pytest.raises(InputError, match="segmentor_seeds"):
        run_pipeline(examples_dir / "emps" / "images", tmp_path / "run", segmentor_seeds=0)


@pytest.mark.slow
def test_a_run_resumed_with_other_segmentor_seeds_segments_with_what_it_trained(pipeline_run,
                                                                                tmp_path):
    """The segment stage uses the segmentors the segmentor stage trained: a one-segmentor run
    (or one from before the option, with no record of them) resumed with the default of two
    seeds is not retrained and segments with segmentor/."""
    src, first, _, _ = pipeline_run
    out = tmp_path / "run"
    shutil.copytree(first, out)
    state = load_state(out)
    state["stages"]["segmentor"].pop("candidates", None)  # as before the option
    del state["stages"]["segment"]
    (out / "pipeline.json").write_text(json.dumps(state))
    mtime = (out / "segmentor" / "last" / "model.safetensors").stat().st_mtime
    run_pipeline(src, out, **{**TINY, "segmentor_seeds": 2})
    record = load_state(out)["stages"]["segment"]
    assert list(record["f1_vs_coarse"]) == ["seed0"]
    assert record["model"] in (str(out / "segmentor" / "best_miou"), str(out / "segmentor" / "last"))
    assert (out / "segmentor" / "last" / "model.safetensors").stat().st_mtime == mtime
    assert not (out / "segmentor" / "seed1").exists()


def test_segmentor_records_name_folders_in_the_run_even_from_before_relative_records(tmp_path):
    """Records are relative to the run folder; older ones were absolute or relative to where the
    run started: those name the same place under this run's segmentor/ when it is there (a copied
    run uses its own checkpoints), else the recorded place itself."""
    from emcopilot.pipeline import segmentor_dir

    out, elsewhere = tmp_path / "copy", tmp_path / "original"
    for run in (out, elsewhere):
        (run / "segmentor" / "seed1").mkdir(parents=True)
    assert segmentor_dir(out, "segmentor/seed1") == out / "segmentor" / "seed1"
    assert segmentor_dir(out, ".") == out / "."
    assert segmentor_dir(out, str(elsewhere / "segmentor" / "seed1")) == out / "segmentor" / "seed1"
    assert segmentor_dir(out, "runs/original/segmentor") == out / "segmentor"
    # a record whose folder this run lacks: as recorded
    assert segmentor_dir(out, str(elsewhere / "segmentor" / "seed7")) == \
        elsewhere / "segmentor" / "seed7"
    assert segmentor_dir(out, str(elsewhere / "other")) == elsewhere / "other"


@pytest.mark.slow
def test_a_copied_run_with_an_old_absolute_record_segments_with_its_own_segmentor(pipeline_run,
                                                                                   tmp_path):
    src, first, _, _ = pipeline_run
    out = tmp_path / "run"
    state = _copy_run(first, out)
    state["stages"]["segmentor"]["candidates"] = {"0": str(first / "segmentor")}  # as before
    (out / "pipeline.json").write_text(json.dumps(state))
    run_pipeline(src, out, **TINY)
    assert load_state(out)["stages"]["segment"]["model"] in (
        str(out / "segmentor" / "best_miou"), str(out / "segmentor" / "last"))


@pytest.mark.slow
def test_a_given_core_probability_is_recorded_for_segment(pipeline_run, tmp_path):
    """--min-peak P: the pipeline's particles use P, and the checkpoint says so, so that
    `emcopilot segment` with that model gives the same particles."""
    from emcopilot.evaluate import read_probability_map
    from emcopilot.inference import Segmentor

    src, _, out, record = _segment_again(pipeline_run, tmp_path, min_peak=0.8)
    assert record["min_peak"] == 0.8
    seg = Segmentor.load(record["model"], device="cpu")
    assert seg.min_peak == 0.8
    from emcopilot.postprocess import add_coarse_particles

    for stem in sorted(p.stem for p in src.iterdir()):
        prob = read_probability_map(out / "segmentation" / "prob" / f"{stem}.png")
        coarse = io.read_label_map(out / "coarse_masks" / f"{stem}.png")
        np.testing.assert_array_equal(
            io.read_label_map(out / "segmentation" / f"{stem}.png"),
            _without_faint(out, stem, add_coarse_particles(seg.instances(prob), coarse, prob))[0])


@pytest.mark.slow
def test_min_snr_drops_the_faint_particles_last_and_none_keeps_them(pipeline_run, tmp_path,
                                                                     monkeypatch):
    """min_snr None: nothing dropped, and the record and the checkpoint say none (so `segment`
    keeps them too); the default run's particles are the None run's less
    drop_faint_above_bar's at the recorded level. This tiny run makes one particle per image
    (no background ring: never faint), so what the stage does with a drop is checked with
    the filter (drop_faint_particles) replaced: its output is written, its count recorded, and
    it gets each image and the level, first while the core probability is chosen and last for
    the output (test_inference checks the functions themselves). A bad level is refused."""
    import emcopilot.inference
    from emcopilot.errors import InputError
    from emcopilot.inference import Segmentor

    src, first, plain, record = _segment_again(pipeline_run, tmp_path, "plain", min_snr=None)
    assert record["min_snr"] is None and record["faint_dropped"] == 0
    assert Segmentor.load(record["model"], device="cpu").min_snr is None
    stems = sorted(p.stem for p in src.iterdir())
    plain_labels = {s: io.read_label_map(plain / "segmentation" / f"{s}.png") for s in stems}
    default = load_state(first)["stages"]["segment"]
    assert Segmentor.load(default["model"], device="cpu").min_snr == default["min_snr"]
    dropped = 0
    for stem in stems:
        expected, n = _without_faint(first, stem, plain_labels[stem])
        np.testing.assert_array_equal(
            io.read_label_map(first / "segmentation" / f"{stem}.png"), expected)
        dropped += n
    assert default["faint_dropped"] == dropped
    calls, sigmas = [], []

    def drop_all(image01, labels, min_snr, *, sigma=None):
        calls.append((image01.shape, min_snr))
        sigmas.append(sigma)
        return np.zeros(labels.shape, np.int32), int(labels.max())

    monkeypatch.setattr(emcopilot.inference, "drop_faint_particles", drop_all)
    _, _, spied, record = _segment_again(pipeline_run, tmp_path, "spied", min_snr=7.0)
    # last, each image's output; before, the core probability's choice scored the particles
    # after the same filter (each grid value's, each growth option's); each on the image's
    # rows above its data bar (one of these images has one)
    from emcopilot.data_bar import find_data_bar

    def rows(stem: str) -> tuple[int, int]:
        image01 = io.normalize(io.read_micrograph(next(src.glob(f"{stem}.*"))).image)
        top = find_data_bar(image01)
        return (image01.shape[0] if top is None else top, image01.shape[1])

    measured = [rows(s) for s in stems]
    assert len(set(measured)) == len(stems) and measured != [plain_labels[s].shape for s in stems]
    assert calls[-len(stems):] == [(m, 7.0) for m in measured]
    assert len(calls[:-len(stems)]) >= len(stems) and \
        all(c[1] == 7.0 for c in calls[:-len(stems)])
    assert {c[0] for c in calls} == set(measured)
    # both hand each image's noise level in, measured once per image (OutputFilter): the
    # same level for the image's candidates and its output
    assert all(isinstance(v, float) and v > 0 for v in sigmas)
    assert len(set(sigmas[-len(stems):])) == len(stems)
    assert set(sigmas) == set(sigmas[-len(stems):])
    assert record["min_snr"] == 7.0
    assert record["faint_dropped"] == sum(int(plain_labels[s].max()) for s in stems) > 0
    for stem in stems:
        assert not io.read_label_map(spied / "segmentation" / f"{stem}.png").any()
    for bad in (-1, float("inf")):
        with pytest.raises(InputError, match="min_snr"):
            run_pipeline(src, tmp_path / "bad", **{**TINY, "min_snr": bad})


@pytest.mark.slow
def test_support_check_keeps_the_removal_only_where_it_matches_the_coarse_masks(pipeline_run,
                                                                              scaled_run,
                                                                              tmp_path,
                                                                              monkeypatch):
    """The segment stage with the support removed from every image, with and without the check:
    with it, each image keeps the particles (and map) of the removal unless those made without
    it match its coarse mask better (support.removal_kept), the images that lost it are listed,
    and the checkpoint records the check for `segment`."""
    from emcopilot.inference import Segmentor
    from emcopilot.support import removal_kept

    src, _, _, _ = pipeline_run
    stems = sorted(p.stem for p in src.iterdir())
    first = scaled_run  # only a segmentor at a common particle width sizes the removal's disc
    seg = Segmentor.load(load_state(first)["stages"]["segment"]["model"], device="cpu")
    for stem in stems:  # the removal reaches every image, so each is checked
        image01 = io.normalize(io.read_micrograph(first / "images" / f"{stem}.png").image)
        assert seg.removes_support(image01, polarity="bright", support="on"), stem
    runs = {}
    for name, support_check in (("removed", False), ("without", None), ("checked", True)):
        out = tmp_path / name
        _copy_run(first, out)
        # every particle, no growth: the three runs make particles from their maps alike
        options = dict(min_peak=None, grow_to=None, min_snr=None, **(
            {"support_removal": "off"} if support_check is None else
            {"support_removal": "on", "support_check": support_check}))
        run_pipeline(src, out, **{**TINY, **options})
        runs[name] = out
    # preset isolated with support removal auto (the fixture's settings): no image reached
    assert load_state(first)["stages"]["segment"]["support_removed"] == []
    record = load_state(runs["checked"])["stages"]["segment"]
    assert record["support_removed"] == stems and record["support_check"] is True
    assert Segmentor.load(record["model"], device="cpu").support_check is True
    assert "support_removal_dropped" not in load_state(runs["removed"])["stages"]["segment"]
    dropped = set(record["support_removal_dropped"])
    assert dropped <= set(stems)
    for stem in stems:
        coarse = io.read_label_map(runs["checked"] / "coarse_masks" / f"{stem}.png")
        labels = {name: io.read_label_map(out / "segmentation" / f"{stem}.png")
                  for name, out in runs.items()}
        kept = removal_kept(labels["removed"], labels["without"], coarse)
        assert (stem not in dropped) == kept, stem
        source = "removed" if kept else "without"
        np.testing.assert_array_equal(labels["checked"], labels[source])
        np.testing.assert_array_equal(
            io.read_micrograph(runs["checked"] / "segmentation" / "prob" / f"{stem}.png").image,
            io.read_micrograph(runs[source] / "segmentation" / "prob" / f"{stem}.png").image)
    # a referee that prefers every image without the removal: the run is the plain one's
    import emcopilot.support

    monkeypatch.setattr(emcopilot.support, "removal_kept", lambda *_: False)
    out = tmp_path / "refused"
    _copy_run(first, out)
    run_pipeline(src, out, **{**TINY, "min_peak": None, "grow_to": None, "min_snr": None,
                              "support_removal": "on", "support_check": True})
    assert load_state(out)["stages"]["segment"]["support_removal_dropped"] == stems
    for stem in stems:
        for part in (f"{stem}.png", f"prob/{stem}.png"):
            np.testing.assert_array_equal(
                io.read_micrograph(out / "segmentation" / part).image,
                io.read_micrograph(runs["without"] / "segmentation" / part).image)


@pytest.mark.slow
def test_scale_choice_segments_each_image_as_segment_does_and_records_the_factors(pipeline_run,
                                                                                  tmp_path):
    """--scale-choice: the segment stage's particles and maps are the kept checkpoint's
    Segmentor.segment_detail (every multiple tried, the best match with the coarse mask kept,
    then the run's other choices), the multiples kept are recorded per image, and the
    checkpoint records the choice for `segment`."""
    from emcopilot.errors import InputError
    from emcopilot.inference import Segmentor

    src, first, _, _ = pipeline_run
    stems = sorted(p.stem for p in src.iterdir())
    out = tmp_path / "run"
    _copy_run(first, out)
    run_pipeline(src, out, **{**TINY, "scale_choice": (0.5, 2.0)})
    record = load_state(out)["stages"]["segment"]
    assert sorted(record["scale_multiples"]) == stems
    assert set(record["scale_multiples"].values()) <= {1.0, 0.5, 2.0}
    seg = Segmentor.load(record["model"], device="cpu")
    assert seg.scale_choice == (0.5, 2.0)
    for stem in stems:
        image01 = io.normalize(io.read_micrograph(out / "images" / f"{stem}.png").image)
        coarse = io.read_label_map(out / "coarse_masks" / f"{stem}.png")
        labels, prob, info = seg.segment_detail(image01, polarity="bright", scale_labels=coarse)
        assert info["scale_multiple"] == record["scale_multiples"][stem]
        np.testing.assert_array_equal(io.read_label_map(out / "segmentation" / f"{stem}.png"),
                                      labels)
        np.testing.assert_array_equal(
            io.read_micrograph(out / "segmentation" / "prob" / f"{stem}.png").image,
            io.to_uint8(prob))
    # without it (the default): no record, and the checkpoint records none
    plain = load_state(first)["stages"]["segment"]
    assert "scale_multiples" not in plain
    assert Segmentor.load(plain["model"], device="cpu").scale_choice == ()
    with pytest.raises(InputError):
        run_pipeline(src, tmp_path / "bad", **{**TINY, "scale_choice": (1.0,)})


def test_coarse_min_snr_filters_the_coarse_masks_and_is_recorded(pipeline_run, tmp_path):
    """coarse_min_snr: the masks stage drops the coarse particles at most that level above their
    noise (coarse_mask's min_snr filter, on the run's bright-particle image), records the level,
    and its default keeps them. The level is the median SNR of the fixture's own coarse
    particles, so some are dropped and some kept."""
    from emcopilot.masking import coarse_mask
    from emcopilot.postprocess import COARSE_MIN_SNR_DEFAULT, particle_snr

    src, fixture_run, _, _ = pipeline_run
    # the fixture's run, at the default level (recorded, and its masks so filtered)
    assert load_state(fixture_run)["stages"]["masks"]["coarse_min_snr"] == COARSE_MIN_SNR_DEFAULT
    for path in sorted((fixture_run / "coarse_masks").glob("*.png")):
        image01 = io.normalize(io.read_micrograph(fixture_run / "images" / path.name).image)
        np.testing.assert_array_equal(
            io.read_label_map(path),
            coarse_mask(image01, method="classical", polarity="bright",
                        classical_options={"preset": "isolated"},
                        filters={"min_snr": COARSE_MIN_SNR_DEFAULT}))
    # the masks without the filter: the reference of the level chosen below
    first = tmp_path / "unfiltered"
    _copy_run(fixture_run, first, redo=("masks",))
    shutil.rmtree(first / "coarse_masks")
    run_pipeline(src, first, **{**TINY, "coarse_min_snr": None})
    assert load_state(first)["stages"]["masks"]["coarse_min_snr"] is None
    snrs = []
    for path in sorted((first / "coarse_masks").glob("*.png")):
        image01 = io.normalize(io.read_micrograph(first / "images" / path.name).image)
        snr = particle_snr(image01, io.read_label_map(path))[1:]
        snrs.extend(snr[np.isfinite(snr)])
    assert len(snrs) >= 3
    level = float(np.median(snrs))

    out = tmp_path / "run"
    _copy_run(first, out, redo=("masks",))
    shutil.rmtree(out / "coarse_masks")
    run_pipeline(src, out, **{**TINY, "coarse_min_snr": level})
    assert load_state(out)["stages"]["masks"]["coarse_min_snr"] == level
    before = after = 0
    for path in sorted((first / "coarse_masks").glob("*.png")):
        image01 = io.normalize(io.read_micrograph(first / "images" / path.name).image)
        filtered = io.read_label_map(out / "coarse_masks" / path.name)
        expected = coarse_mask(image01, method="classical", polarity="bright",
                               classical_options={"preset": "isolated"},
                               filters={"min_snr": level})
        np.testing.assert_array_equal(filtered, expected)  # the filter itself: test_masking
        before += int(io.read_label_map(path).max())
        after += int(filtered.max())
    assert 0 < after < before


@pytest.fixture
def cli_pipeline(monkeypatch, examples_dir):
    """`emcopilot pipeline` on bundled images with run_pipeline replaced by a recorder:
    ``(main, images, seen)``, ``seen`` the keyword arguments of each call."""
    import emcopilot.pipeline
    from emcopilot.cli import main

    seen = []
    monkeypatch.setattr(emcopilot.pipeline, "run_pipeline",
                        lambda *a, **k: seen.append(k) or {"stages": {}})
    return main, str(examples_dir / "emps" / "images"), seen


def test_cli_pipeline_passes_coarse_min_snr(cli_pipeline, tmp_path):
    """`pipeline --coarse-min-snr S` reaches run_pipeline; the default is the library's, none
    is off; a bad level exits non-zero before any work."""
    main, images, seen = cli_pipeline
    assert main(["pipeline", images, "--out", str(tmp_path / "a"), "-q"]) == 0
    from emcopilot.cli import COARSE_MIN_SNR_DEFAULT as CLI_DEFAULT
    from emcopilot.postprocess import COARSE_MIN_SNR_DEFAULT

    assert seen[-1]["coarse_min_snr"] == COARSE_MIN_SNR_DEFAULT == CLI_DEFAULT
    assert main(["pipeline", images, "--out", str(tmp_path / "b"), "-q",
                 "--coarse-min-snr", "25"]) == 0
    assert seen[-1]["coarse_min_snr"] == 25
    assert main(["pipeline", images, "--out", str(tmp_path / "c"), "-q",
                 "--coarse-min-snr", "none"]) == 0
    assert seen[-1]["coarse_min_snr"] is None
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", images, "--out", str(tmp_path / "d"), "-q", "--coarse-min-snr", "-1"])
    assert exc.value.code != 0
    assert len(seen) == 3


@pytest.mark.slow
def test_scale_split_sets_each_factor_on_the_split_coarse_mask_and_is_recorded(pipeline_run,
                                                                               scaled_run,
                                                                               tmp_path,
                                                                               monkeypatch):
    """scale_split="on": the segment stage maps each image at the factor measured on its coarse
    mask with touching particles split (as the kept checkpoint's Segmentor.probability does),
    lists the images reached and records the mode for `segment`; "off" reaches none and
    measures the plain width."""
    from emcopilot.errors import InputError
    from emcopilot.inference import Segmentor

    src, _, _, _ = pipeline_run
    stems = sorted(p.stem for p in src.iterdir())
    first = scaled_run
    factors = []  # the resize factor of every map the segment stage makes
    predict = Segmentor._predict
    monkeypatch.setattr(Segmentor, "_predict",
                        lambda self, img, scale, support: factors.append(scale)
                        or predict(self, img, scale, support))
    runs = {}
    for mode in ("off", "on"):
        factors.clear()
        out = runs[mode] = tmp_path / mode
        _copy_run(first, out)
        run_pipeline(src, out, **{**TINY, "scale_split": mode})
        coarse = {stem: io.read_label_map(out / "coarse_masks" / f"{stem}.png") for stem in stems}
        # the bar's rows are left out of the measure
        rows = {stem: lab[:BAR_ROW] if stem == BAR_STEM else lab for stem, lab in coarse.items()}
        expected = [normalising_scale(rows[stem], split=mode == "on") for stem in stems]
        assert sorted(factors) == pytest.approx(sorted(expected)), mode
        record = load_state(out)["stages"]["segment"]
        assert record["scale_split_mode"] == mode
        assert record["scale_split"] == (stems if mode == "on" else [])
        seg = Segmentor.load(record["model"], device="cpu")
        assert seg.scale_split == mode and seg.particle_diameter_px == DEFAULT_DIAMETER_PX
        for stem in stems:  # the stored maps are the kept checkpoint's
            image01 = io.normalize(io.read_micrograph(out / "images" / f"{stem}.png").image)
            np.testing.assert_array_equal(
                io.read_micrograph(out / "segmentation" / "prob" / f"{stem}.png").image,
                io.to_uint8(seg.probability(image01, polarity="bright",
                                            scale_labels=coarse[stem])))
    # the fixture's coarse masks hold touching particles: some factors move
    assert sum(normalising_scale(lab, split=True) != normalising_scale(lab)
               for lab in rows.values()) >= 1
    # without the option: the default, recorded
    from emcopilot.particle_scale import SCALE_SPLIT_DEFAULT

    assert load_state(first)["stages"]["segment"]["scale_split_mode"] == SCALE_SPLIT_DEFAULT
    with pytest.raises(InputError):
        run_pipeline(src, tmp_path / "bad", **{**TINY, "scale_split": "sometimes"})


def test_cli_pipeline_passes_scale_split(cli_pipeline, tmp_path):
    """`pipeline --scale-split MODE` reaches run_pipeline; the default is the library's; a bad
    mode exits non-zero before any work."""
    main, images, seen = cli_pipeline
    assert main(["pipeline", images, "--out", str(tmp_path / "a"), "-q"]) == 0
    from emcopilot.cli import SCALE_SPLIT_DEFAULT as CLI_DEFAULT
    from emcopilot.particle_scale import SCALE_SPLIT_DEFAULT

    assert seen[-1]["scale_split"] == SCALE_SPLIT_DEFAULT == CLI_DEFAULT
    for mode in ("auto", "on", "off"):
        assert main(["pipeline", images, "--out", str(tmp_path / mode), "-q",
                     "--scale-split", mode]) == 0
        assert seen[-1]["scale_split"] == mode
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", images, "--out", str(tmp_path / "b"), "-q", "--scale-split", "x"])
    assert exc.value.code != 0
    assert len(seen) == 4


def test_bench_core_probability_re_derives_the_runs_output(pipeline_run, examples_dir,
                                                            tmp_path, capsys):
    """bench_core_probability makes the run's particles again from its stored maps at each core
    probability: at the value the run chose, its scores are those of the run's own output; and
    its label-free choice after the faint filter is the run's."""
    import json

    from bench.bench_core_probability import main as bench_main
    from emcopilot.evaluate import evaluate_dirs

    src, out, _, _ = pipeline_run
    truth = _manual_masks(src, examples_dir, tmp_path / "truth")
    record = load_state(out)["stages"]["segment"]
    report = tmp_path / "core.json"
    assert bench_main(["--run", str(out), "--truth", str(truth), "--out", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["recorded_min_peak"] == record["min_peak"] == got["chosen_after_faint_filter"]
    assert str(record["min_peak"]) in capsys.readouterr().out
    own = evaluate_dirs(out / "segmentation", truth, "instance")["aggregate"]
    row = next(r for r in got["rows"] if r["min_peak"] == record["min_peak"])
    assert row["n_pred"] == own["n_pred"] > 0
    assert row["obj_f1"] == pytest.approx(own["obj_f1"])
    assert row["dice_mean"] == pytest.approx(own["dice_mean"])
    assert len({r["n_pred"] for r in got["rows"]}) > 1  # the core probability matters


@pytest.mark.slow
def test_bench_candidates_re_derives_each_candidates_output(two_seed_run, examples_dir,
                                                           tmp_path, capsys):
    """bench_candidates scores every candidate of a two-seed run (seed 0, seed 1, their mean):
    the kept one's re-derived particles score as the run's own output, each candidate's F1
    against the coarse masks is the one the run recorded, the two seeds' agreement is their
    outputs' Dice against each other, and each judge is ranked against the labels."""
    import json

    from bench.bench_candidates import main as bench_main
    from emcopilot.evaluate import evaluate_dirs

    src, out = two_seed_run
    truth = _manual_masks(src, examples_dir, tmp_path / "truth")
    record = load_state(out)["stages"]["segment"]
    report = tmp_path / "candidates.json"
    assert bench_main(["--runs", str(out), "--truth", str(truth), "--out", str(report),
                       "--keep", str(tmp_path / "outputs")]) == 0
    got = json.loads(report.read_text())
    rows = {r["candidate"]: r for r in got["rows"]}
    assert set(rows) == {"seed0", "seed1", "mean"}
    assert {k: r["recorded_f1_vs_coarse"] for k, r in rows.items()} == record["f1_vs_coarse"]
    kept = [r for r in rows.values() if r["kept"]]
    assert len(kept) == 1
    # --keep: each candidate's particles; the kept one's are the run's own, image by image
    stems = sorted(p.stem for p in (out / "segmentation" / "prob").glob("*.png"))
    for name in rows:
        assert sorted(p.stem for p in (tmp_path / "outputs" / f"0_{name}").glob("*.png")) == stems
    for stem in stems:
        np.testing.assert_array_equal(
            io.read_label_map(tmp_path / "outputs" / f"0_{kept[0]['candidate']}" / f"{stem}.png"),
            io.read_label_map(out / "segmentation" / f"{stem}.png"))
    own = evaluate_dirs(out / "segmentation", truth, "instance")["aggregate"]
    assert kept[0]["n_pred"] == own["n_pred"] > 0
    assert kept[0]["obj_f1"] == pytest.approx(own["obj_f1"])
    assert kept[0]["dice_mean"] == pytest.approx(own["dice_mean"])
    assert kept[0]["min_peak"] == record["min_peak"]
    coarse = evaluate_dirs(out / "segmentation", out / "coarse_masks", "instance")["aggregate"]
    assert kept[0]["coarse_dice_mean"] == pytest.approx(coarse["dice_mean"])
    # Dice per image is symmetric, so the two seeds agree with each other equally
    assert rows["seed0"]["agreement_dice"] == pytest.approx(rows["seed1"]["agreement_dice"])
    assert 0 <= rows["mean"]["agreement_dice"] <= 1
    miou = load_state(out)["stages"]["segmentor"]["result"]
    assert rows["seed1"]["synthetic_val_miou"] == miou["seed1"]["best"]["miou"]
    assert rows["mean"]["synthetic_val_miou"] == pytest.approx(
        (miou["seed0"]["best"]["miou"] + miou["seed1"]["best"]["miou"]) / 2)
    assert set(got["judges"]) >= {"recorded F1 vs coarse", "Dice vs coarse", "agreement"}
    for judge in got["judges"].values():
        assert judge["n"] == 3 and judge["pick"].split("/")[1] in rows
    assert "keeps" in capsys.readouterr().out
    # the rule the pipeline keeps by, applied to the run's seeds and their mean, keeps its pick
    (picks,) = got["subset_picks"]
    assert sorted(picks["seeds"]) == ["seed0", "seed1"]
    assert picks["picks"]["recorded F1 vs coarse"]["candidate"] == kept[0]["candidate"]


@pytest.mark.slow
def test_bench_candidates_makes_a_seed_sets_mean_as_the_pipeline_does(two_seed_run, tmp_path):
    """subset_means makes the mean of a set of seeds as the segment stage makes its "mean": for
    the run's two seeds (offered beside a third, so that they are a smaller set), the same
    stored maps byte for byte and the same label-free score."""
    import json

    from bench.bench_candidates import candidates_of, subset_means

    src, out = two_seed_run
    record = load_state(out)["stages"]["segment"]
    stems = sorted(p.stem for p in src.iterdir())
    images = {s: io.normalize(io.read_micrograph(out / "images" / f"{s}.png").image)
              for s in stems}
    coarse = {s: io.read_label_map(out / "coarse_masks" / f"{s}.png") for s in stems}
    cands = candidates_of(out)
    del cands["mean"]
    cands["seed2"] = cands["seed1"]  # a stand-in third seed
    means = subset_means(cands, stems, images, coarse, record, tmp_path)
    assert set(means) == {"mean_0_1", "mean_0_2", "mean_1_2"}
    both = means["mean_0_1"]
    assert both["members"] == ["seed0", "seed1"]
    for stem in stems:
        assert (both["maps"] / f"{stem}.png").read_bytes() == \
            (out / "segmentation" / "candidates" / "mean" / f"{stem}.png").read_bytes()
    assert both["score"] == pytest.approx(record["f1_vs_coarse"]["mean"])
    cfg = json.loads((both["checkpoint"] / "config.json").read_text())["config"]
    assert len(cfg["ensemble"]) == 2


def test_bench_matching_cost_chooses_as_the_run_did(pipeline_run, tmp_path):
    """bench_matching_cost times choose_min_peak on the run's kept segmentor as the segment
    stage called it: same choice and scores as the run recorded, and the run left untouched."""
    import json

    from bench.bench_matching_cost import main as bench_main
    from emcopilot.inference import Segmentor

    src, out, _, _ = pipeline_run
    record = load_state(out)["stages"]["segment"]
    before = Segmentor.load(record["model"], device="cpu").config["config"]
    report = tmp_path / "cost.json"
    assert bench_main(["--run", str(out), "--out", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["images"] == len(list(src.iterdir())) and got["seconds"] > 0
    assert (got["min_peak"], got["grow_to"]) == (record["min_peak"], record["grow_to"])
    assert got["f1"] == before["min_peak_f1"] and got["grow_f1"] == before["grow_f1"]
    assert Segmentor.load(record["model"], device="cpu").config["config"] == before
