"""Every page of the web app under streamlit's AppTest: renders empty and with example data,
and its main action works (a job record is queued in the store, a table or download appears).
Jobs are not run by a worker here; where a page needs a job's output, the job function itself
is called with a small context object (tiny data: 2 example images)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAGES = ["pages/1_projects.py", "pages/2_upload.py", "pages/3_coarse_masks.py",
         "pages/4_priors.py", "pages/5_generator.py", "pages/6_segmentor.py",
         "pages/7_results.py"]


class Ctx:
    """Stand-in for the worker's job context."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.calls.append((done, total, message))

    def should_stop(self) -> bool:
        return False


@pytest.fixture()
def store():
    from emcopilot.store import ProjectStore

    return ProjectStore()


@pytest.fixture()
def project(store):
    """A project with two small example images (one EMPS, one catalyst)."""
    from emcopilot.examples import load_examples

    p = store.create_project("demo")
    added = load_examples(p, limit=1)
    assert len(added) == 2
    return p


@pytest.fixture()
def masked(project):
    from emcopilot import job_kinds

    res = job_kinds.coarse_masks_job(project, {"method": "classical"}, Ctx())
    assert res["method"] == "classical" and res["particles"] > 0
    return project


def open_page(page: str, project_id: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    if project_id is not None:
        at.session_state["project_id"] = project_id
    at.run()
    assert not at.exception, at.exception
    if page != PAGES[0]:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def jobs_of(store, project, kind):
    return [j for j in store.list_jobs(project_id=project.id) if j["kind"] == kind]


def button(at: AppTest, label: str):
    for b in at.button:
        if b.label == label:
            return b
    raise AssertionError(f"no button {label!r}: {[b.label for b in at.button]}")


def segment_params(at: AppTest, store, project, change) -> tuple[dict, dict]:
    """The params of the segment jobs the Results page queues as it stands, then after
    ``change()`` (a widget's ``set_value(...)`` or ``check()``)."""
    button(at, "Segment all images and write the report").click().run()
    before = jobs_of(store, project, "segment")[-1]["params"]
    change().run()
    button(at, "Segment all images and write the report").click().run()
    return before, jobs_of(store, project, "segment")[-1]["params"]


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_projects(page):
    at = open_page(page)
    assert not at.error


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_empty_project(page, store):
    p = store.create_project("empty")
    at = open_page(page, p.id)
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_example_data(page, masked):
    at = open_page(page, masked.id)
    assert not at.error, [e.value for e in at.error]


def test_projects_create_and_load_examples(store):
    at = open_page(PAGES[0])
    at.text_input[0].input("My particles")
    at.button[0].click().run()
    assert not at.exception
    projects = store.list_projects()
    assert [p.name for p in projects] == ["My particles"]
    button(at, "Load example data").click().run()
    assert not at.exception
    assert len(store.open_project(projects[0].id).images()) == 10
    assert any("Added 10 example images" in s.value for s in at.success)


def test_upload_page_sets_pixel_size(project):
    at = open_page(PAGES[1], project.id)
    stem = project.images()[0]["stem"]
    at.number_input(key=f"nm_{stem}").set_value(0.5).run()
    assert not at.exception
    rec = next(r for r in project.images() if r["stem"] == stem)
    assert rec["pixel_size_nm"] == pytest.approx(0.5)


def test_upload_page_says_what_auto_polarity_is(project):
    """Each image left on "auto" shows the detected polarity; an image the detector is unsure
    about (flat noise: no particles either way) gets a warning; a set polarity shows neither."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    noise = np.random.default_rng(0).normal(128, 20, (96, 96)).clip(0, 255).astype(np.uint8)
    Image.fromarray(noise).save(buf, format="PNG")
    project.add_image("flat.png", buf.getvalue())
    at = open_page(PAGES[1], project.id)
    captions = [c.value for c in at.caption]
    assert captions.count("auto: dark particles") == 1   # the bundled EMPS image (bright-field)
    assert captions.count("auto: bright particles") == 1  # the HAADF-STEM catalyst image
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and warnings[0].endswith("unsure: check the image and set it")
    at.selectbox(key="pol_flat").set_value("dark").run()
    assert not at.exception and not at.warning
    assert next(r for r in project.images() if r["stem"] == "flat")["polarity"] == "dark"


def test_an_image_with_a_data_bar_is_masked_above_it_and_the_upload_page_says_so(project,
                                                                                 examples_dir):
    """The Upload page names the bar's first row for the image that has one (and no other);
    the coarse-mask job leaves the bar's rows empty."""
    import numpy as np
    from PIL import Image

    from emcopilot import io as emio
    from emcopilot import job_kinds
    from tests.conftest import with_data_bar

    grey = emio.read_micrograph(examples_dir / "emps" / "images" / "f7fa7d1729.png").image
    buf = io.BytesIO()
    Image.fromarray(with_data_bar(np.asarray(grey, np.uint8))).save(buf, format="PNG")
    project.add_image("barred.png", buf.getvalue())
    at = open_page(PAGES[1], project.id)
    assert not at.exception
    bars = [c.value for c in at.caption if c.value.startswith("Data bar")]
    assert bars == ["Data bar from row 516 (of 556): left out of masks and segmentation"]
    job_kinds.coarse_masks_job(project, {"method": "classical"}, Ctx())
    labels = job_kinds._load_mask(project, "barred")
    assert labels.shape == (556, 512) and labels[:516].any() and not labels[516:].any()


def test_coarse_masks_preview_and_job(store, project):
    at = open_page(PAGES[2], project.id)
    assert "classical" in at.radio[0].options
    button(at, "Preview on this image").click().run()
    assert not at.exception and not at.error
    assert any("preview:" in str(img.proto) for img in at.get("image"))
    button(at, "Run on all images").click().run()
    jobs = jobs_of(store, project, "coarse_masks")
    assert len(jobs) == 1 and jobs[0]["state"] == "queued"
    assert jobs[0]["params"]["method"] == "classical"
    from emcopilot.postprocess import COARSE_MIN_SNR_DEFAULT

    # the faint-particle filter at the pipeline's default; 0 switches it off
    assert jobs[0]["params"]["filters"]["min_snr"] == COARSE_MIN_SNR_DEFAULT == 25.0
    faint = [n for n in at.number_input if n.label.startswith("Faint: signal-to-noise")]
    faint[0].set_value(0.0).run()
    button(at, "Run on all images").click().run()
    assert jobs_of(store, project, "coarse_masks")[-1]["params"]["filters"]["min_snr"] == 0
    # the annotation filter: on by default, the checkbox switches it off
    assert jobs[0]["params"]["filters"]["annotations"] is True
    [c for c in at.checkbox if c.label.startswith("Drop particles on drawn text")][0].uncheck().run()
    button(at, "Run on all images").click().run()
    assert jobs_of(store, project, "coarse_masks")[-1]["params"]["filters"]["annotations"] is False


def test_apply_strokes_adds_and_erases():
    import numpy as np

    src = (REPO / "pages/3_coarse_masks.py").read_text()
    ns: dict = {}
    exec(compile(src.split("\nst.title(")[0], "coarse_page", "exec"), ns)  # helpers only
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 1
    rgba = np.zeros((10, 10, 4), np.uint8)  # display at half size
    rgba[6:8, 6:8, 3] = 255
    added = ns["apply_strokes"](labels, rgba, "add")
    assert added.max() == 2 and (added == 2).sum() == 16 and (added == 1).sum() == 16
    rgba2 = np.zeros((10, 10, 4), np.uint8)
    rgba2[1:2, 1:2, 3] = 255  # -> rows/cols 2:4 at full size
    erased = ns["apply_strokes"](labels, rgba2, "erase")
    assert (erased == 1).sum() == 16 - 4


def test_priors_compute_and_synthesize_job(store, masked):
    at = open_page(PAGES[3], masked.id)
    button(at, "Compute priors").click().run()
    assert not at.exception and not at.error
    assert len(at.dataframe) >= 1
    assert any("particles measured" in s.value for s in at.success)
    button(at, "Generate synthetic masks").click().run()
    jobs = jobs_of(store, masked, "synthesize")
    assert len(jobs) == 1 and jobs[0]["params"]["per_mask"] == 3


def test_generator_job_queued(store, masked):
    at = open_page(PAGES[4], masked.id)
    at.number_input[0].set_value(2)
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    jobs = jobs_of(store, masked, "train_generator")
    assert len(jobs) == 1 and jobs[0]["params"]["epochs"] == 2


def test_segmentor_augmentations_and_job(store, masked):
    at = open_page(PAGES[5], masked.id)
    button(at, "Show augmentations").click().run()
    assert not at.exception and not at.error
    assert len(at.get("image")) >= 1
    at.radio[0].set_value("masks")
    submit = [b for b in at.button if b.label == "Train segmentor"][0]
    submit.click().run()
    jobs = jobs_of(store, masked, "train_segmentor")
    assert len(jobs) == 1 and jobs[0]["params"]["data"] == "masks"
    assert jobs[0]["params"]["samples_per_epoch"] is None and jobs[0]["params"]["base"] is None
    assert jobs[0]["params"]["particle_scale"] is True
    assert jobs[0]["params"]["min_peak"] == "auto"
    [c for c in at.checkbox if c.label.startswith("Train at a common particle width")][0].uncheck()
    [c for c in at.checkbox if c.label.startswith("Drop faint particles")][0].uncheck()
    # the Advanced controls reach the job (and the job passes them to train_segmentor)
    [n for n in at.number_input if n.label.startswith("Samples per epoch")][0].set_value(16)
    [s for s in at.selectbox if s.label.startswith("Network width")][0].set_value(4)
    [s for s in at.selectbox if s.label == "Image size (px)"][0].set_value(64)
    [s for s in at.selectbox if s.label.startswith("Segmentors to train")][0].set_value(2)
    [b for b in at.button if b.label == "Train segmentor"][0].click().run()
    assert not at.exception
    params = [j["params"] for j in jobs_of(store, masked, "train_segmentor")]
    assert len(params) == 2
    assert jobs[0]["params"]["seeds"] == 1
    assert [(q["samples_per_epoch"], q["base"], q["image_size"], q["particle_scale"],
             q["min_peak"], q["seeds"]) for q in params if q["base"] is not None] == [
        (16, 4, 64, False, None, 2)]


def test_segmentor_job_trains_on_synthetic_plus_own_masks(masked):
    """The "synthetic+masks" data option gathers both sets into one training set."""
    from emcopilot import job_kinds
    from emcopilot import io as emio

    own = job_kinds.prefer_masks(masked)
    synth_img = job_kinds.project_path(masked, "synthetic_images_dir")
    synth_msk = job_kinds.synthetic_masks(masked)
    synth_img.mkdir(parents=True, exist_ok=True)
    synth_msk.mkdir(parents=True, exist_ok=True)
    for stem, labels in own.items():  # stand-ins for generated pairs
        emio.write_image(synth_img / f"{stem}_syn000.png", job_kinds._image01(masked, stem))
        emio.write_label_map(synth_msk / f"{stem}_syn000.png", labels)
    params = {"data": "synthetic+masks", "epochs": 1, "base": 4, "image_size": 64,
              "samples_per_epoch": 4, "batch_size": 2}
    res = job_kinds.train_segmentor_job(masked, params, Ctx())
    assert res["epoch"] == 1
    # after training, the particle core probability is chosen against the project's masks and
    # recorded with the model (the Results page's segment job then uses it)
    from emcopilot.postprocess import MIN_PEAK_GRID

    ckpt = job_kinds.segmentor_checkpoint(masked)
    assert res["min_peak"] in MIN_PEAK_GRID
    assert job_kinds.segmentor_threshold(ckpt, "min_peak") == res["min_peak"]
    recorded = json.loads((ckpt / "config.json").read_text())["config"]
    assert recorded["min_peak_reference"] == "project masks"
    assert set(recorded["min_peak_f1"]) == {str(g) for g in MIN_PEAK_GRID}
    # scored as segmenting keeps the particles: after its faint filter (default level)
    from emcopilot.postprocess import MIN_SNR_DEFAULT

    assert recorded["min_snr"] == recorded["min_peak_min_snr"] == MIN_SNR_DEFAULT
    # and so is the particle growth, chosen with those particles
    from emcopilot.postprocess import GROW_OPTIONS

    assert res["grow_to"] in GROW_OPTIONS and set(recorded["grow_f1"]) == {"None", "otsu"}
    assert job_kinds.segmentor_grow_to(ckpt) == res["grow_to"]
    # and that segmenting adds the masks' particles the segmentor missed (params add_coarse)
    assert job_kinds.segmentor_add_coarse(ckpt) is True
    # and the support removal (default auto), which follows the preset the project's coarse
    # masks were made with (the coarse-mask job records it; the masked fixture: classical,
    # preset auto)
    assert recorded["support_removal"] == "auto"
    assert job_kinds.coarse_masks_preset(masked) == "auto" and recorded["scale_preset"] == "auto"
    # and whether the removal is checked against the masks per image (as the pipeline's default)
    from emcopilot.support import SUPPORT_CHECK_DEFAULT

    assert recorded["support_check"] is SUPPORT_CHECK_DEFAULT
    # and the faint-particle level (the pipeline's default), read back as the page reads it
    from emcopilot.postprocess import MIN_SNR_DEFAULT

    assert recorded["min_snr"] == MIN_SNR_DEFAULT == job_kinds.segmentor_min_snr(ckpt)
    # and the scale split (the pipeline's default)
    from emcopilot.particle_scale import SCALE_SPLIT_DEFAULT

    assert recorded["scale_split"] == SCALE_SPLIT_DEFAULT == job_kinds.segmentor_scale_split(ckpt)
    mixed = job_kinds.segmentor_runs(masked) / "training_data"
    names = sorted(p.name for p in (mixed / "masks").glob("*.png"))
    assert names == sorted([f"{s}_syn000.png" for s in own] + [f"real_{s}.png" for s in own])
    from emcopilot.particle_scale import typical_diameter

    config = json.loads((job_kinds.segmentor_runs(masked) / "last" / "config.json").read_text()
                        )["config"]
    data = config["data"]
    assert data["n_pairs"] == 2 * len(own) and data["images_dir"] == str(mixed / "images")
    # trained on bright-particle images at the common particle width, and says so
    assert config["input_polarity"] == "bright" and config["particle_diameter_px"] == 32
    pairs = job_kinds.segmentor_runs(masked) / "pairs"
    for stem in own:
        img = emio.read_micrograph(pairs / "images" / f"{stem}.png").image
        lab = emio.read_label_map(pairs / "masks" / f"{stem}.png")
        assert img[lab > 0].mean() > img[lab == 0].mean()
        d = typical_diameter(emio.read_label_map(mixed / "masks" / f"real_{stem}.png"))
        assert d == pytest.approx(32, rel=0.15)
    with pytest.raises(Exception, match="unknown training data"):
        job_kinds.train_segmentor_job(masked, {**params, "data": "everything"}, Ctx())
    with pytest.raises(Exception, match="min_peak"):
        job_kinds.train_segmentor_job(masked, {**params, "min_peak": 0.7}, Ctx())
    with pytest.raises(Exception, match="seeds"):
        job_kinds.train_segmentor_job(masked, {**params, "seeds": 0}, Ctx())
    # resumed with "every particle" (nothing left to train): the earlier choice is dropped
    res = job_kinds.train_segmentor_job(masked, {**params, "min_peak": None}, Ctx())
    assert res["min_peak"] is None and 0 <= res["f1_vs_masks"]["seed0"] <= 1
    assert job_kinds.segmentor_threshold(ckpt, "min_peak") is None


def test_results_quick_report_and_downloads(store, masked):
    from emcopilot import job_kinds

    at = open_page(PAGES[6], masked.id)
    assert len(at.radio[0].options) == 1 and at.radio[0].value == "coarse"  # no segmentor yet
    button(at, "Segment all images and write the report").click().run()
    jobs = jobs_of(store, masked, "segment")
    assert len(jobs) == 1 and jobs[0]["params"]["model"] == "coarse"
    res = job_kinds.segment_job(masked, jobs[0]["params"], Ctx())
    assert res["images"] == 2
    at = open_page(PAGES[6], masked.id)
    assert not at.error, [e.value for e in at.error]
    assert len(at.dataframe) >= 1
    labels = [el.proto.label for el in at.get("download_button")]
    assert "Download everything (ZIP)" in labels and "Particles (CSV)" in labels
    zpath = job_kinds.project_path(masked, "results_dir") / job_kinds.REPORT_ZIP
    with zipfile.ZipFile(io.BytesIO(zpath.read_bytes())) as zf:
        names = set(zf.namelist())
    assert {"particles.csv", "summary.json", "provenance.json"} <= names
    assert sum(n.startswith("masks/") for n in names) == 2


def test_results_with_a_segmentor_threshold(store, masked):
    import torch

    from emcopilot import job_kinds
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None,
                    {"image_size": 64, "calibrated_threshold": 0.35}, epoch=1)
    assert job_kinds.segmentor_threshold(ckpt) == 0.35
    at = open_page(PAGES[6], masked.id)
    assert not at.exception and at.radio[0].value == "segmentor"
    slider = at.slider[0]
    assert slider.value == pytest.approx(0.5) and "0.35" in slider.proto.help
    slider.set_value(0.6).run()
    button(at, "Segment all images and write the report").click().run()
    job = jobs_of(store, masked, "segment")[-1]
    assert job["params"] == {"model": "segmentor", "threshold": pytest.approx(0.6)}
    res = job_kinds.segment_job(masked, job["params"], Ctx())
    assert res["images"] == 2
    prov = job_kinds.project_path(masked, "results_dir") / "provenance.json"
    assert json.loads(prov.read_text())["model"]["threshold"] == pytest.approx(0.6)
    assert json.loads(prov.read_text())["model"]["min_peak"] is None  # none recorded


def test_results_use_the_recorded_core_probability_unless_told_not_to(store, masked):
    """A segmentor with a recorded particle core probability: the Results page says so, the
    segment job drops the fainter particles by default and keeps them when asked."""
    import numpy as np
    import torch

    from emcopilot import io as emio
    from emcopilot import job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import update_config

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None, {"image_size": 64}, epoch=1)
    seg = Segmentor.load(ckpt, device="cpu")
    stems = [r["stem"] for r in masked.images()]
    probs = {s: seg.probability(job_kinds._image01(masked, s),
                                polarity=job_kinds._polarity(masked, s)) for s in stems}
    # the untrained net's particles all peak within 1e-4 of each other: a core probability at
    # their highest peak drops every one of them (which ones a finer value keeps is tested on a
    # trained segmentor in test_inference), "keep faint particles" keeps them all
    peaks = np.concatenate([[float(p[lab == i].max()) for i in range(1, int(lab.max()) + 1)]
                            for p in probs.values()
                            for lab in [seg.instances(p, min_peak=None)]])
    assert peaks.size >= 1, peaks
    core = float(peaks.max())
    update_config(ckpt, min_peak=core)
    at = open_page(PAGES[6], masked.id)
    assert not at.exception
    keep = [c for c in at.checkbox if c.label.startswith("Keep faint particles")]
    assert len(keep) == 1 and f"{core:.2f}" in keep[0].label and keep[0].value is False
    default, every = segment_params(at, store, masked, keep[0].check)
    assert "min_peak" not in default  # the job's default: the model's value
    assert every["min_peak"] is None
    results = job_kinds.project_path(masked, "results_dir")
    counts = {}
    for name, params in (("core", default), ("every", every)):
        job_kinds.segment_job(masked, params, Ctx())
        model = json.loads((results / "provenance.json").read_text())["model"]
        assert model["min_peak"] == (core if name == "core" else None)
        counts[name] = 0
        for s in stems:
            expect = seg.instances(probs[s], min_peak=core if name == "core" else None)
            got = emio.read_label_map(results / "masks" / f"{s}.png")
            assert (got > 0).sum() == (expect > 0).sum()
            counts[name] += np.unique(got[got > 0]).size
    assert counts["core"] < counts["every"], (counts, peaks, core)
    with pytest.raises(Exception, match="min_peak"):
        job_kinds.segment_job(masked, {"model": "segmentor", "min_peak": 2}, Ctx())


def _recorded_then_cleared(store, project, label: str) -> tuple[dict, dict]:
    """The Results page for a model that records a setting: its checkbox (label starting
    with ``label``) is on and says it was chosen. Returns the segment jobs' params submitted as
    is (the model's value: the setting's key is absent) and with the box cleared."""
    at = open_page(PAGES[6], project.id)
    box = [c for c in at.checkbox if c.label.startswith(label)]
    assert len(box) == 1 and box[0].value is True and "chosen for this model" in box[0].label
    return segment_params(at, store, project, box[0].uncheck)


def test_results_grow_particles_as_recorded_unless_told_not_to(store, masked):
    """A segmentor with recorded growth: the Results page's checkbox is on and says it was
    chosen; the segment job grows the particles by default (the same particles, larger) and
    not when the box is cleared; with nothing recorded, checking the box asks for growth."""
    import numpy as np
    import torch

    from emcopilot import io as emio
    from emcopilot import job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import update_config

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None, {"image_size": 64}, epoch=1)
    assert job_kinds.segmentor_grow_to(ckpt) is None
    at = open_page(PAGES[6], masked.id)
    grow = [c for c in at.checkbox if c.label.startswith("Grow particles")]
    assert len(grow) == 1 and grow[0].value is False and "chosen" not in grow[0].label
    grow[0].check().run()
    button(at, "Segment all images and write the report").click().run()
    assert jobs_of(store, masked, "segment")[-1]["params"]["grow_to"] == "otsu"

    update_config(ckpt, grow_to=0.2)  # a low level, so that the untrained net's particles grow
    default, plain = _recorded_then_cleared(store, masked, "Grow particles")
    assert "grow_to" not in default and plain["grow_to"] is None
    seg = Segmentor.load(ckpt, device="cpu")
    results = job_kinds.project_path(masked, "results_dir")
    pixels = {}
    for name, params in (("grown", default), ("plain", plain)):
        job_kinds.segment_job(masked, params, Ctx())
        model = json.loads((results / "provenance.json").read_text())["model"]
        assert model["grow_to"] == (0.2 if name == "grown" else None)
        pixels[name] = 0
        for r in masked.images():
            s = r["stem"]
            prob = seg.probability(job_kinds._image01(masked, s),
                                   polarity=job_kinds._polarity(masked, s))
            expect = seg.instances(prob, grow_to=0.2 if name == "grown" else None)
            got = emio.read_label_map(results / "masks" / f"{s}.png")
            assert (got > 0).sum() == (expect > 0).sum()
            pixels[name] += int((got > 0).sum())
    assert pixels["grown"] >= pixels["plain"]
    with pytest.raises(Exception, match="grow_to"):
        job_kinds.segment_job(masked, {"model": "segmentor", "grow_to": "big"}, Ctx())


def test_results_add_the_masks_missed_particles_as_recorded(store, masked):
    """A segmentor that records add_coarse: the Results page's checkbox is on and says so; the
    segment job then adds the project's mask particles the segmentor missed (exactly
    postprocess.add_coarse_particles of its own particles), and not when the box is cleared."""
    import torch

    from emcopilot import io as emio
    from emcopilot import job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.postprocess import add_coarse_particles
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import update_config

    # a network of zeros: probability 0.5 everywhere, so it finds no particle (> 0.5) and every
    # mask particle of typical size is one it missed (mean 0.5, the Otsu level of a flat map)
    net = UNetPlusPlus(base=4, depth=3)
    with torch.no_grad():
        for w in net.parameters():
            w.zero_()
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, net, None, {"image_size": 64}, epoch=1)
    label = "Also keep the masks' particles the segmentor missed"
    at = open_page(PAGES[6], masked.id)
    add = [c for c in at.checkbox if c.label.startswith(label)]
    assert len(add) == 1 and add[0].value is False and "chosen" not in add[0].label
    update_config(ckpt, add_coarse=True)
    assert job_kinds.segmentor_add_coarse(ckpt) is True
    default, plain = _recorded_then_cleared(store, masked, label)
    assert "add_coarse" not in default and plain["add_coarse"] is False
    seg = Segmentor.load(ckpt, device="cpu")
    results = job_kinds.project_path(masked, "results_dir")
    added = 0
    for name, params in (("added", default), ("plain", plain)):
        job_kinds.segment_job(masked, params, Ctx())
        model = json.loads((results / "provenance.json").read_text())["model"]
        assert model["add_coarse"] is (name == "added")
        for r in masked.images():
            s = r["stem"]
            prob = seg.probability(job_kinds._image01(masked, s),
                                   polarity=job_kinds._polarity(masked, s))
            own = seg.instances(prob)
            expect = (add_coarse_particles(own, job_kinds._load_mask(masked, s), prob)
                      if name == "added" else own)
            got = emio.read_label_map(results / "masks" / f"{s}.png")
            assert (got > 0).sum() == (expect > 0).sum() and got.max() == expect.max()
            if name == "added":
                added += int(got.max()) - int(own.max())
    assert added > 0  # the test means something
    with pytest.raises(Exception, match="add_coarse"):
        job_kinds.segment_job(masked, {"model": "segmentor", "add_coarse": "yes"}, Ctx())


def test_the_coarse_mask_job_records_its_preset(project):
    from emcopilot import job_kinds

    assert job_kinds.coarse_masks_preset(project) == "auto"  # nothing recorded yet
    job_kinds.coarse_masks_job(project, {"method": "classical",
                                         "classical_options": {"preset": "isolated"},
                                         "stems": [project.images()[0]["stem"]]}, Ctx())
    assert job_kinds.coarse_masks_preset(project) == "isolated"
    record = project.read_json(job_kinds.COARSE_MASKS_RECORD)
    assert record == {"method": "classical", "classical_preset": "isolated"}
    (project.path / job_kinds.COARSE_MASKS_RECORD).write_text("{not json")
    assert job_kinds.coarse_masks_preset(project) == "auto"


def test_results_remove_the_support_as_recorded_or_as_chosen(store, masked):
    """The Results page's support-removal choice starts at what the model records (off for a
    model without a record, auto for one the pipeline or training made); another choice goes
    into the segment job's params, and the job runs the segmentor with it and says so in the
    report's provenance."""
    import torch

    from emcopilot import job_kinds
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import update_config

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None,
                    {"image_size": 64, "particle_diameter_px": 32}, epoch=1)
    label = "Take a textured support out first, for"
    at = open_page(PAGES[6], masked.id)
    box = [b for b in at.selectbox if b.label == label]
    assert len(box) == 1 and box[0].value == "off"
    update_config(ckpt, support_removal="auto")
    assert job_kinds.segmentor_support_removal(ckpt) == "auto"
    at = open_page(PAGES[6], masked.id)
    box = [b for b in at.selectbox if b.label == label]
    assert box[0].value == "auto"
    default, params = segment_params(at, store, masked, lambda: box[0].set_value("on"))
    assert "support_removal" not in default and params["support_removal"] == "on"
    results = job_kinds.project_path(masked, "results_dir")
    for given, used in (({}, "auto"), (params, "on")):
        job_kinds.segment_job(masked, {"model": "segmentor", **given}, Ctx())
        model = json.loads((results / "provenance.json").read_text())["model"]
        assert model["support_removal"] == used
    with pytest.raises(Exception, match="support removal"):
        job_kinds.segment_job(masked, {"model": "segmentor", "support_removal": "yes"}, Ctx())
    # the check of the removal against the masks: off as recorded, a tick sends it to the job
    check = "Keep the support removal only where it matches the masks at least as well"
    at = open_page(PAGES[6], masked.id)
    ticks = [c for c in at.checkbox if c.label == check]
    assert len(ticks) == 1 and ticks[0].value is False
    assert job_kinds.segmentor_support_check(ckpt) is False
    ticks[0].check().run()
    button(at, "Segment all images and write the report").click().run()
    params = jobs_of(store, masked, "segment")[-1]["params"]
    assert params["support_check"] is True
    job_kinds.segment_job(masked, {"model": "segmentor", **params}, Ctx())
    assert json.loads((results / "provenance.json").read_text())["model"]["support_check"] is True
    update_config(ckpt, support_check=True)
    assert job_kinds.segmentor_support_check(ckpt) is True
    at = open_page(PAGES[6], masked.id)
    ticks = [c for c in at.checkbox if c.label.startswith(check)]
    assert ticks[0].value is True and "(chosen for this model)" in ticks[0].label
    with pytest.raises(Exception, match="support_check"):
        job_kinds.segment_job(masked, {"model": "segmentor", "support_check": "yes"}, Ctx())


def test_results_choose_the_particle_scale_per_image_as_recorded_or_as_ticked(store, masked,
                                                                               monkeypatch):
    """The Results page's scale choice starts at what the model records (off without a record);
    a tick sends [1.5] to the segment job, which segments each image as
    Segmentor.segment_detail does with that choice (against the project's mask) and records the
    multiple kept per image; a model that records it starts ticked, and an untick sends []."""
    import numpy as np
    import torch

    from emcopilot import io, job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import update_config

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None,
                    {"image_size": 64, "particle_diameter_px": 32}, epoch=1)
    assert job_kinds.segmentor_scale_choice(ckpt) == ()
    label = "Also segment each image at"
    at = open_page(PAGES[6], masked.id)
    ticks = [c for c in at.checkbox if c.label.startswith(label)]
    assert len(ticks) == 1 and ticks[0].value is False and "1.5x" in ticks[0].label
    default, params = segment_params(at, store, masked, ticks[0].check)
    assert "scale_choice" not in default and params["scale_choice"] == [1.5]
    job_kinds.segment_job(masked, params, Ctx())
    results = job_kinds.project_path(masked, "results_dir")
    model = json.loads((results / "provenance.json").read_text())["model"]
    assert model["scale_choice"] == [1.5]
    seg = Segmentor.load(ckpt, device="cpu")
    stems = job_kinds._stems(masked)
    assert set(model["scale_multiples"]) == set(stems)
    for stem in stems:
        labels, _, info = seg.segment_detail(
            job_kinds._image01(masked, stem), threshold=0.5,
            polarity=job_kinds._polarity(masked, stem),
            scale_labels=job_kinds._load_mask(masked, stem), scale_choice=(1.5,))
        assert model["scale_multiples"][stem] == info["scale_multiple"]
        np.testing.assert_array_equal(io.read_label_map(results / "masks" / f"{stem}.png"),
                                      labels)
    # a referee that always prefers the larger scale: the job keeps x1.5 everywhere
    import emcopilot.inference

    with monkeypatch.context() as patch:
        patch.setattr(emcopilot.inference, "best_matching", lambda cands, ref: len(cands) - 1)
        job_kinds.segment_job(masked, params, Ctx())
        model = json.loads((results / "provenance.json").read_text())["model"]
        assert model["scale_multiples"] == {stem: 1.5 for stem in stems}
        for stem in stems:
            labels, _, _ = seg.segment_detail(
                job_kinds._image01(masked, stem), threshold=0.5,
                polarity=job_kinds._polarity(masked, stem),
                scale_labels=job_kinds._load_mask(masked, stem), scale_choice=(1.5,))
            np.testing.assert_array_equal(io.read_label_map(results / "masks" / f"{stem}.png"),
                                          labels)
    # without the choice: one factor, nothing recorded per image
    job_kinds.segment_job(masked, {"model": "segmentor"}, Ctx())
    model = json.loads((results / "provenance.json").read_text())["model"]
    assert model["scale_choice"] == [] and "scale_multiples" not in model
    update_config(ckpt, scale_choice=[1.5])
    assert job_kinds.segmentor_scale_choice(ckpt) == (1.5,)
    at = open_page(PAGES[6], masked.id)
    ticks = [c for c in at.checkbox if c.label.startswith(label)]
    assert ticks[0].value is True and "(chosen for this model)" in ticks[0].label
    ticks[0].uncheck().run()
    button(at, "Segment all images and write the report").click().run()
    assert jobs_of(store, masked, "segment")[-1]["params"]["scale_choice"] == []
    with pytest.raises(Exception, match="scale multiple"):
        job_kinds.segment_job(masked, {"model": "segmentor", "scale_choice": "yes"}, Ctx())
    with pytest.raises(Exception, match="scale multiple"):
        job_kinds.segment_job(masked, {"model": "segmentor", "scale_choice": [0]}, Ctx())
    update_config(ckpt, scale_choice=[1])  # not a valid record: read as none
    assert job_kinds.segmentor_scale_choice(ckpt) == ()


def test_results_split_for_the_particle_scale_as_recorded_or_as_chosen(store, masked):
    """The Results page's scale split starts at what the model records (off without a record);
    another choice goes into the segment job's params, and the job segments each image as
    Segmentor.segment_detail does with it (the width measured on the project's mask, split) and
    says so in the report's provenance."""
    import numpy as np
    import torch

    from emcopilot import io, job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import update_config

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None,
                    {"image_size": 64, "particle_diameter_px": 32}, epoch=1)
    assert job_kinds.segmentor_scale_split(ckpt) == "off"
    label = "Measure the particle width with touching mask particles split, for"
    at = open_page(PAGES[6], masked.id)
    box = [b for b in at.selectbox if b.label == label]
    assert len(box) == 1 and box[0].value == "off"
    default, params = segment_params(at, store, masked, lambda: box[0].set_value("on"))
    assert "scale_split" not in default and params["scale_split"] == "on"
    job_kinds.segment_job(masked, params, Ctx())
    results = job_kinds.project_path(masked, "results_dir")
    assert json.loads((results / "provenance.json").read_text())["model"]["scale_split"] == "on"
    seg = Segmentor.load(ckpt, device="cpu")
    for stem in job_kinds._stems(masked):
        labels, _, _ = seg.segment_detail(
            job_kinds._image01(masked, stem), threshold=0.5,
            polarity=job_kinds._polarity(masked, stem),
            scale_labels=job_kinds._load_mask(masked, stem), scale_split="on")
        np.testing.assert_array_equal(io.read_label_map(results / "masks" / f"{stem}.png"),
                                      labels)
    update_config(ckpt, scale_split="auto")
    assert job_kinds.segmentor_scale_split(ckpt) == "auto"
    at = open_page(PAGES[6], masked.id)
    box = [b for b in at.selectbox if b.label == label]
    assert box[0].value == "auto"
    job_kinds.segment_job(masked, {"model": "segmentor"}, Ctx())
    assert json.loads((results / "provenance.json").read_text())["model"]["scale_split"] == "auto"
    with pytest.raises(Exception, match="scale split"):
        job_kinds.segment_job(masked, {"model": "segmentor", "scale_split": "yes"}, Ctx())


def test_results_drop_faint_particles_as_recorded_or_as_chosen(store, masked):
    """The Results page's faint-particle choice starts at what the model records (off without
    a record); a tick sends the level to the segment job, which drops the particles
    Segmentor.segment_detail drops at it and lists how many per image in the provenance; a
    model that records a level starts ticked at it, another level or an untick is sent."""
    import numpy as np
    import torch

    from emcopilot import io, job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.postprocess import MIN_SNR_DEFAULT
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import update_config

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None, {"image_size": 64}, epoch=1)
    assert job_kinds.segmentor_min_snr(ckpt) is None
    label, level_label = "Drop faint particles", "Faint: signal-to-noise at most"
    at = open_page(PAGES[6], masked.id)
    ticks = [c for c in at.checkbox if c.label.startswith(label)]
    levels = [n for n in at.number_input if n.label == level_label]
    assert len(ticks) == 1 and ticks[0].value is False
    assert levels[0].value == MIN_SNR_DEFAULT and levels[0].disabled
    default, params = segment_params(at, store, masked, ticks[0].check)
    assert "min_snr" not in default and params["min_snr"] == MIN_SNR_DEFAULT
    # the job at a level that drops some of this untrained net's particles
    seg = Segmentor.load(ckpt, device="cpu")
    stems = job_kinds._stems(masked)
    results = job_kinds.project_path(masked, "results_dir")
    for level in (MIN_SNR_DEFAULT, 1000.0):
        job_kinds.segment_job(masked, {**params, "min_snr": level, "threshold": "otsu"}, Ctx())
        model = json.loads((results / "provenance.json").read_text())["model"]
        assert model["min_snr"] == level and set(model["faint_dropped"]) == set(stems)
        for stem in stems:
            labels, _, info = seg.segment_detail(
                job_kinds._image01(masked, stem), threshold="otsu",
                polarity=job_kinds._polarity(masked, stem), min_snr=level)
            assert model["faint_dropped"][stem] == info["faint_dropped"]
            np.testing.assert_array_equal(
                io.read_label_map(results / "masks" / f"{stem}.png"), labels)
    assert sum(model["faint_dropped"].values()) > 0  # at 1000 the choice is a real one
    job_kinds.segment_job(masked, {"model": "segmentor"}, Ctx())
    model = json.loads((results / "provenance.json").read_text())["model"]
    assert model["min_snr"] is None and not any(model["faint_dropped"].values())
    # recorded: ticked at the recorded level; another level, or an untick, is sent
    update_config(ckpt, min_snr=40.0)
    at = open_page(PAGES[6], masked.id)
    ticks = [c for c in at.checkbox if c.label.startswith(label)]
    levels = [n for n in at.number_input if n.label == level_label]
    assert ticks[0].value is True and "(chosen for this model)" in ticks[0].label
    assert levels[0].value == 40.0 and not levels[0].disabled
    button(at, "Segment all images and write the report").click().run()
    assert "min_snr" not in jobs_of(store, masked, "segment")[-1]["params"]
    levels[0].set_value(60.0).run()
    button(at, "Segment all images and write the report").click().run()
    assert jobs_of(store, masked, "segment")[-1]["params"]["min_snr"] == 60.0
    ticks = [c for c in at.checkbox if c.label.startswith(label)]
    ticks[0].uncheck().run()
    button(at, "Segment all images and write the report").click().run()
    assert jobs_of(store, masked, "segment")[-1]["params"]["min_snr"] is None
    for bad in ("x", -5):
        with pytest.raises(Exception, match="min_snr"):
            job_kinds.segment_job(masked, {"model": "segmentor", "min_snr": bad}, Ctx())
    update_config(ckpt, min_snr="loud")  # not a valid record: read as none
    assert job_kinds.segmentor_min_snr(ckpt) is None


def test_results_drop_particles_on_drawn_annotations_unless_unticked(store, masked,
                                                                     monkeypatch):
    """The Results page drops the particles on drawn text and scale bars by default; an untick
    sends annotations false to the segment job, which then keeps them. The job's particles are
    Segmentor.segment_detail's with the same choice, and the provenance lists how many were
    dropped per image. The net's map is made each image's bright-particle version (an
    untrained net's is flat), so the glyphs of the bundled figure's label are particles to it."""
    import numpy as np
    import torch

    import emcopilot.inference
    from emcopilot import io, job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint

    torch.manual_seed(0)
    ckpt = job_kinds.segmentor_runs(masked) / "best_miou"
    save_checkpoint(ckpt, UNetPlusPlus(base=4, depth=3), None, {"image_size": 64}, epoch=1)
    monkeypatch.setattr(emcopilot.inference.Segmentor, "_predict",
                        lambda self, prepared01, scale, support:
                        io.bright_particles(prepared01, "auto"))
    label = "Drop particles on text and scale bars drawn on the image"
    at = open_page(PAGES[6], masked.id)
    ticks = [c for c in at.checkbox if c.label == label]
    assert len(ticks) == 1 and ticks[0].value is True
    default, params = segment_params(at, store, masked, ticks[0].uncheck)
    assert "annotations" not in default and params["annotations"] is False
    seg = Segmentor.load(ckpt, device="cpu")
    stems = job_kinds._stems(masked)
    results = job_kinds.project_path(masked, "results_dir")
    counts = {}
    for sent in (default, params):
        job_kinds.segment_job(masked, sent, Ctx())
        model = json.loads((results / "provenance.json").read_text())["model"]
        on = sent.get("annotations", True)
        assert model["annotations"] is on and set(model["annotations_dropped"]) == set(stems)
        for stem in stems:
            labels, _, info = seg.segment_detail(
                job_kinds._image01(masked, stem), polarity=job_kinds._polarity(masked, stem),
                annotations=on)
            assert model["annotations_dropped"][stem] == info["annotations_dropped"]
            np.testing.assert_array_equal(
                io.read_label_map(results / "masks" / f"{stem}.png"), labels)
        counts[on] = model["annotations_dropped"]
    assert sum(counts[True].values()) > 0 and not any(counts[False].values())
    with pytest.raises(Exception, match="annotations"):
        job_kinds.segment_job(masked, {"model": "segmentor", "annotations": "yes"}, Ctx())


def test_job_panel_follows_the_store(store, project):
    """The job UI reads the store: queued (position), running (progress), failed (error),
    and Cancel on a queued job cancels it."""
    from emcopilot import jobs

    jid = jobs.submit(store, project.id, "coarse_masks", {"method": "classical"})
    at = open_page(PAGES[2], project.id)
    assert any("queued (position 1 in the queue)" in i.value for i in at.info)
    button(at, "Cancel").click().run()
    assert store.get_job(jid)["state"] == "cancelled"
    assert any("cancelled" in w.value for w in at.warning)

    jid = jobs.submit(store, project.id, "coarse_masks", {"method": "classical"})
    store.update_job(jid, state="running", progress=0.5, message="masking Cu3")
    at = open_page(PAGES[2], project.id)
    assert not at.exception
    bars = at.get("progress")
    assert bars and "masking Cu3" in str(bars[0].proto) and "50%" in str(bars[0].proto)

    store.update_job(jid, state="failed", error="out of memory on the GPU")
    at = open_page(PAGES[2], project.id)
    assert any("out of memory on the GPU" in e.value for e in at.error)


def test_segmentor_job_with_two_seeds_keeps_the_one_that_matches_the_masks(masked):
    """seeds=2: two segmentors are trained, each scored against the project's masks at its own
    chosen core probability, and so is their mean (one checkpoint running both); the best
    becomes the project's segmentor (ties: a single segmentor)."""
    from emcopilot import job_kinds
    from emcopilot.inference import Segmentor
    from emcopilot.postprocess import MIN_PEAK_GRID

    params = {"data": "masks", "epochs": 1, "base": 4, "image_size": 64,
              "samples_per_epoch": 4, "batch_size": 2, "seeds": 2}
    res = job_kinds.train_segmentor_job(masked, params, Ctx())
    scores = res["f1_vs_masks"]
    assert res["seeds"] == 2 and set(scores) == {"seed0", "seed1", "mean"}
    best = max(scores, key=lambda k: (scores[k], k != "mean", k == "seed0"))
    assert str(res["selected_seed"]) in (best, best[4:]) and res["min_peak"] in MIN_PEAK_GRID
    run = job_kinds.segmentor_runs(masked)
    ckpt = job_kinds.segmentor_checkpoint(masked)
    assert ckpt.parent == run
    config = json.loads((ckpt / "config.json").read_text())["config"]
    assert config["min_peak"] == res["min_peak"]
    mean = run / "candidates" / "mean"
    assert Segmentor.load(mean, device="cpu").ensemble_size == 2
    if best == "mean":
        assert ckpt.name == "best_miou" and len(config["ensemble"]) == 2
        assert (ckpt / "member1.safetensors").read_bytes() == (
            mean / "member1.safetensors").read_bytes()
        winner = run / "candidates" / "seed0"
    else:
        assert config["seed"] == res["selected_seed"] and "ensemble" not in config
        winner = run / "candidates" / best
        assert (ckpt / "model.safetensors").read_bytes() == (
            winner / ckpt.name / "model.safetensors").read_bytes()
    assert (run / "log.jsonl").read_text() == (winner / "log.jsonl").read_text()
    # ensemble=False: only the seeds compete
    res = job_kinds.train_segmentor_job(masked, {**params, "ensemble": False}, Ctx())
    assert set(res["f1_vs_masks"]) == {"seed0", "seed1"}


def test_segmentor_page_names_an_ensemble_model(masked):
    """A project segmentor that is the mean of several (kept by a multi-seed training): the
    Segmentor page says so, and the segment job runs it."""
    import torch

    from emcopilot import job_kinds
    from emcopilot.nets import UNetPlusPlus
    from emcopilot.training import save_checkpoint
    from emcopilot.training.checkpoint import ensemble_checkpoint

    run = job_kinds.segmentor_runs(masked)
    members = []
    for k in (0, 1):
        torch.manual_seed(k)
        members.append(save_checkpoint(run / "candidates" / f"m{k}", UNetPlusPlus(base=4, depth=3),
                                       None, {"image_size": 64}, epoch=1))
    at = open_page(PAGES[5], masked.id)
    assert not any("mean of" in c.value for c in at.caption)
    ensemble_checkpoint(members, run / "best_miou")
    assert job_kinds.segmentor_ensemble_size(run / "best_miou") == 2
    assert job_kinds.segmentor_ensemble_size(members[0]) == 1
    at = open_page(PAGES[5], masked.id)
    assert any("(the mean of 2 segmentors)" in c.value for c in at.caption)
    res = job_kinds.segment_job(masked, {"model": "segmentor"}, Ctx())
    assert res["images"] >= 1


@pytest.mark.parametrize("page, kind, titles", [
    (PAGES[4], "generator", ("Training losses", "Validation SSIM / LPIPS")),
    (PAGES[5], "segmentor", ("Validation metrics", "Training loss")),
])
def test_training_pages_chart_the_runs_log(masked, page, kind, titles):
    from emcopilot import job_kinds

    run_dir = job_kinds.project_path(masked, "models_dir", kind)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "loss_g": 3.0 / e, "loss_d": 0.7, "val_ssim": 0.2 * e, "loss": 1.0 / e,
             "val_mIoU": 0.3 * e, "val_mDice": 0.35 * e} for e in (1, 2)]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                       + "not json\n")
    at = open_page(page, masked.id)
    assert not at.error, [e.value for e in at.error]
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(specs) == 2
    for title in titles:
        assert sum(f'"title": "{title}"' in s for s in specs) == 1, (title, specs)
