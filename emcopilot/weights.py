"""Pretrained weights: the registry (``models/registry.toml``), local folders, the Hugging Face
Hub cache, offline handling, safe loading and publishing trained models.

Where :func:`resolve_weights` looks, in order:

1. an explicit ``path`` (the file itself, or a folder that contains the registered file name);
2. ``$EMCOPILOT_WEIGHTS_DIR`` and EMCopilot's own weights folder (``$EMCOPILOT_DATA/weights``,
   else ``~/.cache/emcopilot/weights``), where :func:`add_local_weights` copies files;
3. torch.hub's checkpoint cache, for entries marked ``torch_hub = true`` (metric backbones);
4. the Hugging Face cache (``cache_dir``, ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``) through
   :func:`huggingface_hub.hf_hub_download` with ``local_files_only=True``;
5. a download from the Hub, unless offline (``offline=True``, ``HF_HUB_OFFLINE=1`` or
   ``EMCOPILOT_OFFLINE=1``).

A registered sha256 is checked on every file before it is returned (streamed, and remembered per
path, size and mtime so a file is hashed once per process). Every failure is a
:class:`~emcopilot.errors.WeightsUnavailableError` whose one-line message says what is missing
and how to get it.

>>> path = resolve_weights("sam_vit_b")           # doctest: +SKIP
>>> state = load_state_dict(path)                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from .errors import EMCopilotError, InputError, WeightsUnavailableError

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml  # type: ignore[no-redef]

__all__ = [
    "WeightsEntry",
    "registry",
    "registry_path",
    "weights_dir",
    "is_offline",
    "resolve_weights",
    "weights_available",
    "add_local_weights",
    "sha256_file",
    "load_state_dict",
    "model_card",
    "push_model",
]

REGISTRY_PATH = Path(__file__).resolve().parents[1] / "models" / "registry.toml"
_TRUE = {"1", "true", "yes", "on"}
_HASH_CHUNK = 1 << 22  # 4 MiB


@dataclass(frozen=True)
class WeightsEntry:
    """One named entry of ``models/registry.toml``.

    ``size`` is in bytes (0 = unknown); ``sha256`` is "" when the hash is not confirmed.
    """

    name: str
    repo_id: str
    filename: str
    sha256: str = ""
    size: int = 0
    kind: str = ""
    description: str = ""
    licence: str = ""
    published: bool = True
    source_url: str = ""
    revision: str | None = None
    torch_hub: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def basename(self) -> str:
        """The file's name on disk (``filename`` without the folder it has in the Hub repo)."""
        return PurePosixPath(self.filename).name

    @property
    def hub_url(self) -> str:
        """The repository's page on the Hugging Face Hub."""
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def label(self) -> str:
        """Human name plus file name, e.g. ``SAM ViT-B weights (sam_vit_b_01ec64.pth)``."""
        return f"{self.description or self.name} weights ({self.basename})"


def registry_path() -> Path:
    """Path of the registry file (``$EMCOPILOT_REGISTRY`` overrides the bundled one)."""
    env = os.environ.get("EMCOPILOT_REGISTRY")
    return Path(env) if env else REGISTRY_PATH


_KNOWN_KEYS = {f for f in WeightsEntry.__dataclass_fields__ if f not in ("name", "extra")}


def registry() -> dict[str, WeightsEntry]:
    """Read the weights registry: ``{name: WeightsEntry}`` in file order."""
    path = registry_path()
    try:
        with open(path, "rb") as f:
            data = _toml.load(f)
    except FileNotFoundError:
        raise EMCopilotError(f"the weights registry {path} is missing: reinstall EMcopilot "
                             "or set $EMCOPILOT_REGISTRY to a registry.toml") from None
    except _toml.TOMLDecodeError as exc:
        raise EMCopilotError(f"the weights registry {path} is not valid TOML ({exc}): "
                             "fix or restore the file") from None
    out: dict[str, WeightsEntry] = {}
    for name, table in data.items():
        if not isinstance(table, dict) or "repo_id" not in table or "filename" not in table:
            raise EMCopilotError(f"weights registry {path}: entry [{name}] needs repo_id and "
                                 "filename: fix the file")
        known = {k: v for k, v in table.items() if k in _KNOWN_KEYS}
        extra = {k: v for k, v in table.items() if k not in _KNOWN_KEYS}
        known["sha256"] = str(known.get("sha256") or "").lower()
        known["size"] = int(known.get("size") or 0)
        out[name] = WeightsEntry(name=name, extra=extra, **known)
    return out


# ---------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------

def _default_weights_dir() -> Path:
    data = os.environ.get("EMCOPILOT_DATA")
    if data:
        return Path(data).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "emcopilot" / "weights"


def weights_dir() -> Path:
    """Folder for weights copied by hand: ``$EMCOPILOT_WEIGHTS_DIR``, else
    ``$EMCOPILOT_DATA/weights``, else ``~/.cache/emcopilot/weights`` (not created here)."""
    env = os.environ.get("EMCOPILOT_WEIGHTS_DIR")
    return Path(env).expanduser() if env else _default_weights_dir()


def _local_dirs() -> list[Path]:
    """``$EMCOPILOT_WEIGHTS_DIR`` (if set) first, then EMcopilot's default weights folder."""
    dirs = [weights_dir()]
    if _default_weights_dir() != dirs[0]:
        dirs.append(_default_weights_dir())
    return dirs


def _hub_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The Hugging Face hub cache, read from the environment at call time (not import time)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _torch_hub_file(entry: WeightsEntry) -> Path | None:
    if not entry.torch_hub:
        return None
    try:
        import torch.hub
    except ImportError:  # pragma: no cover
        return None
    p = Path(torch.hub.get_dir()) / "checkpoints" / entry.basename
    return p if p.is_file() else None


def is_offline(offline: bool | None = None) -> bool:
    """True when no download may be tried: ``offline`` if given, else ``HF_HUB_OFFLINE`` or
    ``EMCOPILOT_OFFLINE`` set to 1/true."""
    if offline is not None:
        return bool(offline)
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "EMCOPILOT_OFFLINE"))


# ---------------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------------

_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file (hex), streamed in 4 MiB blocks; remembered per (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(block)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def _verify(entry: WeightsEntry, path: Path, where: str) -> Path:
    if entry.size and path.stat().st_size != entry.size:
        raise WeightsUnavailableError(
            f"{entry.label} at {path} ({where}) has {path.stat().st_size} bytes, expected "
            f"{entry.size} (incomplete or a different file): delete it and {_fetch_hint(entry)}")
    if entry.sha256:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise WeightsUnavailableError(
                f"{entry.label} at {path} ({where}) has sha256 {digest[:12]}..., expected "
                f"{entry.sha256[:12]}... (corrupt or a different file): delete it and "
                f"{_fetch_hint(entry)}")
    return path


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------

def _fetch_hint(entry: WeightsEntry) -> str:
    """The way forward, as the tail of a one-line message."""
    here = weights_dir()
    if entry.published:
        src = entry.hub_url
        if entry.source_url:
            src += f" (or {entry.source_url})"
        hint = (f"download them from {src} on a machine with internet and put the file "
                f"{entry.basename} in $EMCOPILOT_WEIGHTS_DIR (default {here})")
    elif entry.source_url:
        hint = (f"no Hub mirror is published yet ({entry.repo_id}): download the file from "
                f"{entry.source_url} and put it as {entry.basename} in $EMCOPILOT_WEIGHTS_DIR "
                f"(default {here})")
    else:
        hint = (f"they are not yet published on the Hub ({entry.repo_id}); train your own model "
                "in EMcopilot or pass a checkpoint file")
    if entry.kind == "sam":
        hint += ", or pass --sam-checkpoint FILE; the classical masker works without weights"
    elif entry.kind == "metric":
        hint += "; the other metrics work without it"
    return hint


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unknown(name: str, reg: Mapping[str, WeightsEntry]) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"unknown weights name {name!r}: use one of {', '.join(sorted(reg))} "
        f"(listed in {registry_path()})")


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------

def _explicit(entry: WeightsEntry, path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        f = p / entry.basename
        if not f.is_file():
            raise WeightsUnavailableError(
                f"{entry.label} are not in the folder {p}: put {entry.basename} there, or "
                f"{_fetch_hint(entry)}")
        return _verify(entry, f, "given folder")
    if p.is_file():
        return _verify(entry, p, "given path")
    raise WeightsUnavailableError(f"{entry.label}: the given path {p} does not exist: check the "
                                  f"path, or {_fetch_hint(entry)}")


def _silent_tqdm():
    from tqdm.auto import tqdm

    class _Silent(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


def _from_hub(entry: WeightsEntry, cache: Path, *, local_only: bool, progress: bool) -> Path:
    from huggingface_hub import hf_hub_download

    kwargs: dict[str, Any] = dict(repo_id=entry.repo_id, filename=entry.filename,
                                  revision=entry.revision, cache_dir=str(cache),
                                  local_files_only=local_only)
    if not progress:
        kwargs["tqdm_class"] = _silent_tqdm()
    return Path(hf_hub_download(**kwargs))


def _cached_on_hub(entry: WeightsEntry, cache: Path) -> Path | None:
    """The file from the local HF cache, or None. Never touches the network."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        p = _from_hub(entry, cache, local_only=True, progress=False)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None
    except Exception:  # a malformed cache folder is "not cached", not a crash
        return None
    return p if p.is_file() else None


def resolve_weights(name: str, *, path: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, offline: bool | None = None,
                    progress: bool = True) -> Path:
    """Return the local path of the registered weights ``name``, downloading them if allowed.

    Args:
        name: registry name, e.g. ``"sam_vit_b"`` (see :func:`registry`).
        path: a file, or a folder containing the registered file name; used instead of any
            other source (and still hash-checked).
        cache_dir: Hugging Face cache folder (default ``$HF_HUB_CACHE`` / ``$HF_HOME/hub``).
        offline: never download; ``None`` reads ``HF_HUB_OFFLINE`` / ``EMCOPILOT_OFFLINE``.
        progress: show the Hub's download progress bar.

    Raises:
        WeightsUnavailableError: unknown name, missing file, wrong hash, offline and not cached,
            not published, or a network error; the message says how to get the file.
    """
    reg = registry()
    if name not in reg:
        raise _unknown(name, reg)
    entry = reg[name]
    if path is not None:
        return _explicit(entry, path)

    for d in _local_dirs():
        f = d / entry.basename
        if f.is_file():
            return _verify(entry, f, "weights folder")

    th = _torch_hub_file(entry)
    if th is not None:
        return _verify(entry, th, "torch hub cache")

    cache = _hub_cache_dir(cache_dir)
    cached = _cached_on_hub(entry, cache)
    if cached is not None:
        return _verify(entry, cached, "Hugging Face cache")

    if not entry.published:
        raise WeightsUnavailableError(f"{entry.label} are not on this machine: "
                                      f"{_fetch_hint(entry)}")
    if is_offline(offline):
        raise WeightsUnavailableError(
            f"{entry.label} are not on this machine and the Hub cannot be reached (offline "
            f"mode): {_fetch_hint(entry)}")
    try:
        got = _from_hub(entry, cache, local_only=False, progress=progress)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise WeightsUnavailableError(
            f"{entry.label} are not on this machine and the download from {entry.hub_url} "
            f"failed ({_one_line(exc)}): {_fetch_hint(entry)}") from exc
    return _verify(entry, got, "downloaded")


def weights_available(name: str, *, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the weights are on this machine (weights folders, torch hub cache, HF cache)
    with the registered size. Local look-ups only: never the network, never a full hash."""
    try:
        reg = registry()
    except EMCopilotError:
        return False
    entry = reg.get(name)
    if entry is None:
        return False
    candidates = [d / entry.basename for d in _local_dirs()]
    th = _torch_hub_file(entry)
    if th is not None:
        candidates.append(th)
    for c in candidates:
        if c.is_file():
            return not entry.size or c.stat().st_size == entry.size
    cached = _cached_on_hub(entry, _hub_cache_dir(cache_dir))
    return cached is not None and (not entry.size or cached.stat().st_size == entry.size)


def add_local_weights(name: str, file: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check ``file`` against the registry entry ``name`` (size, sha256) and copy it into
    :func:`weights_dir` under its registered file name. Returns the new path.

    Raises:
        WeightsUnavailableError: unknown name, or a file that is not the registered one.
        InputError: ``file`` does not exist.
    """
    reg = registry()
    if name not in reg:
        raise _unknown(name, reg)
    entry = reg[name]
    src = Path(file).expanduser()
    if not src.is_file():
        raise InputError(f"{src} is not a file: pass the downloaded {entry.basename}")
    _verify(entry, src, "file to add")
    dest_dir = weights_dir()
    dest = dest_dir / entry.basename
    if dest.exists() and not overwrite and dest.resolve() != src.resolve():
        try:
            return _verify(entry, dest, "weights folder")
        except WeightsUnavailableError:
            pass  # a bad copy is there: replace it
    if dest.exists() and dest.resolve() == src.resolve():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.basename}.", suffix=".tmp", dir=dest_dir)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a state dict without executing code: ``.safetensors`` via safetensors, ``.pth`` /
    ``.pt`` via ``torch.load(weights_only=True)`` (a ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper is unwrapped). Tensors are loaded on the CPU.

    Raises:
        InputError: missing file, other suffix, or a file that is not a plain tensor dict
            (e.g. a pickle holding arbitrary objects, which is refused, not executed).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"checkpoint {p} does not exist: check the path")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"checkpoint {p} is not a valid safetensors file "
                             f"({_one_line(exc)}): re-export it") from None
    if suffix in (".pth", ".pt"):
        import pickle

        import torch

        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
                TypeError) as exc:
            raise InputError(
                f"checkpoint {p} cannot be loaded safely (weights_only; it holds more than "
                f"tensors or is damaged: {_one_line(exc)}): save a plain state_dict or use "
                ".safetensors") from None
        if isinstance(obj, dict):
            for key in ("state_dict", "model"):
                inner = obj.get(key)
                if isinstance(inner, dict) and inner and all(
                        isinstance(v, torch.Tensor) for v in inner.values()):
                    return dict(inner)
            if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
                return dict(obj)
        raise InputError(f"checkpoint {p} is not a state dict of tensors: save "
                         "model.state_dict() or use .safetensors")
    raise InputError(f"checkpoint {p} has suffix {p.suffix!r}: use .safetensors, .pth or .pt")


# ---------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------

_CARD_FIELDS = [
    ("task", "Task"),
    ("architecture", "Architecture"),
    ("material_system", "Material system"),
    ("imaging_mode", "Imaging mode"),
    ("pixel_size_nm", "Pixel size (nm/px)"),
    ("image_size", "Training image size (px)"),
    ("training_data", "Training data"),
    ("training", "Training"),
    ("emcopilot_version", "EMcopilot version"),
]


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "not stated"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return " ".join(str(value).split())


def model_card(card: Mapping[str, Any]) -> str:
    """Render a Hugging Face model card (README.md with YAML metadata) for an EMcopilot model.

    Known keys: ``title``, ``description``, ``task`` ("generator" / "segmentor"),
    ``architecture``, ``material_system``, ``imaging_mode`` (e.g. "HAADF-STEM"),
    ``pixel_size_nm`` (float, nm per pixel), ``image_size``, ``training_data``, ``training``,
    ``metrics`` (``{name: value}``), ``licence``, ``tags``, ``emcopilot_version`` (default: this
    package's version). Other keys are listed under "Other details". Missing values read
    "not stated".
    """
    from huggingface_hub import ModelCardData

    from . import __version__

    card = dict(card)
    card.setdefault("emcopilot_version", __version__)
    task = str(card.get("task") or "")
    tags = ["emcopilot", "electron-microscopy", "nanoparticles"]
    if card.get("imaging_mode"):
        tags.append(str(card["imaging_mode"]).lower().replace(" ", "-"))
    if task:
        tags.append(task)
    tags += [str(t) for t in card.get("tags", []) if str(t) not in tags]
    metrics = dict(card.get("metrics") or {})
    data = ModelCardData(
        license=str(card.get("licence") or card.get("license") or "mit").lower(),
        library_name="emcopilot",
        tags=tags,
        pipeline_tag="image-segmentation" if task == "segmentor" else
        ("image-to-image" if task == "generator" else None),
    )
    title = card.get("title") or card.get("model_name") or (
        f"EMcopilot {task}" if task else "EMcopilot model")
    lines = ["---", data.to_yaml().strip(), "---", "", f"# {_fmt(title)}", ""]
    if card.get("description"):
        lines += [_fmt(card["description"]), ""]
    lines += ["Trained with EMcopilot: self-supervised segmentation of electron micrographs "
              "(method of Yuan et al., generative learning of morphological and contrast "
              "heterogeneities).", "", "## Model details", ""]
    for key, label in _CARD_FIELDS:
        lines.append(f"- **{label}:** {_fmt(card.get(key))}")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| Metric | Value |", "|---|---|"]
        lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines.append("No metrics stated.")
    known = {k for k, _ in _CARD_FIELDS} | {"title", "model_name", "description", "metrics",
                                            "licence", "license", "tags"}
    other = {k: v for k, v in card.items() if k not in known}
    if other:
        lines += ["", "## Other details", ""]
        lines += [f"- **{_fmt(k)}:** {_fmt(v)}" for k, v in other.items()]
    lines += ["", "## Use", "", "Files: `config.json` (architecture and settings) and "
              "`*.safetensors` (weights; no pickled code). Load them with EMcopilot, e.g. "
              "`emcopilot.weights.load_state_dict(path)`.", "",
              "The model was trained for the material system and imaging mode above; check its "
              "masks on a few of your own images before trusting particle statistics.", ""]
    return "\n".join(lines)


def push_model(checkpoint_dir: str | os.PathLike, repo_id: str, *, token: str | None = None,
               card: Mapping[str, Any], private: bool = False,
               progress: Callable[[int, int, str], None] | None = None) -> str:
    """Publish a trained model folder (``*.safetensors`` + ``config.json``) to the Hugging Face
    Hub with a generated README.md model card (:func:`model_card`). Card fields missing from
    ``card`` (task, architecture, metrics, training_data, ...) are taken from ``config.json``
    when it records them. Only ``*.safetensors`` and ``*.json`` files are uploaded; the folder
    itself is not modified. Returns the repo URL.

    Raises:
        InputError: the folder lacks safetensors weights or config.json, or a bad repo id.
        EMCopilotError: the Hub refused or could not be reached (one line with the reason).
    """
    from huggingface_hub import HfApi

    src = Path(checkpoint_dir).expanduser()
    if not src.is_dir():
        raise InputError(f"{src} is not a folder: pass the trained model's checkpoint folder")
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise InputError(f"{src} has no .safetensors weights: export the model first")
    if not (src / "config.json").is_file():
        raise InputError(f"{src} has no config.json: export the model with its config first")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InputError(f"repo id {repo_id!r} must be 'owner/name', e.g. 'my-lab/ptsn-segmentor'")
    import json

    try:
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{src / 'config.json'} is not valid JSON ({_one_line(exc)}): "
                         "re-export the model") from None
    # what the training run recorded fills the card; the caller's values win
    recorded = {k: config[k] for k in ("task", "architecture", "metrics", "training_data",
                                       "image_size", "material_system", "imaging_mode",
                                       "pixel_size_nm") if isinstance(config, dict) and
                config.get(k) not in (None, "", {})}
    card = {**recorded, **{k: v for k, v in dict(card).items() if v not in (None, "")}}
    files = weights + sorted(p for p in src.glob("*.json") if p.is_file())
    total = len(files) + 2
    if progress:
        progress(0, total, "preparing upload")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="emcopilot-push-") as tmp:
        stage = Path(tmp)
        for i, f in enumerate(files, 1):
            try:
                os.link(f, stage / f.name)
            except OSError:
                shutil.copy2(f, stage / f.name)
            if progress:
                progress(i, total, f"staged {f.name}")
        (stage / "README.md").write_text(model_card(card), encoding="utf-8")
        try:
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            if progress:
                progress(len(files) + 1, total, f"uploading to {repo_id}")
            api.upload_folder(repo_id=repo_id, folder_path=str(stage), token=token,
                              commit_message="Upload EMcopilot model")
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise EMCopilotError(
                f"publishing to https://huggingface.co/{repo_id} failed ({_one_line(exc)}): "
                "check the internet connection and that the token (HF_TOKEN or token=) may "
                "write to that repo") from exc
    if progress:
        progress(total, total, "published")
    return str(url) if url else f"https://huggingface.co/{repo_id}"
