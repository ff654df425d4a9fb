"""The scale-factor bench: a run's segmentor again at other particle scales."""

from __future__ import annotations

import json

import numpy as np

from bench.bench_scale_factor import f1_counts, f1_of, main, pipeline_factor, segment_image
from emcopilot import io
from emcopilot.inference import Segmentor
from emcopilot.postprocess import add_coarse_particles
from tests.test_bench_support import _fake_run

STEMS = ("Ru4", "c363833ad2")


def _small_run(root, examples_dir):
    """A finished pipeline run in miniature: 128 px crops of a bundled catalyst and EMPS image,
    their coarse masks, a tiny untrained segmentor as segmentor/selected, and a state file with
    what the bench reads."""
    run, ckpt = _fake_run(root, examples_dir, crop=128, segmentor_dir="selected")
    (run / "pipeline.json").write_text(json.dumps({"stages": {
        "images": {"data_bar": True, "images": {s: {} for s in STEMS}},
        "segment": {"model": str(ckpt), "min_peak": 0.5, "grow_to": None, "add_coarse": True,
                    "support_removed": []}}}))
    return run, ckpt


def test_factor_one_is_the_pipelines_segmentation(tmp_path, examples_dir):
    run, ckpt = _small_run(tmp_path, examples_dir)
    seg = Segmentor.load(ckpt, device="cpu")
    record = json.loads((run / "pipeline.json").read_text())["stages"]["segment"]
    factors = {}
    for stem in STEMS:
        image01 = io.normalize(io.read_micrograph(run / "images" / f"{stem}.png").image)
        coarse = io.read_label_map(run / "coarse_masks" / f"{stem}.png")
        # the pipeline: the factor from the coarse mask, particles from the stored 8-bit map
        prob = seg.probability(image01, polarity="bright", scale_labels=coarse, support=False)
        stored = io.to_uint8(prob).astype(np.float32) / 255.0
        own = seg.instances(stored, min_peak=0.5, grow_to=None)
        factor = factors[stem] = pipeline_factor(seg, image01, coarse, data_bar=True)
        labels, bare = segment_image(seg, image01, coarse, factor, record, support=False,
                                     data_bar=True)
        np.testing.assert_array_equal(bare, own)
        np.testing.assert_array_equal(labels, add_coarse_particles(own, coarse, stored))
        # another factor is another segmentation of the same image, at the image's size
        other, _ = segment_image(seg, image01, coarse, factor * 2, record, support=False,
                                 data_bar=True)
        assert other.shape == labels.shape
        # the factor is the pipeline's: the same map, which another factor does not give
        at_factor = seg.probability(image01, polarity="bright", scale=factor, support=False)
        np.testing.assert_array_equal(at_factor, prob)
        if factor != 1.0:
            unscaled = seg.probability(image01, polarity="bright", scale=1.0, support=False)
            assert not np.allclose(unscaled, prob)
    # the EMPS crop's coarse particles set a factor other than 1 (the catalyst crop has none)
    assert factors["c363833ad2"] != 1.0 and factors["Ru4"] == 1.0


def test_the_bench_writes_a_row_per_factor_and_union(tmp_path, examples_dir):
    run, _ = _small_run(tmp_path, examples_dir)
    truth = tmp_path / "truth"
    truth.mkdir()
    for stem in STEMS:  # the coarse masks stand in for labels
        io.write_label_map(truth / f"{stem}.png",
                           io.read_label_map(run / "coarse_masks" / f"{stem}.png"))
    out = tmp_path / "scale.json"
    assert main(["--run", str(run), "--truth", str(truth), "--truth-format", "instance",
                 "--factors", "1", "2", "--out", str(out), "--keep", str(tmp_path / "kept")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["x1", "x2", "x1 + uncovered x2", "per image, F1 vs coarse"]
    assert all(0 <= r["obj_f1"] <= 1 for r in rows.values())
    assert rows["x1"]["seconds_per_image"] > 0 and rows["x2"]["seconds_per_image"] > 0
    assert all(0 <= rows[f]["f1_vs_coarse"] <= 1 for f in ("x1", "x2"))
    choice = json.loads(out.read_text())["per_image_choice"]
    assert set(choice.values()) <= {"x1", "x2"}
    # --keep leaves every row's particles; the per-image row is each image's chosen factor's
    kept = tmp_path / "kept"
    from emcopilot.postprocess import best_matching

    for stem, factor in choice.items():
        np.testing.assert_array_equal(io.read_label_map(kept / "per_image_choice" / f"{stem}.png"),
                                      io.read_label_map(kept / factor / f"{stem}.png"))
        coarse = io.read_label_map(run / "coarse_masks" / f"{stem}.png")
        own = [io.read_label_map(kept / f"bare_{x}" / f"{stem}.png") for x in ("x1", "x2")]
        assert factor == ("x1", "x2")[best_matching(own, coarse)]


def _discs(centres, shape=(64, 64), r=5):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(centres, 1):
        lab[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = i
    return lab


def test_f1_counts_pool_the_matches_with_the_coarse_mask():
    coarse = _discs([(15, 15), (45, 45)])
    both, one = _discs([(15, 15), (45, 45)]), _discs([(15, 15)])
    assert f1_counts(both, coarse) == (2, 2, 2) and f1_of((2, 2, 2)) == 1.0
    assert f1_counts(one, coarse) == (1, 1, 2) and abs(f1_of((1, 1, 2)) - 2 / 3) < 1e-12
    assert f1_of((0, 0, 0)) == 1.0  # nothing on either side agrees
    # pooled over images: (2 + 1) matches of (2 + 1) particles and (2 + 2) coarse ones
    assert abs(f1_of((3, 3, 4)) - 6 / 7) < 1e-12
