"""Pieces shared by the generator and segmentor loops: logging, LR schedules, resuming, timing."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..atomic import atomic_write_text

__all__ = ["append_log", "read_log", "seed_everything", "lr_factor", "set_lr", "training_result",
           "Progress", "StopCheck"]

Progress = Callable[[int, int, str], None] | None
StopCheck = Callable[[], bool] | None


def append_log(out_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``out_dir/log.jsonl`` (fsync'd, so a crash keeps earlier lines)."""
    path = Path(out_dir) / "log.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, allow_nan=False, default=float) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    """The records of ``out_dir/log.jsonl`` (a truncated last line is ignored)."""
    path = Path(out_dir) / "log.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def truncate_log(out_dir: Path, keep_epochs: int) -> None:
    """Drop log records of epochs after ``keep_epochs`` (they belong to a run that was lost)."""
    records = [r for r in read_log(out_dir) if int(r.get("epoch", 0)) <= keep_epochs]
    text = "".join(json.dumps(r, allow_nan=False, default=float) + "\n" for r in records)
    atomic_write_text(Path(out_dir) / "log.jsonl", text)


def training_result(out_dir: Path, checkpoint_names: tuple[str, ...], *, epoch: int,
                    start_epoch: int, epochs: int, cancelled: bool, history: list[dict[str, Any]],
                    best: dict[str, Any], device: Any, **extra: Any) -> dict[str, Any]:
    """What a training loop returns: the epochs done (``epoch`` when ``cancelled`` during it,
    else all ``epochs``, or ``start_epoch`` when a resumed run had nothing left to do), the
    log records of this call, the best scores, the checkpoints of ``checkpoint_names`` that were
    written in full (their config.json exists), and ``extra``."""
    out = Path(out_dir)
    done = epoch if cancelled else (epochs if start_epoch < epochs else start_epoch)
    checkpoints = {n: str(out / n) for n in checkpoint_names if (out / n / "config.json").is_file()}
    return {"epoch": done, "epochs": epochs, "history": history, "best": dict(best),
            "checkpoints": checkpoints, "cancelled": cancelled, "out_dir": str(out),
            "device": str(device), **extra}


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def lr_factor(kind: str, epoch: int, epochs: int, decay_start: float = 0.5) -> float:
    """LR multiplier for 0-based ``epoch`` of ``epochs``.

    ``"linear"``: pix2pix, constant for the first ``decay_start`` fraction then linear to ~0.
    ``"cosine"``: cosine annealing from 1 to 0.01.
    """
    if epochs <= 1:
        return 1.0
    if kind == "linear":
        start = int(epochs * decay_start)
        if epoch < start:
            return 1.0
        return max(0.0, 1.0 - (epoch - start) / float(epochs - start + 1))
    if kind == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
