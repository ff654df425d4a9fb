"""Shared widgets of the pages: project picker, error display, job panel, image helpers.

Everything here only calls the library (emcopilot.store, emcopilot.jobs); pages stay thin.
Job state always comes from the store, so it survives page reloads.
"""

from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from emcopilot.errors import EMCopilotError

ACTIVE = ("queued", "running")
STATUS_ICON = {"queued": ":material/schedule:", "running": ":material/sync:",
               "done": ":material/check_circle:", "failed": ":material/error:",
               "cancelled": ":material/cancel:"}


def get_store():
    """The project store of this data folder (EMCOPILOT_DATA); cheap to make."""
    from emcopilot.store import ProjectStore

    return ProjectStore()


def project_picker() -> None:
    """Sidebar select box of the projects; the choice lives in st.session_state.project_id."""
    try:
        store = get_store()
        projects = store.list_projects()
    except EMCopilotError as exc:
        st.sidebar.error(str(exc))
        return
    ids = [p.id for p in projects]
    names = {p.id: p.name for p in projects}
    current = st.session_state.get("project_id")
    if current not in ids:
        current = ids[0] if ids else None
        st.session_state["project_id"] = current
    st.sidebar.markdown("**Project**")
    if not ids:
        st.sidebar.caption("No project yet: create one on the Projects page.")
        return
    choice = st.sidebar.selectbox("Current project", ids, index=ids.index(current),
                                  format_func=lambda i: names.get(i, i),
                                  label_visibility="collapsed")
    st.session_state["project_id"] = choice


def current_project(store=None):
    """The project picked in the sidebar, or None (after a hint to create one)."""
    store = store or get_store()
    pid = st.session_state.get("project_id")
    if pid is None:
        projects = store.list_projects()
        if projects:
            pid = projects[0].id
            st.session_state["project_id"] = pid
    if pid is None:
        st.info("No project yet: create one on the **Projects** page.")
        return None
    try:
        return store.open_project(pid)
    except EMCopilotError as exc:
        st.session_state["project_id"] = None
        st.error(str(exc))
        return None


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a library call; a library error becomes one st.error line (None returned)."""
    try:
        return fn(*args, **kwargs)
    except EMCopilotError as exc:
        st.error(str(exc))
    except (OSError, ValueError) as exc:
        st.error(f"{type(exc).__name__}: {exc}")
    return None


def submit_job(store, project, kind: str, params: dict) -> str | None:
    """Queue a job; returns its id (or None after showing the error)."""
    from emcopilot import jobs

    job_id = guarded(jobs.submit, store, project.id, kind, params)
    if job_id is not None:
        st.toast(f"{kind.replace('_', ' ')} queued")
    return job_id


def _jobs_of(store, project, kind: str) -> list[dict]:
    """The project's jobs of one kind, oldest first (store order)."""
    return [_as_dict(r) for r in store.list_jobs(project_id=project.id)
            if _get(r, "kind") == kind]


def _as_dict(rec: Any) -> dict:
    if isinstance(rec, dict):
        return rec
    if hasattr(rec, "__dict__"):
        return dict(vars(rec))
    return dict(rec)


def _get(rec: Any, key: str, default: Any = None) -> Any:
    return rec.get(key, default) if isinstance(rec, dict) else getattr(rec, key, default)


def latest_job(store, project, kind: str) -> dict | None:
    """The newest job of this kind in the project (from the store), or None."""
    recs = _jobs_of(store, project, kind)
    if not recs:
        return None
    return max(recs, key=lambda r: (r.get("position") or 0, r.get("created") or 0))


def _status_line(store, job: dict) -> None:
    from emcopilot import jobs

    status = job.get("state", "queued")
    icon = STATUS_ICON.get(status, "")
    kind = str(job.get("kind", "job")).replace("_", " ")
    if status == "queued":
        pos = None
        try:
            pos = jobs.queue_position(job["id"], store)
        except Exception:  # noqa: BLE001 - the position is a nicety
            pos = None
        where = f" (position {pos} in the queue)" if pos else ""
        st.info(f"{kind}: queued{where}. A worker picks it up when free.", icon=icon)
    elif status == "running":
        frac = float(job.get("progress") or 0.0)
        st.progress(min(1.0, max(0.0, frac)),
                    text=f"{kind}: {job.get('message') or 'running'} ({frac:.0%})")
    elif status == "done":
        msg = job.get("message") or ""
        st.success(f"{kind}: done" + (f". {msg}" if msg and msg != "done" else ""), icon=icon)
        if job.get("result"):
            with st.popover("Details"):
                st.json(job["result"])
    elif status == "failed":
        st.error(f"{kind} failed: {job.get('error') or job.get('message') or 'unknown error'}",
                 icon=icon)
    elif status == "cancelled":
        st.warning(f"{kind}: cancelled (resume continues from the last checkpoint where "
                   "the job keeps one)", icon=icon)
    else:
        st.write(f"{kind}: {status}")


def job_panel(store, project, kind: str, *, resumable: bool = False,
              refresh_s: float = 2.0) -> dict | None:
    """Status of the newest ``kind`` job with cancel (and resume) buttons; refreshes itself
    every ``refresh_s`` seconds while the job is queued or running. Returns the job record."""
    job = latest_job(store, project, kind)
    if job is None:
        return None

    @st.fragment(run_every=refresh_s if job.get("state") in ACTIVE else None)
    def _panel() -> None:
        from emcopilot import jobs

        rec = _as_dict(store.get_job(job["id"]))
        _status_line(store, rec)
        cols = st.columns(4)
        if rec.get("state") in ACTIVE:
            if cols[0].button("Cancel", key=f"cancel_{kind}", icon=":material/stop:"):
                guarded(jobs.cancel, rec["id"], store)
                st.rerun()
        elif resumable and rec.get("state") in ("cancelled", "failed"):
            if cols[0].button("Resume", key=f"resume_{kind}", icon=":material/play_arrow:"):
                guarded(jobs.resume, rec["id"], store)
                st.rerun()
        if rec.get("state") not in ACTIVE and job.get("state") in ACTIVE:
            st.rerun(scope="app")  # finished while we watched: redraw the page with the results

    _panel()
    return job


def gray_png(image01: np.ndarray) -> bytes:
    from PIL import Image

    from emcopilot.io import to_uint8

    buf = _io.BytesIO()
    Image.fromarray(to_uint8(image01)).save(buf, format="PNG")
    return buf.getvalue()


def outline_rgb(image01: np.ndarray, labels: np.ndarray | None,
                colour: tuple[int, int, int] = (255, 80, 0)) -> np.ndarray:
    """RGB uint8 image with particle outlines drawn in ``colour``."""
    from skimage.segmentation import find_boundaries

    from emcopilot.io import to_uint8

    g = to_uint8(image01)
    rgb = np.stack([g, g, g], axis=-1)
    if labels is not None and labels.shape == g.shape and labels.max() > 0:
        rgb[find_boundaries(labels, mode="inner")] = colour
    return rgb


@st.cache_data(max_entries=512, show_spinner=False)
def _thumb(path: str, mtime: float, size: int) -> bytes:
    from PIL import Image

    from emcopilot.io import normalize, read_micrograph, to_uint8

    im = Image.fromarray(to_uint8(normalize(read_micrograph(path).image)))
    im.thumbnail((size, size))
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(rec: dict, size: int = 256) -> bytes | None:
    """A small PNG of an image record (cached by file path and modification time)."""
    p = Path(rec["path"])
    try:
        return _thumb(str(p), p.stat().st_mtime, size)
    except (EMCopilotError, OSError) as exc:
        st.error(f"{rec.get('stem')}: {exc}")
        return None


@st.cache_data(max_entries=512, show_spinner=False)
def _image_facts(path: str, mtime: float) -> dict:
    """The polarity "auto" resolves to and the first row of an instrument data bar (None: no
    bar), found as masking and segmenting find them."""
    from emcopilot.data_bar import find_data_bar
    from emcopilot.io import normalize, read_micrograph
    from emcopilot.polarity import describe_polarity

    image01 = normalize(read_micrograph(path).image)
    top = find_data_bar(image01)
    return {"polarity": describe_polarity(image01), "data_bar_row": top}


def _facts(rec: dict) -> dict | None:
    p = Path(rec["path"])
    try:
        return _image_facts(str(p), p.stat().st_mtime)
    except (EMCopilotError, OSError):
        return None  # thumbnail() has already said why


def detected_polarity(rec: dict) -> dict | None:
    """What "auto" polarity resolves to for an image record (``polarity.describe_polarity``,
    cached by file path and modification time); None when the file cannot be read."""
    facts = _facts(rec)
    return None if facts is None else facts["polarity"]


def data_bar_row(rec: dict) -> int | None:
    """The first row of the image's instrument data bar (``data_bar.find_data_bar``), or None
    (no bar, or the file cannot be read)."""
    facts = _facts(rec)
    return None if facts is None else facts["data_bar_row"]


def magma(image01: np.ndarray) -> np.ndarray:
    """The image in the magma colormap (RGB uint8), for synthetic micrographs."""
    from matplotlib import colormaps

    return (colormaps["magma"](np.clip(image01, 0, 1))[..., :3] * 255).astype(np.uint8)


def read_png01(path: Path) -> np.ndarray:
    from emcopilot.io import normalize, read_micrograph

    return normalize(read_micrograph(path).image)


def log_frame(path: Path):
    """log.jsonl of a training run as a DataFrame (empty when missing)."""
    import json

    import pandas as pd

    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return pd.DataFrame(rows)


def curves(df, columns: list[str], title: str) -> None:
    """Altair line chart of ``columns`` against epoch (those present)."""
    import altair as alt

    cols = [c for c in columns if c in df.columns]
    if df.empty or not cols or "epoch" not in df.columns:
        st.caption(f"{title}: no epochs logged yet.")
        return
    long = df[["epoch", *cols]].melt("epoch", var_name="metric", value_name="value").dropna()
    chart = (alt.Chart(long, title=title).mark_line(point=True)
             .encode(x="epoch:Q", y="value:Q", color="metric:N",
                     tooltip=["epoch", "metric", alt.Tooltip("value:Q", format=".4f")]))
    st.altair_chart(chart, width="stretch")


def training_curves(log_path: Path, job: dict | None, left: tuple[list[str], str],
                    right: tuple[list[str], str]) -> None:
    """Two charts side by side, each ``(columns, title)``, of a training run's log.jsonl; redrawn
    every 5 s while ``job`` is queued or running."""

    @st.fragment(run_every=5 if job and job.get("state") in ACTIVE else None)
    def _draw() -> None:
        df = log_frame(log_path)
        if df.empty:
            return
        c1, c2 = st.columns(2)
        with c1:
            curves(df, *left)
        with c2:
            curves(df, *right)

    _draw()
