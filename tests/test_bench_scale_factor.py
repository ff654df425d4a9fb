"""The scale-factor bench: a run's segmentor again at other particle scales."""

from __future__ import annotations

import json

import numpy as np

from bench.bench_scale_factor import main, pipeline_factor, segment_image
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
                 "--factors", "1", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["x1", "x2", "x1 + uncovered x2"]
    assert all(0 <= r["obj_f1"] <= 1 for r in rows.values())
    assert rows["x1"]["seconds_per_image"] > 0 and rows["x2"]["seconds_per_image"] > 0
