"""Morphology priors (Algorithm 2): descriptors on known shapes, units, NND, g(r), folder output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import disk, ellipse, polygon

from emcopilot.errors import InputError
from emcopilot.io import read_label_map
from emcopilot.priors import (DESCRIPTORS, compute_priors, load_contours, load_particles,
                              nearest_neighbour_distances, pair_distribution, particle_contours,
                              particle_table)


def _one(labels: np.ndarray, **kw) -> pd.Series:
    t = particle_table(labels, **kw)
    assert len(t) == 1
    return t.iloc[0]


def test_disc_descriptors():
    lab = np.zeros((100, 100), np.int32)
    lab[disk((50, 50), 20)] = 1
    p = _one(lab)
    assert abs(p.circularity - 1) < 0.05
    assert p.aspect_ratio == pytest.approx(1, abs=0.03)
    assert p.eccentricity < 0.1
    assert p.area_px == pytest.approx(np.pi * 20**2, rel=0.02)
    assert p.equivalent_diameter_px == pytest.approx(40, abs=1)
    assert 39 <= p.feret_min_px <= p.feret_max_px <= 42
    assert p.centroid_y == pytest.approx(50) and p.centroid_x == pytest.approx(50)
    assert np.isnan(p.nnd_px)  # only one particle


def test_small_and_large_discs_circularity_close_to_one():
    for r in (5, 10, 40):
        lab = np.zeros((100, 100), np.int32)
        lab[disk((50, 50), r)] = 1
        c = _one(lab).circularity
        assert 0.93 < c <= 1.0, (r, c)


def test_ellipse_aspect_ratio_and_eccentricity():
    lab = np.zeros((100, 100), np.int32)
    lab[ellipse(50, 50, 30, 10)] = 1
    p = _one(lab)
    assert p.aspect_ratio == pytest.approx(3, abs=0.15)
    assert p.eccentricity == pytest.approx(np.sqrt(1 - 1 / 9), abs=0.02)
    assert p.circularity < 0.8
    assert p.feret_max_px == pytest.approx(60, abs=2)  # 2 x the 30 px semi-axis
    assert p.feret_min_px == pytest.approx(20, abs=2)


def test_square_solidity_and_rectangle_feret():
    lab = np.zeros((100, 100), np.int32)
    lab[10:30, 10:30] = 1  # 20 x 20 square
    lab[50:60, 40:80] = 2  # 10 x 40 rectangle
    lab[70:90, 10:40] = 3
    lab[70:85, 10:30] = 0  # L shape: solidity well below 1
    t = particle_table(lab).set_index("label")
    assert t.loc[1, "solidity"] > 0.99
    assert t.loc[2, "feret_min_px"] == pytest.approx(10)
    assert t.loc[2, "feret_max_px"] == pytest.approx(np.hypot(10, 40))
    assert t.loc[2, "aspect_ratio"] == pytest.approx(4, abs=0.1)
    assert t.loc[3, "solidity"] < 0.8


def test_rotated_rectangle_feret_min_is_width():
    lab = np.zeros((120, 120), np.int32)
    th = np.deg2rad(30)
    u, v = np.array([np.cos(th), np.sin(th)]), np.array([-np.sin(th), np.cos(th)])
    c = np.array([60.0, 60.0])
    corners = np.array([c + 30 * u + 6 * v, c + 30 * u - 6 * v, c - 30 * u - 6 * v,
                        c - 30 * u + 6 * v])
    rr, cc = polygon(corners[:, 0], corners[:, 1])
    lab[rr, cc] = 1
    p = _one(lab)
    assert p.feret_min_px == pytest.approx(12, abs=1.5)
    assert p.feret_max_px == pytest.approx(np.hypot(60, 12), abs=2)


def test_pixel_size_scales_lengths_and_areas():
    lab = np.zeros((100, 100), np.int32)
    lab[ellipse(30, 30, 15, 8)] = 1
    lab[disk((70, 70), 12)] = 2
    px = particle_table(lab)
    nm = particle_table(lab, pixel_size_nm=2.0)
    assert "area_nm2" not in px.columns
    for col in ("perimeter", "equivalent_diameter", "feret_max", "feret_min", "nnd"):
        np.testing.assert_allclose(nm[f"{col}_nm"], 2 * px[f"{col}_px"])
    np.testing.assert_allclose(nm["area_nm2"], 4 * px["area_px"])
    for col in ("circularity", "aspect_ratio", "solidity", "eccentricity"):
        np.testing.assert_allclose(nm[col], px[col])  # dimensionless: unchanged
    with pytest.raises(InputError):
        particle_table(lab, pixel_size_nm=0)


def test_min_area_empty_and_bad_input():
    lab = np.zeros((50, 50), np.int32)
    lab[5:8, 5:8] = 1  # 9 px: below the default min_area
    lab[20:30, 20:30] = 2
    t = particle_table(lab, image_name="x")
    assert list(t["label"]) == [2] and list(t["image"]) == ["x"]
    assert len(particle_table(lab, min_area=5)) == 2
    empty = particle_table(np.zeros((20, 20), np.int32), pixel_size_nm=1.0)
    assert len(empty) == 0 and {"area_px", "nnd_px", "area_nm2", "feret_min_px"} <= set(empty)
    assert particle_contours(np.zeros((20, 20), np.int32)) == []
    with pytest.raises(InputError):
        particle_table(np.zeros((3, 4, 5), np.int32))


def test_nnd_on_grid():
    yy, xx = np.meshgrid(np.arange(5) * 10.0, np.arange(4) * 10.0, indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], 1)
    np.testing.assert_allclose(nearest_neighbour_distances(pts), 10.0)
    assert np.isnan(nearest_neighbour_distances(np.array([[1.0, 2.0]]))).all()
    assert nearest_neighbour_distances(np.zeros((0, 2))).size == 0
    # Table: discs on a 30 px grid, plus one closer pair.
    lab = np.zeros((130, 130), np.int32)
    k = 0
    for r in (20, 50, 80, 110):
        for c in (20, 50, 80, 110):
            k += 1
            lab[disk((r, c), 5)] = k
    t = particle_table(lab, pixel_size_nm=0.5)
    np.testing.assert_allclose(t["nnd_px"], 30.0, atol=1e-6)
    np.testing.assert_allclose(t["nnd_nm"], 15.0, atol=1e-6)


def test_pair_distribution_random_points_is_one():
    rng = np.random.default_rng(0)
    shape = (300, 500)
    pts = rng.uniform(0, 1, (2000, 2)) * np.array(shape)
    r, g = pair_distribution(pts, shape, n_bins=40)
    assert r.shape == g.shape == (40,)
    assert r.max() < min(shape) / 4
    assert abs(g[5:].mean() - 1) < 0.03  # edge-corrected: no fall-off at large r
    assert np.all(np.abs(g[5:] - 1) < 0.15)


def test_pair_distribution_detects_structure():
    shape = (400, 400)
    # Hard-core grid: no pairs closer than the spacing -> g ~ 0 below it, a peak at it.
    yy, xx = np.meshgrid(np.arange(5, 400, 20.0), np.arange(5, 400, 20.0), indexing="ij")
    grid = np.stack([yy.ravel(), xx.ravel()], 1)
    r, g = pair_distribution(grid, shape, r_max=60, n_bins=30)
    assert np.all(g[r < 18] == 0)
    assert g[(r > 18) & (r < 22)].max() > 3
    # Clustered: pairs 2 px apart -> g >> 1 at small r.
    rng = np.random.default_rng(1)
    centres = rng.uniform(20, 380, (300, 2))
    pts = np.concatenate([centres, centres + [2.0, 0.0]])
    r, g = pair_distribution(pts, shape, r_max=40, n_bins=20)
    assert g[1] > 5 and abs(g[-5:].mean() - 1) < 0.3
    _, g1 = pair_distribution(np.array([[1.0, 1.0]]), shape)
    assert np.isnan(g1).all()


def test_contours_rasterise_back_to_particles(examples_dir):
    lab = read_label_map(examples_dir / "emps" / "segmaps" / "31121ca5cf.png")
    cs = particle_contours(lab)
    t = particle_table(lab)
    assert [c["label"] for c in cs] == list(t["label"])
    for c in cs[:20]:
        pts = np.asarray(c["contour"])
        rr, cc = polygon(pts[:, 0], pts[:, 1], lab.shape)
        drawn = np.zeros(lab.shape, bool)
        drawn[rr, cc] = True
        truth = lab == c["label"]
        iou = (drawn & truth).sum() / (drawn | truth).sum()
        assert iou > 0.97, (c["label"], iou)


def _examples(examples_dir):
    paths = sorted((examples_dir / "emps" / "segmaps").glob("*.png"))
    assert len(paths) == 6
    return [(p.stem, read_label_map(p), None) for p in paths]


def test_compute_priors_on_examples(examples_dir, tmp_path):
    items = _examples(examples_dir)
    calls = []
    table = compute_priors(items, tmp_path, progress=lambda d, t, m: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1]
    assert len(table) > 100 and set(table["image"]) == {n for n, _, _ in items}
    # Sanity of every descriptor on real particles.
    assert (table["area_px"] >= 10).all()
    assert table["circularity"].between(0, 1).all() and table["circularity"].median() > 0.7
    assert (table["aspect_ratio"] >= 1).all()
    assert table["solidity"].between(0.3, 1).all()
    assert table["eccentricity"].between(0, 1).all()
    assert (table["feret_min_px"] <= table["feret_max_px"] + 1e-9).all()
    assert table["nnd_px"].notna().all()
    assert not any(c.endswith("_nm") or c.endswith("_nm2") for c in table.columns)
    # Files.
    for name, lab, _ in items:
        per = pd.read_csv(tmp_path / "per_image" / f"{name}.csv")
        assert len(per) == int((np.bincount(lab.ravel())[1:] >= 10).sum())
        doc = json.loads((tmp_path / "contours" / f"{name}.json").read_text())
        assert doc["image"] == name and doc["shape"] == list(lab.shape)
        assert doc["pixel_size_nm"] is None and len(doc["particles"]) == len(per)
    glob_t = load_particles(tmp_path)
    assert len(glob_t) == len(table)
    np.testing.assert_allclose(glob_t["area_px"], table["area_px"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_particles"] == len(table) and summary["n_images"] == 6
    for d in DESCRIPTORS:
        s = summary["descriptors"][d]
        assert s["count"] == len(table)
    assert summary["descriptors"]["area"]["mean"] == pytest.approx(table["area_px"].mean())
    gr = pd.read_csv(tmp_path / "gr.csv")
    assert list(gr.columns) == ["r_px", "g"] and len(gr) == 50 and np.isfinite(gr["g"]).all()
    for png in ("descriptors.png", "nnd_gr.png"):
        with Image.open(tmp_path / "plots" / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    docs = load_contours(tmp_path)
    assert [d["image"] for d in docs] == sorted(n for n, _, _ in items)


def test_compute_priors_pixel_size_and_errors(tmp_path):
    lab = np.zeros((64, 64), np.int32)
    lab[disk((20, 20), 6)] = 1
    lab[disk((40, 44), 8)] = 2
    t = compute_priors([("a", lab, 0.5), ("b", np.zeros((64, 64), np.int32), None)], tmp_path)
    assert len(t) == 2 and t["area_nm2"].notna().all()
    assert json.loads((tmp_path / "contours" / "a.json").read_text())["pixel_size_nm"] == 0.5
    assert len(pd.read_csv(tmp_path / "per_image" / "b.csv")) == 0
    # Re-running with fewer images drops the stale per-image files of the first run.
    compute_priors([("a", lab, 0.5)], tmp_path)
    assert [d["image"] for d in load_contours(tmp_path)] == ["a"]
    assert not (tmp_path / "per_image" / "b.csv").exists()
    with pytest.raises(InputError):
        compute_priors([("a", lab, None), ("a", lab, None)], tmp_path / "dup")
    with pytest.raises(InputError):
        compute_priors([("../x", lab, None)], tmp_path / "bad")
    with pytest.raises(InputError):
        load_contours(tmp_path / "missing")


def test_priors_on_emps_test_subset(shared_data, tmp_path):
    paths = sorted((shared_data / "emps_test" / "segmaps").glob("*.png"))[:12]
    items = [(p.stem, read_label_map(p), None) for p in paths]
    table = compute_priors(items, tmp_path)
    expected = sum(int((np.bincount(lab.ravel())[1:] >= 10).sum()) for _, lab, _ in items)
    assert len(table) == expected > 50
    assert table["circularity"].between(0, 1).all()
    assert (table["aspect_ratio"] >= 1).all() and table["solidity"].between(0, 1).all()
    assert len(load_contours(tmp_path)) == len(items)
