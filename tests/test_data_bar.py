"""Instrument data bars: found on real micrographs that have one, not on those without; the
masker and the segmentor work on the rows above the bar, so its characters never become
particles."""

from __future__ import annotations

import numpy as np
import pytest

from emcopilot import io
from emcopilot.data_bar import find_data_bar, on_rows_above_bar
from emcopilot.masking import coarse_mask
from tests.conftest import with_data_bar

STEM = "31121ca5cf"

# the EMPS test images with a data bar at the bottom, each checked by eye (Hitachi, JEOL, FEI and
# Zeiss bars, black, white and grey); the other 89 have none
EMPS_TEST_BARS = {"294049f7a8", "39b0dc1f52", "39b3a6db5e", "724248a877", "8c22d1acd5",
                  "8dffc01cc2", "96c772f28b", "b1fc590830", "e59a1a493e", "f77a745ba2"}


@pytest.fixture(scope="module")
def grey(examples_dir):
    """A bundled EMPS micrograph (no bar of its own) as 8-bit grey."""
    img = io.normalize(io.read_micrograph(examples_dir / "emps" / "images" / f"{STEM}.png").image)
    return np.round(img * 255).astype(np.uint8)


@pytest.mark.parametrize("level", [0, 255])
def test_a_bar_appended_below_a_micrograph_is_found_at_its_first_row(grey, level):
    barred = with_data_bar(grey, level=level)
    assert find_data_bar(grey) is None
    assert find_data_bar(barred) == grey.shape[0]
    assert find_data_bar(io.normalize(barred)) == grey.shape[0]  # float [0, 1] as well
    top, rows, extra, none = on_rows_above_bar(barred, barred, None)
    assert top == grey.shape[0] and none is None
    np.testing.assert_array_equal(rows, grey)
    np.testing.assert_array_equal(extra, grey)


def test_what_is_not_a_full_width_bar_is_not_one(grey):
    barred = with_data_bar(grey)
    # a label box over part of the width, at the bar's place
    boxed = barred.copy()
    boxed[grey.shape[0]:, : grey.shape[1] // 2] = grey[-40:, : grey.shape[1] // 2]
    assert find_data_bar(boxed) is None
    # a bar of the background's own grey has no edge to find
    flat = np.full((300, 300), 200, np.uint8)
    assert find_data_bar(with_data_bar(flat, level=200)) is None
    # flat, tiny, noisy or non-finite images: no bar, no error
    assert find_data_bar(np.zeros((512, 512), np.float32)) is None
    assert find_data_bar(np.ones((20, 20), np.float32)) is None
    noise = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    assert find_data_bar(noise) is None
    noise[:10] = np.nan
    assert find_data_bar(noise) is None


def test_the_coarse_masker_masks_only_the_rows_above_the_bar(grey):
    barred = with_data_bar(grey, level=0)
    h = grey.shape[0]
    for method_opts in ({"preset": "isolated"}, {"preset": "supported"}):
        plain = coarse_mask(io.normalize(grey), method="classical", polarity="dark",
                            classical_options=method_opts)
        on = coarse_mask(io.normalize(barred), method="classical", polarity="dark",
                         classical_options=method_opts)
        assert on.shape == barred.shape
        assert not on[h:].any()
        np.testing.assert_array_equal(on[:h], plain)
    # without the bar handling, the masker also takes the bar's characters: the reason for it
    white = io.normalize(with_data_bar(grey, level=255))
    opts = {"polarity": "dark", "classical_options": {"preset": "supported"},
            "filters": {"edge_margin": 0}}
    off = coarse_mask(white, method="classical", data_bar=False, **opts)
    assert np.unique(off[h:]).size - 1 >= 10  # characters counted as particles
    assert not coarse_mask(white, method="classical", **opts)[h:].any()


def test_emps_test_bars_are_found_and_no_catalyst_image_has_one(shared_data):
    found = set()
    for path in io.list_images([shared_data / "emps_test" / "images"]):
        top = find_data_bar(io.normalize(io.read_micrograph(path).image))
        if top is not None:
            found.add(path.stem)
            assert 0.75 * 512 < top < 512  # bars are 20-60 rows high here
    assert found == EMPS_TEST_BARS
    for path in io.list_images([shared_data / "ardagen_stem_catalysts_yolo" / "images"]):
        assert find_data_bar(io.normalize(io.read_micrograph(path).image)) is None, path.name


def test_a_real_bars_characters_are_not_coarse_particles(shared_data):
    """b1fc590830: two rod particles above a black SEM bar full of white text. Unhandled, the
    classical masker counts the text; handled, nothing below the bar's first row."""
    path = shared_data / "emps_test" / "images" / "b1fc590830.png"
    image01 = io.normalize(io.read_micrograph(path).image)
    top = find_data_bar(image01)
    opts = {"preset": "isolated"}
    off = coarse_mask(image01, method="classical", classical_options=opts, data_bar=False)
    on = coarse_mask(image01, method="classical", classical_options=opts)
    assert off[top:].any()
    assert not on[top:].any()
    truth = io.read_label_map(shared_data / "emps_test" / "segmaps" / "b1fc590830.png")
    assert not truth[top:].any()  # the manual masks agree: nothing there is a particle
    assert on.max() < off.max()
