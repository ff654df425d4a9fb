"""Tests for emcopilot.io: readers (real DM4/HSPY/PNG/JPEG, constructed TIFFs), normalisation,
polarity, label maps, file names and every kind of bad input."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from emcopilot import io
from emcopilot.errors import InputError

CATALYSTS = ["Cu3", "Pd1", "Pt4", "Ru4"]


# --------------------------------------------------------------------------- helpers

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR (valid CRC) claims width x height 8-bit grey, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    path.write_bytes(data)
    return path


def _tiff_header_only(path: Path, width: int, height: int) -> Path:
    """A baseline little-endian TIFF whose IFD claims width x height 8-bit grey, 16 data bytes."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    data_off = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, val in entries:
        val = data_off if tag == 273 else val
        out += struct.pack("<HHI", tag, typ, 1)
        out += struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val)
    path.write_bytes(out + struct.pack("<I", 0) + b"\x00" * 16)
    return path


def _blobs(shape=(96, 128), bright=True, seed=0) -> np.ndarray:
    """Noisy flat background (0.5) with 8 round particles (0.95 if bright, else 0.05)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 0.5, np.float32)
    for _ in range(8):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        r = rng.integers(3, 7)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.95 if bright else 0.05
    img += rng.normal(0, 0.03, shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- real files

def test_dm4_pixel_size(shared_data):
    mg = io.read_micrograph(shared_data / "particlespy_haadf" / "JEOL HAADF Image.dm4")
    assert mg.pixel_size_nm == pytest.approx(1.249, abs=1e-3)
    assert mg.image.shape == (112, 112) and mg.image.dtype == np.float32
    assert mg.name == "JEOL HAADF Image" and mg.n_frames == 1 and mg.frame == 0
    assert np.isfinite(mg.image).all() and mg.image.std() > 0
    json.dumps(mg.metadata)  # raw metadata is JSON-serialisable


def test_hspy_pixel_size(shared_data):
    mg = io.read_micrograph(shared_data / "particlespy_haadf" / "SiO2 HAADF Image.hspy")
    assert mg.pixel_size_nm == pytest.approx(8.55, abs=0.01)
    assert mg.image.shape == (128, 128)
    json.dumps(mg.metadata)
    assert io.detect_polarity(io.normalize(mg.image)) == "bright"  # HAADF


def test_bundled_jpeg_and_png(examples_dir):
    jpg = io.read_micrograph(examples_dir / "catalysts" / "images" / "Pt4.jpg")
    assert jpg.image.shape == (640, 640) and jpg.image.dtype == np.float32
    assert jpg.pixel_size_nm is None and jpg.name == "Pt4"
    ref = np.asarray(Image.open(examples_dir / "catalysts" / "images" / "Pt4.jpg").convert("L"))
    assert np.abs(jpg.image - ref).max() <= 1.0  # same luminance as PIL's "L" (rounding only)
    pngs = sorted((examples_dir / "emps" / "images").glob("*.png"))
    mg = io.read_micrograph(pngs[0])
    assert mg.image.ndim == 2 and mg.image.max() > mg.image.min()
    assert 0 <= mg.image.min() and mg.image.max() <= 255


def test_list_images(examples_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "B.TIF").write_bytes(b"")
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / ".hidden.png").write_bytes(b"")
    got = io.list_images([tmp_path, examples_dir / "catalysts" / "images" / "Pt4.jpg"])
    names = [p.name for p in got]
    assert "a.png" in names and "B.TIF" in names and "Pt4.jpg" in names
    assert "notes.txt" not in names and ".hidden.png" not in names
    assert got == sorted(got, key=lambda q: (str(q.parent), q.name.lower(), q.name))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError):
        io.list_images(empty)
    with pytest.raises(InputError):
        io.list_images(tmp_path / "notes.txt")
    with pytest.raises(InputError):
        io.list_images(tmp_path / "missing")


# --------------------------------------------------------------------------- TIFF round trips

def test_tiff_16bit_roundtrip_and_imagej_calibration(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65535, (40, 50), dtype=np.uint16)
    p = tmp_path / "img16.tif"
    tifffile.imwrite(p, a, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"unit": "um"})
    mg = io.read_micrograph(p)
    np.testing.assert_array_equal(mg.image, a.astype(np.float32))
    assert mg.pixel_size_nm == pytest.approx(250.0, rel=1e-6)
    json.dumps(mg.metadata)


def test_tiff_float32_roundtrip_cm_resolution(tmp_path):
    rng = np.random.default_rng(2)
    a = (rng.normal(1e5, 3e4, (30, 20))).astype(np.float32)
    p = tmp_path / "f32.tiff"
    px_cm = 2e-7  # 2 nm
    tifffile.imwrite(p, a, resolution=(1 / px_cm, 1 / px_cm), resolutionunit="CENTIMETER")
    mg = io.read_micrograph(p)
    np.testing.assert_array_equal(mg.image, a)
    assert mg.pixel_size_nm == pytest.approx(2.0, rel=1e-5)


def test_tiff_72dpi_is_not_a_calibration(tmp_path):
    p = tmp_path / "dpi.tif"
    tifffile.imwrite(p, np.zeros((8, 8), np.uint8) + 3, resolution=(72, 72),
                     resolutionunit="INCH")
    assert io.read_micrograph(p).pixel_size_nm is None


def test_rgb_to_grey(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    expect = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    for name in ("rgb.png", "rgb.tif"):
        p = tmp_path / name
        if name.endswith(".png"):
            Image.fromarray(rgb).save(p)
        else:
            tifffile.imwrite(p, rgb, photometric="rgb")
        mg = io.read_micrograph(p)
        assert mg.image.shape == (10, 12)
        np.testing.assert_allclose(mg.image, expect, atol=1e-3)
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(io.read_micrograph(tmp_path / "rgba.png").image, expect, atol=1e-3)


def test_16bit_png(tmp_path):
    a = np.arange(0, 60000, 1000, dtype=np.uint16).reshape(6, 10)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    np.testing.assert_array_equal(io.read_micrograph(p).image, a.astype(np.float32))


def test_multiframe_stack(tmp_path):
    stack = np.stack([np.full((16, 24), i * 10, np.uint16) for i in range(5)])
    stack[:, 0, 0] = 1  # not constant
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, stack)
    frames = list(io.iter_frames(p))
    assert len(frames) == 5
    assert [f.frame for f in frames] == list(range(5))
    assert all(f.n_frames == 5 and f.image.shape == (16, 24) for f in frames)
    assert [f.image[5, 5] for f in frames] == [0, 10, 20, 30, 40]
    mg = io.read_micrograph(p, frame=3)
    assert mg.frame == 3 and mg.image[5, 5] == 30
    with pytest.raises(InputError, match="stack.tif"):
        io.read_micrograph(p, frame=5)
    # a single image yields exactly one frame
    assert len(list(io.iter_frames(tmp_path / "stack.tif"))) == 5
    hyper = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)  # ImageJ T, Z, Y, X
    tifffile.imwrite(tmp_path / "hyper.tif", hyper, imagej=True, metadata={"axes": "TZYX"})
    hframes = list(io.iter_frames(tmp_path / "hyper.tif"))
    assert len(hframes) == 6
    np.testing.assert_array_equal(hframes[4].image, hyper.reshape(6, 4, 5)[4])
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, stack[1])
    assert len(list(io.iter_frames(single))) == 1


def _write_hspy(path: Path, data: np.ndarray, units: str, scale: float) -> Path:
    """A minimal HyperSpy file: leading axes navigate (frames), last two are the image."""
    from rsciio.hspy import file_writer

    names = ["t", "z"][: data.ndim - 2] + ["y", "x"]
    axes = [{"name": n, "size": int(data.shape[i]), "scale": scale if i >= data.ndim - 2 else 1.0,
             "offset": 0.0, "units": units if i >= data.ndim - 2 else "s",
             "navigate": i < data.ndim - 2} for i, n in enumerate(names)]
    file_writer(str(path), {
        "data": data, "axes": axes, "metadata": {"General": {"title": path.stem}, "Signal": {}},
        "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False},
        "package_info": {"name": "hyperspy", "version": "2.0"}, "learning_results": {},
        "models": {}})
    return path


def test_hspy_stack_frames_and_units(tmp_path):
    data = np.arange(3 * 20 * 30, dtype=np.float32).reshape(3, 20, 30)
    p = _write_hspy(tmp_path / "stack.hspy", data, "Å", 5.0)
    frames = list(io.iter_frames(p))
    assert len(frames) == 3 and all(f.n_frames == 3 for f in frames)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.image, data[i])
        assert f.pixel_size_nm == pytest.approx(0.5)
    assert io.read_micrograph(p, frame=2).image[0, 0] == data[2, 0, 0]
    json.dumps(frames[0].metadata)
    q = _write_hspy(tmp_path / "nounit.hspy", data[0], "<undefined>", 1.0)
    mg = io.read_micrograph(q)
    assert mg.pixel_size_nm is None and mg.metadata["warnings"]
    r = _write_hspy(tmp_path / "um.hspy", data[0], "um", 0.002)
    assert io.read_micrograph(r).pixel_size_nm == pytest.approx(2.0)


def test_nan_pixels_repaired(tmp_path):
    a = np.arange(100, dtype=np.float32).reshape(10, 10)
    a[2, 3] = np.nan
    a[4, 4] = np.inf
    p = tmp_path / "nan.tif"
    tifffile.imwrite(p, a)
    mg = io.read_micrograph(p)
    assert np.isfinite(mg.image).all()
    finite = a[np.isfinite(a)]
    assert mg.image[2, 3] == pytest.approx(np.median(finite))
    assert mg.metadata["warnings"] and "NaN" in mg.metadata["warnings"][0]


# --------------------------------------------------------------------------- bad input

def test_empty_file(tmp_path):
    for name in ("empty.png", "empty.tif", "empty.dm4"):
        p = tmp_path / name
        p.write_bytes(b"")
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            io.read_micrograph(p)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"fake\.png"):
        io.read_micrograph(p)
    p2 = tmp_path / "fake.tif"
    p2.write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"fake\.tif"):
        io.read_micrograph(p2)
    p3 = tmp_path / "fake.dm4"
    p3.write_text("not a DM file")
    with pytest.raises(InputError, match=r"fake\.dm4"):
        io.read_micrograph(p3)


def test_unsupported_suffix_and_missing(tmp_path):
    p = tmp_path / "image.bmp"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    with pytest.raises(InputError, match="unsupported"):
        io.read_micrograph(p)
    with pytest.raises(InputError, match=r"nothere\.png"):
        io.read_micrograph(tmp_path / "nothere.png")


def test_truncated_tiff_and_png(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (256, 256), dtype=np.uint8)
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, a)
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.tif"):
        io.read_micrograph(cut)
    png = tmp_path / "full.png"
    Image.fromarray(a).save(png)
    data = png.read_bytes()
    cutp = tmp_path / "cut.png"
    cutp.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png"):
        io.read_micrograph(cutp)
    jpg = tmp_path / "full.jpg"
    Image.fromarray(a).save(jpg, quality=95)
    data = jpg.read_bytes()
    cutj = tmp_path / "cut.jpg"
    cutj.write_bytes(data[:200])
    with pytest.raises(InputError, match=r"cut\.jpg"):
        io.read_micrograph(cutj)


def test_huge_png_header_refused_before_decoding(tmp_path):
    p = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(Image.DecompressionBombError):  # the header really claims 1e10 pixels
        Image.open(p)
    with pytest.raises(InputError, match=r"bomb\.png.*100000 x 100000"):
        io.read_micrograph(p)
    with pytest.raises(InputError, match=r"bomb\.png"):
        io.read_label_map(p)


def test_pixel_limit_is_max_pixels(tmp_path, monkeypatch):
    p = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(p)
    monkeypatch.setenv("EMCOPILOT_MAX_PIXELS", "500")
    with pytest.raises(InputError, match="500"):
        io.read_micrograph(p)
    t = tmp_path / "small.tif"
    tifffile.imwrite(t, np.zeros((20, 30), np.uint16))
    with pytest.raises(InputError, match=r"small\.tif"):
        io.read_micrograph(t)
    monkeypatch.setenv("EMCOPILOT_MAX_PIXELS", "600")
    assert io.read_micrograph(p).image.shape == (20, 30)
    # PIL's own (global) bomb limit does not decide: MAX_PIXELS does, and PIL's is left alone
    monkeypatch.delenv("EMCOPILOT_MAX_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert io.read_micrograph(p).image.shape == (20, 30)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_huge_tiff_header_refused(tmp_path, monkeypatch):
    huge = _tiff_header_only(tmp_path / "huge.tif", 100_000, 100_000)
    with tifffile.TiffFile(huge) as tf:
        assert tf.series[0].shape == (100_000, 100_000)
    with pytest.raises(InputError, match=r"huge\.tif.*100000 x 100000"):
        io.read_micrograph(huge)
    with pytest.raises(InputError, match=r"huge\.tif"):
        io.read_label_map(huge)
    ok = _tiff_header_only(tmp_path / "ok.tif", 4, 4)  # the same hand-made file, small: reads
    assert io.read_micrograph(ok).image.shape == (4, 4)
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(io, "MAX_PIXELS", 64 * 64 - 1)
    with pytest.raises(InputError, match=r"big\.tif"):
        io.read_micrograph(p)


def test_all_nan_image(tmp_path):
    p = tmp_path / "allnan.tif"
    tifffile.imwrite(p, np.full((8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match=r"allnan\.tif"):
        io.read_micrograph(p)


# --------------------------------------------------------------------------- intensities

def test_normalize():
    rng = np.random.default_rng(4)
    a = rng.normal(1000, 50, (64, 64)).astype(np.float32)
    a[0, 0] = 1e9  # outlier does not squash the range
    a[1, 1] = np.nan
    n = io.normalize(a)
    assert n.dtype == np.float32 and n.shape == a.shape
    assert n.min() == 0.0 and n.max() == 1.0
    assert 0.3 < np.median(n) < 0.7
    assert n[1, 1] == 0.0
    assert np.all(io.normalize(np.full((5, 5), 7.0)) == 0)
    assert np.all(io.normalize(np.full((5, 5), np.nan)) == 0)
    ramp = np.linspace(0, 1, 1001, dtype=np.float32).reshape(1, -1)
    r = io.normalize(ramp, 0, 100)
    np.testing.assert_allclose(r, ramp, atol=1e-6)
    u = io.to_uint8(np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]]))
    assert u.dtype == np.uint8 and u.tolist() == [[0, 128, 255, 255, 0, 0]]


def test_polarity_synthetic():
    assert io.detect_polarity(_blobs(bright=True)) == "bright"
    assert io.detect_polarity(_blobs(bright=False)) == "dark"
    img = _blobs(bright=False)
    flipped = io.bright_particles(img, "dark")
    np.testing.assert_allclose(flipped, 1 - img)
    assert io.detect_polarity(flipped) == "bright"
    np.testing.assert_array_equal(io.bright_particles(img, "bright"), img)
    np.testing.assert_allclose(io.bright_particles(img, "auto"), 1 - img)
    with pytest.raises(InputError):
        io.bright_particles(img, "sideways")


@pytest.mark.parametrize("name", CATALYSTS)
def test_polarity_catalysts(examples_dir, name):
    image01 = io.normalize(io.read_micrograph(examples_dir / "catalysts" / "images" /
                                              f"{name}.jpg").image)
    assert io.detect_polarity(image01) == "bright"  # HAADF-STEM
    assert io.detect_polarity(1.0 - image01) == "dark"


def test_polarity_emps_bundled(examples_dir):
    """On the bundled EMPS images the ground-truth masks say which side the particles are on."""
    right = 0
    files = sorted((examples_dir / "emps" / "images").glob("*.png"))
    for f in files:
        image01 = io.normalize(io.read_micrograph(f).image)
        fg = io.read_label_map(examples_dir / "emps" / "segmaps" / f.name) > 0
        truth = "bright" if image01[fg].mean() > image01[~fg].mean() else "dark"
        right += io.detect_polarity(image01) == truth
    assert right == len(files)


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("name,stem", [("Pt4.jpg", "Pt4"), ("JEOL HAADF Image.dm4", "JEOL HAADF Image"),
                                       ("a.b.tif", "a.b"), ("noext", "noext"),
                                       ("ünïcode µm.png", "ünïcode µm")])
def test_safe_stem_ok(name, stem):
    assert io.safe_stem(name) == stem


@pytest.mark.parametrize("name", ["", "   ", "..", ".", "../x.png", "a/b.png", "a\\b.png",
                                  "x\x00.png", "bad\nname.png", "tab\there.png", ".hidden.png",
                                  "x/../y.png", "C:\\evil.png", "/etc/passwd", "a" * 300 + ".png"])
def test_safe_stem_bad(name):
    with pytest.raises(InputError):
        io.safe_stem(name)


# --------------------------------------------------------------------------- label maps / images

def test_label_map_roundtrip(tmp_path):
    labels = np.zeros((30, 40), np.int32)
    labels[2:5, 3:9] = 1
    labels[10:20, 10:20] = 300
    labels[25:28, 30:39] = 65535
    p = tmp_path / "sub" / "mask.png"
    io.write_label_map(p, labels)
    with Image.open(p) as im:
        assert im.mode.startswith("I")  # 16-bit grey PNG
    back = io.read_label_map(p)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    assert not [q for q in p.parent.iterdir() if q.name != "mask.png"]  # no temp files left


def test_label_map_refuses_bad_labels(tmp_path):
    p = tmp_path / "m.png"
    io.write_label_map(p, np.ones((4, 4), np.int32))
    before = p.read_bytes()
    with pytest.raises(InputError, match="65535"):
        io.write_label_map(p, np.full((4, 4), 70000, np.int32))
    with pytest.raises(InputError, match="negative"):
        io.write_label_map(p, np.full((4, 4), -1, np.int32))
    assert p.read_bytes() == before  # the old file survives a refused write


def test_read_label_map_8bit_16bit_tiff_rgb(examples_dir, tmp_path):
    seg = io.read_label_map(examples_dir / "emps" / "segmaps" / "31121ca5cf.png")
    assert seg.dtype == np.int32 and seg.ndim == 2 and seg.max() > 1 and seg.min() == 0
    a8 = np.zeros((8, 8), np.uint8)
    a8[1:3, 1:3] = 5
    Image.fromarray(a8).save(tmp_path / "l8.png")
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "l8.png"), a8)
    a16 = np.zeros((8, 8), np.uint16)
    a16[4:6, 4:6] = 1000
    tifffile.imwrite(tmp_path / "l16.tif", a16)
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "l16.tif"), a16)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0:2, 0:2] = (255, 0, 0)
    rgb[5:7, 5:7] = (0, 0, 255)
    rgb[0:2, 5:7] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    lab = io.read_label_map(tmp_path / "rgb.png")
    assert lab[4, 4] == 0 and lab[0, 0] > 0 and lab[6, 6] > 0 and lab[0, 0] != lab[6, 6]
    assert lab[0, 0] == lab[0, 6] and len(np.unique(lab)) == 3
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(InputError, match=r"bad\.png"):
        io.read_label_map(tmp_path / "bad.png")


def test_write_image(tmp_path):
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    p = io.write_image(tmp_path / "out.png", img)
    back = np.asarray(Image.open(p))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, io.to_uint8(img))
    u8 = (np.arange(64, dtype=np.uint8) * 3).reshape(8, 8)
    io.write_image(tmp_path / "u8.png", u8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "u8.png")), u8)


def test_unit_to_nm():
    assert io.unit_to_nm(0.001249, "µm") == pytest.approx(1.249)
    assert io.unit_to_nm(1, "μm") == 1000  # Greek mu
    assert io.unit_to_nm(2, "um") == 2000
    assert io.unit_to_nm(3, "nm") == 3
    assert io.unit_to_nm(10, "Å") == pytest.approx(1.0)
    assert io.unit_to_nm(10, "\u212b") == pytest.approx(1.0)  # ANGSTROM SIGN
    assert io.unit_to_nm(10, "A") == pytest.approx(1.0)
    assert io.unit_to_nm(500, "pm") == pytest.approx(0.5)
    assert io.unit_to_nm(1, "mm") == 1e6
    assert io.unit_to_nm(1e-9, "m") == pytest.approx(1.0)
    with pytest.raises(InputError):
        io.unit_to_nm(1, "furlong")
    with pytest.raises(InputError):
        io.unit_to_nm(1, "1/nm")


def test_supported_suffixes_and_limit():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dm3", ".dm4", ".emd", ".hspy"} == \
        set(io.SUPPORTED_SUFFIXES)
    assert io.MAX_PIXELS == 2**28 or io.MAX_PIXELS > 0
