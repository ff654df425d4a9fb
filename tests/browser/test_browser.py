"""A new lab member, in the browser: project -> example data -> coarse masks -> one brush
stroke saved -> quick segmentation with the coarse masker -> PSD chart -> ZIP download."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.browser.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _goto(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_role("heading", level=1).first.wait_for()


def _wait_done(page, what: str, timeout_ms: int) -> None:
    page.get_by_text(f"{what}: done", exact=False).first.wait_for(timeout=timeout_ms)
    assert page.get_by_text(f"{what} failed").count() == 0


def test_micrographs_to_psd_report(page, app_server):
    url, data = app_server
    page.goto(url)
    page.get_by_role("heading", name="Projects").wait_for(timeout=60_000)
    _shot(page, "1_projects_empty")

    page.get_by_label("New project name").fill("Browser test")
    page.get_by_role("button", name="Create project").click()
    page.get_by_text("Current project: Browser test").wait_for()
    page.get_by_role("button", name="Load example data").click()
    page.get_by_text("Added 10 example images").wait_for(timeout=60_000)
    _shot(page, "1_projects")

    _goto(page, "Upload")
    page.get_by_text("10 images").wait_for()
    page.get_by_text("31121ca5cf").first.wait_for()
    # Bad files: a text file named .png and an empty .tif -> one error line each, nothing added.
    page.locator("input[type=file]").set_input_files([
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"this is not an image\n"},
        {"name": "empty.tif", "mimeType": "image/tiff", "buffer": b""},
    ])
    page.get_by_role("button", name="Add to project").click()
    page.get_by_text("notes.png:").first.wait_for(timeout=30_000)
    page.get_by_text("empty.tif:").first.wait_for()
    page.get_by_text("10 images").wait_for()
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
    _goto(page, "Segmentor")
    # Launch a segmentor training on the project's own masks, then cancel it from the page.
    page.get_by_role("button", name="Train segmentor").click()
    page.get_by_role("button", name="Cancel").wait_for(timeout=30_000)
    _shot(page, "6_segmentor")
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("train segmentor: cancelled").wait_for(timeout=120_000)

    _goto(page, "Results")
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
    assert {"particles.csv", "summary.json", "psd.png", "provenance.json"} <= names
    assert sum(n.startswith("masks/") and n.endswith(".png") for n in names) == 10
    assert prov["model"]["kind"] == "coarse" and len(prov["inputs"]) == 10
