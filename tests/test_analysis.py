"""PSD summaries, plots, overlays and batch reports on constructed and real label maps."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import disk

from emcopilot import analysis as an
from emcopilot import io
from emcopilot.errors import InputError
from emcopilot.priors import particle_table

MEDIAN_PX, SIGMA = 24.0, 0.25


def discs(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n non-overlapping discs on a grid; diameters (px) drawn from a log-normal."""
    rng = np.random.default_rng(seed)
    d = np.exp(rng.normal(math.log(MEDIAN_PX), SIGMA, n))
    cell = int(d.max()) + 4
    side = int(math.ceil(math.sqrt(n)))
    lab = np.zeros((side * cell, side * cell), np.int32)
    for i, di in enumerate(d):
        cy, cx = (i // side) * cell + cell / 2, (i % side) * cell + cell / 2
        lab[disk((cy, cx), di / 2, shape=lab.shape)] = i + 1
    return lab, d


def no_nan(obj) -> None:
    json.loads(json.dumps(obj, allow_nan=False))


def test_summary_recovers_known_discs():
    lab, d = discs()
    t = particle_table(lab, min_area=1)
    s = an.psd_summary(t, image_area_px=lab.size)
    no_nan(s)
    assert s["count"] == 100 and s["unit"] == "px"
    assert s["mean"] == pytest.approx(d.mean(), rel=0.03)
    assert s["median"] == pytest.approx(np.median(d), rel=0.03)
    assert s["d50"] == pytest.approx(np.median(d), rel=0.03)
    assert s["d10"] == pytest.approx(np.percentile(d, 10), rel=0.04)
    assert s["d90"] == pytest.approx(np.percentile(d, 90), rel=0.04)
    assert s["std"] == pytest.approx(d.std(ddof=1), rel=0.08)
    assert s["d10"] < s["d50"] < s["d90"] and s["min"] <= s["d10"] and s["d90"] <= s["max"]
    fit = s["lognormal"]
    assert fit["sigma"] == pytest.approx(np.log(d).std(), rel=0.06)
    assert fit["sigma"] == pytest.approx(SIGMA, rel=0.2)
    assert fit["geometric_mean"] == pytest.approx(math.exp(np.log(d).mean()), rel=0.03)
    assert fit["mu"] == pytest.approx(math.log(fit["geometric_mean"]))
    assert 0 < fit["ks_statistic"] < 0.15  # drawn from a log-normal: a good fit
    assert s["number_density"] == pytest.approx(100 / (lab.size / 1e6))
    assert s["number_density_unit"] == "per megapixel"


def test_lognormal_ks_flags_a_bad_fit():
    # bimodal sizes: far from log-normal
    d = np.r_[np.full(50, 10.0), np.full(50, 40.0)] + np.linspace(0, 0.5, 100)
    t = pd.DataFrame({"equivalent_diameter_px": d})
    assert an.psd_summary(t)["lognormal"]["ks_statistic"] > 0.2


def test_pixel_size_scaling():
    lab, _ = discs(n=36, seed=1)
    px = particle_table(lab, min_area=1)
    s_px = an.psd_summary(px, image_area_px=lab.size)
    nm_table = particle_table(lab, min_area=1, pixel_size_nm=0.5)
    for s_nm in (an.psd_summary(nm_table, image_area_px=lab.size),
                 an.psd_summary(px, pixel_size_nm=0.5, image_area_px=lab.size)):
        assert s_nm["unit"] == "nm"
        for k in ("mean", "std", "median", "d10", "d50", "d90", "min", "max"):
            assert s_nm[k] == pytest.approx(0.5 * s_px[k], rel=1e-9), k
        assert s_nm["lognormal"]["sigma"] == pytest.approx(s_px["lognormal"]["sigma"], rel=1e-6)
        assert s_nm["lognormal"]["mu"] == pytest.approx(s_px["lognormal"]["mu"] + math.log(0.5),
                                                        abs=1e-6)
        area_um2 = lab.size * 0.25 / 1e6
        assert s_nm["number_density"] == pytest.approx(36 / area_um2)
        assert s_nm["number_density_unit"] == "per um2"
    with pytest.raises(InputError):
        an.diameters(px, "nm")  # px sizes are never passed off as nm


def test_empty_and_single_particle(tmp_path):
    empty = particle_table(np.zeros((64, 64), np.int32))
    s = an.psd_summary(empty, image_area_px=64 * 64)
    no_nan(s)
    assert s["count"] == 0 and s["mean"] is None and s["d50"] is None
    assert s["lognormal"] is None and s["number_density"] == 0
    an.plot_psd(empty, tmp_path / "e.png", tmp_path / "e.svg", unit="px")
    assert "no particles" in (tmp_path / "e.svg").read_text()
    Image.open(tmp_path / "e.png").load()
    one = np.zeros((64, 64), np.int32)
    one[disk((32, 32), 8)] = 1
    s1 = an.psd_summary(particle_table(one))
    no_nan(s1)
    assert s1["count"] == 1 and s1["std"] is None and s1["lognormal"] is None
    assert s1["mean"] == pytest.approx(16, rel=0.05)


def test_plot_files_open(tmp_path):
    lab, _ = discs(n=49, seed=2)
    t = particle_table(lab, pixel_size_nm=0.2)
    png, svg = tmp_path / "p" / "psd.png", tmp_path / "p" / "psd.svg"
    an.plot_psd(t, png, svg, unit="nm", title="test")
    with Image.open(png) as im:
        im.load()
        assert im.size[0] > 300 and im.size[1] > 200
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text()
    assert "equivalent diameter (nm)" in text and "D50" in text and "log-normal" in text
    assert sorted(p.name for p in png.parent.iterdir()) == ["psd.png", "psd.svg"]  # no temp files


def test_overlay_outlines():
    img = np.full((40, 40), 0.5, np.float32)
    lab = np.zeros((40, 40), np.int32)
    lab[10:20, 10:20] = 1
    rgb = an.overlay(img, lab, color=(255, 0, 0))
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 40, 3)
    red = np.all(rgb == (255, 0, 0), axis=2)
    assert red[10, 10:20].all() and red[19, 10:20].all() and red[10:20, 10].all()
    assert not red[12:18, 12:18].any() and not red[:9].any()  # interior and background grey
    assert np.all(rgb[0, 0] == 128)
    numbered = an.overlay(img, lab, numbers=True)
    assert numbered.shape == (40, 40, 3)
    with pytest.raises(InputError):
        an.overlay(img, lab[:30])


def _instances_at_least(labels: np.ndarray, min_area: int) -> int:
    counts = np.bincount(labels.ravel())[1:]
    return int((counts >= min_area).sum())


def test_report_on_real_emps_segmaps(examples_dir, tmp_path):
    seg = examples_dir / "emps" / "segmaps"
    stems = sorted(p.stem for p in seg.glob("*.png"))
    assert len(stems) == 6
    items, expected = [], {}
    for i, s in enumerate(stems):
        lab = io.read_label_map(seg / f"{s}.png")
        expected[s] = _instances_at_least(lab, 30)
        image01 = io.normalize(io.read_micrograph(examples_dir / "emps" / "images" / f"{s}.png").image) \
            if i < 2 else None
        items.append((s, lab, 1.5, image01))
    calls = []
    out = tmp_path / "report"
    summary = an.write_psd_report(iter(items), out, min_area=30, per_image_plots=True,
                                  progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls and calls[-1][0] == calls[-1][1] == 6
    for s in stems:
        assert summary["per_image"][s]["count"] == expected[s]
        assert summary["per_image"][s]["unit"] == "nm"
    assert sum(expected.values()) > 50
    assert summary["batch"]["count"] == sum(expected.values())
    assert summary["batch"]["unit"] == "nm"
    assert summary["warnings"] == []
    # files
    on_disk = json.loads((out / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert on_disk == summary
    csv = pd.read_csv(out / "particles.csv")
    assert len(csv) == summary["batch"]["count"]
    assert set(csv["image"]) == set(stems)
    assert (csv.groupby("image").size().to_dict()) == {s: c for s, c in expected.items() if c}
    assert np.allclose(csv["equivalent_diameter_nm"], 1.5 * csv["equivalent_diameter_px"])
    assert (csv["area_px"] >= 30).all()
    assert csv["equivalent_diameter_nm"].mean() == pytest.approx(summary["batch"]["mean"])
    with Image.open(out / "psd.png") as im:
        im.load()
    ET.parse(out / "psd.svg")
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == [f"{s}.png" for s in stems[:2]]
    with Image.open(out / "overlays" / f"{stems[0]}.png") as im:
        assert im.mode == "RGB" and im.size == (items[0][1].shape[1], items[0][1].shape[0])
    assert len(list((out / "per_image").glob("*_psd.png"))) == 6


def test_mixed_calibration_warns_and_uses_px(tmp_path):
    lab_a, _ = discs(n=16, seed=3)
    lab_b, _ = discs(n=25, seed=4)
    summary = an.write_psd_report([("a", lab_a, 0.5, None), ("b", lab_b, None, None)],
                                  tmp_path, min_area=10)
    assert summary["batch"]["unit"] == "px"
    assert summary["batch"]["count"] == 41
    assert summary["per_image"]["a"]["unit"] == "nm" and summary["per_image"]["b"]["unit"] == "px"
    assert any("px" in w and "pixel size" in w for w in summary["warnings"])
    # the batch statistics are pixel sizes of both images, not a mix of nm and px
    t_a, t_b = particle_table(lab_a), particle_table(lab_b)
    both = np.r_[t_a["equivalent_diameter_px"], t_b["equivalent_diameter_px"]]
    assert summary["batch"]["mean"] == pytest.approx(both.mean())
    assert summary["batch"]["number_density_unit"] == "per megapixel"
    csv = pd.read_csv(tmp_path / "particles.csv")
    assert csv.loc[csv.image == "b", "equivalent_diameter_nm"].isna().all()
    assert csv.loc[csv.image == "a", "equivalent_diameter_nm"].notna().all()
    assert "equivalent diameter (px)" in (tmp_path / "psd.svg").read_text()


def test_all_calibrated_batch_density_and_different_pixel_sizes(tmp_path):
    lab, _ = discs(n=16, seed=5)
    summary = an.write_psd_report([("a", lab, 0.5, None), ("b", lab, 1.0, None)], tmp_path)
    b = summary["batch"]
    assert b["unit"] == "nm" and b["count"] == 32
    area_um2 = lab.size * (0.25 + 1.0) / 1e6
    assert b["number_density"] == pytest.approx(32 / area_um2)
    assert summary["per_image"]["b"]["mean"] == pytest.approx(2 * summary["per_image"]["a"]["mean"])
    assert any("different pixel sizes" in w for w in summary["warnings"])


def test_report_with_no_particles(tmp_path):
    summary = an.write_psd_report([("blank", np.zeros((32, 32), np.int32), None,
                                    np.zeros((32, 32), np.float32))], tmp_path)
    assert summary["batch"]["count"] == 0
    assert "no particles" in (tmp_path / "psd.svg").read_text()
    assert len(pd.read_csv(tmp_path / "particles.csv")) == 0
    assert (tmp_path / "overlays" / "blank.png").is_file()
    json.loads((tmp_path / "summary.json").read_text())
