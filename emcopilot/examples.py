"""The bundled example micrographs (``examples/``, MIT licensed) copied into a project.

Used by the web app's "Load example data" button so that a new user can try every stage without
files of their own. The files go through ``Project.add_image`` like any upload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emcopilot.errors import InputError

#: Folder of the bundled examples (repository root / "examples").
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

#: Example sets: folder name -> default polarity of its micrographs.
EXAMPLE_SETS: dict[str, str] = {"emps": "auto", "catalysts": "auto"}


def example_images(sets: tuple[str, ...] | list[str] | None = None) -> list[Path]:
    """Paths of the bundled example images of ``sets`` (default: all sets), sorted by set/name."""
    names = list(EXAMPLE_SETS) if sets is None else list(sets)
    out: list[Path] = []
    for name in names:
        if name not in EXAMPLE_SETS:
            raise InputError(f"unknown example set {name!r}; use {', '.join(EXAMPLE_SETS)}")
        folder = EXAMPLES_DIR / name / "images"
        if folder.is_dir():
            out.extend(sorted(p for p in folder.iterdir()
                              if p.is_file() and not p.name.startswith(".")))
    return out


def load_examples(project: Any, sets: tuple[str, ...] | list[str] | None = None,
                  limit: int | None = None) -> list[str]:
    """Copy the bundled example micrographs into ``project`` (a ``store.Project``).

    Args:
        project: the project to add the images to (``project.add_image(filename, data)``).
        sets: example sets to copy ("emps", "catalysts"; default both).
        limit: at most this many images per set (None = all).

    Returns:
        The stems of the images added (images already in the project are skipped).

    Raises:
        InputError: the examples folder is missing (a broken checkout).
    """
    paths = example_images(sets)
    if not paths:
        raise InputError(f"no example images found in {EXAMPLES_DIR} (is the checkout complete?)")
    if limit is not None:
        per_set: dict[str, int] = {}
        kept = []
        for p in paths:
            key = p.parent.parent.name
            if per_set.get(key, 0) < limit:
                kept.append(p)
                per_set[key] = per_set.get(key, 0) + 1
        paths = kept
    existing = {str(rec.get("stem")) for rec in project.images()}
    added: list[str] = []
    for p in paths:
        if p.stem in existing:
            continue
        rec = project.add_image(p.name, p.read_bytes())
        added.append(str(rec.get("stem", p.stem)))
    return added
