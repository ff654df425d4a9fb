"""The support-removal bench: it re-runs a pipeline run's segment stage per setting."""

from __future__ import annotations

import json

import numpy as np
import torch

from bench.bench_support import main, segment_run
from emcopilot import io
from emcopilot.inference import Segmentor
from emcopilot.masking import coarse_mask
from emcopilot.nets import UNetPlusPlus
from emcopilot.training import save_checkpoint


def _fake_run(root, examples_dir, crop: int | None = None, segmentor_dir: str = "best_miou"):
    """A pipeline run folder: one bundled catalyst and one EMPS image (bright copies; their
    top-left ``crop`` px when given), their classical coarse masks, a (tiny, untrained)
    scale-normalised segmentor that adds coarse particles (in ``segmentor/<segmentor_dir>``),
    and the state file."""
    run = root / "run"
    for sub in ("images", "coarse_masks"):
        (run / sub).mkdir(parents=True)
    sources = {"Ru4": examples_dir / "catalysts" / "images" / "Ru4.jpg",
               "c363833ad2": examples_dir / "emps" / "images" / "c363833ad2.png"}
    for stem, src in sources.items():
        image01 = io.normalize(io.read_micrograph(src).image)
        if crop:
            image01 = image01[:crop, :crop]
        bright = io.bright_particles(image01, "auto")
        io.write_image(run / "images" / f"{stem}.png", bright)
        io.write_label_map(run / "coarse_masks" / f"{stem}.png",
                           coarse_mask(bright, method="classical", polarity="bright"))
    torch.manual_seed(0)
    net = UNetPlusPlus(base=4, depth=3, attention="cbam").eval()
    ckpt = save_checkpoint(run / "segmentor" / segmentor_dir, net, None,
                           {"image_size": 64, "particle_diameter_px": 32, "add_coarse": True,
                            "input_polarity": "bright", "threshold": 0.5}, epoch=1)
    (run / "pipeline.json").write_text(json.dumps(
        {"stages": {"images": {"data_bar": True}, "segment": {"model": str(ckpt)}}}))
    return run, ckpt


def test_segment_run_removes_the_support_where_the_mode_says(tmp_path, examples_dir):
    run, ckpt = _fake_run(tmp_path, examples_dir)
    seg = Segmentor.load(ckpt, device="cpu")
    outs = {}
    for mode, removed in (("off", 0), ("auto", 1), ("on", 2)):
        outs[mode] = tmp_path / mode
        assert segment_run(run, seg, mode, outs[mode], data_bar=True) == removed
    # the free particles (no support seen) come out the same with "auto" as with "off"
    np.testing.assert_array_equal(io.read_label_map(outs["auto"] / "c363833ad2.png"),
                                  io.read_label_map(outs["off"] / "c363833ad2.png"))
    # "off" is the run's own segment stage: particles from the stored 8-bit map, plus the
    # coarse particles the segmentor missed
    from emcopilot.postprocess import add_coarse_particles

    image01 = io.normalize(io.read_micrograph(run / "images" / "Ru4.png").image)
    coarse = io.read_label_map(run / "coarse_masks" / "Ru4.png")
    prob = seg.probability(image01, polarity="bright", scale_labels=coarse, support="off")
    stored = io.to_uint8(prob).astype(np.float32) / 255.0
    expected = add_coarse_particles(seg.instances(stored), coarse, stored)
    got = io.read_label_map(outs["off"] / "Ru4.png")
    assert got.max() > 0
    np.testing.assert_array_equal(got, expected)


def test_the_bench_writes_one_row_per_setting(tmp_path, examples_dir):
    run, _ = _fake_run(tmp_path, examples_dir)
    truth = tmp_path / "truth"
    truth.mkdir()
    for stem in ("Ru4", "c363833ad2"):  # the coarse masks stand in for labels
        io.write_label_map(truth / f"{stem}.png",
                           io.read_label_map(run / "coarse_masks" / f"{stem}.png"))
    out = tmp_path / "support.json"
    assert main(["--run", str(run), "--truth", str(truth), "--modes", "auto",
                 "--widths", "1.5", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["support_removal"], r["radius_widths"], r["images_removed"]) for r in rows] == \
        [("off", None, 0), ("auto", 1.5, 1)]
    assert all(0 <= r["obj_f1"] <= 1 for r in rows)
