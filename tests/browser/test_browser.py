"""A new lab member, in the browser: project -> a small set of example data -> bad uploads
rejected -> coarse masks -> one brush stroke saved -> priors -> a tiny segmentor trained on the
project's own masks (1 epoch, 64 px, base 4) -> segmentation with that segmentor -> PSD chart
-> ZIP download. Screenshots of every page go to tests/browser/artifacts/."""

from __future__ import annotations

import io
import json
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

# not imported from conftest: a site-packages "tests" package can shadow this repo's tests/
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMINGS: dict[str, float] = {}


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _goto(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_role("heading", level=1).first.wait_for()


def _wait_done(page, what: str, timeout_ms: int) -> None:
    t0 = time.monotonic()
    page.get_by_text(f"{what}: done", exact=False).first.wait_for(timeout=timeout_ms)
    TIMINGS[what] = round(time.monotonic() - t0, 1)
    assert page.get_by_text(f"{what} failed").count() == 0


def _pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the streamlit select box labelled ``label``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    box = page.get_by_label(label, exact=True)
    wanted = page.get_by_role("option", name=option, exact=True)
    for attempt in range(3):  # a rerun of the page can close the list while it opens
        box.click()
        box.fill(option)  # the select box filters its list as one types
        try:
            wanted.click(timeout=10_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    page.get_by_role("option").first.wait_for(state="detached")  # list closed
    # (the values reach the job: checked in the checkpoint's config.json below)


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width x height pixels, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _truncated_tiff() -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16))
    data = buf.getvalue()
    return data[: len(data) // 2]


def _project_files(data) -> list[str]:
    """Every file under the data folder's projects (what an upload could have changed)."""
    return sorted(p.relative_to(data).as_posix() for p in (data / "projects").rglob("*")
                  if p.is_file())


def test_micrographs_to_psd_report(page, app_server):
    url, data = app_server
    t_start = time.monotonic()
    page.goto(url)
    page.get_by_role("heading", name="Projects").wait_for(timeout=60_000)
    _shot(page, "1_projects_empty")

    page.get_by_label("New project name").fill("Browser test")
    page.get_by_role("button", name="Create project").click()
    page.get_by_text("Current project: Browser test").wait_for()
    # A quick first run: one image of each example set (a 512 px EMPS and a 640 px catalyst).
    _set_number(page, "Images per example set (0 = all)", 1)
    page.get_by_role("button", name="Load example data").click()
    page.get_by_text("Added 2 example images").wait_for(timeout=60_000)
    _shot(page, "1_projects")

    _goto(page, "Upload")
    page.get_by_text("2 images", exact=True).wait_for()
    page.get_by_text("31121ca5cf").first.wait_for()
    before = _project_files(data)
    # Bad files: each gets one error line naming it; nothing is added or changed.
    bad = {
        "notes.png": (b"this is not an image\n", "image/png"),
        "empty.tif": (b"", "image/tiff"),
        "truncated.tif": (_truncated_tiff(), "image/tiff"),
        "huge.png": (_png_header_only(100_000, 100_000), "image/png"),
        "../escape.png": (_png_header_only(8, 8), "image/png"),
    }
    page.locator("input[type=file]").set_input_files(
        [{"name": n, "mimeType": m, "buffer": b} for n, (b, m) in bad.items()])
    page.get_by_text("escape.png").first.wait_for()  # listed by the uploader
    page.get_by_role("button", name="Add to project").click()
    alerts = page.get_by_test_id("stAlertContentError")
    alerts.nth(len(bad) - 1).wait_for(timeout=60_000)
    texts = [t.strip() for t in alerts.all_inner_texts()]
    assert len(texts) == len(bad), texts
    for name, text in zip(bad, texts):
        assert "\n" not in text, text  # one line each
    for name in ("notes.png", "empty.tif", "truncated.tif", "huge.png"):
        assert sum(t.startswith(f"{name}:") for t in texts) == 1, (name, texts)
    assert any("empty" in t for t in texts if t.startswith("empty.tif:")), texts
    assert any("100000" in t.replace(",", "").replace("_", "") or "large" in t
               for t in texts if t.startswith("huge.png:")), texts
    # Chromium keeps the "../" of the given name in File.name; the store refuses it by name.
    escape = [t for t in texts if "escape.png" in t]
    assert len(escape) == 1 and "must not contain '/' or '\\'" in escape[0], texts
    assert page.get_by_text("Added", exact=False).count() == 0
    page.get_by_text("2 images", exact=True).wait_for()
    assert _project_files(data) == before
    assert not list(data.rglob("escape*"))
    _shot(page, "2_upload")

    _goto(page, "Coarse masks")
    page.get_by_role("button", name="Run on all images").click()
    _wait_done(page, "coarse masks", 180_000)
    page.get_by_text("Touch up the mask").wait_for()
    canvas = page.locator("canvas.upper-canvas").first
    canvas.wait_for(timeout=30_000)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None and box["width"] > 100
    x0, y0 = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.45
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + 4 * i, y0 + 3 * i)
    page.mouse.up()
    page.wait_for_timeout(1500)  # the canvas sends its image data on mouse up
    page.get_by_role("button", name="Save edits").click()
    page.get_by_text("Saved the edited mask").wait_for(timeout=30_000)
    _shot(page, "3_coarse_masks")
    edited = list(data.glob("projects/*/masks/edited/*.png"))
    assert len(edited) == 1

    _goto(page, "Priors")
    page.get_by_role("button", name="Compute priors").click()
    page.get_by_text("particles measured").wait_for(timeout=60_000)
    _shot(page, "4_priors")

    _goto(page, "Generator")
    _shot(page, "5_generator")

    # A genuinely tiny segmentor on the project's own (coarse + edited) masks.
    _goto(page, "Segmentor")
    page.get_by_text("this project's images and masks (2)").wait_for()
    page.get_by_text("this project's images and masks (2)").click()
    _set_number(page, "Epochs (total)", 1)
    _pick(page, "Image size (px)", "64")
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_label("Samples per epoch (0 = the profile's)", exact=True).wait_for(
        state="visible")
    _set_number(page, "Samples per epoch (0 = the profile's)", 16)
    _pick(page, "Network width (base channels)", "4")
    page.get_by_role("button", name="Train segmentor").click()
    _wait_done(page, "train segmentor", 240_000)
    page.get_by_text("Model to use: best_miou").wait_for(timeout=30_000)
    page.get_by_text("Validation metrics").first.wait_for()
    _shot(page, "6_segmentor")
    ckpt = next(data.glob("projects/*/models/segmentor/best_miou"))
    cfg = json.loads((ckpt / "config.json").read_text())
    train = cfg["config"]["training"]
    assert (train["base"], train["image_size"], train["samples_per_epoch"], train["epochs"]) \
        == (4, 64, 16, 1), train
    assert cfg["epoch"] == 1

    _goto(page, "Results")
    seg_choice = page.get_by_text("trained segmentor (best_miou)")
    seg_choice.wait_for()
    seg_choice.click()
    page.get_by_text("Probability threshold").wait_for()  # only shown for the segmentor
    page.get_by_role("button", name="Segment all images and write the report").click()
    _wait_done(page, "segment", 180_000)
    page.get_by_role("heading", name="Summary").wait_for(timeout=30_000)
    page.get_by_text("Particle sizes").first.wait_for()
    _shot(page, "7_results")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download everything (ZIP)").click()
    path = dl.value.path()
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        prov = json.loads(zf.read("provenance.json"))
        summary = json.loads(zf.read("summary.json"))
        n_rows = len(zf.read("particles.csv").decode().strip().splitlines()) - 1
    assert {"particles.csv", "summary.json", "psd.png", "provenance.json"} <= names
    assert sorted(n for n in names if n.startswith("masks/") and n.endswith(".png")) \
        == ["masks/31121ca5cf.png", "masks/Cu3.png"]
    assert prov["model"]["kind"] == "segmentor" and len(prov["inputs"]) == 2
    assert prov["model"]["checkpoint"].endswith("models/segmentor/best_miou")
    assert prov["model"]["config.json"]["config"]["training"]["base"] == 4
    assert n_rows >= 1 and summary["batch"]["count"] == n_rows
    TIMINGS["total"] = round(time.monotonic() - t_start, 1)
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2))
