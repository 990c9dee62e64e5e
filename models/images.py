"""Bounded decoding of drone images (JPEG, PNG, TIFF) with their EXIF facts.

Every rule has its own error (``models.errors``): an empty upload, too many encoded bytes, a
header announcing too many pixels (checked before any pixel is decoded, so a decompression bomb
costs nothing), an unsupported or corrupt file, a truncated file. Malformed EXIF never fails a
decode: it is skipped and reported in ``ImageMeta.warnings`` (and logged).
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import EmptyImage, ImageTooLarge, TooManyPixels, TruncatedImage, UnsupportedImage

log = logging.getLogger(__name__)

FORMATS = ("JPEG", "PNG", "TIFF")
_TAG_ORIENTATION, _TAG_MAKE, _TAG_MODEL, _TAG_DATETIME = 0x0112, 0x010F, 0x0110, 0x0132
_IFD_EXIF, _IFD_GPS = 0x8769, 0x8825
_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_ORIGINAL = 0x9003, 0x9011
#: EXIF orientation -> the transpose that makes the image upright (as Pillow's exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on untrusted images. 64 MiB and 100 MP admit any current drone camera."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class GPS:
    """Decimal degrees (south and west negative) and metres above sea level."""

    latitude: float
    longitude: float
    altitude: float | None = None


@dataclass(frozen=True)
class ImageMeta:
    """Facts about the decoded image; width and height are after the EXIF orientation."""

    format: str
    width: int
    height: int
    orientation: int = 1
    gps: GPS | None = None
    captured_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "orientation": self.orientation,
            "gps": None if self.gps is None else vars(self.gps),
            "captured_at": self.captured_at,
            "camera_make": self.camera_make,
            "camera_model": self.camera_model,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class DecodedImage:
    """Upright RGB pixels, (height, width, 3) uint8, and what the file said about them."""

    pixels: np.ndarray
    meta: ImageMeta


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode ``data`` within ``limits``; raises an ``ImageError`` subclass naming the rule.

    Safe to call from worker threads (Pillow releases the GIL while decoding); the EXIF notes
    Pillow emits as warnings are captured with ``warnings.catch_warnings``, which is
    process-wide, so under concurrent decodes a note can be lost, never a decode.
    """
    if not data:
        raise EmptyImage("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes is more than the {limits.max_bytes}-byte limit")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        # Pillow reports some corrupt EXIF only as a warning: keep those as notes. Its
        # decompression-bomb warning is noise, our own pixel limit is the bound.
        warnings.simplefilter("always")
        with _open(data) as im:
            width, height = im.size
            if width * height > limits.max_pixels:
                raise TooManyPixels(
                    f"{width}x{height} is {width * height} pixels, more than "
                    f"the {limits.max_pixels}-pixel limit; refused before "
                    "decoding"
                )
            _load(im)  # before EXIF: reading a PNG's EXIF would otherwise decode it unchecked
            exif = _read_exif(im, notes)
            orientation = exif.pop("orientation", 1)
            rgb = im.convert("RGB")
            fmt = im.format or "unknown"
    notes.extend(
        str(w.message) for w in caught if not issubclass(w.category, Image.DecompressionBombWarning)
    )
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    pixels = np.asarray(rgb)
    for note in notes:
        log.warning("image EXIF: %s", note)
    meta = ImageMeta(
        format=fmt,
        width=pixels.shape[1],
        height=pixels.shape[0],
        orientation=orientation,
        warnings=tuple(notes),
        **exif,
    )
    return DecodedImage(pixels, meta)


def _open(data: bytes) -> Image.Image:
    """Parse the header only: no pixel is decoded until ``load``."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"refused before decoding: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, struct.error) as exc:
        if "truncated" in str(exc).lower():
            raise TruncatedImage(f"truncated file, the header is incomplete: {exc}") from exc
        raise UnsupportedImage(f"corrupt image header: {exc}") from exc


def _load(im: Image.Image) -> None:
    """Decode the pixels, telling a truncated file from a corrupt one."""
    try:
        im.load()
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise TruncatedImage(f"truncated {im.format} file: {exc}") from exc
        raise UnsupportedImage(f"corrupt {im.format} data: {exc}") from exc
    except (SyntaxError, ValueError, EOFError, TypeError, IndexError, struct.error) as exc:
        # Pillow's decoders raise these on hostile headers (a TIFF strip offset given as a
        # rational raises TypeError, found by fuzzing); all mean the same: corrupt data.
        raise UnsupportedImage(f"corrupt {im.format} data: {exc}") from exc


def _read_exif(im: Image.Image, notes: list[str]) -> dict[str, Any]:
    """Orientation, GPS, capture time and camera; each field is skipped with a note when bad."""
    try:
        exif = im.getexif()
    except Exception as exc:  # Pillow raises many types on hostile EXIF; none may fail a decode.
        notes.append(f"unreadable EXIF ignored: {exc!r}")
        return {}
    out: dict[str, Any] = {}
    orientation = exif.get(_TAG_ORIENTATION)
    if orientation is not None:
        if isinstance(orientation, int) and 1 <= orientation <= 8:
            out["orientation"] = orientation
        else:
            notes.append(f"invalid EXIF orientation {orientation!r} ignored")
    for key, tag in (("camera_make", _TAG_MAKE), ("camera_model", _TAG_MODEL)):
        value = exif.get(tag)
        if isinstance(value, str) and value.strip("\x00 "):
            out[key] = value.strip("\x00 ")
    try:
        sub = exif.get_ifd(_IFD_EXIF)
        gps_ifd = exif.get_ifd(_IFD_GPS)
    except Exception as exc:  # A broken IFD pointer: keep what the main IFD gave.
        notes.append(f"unreadable EXIF sub-directory ignored: {exc!r}")
        return out
    raw_time = sub.get(_TAG_DATETIME_ORIGINAL) or exif.get(_TAG_DATETIME)
    if raw_time is not None:
        captured = _parse_time(raw_time, sub.get(_TAG_OFFSET_ORIGINAL))
        if captured is None:
            notes.append(f"invalid EXIF capture time {raw_time!r} ignored")
        else:
            out["captured_at"] = captured
    if gps_ifd:
        try:
            out["gps"] = _parse_gps(gps_ifd)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError) as exc:
            notes.append(f"invalid EXIF GPS ignored: {exc!r}")
    return out


def _parse_time(raw: Any, offset: Any) -> str | None:
    try:
        stamp = datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    text = stamp.isoformat()
    if isinstance(offset, str) and len(offset) == 6 and offset[0] in "+-":
        text += offset
    return text


def _parse_gps(gps: dict[int, Any]) -> GPS:
    """GPS IFD tags 1-6: refs N/S, E/W and altitude ref, degrees/minutes/seconds rationals."""
    lat = _dms(gps[2]) * (-1 if str(gps.get(1, "N")).upper().startswith("S") else 1)
    lon = _dms(gps[4]) * (-1 if str(gps.get(3, "E")).upper().startswith("W") else 1)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"coordinates out of range: {lat}, {lon}")
    altitude = None
    if 6 in gps:
        below = gps.get(5) in (1, b"\x01")
        altitude = float(gps[6]) * (-1 if below else 1)
    return GPS(round(lat, 7), round(lon, 7), altitude)


def _dms(value: Any) -> float:
    deg, minutes, seconds = (float(v) for v in value)
    return deg + minutes / 60 + seconds / 3600
