"""Checkpoints without pickle: ``config.json`` + ``*.safetensors`` in one folder, atomic.

Layout of a checkpoint folder::

    config.json              architecture + kwargs of every model, training config, data
                             description, epoch, metrics, versions (emcopilot, torch)
    model.safetensors        the primary model's state dict (the one load_model returns)
    <name>.safetensors       other models saved with it (e.g. discriminator.safetensors)
    optimizer.safetensors    optimiser tensors (Adam moments, steps) for resuming
    optimizer.json           optimiser non-tensor state (param groups, scalars) + scaler state

The folder is written next to its final place and swapped in, so a crash never leaves a
half-written checkpoint and never loses the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..errors import InputError
from ..nets import ARCHITECTURES, build_model

__all__ = ["save_checkpoint", "load_model", "load_training_state", "read_config",
           "update_config", "is_checkpoint", "ensemble_checkpoint", "FORMAT"]

FORMAT = "emcopilot-checkpoint/1"
PRIMARY_FILE = "model.safetensors"


def _as_dict(obj: Any, default_name: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    return {default_name: obj}


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:  # NaN -> null
        return None
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        try:
            return x.item()
        except Exception:
            return str(x)
    return x


def _optimizer_split(name: str, opt: torch.optim.Optimizer
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{name}/{idx}/{key}"] = val.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(val)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def _atomic_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def _swap_in(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{time.time_ns()}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(directory: str | os.PathLike, models: nn.Module | Mapping[str, nn.Module],
                    optimizers: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer] | None,
                    config: Mapping[str, Any], epoch: int, metrics: Mapping[str, Any] | None = None,
                    *, primary: str | None = None, scaler: torch.amp.GradScaler | None = None,
                    state: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint folder atomically. Returns its path.

    Args:
        directory: the checkpoint folder (e.g. ``out/last``); replaced as a whole.
        models: one module or ``{name: module}``; every module must carry ``arch_kwargs``
            (all networks in :mod:`emcopilot.nets` do). The first (or ``primary``) goes to
            ``model.safetensors``, the others to ``<name>.safetensors``.
        optimizers: one optimiser or ``{name: optimizer}`` (None: weights-only checkpoint).
        config: JSON-serialisable training config / data description.
        epoch: number of completed epochs.
        metrics: validation metrics of that epoch.
        scaler: mixed-precision GradScaler whose state is kept for resuming.
        state: other JSON-serialisable loop state (best scores so far...).
    """
    target = Path(directory)
    mods = _as_dict(models, "model")
    if not mods:
        raise ValueError("save_checkpoint needs at least one model")
    primary = primary or next(iter(mods))
    opts = _as_dict(optimizers, "optimizer")
    tmp = _atomic_dir(target)
    try:
        entries = {}
        for name, model in mods.items():
            arch = type(model).__name__
            if arch not in ARCHITECTURES or not hasattr(model, "arch_kwargs"):
                raise ValueError(f"{arch} is not a registered emcopilot architecture")
            fname = PRIMARY_FILE if name == primary else f"{name}.safetensors"
            save_file(_state_tensors(model), str(tmp / fname), metadata={"format": "pt"})
            entries[name] = {"architecture": arch, "kwargs": dict(model.arch_kwargs),
                             "file": fname}
        opt_json: dict[str, Any] = {}
        if opts:
            all_tensors: dict[str, torch.Tensor] = {}
            for name, opt in opts.items():
                t, j = _optimizer_split(name, opt)
                all_tensors.update(t)
                opt_json[name] = j
            save_file(all_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
            extra: dict[str, Any] = {"optimizers": opt_json}
            if scaler is not None:
                extra["scaler"] = _jsonable(scaler.state_dict())
            (tmp / "optimizer.json").write_text(json.dumps(extra, indent=1))
        cfg = {
            "format": FORMAT,
            "primary": primary,
            "architecture": entries[primary]["architecture"],
            "kwargs": entries[primary]["kwargs"],
            "models": entries,
            "config": _jsonable(dict(config)),
            "epoch": int(epoch),
            "metrics": _jsonable(dict(metrics or {})),
            "state": _jsonable(dict(state or {})),
            "versions": {"emcopilot": __version__, "torch": torch.__version__},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, allow_nan=False))
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


#: Sub-folders tried, in order, when a run folder (not a checkpoint folder) is given.
RUN_SUBFOLDERS = ("best_miou", "best_ssim", "best_lpips", "last")


def _checkpoint_dir(path: str | os.PathLike) -> tuple[Path, str | None]:
    p = Path(path)
    if p.is_file():
        return p.parent, p.name
    if not (p / "config.json").is_file():
        for sub in RUN_SUBFOLDERS:  # a training run folder: its best checkpoint
            if (p / sub / "config.json").is_file():
                return p / sub, None
    return p, None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` is a checkpoint folder (has config.json and model.safetensors)."""
    d, _ = _checkpoint_dir(path)
    return (d / "config.json").is_file() and (d / PRIMARY_FILE).is_file()


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of a checkpoint folder (or of the folder holding a file)."""
    d, _ = _checkpoint_dir(path)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{d}: not a model checkpoint (config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{cfg_path}: unreadable checkpoint config ({exc})") from None
    if not isinstance(cfg, dict) or "models" not in cfg:
        raise InputError(f"{cfg_path}: not an emcopilot checkpoint config")
    return cfg


def update_config(path: str | os.PathLike, **values: Any) -> dict[str, Any]:
    """Set entries of a checkpoint's ``config`` section (e.g. a post-processing setting chosen
    after training) and rewrite config.json atomically; the weights are untouched. Returns the
    new config.json content."""
    from ..atomic import atomic_write_text

    d, _ = _checkpoint_dir(path)
    cfg = read_config(d)
    cfg.setdefault("config", {}).update(_jsonable(dict(values)))
    atomic_write_text(d / "config.json", json.dumps(cfg, indent=2, allow_nan=False))
    return cfg


#: the config-section settings that members of an ensemble must share (how images go in)
ENSEMBLE_SHARED = ("input_polarity", "particle_diameter_px", "scale_preset", "image_size",
                   "threshold")


def ensemble_checkpoint(members: list[str | os.PathLike], directory: str | os.PathLike) -> Path:
    """One checkpoint folder whose networks are those of several checkpoints of the same kind
    (e.g. segmentors trained with different seeds), written atomically; the first member's
    config.json is the base, each further member's primary weights go in as
    ``member<k>.safetensors`` and ``config["ensemble"]`` lists the model names whose outputs
    are averaged (:class:`emcopilot.inference.Segmentor` does). No optimiser state is kept.
    The members must share their architecture (with its arguments) and input settings
    (InputError else)."""
    dirs = [_checkpoint_dir(m)[0] for m in members]
    if len(dirs) < 2:
        raise InputError("an ensemble needs at least two checkpoints")
    base = read_config(dirs[0])
    name = _primary_name(base)
    first = base["models"][name]
    base["models"], names = {name: first}, [name]
    target = Path(directory)
    tmp = _atomic_dir(target)
    try:
        shutil.copyfile(dirs[0] / first["file"], tmp / first["file"])
        for k, d in enumerate(dirs[1:], start=1):
            cfg = read_config(d)
            entry = cfg["models"][_primary_name(cfg)]
            differ = [key for key in ENSEMBLE_SHARED
                      if cfg.get("config", {}).get(key) != base.get("config", {}).get(key)]
            if (entry["architecture"], entry.get("kwargs")) != (first["architecture"],
                                                                 first.get("kwargs")):
                differ.insert(0, "architecture")
            if differ:
                raise InputError(f"{d}: cannot join an ensemble with {dirs[0]}: "
                                 f"{', '.join(differ)} differ")
            names.append(f"member{k}")
            shutil.copyfile(d / entry["file"], tmp / f"member{k}.safetensors")
            base["models"][names[-1]] = {**entry, "file": f"member{k}.safetensors"}
        base.setdefault("config", {})["ensemble"] = names
        base.pop("state", None)  # no training to resume
        (tmp / "config.json").write_text(json.dumps(base, indent=2, allow_nan=False))
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _primary_name(cfg: Mapping[str, Any]) -> str:
    """The name of a checkpoint's primary model (the one :func:`load_model` returns by default)."""
    return cfg.get("primary") or next(iter(cfg["models"]))


def _load_into(model: nn.Module, file: Path, device: torch.device | str) -> None:
    try:
        tensors = load_file(str(file), device=str(device))
    except Exception as exc:
        raise InputError(f"{file}: unreadable weights ({type(exc).__name__}: {exc})") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise InputError(f"{file}: weights do not match the architecture in config.json "
                         f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")


def load_model(path: str | os.PathLike, name: str | None = None, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint folder (or one of its .safetensors files).

    The architecture comes from config.json and the weights from safetensors only (no pickle).
    ``name`` picks another model saved with it (e.g. "discriminator"). Returns
    ``(model in eval mode on device, config dict)``.
    """
    d, fname = _checkpoint_dir(path)
    cfg = read_config(d)
    models = cfg["models"]
    if name is None and fname is not None:
        name = next((n for n, e in models.items() if e.get("file") == fname), None)
        if name is None:
            raise InputError(f"{path}: file is not listed in {d / 'config.json'}")
    name = name or _primary_name(cfg)
    if name not in models:
        raise InputError(f"{d}: checkpoint has no model {name!r} (has {', '.join(models)})")
    entry = models[name]
    try:
        model = build_model(entry["architecture"], entry.get("kwargs", {}))
    except (ValueError, TypeError) as exc:
        raise InputError(f"{d / 'config.json'}: cannot rebuild the model ({exc})") from None
    model.to(device)
    _load_into(model, d / entry["file"], device)
    model.eval()
    return model, cfg


def load_training_state(path: str | os.PathLike, models: Mapping[str, nn.Module],
                        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                        scaler: torch.amp.GradScaler | None = None,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights (and optimiser/scaler state when present) into existing objects, for
    resuming. Returns the checkpoint's config dict (epoch, metrics, state...)."""
    d, _ = _checkpoint_dir(path)
    cfg = read_config(d)
    for name, model in models.items():
        entry = cfg["models"].get(name)
        if entry is None:
            raise InputError(f"{d}: checkpoint has no model {name!r}")
        if entry["architecture"] != type(model).__name__ or \
                dict(entry.get("kwargs", {})) != dict(getattr(model, "arch_kwargs", {})):
            raise InputError(f"{d}: the saved {name} has another architecture "
                             f"({entry['architecture']} {entry.get('kwargs')}); use a new output "
                             "folder or resume=False")
        _load_into(model, d / entry["file"], device)
    opt_file, opt_json = d / "optimizer.safetensors", d / "optimizer.json"
    if optimizers and opt_file.is_file() and opt_json.is_file():
        tensors = load_file(str(opt_file), device="cpu")
        extra = json.loads(opt_json.read_text())
        for name, opt in optimizers.items():
            j = extra["optimizers"].get(name)
            if j is None:
                continue
            state: dict[int, dict[str, Any]] = {}
            prefix = f"{name}/"
            for key, val in tensors.items():
                if key.startswith(prefix):
                    _, idx, k = key.split("/", 2)
                    state.setdefault(int(idx), {})[k] = val
            for idx, sc in j.get("scalars", {}).items():
                state.setdefault(int(idx), {}).update(sc)
            opt.load_state_dict({"state": state, "param_groups": j["param_groups"]})
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
    return cfg
