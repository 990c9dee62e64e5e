"""EXIF for generated drone frames: camera, capture time and GPS, through Pillow's Exif API.

Frames of one flight follow a straight pass along the bridge, a few metres apart and two
seconds apart, starting from the domain's site position and date.
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import ExifTags, Image, TiffImagePlugin

from models.data.domain import Domain

CAMERA_MAKE = "Spoke"
CAMERA_MODEL = "Synthetic CODEBRIM drone"
FRAME_INTERVAL_S = 2.0
FRAME_SPACING_M = 4.0
EARTH_RADIUS_M = 6_371_000.0


@dataclass(frozen=True)
class CaptureInfo:
    latitude: float
    longitude: float
    altitude_m: float
    time: datetime


def capture_info(domain: Domain, index: int) -> CaptureInfo:
    """Where and when frame ``index`` of the domain's flight was taken."""
    heading = math.radians(domain.seed * 37 % 360)
    dist = index * FRAME_SPACING_M
    dlat = math.degrees(dist * math.cos(heading) / EARTH_RADIUS_M)
    dlon = math.degrees(
        dist * math.sin(heading) / (EARTH_RADIUS_M * math.cos(math.radians(domain.site_lat)))
    )
    ts = domain.capture_start + index * FRAME_INTERVAL_S
    return CaptureInfo(
        round(domain.site_lat + dlat, 7),
        round(domain.site_lon + dlon, 7),
        round(domain.flight_alt, 1),
        datetime.fromtimestamp(round(ts), tz=UTC),
    )


def _dms(value: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
    value = abs(value)
    deg = int(value)
    minutes = int((value - deg) * 60)
    seconds = round((value - deg - minutes / 60) * 3600, 4)
    return (
        TiffImagePlugin.IFDRational(deg, 1),
        TiffImagePlugin.IFDRational(minutes, 1),
        TiffImagePlugin.IFDRational(round(seconds * 10000), 10000),
    )


def make_exif(info: CaptureInfo) -> Image.Exif:
    exif = Image.Exif()
    stamp = info.time.strftime("%Y:%m:%d %H:%M:%S")
    exif[ExifTags.Base.Make] = CAMERA_MAKE
    exif[ExifTags.Base.Model] = CAMERA_MODEL
    exif[ExifTags.Base.DateTime] = stamp
    exif[ExifTags.Base.Orientation] = 1
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal] = stamp
    sub[ExifTags.Base.OffsetTimeOriginal] = "+00:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSVersionID] = b"\x02\x03\x00\x00"
    gps[ExifTags.GPS.GPSLatitudeRef] = "N" if info.latitude >= 0 else "S"
    gps[ExifTags.GPS.GPSLatitude] = _dms(info.latitude)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E" if info.longitude >= 0 else "W"
    gps[ExifTags.GPS.GPSLongitude] = _dms(info.longitude)
    gps[ExifTags.GPS.GPSAltitudeRef] = b"\x00"
    gps[ExifTags.GPS.GPSAltitude] = TiffImagePlugin.IFDRational(round(info.altitude_m * 10), 10)
    return exif
