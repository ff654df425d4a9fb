"""Scale split: the segmentor measures an image's particle width on its coarse mask with touching
particles split (emcopilot.particle_scale.split_touching) where its checkpoint or the caller
says, and `emcopilot segment --scale-split` reaches it."""

from __future__ import annotations

import numpy as np
import pytest

from emcopilot import io
from emcopilot.errors import InputError
from emcopilot.inference import Segmentor
from emcopilot.particle_scale import normalising_scale
from tests.test_inference import real, segmentor  # noqa: F401  (fixtures)
from tests.test_support import _checkpoint

SCALED = dict(particle_diameter_px=32, input_polarity="bright")


def _read(path) -> np.ndarray:
    return io.normalize(io.read_micrograph(path).image)


@pytest.mark.slow
def test_the_segmentor_splits_for_its_scale_as_its_checkpoint_says(tmp_path, examples_dir,
                                                                   segmentor):
    net = segmentor.model  # test_inference's tiny trained UNet++
    catalyst = _read(examples_dir / "catalysts" / "images" / "Pt4.jpg")
    free = _read(examples_dir / "emps" / "images" / "c363833ad2.png")
    # a model from before the split: never
    old = _checkpoint(tmp_path, net, "old", scale_preset="auto", **SCALED)
    auto = _checkpoint(tmp_path, net, "auto", scale_preset="auto", scale_split="auto", **SCALED)
    assert old.scale_split == "off" and auto.scale_split == "auto"
    cat, fr = auto.prepare(catalyst), auto.prepare(free)
    assert old.resolve_scale_split(cat) is False
    # "auto" reaches the images the support removal's "auto" would: a support seen
    assert auto.resolve_scale_split(cat) is True and auto.resolve_scale_split(fr) is False
    assert auto.resolve_scale_split(fr, "on") is True
    assert auto.resolve_scale_split(cat, False) is False
    assert auto.resolve_scale_split(fr, shows_support=True) is True  # a judgement already made
    # the support removal and the split judged together (off here: only the split reaches)
    assert auto.removes_and_splits(catalyst) == (False, True)
    assert auto.removes_and_splits(free) == (False, False)
    assert [auto.split_scope(), old.split_scope(), auto.split_scope("on")] == \
        ["per image", "none", "all"]
    with pytest.raises(InputError):
        auto.resolve_scale_split(cat, "sometimes")
    isolated = _checkpoint(tmp_path, net, "isolated", scale_preset="isolated",
                           scale_split="auto", **SCALED)
    assert isolated.resolve_scale_split(isolated.prepare(catalyst)) is False
    unscaled = _checkpoint(tmp_path, net, "unscaled", scale_split="on")
    assert unscaled.resolve_scale_split(cat) is False and unscaled.resolve_scale(cat) is None

    # the split changes the factor on this catalyst (its particles touch in the coarse mask)
    coarse = auto.coarse_labels(cat)
    split_factor = normalising_scale(coarse, 32, split=True)
    assert split_factor > 1.2 * normalising_scale(coarse, 32)
    assert auto.resolve_scale(cat, labels=coarse, split=True) == pytest.approx(split_factor)
    assert auto.resolve_scale(cat, split=True) == pytest.approx(split_factor)  # measured itself
    # the map is the network's at that factor; without the split, at the other one
    split_map = auto.probability(catalyst)
    np.testing.assert_allclose(split_map, auto.predict_proba(cat, scale=split_factor), atol=1e-6)
    plain = auto.probability(catalyst, scale_split="off")
    np.testing.assert_allclose(plain, old.probability(catalyst), atol=1e-6)
    assert np.abs(plain - split_map).max() > 0.01
    labels, prob = auto.segment(catalyst, add_coarse=False)
    np.testing.assert_allclose(prob, split_map, atol=1e-6)
    np.testing.assert_array_equal(labels, auto.instances(prob))
    # a free-particle image is left at its plain factor
    np.testing.assert_allclose(auto.probability(free), old.probability(free), atol=1e-6)
    # with the support removed too, the judgement is made once and both follow it
    both = _checkpoint(tmp_path, net, "both", scale_preset="auto", scale_split="auto",
                       support_removal="auto", **SCALED)
    assert both.removes_and_splits(catalyst) == (True, True)
    assert both.removes_and_splits(free) == (False, False)
    from emcopilot.particle_scale import resize_image
    from emcopilot.support import remove_support

    expected = remove_support(resize_image(cat, split_factor), 32)
    import cv2

    np.testing.assert_allclose(both.probability(catalyst),
                               np.clip(cv2.resize(both.predict_proba(expected), cat.shape[::-1],
                                                  interpolation=cv2.INTER_LINEAR), 0, 1),
                               atol=1e-6)


@pytest.mark.slow
def test_segment_cli_takes_scale_split(tmp_path, examples_dir, segmentor, capsys):
    from emcopilot.cli import main

    image = examples_dir / "catalysts" / "images" / "Pt4.jpg"
    _checkpoint(tmp_path, segmentor.model, "model", scale_preset="auto", **SCALED)
    seg = Segmentor.load(tmp_path / "model", device="cpu")
    catalyst = _read(image)
    said = {"model": None, "on": "split, on every image",
            "auto": "split, on the images where the classical masker sees a support"}
    for mode, words in said.items():
        out = tmp_path / f"out_{mode}"
        assert main(["segment", str(image), "--model", str(tmp_path / "model"), "--out",
                     str(out), "--device", "cpu", "-q", "--add-coarse", "off",
                     "--min-snr", "none", "--scale-split", mode]) == 0
        printed = capsys.readouterr().out
        assert ("split" not in printed) if words is None else (words in printed), printed
    # as the library segments it (the other modes' maps are compared below)
    labels, _ = seg.segment(catalyst, add_coarse=False, min_snr=None, scale_split="on")
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "out_on" / "Pt4.png"), labels)
    # the model records none: its default is the plain width; on: another factor, other maps;
    # auto reaches this catalyst (a support seen): the same maps as on
    maps = {mode: io.read_micrograph(tmp_path / f"out_{mode}" / "prob" / "Pt4.png").image
            for mode in said}
    assert (maps["model"] != maps["on"]).any()
    np.testing.assert_array_equal(maps["auto"], maps["on"])
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(image), "--model", str(tmp_path / "model"), "--out",
              str(tmp_path / "bad"), "--scale-split", "sometimes"])
    assert exc.value.code == 2
