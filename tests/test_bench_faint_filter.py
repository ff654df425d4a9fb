"""The faint-filter cost bench: both ring expansions, timed on real frames, keep the same
particles; a map that differs is reported and fails the command."""

from __future__ import annotations

import json

import numpy as np

from bench import bench_faint_filter
from bench.bench_faint_filter import load, main, run
from emcopilot import io


def test_both_expansions_keep_the_same_particles_of_real_catalyst_frames(examples_dir):
    items = load(examples_dir / "catalysts" / "images", None, "auto")
    assert len(items) == 4 and all(lab.max() > 5 for _, _, lab in items)
    got = run(items, repeat=1, min_snr=25.0)
    assert got["all_same_particles_kept"] and got["images"] == 4
    assert [r["image"] for r in got["per_image"]] == [stem for stem, _, _ in items]
    # the frames' sizes grouped as they are
    sizes = {f"{im.shape[1]}x{im.shape[0]}" for _, im, _ in items}
    assert set(got["by_size"]) == sizes
    assert sum(s["images"] for s in got["by_size"].values()) == 4


def test_labels_given_and_a_differing_expansion_fails(examples_dir, tmp_path, monkeypatch):
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    img = (0.3 + 0.05 * rng.standard_normal((64, 64))).clip(0, 1)
    lab = np.zeros((64, 64), np.int32)
    lab[10:20, 10:20], lab[40:46, 40:46] = 1, 2
    img[10:20, 10:20] += 0.5  # particle 1 stands out, particle 2 is noise
    io.write_image(images / "a.png", io.to_uint8(img.clip(0, 1)))
    io.write_label_map(labels / "a.png", lab)
    out = tmp_path / "r.json"
    assert main(["--images", str(images), "--labels", str(labels), "--polarity", "bright",
                 "--repeat", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["per_image"][0]["particles"] == 2 and report["all_same_particles_kept"]

    def wrong(labels, distance):  # no ring: no particle can be judged faint
        return np.asarray(labels).copy()

    monkeypatch.setattr(bench_faint_filter, "whole_frame_expansion", wrong)
    assert main(["--images", str(images), "--labels", str(labels), "--polarity", "bright",
                 "--repeat", "1"]) == 1
