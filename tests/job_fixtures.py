"""Job kinds used only by tests/test_jobs.py; a worker imports this module when
EMCOPILOT_JOB_MODULES=tests.job_fixtures (run from the repository root)."""

from __future__ import annotations

import json
import time

from emcopilot.atomic import atomic_write_text
from emcopilot.jobs import register_job


@register_job("test_steps")
def steps_job(project, params, ctx) -> dict:
    """Count to params['steps'] sleeping params['delay'] s per step; the last finished step is
    kept in job_dir/checkpoint.json, so a resumed job continues after it."""
    steps, delay = int(params["steps"]), float(params.get("delay", 0.05))
    ckpt = ctx.job_dir / "checkpoint.json"
    start = json.loads(ckpt.read_text())["done"] if ckpt.is_file() else 0
    done_now = []
    for i in range(start, steps):
        if ctx.should_stop():
            return {"stopped_at": i, "started_from": start, "done_now": done_now}
        time.sleep(delay)
        done_now.append(i)
        atomic_write_text(ckpt, json.dumps({"done": i + 1}))
        ctx.progress(i + 1, steps, f"step {i + 1} of {steps}")
    return {"steps": steps, "started_from": start, "done_now": done_now,
            "attempt": ctx.attempt, "project": project.name}


@register_job("test_fail")
def fail_job(project, params, ctx) -> dict:
    ctx.progress(1, 2, "about to fail")
    raise ValueError(f"bad value {params.get('value')!r}\nsecond line not in the error")
