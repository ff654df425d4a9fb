"""Start ``streamlit run app.py`` and a job worker on a temporary data folder; a headless
Debian chromium via Playwright. Skips with a reason when chromium or playwright is missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium: make browser-deps)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, browser):
    """(url, data folder) of a running app + worker; both stopped at the end."""
    data = tmp_path_factory.mktemp("browser_data")
    logs = tmp_path_factory.mktemp("browser_logs")
    env = {**os.environ, "EMCOPILOT_DATA": str(data), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(data / "hf_home"),
           # one torch thread: the worker shares 2 cores with the app server and chromium,
           # and 2 threads on busy cores were 2-3x slower (oversubscription) when profiled
           "OMP_NUM_THREADS": "1", "EMCOPILOT_THREADS": "1",
           "EMCOPILOT_WEIGHTS_DIR": str(data / "weights")}
    env.pop("EMCOPILOT_REDIS_URL", None)
    port = _free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "emcopilot.jobs", "--root", str(data)], cwd=REPO, env=env,
            stdout=open(logs / "worker.log", "wb"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
             "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=REPO, env=env,
            stdout=open(logs / "app.log", "wb"), stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            for p in procs:
                if p.poll() is not None:
                    pytest.fail(f"{p.args[:3]} exited: "
                                + "".join(f.read_text(errors="replace")[-2000:]
                                          for f in logs.iterdir()))
            if time.monotonic() > deadline:
                pytest.fail("the app did not start within 60 s")
            time.sleep(0.5)
        yield url, data
    finally:
        for p in reversed(procs):
            _stop(p)
        ARTIFACTS.mkdir(exist_ok=True)
        for f in logs.iterdir():
            shutil.copy(f, ARTIFACTS / f.name)


@pytest.fixture()
def page(browser, app_server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()
