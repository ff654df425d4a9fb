"""The training commands of the `emcopilot` console script, run as subprocesses on 2 bundled EMPS
pairs with tiny settings: train -> segment / generate, and the one-line error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emcopilot import io

STEMS = ("31121ca5cf", "391ef00939")  # 512x512 and 512x513 px


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", HF_HUB_OFFLINE="1",
               EMCOPILOT_OFFLINE="1", HF_HOME=str(tmp / "hf"), TORCH_HOME=str(tmp / "torch"),
               EMCOPILOT_WEIGHTS_DIR=str(tmp / "weights"), EMCOPILOT_DATA=str(tmp / "data"))
    env.pop("HF_TOKEN", None)
    env.pop("EMCOPILOT_DEBUG", None)
    return env


def _cli(tmp: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emcopilot.cli", *args], capture_output=True,
                          text=True, env=_env(tmp), timeout=timeout)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and lines[0].startswith("emcopilot")
    return lines[0]


@pytest.fixture(scope="module")
def data(examples_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_train")
    for sub, src in (("images", "images"), ("masks", "segmaps")):
        (root / sub).mkdir()
        for s in STEMS:
            (root / sub / f"{s}.png").write_bytes((examples_dir / "emps" / src / f"{s}.png")
                                                  .read_bytes())
    return root


@pytest.fixture(scope="module")
def segmentor(data):
    out = data / "seg"
    r = _cli(data, "train-segmentor", "--images", str(data / "images"), "--masks",
             str(data / "masks"), "--out", str(out), "--epochs", "1", "--image-size", "64",
             "--batch-size", "4", "--samples-per-epoch", "8", "--base", "12", "--device", "cpu",
             "-q")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["epoch"] == 1 and "best_miou" in result["checkpoints"]
    assert (out / "best_miou" / "config.json").is_file()
    config = json.loads((out / "best_miou" / "config.json").read_text())
    assert config["config"]["training"]["base"] == 12  # --base overrides the profile's 8
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    return out


def test_train_segmentor_then_segment(data, segmentor):
    out = data / "segmented"
    r = _cli(data, "segment", str(data / "images"), "--model", str(segmentor / "best_miou"),
             "--out", str(out), "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    for s in STEMS:
        labels = io.read_label_map(out / f"{s}.png")
        assert labels.shape == io.read_micrograph(data / "images" / f"{s}.png").image.shape
    for name in ("particles.csv", "summary.json", "psd.png", "psd.svg"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    json.loads((out / "summary.json").read_text())
    # the threshold: a number in (0, 1), "otsu" or "calibrated"; else a one-line usage error
    for i, how in enumerate(("otsu", "calibrated")):
        r = _cli(data, "segment", str(data / "images" / f"{STEMS[0]}.png"), "--model",
                 str(segmentor / "best_miou"), "--out", str(data / f"segmented_{i}"),
                 "--threshold", how, "--device", "cpu", "-q")
        assert r.returncode == 0, r.stderr
    for bad in ("1.5", "high"):
        r = _cli(data, "segment", str(data / "images"), "--model", str(segmentor / "best_miou"),
                 "--out", str(data / "segmented_bad"), "--threshold", bad, "-q")
        assert r.returncode == 2 and "threshold" in r.stderr and "Traceback" not in r.stderr


def test_segment_polarity_and_scale(data, segmentor, tmp_path):
    """--polarity converts images for a model trained on bright particles; --scale resizes
    before the model (results at the image's own size)."""
    import shutil

    bright_model = tmp_path / "bright_model"
    shutil.copytree(segmentor / "best_miou", bright_model)
    cfg = json.loads((bright_model / "config.json").read_text())
    cfg["config"]["input_polarity"] = "bright"
    (bright_model / "config.json").write_text(json.dumps(cfg))
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    src = data / "images" / f"{STEMS[0]}.png"
    io.write_image(inverted / src.name, 255 - io.read_micrograph(src).image.astype(np.uint8))
    r = _cli(tmp_path, "segment", str(src), "--model", str(bright_model), "--out",
             str(tmp_path / "a"), "--polarity", "dark", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    r = _cli(tmp_path, "segment", str(inverted / src.name), "--model", str(segmentor / "best_miou"),
             "--out", str(tmp_path / "b"), "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "a" / src.name),
                                  io.read_label_map(tmp_path / "b" / src.name))
    r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
             str(tmp_path / "c"), "--scale", "0.5", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert io.read_label_map(tmp_path / "c" / src.name).shape == io.read_micrograph(src).image.shape
    r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
             str(tmp_path / "d"), "--scale", "-1", "-q")
    assert r.returncode == 2 and "scale" in r.stderr and "Traceback" not in r.stderr
    # --min-peak keeps a subset of the particles
    r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
             str(tmp_path / "e"), "--min-peak", "0.9", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert "core probability > 0.9 kept" in r.stdout  # says what it dropped
    r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
             str(tmp_path / "g"), "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert "every particle kept" in r.stdout  # this model has no recorded core probability
    confident = io.read_label_map(tmp_path / "e" / src.name)
    every = io.read_label_map(tmp_path / "g" / src.name)
    assert confident.max() < every.max()
    assert not np.any((confident > 0) & (every == 0))  # a subset, with the same outlines
    prob = io.read_micrograph(tmp_path / "e" / "prob" / src.name).image / 255.0
    for k in range(1, int(confident.max()) + 1):
        assert prob[confident == k].max() > 0.9 - 1 / 255
    r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
             str(tmp_path / "f"), "--min-peak", "2", "-q")
    assert r.returncode == 2 and "min-peak" in r.stderr and "Traceback" not in r.stderr
    # --grow-to reaches the particles: the same particles (ids), never shrunk (how much they
    # grow is tested on controlled maps in test_postprocess; this small model's map is flat)
    r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
             str(tmp_path / "h"), "--grow-to", "otsu", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert "grown to each image's Otsu level" in r.stdout
    grown = io.read_label_map(tmp_path / "h" / src.name)
    assert grown.max() == every.max() and np.all(grown[every > 0] == every[every > 0])
    # a model with growth recorded grows by default, and --grow-to none switches it off
    from emcopilot.training.checkpoint import update_config

    recorded = tmp_path / "grown_model"
    shutil.copytree(segmentor / "best_miou", recorded)
    update_config(recorded, grow_to=0.3)
    r = _cli(tmp_path, "segment", str(src), "--model", str(recorded), "--out",
             str(tmp_path / "i"), "--device", "cpu", "-q")
    assert r.returncode == 0 and "grown to probability 0.3" in r.stdout, r.stdout + r.stderr
    r = _cli(tmp_path, "segment", str(src), "--model", str(recorded), "--out",
             str(tmp_path / "j"), "--grow-to", "none", "--device", "cpu", "-q")
    assert r.returncode == 0 and "grown" not in r.stdout, r.stdout + r.stderr
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "j" / src.name), every)
    for bad in ("2", "big"):
        r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
                 str(tmp_path / "f"), "--grow-to", bad, "-q")
        assert r.returncode == 2 and "grow-to" in r.stderr and "Traceback" not in r.stderr
    r = _cli(tmp_path, "pipeline", str(src.parent), "--out", str(tmp_path / "p"),
             "--segmentor-seeds", "0", "-q")
    assert r.returncode == 2 and "segmentor-seeds" in r.stderr and "Traceback" not in r.stderr
    r = _cli(tmp_path, "pipeline", str(src.parent), "--out", str(tmp_path / "p"),
             "--ensemble", "maybe", "-q")
    assert r.returncode == 2 and "ensemble" in r.stderr and "Traceback" not in r.stderr
    # an ensemble checkpoint (here the same segmentor twice) segments like its members
    from emcopilot.training.checkpoint import ensemble_checkpoint

    ens = ensemble_checkpoint([segmentor / "best_miou", segmentor / "best_miou"], tmp_path / "ens")
    r = _cli(tmp_path, "segment", str(src), "--model", str(ens), "--out",
             str(tmp_path / "ens_out"), "--device", "cpu", "-q")
    assert r.returncode == 0 and "mean of 2 segmentors" in r.stdout, r.stdout + r.stderr
    diff = (io.read_micrograph(tmp_path / "ens_out" / "prob" / src.name).image.astype(int)
            - io.read_micrograph(tmp_path / "g" / "prob" / src.name).image.astype(int))
    assert np.abs(diff).max() <= 1
    assert not (tmp_path / "p").exists()  # refused before anything was written
    # --add-coarse on: the same particles plus the classical masker's particles they missed;
    # a model that records it adds them by default, --add-coarse off switches it off
    r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"), "--out",
             str(tmp_path / "k"), "--add-coarse", "on", "--device", "cpu", "-q")
    assert r.returncode == 0 and "particles the segmentor missed" in r.stdout, r.stdout + r.stderr
    added = io.read_label_map(tmp_path / "k" / src.name)
    np.testing.assert_array_equal(added[every > 0], every[every > 0])
    assert added.max() >= every.max()
    update_config(recorded, add_coarse=True)
    r = _cli(tmp_path, "segment", str(src), "--model", str(recorded), "--out",
             str(tmp_path / "l"), "--grow-to", "none", "--device", "cpu", "-q")
    assert r.returncode == 0 and "missed" in r.stdout, r.stdout + r.stderr
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "l" / src.name), added)
    r = _cli(tmp_path, "segment", str(src), "--model", str(recorded), "--out",
             str(tmp_path / "m"), "--grow-to", "none", "--add-coarse", "off", "--device", "cpu",
             "-q")
    assert r.returncode == 0 and "missed" not in r.stdout, r.stdout + r.stderr
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "m" / src.name), every)
    for args in (("segment", str(src), "--model", str(recorded), "--add-coarse", "maybe"),
                 ("pipeline", str(src.parent), "--add-coarse", "model")):
        r = _cli(tmp_path, *args, "--out", str(tmp_path / "p"), "-q")
        assert r.returncode == 2 and "add-coarse" in r.stderr and "Traceback" not in r.stderr


def test_train_segmentor_at_a_common_particle_width(data, tmp_path):
    out = tmp_path / "seg_scaled"
    r = _cli(tmp_path, "train-segmentor", "--images", str(data / "images"), "--masks",
             str(data / "masks"), "--out", str(out), "--epochs", "1", "--image-size", "64",
             "--batch-size", "4", "--samples-per-epoch", "4", "--device", "cpu",
             "--particle-width", "24", "-q")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "last" / "config.json").read_text())["config"]
    assert cfg["particle_diameter_px"] == 24 and cfg["input_polarity"] is None
    assert cfg["data"]["images_dir"] == str(out / "training_data" / "images")
    scales = json.loads((out / "training_data" / "scales.json").read_text())
    assert sorted(scales) == sorted(STEMS) and all(0.125 <= v <= 4 for v in scales.values())
    r = _cli(tmp_path, "segment", str(data / "images" / f"{STEMS[0]}.png"), "--model",
             str(out / "last"), "--out", str(tmp_path / "seg"), "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    labels = io.read_label_map(tmp_path / "seg" / f"{STEMS[0]}.png")
    assert labels.shape == io.read_label_map(data / "masks" / f"{STEMS[0]}.png").shape


def test_train_generator_then_generate(data):
    out = data / "gen"
    r = _cli(data, "train-generator", "--images", str(data / "images"), "--masks",
             str(data / "masks"), "--out", str(out), "--epochs", "1", "--image-size", "256",
             "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["epoch"] == 1 and (out / "last" / "config.json").is_file()
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert "val_fid" in rec and "val_ssim" in rec
    synth = data / "synth"
    r = _cli(data, "generate", "--generator", str(out / "last"), "--masks", str(data / "masks"),
             "--out", str(synth), "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.stem for p in synth.glob("*.png")) == sorted(STEMS)
    for s in STEMS:
        img = io.read_micrograph(synth / f"{s}.png").image
        assert img.shape == io.read_label_map(data / "masks" / f"{s}.png").shape
        assert np.std(img) > 0


def test_segment_model_errors(data, tmp_path):
    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    r = _cli(tmp_path, "segment", str(data / "images"), "--model", str(empty), "--out",
             str(tmp_path / "o1"), "-q")
    assert r.returncode == 2
    assert "config.json" in _one_line_error(r)
    # registered but not published (and not on this machine): WeightsUnavailableError -> 3
    r = _cli(tmp_path, "segment", str(data / "images"), "--model", "emcopilot_segmentor_demo",
             "--out", str(tmp_path / "o2"), "-q")
    assert r.returncode == 3
    assert "emcopilot_segmentor_demo" in _one_line_error(r) or "segmentor" in r.stderr
    r = _cli(tmp_path, "segment", str(data / "images"), "--model", "no_such_name", "--out",
             str(tmp_path / "o3"), "-q")
    assert r.returncode == 2 and "no_such_name" in _one_line_error(r)


def test_push_model_without_network_is_one_line(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(2)}, str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps({"kind": "segmentor"}))
    r = _cli(tmp_path, "push-model", str(ck), "--repo", "someone/emcopilot-test", timeout=120)
    assert r.returncode != 0
    line = _one_line_error(r)
    assert "someone/emcopilot-test" in line or "token" in line.lower()


def test_segment_leaves_out_a_data_bar_and_says_so(data, segmentor, tmp_path):
    from PIL import Image

    from tests.conftest import with_data_bar

    grey = io.read_micrograph(data / "images" / f"{STEMS[0]}.png").image
    src = tmp_path / "barred.png"
    Image.fromarray(with_data_bar(np.asarray(grey, np.uint8))).save(src)
    h = grey.shape[0]
    outs = {}
    for setting in ("on", "off"):
        r = _cli(tmp_path, "segment", str(src), "--model", str(segmentor / "best_miou"),
                 "--out", str(tmp_path / setting), "--data-bar", setting, "--device", "cpu",
                 "-q")
        assert r.returncode == 0, r.stderr
        said = "the data bar at the bottom of 1 image(s) left out" in r.stdout
        assert said == (setting == "on"), r.stdout
        outs[setting] = (io.read_label_map(tmp_path / setting / "barred.png"),
                         io.read_micrograph(tmp_path / setting / "prob" / "barred.png").image)
    labels, prob = outs["on"]
    assert labels.shape == (h + 40, grey.shape[1])
    assert not labels[h:].any() and not prob[h:].any()
    assert outs["off"][1][h:].any()  # the network saw the bar


def test_train_segmentor_rejects_a_bad_width(data, tmp_path):
    for bad, why in (("0", "between 2 and 256"), ("ab", "not a whole number")):
        r = _cli(data, "train-segmentor", "--images", str(data / "images"), "--masks",
                 str(data / "masks"), "--out", str(tmp_path / "seg"), "--base", bad)
        assert r.returncode == 2 and why in r.stderr, r.stderr
        assert not (tmp_path / "seg").exists()


def test_segment_says_how_many_particles_on_drawn_annotations_it_dropped(data, segmentor,
                                                                          tmp_path, monkeypatch,
                                                                          capsys):
    """`segment` drops the particles on text and scale bars drawn on an image (the default) and
    says how many; `--annotations off` keeps them and says nothing of it. The segmentor's
    probability map is made the bright-particle image itself (this tiny model's map is flat), so
    the label's glyphs are particles to it, as a trained model's often are."""
    import re

    import emcopilot.inference
    from emcopilot.cli import main
    from emcopilot.polarity import describe_polarity
    from tests.test_annotations import with_label

    src = data / "images" / f"{STEMS[0]}.png"
    img = io.normalize(io.read_micrograph(src).image)
    ink = 1.0 if describe_polarity(img)["polarity"] == "bright" else 0.0  # the particles' grey
    labelled = tmp_path / "labelled.png"
    io.write_image(labelled, np.round(with_label(img, ink=ink) * 255).astype(np.uint8))
    monkeypatch.setattr(emcopilot.inference.Segmentor, "_predict",
                        lambda self, prepared01, scale, support:
                        io.bright_particles(prepared01, "auto"))
    counts, dropped = {}, None
    for option in ("on", "off"):
        code = main(["segment", str(labelled), "--model", str(segmentor / "best_miou"), "--out",
                     str(tmp_path / option), "--annotations", option, "--min-snr", "none",
                     "--device", "cpu", "-q"])
        out = capsys.readouterr().out
        assert code == 0, out
        counts[option] = int(io.read_label_map(tmp_path / option / "labelled.png").max())
        said = re.search(r"(\d+) particle\(s\) on drawn text and scale bars dropped", out)
        assert (said is not None) == (option == "on"), out
        if said:
            dropped = int(said.group(1))
    assert dropped > 0 and counts["on"] == counts["off"] - dropped
