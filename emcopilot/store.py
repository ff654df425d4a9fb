"""The project store: every stage reads its inputs from a project and writes its outputs there.

Layout of the data folder (``data_root()``: ``$EMCOPILOT_DATA``, default ``~/emcopilot-data``)::

    <root>/emcopilot.sqlite          metadata (projects, images, job records), WAL mode
    <root>/jobs.sqlite               the embedded job queue (huey; see emcopilot.jobs)
    <root>/projects/<project id>/
        images/<stem><suffix>        uploaded micrographs, as uploaded (bytes unchanged)
        masks/coarse/<stem>.png      coarse label maps (16-bit PNG)
        masks/edited/<stem>.png      label maps corrected by hand
        priors/<kind>/               descriptors, contours, NND, g(r)   (kind "source", ...)
        synthetic/masks/ synthetic/images/
        augmented/
        models/<kind>/               "generator", "segmentor" checkpoints
        results/                     particle tables, PSD reports
        jobs/<job id>/               log.txt, checkpoints of one background job

``Project`` is the one place that knows these paths. Metadata lives in SQLite (one connection
per call, so a store can be shared by threads and processes); files are written atomically.

On a network share (NFS/SMB, several workers) set ``EMCOPILOT_SQLITE_WAL=0``: SQLite's WAL mode
needs shared memory that network file systems do not provide; the store then uses the rollback
journal instead.

>>> store = ProjectStore(tmp)                                  # doctest: +SKIP
>>> p = store.create_project("PtSn on Al2O3", owner="alice")    # doctest: +SKIP
>>> p.add_image("Pt4.dm4", open("Pt4.dm4", "rb").read())         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from emcopilot.atomic import atomic_write_text
from emcopilot.errors import EMCopilotError, InputError

__all__ = [
    "SCHEMA_VERSION",
    "JOB_STATES",
    "ACTIVE_JOB_STATES",
    "POLARITIES",
    "MASK_KINDS",
    "data_root",
    "ProjectStore",
    "Project",
]

#: Version of the SQLite schema (``PRAGMA user_version``).
SCHEMA_VERSION = 1
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_JOB_STATES = ("queued", "running")
POLARITIES = ("auto", "bright", "dark")
MASK_KINDS = ("coarse", "edited")

_DB_NAME = "emcopilot.sqlite"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}$")
_KIND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS images (
        project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        stem TEXT NOT NULL,
        filename TEXT NOT NULL,
        pixel_size_nm REAL,
        pixel_size_source TEXT CHECK (pixel_size_source IN ('metadata', 'user')),
        polarity TEXT NOT NULL DEFAULT 'auto' CHECK (polarity IN ('auto', 'bright', 'dark')),
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        dtype TEXT,
        n_frames INTEGER NOT NULL DEFAULT 1,
        added REAL NOT NULL,
        PRIMARY KEY (project_id, stem))""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        progress REAL NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        position INTEGER NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        error TEXT,
        result TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        task_id TEXT,
        worker TEXT,
        attempts INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS jobs_state_position ON jobs (state, position)",
    "CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project_id, position)",
]

#: Job columns that ``update_job`` may set.
_JOB_FIELDS = ("state", "progress", "message", "position", "started", "finished", "error",
               "result", "cancel_requested", "task_id", "worker", "attempts", "params")


def data_root() -> Path:
    """The data folder: ``$EMCOPILOT_DATA`` or ``~/emcopilot-data`` (not created here)."""
    env = os.environ.get("EMCOPILOT_DATA", "").strip()
    return Path(env).expanduser() if env else Path.home() / "emcopilot-data"


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s[:40].strip("-") or "project"


def _check_name(name: Any, what: str = "project name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what} is empty")
    name = name.strip()
    if len(name) > 200:
        raise InputError(f"{what} is longer than 200 characters")
    if re.search(r"[\x00-\x1f\x7f]", name):
        raise InputError(f"{what} {name!r} contains control characters")
    return name


def _check_kind(kind: Any, what: str) -> str:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise InputError(f"{what} {kind!r} must be letters, digits, '-' or '_'")
    return kind


def _check_pixel_size(nm: Any) -> float:
    try:
        v = float(nm)
    except (TypeError, ValueError):
        raise InputError(f"pixel size must be a number of nm, got {nm!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"pixel size must be a positive number of nm, got {nm!r}")
    return v


def _check_polarity(polarity: Any) -> str:
    if polarity not in POLARITIES:
        raise InputError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    return polarity


def _json_dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be JSON-serialisable ({exc})") from None


class ProjectStore:
    """Projects on disk plus SQLite metadata under ``root`` (default ``data_root()``).

    Safe to share between threads: every call opens its own connection (WAL mode, 30 s busy
    timeout). Timestamps are Unix epoch seconds (float, UTC).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root else data_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.projects_root.mkdir(exist_ok=True)
        except OSError as exc:
            raise EMCopilotError(f"cannot create the data folder {self.root} ({exc.strerror}); "
                                 "set EMCOPILOT_DATA to a writable folder") from None
        self.db_path = self.root / _DB_NAME
        self._init_db()

    def __repr__(self) -> str:
        return f"ProjectStore({str(self.root)!r})"

    @property
    def projects_root(self) -> Path:
        return self.root / "projects"

    # ------------------------------------------------------------------ sqlite
    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A new connection in one transaction (committed on success, rolled back on error)."""
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA busy_timeout = 30000")
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            else:
                con.execute("COMMIT")
        finally:
            con.close()

    def _init_db(self) -> None:
        wal = os.environ.get("EMCOPILOT_SQLITE_WAL", "1").strip().lower() not in ("0", "no", "false")
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            con.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
            con.execute("PRAGMA busy_timeout = 30000")
            con.execute("BEGIN IMMEDIATE")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                con.execute("ROLLBACK")
                raise EMCopilotError(
                    f"{self.db_path} was written by a newer EMcopilot (schema {version} > "
                    f"{SCHEMA_VERSION}); upgrade EMcopilot")
            for stmt in _SCHEMA:
                con.execute(stmt)
            # Future migrations: `if version < 2: ALTER TABLE ...` here.
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise EMCopilotError(f"{self.db_path}: cannot open the metadata database ({exc})") from None
        finally:
            con.close()

    # ------------------------------------------------------------------ projects
    def _project_from_row(self, row: sqlite3.Row) -> "Project":
        return Project(id=row["id"], name=row["name"], owner=row["owner"],
                       path=self.projects_root / row["id"], created=row["created"],
                       updated=row["updated"], store=self)

    def create_project(self, name: str, owner: str = "local") -> "Project":
        """Create an empty project (folder + record). ``owner`` is the user id that owns it."""
        name = _check_name(name)
        owner = _check_name(owner, "owner")
        pid = f"{_slug(name)}-{uuid.uuid4().hex[:8]}"
        path = self.projects_root / pid
        path.mkdir(parents=True)
        now = time.time()
        try:
            with self.connect() as con:
                con.execute("INSERT INTO projects (id, name, owner, created, updated) "
                            "VALUES (?, ?, ?, ?, ?)", (pid, name, owner, now, now))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return self.open_project(pid)

    def list_projects(self, owner: str | None = None) -> list["Project"]:
        """Projects, most recently updated first; only ``owner``'s when given."""
        with self.connect() as con:
            if owner is None:
                rows = con.execute("SELECT * FROM projects ORDER BY updated DESC").fetchall()
            else:
                rows = con.execute("SELECT * FROM projects WHERE owner = ? ORDER BY updated DESC",
                                   (owner,)).fetchall()
        return [self._project_from_row(r) for r in rows]

    def open_project(self, project_id: str) -> "Project":
        """The project with this id; InputError if there is none."""
        if not isinstance(project_id, str) or not _ID_RE.match(project_id):
            raise InputError(f"no project with id {project_id!r}")
        with self.connect() as con:
            row = con.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
        if row is None:
            raise InputError(f"no project with id {project_id!r} in {self.root} "
                             "(list them with `emcopilot project list`)")
        return self._project_from_row(row)

    def rename_project(self, project_id: str, name: str) -> "Project":
        """Change a project's display name (its id and folder stay)."""
        name = _check_name(name)
        self.open_project(project_id)
        with self.connect() as con:
            con.execute("UPDATE projects SET name = ?, updated = ? WHERE id = ?",
                        (name, time.time(), project_id))
        return self.open_project(project_id)

    def delete_project(self, project_id: str) -> None:
        """Delete a project: its records, its job records and its folder.

        InputError while one of its jobs is queued or running (cancel it first)."""
        project = self.open_project(project_id)
        with self.connect() as con:
            active = con.execute(
                "SELECT COUNT(*) FROM jobs WHERE project_id = ? AND state IN ('queued', 'running')",
                (project_id,)).fetchone()[0]
            if active:
                raise InputError(f"project {project_id!r} has {active} queued or running job(s); "
                                 "cancel them first")
            trash = self.projects_root / f".deleting-{project_id}-{uuid.uuid4().hex[:6]}"
            moved = False
            try:
                con.execute("DELETE FROM images WHERE project_id = ?", (project_id,))
                con.execute("DELETE FROM jobs WHERE project_id = ?", (project_id,))
                con.execute("DELETE FROM projects WHERE id = ?", (project_id,))
                if project.path.exists():
                    os.replace(project.path, trash)  # one atomic step: the folder is gone
                    moved = True
            except BaseException:
                if moved:
                    os.replace(trash, project.path)
                raise
        shutil.rmtree(trash, ignore_errors=True)

    def touch(self, project_id: str) -> None:
        with self.connect() as con:
            con.execute("UPDATE projects SET updated = ? WHERE id = ?", (time.time(), project_id))

    # ------------------------------------------------------------------ jobs
    @staticmethod
    def _job_from_row(row: sqlite3.Row) -> dict:
        job = dict(row)
        job["params"] = json.loads(job["params"]) if job["params"] else {}
        job["result"] = json.loads(job["result"]) if job["result"] else None
        job["cancel_requested"] = bool(job["cancel_requested"])
        return job

    def create_job(self, project_id: str, kind: str, params: dict | None = None) -> dict:
        """A new job record in state ``queued`` (this does not enqueue it: see jobs.submit).

        ``position`` is a sequence number: queued jobs run in increasing position."""
        self.open_project(project_id)
        kind = _check_kind(kind, "job kind")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InputError(f"job parameters must be a dict, got {type(params).__name__}")
        text = _json_dumps(params, "job parameters")
        jid = uuid.uuid4().hex[:16]
        with self.connect() as con:
            pos = con.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM jobs").fetchone()[0]
            con.execute("INSERT INTO jobs (id, project_id, kind, params, state, progress, message, "
                        "position, created) VALUES (?, ?, ?, ?, 'queued', 0, 'waiting', ?, ?)",
                        (jid, project_id, kind, text, pos, time.time()))
        return self.get_job(jid)

    def _job_sets(self, fields: dict) -> tuple[str, list]:
        bad = set(fields) - set(_JOB_FIELDS)
        if bad:
            raise ValueError(f"unknown job field(s): {', '.join(sorted(bad))}")
        if "state" in fields and fields["state"] not in JOB_STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        values = []
        for k, v in fields.items():
            if k in ("result", "params"):
                v = None if v is None else json.dumps(v, default=str, sort_keys=True)
            elif k == "cancel_requested":
                v = int(bool(v))
            elif k == "progress":
                v = float(min(max(float(v), 0.0), 1.0))
            values.append(v)
        return ", ".join(f"{k} = ?" for k in fields), values

    def update_job(self, job_id: str, **fields: Any) -> dict:
        """Set fields of a job record; returns the updated record. ``result``/``params`` are
        stored as JSON; ``progress`` is clipped to [0, 1]."""
        if not self.update_job_if(job_id, None, **fields):
            self.get_job(job_id)  # InputError for an unknown id
        return self.get_job(job_id)

    def update_job_if(self, job_id: str, states: Iterable[str] | None, **fields: Any) -> bool:
        """Compare-and-set: update only while the job's state is one of ``states`` (any state
        when None). True when the row was updated. Used to claim and cancel jobs race-free."""
        if not fields:
            return True
        sets, values = self._job_sets(fields)
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        values.append(job_id)
        if states is not None:
            states = tuple(states)
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            values.extend(states)
        with self.connect() as con:
            n = con.execute(sql, values).rowcount
        return n > 0

    def get_job(self, job_id: str) -> dict:
        """The job record as a dict (params/result decoded); InputError if unknown."""
        with self.connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise InputError(f"no job with id {job_id!r}")
        return self._job_from_row(row)

    def list_jobs(self, project_id: str | None = None,
                  states: Iterable[str] | None = None) -> list[dict]:
        """Job records in submission order (oldest first), filtered by project and states."""
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", []
        if project_id is not None:
            sql += " AND project_id = ?"
            args.append(project_id)
        if states is not None:
            states = [states] if isinstance(states, str) else list(states)
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args.extend(states)
        with self.connect() as con:
            rows = con.execute(sql + " ORDER BY position", args).fetchall()
        return [self._job_from_row(r) for r in rows]

    def queued_ahead(self, job_id: str) -> int | None:
        """Number of queued jobs submitted before this one, or None when it is not queued."""
        with self.connect() as con:
            row = con.execute("SELECT state, position FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise InputError(f"no job with id {job_id!r}")
            if row["state"] != "queued":
                return None
            return con.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND position < ?",
                               (row["position"],)).fetchone()[0]

    def next_position(self) -> int:
        with self.connect() as con:
            return con.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM jobs").fetchone()[0]

    def request_cancel(self, job_id: str) -> dict:
        """Flag a job for cancellation (a running job's function sees ``should_stop()``)."""
        self.get_job(job_id)
        self.update_job_if(job_id, None, cancel_requested=True)
        return self.get_job(job_id)

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.connect() as con:
            row = con.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])


@dataclasses.dataclass
class Project:
    """One project: id (slug-uuid, also the folder name), display name, owner, folder.

    Every folder getter creates its folder. Image records are dicts with the columns of the
    ``images`` table (pixel_size_nm in nm, or None)."""

    id: str
    name: str
    owner: str
    path: Path
    created: float = 0.0
    updated: float = 0.0
    store: ProjectStore | None = dataclasses.field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ paths
    def _dir(self, *parts: str) -> Path:
        d = self.path.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def images_dir(self) -> Path:
        return self._dir("images")

    def masks_dir(self, kind: str = "coarse") -> Path:
        """``masks/coarse`` (from a masker) or ``masks/edited`` (corrected by hand)."""
        if kind not in MASK_KINDS:
            raise InputError(f"mask kind must be 'coarse' or 'edited', got {kind!r}")
        return self._dir("masks", kind)

    def priors_dir(self, kind: str = "source") -> Path:
        return self._dir("priors", _check_kind(kind, "priors kind"))

    @property
    def synthetic_masks_dir(self) -> Path:
        return self._dir("synthetic", "masks")

    @property
    def synthetic_images_dir(self) -> Path:
        return self._dir("synthetic", "images")

    @property
    def augmented_dir(self) -> Path:
        return self._dir("augmented")

    def models_dir(self, kind: str = "segmentor") -> Path:
        """``models/generator`` or ``models/segmentor`` (or another model kind)."""
        return self._dir("models", _check_kind(kind, "model kind"))

    @property
    def results_dir(self) -> Path:
        return self._dir("results")

    def job_dir(self, job_id: str) -> Path:
        return self._dir("jobs", _check_kind(job_id, "job id"))

    def _store(self) -> ProjectStore:
        if self.store is None:
            raise EMCopilotError("this Project is not attached to a ProjectStore")
        return self.store

    # ------------------------------------------------------------------ images
    def add_image(self, filename: str, data: bytes, *, pixel_size_nm: float | None = None,
                  polarity: str = "auto", replace: bool = False) -> dict:
        """Validate and store an uploaded micrograph; returns its record.

        The bytes are written to a temporary file and read with ``io.read_micrograph`` first:
        an unreadable, empty, fake, oversized or all-NaN file raises InputError and leaves the
        project exactly as it was. ``pixel_size_nm`` (nm) overrides the file's calibration.
        A second image with the same stem is an InputError unless ``replace=True`` (which also
        drops the old image's masks, since they may no longer match).
        """
        from emcopilot import io as emio

        store = self._store()
        if not isinstance(filename, str):
            raise InputError("file name must be a string")
        stem = emio.safe_stem(filename)
        suffix = Path(filename).suffix.lower()
        if suffix not in emio.SUPPORTED_SUFFIXES:
            raise InputError(f"{filename}: unsupported file type {suffix or '(none)'!r}; use one of "
                             f"{', '.join(emio.SUPPORTED_SUFFIXES)}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"{filename}: image data must be bytes")
        if len(data) == 0:
            raise InputError(f"{filename}: file is empty (0 bytes)")
        user_px = None if pixel_size_nm is None else _check_pixel_size(pixel_size_nm)
        _check_polarity(polarity)
        old = self._image_row(stem)
        if old is not None and not replace:
            raise InputError(f"{filename}: an image named {stem!r} is already in the project "
                             "(remove it first or replace it)")

        images = self.images_dir
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=images)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                m = emio.read_micrograph(tmp)
            except InputError as exc:
                raise InputError(str(exc).replace(tmp.name, filename)) from None
            except Exception as exc:  # a reader bug must not let a bad file in
                raise InputError(f"{filename}: cannot read the image ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
            img = np.asarray(m.image)
            if img.ndim != 2 or img.size == 0 or not np.isfinite(img).all():
                raise InputError(f"{filename}: not a usable 2-D image")
            meta_px = m.pixel_size_nm
            if meta_px is not None and not (math.isfinite(meta_px) and meta_px > 0):
                meta_px = None
            px, source = ((user_px, "user") if user_px is not None
                          else (meta_px, "metadata") if meta_px is not None else (None, None))
            height, width = int(img.shape[0]), int(img.shape[1])
            dtype = str(m.metadata.get("dtype", img.dtype)) if isinstance(m.metadata, dict) else str(img.dtype)
            target = images / f"{stem}{suffix}"
            now = time.time()
            with store.connect() as con:
                con.execute("DELETE FROM images WHERE project_id = ? AND stem = ?", (self.id, stem))
                con.execute(
                    "INSERT INTO images (project_id, stem, filename, pixel_size_nm, "
                    "pixel_size_source, polarity, width, height, dtype, n_frames, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.id, stem, target.name, px, source, polarity, width, height, dtype,
                     int(m.n_frames), now))
                con.execute("UPDATE projects SET updated = ? WHERE id = ?", (now, self.id))
                os.replace(tmp, target)  # last step inside the transaction
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if old is not None:
            if old["filename"] != target.name:
                with contextlib.suppress(FileNotFoundError):
                    (images / old["filename"]).unlink()
            for kind in MASK_KINDS:
                with contextlib.suppress(FileNotFoundError):
                    self.mask_path(stem, kind).unlink()
        return self.image(stem)

    def _image_row(self, stem: str) -> dict | None:
        with self._store().connect() as con:
            row = con.execute("SELECT * FROM images WHERE project_id = ? AND stem = ?",
                              (self.id, stem)).fetchone()
        return None if row is None else self._image_dict(row)

    def _image_dict(self, row: sqlite3.Row) -> dict:
        d = dict(row)
        d["path"] = self.path / "images" / d["filename"]
        return d

    def images(self) -> list[dict]:
        """Image records sorted by stem; each has ``path`` (the stored file) added."""
        with self._store().connect() as con:
            rows = con.execute("SELECT * FROM images WHERE project_id = ? ORDER BY stem",
                               (self.id,)).fetchall()
        return [self._image_dict(r) for r in rows]

    def image(self, stem: str) -> dict:
        """The record of one image; InputError if there is none."""
        row = self._image_row(stem) if isinstance(stem, str) else None
        if row is None:
            raise InputError(f"no image {stem!r} in project {self.name!r}")
        return row

    def read_image(self, stem: str, frame: int = 0):
        """The image as an ``io.Micrograph``, with the pixel size of its record (nm or None)."""
        from emcopilot import io as emio

        rec = self.image(stem)
        m = emio.read_micrograph(rec["path"], frame=frame)
        return dataclasses.replace(m, pixel_size_nm=rec["pixel_size_nm"], name=stem)

    def _stems(self, stem: str | None) -> list[str]:
        return [r["stem"] for r in self.images()] if stem is None else [self.image(stem)["stem"]]

    def set_pixel_size(self, stem: str | None, nm: float | None) -> None:
        """Set the pixel size (nm) of one image, or of every image when ``stem`` is None.

        ``nm=None`` returns to the file's own calibration (or unknown)."""
        from emcopilot import io as emio

        stems = self._stems(stem)
        updates = []
        if nm is not None:
            v = _check_pixel_size(nm)
            updates = [(v, "user", s) for s in stems]
        else:
            for s in stems:
                meta = emio.read_micrograph(self.image(s)["path"]).pixel_size_nm
                updates.append((meta, "metadata" if meta else None, s))
        with self._store().connect() as con:
            con.executemany("UPDATE images SET pixel_size_nm = ?, pixel_size_source = ? "
                            "WHERE project_id = ? AND stem = ?",
                            [(px, src, self.id, s) for px, src, s in updates])
            con.execute("UPDATE projects SET updated = ? WHERE id = ?", (time.time(), self.id))

    def set_polarity(self, stem: str | None, polarity: str) -> None:
        """Set 'auto', 'bright' or 'dark' for one image, or every image when ``stem`` is None."""
        _check_polarity(polarity)
        stems = self._stems(stem)
        with self._store().connect() as con:
            con.executemany("UPDATE images SET polarity = ? WHERE project_id = ? AND stem = ?",
                            [(polarity, self.id, s) for s in stems])

    def remove_image(self, stem: str) -> None:
        """Delete an image, its record and its masks."""
        rec = self.image(stem)
        with self._store().connect() as con:
            con.execute("DELETE FROM images WHERE project_id = ? AND stem = ?", (self.id, stem))
            con.execute("UPDATE projects SET updated = ? WHERE id = ?", (time.time(), self.id))
        with contextlib.suppress(FileNotFoundError):
            rec["path"].unlink()
        for kind in MASK_KINDS:
            with contextlib.suppress(FileNotFoundError):
                self.mask_path(stem, kind).unlink()

    # ------------------------------------------------------------------ masks
    def mask_path(self, stem: str, kind: str = "coarse") -> Path:
        """Where the label map of ``stem`` is (or would be) stored: masks/<kind>/<stem>.png."""
        from emcopilot import io as emio

        if emio.safe_stem(stem + ".png") != stem:
            raise InputError(f"bad image name {stem!r}")
        return self.masks_dir(kind) / f"{stem}.png"

    def save_mask(self, stem: str, labels: np.ndarray, kind: str = "coarse") -> Path:
        """Store a label map (int, 0 = background) for an image of this project, atomically.

        InputError if the image is unknown or the shape differs from the image's (H, W)."""
        from emcopilot import io as emio

        rec = self.image(stem)
        a = np.asarray(labels)
        if a.shape != (rec["height"], rec["width"]):
            raise InputError(f"mask for {stem!r} is {a.shape[::-1] if a.ndim == 2 else a.shape} "
                             f"but the image is {rec['width']} x {rec['height']} pixels")
        path = emio.write_label_map(self.mask_path(stem, kind), a)
        self._store().touch(self.id)
        return path

    def load_mask(self, stem: str, prefer_edited: bool = True) -> np.ndarray | None:
        """The label map (int32) of an image: the edited one if there is one, else the coarse
        one (``prefer_edited=False``: coarse first, then edited); None when neither exists."""
        from emcopilot import io as emio

        order = ("edited", "coarse") if prefer_edited else ("coarse", "edited")
        for kind in order:
            p = self.mask_path(stem, kind)
            if p.is_file():
                return emio.read_label_map(p)
        return None

    def masks(self, kind: str | None = "coarse") -> dict[str, Path]:
        """stem -> mask path for the project's images that have a ``kind`` mask. ``kind=None``:
        the best mask of each image (edited over coarse)."""
        out: dict[str, Path] = {}
        for rec in self.images():
            kinds = ("edited", "coarse") if kind is None else (kind,)
            for k in kinds:
                p = self.mask_path(rec["stem"], k)
                if p.is_file():
                    out[rec["stem"]] = p
                    break
        return out

    # ------------------------------------------------------------------ json helpers
    def _inside(self, relpath: str | os.PathLike) -> Path:
        rel = Path(relpath)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise InputError(f"path {str(relpath)!r} must be relative to the project folder")
        return self.path / rel

    def write_json(self, relpath: str | os.PathLike, obj: Any) -> Path:
        """Write ``obj`` as JSON to ``<project>/<relpath>`` atomically; returns the path."""
        p = self._inside(relpath)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps(obj, indent=2, default=str, sort_keys=True))
        return p

    def read_json(self, relpath: str | os.PathLike, default: Any = None) -> Any:
        """Read ``<project>/<relpath>``; ``default`` when missing. InputError when corrupt."""
        p = self._inside(relpath)
        if not p.is_file():
            return default
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{p}: not valid JSON ({exc})") from None
