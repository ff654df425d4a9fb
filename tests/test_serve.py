"""`python -m emcopilot.serve` (what `make run` starts): the app answers, a worker runs jobs, and
one Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from emcopilot import jobs
from emcopilot.store import ProjectStore

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_serve_runs_app_and_worker_and_stops_both_on_ctrl_c(tmp_path):
    data = tmp_path / "data"
    port = _free_port()
    env = dict(os.environ, EMCOPILOT_DATA=str(data), EMCOPILOT_JOB_MODULES="tests.job_fixtures",
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "emcopilot.serve", "--host", "127.0.0.1",
                             "--port", str(port), "--data", str(data)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: _health(port), 90, "the app's health endpoint")
        # the worker started beside the app picks up a queued job
        store = ProjectStore(data)
        project = store.create_project("serve test")
        import tests.job_fixtures  # noqa: F401  (registers the fixture job kinds here too)

        job_id = jobs.submit(store, project.id, "test_steps", {"steps": 3, "delay": 0.01})
        _wait(lambda: store.get_job(job_id)["state"] in ("done", "failed"), 60, "the job to finish")
        job = store.get_job(job_id)
        assert job["state"] == "done", job
        assert job["progress"] == pytest.approx(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert not _health(port)
