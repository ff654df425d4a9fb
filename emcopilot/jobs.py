"""Background jobs: a huey queue, job records in the project store, progress and cancel.

One machine: the queue is a SQLite file, ``<data root>/jobs.sqlite`` (``SqliteHuey``). Several
machines: set ``EMCOPILOT_REDIS_URL=redis://host:6379/0`` on every machine (``RedisHuey``; needs
the ``redis`` package) and put the data folder on storage all of them mount. Keep Redis on a
trusted network: huey queue messages are pickled (they only carry job ids).

A job kind is a function registered with :func:`register_job`::

    @register_job("mask")
    def mask_job(project, params, ctx) -> dict:
        for i, rec in enumerate(project.images()):
            if ctx.should_stop():            # cancel asked, or the worker is shutting down
                save_checkpoint(...); return {"stopped_at": i}
            ...
            ctx.progress(i + 1, n, f"masked {rec['stem']}")
        return {"n": n}

:func:`submit` writes the job record (state ``queued``) and enqueues one huey task that runs
the function in a worker (``python -m emcopilot.jobs``, one job at a time). The record goes
``queued -> running -> done | failed | cancelled``; ``progress`` (0..1) and ``message`` follow
``ctx.progress``; each job has a folder ``<project>/jobs/<job id>/`` with ``log.txt``
(progress lines, the traceback of a failure) and whatever checkpoints the function keeps.

Interrupted jobs. A worker holds a lock file (``<root>/workers/<token>.lock``) while it runs.
When a worker starts it looks for jobs left ``running`` by a worker whose lock is free (the
process was killed, the machine rebooted) and marks them ``failed`` with the error
"worker stopped while running; resume to continue". They are not re-enqueued automatically
(a job that kills its worker, e.g. out of memory, would otherwise loop forever); the user
resumes them with :func:`resume` (same id, same parameters), and a function that keeps
checkpoints in ``ctx.job_dir`` continues where it stopped. When a worker is stopped with
Ctrl-C/SIGTERM, the running job's ``should_stop()`` turns True; the worker waits up to
``EMCOPILOT_SHUTDOWN_TIMEOUT`` seconds (default 60) for it to save and return, and marks it
failed with the same message.

Job kinds are found by importing ``emcopilot.job_kinds`` and the modules listed (comma-
separated) in ``EMCOPILOT_JOB_MODULES`` (e.g. ``tests.job_fixtures``), in the worker and in the
process that submits.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from emcopilot.errors import EMCopilotError, InputError
from emcopilot.store import Project, ProjectStore, data_root

__all__ = [
    "INTERRUPTED_MESSAGE",
    "JobCancelled",
    "JobContext",
    "register_job",
    "job_kinds",
    "load_job_modules",
    "get_huey",
    "submit",
    "queue_position",
    "cancel",
    "resume",
    "execute_job",
    "reap_interrupted",
    "run_worker",
]

INTERRUPTED_MESSAGE = "worker stopped while running; resume to continue"
_QUEUE_NAME = "emcopilot"
_log = logging.getLogger("emcopilot.jobs")

JobFn = Callable[[Project, dict, "JobContext"], "dict | None"]
_KINDS: dict[str, JobFn] = {}
_LOADED_MODULES: set[str] = set()
_HUEYS: dict[tuple, Any] = {}
_HUEY_LOCK = threading.Lock()
#: Set when this process's worker is shutting down: running jobs see should_stop() == True.
_WORKER_STOPPING = threading.Event()
#: Token of the worker running in this process (its lock file name), if any.
_WORKER_TOKEN: str | None = None


class JobCancelled(Exception):
    """Raised by ``ctx.check_stop()``; the job ends as cancelled (or interrupted at shutdown)."""


# --------------------------------------------------------------------------- registry
def register_job(kind: str) -> Callable[[JobFn], JobFn]:
    """Decorator: make ``fn(project, params, ctx) -> dict | None`` the function of job ``kind``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("job kind must be a non-empty string")

    def decorator(fn: JobFn) -> JobFn:
        _KINDS[kind] = fn
        return fn

    return decorator


def load_job_modules() -> None:
    """Import ``emcopilot.job_kinds`` and the modules in ``$EMCOPILOT_JOB_MODULES`` (once)."""
    names = ["emcopilot.job_kinds"]
    names += [n.strip() for n in os.environ.get("EMCOPILOT_JOB_MODULES", "").split(",") if n.strip()]
    for name in names:
        if name in _LOADED_MODULES:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise EMCopilotError(f"cannot import job module {name!r} ({exc}); check "
                                 "EMCOPILOT_JOB_MODULES") from None
        _LOADED_MODULES.add(name)


def job_kinds() -> list[str]:
    """Names of the registered job kinds."""
    load_job_modules()
    return sorted(_KINDS)


# --------------------------------------------------------------------------- context
@dataclass
class JobContext:
    """What a job function gets besides its project and parameters.

    ``progress(done, total, message)`` updates the job record (throttled to a few writes a
    second; the last step is always written) and appends to ``job_dir/log.txt``.
    ``should_stop()`` is True once a cancel was requested or the worker is shutting down:
    save a checkpoint in ``job_dir`` and return. ``attempt`` is 1 on the first run, 2 after
    one resume, ...
    """

    store: ProjectStore
    job_id: str
    job_dir: Path
    attempt: int = 1
    min_interval_s: float = 0.2
    _last_write: float = field(default=0.0, repr=False)
    _last_check: float = field(default=0.0, repr=False)
    _stop: bool = field(default=False, repr=False)
    _cancel: bool = field(default=False, repr=False)

    def log(self, message: str) -> None:
        """Append a time-stamped line to ``job_dir/log.txt``."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.job_dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"{stamp} {message}\n")

    def progress(self, done: int | float, total: int | float, message: str = "") -> None:
        now = time.monotonic()
        last = total is not None and total > 0 and done >= total
        if not last and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        frac = float(done) / float(total) if total else 0.0
        self.store.update_job(self.job_id, progress=frac, message=str(message)[:500])
        self.log(f"[{done}/{total}] {message}")

    def should_stop(self) -> bool:
        if self._stop:
            return True
        if _WORKER_STOPPING.is_set():
            self._stop = True
            return True
        now = time.monotonic()
        if now - self._last_check >= self.min_interval_s:
            self._last_check = now
            if self.store.is_cancel_requested(self.job_id):
                self._stop = self._cancel = True
        return self._stop

    def check_stop(self) -> None:
        """Raise JobCancelled when ``should_stop()`` (for functions without a checkpoint)."""
        if self.should_stop():
            raise JobCancelled("stopped")


# --------------------------------------------------------------------------- huey
def _run_job_task(root: Path) -> Callable:
    def run_job(job_id: str, task=None) -> None:
        execute_job(ProjectStore(root), job_id, task_id=getattr(task, "id", None))
    # The queue message names the task "emcopilot.jobs.run_job" in every process, also when
    # this file runs as __main__.
    run_job.__module__ = "emcopilot.jobs"
    return run_job


def get_huey(root: str | os.PathLike | None = None):
    """The job queue of a data folder: ``SqliteHuey(<root>/jobs.sqlite)``, or ``RedisHuey``
    when ``EMCOPILOT_REDIS_URL`` is set. One instance per (root, url) in a process."""
    root = Path(root).expanduser() if root else data_root()
    url = os.environ.get("EMCOPILOT_REDIS_URL", "").strip() or None
    key = (str(root.resolve()), url)
    with _HUEY_LOCK:
        if key in _HUEYS:
            return _HUEYS[key]
        if url:
            try:
                import redis  # noqa: F401
            except ImportError:
                raise EMCopilotError("EMCOPILOT_REDIS_URL is set but the 'redis' package is not "
                                     "installed: pip install redis (or unset EMCOPILOT_REDIS_URL)") from None
            from huey import RedisHuey

            huey = RedisHuey(_QUEUE_NAME, url=url, results=False)
        else:
            from huey import SqliteHuey

            root.mkdir(parents=True, exist_ok=True)
            huey = SqliteHuey(_QUEUE_NAME, filename=str(root / "jobs.sqlite"), results=False,
                              timeout=30)
        huey.task(name="run_job", context=True)(_run_job_task(root))
        _HUEYS[key] = huey
        return huey


def _run_job_wrapper(huey):
    return huey._registry.string_to_task("emcopilot.jobs.run_job")


def _enqueue(store: ProjectStore, job_id: str) -> None:
    huey = get_huey(store.root)
    task = _run_job_wrapper(huey)(args=(job_id,))
    store.update_job(job_id, task_id=task.id)
    try:
        huey.enqueue(task)
    except Exception as exc:
        store.update_job_if(job_id, ("queued",), state="failed", finished=time.time(),
                            error=f"could not enqueue the job ({type(exc).__name__}: {exc})")
        raise EMCopilotError(f"could not reach the job queue ({exc})") from None


# --------------------------------------------------------------------------- public API
def submit(store: ProjectStore, project_id: str, kind: str, params: dict | None = None) -> str:
    """Record a job (state ``queued``) and put it on the queue; returns the job id.

    InputError for an unknown project or kind, or parameters that are not a JSON dict."""
    load_job_modules()
    if kind not in _KINDS:
        raise InputError(f"unknown job kind {kind!r}; known: {', '.join(sorted(_KINDS)) or 'none'}")
    job = store.create_job(project_id, kind, params or {})
    _enqueue(store, job["id"])
    return job["id"]


def queue_position(job_id: str, store: ProjectStore | None = None) -> int | None:
    """1 for the next queued job to run, 2 for the one after, ...; None when not queued."""
    store = store or ProjectStore()
    ahead = store.queued_ahead(job_id)
    return None if ahead is None else ahead + 1


def cancel(job_id: str, store: ProjectStore | None = None) -> dict:
    """Cancel a job: a queued one is revoked and marked cancelled at once; a running one gets
    ``cancel_requested`` (its function stops at its next ``should_stop()``). Finished jobs are
    left as they are. Returns the job record."""
    store = store or ProjectStore()
    job = store.get_job(job_id)
    if store.update_job_if(job_id, ("queued",), state="cancelled", finished=time.time(),
                           message="cancelled before it started", cancel_requested=True):
        if job.get("task_id"):
            with contextlib.suppress(Exception):
                get_huey(store.root).revoke_by_id(job["task_id"], revoke_once=True)
    elif store.get_job(job_id)["state"] == "running":
        store.request_cancel(job_id)
    return store.get_job(job_id)


def resume(job_id: str, store: ProjectStore | None = None) -> str:
    """Put a failed or cancelled job back on the queue with the same id and parameters
    (at the end of the queue); its function finds its checkpoints in the same job folder."""
    store = store or ProjectStore()
    load_job_modules()
    job = store.get_job(job_id)
    if job["kind"] not in _KINDS:
        raise InputError(f"unknown job kind {job['kind']!r}")
    if not store.update_job_if(job_id, ("failed", "cancelled"), state="queued",
                               cancel_requested=False, error=None, finished=None,
                               message="resumed; waiting", position=store.next_position()):
        raise InputError(f"job {job_id} is {store.get_job(job_id)['state']}; only failed or "
                         "cancelled jobs can be resumed")
    _enqueue(store, job_id)
    return job_id


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if not isinstance(exc, EMCopilotError):
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return msg[:300]


def execute_job(store: ProjectStore, job_id: str, task_id: str | None = None) -> dict:
    """Run one queued job in this process (what a worker does); returns the final record.

    The job is claimed atomically (queued -> running); a job that is no longer queued (it was
    cancelled) or whose ``task_id`` differs (a stale queue entry) is skipped."""
    try:
        job = store.get_job(job_id)
    except InputError:
        _log.warning("job %s: no such job record (project deleted?); skipped", job_id)
        return {}
    want = {"state": "running", "started": time.time(), "finished": None,
            "worker": _WORKER_TOKEN or f"local-{socket.gethostname()}-{os.getpid()}",
            "attempts": int(job.get("attempts") or 0) + 1, "message": "starting"}
    claimed = (job["state"] == "queued"
               and (task_id is None or job.get("task_id") in (None, task_id))
               and store.update_job_if(job_id, ("queued",), **want))
    if not claimed:
        _log.info("job %s is %s; skipped", job_id, job["state"])
        return store.get_job(job_id)

    try:
        project = store.open_project(job["project_id"])
        job_dir = project.job_dir(job_id)
    except EMCopilotError as exc:
        store.update_job(job_id, state="failed", finished=time.time(), error=_one_line(exc))
        return store.get_job(job_id)
    ctx = JobContext(store=store, job_id=job_id, job_dir=job_dir, attempt=want["attempts"])
    ctx.log(f"start {job['kind']} (attempt {ctx.attempt}) params={job['params']}")
    try:
        fn = _KINDS.get(job["kind"])
        if fn is None:
            load_job_modules()
            fn = _KINDS.get(job["kind"])
        if fn is None:
            raise EMCopilotError(f"this worker does not know job kind {job['kind']!r} "
                                 "(set EMCOPILOT_JOB_MODULES)")
        result = fn(project, dict(job["params"]), ctx)
        stopped = ctx._stop  # the function saw should_stop() == True and returned early
    except JobCancelled:
        result, stopped = None, True
        if not ctx._stop:  # raised by the function itself: a cancel
            ctx._cancel = True
    except BaseException as exc:  # noqa: BLE001 - the job must end with a record
        err = _one_line(exc)
        ctx.log(f"FAILED: {err}\n{traceback.format_exc()}")
        store.update_job(job_id, state="failed", finished=time.time(), error=err,
                         message="failed")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return store.get_job(job_id)

    if result is not None and not isinstance(result, dict):
        result = {"value": result}
    now = time.time()
    if stopped and ctx._cancel:
        ctx.log("cancelled")
        store.update_job(job_id, state="cancelled", finished=now, result=result,
                         message="cancelled")
    elif stopped:
        ctx.log(INTERRUPTED_MESSAGE)
        store.update_job(job_id, state="failed", finished=now, result=result,
                         error=INTERRUPTED_MESSAGE, message="interrupted")
    else:
        ctx.log("done")
        store.update_job(job_id, state="done", finished=now, result=result, progress=1.0,
                         message="done")
    return store.get_job(job_id)


# --------------------------------------------------------------------------- worker
def _lock_dir(root: Path) -> Path:
    d = root / "workers"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _worker_alive(root: Path, token: str | None) -> bool:
    """True while the worker ``token`` holds its lock file (works across processes and, on
    NFSv4 with locking, across machines)."""
    if not token:
        return False
    path = _lock_dir(root) / f"{token}.lock"
    if not path.exists():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: trust the file
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # held by a live worker
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def reap_interrupted(store: ProjectStore) -> list[str]:
    """Mark ``running`` jobs whose worker is gone as failed (INTERRUPTED_MESSAGE); returns
    their ids. Jobs run by a live worker (its lock is held) are left alone."""
    reaped = []
    for job in store.list_jobs(states=("running",)):
        if job["worker"] == _WORKER_TOKEN or not _worker_alive(store.root, job["worker"]):
            if store.update_job_if(job["id"], ("running",), state="failed",
                                   finished=time.time(), error=INTERRUPTED_MESSAGE,
                                   message="interrupted"):
                reaped.append(job["id"])
                with contextlib.suppress(Exception):
                    project = store.open_project(job["project_id"])
                    JobContext(store, job["id"], project.job_dir(job["id"])).log(INTERRUPTED_MESSAGE)
    for lock in _lock_dir(store.root).glob("*.lock"):
        if lock.stem != _WORKER_TOKEN and not _worker_alive(store.root, lock.stem):
            with contextlib.suppress(OSError):
                lock.unlink()
    return reaped


@contextlib.contextmanager
def _worker_lock(root: Path):
    global _WORKER_TOKEN
    token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path = _lock_dir(root) / f"{token}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover
            pass
        _WORKER_TOKEN = token
        yield token
    finally:
        _WORKER_TOKEN = None
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()


def run_worker(root: str | os.PathLike | None = None, *,
               shutdown_timeout: float | None = None) -> None:
    """Run a job worker in this process until Ctrl-C/SIGTERM: one job at a time.

    Marks jobs interrupted by a dead worker as failed first (see the module docstring)."""
    from huey.consumer import Consumer

    store = ProjectStore(root)
    load_job_modules()
    huey = get_huey(store.root)
    if shutdown_timeout is None:
        shutdown_timeout = float(os.environ.get("EMCOPILOT_SHUTDOWN_TIMEOUT", "60"))
    _WORKER_STOPPING.clear()

    class _Consumer(Consumer):
        def stop(self, graceful: bool = False) -> None:
            # Ask the running job to checkpoint and return, and wait for it (bounded).
            _WORKER_STOPPING.set()
            super().stop(graceful=True)

    with _worker_lock(store.root) as token:
        reaped = reap_interrupted(store)
        if reaped:
            _log.warning("marked %d interrupted job(s) as failed: %s", len(reaped), ", ".join(reaped))
        _log.info("worker %s on %s (kinds: %s)", token, store.root, ", ".join(sorted(_KINDS)))
        consumer = _Consumer(huey, workers=1, worker_type="thread", periodic=False,
                             initial_delay=0.1, backoff=1.15, max_delay=0.5,
                             shutdown_timeout=shutdown_timeout, check_worker_health=True)
        try:
            consumer.run()
        finally:
            # A job still running now was cut off (shutdown timeout): record it.
            for job in store.list_jobs(states=("running",)):
                if job["worker"] == token:
                    store.update_job_if(job["id"], ("running",), state="failed",
                                        finished=time.time(), error=INTERRUPTED_MESSAGE,
                                        message="interrupted")


def main(argv: list[str] | None = None) -> int:
    """``python -m emcopilot.jobs [--root DIR]``: run one job worker."""
    parser = argparse.ArgumentParser(prog="python -m emcopilot.jobs", description=run_worker.__doc__)
    parser.add_argument("--root", default=None, help="data folder (default $EMCOPILOT_DATA)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_worker(args.root)
    except EMCopilotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so there is one registry of job kinds and one worker
    # state (not a second copy of this file under the name __main__).
    from emcopilot.jobs import main as _main

    sys.exit(_main())
