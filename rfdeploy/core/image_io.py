"""Reading user images into HxWx3 uint8 RGB arrays, with clear errors for anything unusable.

Decisions, so results are the same everywhere:

* **Orientation**: the EXIF orientation tag is applied, so boxes are in the orientation a viewer shows.
* **Transparency** (RGBA, LA, palette with a transparent colour): composited on **white**, which is
  what most viewers and browsers show behind a transparent image; the raw colour under fully
  transparent pixels is often black or garbage and would otherwise reach the detector.
* **16-bit and 32-bit integer / float** grey images: scaled to 0..255 (not clipped).
* **CMYK**: converted through the embedded ICC profile when there is one, otherwise Pillow's
  plain conversion.
* **Several frames** (animated GIF/WebP/PNG, multi-page TIFF, MPO): the first frame is used.
* **Size limit**: the pixel count read from the file header is checked against a limit *before* any
  pixel is decoded. The limit is ``DEFAULT_MAX_PIXELS`` (16384 x 16384 = 268 MP: 8K frames and large
  panoramas pass; a 16384^2 RGB image decodes to 805 MB), overridable per call (``max_pixels``, ``None``
  = no limit) or with the environment variable ``RFDEPLOY_MAX_PIXELS`` (an integer, or ``none``).
  Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, a process-wide setting) is set to
  the same limit while our decode runs, then restored; a lock serialises this so concurrent calls of
  :func:`load_image` do not see each other's limit. Pillow code running in other threads at the
  same time sees our limit for that moment.
* **Truncated files** are errors: every image is fully decoded, and truncated decoding is never
  enabled (``ImageFile.LOAD_TRUNCATED_IMAGES`` is held False during the decode).
"""

from __future__ import annotations

import glob
import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import InputError

DEFAULT_MAX_PIXELS = 16384 * 16384
MAX_PIXELS_ENV = "RFDEPLOY_MAX_PIXELS"

# Formats Pillow may try. Restricting the list keeps rarely used (and rarely audited) decoders out
# of the path of user files. JPEG includes MPO (many phone cameras write JPEGs that Pillow reads as
# MPO); AVIF only where this Pillow build has it.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib",
     ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".mpo", ".avif"}
)
_GLOB_CHARS = frozenset("*?[")

_PIL_LOCK = threading.Lock()


def _open_formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    return tuple(f for f in SUPPORTED_FORMATS if f in Image.OPEN)


@dataclass
class LoadedImage:
    """A decoded image: ``rgb`` is HxWx3 uint8 in display orientation; ``notes`` say what was
    done to get there (orientation applied, alpha composited, frames skipped, bit depth reduced)."""

    rgb: np.ndarray
    path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def max_pixels_from_env(default: int | None = DEFAULT_MAX_PIXELS) -> int | None:
    """The pixel limit from ``RFDEPLOY_MAX_PIXELS`` (an integer > 0, or ``none``/``0`` for no limit)."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("none", "0", "off", "unlimited"):
        return None
    try:
        n = int(float(value)) if "e" in value else int(value.replace("_", ""))
    except ValueError:
        raise InputError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count",
            hint=f"set it to an integer such as {DEFAULT_MAX_PIXELS}, or 'none' for no limit",
        ) from None
    if n < 0:
        raise InputError(f"{MAX_PIXELS_ENV}={raw!r} must not be negative")
    return n or None


_USE_ENV = object()


def load_image(path: str | os.PathLike, max_pixels: int | None | object = _USE_ENV) -> LoadedImage:
    """Decode ``path`` to RGB uint8 (see the module docstring for every conversion rule).

    ``max_pixels``: largest width*height accepted; ``None`` = no limit; left out = the value of
    ``RFDEPLOY_MAX_PIXELS`` or else ``DEFAULT_MAX_PIXELS``. Every failure raises :class:`InputError`.
    """
    limit = _limit(max_pixels)
    p = Path(path)
    _check_file(p)
    try:
        with open(p, "rb") as fh:
            return _load(fh, p, p, limit)
    except PermissionError:
        raise InputError(f"{p}: permission denied") from None


def load_image_bytes(data: bytes | np.ndarray, name: str = "image payload",
                     max_pixels: int | None | object = _USE_ENV) -> LoadedImage:
    """Decode an encoded image held in memory (a request body, a file read from object storage)
    with :func:`load_image`'s rules; errors name ``name`` (e.g. the file's URI)."""
    limit = _limit(max_pixels)
    raw = np.asarray(data).tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not raw:
        raise InputError(f"empty {name} (0 bytes)")
    return _load(io.BytesIO(raw), name, Path(name), limit)


def decode_image_bytes(data: bytes | np.ndarray, name: str = "image payload") -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB (:func:`load_image_bytes`)."""
    return load_image_bytes(data, name).rgb


def _limit(max_pixels) -> int | None:
    limit = max_pixels_from_env() if max_pixels is _USE_ENV else max_pixels
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"max_pixels must be a positive int or None, got {limit!r}")
    return limit


def _load(fh, p, path: Path, limit: int | None) -> LoadedImage:
    """Decode the open binary file ``fh``; ``p`` names it in messages."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    notes: list[str] = []
    try:
        # Pillow's warnings about odd metadata (corrupt EXIF, skipped TIFF tags) become notes on
        # the result rather than lines on stderr; the lock keeps other loads out of this capture.
        with _PIL_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old_limit, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
            try:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                # Header only: Image.open is lazy. Our own check below gives the better message.
                Image.MAX_IMAGE_PIXELS = None
                try:
                    im = Image.open(fh, formats=_open_formats())
                except UnidentifiedImageError:
                    raise InputError(*_unidentified_message(p, fh)) from None
                _check_pixels(p, im.size, limit)
                Image.MAX_IMAGE_PIXELS = limit
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                rgb = _decode(im, notes)
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
                ImageFile.LOAD_TRUNCATED_IMAGES = old_truncated
        for w in caught:
            if f"{os.sep}PIL{os.sep}" in w.filename:
                note = f"decoder warning: {str(w.message).strip()}"
                if note not in notes:
                    notes.append(note)
            else:  # not the decoder's: passed on as it was
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{p}: {e}", hint=_limit_hint(limit)) from None
    except PermissionError:
        raise
    except MemoryError:
        raise InputError(f"{p}: not enough memory to decode this image", hint=_limit_hint(limit)) from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error, LookupError, ArithmeticError) as e:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/EOFError, and corrupt
        # headers (TIFF tags above all) as TypeError, struct.error, IndexError/KeyError or
        # ZeroDivisionError: all are the file's fault, not ours.
        raise InputError(f"{p}: cannot decode image ({type(e).__name__}: {e})",
                         hint="the file is probably truncated or corrupt") from None
    return LoadedImage(rgb=rgb, path=path, notes=notes)


def _check_file(p: Path) -> None:
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not an image file",
                         hint="pass the directory as an input folder, not as a single image")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes)")


def _limit_hint(limit: int | None) -> str:
    return (f"raise the limit with max_pixels=... or the environment variable {MAX_PIXELS_ENV} "
            f"(current limit {limit} pixels; 'none' disables it)")


def _check_pixels(p: Path, size: tuple[int, int], limit: int | None) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"{p}: image has no pixels ({w}x{h})")
    if limit is not None and w * h > limit:
        raise InputError(
            f"{p}: image is {w}x{h} = {w * h} pixels, over the limit of {limit} pixels",
            hint=_limit_hint(limit),
        )


def _unidentified_message(p: Path, fh) -> tuple[str, str]:
    fh.seek(0)
    head = fh.read(64)
    kinds = ", ".join(_open_formats())
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return f"{p}: HEIC/HEIF images are not supported", f"convert it to JPEG or PNG; readable formats: {kinds}"
    if head.lstrip()[:1] in (b"<", b"{") or all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"{p}: not an image (the file looks like text)", f"readable formats: {kinds}"
    return f"{p}: not an image in a supported format", f"readable formats: {kinds}"


def _decode(im, notes: list[str]) -> np.ndarray:
    """Fully decode the first frame of an opened image and convert it to HxWx3 uint8 RGB."""
    from PIL import Image, ImageOps

    n_frames = getattr(im, "n_frames", 1)
    if n_frames > 1:
        kind = "animated image" if getattr(im, "is_animated", False) and im.format != "MPO" else "multi-frame image"
        notes.append(f"{kind} ({im.format}, {n_frames} frames): first frame used")
        im.seek(0)
    # 16-bit colour files decode straight to 8-bit modes (Pillow keeps the high byte): say so.
    deep_colour = im.mode in ("RGB", "RGBA") and any(";16" in str(getattr(t, "args", "")) for t in im.tile or ())
    im.load()  # forces the complete decode, so truncation is caught here
    if deep_colour:
        notes.append("16-bit image scaled to 8 bit")

    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        orientation, bad_exif = 1, True
    else:
        bad_exif = False
    if bad_exif:
        notes.append("EXIF block unreadable: orientation not applied")
    elif orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"EXIF orientation {orientation} applied")

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im, notes)
    if mode == "CMYK":
        return _cmyk_to_rgb(im, notes)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() < 255:
            notes.append("transparency composited on white")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.array(rgba.convert("RGB"))
    if mode != "RGB":
        if mode not in ("L", "P", "1"):
            notes.append(f"{mode} converted to RGB")
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise InputError(f"{getattr(im, 'filename', '') or 'image'}: colour mode {mode} cannot be converted to RGB ({e})") from None
    return np.array(im)


def _high_depth_to_rgb(im, notes: list[str]) -> np.ndarray:
    mode = im.mode
    a = np.asarray(im)
    if mode.startswith("I;16"):
        a = a.astype(np.uint32)
        g = ((a * 255 + 32767) // 65535).astype(np.uint8)
        notes.append("16-bit image scaled to 8 bit")
    elif mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
        # Pillow opens 16-bit grey PNG/TIFF as mode I: the 16-bit range applies.
        a = a.astype(np.int64)
        g = ((a * 255 + 32767) // 65535).astype(np.uint8)
        notes.append("16-bit image scaled to 8 bit")
    else:
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
            notes.append("floating-point image (0..1) scaled to 8 bit")
        else:
            notes.append(f"{mode} image scaled to 8 bit from its value range {lo:g}..{hi:g}")
        span = hi - lo if hi > lo else 1.0
        g = np.clip(np.rint((a - lo) * (255.0 / span)), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def _cmyk_to_rgb(im, notes: list[str]) -> np.ndarray:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            notes.append("CMYK converted to RGB with the embedded ICC profile")
            return np.array(out)
        except Exception:  # an unusable profile falls back to the plain conversion
            pass
    notes.append("CMYK converted to RGB")
    return np.array(im.convert("RGB"))


def iter_image_paths(inputs: list[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files, directories and glob patterns into a list of image files.

    * a file is taken as given (whatever its extension; :func:`load_image` judges its content);
    * a directory contributes its files with an image extension (case-insensitive), sorted by name,
      hidden files (``.name``, e.g. macOS ``._IMG.jpg`` companions) skipped; subdirectories only
      when ``recursive``; a directory without images is an error;
    * a pattern with ``*``, ``?`` or ``[`` contributes its matching files with an image extension,
      sorted (``**`` matches subdirectories); a pattern matching nothing is an error.

    Inputs keep their order; each path appears once (the first time it is met, compared after
    resolving symlinks and ``..``). Raises :class:`InputError` for anything that does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    seen: set[Path] = set()

    def add(paths: list[Path]) -> None:
        for q in paths:
            key = q.resolve()
            if key not in seen:
                seen.add(key)
                out.append(q)

    for item in inputs:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            files = _images_in_dir(p, recursive)
            if not files:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise InputError(f"{p}: directory contains no images", hint=f"image extensions: {exts}"
                                 + ("" if recursive else "; subdirectories are not searched"))
            add(files)
        elif p.is_file():
            add([p])
        elif p.exists() or os.path.lexists(s):
            raise InputError(f"{p}: not a regular file or directory (broken link?)")
        elif _GLOB_CHARS & set(s):
            matches = sorted(
                Path(m) for m in glob.glob(s, recursive=True)
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not matches:
                raise InputError(f"{s}: pattern matches no image files")
            add(matches)
        else:
            raise InputError(f"{p}: no such file or directory")
    return out


def _images_in_dir(d: Path, recursive: bool) -> list[Path]:
    it = d.rglob("*") if recursive else d.iterdir()
    files = [
        q for q in it
        if q.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in q.relative_to(d).parts)
        and q.is_file()
    ]
    return sorted(files)
