"""Project store: CRUD, owners, image upload validation (nothing kept on bad input), pixel
sizes (DM4 calibration and user override), masks, JSON helpers, job records."""

from __future__ import annotations

import io as _io
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emcopilot.errors import InputError
from emcopilot.store import SCHEMA_VERSION, ProjectStore, data_root


def _png_bytes(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = _io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tiff_bytes(h: int = 40, w: int = 50) -> bytes:
    import tifffile

    buf = _io.BytesIO()
    tifffile.imwrite(buf, np.arange(h * w, dtype=np.uint16).reshape(h, w))
    return buf.getvalue()


def _snapshot(store: ProjectStore, project) -> tuple:
    """Every file under the project folder and every image row: the project's whole state."""
    files = sorted(str(p.relative_to(project.path)) for p in project.path.rglob("*") if p.is_file())
    with sqlite3.connect(store.db_path) as con:
        rows = con.execute("SELECT * FROM images WHERE project_id = ? ORDER BY stem",
                           (project.id,)).fetchall()
    return files, rows


@pytest.fixture()
def store(tmp_path) -> ProjectStore:
    return ProjectStore(tmp_path / "data")


def test_data_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EMCOPILOT_DATA", str(tmp_path / "elsewhere"))
    assert data_root() == tmp_path / "elsewhere"
    s = ProjectStore()
    assert s.root == tmp_path / "elsewhere" and s.db_path.is_file()
    monkeypatch.delenv("EMCOPILOT_DATA")
    assert data_root() == Path.home() / "emcopilot-data"


def test_schema_is_versioned_and_wal(store):
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        cols = {r[1] for r in con.execute("PRAGMA table_info(jobs)")}
    assert {"id", "project_id", "kind", "params", "state", "progress", "message", "position",
            "created", "started", "finished", "error", "result", "cancel_requested"} <= cols
    ProjectStore(store.root)  # re-opening an existing store is fine
    with sqlite3.connect(store.db_path) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    from emcopilot.errors import EMCopilotError

    with pytest.raises(EMCopilotError, match="newer EMcopilot"):
        ProjectStore(store.root)


def test_project_crud_and_owner(store):
    a = store.create_project("PtSn on Al2O3", owner="alice")
    b = store.create_project("Au in ZSM-5")
    assert a.id.startswith("ptsn-on-al2o3-") and a.owner == "alice" and b.owner == "local"
    assert a.path == store.root / "projects" / a.id and a.path.is_dir()
    assert {p.id for p in store.list_projects()} == {a.id, b.id}
    assert [p.id for p in store.list_projects(owner="alice")] == [a.id]
    assert store.list_projects(owner="bob") == []

    renamed = store.rename_project(a.id, "PtSn batch 2")
    assert renamed.name == "PtSn batch 2" and renamed.id == a.id
    assert store.open_project(a.id).name == "PtSn batch 2"
    # a second store object on the same folder sees the same data (e.g. the worker process)
    assert ProjectStore(store.root).open_project(a.id).owner == "alice"

    a.add_image("x.png", _png_bytes())
    store.delete_project(a.id)
    assert not a.path.exists()
    with pytest.raises(InputError, match="no project"):
        store.open_project(a.id)
    assert [p.id for p in store.list_projects()] == [b.id]
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM images WHERE project_id = ?", (a.id,)).fetchone()[0] == 0

    for bad_id in ("", "../etc", "nope-12345678", a.id.upper()):
        with pytest.raises(InputError):
            store.open_project(bad_id)
    for bad_name in ("", "   ", "x" * 300, "a\x00b"):
        with pytest.raises(InputError):
            store.create_project(bad_name)


def test_delete_refused_while_a_job_is_active(store):
    p = store.create_project("busy")
    job = store.create_job(p.id, "test_steps", {"steps": 3})
    with pytest.raises(InputError, match="cancel"):
        store.delete_project(p.id)
    assert p.path.is_dir()
    store.update_job(job["id"], state="done")
    store.delete_project(p.id)
    assert store.list_jobs(project_id=p.id) == []


def test_folders_are_inside_the_project(store):
    p = store.create_project("paths")
    dirs = [p.images_dir, p.masks_dir("coarse"), p.masks_dir("edited"), p.priors_dir("source"),
            p.synthetic_masks_dir, p.synthetic_images_dir, p.augmented_dir,
            p.models_dir("generator"), p.models_dir("segmentor"), p.results_dir, p.job_dir("abc123")]
    assert len(set(dirs)) == len(dirs)
    for d in dirs:
        assert d.is_dir() and p.path in d.parents
    for bad in (lambda: p.masks_dir("other"), lambda: p.priors_dir("../x"),
                lambda: p.models_dir("a/b"), lambda: p.job_dir("../../x")):
        with pytest.raises(InputError):
            bad()


def test_add_image_records_metadata(store, examples_dir):
    p = store.create_project("emps")
    src = sorted((examples_dir / "emps" / "images").glob("*.png"))[0]
    rec = p.add_image(src.name, src.read_bytes())
    assert rec["stem"] == src.stem and rec["filename"] == src.name
    assert (rec["width"], rec["height"]) == (512, 512)
    assert rec["pixel_size_nm"] is None and rec["pixel_size_source"] is None
    assert rec["polarity"] == "auto"
    assert (p.images_dir / src.name).read_bytes() == src.read_bytes()
    assert [r["stem"] for r in p.images()] == [src.stem]
    m = p.read_image(src.stem)
    assert m.image.shape == (512, 512) and m.image.dtype == np.float32 and m.pixel_size_nm is None
    # no temporary upload file is left behind
    assert [f.name for f in p.images_dir.iterdir()] == [src.name]

    with pytest.raises(InputError, match="already"):
        p.add_image(src.name, src.read_bytes())
    other = _png_bytes(30, 20)
    rec2 = p.add_image(src.name, other, replace=True, pixel_size_nm=0.5, polarity="dark")
    assert (rec2["width"], rec2["height"], rec2["pixel_size_nm"], rec2["polarity"]) == (20, 30, 0.5, "dark")
    assert len(p.images()) == 1


@pytest.mark.parametrize("name,data,why", [
    ("empty.png", b"", "empty"),
    ("notes.png", b"this is a text file, not a PNG\n" * 20, None),
    ("cut.tif", None, None),  # truncated TIFF, made below
    ("../x.png", None, "'/'"),
    (".hidden.png", None, None),
    ("image.exe", None, "unsupported"),
])
def test_bad_uploads_leave_the_project_unchanged(store, name, data, why):
    p = store.create_project("bad inputs")
    p.add_image("good.png", _png_bytes())
    before = _snapshot(store, p)
    if data is None:
        data = _tiff_bytes()[:200] if name == "cut.tif" else _png_bytes()
    with pytest.raises(InputError) as ei:
        p.add_image(name, data)
    if why:
        assert why in str(ei.value)
    assert "\n" not in str(ei.value)
    assert ".upload-" not in str(ei.value)  # the message names the user's file, not our temp file
    assert _snapshot(store, p) == before
    assert not (p.path.parent / "x.png").exists()


def test_nan_image_rejected(store):
    import tifffile

    p = store.create_project("nan")
    buf = _io.BytesIO()
    tifffile.imwrite(buf, np.full((16, 16), np.nan, dtype=np.float32))
    before = _snapshot(store, p)
    with pytest.raises(InputError, match="finite"):
        p.add_image("allnan.tif", buf.getvalue())
    assert _snapshot(store, p) == before


def test_oversized_image_rejected(store, monkeypatch):
    p = store.create_project("huge")
    monkeypatch.setenv("EMCOPILOT_MAX_PIXELS", "1000")
    before = _snapshot(store, p)
    with pytest.raises(InputError, match="limit"):
        p.add_image("big.png", _png_bytes(48, 64))  # 3072 px > 1000
    assert _snapshot(store, p) == before


def test_bad_pixel_size_and_polarity(store):
    p = store.create_project("bad values")
    for px in (0, -1, float("nan"), float("inf"), "abc"):
        with pytest.raises(InputError, match="pixel size"):
            p.add_image("a.png", _png_bytes(), pixel_size_nm=px)
    with pytest.raises(InputError, match="polarity"):
        p.add_image("a.png", _png_bytes(), polarity="grey")
    assert p.images() == []
    p.add_image("a.png", _png_bytes())
    with pytest.raises(InputError):
        p.set_pixel_size("a", -2)
    with pytest.raises(InputError):
        p.set_polarity("a", "up")
    with pytest.raises(InputError, match="no image"):
        p.set_pixel_size("missing", 1.0)


def test_pixel_size_from_dm4_and_user_override(store, shared_data):
    dm4 = shared_data / "particlespy_haadf" / "JEOL HAADF Image.dm4"
    p = store.create_project("dm4")
    rec = p.add_image(dm4.name, dm4.read_bytes())
    assert rec["stem"] == "JEOL HAADF Image" and (rec["width"], rec["height"]) == (112, 112)
    assert rec["pixel_size_source"] == "metadata"
    assert rec["pixel_size_nm"] == pytest.approx(1.249, abs=1e-3)
    assert rec["dtype"] == "float32"

    p.set_pixel_size("JEOL HAADF Image", 0.8)
    rec = p.image("JEOL HAADF Image")
    assert (rec["pixel_size_nm"], rec["pixel_size_source"]) == (0.8, "user")
    assert p.read_image("JEOL HAADF Image").pixel_size_nm == 0.8
    p.set_pixel_size("JEOL HAADF Image", None)  # back to the file's calibration
    rec = p.image("JEOL HAADF Image")
    assert rec["pixel_size_source"] == "metadata" and rec["pixel_size_nm"] == pytest.approx(1.249, abs=1e-3)

    # a user value given at upload wins over the metadata
    p2 = store.create_project("dm4 user")
    rec = p2.add_image(dm4.name, dm4.read_bytes(), pixel_size_nm=2.5)
    assert (rec["pixel_size_nm"], rec["pixel_size_source"]) == (2.5, "user")


def test_set_pixel_size_and_polarity_for_all(store):
    p = store.create_project("all")
    p.add_image("a.png", _png_bytes(seed=1))
    p.add_image("b.png", _png_bytes(seed=2))
    p.set_pixel_size(None, 0.25)
    p.set_polarity(None, "bright")
    assert [(r["pixel_size_nm"], r["pixel_size_source"], r["polarity"]) for r in p.images()] == \
        [(0.25, "user", "bright")] * 2
    p.set_polarity("a", "dark")
    assert p.image("a")["polarity"] == "dark" and p.image("b")["polarity"] == "bright"


def test_masks_save_load_and_remove(store):
    p = store.create_project("masks")
    p.add_image("a.png", _png_bytes(48, 64))
    p.add_image("b.png", _png_bytes(48, 64, seed=3))
    coarse = np.zeros((48, 64), np.int32)
    coarse[5:15, 5:15] = 1
    coarse[20:30, 30:50] = 2
    path = p.save_mask("a", coarse)
    assert path == p.mask_path("a", "coarse") == p.masks_dir("coarse") / "a.png"
    np.testing.assert_array_equal(p.load_mask("a"), coarse)
    assert p.load_mask("b") is None
    assert p.masks("coarse") == {"a": path} and p.masks("edited") == {}

    edited = coarse.copy()
    edited[20:30, 30:50] = 0
    p.save_mask("a", edited, kind="edited")
    np.testing.assert_array_equal(p.load_mask("a"), edited)
    np.testing.assert_array_equal(p.load_mask("a", prefer_edited=False), coarse)
    assert p.masks(None) == {"a": p.mask_path("a", "edited")}

    with pytest.raises(InputError, match="64 x 48"):
        p.save_mask("b", np.zeros((10, 10), np.int32))
    with pytest.raises(InputError, match="no image"):
        p.save_mask("zzz", coarse)
    with pytest.raises(InputError, match="negative"):
        p.save_mask("b", coarse - 1)
    assert p.load_mask("b") is None

    p.remove_image("a")
    assert [r["stem"] for r in p.images()] == ["b"]
    assert not p.mask_path("a", "coarse").exists() and not p.mask_path("a", "edited").exists()
    assert not (p.images_dir / "a.png").exists()


def test_mask_save_is_atomic(store, monkeypatch):
    """A failure while the PNG is written leaves the old mask intact and no temp file."""
    p = store.create_project("atomic")
    p.add_image("a.png", _png_bytes(48, 64))
    old = np.zeros((48, 64), np.int32)
    old[1:5, 1:5] = 7
    p.save_mask("a", old)

    def broken_save(self, fp, *a, **k):
        Path(fp).write_bytes(b"\x89PNG half")  # a partial file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        p.save_mask("a", np.ones((48, 64), np.int32))
    monkeypatch.undo()
    np.testing.assert_array_equal(p.load_mask("a"), old)
    assert [f.name for f in p.masks_dir("coarse").iterdir()] == ["a.png"]


def test_json_helpers(store):
    p = store.create_project("json")
    path = p.write_json("results/summary.json", {"n": 3, "mean_nm": 2.5})
    assert path == p.results_dir / "summary.json"
    assert p.read_json("results/summary.json") == {"n": 3, "mean_nm": 2.5}
    assert p.read_json("results/none.json", default={}) == {}
    for bad in ("../escape.json", "/etc/x.json"):
        with pytest.raises(InputError):
            p.write_json(bad, {})
    (p.results_dir / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        p.read_json("results/broken.json")


def test_job_records(store):
    p = store.create_project("jobs")
    a = store.create_job(p.id, "mask", {"method": "classical"})
    b = store.create_job(p.id, "priors", {})
    assert a["state"] == "queued" and a["params"] == {"method": "classical"} and a["progress"] == 0
    assert b["position"] > a["position"]
    assert [j["id"] for j in store.list_jobs(p.id)] == [a["id"], b["id"]]
    assert store.queued_ahead(b["id"]) == 1 and store.queued_ahead(a["id"]) == 0

    j = store.update_job(a["id"], state="running", progress=1.7, result={"x": [1, 2]})
    assert j["state"] == "running" and j["progress"] == 1.0 and j["result"] == {"x": [1, 2]}
    assert store.queued_ahead(a["id"]) is None and store.queued_ahead(b["id"]) == 0
    assert [x["id"] for x in store.list_jobs(states=["running"])] == [a["id"]]
    assert not store.is_cancel_requested(a["id"])
    assert store.request_cancel(a["id"])["cancel_requested"] is True
    assert store.is_cancel_requested(a["id"])
    # compare-and-set only updates from the given states
    assert not store.update_job_if(b["id"], ("running",), state="done")
    assert store.update_job_if(b["id"], ("queued",), state="cancelled")
    assert store.get_job(b["id"])["state"] == "cancelled"

    with pytest.raises(InputError):
        store.get_job("nope")
    with pytest.raises(InputError):
        store.create_job(p.id, "mask", {"bad": object()})
    with pytest.raises(InputError):
        store.create_job("no-such-project", "mask", {})
    with pytest.raises(ValueError):
        store.update_job(a["id"], colour="red")


def test_concurrent_writers(store):
    """Threads each with their own connection: no 'database is locked', nothing lost."""
    p = store.create_project("threads")
    errors = []

    def worker(k):
        try:
            for i in range(15):
                store.create_job(p.id, "k", {"t": k, "i": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    jobs = store.list_jobs(p.id)
    assert len(jobs) == 60 and len({j["position"] for j in jobs}) == 60
