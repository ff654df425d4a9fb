"""Device selection, mixed precision and CPU threading shared by training and inference.

The loops are device-agnostic: they call :func:`pick_device`, run forward passes inside
:func:`autocast` and step optimisers through the scaler from :func:`grad_scaler`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from .errors import InputError

__all__ = ["pick_device", "autocast", "autocast_dtype", "grad_scaler", "set_cpu_threads",
           "channels_last", "loader_workers", "loader_options"]


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """Return the torch device to use: ``"auto"`` picks CUDA, then Apple MPS, then CPU.

    ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"`` force one; InputError if it is not available.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {preference!r} requested but no CUDA GPU is available; "
                             "use device='auto' or 'cpu'")
        return torch.device(pref)
    if pref == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("device 'mps' requested but Apple MPS is not available; use 'cpu'")
        return torch.device("mps")
    if pref == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {preference!r}; use 'auto', 'cuda', 'mps' or 'cpu'")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on older ones, None (full precision) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Mixed-precision context on CUDA (bf16 or fp16); a no-op on CPU and MPS."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A GradScaler that is active only where it is needed (CUDA with fp16 autocast)."""
    active = bool(enabled) and autocast_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=active)


def channels_last(device: torch.device) -> bool:
    """Whether to use the channels_last memory format (faster convolutions on CUDA tensor cores)."""
    return device.type == "cuda"


def set_cpu_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads: ``n``, else ``$EMCOPILOT_THREADS``, else the cores this
    process may use. Returns the number set."""
    if n is None:
        env = os.environ.get("EMCOPILOT_THREADS")
        if env and env.strip().isdigit() and int(env) > 0:
            n = int(env)
        else:
            try:
                n = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                n = os.cpu_count() or 1
    n = max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def loader_workers(device: torch.device) -> int:
    """DataLoader worker processes for training on ``device``: ``$EMCOPILOT_LOADER_WORKERS`` when
    set, else up to 8 on CUDA (the crops and Algorithm 6 variants, ~15 ms per 512 px sample, are
    made on the CPU while the GPU steps) and 0 on CPU and MPS (workers would take the cores the
    model needs). The training datasets draw every sample from (seed, epoch, index), so the batches,
    and the trained weights, are the same for any number of workers."""
    env = os.environ.get("EMCOPILOT_LOADER_WORKERS", "").strip()
    if env.isdigit():
        return int(env)
    if device.type != "cuda":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def loader_options(device: torch.device) -> dict:
    """Keyword arguments for a training DataLoader on ``device``: :func:`loader_workers` workers,
    pinned memory on CUDA, and forked workers where the platform has fork (the datasets hold
    closures, which other start methods would have to pickle)."""
    import multiprocessing

    workers = loader_workers(device)
    opts: dict = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers and "fork" in multiprocessing.get_all_start_methods():
        opts["multiprocessing_context"] = "fork"
    return opts
