"""Shared fixtures: bundled examples (always present) and ../shared/data (CI; skipped elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _shared_data_dir() -> Path:
    env = os.environ.get("EMCOPILOT_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """Bundled MIT-licensed micrographs: examples/emps (images + instance segmaps) and
    examples/catalysts (HAADF JPEGs + YOLO labels)."""
    return EXAMPLES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets in ../shared/data. Absent in a user's clone: the test is skipped."""
    d = _shared_data_dir()
    if not (d / "emps_test").is_dir():
        pytest.skip(f"shared data not found at {d} (set EMCOPILOT_SHARED_DATA to run this test)")
    return d


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    """Keep every test's projects, caches and weights out of the user's folders."""
    root = tmp_path_factory.mktemp("emcopilot_data")
    monkeypatch.setenv("EMCOPILOT_DATA", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(root / "hf_home"))
    monkeypatch.delenv("EMCOPILOT_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("EMCOPILOT_REDIS_URL", raising=False)


def with_data_bar(image: "np.ndarray", height: int = 40, level: int = 0) -> "np.ndarray":
    """``image`` (2-D uint8) with an instrument-style data bar appended below it: ``height``
    rows at grey ``level`` holding two lines of text and a scale bar in the opposite grey, as
    SEMs burn in. Its first row is ``image.shape[0]``."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape
    bar = Image.new("L", (w, height), level)
    draw, ink, font = ImageDraw.Draw(bar), 255 - level, ImageFont.load_default()
    draw.text((6, 4), "HV 15.00 kV   mag 50 000 x   WD 5.1 mm   det ETD   spot 3.0", fill=ink,
              font=font)
    draw.text((6, height // 2), "11/25/2026  10:42:17 AM   HFW 5.97 um", fill=ink, font=font)
    draw.line((w // 2 + 40, height // 2 + 6, w // 2 + 40 + w // 5, height // 2 + 6), fill=ink,
              width=2)
    draw.text((w // 2 + 50 + w // 5, height // 2), "500 nm", fill=ink, font=font)
    return np.concatenate([np.asarray(image, np.uint8), np.asarray(bar)])
