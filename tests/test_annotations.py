"""Annotations drawn on micrographs (text, scale bars): found where a figure has them, not on
particles; the masker and the segmentor's output drop the particles on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from emcopilot import io
from emcopilot.annotations import (annotation_particles, drop_annotation_particles,
                                   find_annotations)
from emcopilot.masking import coarse_mask
from emcopilot.polarity import describe_polarity

CLASSICAL = {"preset": "isolated"}


def bright(path) -> np.ndarray:
    g = io.normalize(io.read_micrograph(path).image)
    return io.bright_particles(g, describe_polarity(g)["polarity"])


def with_label(image01: np.ndarray, text: str = "200 nm", ink: float = 1.0) -> np.ndarray:
    """``image01`` with a scale-bar label and a scale bar drawn in its bottom-left corner."""
    h, w = image01.shape
    canvas = Image.fromarray(np.round(image01 * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    fill = int(round(ink * 255))
    draw.text((20, h - 70), text, fill=fill, font=ImageFont.load_default(size=28))
    draw.rectangle((20, h - 30, 140, h - 22), fill=fill)
    return np.asarray(canvas, np.float32) / 255.0


def dark_field(h: int = 256, w: int = 320) -> np.ndarray:
    """Noisy dark background with round bright particles (blurred rims, cores saturated)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    img = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx, r in ((60, 60, 14), (60, 140, 12), (60, 220, 14), (150, 90, 18), (140, 250, 10)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    img = ndi.gaussian_filter(img, 2.0) * 1.3
    return np.clip(img + 0.15 + 0.03 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("ink", [1.0, 0.0])
def test_drawn_text_and_scale_bar_are_found_in_white_or_black_ink(ink):
    base = dark_field() if ink == 1.0 else 1.0 - dark_field()
    assert not find_annotations(base).any()  # particles, saturated cores and all: none
    drawn = with_label(base, ink=ink)
    mask = find_annotations(drawn)
    h = drawn.shape[0]
    assert mask[h - 30:h - 22, 20:141].all()  # the scale bar
    text = np.abs(drawn - base) > 0.5
    text[h - 32:] = False
    assert text.any() and mask[text].mean() > 0.95  # the label's glyphs
    assert not mask[: h - 80].any()  # nothing else


def test_a_corner_scale_bar_takes_its_label_with_it_even_a_lone_glyph_half_over_a_particle():
    """A scale bar at the frame's corner is found without a text line beside it; the ink just
    above it is its label, taken though it is one glyph (no line) and partly over a bright
    particle (outline less sharp). The same glyph four heights above the bar is not."""
    base = dark_field()
    h, w = base.shape
    font = ImageFont.load_default(size=40)

    def drawn(bottom: int) -> tuple[np.ndarray, np.ndarray]:
        """The image with the bar and a "5" whose ink ends at row ``bottom``, and its ink."""
        glyph = Image.new("L", (w, h), 0)
        left, top, right, low = ImageDraw.Draw(glyph).textbbox((0, 0), "5", font=font)
        ImageDraw.Draw(glyph).text((24, bottom - low), "5", fill=255, font=font)
        ink = np.asarray(glyph) >= 250
        img = base.copy()
        yy, xx = np.mgrid[:h, :w]
        cy, cx = bottom - (low - top) // 2, 24 + right  # a particle under its right half
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 0.75
        img = np.maximum(img, np.asarray(glyph, np.float32) / 255.0)
        img[h - 30:h - 22, 20:141] = 1.0  # the bar, 15:1, in the corner
        return img, ink

    near, ink = drawn(h - 36)
    mask = find_annotations(near)
    assert mask[h - 30:h - 22, 20:141].all()  # the bar
    assert ink.sum() > 50 and mask[ink].mean() > 0.95  # its label
    far, ink = drawn(h - 160)
    mask = find_annotations(far)
    assert mask[h - 30:h - 22, 20:141].all() and ink.sum() > 50 and not mask[ink].any()


def test_rows_of_saturated_rods_or_discs_are_not_text():
    img = np.full((200, 300), 0.1, np.float32)
    for k in range(6):  # a row of upright rods, like "llllll"
        img[40:80, 20 + 25 * k:28 + 25 * k] = 1.0
    yy, xx = np.mgrid[:200, :300]
    for k in range(5):  # a row of discs, like "ooooo" without holes
        img[(yy - 140) ** 2 + (xx - (30 + 30 * k)) ** 2 <= 100] = 1.0
    assert not find_annotations(img).any()


def boxed_letter(letter: str = "a", *, box: float = 1.0, side: int = 56,
                 at: tuple[int, int] = (12, 12)) -> tuple[np.ndarray, tuple[slice, slice]]:
    """A panel letter (font size 33) drawn on a flat square of ``side`` px (``box`` ink, the
    letter in the other extreme) at ``at`` on :func:`dark_field` (or its negative for a black
    box), and the square's slices."""
    base = dark_field() if box == 1.0 else 1.0 - dark_field()
    canvas = Image.fromarray(np.round(base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    t, lf = at
    draw.rectangle((lf, t, lf + side - 1, t + side - 1), fill=int(round(box * 255)))
    if letter:
        draw.text((lf + side // 2, t + side // 2), letter, fill=int(round((1 - box) * 255)),
                  font=ImageFont.load_default(size=33), anchor="mm")
    return np.asarray(canvas, np.float32) / 255.0, (slice(t, t + side), slice(lf, lf + side))


@pytest.mark.parametrize("box", [1.0, 0.0])
def test_a_panel_letter_on_a_flat_square_takes_the_whole_square(box):
    """A lone panel letter is no text line, but drawn on a flat white or black square of the
    other extreme (a label box) it is an annotation with its box: the square particle a masker
    makes of the box goes. A flat square with nothing drawn in it (a cube) is not a label
    box."""
    img, square = boxed_letter(box=box)
    mask = find_annotations(img)
    assert mask[square].all()
    assert not mask[100:].any()  # the particles stay
    bright_img = img if box == 1.0 else 1.0 - img
    lab = coarse_mask(bright_img, method="classical", polarity="bright",
                      classical_options=CLASSICAL, filters={"annotations": False})
    on_box = np.unique(lab[square])
    on_box = on_box[on_box > 0]
    assert on_box.size and annotation_particles(img, lab, mask)[on_box].all()
    plain, square = boxed_letter("", box=box)
    assert not find_annotations(plain)[square].any()


def test_a_label_box_at_the_frame_corner_or_too_big_for_a_label(monkeypatch):
    """A box in the frame's corner (its outline cut by the frame) is found; a flat region over
    ``MAX_BOX`` of the frame with a letter in it (a saturated specimen) is not."""
    import emcopilot.annotations as annotations

    img, square = boxed_letter(at=(0, 264))  # the top right corner
    assert find_annotations(img)[square].all()
    img, square = boxed_letter(side=100, at=(150, 130))  # 100 px of a 256 x 320 px frame
    assert not find_annotations(img)[square].any()
    monkeypatch.setattr(annotations, "MAX_BOX", 0.5)  # the same box, allowed: found
    assert find_annotations(img)[square].all()


def test_label_boxes_of_emps_figures(shared_data):
    """EMPS test figures with a panel letter on a box: "a" on a white square (5a65f9eba2, a
    box the classical masker takes for a particle) and "C" on a black square in the corner
    (8bf3782470); both whole boxes are found, and the masker's box particle goes."""
    boxes = {"5a65f9eba2": (slice(20, 80), slice(20, 70)),
             "8bf3782470": (slice(5, 70), slice(5, 80))}
    for stem, corner in boxes.items():
        img = bright(shared_data / "emps_test" / "images" / f"{stem}.png")
        assert find_annotations(img)[corner].mean() > 0.95, stem
    img = bright(shared_data / "emps_test" / "images" / "5a65f9eba2.png")
    corner = boxes["5a65f9eba2"]
    off = coarse_mask(img, method="classical", polarity="bright", classical_options=CLASSICAL,
                      filters={"annotations": False})
    on = coarse_mask(img, method="classical", polarity="bright", classical_options=CLASSICAL)
    assert off[corner].all() and not on[corner].any()


def test_particles_on_annotations_are_dropped_and_the_rest_kept_and_renumbered():
    drawn = with_label(dark_field())
    lab = coarse_mask(drawn, method="classical", polarity="bright", classical_options=CLASSICAL,
                      filters={"annotations": False})
    flagged = annotation_particles(drawn, lab)
    assert flagged.sum() >= 2  # the scale bar and the glyphs of "200 nm"
    out, dropped = drop_annotation_particles(drawn, lab)
    assert dropped == flagged.sum() and out.max() == lab.max() - dropped
    assert out.dtype == np.int32 and set(np.unique(out)) == set(range(out.max() + 1))
    # the particles are all still there, and coarse_mask's default filter drops the same ones
    assert out.max() == 5
    kept = coarse_mask(drawn, method="classical", polarity="bright", classical_options=CLASSICAL)
    assert kept.max() == out.max()
    with pytest.raises(Exception, match="shape"):
        annotation_particles(drawn[:-1], lab)


def test_bundled_figures_lose_their_labels_not_their_particles(examples_dir):
    """The bundled EMPS figure crops with panel letters and scale bars: the filter takes
    particles from the classical coarse masks and none of the manually labelled particles."""
    total_dropped = 0
    for p in sorted((examples_dir / "emps" / "images").glob("*.png")):
        img = bright(p)
        truth = io.read_label_map(examples_dir / "emps" / "segmaps" / p.name)
        mask = find_annotations(img)
        assert not annotation_particles(img, truth, mask).any(), p.name
        off = coarse_mask(img, method="classical", polarity="bright",
                          classical_options=CLASSICAL, filters={"annotations": False})
        on = coarse_mask(img, method="classical", polarity="bright", classical_options=CLASSICAL)
        assert on.max() <= off.max()
        total_dropped += int(off.max() - on.max())
    assert total_dropped >= 5


def test_emps_manual_particles_are_almost_never_taken_for_annotations(shared_data):
    """On the 99 EMPS test figures, most of which carry a scale bar or panel letters, at most
    0.5 % of the manually labelled particles lie on what is found as annotations."""
    data = shared_data / "emps_test"
    n_true = n_flagged = n_with = 0
    for p in sorted((data / "segmaps").glob("*.png")):
        img = bright(data / "images" / p.name)
        truth = io.read_label_map(p)
        mask = find_annotations(img)
        n_with += bool(mask.any())
        n_true += int(truth.max())
        n_flagged += int(annotation_particles(img, truth, mask).sum())
    assert n_with >= 50
    assert n_flagged <= 0.005 * n_true


def enlarged_label(top: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image, its label's ink)``: a "200 nm" label over its scale bar drawn small at row
    ``top`` of a 110 px high figure, enlarged 3x and blurred (sigma 3 px) as a figure crop
    enlarged from a small panel is, the ink's core saturated, on a noisy dark background."""
    from scipy import ndimage as ndi

    small = Image.new("L", (150, 110), 40)
    draw = ImageDraw.Draw(small)
    draw.text((6, top), "200 nm", fill=255, font=ImageFont.load_default(size=12))
    draw.rectangle((6, top + 16, 46, top + 18), fill=255)
    big = ndi.gaussian_filter(np.asarray(small.resize((450, 330), Image.BICUBIC), np.float32)
                              / 255, 3.0)
    noise = 0.02 * np.random.default_rng(seed).standard_normal(big.shape)
    return np.clip(0.1 + (big - 0.1) * 1.3 + noise, 0, 1).astype(np.float32), big > 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_a_blurred_label_of_an_enlarged_figure_is_found_by_its_outline_further_out(
        seed, monkeypatch):
    """Ink blurred over several px has no sharp outline 2-3 px out, but one 4-5 px out: a corner
    scale bar and its label are found from that, with a wider rim; not without it."""
    from scipy import ndimage as ndi

    import emcopilot.annotations as annotations

    img, ink = enlarged_label(top=84, seed=seed)
    mask = find_annotations(img)
    assert mask[ink].mean() > 0.6
    assert not (mask & ~ndi.binary_dilation(ink, iterations=8)).any()  # nothing else
    lab = coarse_mask(img, method="classical", polarity="bright", classical_options=CLASSICAL,
                      filters={"annotations": False})
    assert annotation_particles(img, lab, mask).sum() >= 1
    monkeypatch.setattr(annotations, "MIN_FAR_RING_STEP", 2.0)  # the outline 2-3 px out only
    assert not find_annotations(img).any()


def test_blurred_labels_of_emps_figures_are_found_blurred_rods_are_not(shared_data,
                                                                       monkeypatch):
    """Two EMPS test figures enlarged from small panels (one nanowire each) carry blurred black
    labels ("(g)", "200 nm"; "(f)", "100 nm"): found now, so the classical masker's glyph
    particles go (13 and 12 particles for one labelled wire before). Blurred saturated rods are
    not text: a row of three mid-frame (EMPS train bfb2a25730: blurred ink is taken only in a
    band along the top and bottom), a frame full of them (f32c7bd62b: over MAX_BLURRED_GLYPHS
    blurred specks, none taken); neither loses a labelled rod, which each rule is needed for."""
    import emcopilot.annotations as annotations

    for stem, most in (("bc1fe886af", 8), ("728f55aed4", 5)):
        img = bright(shared_data / "emps_test" / "images" / f"{stem}.png")
        lab = coarse_mask(img, method="classical", polarity="bright",
                          classical_options=CLASSICAL)
        assert lab.max() <= most, stem
        # the labels: the ink of the image's darkest grey in its corners, all found
        h, w = img.shape
        ink = img >= img.max() - 0.03 * (img.max() - img.min())
        ink[h // 3: 2 * h // 3] = False
        ink[:, w // 3: 2 * w // 3] = False
        assert find_annotations(img)[ink].mean() > 0.8, stem

    def flagged(stem: str) -> int:
        img = bright(shared_data / "emps_train" / "images" / f"{stem}.png")
        truth = io.read_label_map(shared_data / "emps_train" / "segmaps" / f"{stem}.png")
        return int(annotation_particles(img, truth).sum())

    assert flagged("bfb2a25730") == flagged("f32c7bd62b") == 0
    monkeypatch.setattr(annotations, "TEXT_BAND", 0.5)
    assert flagged("bfb2a25730") > 0
    monkeypatch.setattr(annotations, "MAX_BLURRED_GLYPHS", 10 ** 6)
    assert flagged("f32c7bd62b") > 0


def test_bad_input_is_refused_or_harmless():
    with pytest.raises(Exception, match="2-D"):
        find_annotations(np.zeros((4, 4, 3), np.float32))
    assert not find_annotations(np.zeros((64, 64), np.float32)).any()  # flat
    assert not find_annotations(np.ones((5, 5), np.float32)).any()  # tiny
    nan = with_label(dark_field())
    nan[:10] = np.nan
    assert find_annotations(nan).any()  # NaNs read as 0, the label still found
    labels = np.ones((256, 320), np.int32)
    for image, mask in ((dark_field(), np.zeros((4, 4), bool)), (dark_field(128), None)):
        with pytest.raises(Exception, match="shape"):  # a mask or image of another size
            annotation_particles(image, labels, mask)


def test_cli_mask_annotations_option(tmp_path):
    from emcopilot.cli import main

    img = with_label(dark_field())
    src = tmp_path / "in"
    src.mkdir()
    io.write_image(src / "figure.png", img)
    counts = {}
    for opt in ("on", "off"):
        out = tmp_path / opt
        assert main(["mask", str(src), "--out", str(out), "--method", "classical",
                     "--classical-preset", "isolated", "--annotations", opt,
                     "-q"]) == 0
        counts[opt] = int(io.read_label_map(out / "figure.png").max())
        manifest = json.loads(next(out.glob("*.json")).read_text())
        assert manifest["filters"]["annotations"] is (opt == "on")
    assert counts["on"] == 5 and counts["off"] > counts["on"]
