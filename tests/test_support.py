"""Support removal (emcopilot.support) and its use by the segmentor."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emcopilot import io
from emcopilot.errors import InputError
from emcopilot.inference import Segmentor
from emcopilot.particle_scale import resize_image
from emcopilot.support import (SUPPORT_RADIUS_WIDTHS, remove_support,
                               remove_support_at_mask_scale, resolve_support_mode, shows_support,
                               write_support_removed)
from emcopilot.training import save_checkpoint
from tests.test_inference import real, segmentor  # noqa: F401  (fixtures)


def _supported_particles(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px image: a wide bright support grain (Gaussian, sigma 50 px) under part of the
    frame, and 8 px particles both on it and on the dark background; and the particle mask."""
    yy, xx = np.mgrid[:256, :256].astype(np.float32)
    support = 0.6 * np.exp(-((yy - 128) ** 2 + (xx - 64) ** 2) / (2 * 50.0 ** 2))
    mask = np.zeros((256, 256), bool)
    for cy in (24, 64, 104, 144, 184, 224):  # 36 particles, about 2 % of the frame
        for cx in (24, 64, 104, 144, 184, 224):
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
    img = support + 0.35 * mask + rng.normal(0, 0.01, mask.shape)
    img = np.clip(img, 0, None)
    return (img / img.max()).astype(np.float32), mask


def test_remove_support_takes_out_wide_structures_and_keeps_particles():
    img, mask = _supported_particles(np.random.default_rng(0))
    yy, xx = np.mgrid[:256, :256]
    near = np.zeros_like(mask)
    near[2:-2, 2:-2] = mask[:-4, 2:-2] | mask[4:, 2:-2] | mask[2:-2, :-4] | mask[2:-2, 4:] | mask[2:-2, 2:-2]
    on_support = ((yy - 128) ** 2 + (xx - 64) ** 2 <= 50 ** 2) & ~near  # the grain, no particle
    # a plain threshold would take the grain before the free particles
    assert img[104, 84] > img[64, 224] and img[104, 84] > img[144, 224]
    out = remove_support(img, particle_width_px=8)
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # particles on the grain and on the background now look alike, the grain is gone
    centres_on = [out[144, 64], out[104, 64], out[144, 104]]
    centres_off = [out[64, 224], out[144, 224], out[224, 184]]
    assert min(centres_on + centres_off) > 0.6
    assert abs(np.mean(centres_on) - np.mean(centres_off)) < 0.15
    assert np.percentile(out[on_support], 90) < 0.25
    # a disc far wider than the grain keeps it
    assert np.median(remove_support(img, 8, radius_widths=20)[on_support]) > 0.3


def test_remove_support_refuses_bad_input():
    with pytest.raises(InputError):
        remove_support(np.zeros((4, 4, 3), np.float32), 8)
    with pytest.raises(InputError):
        remove_support(np.zeros((16, 16), np.float32), 0)
    with pytest.raises(InputError):
        resolve_support_mode("sometimes")
    flat = remove_support(np.full((32, 32), np.nan, np.float32), 4)
    assert np.isfinite(flat).all() and not flat.any()


def test_support_removed_at_the_width_the_segmentor_uses():
    from emcopilot.particle_scale import DEFAULT_DIAMETER_PX, normalising_scale

    img, mask = _supported_particles(np.random.default_rng(1))
    labels = cv2.connectedComponents(mask.astype(np.uint8))[1]
    width = DEFAULT_DIAMETER_PX / normalising_scale(labels)
    assert width == pytest.approx(8.0)  # the 8 px discs, enlarged 4 x (the largest factor)
    out = remove_support_at_mask_scale(img, labels)
    np.testing.assert_array_equal(out, remove_support(img, width))
    assert not np.array_equal(out, remove_support(img, DEFAULT_DIAMETER_PX))
    # no particle in the mask (or none given): the segmentor keeps the image's scale
    for none in (None, np.zeros_like(labels)):
        np.testing.assert_array_equal(remove_support_at_mask_scale(img, none),
                                      remove_support(img, DEFAULT_DIAMETER_PX))


def test_write_support_removed_reaches_the_images_its_scope_says(tmp_path, examples_dir):
    from emcopilot.masking import coarse_mask
    from tests.conftest import with_data_bar

    images, masks = tmp_path / "images", tmp_path / "masks"
    picks = {"Ru4": examples_dir / "catalysts" / "images" / "Ru4.jpg",
             "c363833ad2": examples_dir / "emps" / "images" / "c363833ad2.png"}
    bar_rows = {}
    for stem, path in picks.items():
        grey = io.bright_particles(io.normalize(io.read_micrograph(path).image), "auto")
        if stem == "Ru4":  # an instrument data bar under the catalyst
            bar_rows[stem] = grey.shape[0]
            grey = with_data_bar(io.to_uint8(grey)).astype(np.float32) / 255
        io.write_image(images / f"{stem}.png", grey)
        io.write_label_map(masks / f"{stem}.png",
                           coarse_mask(grey, method="classical", polarity="bright"))
    dest = tmp_path / "removed"
    stale = dest / "stale.png"
    stale.parent.mkdir()
    stale.write_bytes(b"left from before")
    calls = []
    assert write_support_removed(images, masks, dest, "per image", data_bar_rows=bar_rows,
                                 progress=lambda *a: calls.append(a)) == ["Ru4"]
    assert not stale.exists() and calls[-1][:2] == (2, 2)
    # the free particles are copied as they are, byte for byte
    assert (dest / "c363833ad2.png").read_bytes() == (images / "c363833ad2.png").read_bytes()
    before = io.normalize(io.read_micrograph(images / "Ru4.png").image)
    after = io.read_micrograph(dest / "Ru4.png").image
    top = bar_rows["Ru4"]
    np.testing.assert_array_equal(after[top:], io.to_uint8(before[top:]))  # the bar as it was
    expected = remove_support_at_mask_scale(before[:top],
                                            io.read_label_map(masks / "Ru4.png")[:top])
    np.testing.assert_array_equal(after[:top], io.to_uint8(expected))
    assert write_support_removed(images, masks, dest, "all", data_bar_rows=bar_rows) == \
        ["Ru4", "c363833ad2"]
    assert write_support_removed(images, masks, dest, "none") == []
    assert sorted(p.name for p in dest.iterdir()) == ["Ru4.png", "c363833ad2.png"]
    with pytest.raises(InputError):
        write_support_removed(images, masks, dest, "some")


def test_scope_of_each_mode_and_preset():
    from emcopilot.support import preset_followed, recorded_mode, scope

    assert [scope("off", p) for p in ("auto", "isolated", "supported")] == ["none"] * 3
    assert [scope("on", p) for p in ("auto", "isolated", "supported")] == ["all"] * 3
    assert [scope("auto", p) for p in ("auto", "isolated", "supported")] == \
        ["per image", "none", "all"]
    assert preset_followed({"scale_preset": "isolated"}) == "isolated"
    assert preset_followed({"scale_preset": "isolated", "support_preset": "auto"}) == "auto"
    assert preset_followed({"scale_preset": "odd"}) == "auto" and preset_followed({}) == "auto"
    assert recorded_mode({}) == "off" and recorded_mode({"support_removal": "sometimes"}) == "off"
    assert recorded_mode({"support_removal": "on"}) == "on"


def test_shows_support_separates_the_bundled_catalysts_from_free_particles(examples_dir):
    for folder, expected in (("catalysts", True), ("emps", False)):
        for path in sorted((examples_dir / folder / "images").iterdir()):
            image01 = io.normalize(io.read_micrograph(path).image)
            assert shows_support(image01) is expected, path.name


@pytest.fixture(scope="module")
def trained_net(segmentor):
    """test_inference's tiny UNet++ trained for a few steps on one bundled EMPS image (its
    output depends on its input, unlike a fresh one's)."""
    return segmentor.model


def _checkpoint(tmp_path, net, name: str, **config) -> Segmentor:
    ck = save_checkpoint(tmp_path / name, net, None, {"image_size": 64, **config}, epoch=1)
    return Segmentor.load(ck, device="cpu")


def test_the_segmentor_removes_the_support_as_its_checkpoint_says(tmp_path, examples_dir,
                                                                   trained_net):
    catalyst = io.normalize(io.read_micrograph(examples_dir / "catalysts" / "images"
                                               / "Ru4.jpg").image)
    free = io.normalize(io.read_micrograph(examples_dir / "emps" / "images"
                                           / "c363833ad2.png").image)
    scaled = dict(particle_diameter_px=32, scale_preset="auto", input_polarity="bright")
    old = _checkpoint(tmp_path, trained_net, "old", **scaled)  # from before support removal: never
    assert old.support_removal == "off" and not old.resolve_support(catalyst)
    auto = _checkpoint(tmp_path, trained_net, "auto", support_removal="auto", **scaled)
    assert auto.support_removal == "auto"
    assert auto.resolve_support(auto.prepare(catalyst)) is True
    assert auto.resolve_support(auto.prepare(free)) is False
    assert auto.resolve_support(auto.prepare(free), "on") is True
    assert auto.resolve_support(auto.prepare(catalyst), False) is False
    with pytest.raises(InputError):
        auto.resolve_support(catalyst, "sometimes")
    # "auto" follows the classical preset the segmentor was trained with (its coarse masks')
    free_preset = _checkpoint(tmp_path, trained_net, "isolated", support_removal="auto",
                              **{**scaled, "scale_preset": "isolated"})
    assert free_preset.support_preset == "isolated" and auto.support_preset == "auto"
    assert free_preset.resolve_support(free_preset.prepare(catalyst)) is False
    assert free_preset.resolve_support(free_preset.prepare(catalyst), "on") is True
    judged = _checkpoint(tmp_path, trained_net, "judged", support_removal="auto",
                         support_preset="auto", **{**scaled, "scale_preset": "isolated"})
    assert judged.resolve_support(judged.prepare(catalyst)) is True  # support_preset decides
    assert judged.support_preset == "auto"
    from emcopilot import job_kinds

    # the pages read the same scope without torch
    for name, seg in (("judged", judged), ("isolated", free_preset), ("old", old),
                      ("auto", auto)):
        assert job_kinds.segmentor_support_scope(tmp_path / name) == seg.support_scope(), name
    assert [judged.support_scope(), free_preset.support_scope(), old.support_scope()] == \
        ["per image", "none", "none"]
    assert job_kinds.segmentor_support_removal(tmp_path / "old") == "off"
    assert judged.resolve_support(judged.prepare(free)) is False
    on_support = _checkpoint(tmp_path, trained_net, "supported", support_removal="auto",
                             **{**scaled, "scale_preset": "supported"})
    assert on_support.resolve_support(on_support.prepare(free)) is True
    # a segmentor that does not know its particles' width cannot size the disc: never
    unscaled = _checkpoint(tmp_path, trained_net, "unscaled", support_removal="on")
    assert unscaled.support_scope() == "none"
    assert job_kinds.segmentor_support_scope(tmp_path / "unscaled") == "none"
    assert unscaled.resolve_support(catalyst) is False

    # with removal: the network sees the top-hat of the image at the particle scale
    prepared = auto.prepare(catalyst)
    s = auto.resolve_scale(prepared)
    small = remove_support(resize_image(prepared, s), 32)

    expected = cv2.resize(auto.predict_proba(small), prepared.shape[::-1],
                          interpolation=cv2.INTER_LINEAR)
    prob = auto.probability(catalyst)
    np.testing.assert_allclose(prob, np.clip(expected, 0, 1), atol=1e-6)
    plain = auto.probability(catalyst, support="off")
    np.testing.assert_allclose(plain, auto.predict_proba(prepared, scale=s), atol=1e-6)
    assert np.abs(prob - plain).max() > 0.01
    labels, prob2 = auto.segment(catalyst, add_coarse=False)
    np.testing.assert_allclose(prob2, prob, atol=1e-6)
    np.testing.assert_array_equal(labels, auto.instances(prob))
    # the free particles are left as they are
    np.testing.assert_allclose(auto.probability(free), auto.probability(free, support="off"),
                               atol=1e-6)


def test_the_cli_help_states_the_library_disc():
    from emcopilot.cli import SUPPORT_RULE

    assert f"radius of {SUPPORT_RADIUS_WIDTHS:g} typical" in SUPPORT_RULE


def test_segment_cli_removes_the_support_and_says_so(tmp_path, examples_dir, trained_net,
                                                     capsys):
    from emcopilot.cli import main

    image = examples_dir / "catalysts" / "images" / "Ru4.jpg"
    scaled = dict(particle_diameter_px=32, input_polarity="bright", support_removal="auto")
    for preset, said in (("auto", "where the classical masker sees particles on a support"),
                         ("supported", "removed from every image"), ("isolated", None)):
        out = tmp_path / f"out_{preset}"
        _checkpoint(tmp_path, trained_net, preset, scale_preset=preset, **scaled)
        assert main(["segment", str(image), "--model", str(tmp_path / preset), "--out",
                     str(out), "--device", "cpu", "-q"]) == 0
        printed = capsys.readouterr().out
        assert (said is None and "support removed" not in printed) or said in printed, printed
    # off: the message goes, and the particles are the plain segmentor's
    assert main(["segment", str(image), "--model", str(tmp_path / "auto"), "--out",
                 str(tmp_path / "off"), "--support-removal", "off", "--device", "cpu",
                 "-q"]) == 0
    assert "support removed" not in capsys.readouterr().out
    # the check, switched on for a model that does not record it: said, and as the library does
    assert main(["segment", str(image), "--model", str(tmp_path / "auto"), "--out",
                 str(tmp_path / "checked"), "--support-check", "on", "--device", "cpu",
                 "-q"]) == 0
    assert "kept only where its particles match the coarse mask" in capsys.readouterr().out
    seg = Segmentor.load(tmp_path / "auto", device="cpu")
    labels, _ = seg.segment(io.normalize(io.read_micrograph(image).image), support_check=True)
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "checked" / "Ru4.png"), labels)
    assert (io.read_micrograph(tmp_path / "off" / "prob" / "Ru4.png").image
            != io.read_micrograph(tmp_path / "out_auto" / "prob" / "Ru4.png").image).any()
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(image), "--model", str(tmp_path / "auto"), "--out",
              str(tmp_path / "bad"), "--support-removal", "sometimes"])
    assert exc.value.code == 2


def _discs(centres, shape=(64, 64), r=4):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape, np.int32)
    for k, (y, x) in enumerate(centres, start=1):
        out[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    return out


def test_removal_kept_unless_the_particles_without_it_match_the_coarse_mask_better():
    from emcopilot.support import removal_kept

    coarse = _discs([(10, 10), (10, 40), (40, 10)])
    found = _discs([(10, 10), (10, 40), (40, 10)])
    texture = _discs([(10, 10), (10, 40), (40, 10), (30, 30), (50, 50), (55, 30)], r=2)
    assert removal_kept(found, texture, coarse) is True
    assert removal_kept(texture, found, coarse) is False
    assert removal_kept(found, found.copy(), coarse) is True  # a tie keeps the removal


def test_segment_checks_the_removal_against_the_coarse_mask(tmp_path, examples_dir,
                                                            trained_net, monkeypatch):
    import emcopilot.support

    catalyst = io.normalize(io.read_micrograph(examples_dir / "catalysts" / "images"
                                               / "Ru4.jpg").image)
    free = io.normalize(io.read_micrograph(examples_dir / "emps" / "images"
                                           / "c363833ad2.png").image)
    scaled = dict(particle_diameter_px=32, scale_preset="auto", input_polarity="bright",
                  support_removal="auto")
    plain = _checkpoint(tmp_path, trained_net, "plain", **scaled)
    checked = _checkpoint(tmp_path, trained_net, "checked", support_check=True, **scaled)
    assert plain.support_check is False and checked.support_check is True
    assert checked.removes_support(catalyst) and not checked.removes_support(free)
    removed = plain.segment(catalyst, add_coarse=False)
    without = plain.segment(catalyst, add_coarse=False, support="off")
    assert np.abs(removed[1] - without[1]).max() > 0.01
    coarse = checked.coarse_labels(checked.prepare(catalyst))
    kept = emcopilot.support.removal_kept(removed[0], without[0], coarse)
    got = checked.segment(catalyst, add_coarse=False)
    for a, b in zip(got, removed if kept else without):
        np.testing.assert_array_equal(a, b)
    # either way, as the referee says (the choice made by emcopilot.support.removal_kept)
    for verdict, expected in ((True, removed), (False, without)):
        monkeypatch.setattr(emcopilot.support, "removal_kept", lambda *a, v=verdict: v)
        for a, b in zip(checked.segment(catalyst, add_coarse=False), expected):
            np.testing.assert_array_equal(a, b)
        # the check can be switched off per call, and the model's plain one switched on
        for a, b in zip(checked.segment(catalyst, add_coarse=False, support_check=False),
                        removed):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(plain.segment(catalyst, add_coarse=False, support_check=True),
                        expected):
            np.testing.assert_array_equal(a, b)

    # an image whose support is not removed is not checked
    def refuse(*_):
        raise AssertionError("checked an image whose support was not removed")

    monkeypatch.setattr(emcopilot.support, "removal_kept", refuse)
    for a, b in zip(checked.segment(free, add_coarse=False), plain.segment(free, add_coarse=False)):
        np.testing.assert_array_equal(a, b)


def test_the_cli_states_the_library_support_check_default():
    from emcopilot.cli import SUPPORT_CHECK_DEFAULT as cli_default
    from emcopilot.support import SUPPORT_CHECK_DEFAULT

    assert cli_default is SUPPORT_CHECK_DEFAULT
