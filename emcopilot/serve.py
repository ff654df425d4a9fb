"""Start the web app and one job worker together: ``python -m emcopilot.serve``.

Runs ``python -m emcopilot.jobs`` (the worker) and ``streamlit run app.py`` as child
processes, forwards Ctrl-C/SIGTERM to both, and stops both when either exits. The exit code is
the first child's non-zero code (0 after a clean Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_commands(host: str, port: int, app: Path, root: str | None = None) -> dict[str, list[str]]:
    """The child command lines: {'worker': [...], 'app': [...]}."""
    worker = [sys.executable, "-m", "emcopilot.jobs"]
    if root:
        worker += ["--root", str(root)]
    streamlit = [sys.executable, "-m", "streamlit", "run", str(app),
                 "--server.address", host, "--server.port", str(port),
                 "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    return {"worker": worker, "app": streamlit}


def _stop(procs: dict[str, subprocess.Popen], sig: int, grace_s: float) -> None:
    for p in procs.values():
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def serve(host: str = "127.0.0.1", port: int = 8501, app: str | os.PathLike | None = None,
          root: str | None = None, grace_s: float | None = None) -> int:
    """Run worker + app until either exits or we get SIGINT/SIGTERM; returns an exit code.

    ``grace_s`` (default ``EMCOPILOT_SHUTDOWN_TIMEOUT`` + 10 s) is how long children get to
    stop (a running job saves its checkpoint) before they are killed."""
    app_path = Path(app) if app else REPO / "app.py"
    if grace_s is None:
        grace_s = float(os.environ.get("EMCOPILOT_SHUTDOWN_TIMEOUT", "60")) + 10.0
    env = dict(os.environ)
    if root:
        env["EMCOPILOT_DATA"] = str(root)
    cmds = build_commands(host, port, app_path, root)
    procs: dict[str, subprocess.Popen] = {}
    received: list[int] = []

    def _on_signal(signum, frame):  # noqa: ARG001
        received.append(signum)

    # Children get their own sessions: a terminal Ctrl-C reaches only us and we forward it once
    # (a second SIGINT would make the worker abandon the running job's checkpoint).
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs["worker"] = subprocess.Popen(cmds["worker"], cwd=REPO, env=env, start_new_session=True)
        if app_path.is_file():
            procs["app"] = subprocess.Popen(cmds["app"], cwd=REPO, env=env, start_new_session=True)
            print(f"EMcopilot: http://{host}:{port}  (Ctrl-C stops the app and the worker)",
                  flush=True)
        else:
            print(f"EMcopilot: {app_path} not found; running the job worker only", flush=True)
        code = 0
        while not received:
            done = [(n, p.returncode) for n, p in procs.items() if p.poll() is not None]
            if done:
                name, rc = done[0]
                print(f"EMcopilot: the {name} exited with code {rc}; stopping", flush=True)
                code = rc or 0
                break
            time.sleep(0.2)
        sig = signal.SIGINT if (not received or received[0] == signal.SIGINT) else signal.SIGTERM
        _stop(procs, sig, grace_s)
        return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emcopilot.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    parser.add_argument("--app", default=None, help="streamlit app file (default app.py of the repo)")
    parser.add_argument("--data", default=None, help="data folder (default $EMCOPILOT_DATA)")
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.app, args.data)


if __name__ == "__main__":
    sys.exit(main())
