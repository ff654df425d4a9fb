"""Background jobs with a real worker subprocess (SqliteHuey in a temp folder, no network):
progress, queue positions, cancel (queued and running), failures, and a worker killed with
SIGKILL mid-job that is marked interrupted and finishes after resume from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emcopilot import jobs
from emcopilot.errors import EMCopilotError, InputError
from emcopilot.store import ProjectStore

REPO = Path(__file__).resolve().parents[1]
FIXTURES = "tests.job_fixtures"

if str(REPO) not in sys.path:  # so that `tests.job_fixtures` imports here as in the worker
    sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def _job_modules(monkeypatch):
    monkeypatch.setenv("EMCOPILOT_JOB_MODULES", FIXTURES)
    monkeypatch.setenv("EMCOPILOT_SHUTDOWN_TIMEOUT", "10")


class Worker:
    """`python -m emcopilot.jobs --root ROOT` as a child process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Worker":
        env = dict(os.environ, EMCOPILOT_JOB_MODULES=FIXTURES, EMCOPILOT_SHUTDOWN_TIMEOUT="10",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(self.root / f"worker-{time.monotonic_ns()}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "emcopilot.jobs", "--root", str(self.root)],
                                     cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        # ready when it holds its lock file
        wait_for(lambda: any((self.root / "workers").glob(f"*-{self.proc.pid}-*.lock"))
                 or self.proc.poll() is not None, 20, "worker start")
        assert self.proc.poll() is None, self.output()
        return self

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_state(store: ProjectStore, job_id: str, states, timeout: float = 20) -> dict:
    states = (states,) if isinstance(states, str) else tuple(states)
    return wait_for(lambda: (j := store.get_job(job_id))["state"] in states and j, timeout,
                    f"job {job_id} to be {states}")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One worker for the module's ordinary tests (each test has its own project)."""
    root = tmp_path_factory.mktemp("jobs_root")
    old = os.environ.get("EMCOPILOT_JOB_MODULES")
    os.environ["EMCOPILOT_JOB_MODULES"] = FIXTURES
    w = Worker(root).start()
    yield ProjectStore(root), w
    code = w.stop(signal.SIGINT)
    if old is None:
        os.environ.pop("EMCOPILOT_JOB_MODULES", None)
    assert code == 0, w.output()


def test_job_runs_and_reports_progress(shared):
    store, worker = shared
    p = store.create_project("progress")
    jid = jobs.submit(store, p.id, "test_steps", {"steps": 8, "delay": 0.08})
    assert store.get_job(jid)["state"] in ("queued", "running")
    seen = set()

    def finished():
        j = store.get_job(jid)
        if j["state"] == "running":
            seen.add(round(j["progress"], 3))
        return j["state"] in ("done", "failed")

    wait_for(finished, 20, "job to finish")
    job = store.get_job(jid)
    assert job["state"] == "done", (job, worker.output())
    assert job["progress"] == 1.0 and job["error"] is None
    assert job["result"]["steps"] == 8 and job["result"]["done_now"] == list(range(8))
    assert job["result"]["project"] == "progress" and job["result"]["attempt"] == 1
    assert job["started"] >= job["created"] and job["finished"] >= job["started"]
    assert any(0 < f < 1 for f in seen), seen  # intermediate progress was visible
    log = (p.job_dir(jid) / "log.txt").read_text()
    assert "step 8 of 8" in log and log.rstrip().endswith("done")


def test_queue_positions_and_cancel(shared):
    store, worker = shared
    p = store.create_project("queue")
    a = jobs.submit(store, p.id, "test_steps", {"steps": 200, "delay": 0.05})
    b = jobs.submit(store, p.id, "test_steps", {"steps": 2, "delay": 0.01})
    c = jobs.submit(store, p.id, "test_steps", {"steps": 2, "delay": 0.01})
    wait_state(store, a, "running")
    assert jobs.queue_position(a, store) is None
    assert (jobs.queue_position(b, store), jobs.queue_position(c, store)) == (1, 2)

    # cancel a queued job: at once, and it never runs
    rec = jobs.cancel(c, store)
    assert rec["state"] == "cancelled" and jobs.queue_position(c, store) is None
    assert jobs.queue_position(b, store) == 1

    # cancel the running job: it sees should_stop(), keeps its checkpoint and returns
    wait_for(lambda: store.get_job(a)["progress"] > 0.02, 20, "progress of a")
    rec = jobs.cancel(a, store)
    assert rec["cancel_requested"]
    job_a = wait_state(store, a, ("cancelled", "done", "failed"))
    assert job_a["state"] == "cancelled", job_a
    stopped_at = job_a["result"]["stopped_at"]
    assert 0 < stopped_at < 200
    ckpt = json.loads((p.job_dir(a) / "checkpoint.json").read_text())
    assert ckpt["done"] == stopped_at

    assert wait_state(store, b, ("done", "failed"))["state"] == "done"
    time.sleep(0.5)
    job_c = store.get_job(c)
    assert job_c["state"] == "cancelled" and job_c["started"] is None
    assert not (p.path / "jobs" / c / "log.txt").exists()
    # cancelling a finished job changes nothing
    assert jobs.cancel(b, store)["state"] == "done"


def test_failing_job_records_its_error(shared):
    store, worker = shared
    p = store.create_project("failing")
    jid = jobs.submit(store, p.id, "test_fail", {"value": 42})
    job = wait_state(store, jid, ("failed", "done"))
    assert job["state"] == "failed"
    assert job["error"] == "ValueError: bad value 42"
    log = (p.job_dir(jid) / "log.txt").read_text()
    assert "Traceback" in log and "fail_job" in log and "second line" in log
    # the worker survives a failing job
    jid2 = jobs.submit(store, p.id, "test_steps", {"steps": 1, "delay": 0})
    assert wait_state(store, jid2, ("done", "failed"))["state"] == "done"
    with pytest.raises(InputError, match="only failed or cancelled"):
        jobs.resume(jid2, store)


def test_submit_validates(shared):
    store, _ = shared
    p = store.create_project("validate")
    with pytest.raises(InputError, match="unknown job kind"):
        jobs.submit(store, p.id, "no_such_kind", {})
    with pytest.raises(InputError, match="JSON"):
        jobs.submit(store, p.id, "test_steps", {"steps": object()})
    with pytest.raises(InputError, match="no project"):
        jobs.submit(store, "missing-0000", "test_steps", {"steps": 1})
    assert store.list_jobs(project_id=p.id) == []
    assert {"test_steps", "test_fail"} <= set(jobs.job_kinds())


def test_kill_9_mid_job_then_resume(tmp_path):
    root = tmp_path / "data"
    store = ProjectStore(root)
    p = store.create_project("crash")
    w = Worker(root).start()
    try:
        jid = jobs.submit(store, p.id, "test_steps", {"steps": 40, "delay": 0.05})
        wait_for(lambda: store.get_job(jid)["progress"] >= 0.2, 20, "progress >= 0.2")
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(10)
        assert store.get_job(jid)["state"] == "running"  # nobody could record anything
    finally:
        w.stop()
    done_before = json.loads((p.job_dir(jid) / "checkpoint.json").read_text())["done"]
    assert 0 < done_before < 40

    w2 = Worker(root).start()  # a new worker finds the orphan at start
    try:
        job = wait_state(store, jid, ("failed",), timeout=10)
        assert job["error"] == jobs.INTERRUPTED_MESSAGE
        # the reaper claims the job in the store first, then appends to its log
        wait_for(lambda: jobs.INTERRUPTED_MESSAGE in (p.job_dir(jid) / "log.txt").read_text(),
                 10, "the interruption in the job's log")
        assert jobs.resume(jid, store) == jid
        job = wait_state(store, jid, ("done", "failed"))
        assert job["state"] == "done", (job, w2.output())
        res = job["result"]
        assert res["attempt"] == 2 and res["steps"] == 40
        assert res["started_from"] >= done_before  # continued from the checkpoint
        assert res["done_now"] == list(range(res["started_from"], 40))
    finally:
        assert w2.stop() == 0


def test_graceful_stop_interrupts_the_running_job(tmp_path):
    """SIGTERM: the running job checkpoints and returns; the worker records it as interrupted."""
    root = tmp_path / "data"
    store = ProjectStore(root)
    p = store.create_project("graceful")
    w = Worker(root).start()
    jid = jobs.submit(store, p.id, "test_steps", {"steps": 400, "delay": 0.05})
    wait_for(lambda: store.get_job(jid)["progress"] > 0.01, 20, "progress")
    t0 = time.monotonic()
    assert w.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 8
    job = store.get_job(jid)
    assert job["state"] == "failed" and job["error"] == jobs.INTERRUPTED_MESSAGE
    assert 0 < job["result"]["stopped_at"] < 400


def test_in_process_execution_and_stale_tasks(tmp_path):
    """execute_job is what the worker runs: a stale queue entry (other task id) or a
    cancelled job is skipped; a job function that raises JobCancelled ends cancelled."""
    store = ProjectStore(tmp_path / "d")
    p = store.create_project("inproc")

    @jobs.register_job("test_inproc_cancel")
    def _cancel_self(project, params, ctx):
        ctx.progress(1, 4, "one")
        raise jobs.JobCancelled()

    job = store.create_job(p.id, "test_steps", {"steps": 2, "delay": 0})
    store.update_job(job["id"], task_id="current")
    assert jobs.execute_job(store, job["id"], task_id="stale")["state"] == "queued"
    assert jobs.execute_job(store, job["id"], task_id="current")["state"] == "done"
    assert jobs.execute_job(store, job["id"], task_id="current")["attempts"] == 1  # not re-run

    job = store.create_job(p.id, "test_inproc_cancel", {})
    rec = jobs.execute_job(store, job["id"])
    assert rec["state"] == "cancelled" and rec["progress"] == pytest.approx(0.25)


def test_redis_url_without_redis_package(tmp_path, monkeypatch):
    pytest.importorskip("huey")
    try:
        import redis  # noqa: F401
        pytest.skip("redis is installed")
    except ImportError:
        pass
    monkeypatch.setenv("EMCOPILOT_REDIS_URL", "redis://127.0.0.1:1/0")
    with pytest.raises(EMCopilotError, match="pip install redis"):
        jobs.get_huey(tmp_path)
