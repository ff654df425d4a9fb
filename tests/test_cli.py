"""The `emcopilot` console script, run as a user runs it: a subprocess, real files, exit codes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EMCOPILOT = [sys.executable, "-m", "emcopilot.cli"]


def run(*args, cwd=None, env=None):
    e = dict(os.environ, **(env or {}))
    e.pop("EMCOPILOT_DEBUG", None)
    return subprocess.run([*EMCOPILOT, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=e, timeout=600)


def assert_clean_error(proc, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert err.startswith("emcopilot: error:") or err.startswith("usage:") or "error:" in err
    assert len(err.splitlines()) <= 3, err


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR (valid CRC) claims width x height pixels, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


@pytest.fixture()
def bad_files(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_text("this is a text file, not an image\n")
    _png_header_only(d / "huge.png", 100_000, 100_000)
    good = tmp_path / "good.tif"
    arr = (np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16)
    import tifffile

    tifffile.imwrite(good, arr)
    data = good.read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 2])
    return d


def test_help_explains_every_command():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("info", "mask", "priors", "synth-masks", "augment", "psd", "pipeline", "evaluate"):
        assert cmd in proc.stdout
    proc = run("mask", "--help")
    assert proc.returncode == 0
    for opt in ("--method", "--intensity-threshold", "--edge-margin", "--points-per-side",
                "--pred-iou-thresh", "--stability-score-thresh", "--max-area"):
        assert opt in proc.stdout


@pytest.mark.parametrize("name", ["empty.png", "notes.png", "huge.png", "truncated.tif"])
def test_bad_input_exits_2_with_one_line(bad_files, tmp_path, name):
    proc = run("info", bad_files / name)
    assert_clean_error(proc)
    assert name in proc.stderr
    out = tmp_path / "masks"
    proc = run("mask", bad_files / name, "--method", "classical", "--out", out, "-q")
    assert_clean_error(proc)


def test_bad_input_loses_nothing_already_written(bad_files, tmp_path, examples_dir):
    out = tmp_path / "masks"
    good = examples_dir / "catalysts" / "images" / "Pt4.jpg"
    proc = run("mask", good, "--method", "classical", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    before = (out / "Pt4.png").read_bytes()
    manifest = json.loads((out / "masks.json").read_text())
    assert "Pt4" in manifest["images"]
    proc = run("mask", bad_files / "truncated.tif", "--method", "classical", "--out", out, "-q")
    assert_clean_error(proc)
    assert (out / "Pt4.png").read_bytes() == before
    assert "Pt4" in json.loads((out / "masks.json").read_text())["images"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_keep_going_skips_bad_files_and_exits_2(bad_files, tmp_path, examples_dir):
    out = tmp_path / "masks"
    proc = run("mask", examples_dir / "catalysts" / "images" / "Pd1.jpg", bad_files / "empty.png",
               "--method", "classical", "--out", out, "--keep-going", "-q")
    assert proc.returncode == 2
    assert (out / "Pd1.png").is_file()
    assert "empty.png" in proc.stderr


def test_name_with_dotdot_is_refused_by_the_store(tmp_path, examples_dir):
    data = tmp_path / "data"
    proc = run("project", "create", "--name", "demo", "--data", data)
    assert proc.returncode == 0, proc.stderr
    pid = proc.stdout.strip()
    img = examples_dir / "catalysts" / "images" / "Ru4.jpg"
    proc = run("project", "add", pid, img, "--name", "../../evil.jpg", "--data", data)
    assert_clean_error(proc)
    assert not (tmp_path / "evil.jpg").exists()
    assert not list(data.rglob("evil*"))
    proc = run("project", "add", pid, img, "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert "Ru4" in proc.stdout


def test_missing_file_and_bad_values(tmp_path):
    assert_clean_error(run("info", tmp_path / "nope.dm4"))
    assert_clean_error(run("psd", tmp_path, "--pixel-size", "-1", "--out", tmp_path / "o"))
    assert_clean_error(run("psd", tmp_path / "empty_dir_missing", "--out", tmp_path / "o"))
    for bad in ("nan", "inf", "0", "x"):
        proc = run("psd", tmp_path, "--pixel-size", bad, "--out", tmp_path / "o")
        assert_clean_error(proc)
        assert f"'{bad}' is not a positive finite number" in proc.stderr
    # a failed command leaves no empty --out behind, however deep, and keeps one that was there
    assert_clean_error(run("priors", tmp_path / "missing", "--out", tmp_path / "o" / "deeper"))
    assert_clean_error(run("train-segmentor", "--images", tmp_path / "missing", "--masks", tmp_path,
                           "--out", tmp_path / "o"))
    assert_clean_error(run("generate", "--generator", tmp_path / "no_model", "--masks", tmp_path,
                           "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    broken = tmp_path / "broken_model"  # fails inside `segment`, after --out was made
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    img = tmp_path / "img.png"
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(img)
    assert_clean_error(run("segment", img, "--model", broken, "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    (tmp_path / "kept").mkdir()
    assert_clean_error(run("generate", "--generator", tmp_path / "no_model", "--masks", tmp_path,
                           "--out", tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir()


def test_number_arguments_accept_their_range_and_nothing_else():
    import argparse

    from emcopilot import cli

    cases = {cli._positive: (["1e-3", "2.5"], ["0", "-1", "nan", "inf", "", "1,5"]),
             cli._width: (["2", "256"], ["1", "257", "8.5", "ab"]),
             cli._threshold_number: (["0.01", "0.99"], ["0", "1", "nan", "-0.5"]),
             cli._positive_int: (["1", "40"], ["0", "-2", "1.0"])}
    for parse, (good, bad) in cases.items():
        for text in good:
            assert parse(text) == float(text)
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError, match=f"^{text!r} is not "):
                parse(text)


def test_info_reads_dm4_pixel_size(shared_data):
    proc = run("info", shared_data / "particlespy_haadf" / "JEOL HAADF Image.dm4", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["shape"] == [112, 112]
    assert info["pixel_size_nm"] == pytest.approx(1.249, abs=1e-3)


def test_info_says_polarity_and_when_it_is_unsure(tmp_path, examples_dir):
    noise = np.random.default_rng(0).normal(128, 20, (96, 96)).clip(0, 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    haadf = examples_dir / "catalysts" / "images" / "Pt4.jpg"
    proc = run("info", haadf, tmp_path / "noise.png")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("polarity bright")
    assert lines[1].endswith("(unsure: check by eye, set it with --polarity)")
    rows = json.loads(run("info", haadf, tmp_path / "noise.png", "--json").stdout)
    assert rows[0]["polarity"] == "bright" and rows[0]["polarity_score"] > 2
    assert rows[1]["polarity_unsure"] is True and abs(rows[1]["polarity_score"]) < 2


def test_front_half_of_the_pipeline_on_real_images(tmp_path, examples_dir):
    """mask -> priors -> synth-masks -> augment -> psd, as in the README, on bundled HAADF images."""
    images = examples_dir / "catalysts" / "images"
    masks, priors, synth = tmp_path / "masks", tmp_path / "priors", tmp_path / "synth"
    proc = run("mask", images, "--method", "classical", "--out", masks, "-q")
    assert proc.returncode == 0, proc.stderr
    stems = sorted(p.stem for p in images.iterdir())
    assert sorted(p.stem for p in masks.glob("*.png")) == stems
    for stem in stems:
        labels = np.array(Image.open(masks / f"{stem}.png"))
        assert labels.shape == (640, 640)
        assert labels.max() >= 5, f"{stem}: only {labels.max()} particles"

    proc = run("priors", masks, "--out", priors, "-q")
    assert proc.returncode == 0, proc.stderr
    assert (priors / "particles.csv").is_file()
    assert len(list((priors / "contours").glob("*.json"))) == len(stems)

    proc = run("synth-masks", priors, "--per-mask", "2", "--out", synth, "-q")
    assert proc.returncode == 0, proc.stderr
    synth_masks = sorted((synth / "masks").glob("*.png"))
    assert len(synth_masks) == 2 * len(stems)
    assert (synth / "comparison.csv").is_file()
    dense = tmp_path / "dense"
    proc = run("synth-masks", priors, "--per-mask", "2", "--attempts", "20", "--out", dense, "-q")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((dense / "manifest.json").read_text())
    assert manifest["parameters"]["attempts"] == 20
    assert manifest["n_particles"] > json.loads((synth / "manifest.json").read_text())["n_particles"]
    assert_clean_error(run("synth-masks", priors, "--attempts", "0", "--out", dense))

    aug = tmp_path / "aug"
    one = tmp_path / "one"
    one.mkdir()
    (one / "Pt4.jpg").write_bytes((images / "Pt4.jpg").read_bytes())
    proc = run("augment", one, "--out", aug, "-q")
    assert proc.returncode == 0, proc.stderr
    assert len(list((aug / "images").glob("Pt4__*.png"))) == 18

    psd = tmp_path / "psd"
    proc = run("psd", masks, "--pixel-size", "0.25", "--images", images, "--out", psd, "-q")
    assert proc.returncode == 0, proc.stderr
    for name in ("particles.csv", "summary.json", "psd.png", "psd.svg"):
        assert (psd / name).is_file(), name
    summary = json.loads((psd / "summary.json").read_text())
    batch = summary["batch"]
    assert batch["unit"] == "nm"
    n_particles = sum(1 for _ in open(psd / "particles.csv")) - 1
    assert batch["count"] == n_particles > 20
    assert batch["d10"] <= batch["d50"] <= batch["d90"]
    Image.open(psd / "psd.png").verify()


def test_mask_leaves_out_a_data_bar_unless_told_not_to(tmp_path, examples_dir):
    """`mask --data-bar on` (default): nothing below the bar's first row; `off`: the bar's
    white characters on black become particles too. masks.json records the setting."""
    from emcopilot import io
    from tests.conftest import with_data_bar

    grey = io.read_micrograph(examples_dir / "emps" / "images" / "f7fa7d1729.png").image
    src = tmp_path / "barred.png"
    Image.fromarray(with_data_bar(np.asarray(grey, np.uint8))).save(src)
    counts = {}
    for setting in ("on", "off"):
        out = tmp_path / setting
        proc = run("mask", src, "--method", "classical", "--classical-preset", "isolated",
                   "--polarity", "dark", "--edge-margin", "0", "--data-bar", setting,
                   "--out", out, "-q")
        assert proc.returncode == 0, proc.stderr
        labels = io.read_label_map(out / "barred.png")
        counts[setting] = bool(labels[516:].any())
        assert labels[:516].any()
        manifest = json.loads((out / "masks.json").read_text())
        assert manifest["data_bar"] == setting
        assert manifest["images"]["barred"]["data_bar_row"] == (516 if setting == "on" else None)
    assert counts == {"on": False, "off": True}


def test_mask_min_snr_drops_the_faint_regions_of_a_real_noisy_image(tmp_path, examples_dir):
    """`mask --min-snr 25` on a bundled catalyst image with added noise: the regions kept are
    the filter's (coarse_mask with the filter on), fewer than without it, and masks.json
    records the level; a bad level is a usage error."""
    from emcopilot import io
    from emcopilot.masking import coarse_mask

    grey = io.read_micrograph(examples_dir / "catalysts" / "images" / "Cu3.jpg").image
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(grey, np.float64) + rng.normal(0, 25, np.shape(grey)), 0, 255)
    src = tmp_path / "noisy.png"
    Image.fromarray(noisy.astype(np.uint8)).save(src)
    counts = {}
    for level in (None, "25"):
        out = tmp_path / f"snr{level}"
        proc = run("mask", src, "--method", "classical", "--out", out, "-q",
                   *(["--min-snr", level] if level else []))
        assert proc.returncode == 0, proc.stderr
        labels = io.read_label_map(out / "noisy.png")
        counts[level] = int(labels.max())
        assert json.loads((out / "masks.json").read_text())["filters"]["min_snr"] == \
            (float(level) if level else 0)
    image01 = io.normalize(io.read_micrograph(src).image)
    np.testing.assert_array_equal(
        io.read_label_map(tmp_path / "snr25" / "noisy.png"),
        coarse_mask(image01, method="classical", filters={"min_snr": 25.0}))
    assert 0 < counts["25"] < counts[None]
    assert_clean_error(run("mask", src, "--method", "classical", "--out", tmp_path / "bad",
                           "--min-snr", "-2"))
