"""Read micrographs (PNG/JPEG/TIFF, DM3/DM4, Velox EMD, HyperSpy HSPY) with their calibration,
normalise them, and read/write label maps and images.

Units: ``pixel_size_nm`` is the edge length of one pixel in nanometres (``None`` when the file
carries no usable calibration). Images are 2-D ``numpy.float32`` arrays on the file's raw
intensity scale; :func:`normalize` maps them to ``image01`` (float32 in [0, 1]).

>>> mg = read_micrograph("examples/catalysts/images/Pt4.jpg")
>>> image01 = normalize(mg.image)
>>> detect_polarity(image01)
'bright'
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from emcopilot.atomic import atomic_path
from emcopilot.errors import InputError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "MAX_PIXELS",
    "Micrograph",
    "read_micrograph",
    "iter_frames",
    "list_images",
    "normalize",
    "to_uint8",
    "detect_polarity",
    "bright_particles",
    "safe_stem",
    "read_label_map",
    "write_label_map",
    "write_image",
    "unit_to_nm",
]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
DM_SUFFIXES = (".dm3", ".dm4")
RSCIIO_SUFFIXES = DM_SUFFIXES + (".emd", ".hspy")
SUPPORTED_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + TIFF_SUFFIXES + RSCIIO_SUFFIXES


def _env_max_pixels(default: int = 2**28) -> int:
    raw = os.environ.get("EMCOPILOT_MAX_PIXELS", "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        return default
    return value if value > 0 else default


#: Largest image (pixels per frame, height x width) that is decoded; larger headers are refused
#: before any pixel data is read. Default 2**28; set ``EMCOPILOT_MAX_PIXELS`` to change it.
MAX_PIXELS: int = _env_max_pixels()

# Pixel sizes derived from generic TIFF resolution tags (inch/cm units) above this are the
# default DPI of a graphics program (72 dpi = 0.35 mm), not a calibration.
_MAX_TAG_PIXEL_NM = 10_000.0


def _max_pixels() -> int:
    """The pixel limit now: the environment variable wins over the module constant."""
    if os.environ.get("EMCOPILOT_MAX_PIXELS", "").strip():
        return _env_max_pixels(MAX_PIXELS)
    return int(MAX_PIXELS)


@dataclass
class Micrograph:
    """One 2-D micrograph frame.

    image: float32 (H, W), grey, raw intensity scale of the file.
    pixel_size_nm: edge of one pixel in nm, or None when unknown.
    name: file stem. metadata: raw metadata (JSON-serialisable where possible); ``warnings`` lists
    repairs made while reading. source: the file read. frame/n_frames: index in a stack.
    """

    image: np.ndarray
    pixel_size_nm: float | None
    name: str
    metadata: dict = field(default_factory=dict)
    source: Path | None = None
    frame: int = 0
    n_frames: int = 1


# --------------------------------------------------------------------------- units

_UNIT_NM = {
    "m": 1e9, "meter": 1e9, "metre": 1e9, "meters": 1e9, "metres": 1e9,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3, "\\u00b5m": 1e3,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "a": 0.1, "å": 0.1, "Å": 0.1, "angstrom": 0.1, "angstroms": 0.1, "\\u00c5": 0.1,
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
    "in": 2.54e7, "inch": 2.54e7,
}


def unit_to_nm(value: float, unit: str) -> float:
    """Convert a length ``value`` given in ``unit`` to nanometres.

    Units: m, cm, mm, µm/um/micron, nm, Å/A/angstrom, pm, inch (case-insensitive).
    Raises InputError for an unknown unit or a value that is not a finite number.

    >>> unit_to_nm(0.001249, "µm")
    1.249
    """
    key = str(unit).strip().lower()
    key = key.replace("\u212b", "å")  # ANGSTROM SIGN -> LATIN A WITH RING
    if key not in _UNIT_NM:
        raise InputError(f"unknown length unit {unit!r} (expected m, mm, µm, nm, Å or pm)")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"pixel size {value!r} is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"pixel size {value!r} is not a finite number")
    return v * _UNIT_NM[key]


def _pixel_size_or_none(value: Any, unit: Any, warn: list[str], what: str) -> float | None:
    """unit_to_nm that returns None (and notes why) for unknown units / non-positive sizes."""
    try:
        nm = unit_to_nm(value, unit)
    except InputError as exc:
        warn.append(f"{what}: {exc}; pixel size unknown")
        return None
    if not nm > 0:
        warn.append(f"{what}: non-positive pixel size {value!r} {unit!r}; pixel size unknown")
        return None
    return float(nm)


# --------------------------------------------------------------------------- metadata helpers

def _jsonable(obj: Any, depth: int = 0) -> Any:
    """Best-effort conversion of metadata to JSON-serialisable Python objects."""
    if depth > 12:
        return str(obj)
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, (bytes, bytearray)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(obj)} bytes>"
    if isinstance(obj, np.ndarray):
        if obj.size <= 256:
            return _jsonable(obj.tolist(), depth + 1)
        return f"<array shape={list(obj.shape)} dtype={obj.dtype}>"
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        items = list(obj)
        if len(items) > 256:
            return f"<{type(obj).__name__} of {len(items)} items>"
        return [_jsonable(v, depth + 1) for v in items]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), depth + 1)
    return str(obj)


def _check_pixels(path: Path, height: int, width: int) -> None:
    limit = _max_pixels()
    if height <= 0 or width <= 0:
        raise InputError(f"{path.name}: image has no pixels ({height} x {width})")
    if int(height) * int(width) > limit:
        raise InputError(
            f"{path.name}: image is {width} x {height} pixels, more than the limit of {limit:,} "
            "(set EMCOPILOT_MAX_PIXELS to raise it, or crop the image)")


def _to_grey(arr: np.ndarray, path: Path, colour_axis_last: bool = True) -> np.ndarray:
    """(H, W), (H, W, 1..4) -> float32 (H, W). RGB(A) -> ITU-R 601 luminance; alpha ignored."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.ndim == 3 and not colour_axis_last and a.shape[0] in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3:
        c = a.shape[-1]
        if c == 1:
            a = a[..., 0]
        elif c == 2:  # grey + alpha
            a = a[..., 0]
        elif c in (3, 4):
            rgb = a[..., :3].astype(np.float32)
            a = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        else:
            raise InputError(f"{path.name}: cannot read an image with {c} channels as grey")
    if a.ndim != 2:
        raise InputError(f"{path.name}: expected a 2-D image, got an array of shape {a.shape}")
    if np.iscomplexobj(a):
        a = np.abs(a)
    return np.ascontiguousarray(a, dtype=np.float32)


def _repair(image: np.ndarray, path: Path, warn: list[str]) -> np.ndarray:
    """Replace NaN/inf pixels by the median of the finite ones; all-NaN -> InputError."""
    finite = np.isfinite(image)
    if finite.all():
        return image
    n_bad = int(image.size - finite.sum())
    if not finite.any():
        raise InputError(f"{path.name}: image has no finite pixel values (all NaN/inf)")
    fill = float(np.median(image[finite]))
    image = image.copy()
    image[~finite] = fill
    warn.append(f"{n_bad} NaN/inf pixel(s) replaced by the median {fill:g}")
    return image


# --------------------------------------------------------------------------- PIL (PNG/JPEG)

_PIL_LOCK = threading.Lock()


def _pil_open(path: Path):
    """Image.open with PIL's own bomb check off (our MAX_PIXELS check replaces it)."""
    from PIL import Image

    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _pil_to_array(im, path: Path) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    arr = np.asarray(im)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _read_pil(path: Path, frame: int, all_frames: bool = False) -> Iterator[Micrograph]:
    from PIL import Image, UnidentifiedImageError

    try:
        im = _pil_open(path)
    except UnidentifiedImageError:
        raise InputError(f"{path.name}: not a readable {path.suffix.lower()[1:].upper()} image "
                         "(corrupt or a different file type)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{path.name}: cannot open image ({_short(exc)})") from None
    with im:
        width, height = im.size
        _check_pixels(path, height, width)
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        frames = range(n_frames) if all_frames else [frame]
        if not all_frames and not 0 <= frame < n_frames:
            raise InputError(f"{path.name}: frame {frame} out of range (file has {n_frames})")
        meta: dict[str, Any] = {"format": im.format, "mode": im.mode,
                                "info": _jsonable({k: v for k, v in im.info.items()
                                                   if k not in ("icc_profile", "exif")})}
        for i in frames:
            warn: list[str] = []
            try:
                if n_frames > 1:
                    im.seek(i)
                im.load()
                arr = _pil_to_array(im, path)
            except InputError:
                raise
            except Exception as exc:  # truncated / corrupt data: PIL raises OSError, ValueError...
                raise InputError(f"{path.name}: image data is truncated or corrupt "
                                 f"({_short(exc)})") from None
            image = _repair(_to_grey(arr, path), path, warn)
            md = dict(meta)
            md["dtype"] = str(arr.dtype)
            md["warnings"] = warn
            yield Micrograph(image=image, pixel_size_nm=None, name=path.stem, metadata=md,
                             source=path, frame=i, n_frames=n_frames)


def _short(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg[:160]


# --------------------------------------------------------------------------- TIFF

def _tiff_pixel_size(tf, page, warn: list[str]) -> tuple[float | None, dict]:
    """Pixel size (nm) from ImageJ metadata, FEI/Zeiss SEM metadata or resolution tags."""
    info: dict[str, Any] = {}
    # FEI / Thermo Fisher SEM/FIB metadata: PixelWidth in metres.
    fei = getattr(tf, "fei_metadata", None)
    if fei:
        info["fei_metadata"] = _jsonable(fei)
        try:
            px = fei.get("Scan", {}).get("PixelWidth") or fei.get("EScan", {}).get("PixelWidth")
            if px:
                nm = _pixel_size_or_none(px, "m", warn, "FEI metadata")
                if nm:
                    return nm, info
        except AttributeError:
            pass
    sem = getattr(tf, "sem_metadata", None)  # Zeiss SEM
    if sem:
        info["sem_metadata"] = _jsonable(sem)
        ps = sem.get("ap_image_pixel_size") if isinstance(sem, dict) else None
        if isinstance(ps, (list, tuple)) and len(ps) >= 3:
            nm = _pixel_size_or_none(ps[1], ps[2], warn, "Zeiss SEM metadata")
            if nm:
                return nm, info
    tags = page.tags
    xres = tags.get("XResolution")
    if xres is None:
        return None, info
    try:
        num, den = xres.value
        ppu = float(num) / float(den)  # pixels per unit
    except (TypeError, ValueError, ZeroDivisionError):
        return None, info
    info["x_resolution"] = ppu
    if not ppu > 0 or not math.isfinite(ppu):
        return None, info
    ij = getattr(tf, "imagej_metadata", None)
    if ij:
        info["imagej_metadata"] = _jsonable(ij)
        unit = ij.get("unit")
        if unit and str(unit).strip().lower() not in ("pixel", "pixels", "px", ""):
            return _pixel_size_or_none(1.0 / ppu, str(unit), warn, "ImageJ metadata"), info
        return None, info
    ru = tags.get("ResolutionUnit")
    ru_value = int(ru.value) if ru is not None else 2  # TIFF default: inch
    info["resolution_unit"] = ru_value
    unit = {2: "inch", 3: "cm"}.get(ru_value)
    if unit is None:  # 1 = no absolute unit
        return None, info
    nm = unit_to_nm(1.0 / ppu, unit)
    if nm > _MAX_TAG_PIXEL_NM:  # e.g. 72 dpi: a graphics default, not a calibration
        return None, info
    return nm, info


def _tiff_frames(series) -> tuple[int, str, tuple[int, ...]]:
    """(number of frames, per-frame axes, per-frame shape) of a tifffile series."""
    axes = series.axes
    shape = tuple(int(s) for s in series.shape)
    keep = [i for i, a in enumerate(axes) if a in "YXS"]
    n = 1
    for i, s in enumerate(shape):
        if i not in keep:
            n *= s
    frame_axes = "".join(axes[i] for i in keep)
    frame_shape = tuple(shape[i] for i in keep)
    return n, frame_axes, frame_shape


def _read_tiff(path: Path, frame: int, all_frames: bool = False) -> Iterator[Micrograph]:
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:
        raise InputError(f"{path.name}: not a readable TIFF file ({_short(exc)})") from None
    with tf:
        try:
            series = tf.series[0]
            n_frames, faxes, fshape = _tiff_frames(series)
            page = tf.pages.first
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path.name}: corrupt TIFF file ({_short(exc)})") from None
        if "Y" not in faxes or "X" not in faxes:
            raise InputError(f"{path.name}: TIFF has no 2-D image (axes {series.axes})")
        height, width = fshape[faxes.index("Y")], fshape[faxes.index("X")]
        _check_pixels(path, height, width)
        if not all_frames and not 0 <= frame < n_frames:
            raise InputError(f"{path.name}: frame {frame} out of range (file has {n_frames})")
        warn0: list[str] = []
        try:
            px_nm, cal = _tiff_pixel_size(tf, page, warn0)
        except InputError:
            px_nm, cal = None, {}
        meta = {"format": "TIFF", "axes": series.axes, "shape": list(series.shape),
                "dtype": str(series.dtype), **cal}
        if page.description:
            meta["description"] = page.description[:4000]
        frames = range(n_frames) if all_frames else [frame]
        pages_ok = len(series.pages) == n_frames and all(p is not None for p in series.pages)
        whole: np.ndarray | None = None
        for i in frames:
            warn = list(warn0)
            try:
                if n_frames == 1:
                    arr = series.asarray()
                elif pages_ok:
                    arr = tf.asarray(key=i, series=0)
                else:  # contiguous/truncated stack (e.g. big ImageJ files): one memory map
                    if whole is None:
                        whole = series.asarray(out="memmap")
                        whole = whole.reshape((n_frames,) + fshape)
                    arr = np.asarray(whole[i])
            except Exception as exc:
                raise InputError(f"{path.name}: TIFF image data is truncated or corrupt "
                                 f"({_short(exc)})") from None
            arr = np.asarray(arr).reshape(fshape)
            # Put samples last: per-frame axes are some order of Y, X, (S).
            order = [faxes.index("Y"), faxes.index("X")] + ([faxes.index("S")] if "S" in faxes else [])
            arr = np.transpose(arr, order)
            image = _repair(_to_grey(arr, path), path, warn)
            md = dict(meta)
            md["warnings"] = warn
            yield Micrograph(image=image, pixel_size_nm=px_nm, name=path.stem, metadata=md,
                             source=path, frame=i, n_frames=n_frames)


# --------------------------------------------------------------------------- rosettasciio

def _rsciio_reader(suffix: str):
    if suffix in DM_SUFFIXES:
        from rsciio.digitalmicrograph import file_reader
    elif suffix == ".emd":
        from rsciio.emd import file_reader
    else:
        from rsciio.hspy import file_reader
    return file_reader


def _signal_axes(sig: dict) -> list[dict]:
    axes = list(sig.get("axes") or [])
    sig_axes = [a for a in axes if not a.get("navigate", False)]
    return sig_axes


def _signal_title(sig: dict) -> str:
    try:
        return str(sig.get("metadata", {}).get("General", {}).get("title", ""))
    except AttributeError:
        return ""


def _pick_image_signal(signals: list[dict], path: Path) -> tuple[dict, list[str]]:
    """The 2-D image signal of a file (prefer HAADF/ADF, then the largest image)."""
    titles = [_signal_title(s) for s in signals]
    images = []
    for idx, s in enumerate(signals):
        shape = tuple(getattr(s.get("data"), "shape", ()))
        sig_axes = _signal_axes(s)
        if len(sig_axes) == 2 or (not sig_axes and len(shape) in (2, 3)):
            images.append(idx)
    if not images:
        raise InputError(f"{path.name}: no 2-D image in the file (signals: "
                         f"{', '.join(t or '?' for t in titles) or 'none'})")

    def rank(idx: int) -> tuple:
        t = titles[idx].upper()
        shape = tuple(getattr(signals[idx].get("data"), "shape", ()))
        n_sig = int(np.prod(shape[-2:])) if len(shape) >= 2 else 0
        return ("HAADF" in t, "DF" in t or "ADF" in t, n_sig)

    best = max(images, key=rank)
    return signals[best], titles


def _read_rsciio(path: Path, frame: int, all_frames: bool = False) -> Iterator[Micrograph]:
    suffix = path.suffix.lower()
    reader = _rsciio_reader(suffix)
    kwargs: dict[str, Any] = {"lazy": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signals = reader(str(path), **kwargs)
    except Exception as exc:
        raise InputError(f"{path.name}: cannot read {suffix[1:].upper()} file "
                         f"({_short(exc)})") from None
    if isinstance(signals, dict):
        signals = [signals]
    if not signals:
        raise InputError(f"{path.name}: the file contains no data")
    sig, titles = _pick_image_signal(list(signals), path)
    data = sig["data"]
    shape = tuple(int(s) for s in data.shape)
    axes = list(sig.get("axes") or [])
    # Signal axes (navigate False) in array order; the last two dims are the image.
    if len(shape) < 2:
        raise InputError(f"{path.name}: data of shape {shape} is not an image")
    height, width = shape[-2], shape[-1]
    _check_pixels(path, height, width)
    n_frames = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    if not all_frames and not 0 <= frame < n_frames:
        raise InputError(f"{path.name}: frame {frame} out of range (file has {n_frames})")
    warn0: list[str] = []
    px_nm = None
    by_index = sorted(axes, key=lambda a: int(a.get("index_in_array", axes.index(a))))
    x_axis = None
    if len(by_index) == len(shape):
        x_axis = by_index[-1]
    else:
        sig_axes = [a for a in axes if not a.get("navigate", False)]
        x_axis = sig_axes[-1] if sig_axes else None
    if x_axis is not None:
        unit = x_axis.get("units")
        scale = x_axis.get("scale", 1.0)
        if unit is None or str(unit).strip() in ("", "<undefined>", "px", "pixel", "pixels"):
            warn0.append("no length unit on the image axes; pixel size unknown")
        else:
            px_nm = _pixel_size_or_none(scale, str(unit), warn0, "axis calibration")
    meta = {"format": suffix[1:].upper(), "shape": list(shape), "dtype": str(data.dtype),
            "title": _signal_title(sig), "axes": _jsonable(axes),
            "metadata": _jsonable(sig.get("metadata", {})),
            "original_metadata": _jsonable(sig.get("original_metadata", {}))}
    if len(titles) > 1:
        meta["signals"] = titles
    flat = data.reshape((n_frames, height, width)) if len(shape) != 3 else data
    frames = range(n_frames) if all_frames else [frame]
    for i in frames:
        warn = list(warn0)
        try:
            block = flat[i] if len(shape) > 2 else data
            arr = np.asarray(block.compute() if hasattr(block, "compute") else block)
        except Exception as exc:
            raise InputError(f"{path.name}: image data is truncated or corrupt "
                             f"({_short(exc)})") from None
        image = _repair(_to_grey(arr, path), path, warn)
        md = dict(meta)
        md["warnings"] = warn
        yield Micrograph(image=image, pixel_size_nm=px_nm, name=path.stem, metadata=md,
                         source=path, frame=i, n_frames=n_frames)


# --------------------------------------------------------------------------- public readers

def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"{p.name}: unsupported file type {p.suffix or '(none)'!r}; use one of "
                         f"{', '.join(SUPPORTED_SUFFIXES)}")
    if not p.exists():
        raise InputError(f"{p.name}: file not found ({p})")
    if not p.is_file():
        raise InputError(f"{p.name}: not a file ({p})")
    if p.stat().st_size == 0:
        raise InputError(f"{p.name}: file is empty (0 bytes)")
    return p


def _frames(path: Path, frame: int, all_frames: bool) -> Iterator[Micrograph]:
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return _read_pil(path, frame, all_frames)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, frame, all_frames)
    return _read_rsciio(path, frame, all_frames)


def read_micrograph(path: str | os.PathLike, frame: int = 0) -> Micrograph:
    """Read one frame of a micrograph as float32 grey with its pixel size (nm, or None).

    Supports PNG/JPEG (8/16-bit, RGB(A) -> luminance), TIFF (8/16/32-bit, float, RGB, stacks,
    ImageJ/FEI/Zeiss/resolution-tag calibration), DM3/DM4, Velox EMD and HSPY (axis calibration).
    Raises InputError (one line naming the file) for anything unreadable.
    """
    p = _check_file(path)
    if not isinstance(frame, (int, np.integer)) or frame < 0:
        raise InputError(f"{p.name}: frame must be a non-negative integer, got {frame!r}")
    return next(iter(_frames(p, int(frame), all_frames=False)))


def iter_frames(path: str | os.PathLike) -> Iterator[Micrograph]:
    """Yield every frame of a file (TIFF stacks, 3-D DM/EMD/HSPY: frames along the first axes);
    a single image yields one Micrograph."""
    p = _check_file(path)
    yield from _frames(p, 0, all_frames=True)


def list_images(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files with a supported suffix among ``paths`` (files and folders, not recursive), sorted.

    Hidden files (names starting with '.') in folders are skipped. InputError if none is found
    or a path does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for item in paths:
        p = Path(item)
        if p.is_dir():
            for child in p.iterdir():
                if (child.is_file() and not child.name.startswith(".")
                        and child.suffix.lower() in SUPPORTED_SUFFIXES):
                    found.add(child)
        elif p.is_file():
            if p.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise InputError(f"{p.name}: unsupported file type {p.suffix or '(none)'!r}; use "
                                 f"one of {', '.join(SUPPORTED_SUFFIXES)}")
            found.add(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not found:
        raise InputError("no micrographs found (supported: " + ", ".join(SUPPORTED_SUFFIXES) + ")")
    return sorted(found, key=lambda q: (str(q.parent), q.name.lower(), q.name))


# --------------------------------------------------------------------------- intensities

def normalize(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Robust min-max: map the ``low_pct``..``high_pct`` percentiles to 0..1 and clip.

    NaN/inf pixels are ignored for the percentiles and set to 0. A constant image gives zeros.
    Returns float32 (H, W) in [0, 1].
    """
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = _to_grey(a, Path("image"))
    finite = np.isfinite(a)
    out = np.zeros(a.shape, dtype=np.float32)
    if not finite.any():
        return out
    vals = a[finite] if not finite.all() else a.ravel()
    lo, hi = np.percentile(vals, [low_pct, high_pct])
    if not hi > lo:  # (nearly) constant over the percentile range: fall back to min/max
        lo, hi = float(vals.min()), float(vals.max())
        if not hi > lo:
            return out
    with np.errstate(invalid="ignore"):
        scaled = (a - np.float32(lo)) / np.float32(hi - lo)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled[~finite] = 0.0
    return scaled.astype(np.float32, copy=False)


def to_uint8(image01: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8 0..255 (rounded, clipped; NaN -> 0). uint8 passes through."""
    a = np.asarray(image01)
    if a.dtype == np.uint8:
        return a
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def detect_polarity(image01: np.ndarray) -> str:
    """"bright" if particles are brighter than the background (HAADF, SEM), "dark" otherwise
    (bright-field TEM); a constant image gives "bright". See :mod:`emcopilot.polarity` (right on
    97 / 99 EMPS test images and on the 33 catalyst S/TEM images and their inverses)."""
    from .polarity import detect_polarity as detect

    return detect(image01)


def bright_particles(image01: np.ndarray, polarity: str) -> np.ndarray:
    """Return the image in the bright-particle convention: 1 - x for "dark", x for "bright";
    "auto" is resolved by :func:`detect_polarity`."""
    if polarity == "auto":
        polarity = detect_polarity(image01)
    a = np.asarray(image01, dtype=np.float32)
    if polarity == "bright":
        return a
    if polarity == "dark":
        return (1.0 - a).astype(np.float32)
    raise InputError(f"polarity must be 'bright', 'dark' or 'auto', got {polarity!r}")


# --------------------------------------------------------------------------- names

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_stem(name: str) -> str:
    """The stem of a user-given file name, safe to use as a file name in a project folder.

    InputError for empty names, names with '/', '\\', NUL/control characters, '..' components,
    or names starting with '.', and stems longer than 200 bytes.

    >>> safe_stem("Pt4.jpg")
    'Pt4'
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("file name is empty")
    if _CONTROL.search(name):
        raise InputError(f"file name {name!r} contains control characters")
    if "/" in name or "\\" in name:
        raise InputError(f"file name {name!r} must not contain '/' or '\\'")
    if name == ".." or name.startswith("."):
        raise InputError(f"file name {name!r} must not start with '.'")
    stem = Path(name).stem.strip()
    if not stem or stem in (".", "..") or ".." in stem.split("."):
        raise InputError(f"file name {name!r} has no usable stem")
    if len(stem.encode("utf-8")) > 200:
        raise InputError(f"file name {name[:40]!r}... is too long (at most 200 bytes)")
    return stem


# --------------------------------------------------------------------------- label maps / images

def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read an instance label map (8/16-bit PNG or TIFF; 0 = background) as int32 (H, W).

    Palette (P-mode) PNGs give their palette indices. RGB(A) label images get one id per
    distinct colour (black -> 0), numbered in order of colour value.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise InputError(f"{p.name}: label maps must be PNG or TIFF, got {p.suffix or '(none)'!r}")
    if not p.is_file():
        raise InputError(f"{p.name}: file not found ({p})")
    if p.stat().st_size == 0:
        raise InputError(f"{p.name}: file is empty (0 bytes)")
    if suffix == ".png":
        from PIL import UnidentifiedImageError

        try:
            im = _pil_open(p)
        except UnidentifiedImageError:
            raise InputError(f"{p.name}: not a readable PNG label map") from None
        except Exception as exc:
            raise InputError(f"{p.name}: cannot open label map ({_short(exc)})") from None
        with im:
            _check_pixels(p, im.size[1], im.size[0])
            try:
                if im.mode == "P":
                    arr = np.asarray(im)  # palette indices are the labels
                else:
                    im.load()
                    arr = np.asarray(im)
            except Exception as exc:
                raise InputError(f"{p.name}: label map data is truncated or corrupt "
                                 f"({_short(exc)})") from None
    else:
        import tifffile

        try:
            with tifffile.TiffFile(p) as tf:
                series = tf.series[0]
                axes = series.axes
                if "Y" in axes and "X" in axes:
                    _check_pixels(p, int(series.shape[axes.index("Y")]),
                                  int(series.shape[axes.index("X")]))
                arr = tf.asarray()
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{p.name}: not a readable TIFF label map ({_short(exc)})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        uniq, inv = np.unique(code, return_inverse=True)
        ids = np.arange(len(uniq), dtype=np.int64)
        if uniq[0] != 0:
            ids += 1  # no black background: every colour is a particle
        return ids[inv.reshape(code.shape)].astype(np.int32)
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{p.name}: label map must be 2-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{p.name}: label map has non-integer values")
    if arr.dtype.kind in "iuf" and arr.size and arr.min() < 0:
        raise InputError(f"{p.name}: label map has negative labels")
    if arr.dtype.kind in "iuf" and arr.size and arr.max() > np.iinfo(np.int32).max:
        raise InputError(f"{p.name}: label ids too large for int32")
    return arr.astype(np.int32)


def write_label_map(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an instance label map as a 16-bit grey PNG (atomic). Returns the path.

    InputError if ``labels`` is not 2-D integer, has negative values or ids above 65535.
    """
    from PIL import Image

    p = Path(path)
    a = np.asarray(labels)
    if a.ndim != 2:
        raise InputError(f"{p.name}: label map must be 2-D, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise InputError(f"{p.name}: label map must hold integers")
    elif a.dtype.kind not in "iu":
        raise InputError(f"{p.name}: label map must hold integers, got {a.dtype}")
    if a.size and a.min() < 0:
        raise InputError(f"{p.name}: label map has negative labels")
    if a.size and a.max() > 65535:
        raise InputError(f"{p.name}: label ids above 65535 cannot be stored in a 16-bit PNG "
                         f"(max id {int(a.max())})")
    a16 = np.ascontiguousarray(a.astype(np.uint16))
    im = Image.fromarray(a16)  # mode I;16
    with atomic_path(p, suffix=".png") as tmp:
        im.save(tmp, format="PNG")
    return p


def write_image(path: str | os.PathLike, image01_or_uint8: np.ndarray) -> Path:
    """Write a grey (H, W) or RGB (H, W, 3) image as an 8-bit PNG (atomic). Float input is taken
    to be in [0, 1]; uint8 is written as is. Returns the path."""
    from PIL import Image

    p = Path(path)
    a = np.asarray(image01_or_uint8)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise InputError(f"{p.name}: expected a 2-D grey or RGB image, got shape {a.shape}")
    u8 = np.ascontiguousarray(to_uint8(a))
    im = Image.fromarray(u8)
    with atomic_path(p, suffix=".png") as tmp:
        im.save(tmp, format="PNG")
    return p
