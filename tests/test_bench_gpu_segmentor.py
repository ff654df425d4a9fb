"""bench/bench_gpu_segmentor.py: one variant end to end on the bundled EMPS examples (CPU, tiny),
the summary's Dice gap, and the CPU width timing."""

from __future__ import annotations

import json

import pytest

from bench.bench_gpu_segmentor import VARIANTS, main, summarise
from emcopilot.training import resolve_profile


def test_summary_reports_the_dice_gap_to_the_paper_model(tmp_path):
    for name, dice in (("paper", 0.70), ("cpu", 0.55), ("paper-base16", 0.71)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(
            {"variant": name, "epochs_done": 1, "epochs": 1, "train_seconds": 1.0,
             "test": {"dice_mean": dice}, "inference_512": {"median_s": 0.1, "device": "cpu"}}))
    s = summarise(tmp_path)
    assert s["dice_gap_to_paper"] == {"cpu": -0.15, "paper-base16": 0.01}
    assert json.loads((tmp_path / "summary.json").read_text())["dice_gap_to_paper"]["cpu"] == -0.15


@pytest.mark.slow
def test_one_variant_trains_segments_and_scores(examples_dir, tmp_path):
    d = examples_dir / "emps"
    main(["--variant", "paper-base8", "--out", str(tmp_path), "--train-images", str(d / "images"),
          "--train-masks", str(d / "segmaps"), "--test-images", str(d / "images"),
          "--test-masks", str(d / "segmaps"), "--epochs", "1", "--limit", "3", "--repeat", "1",
          "--device", "cpu"])
    r = json.loads((tmp_path / "paper-base8" / "result.json").read_text())
    assert r["epochs_done"] == 1 and not r["cut_short"] and "segment_error" not in r
    assert r["recipe"]["base"] == 8 and r["recipe"]["image_size"] == 512
    assert r["test"]["n_images"] == 3 and 0.0 <= r["test"]["dice_mean"] <= 1.0
    assert r["inference_512"]["device"] == "cpu" and r["inference_512"]["median_s"] > 0


def test_width_timing_writes_json(tmp_path):
    out = tmp_path / "widths.json"
    main(["--time-widths", "2,4", "--repeat", "1", "--json", str(out)])
    w = json.loads(out.read_text())["widths"]
    assert set(w) == {"2", "4"}
    assert all(v["median_s"] > 0 and v["train_step_median_s"] > 0 for v in w.values())


@pytest.mark.slow
def test_prepare_data_writes_grey_copies_and_the_label_maps(shared_data, tmp_path):
    from emcopilot import io

    main(["--prepare-data", str(tmp_path), "--train-limit", "2"])
    train = sorted(p.name for p in (tmp_path / "emps_train" / "images").iterdir())
    assert train == sorted(p.name for p in (shared_data / "emps_train" / "images").glob("*.png"))[:2]
    assert len(list((tmp_path / "emps_test" / "images").iterdir())) == 99
    name = train[0]
    grey = io.read_micrograph(tmp_path / "emps_train" / "images" / name).image
    src = io.read_micrograph(shared_data / "emps_train" / "images" / name).image
    assert grey.ndim == 2 and grey.shape == src.shape
    assert (tmp_path / "emps_train" / "segmaps" / name).read_bytes() == \
        (shared_data / "emps_train" / "segmaps" / name).read_bytes()


def test_every_variant_resolves_to_its_recipe_and_width():
    for name, spec in VARIANTS.items():
        spec = dict(spec)
        cfg = resolve_profile(spec.pop("profile"), "segmentor", **spec)
        recipe = "cpu" if name.startswith("cpu") else "paper"
        assert cfg["image_size"] == resolve_profile(recipe, "segmentor")["image_size"], name
        width = name.rsplit("base", 1)[1] if "base" in name else None
        assert cfg["base"] == (int(width) if width else resolve_profile(recipe, "segmentor")["base"])
    assert {"cpu-base12", "cpu-base16"} <= set(VARIANTS)


def test_a_variant_stopped_before_its_first_epoch_reports_it(examples_dir, tmp_path, capsys):
    d = examples_dir / "emps"
    main(["--variant", "cpu-base12", "--out", str(tmp_path), "--train-images",
          str(d / "images"), "--train-masks", str(d / "segmaps"), "--test-images",
          str(d / "images"), "--test-masks", str(d / "segmaps"), "--epochs", "1", "--limit", "3",
          "--deadline-s", "0.001", "--device", "cpu"])
    r = json.loads((tmp_path / "cpu-base12" / "result.json").read_text())
    assert r["cut_short"] and "before its first epoch ended" in r["error"] and "test" not in r
    summarise(tmp_path)
    assert "ERROR no best checkpoint" in capsys.readouterr().out
