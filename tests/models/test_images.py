"""Bounded decoding: one test per refusal rule, EXIF orientation (all 8), GPS and friends."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from models.errors import EmptyImage, ImageTooLarge, TooManyPixels, TruncatedImage, UnsupportedImage
from models.images import ImageLimits, decode_image
from tests.models.helpers import encode, noise_image

#: Upright pixels for each EXIF orientation, from the EXIF 2.3 table, as numpy on stored pixels.
UPRIGHT = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],
    3: lambda s: s[::-1, ::-1],
    4: lambda s: s[::-1, :],
    5: lambda s: np.rot90(s[:, ::-1], k=1),
    6: lambda s: np.rot90(s, k=-1),
    7: lambda s: np.rot90(s[:, ::-1], k=-1),
    8: lambda s: np.rot90(s, k=1),
}


def exif_with(**tags: object) -> Image.Exif:
    exif = Image.Exif()
    for key, value in tags.items():
        exif[int(key[1:], 16)] = value
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    stored = noise_image(5, 7, seed=orientation)
    data = encode(stored, "PNG", exif=exif_with(x0112=orientation))
    image = decode_image(data)
    assert image.meta.orientation == orientation
    assert np.array_equal(image.pixels, UPRIGHT[orientation](stored))
    assert (image.meta.width, image.meta.height) == image.pixels.shape[1::-1]


def test_gps_capture_time_and_camera_are_read() -> None:
    exif = exif_with(x010f="DJI", x0110="FC3582")
    exif[0x8825] = {1: "S", 2: (33.0, 51.0, 21.6), 3: "W", 4: (151.0, 12.0, 36.0), 5: 0, 6: 120.5}
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09", 0x9011: "+10:00"}
    meta = decode_image(encode(noise_image(8, 8), "JPEG", exif=exif)).meta
    assert meta.gps is not None
    assert (meta.gps.latitude, meta.gps.longitude, meta.gps.altitude) == (
        pytest.approx(-33.856),
        pytest.approx(-151.21),
        120.5,
    )
    assert meta.captured_at == "2024-05-06T07:08:09+10:00"
    assert (meta.camera_make, meta.camera_model) == ("DJI", "FC3582")


def test_altitude_below_sea_level_is_negative() -> None:
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (1.0, 0.0, 0.0), 3: "E", 4: (2.0, 0.0, 0.0), 5: 1, 6: 4.0}
    gps = decode_image(encode(noise_image(8, 8), "JPEG", exif=exif)).meta.gps
    assert gps is not None and gps.altitude == -4.0


def test_malformed_exif_fields_warn_and_the_image_still_decodes() -> None:
    exif = exif_with(x0112=9, x0132="yesterday")
    exif[0x8825] = {1: "N", 2: (200.0, 0.0, 0.0), 3: "E", 4: (1.0, 0.0, 0.0)}
    image = decode_image(encode(noise_image(8, 8), "JPEG", exif=exif))
    assert image.meta.orientation == 1 and image.meta.gps is None
    assert image.meta.captured_at is None
    assert len(image.meta.warnings) == 3


def test_corrupt_exif_block_warns_and_the_image_still_decodes() -> None:
    broken = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01\x12"
    image = decode_image(encode(noise_image(8, 8), "JPEG", exif=broken))
    assert image.pixels.shape == (8, 8, 3)
    assert any("Corrupt EXIF" in w for w in image.meta.warnings)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encode(noise_image(6, 9), fmt))
    assert image.pixels.shape == (6, 9, 3) and image.pixels.dtype == np.uint8
    assert image.meta.format == fmt


def test_greyscale_and_alpha_become_rgb() -> None:
    grey = Image.fromarray(noise_image(4, 4)[..., 0])
    out = io.BytesIO()
    grey.save(out, "PNG")
    assert decode_image(out.getvalue()).pixels.shape == (4, 4, 3)


def test_zero_byte_file_is_refused() -> None:
    with pytest.raises(EmptyImage, match="0 bytes"):
        decode_image(b"")


def test_more_encoded_bytes_than_the_limit_is_refused() -> None:
    data = encode(noise_image(16, 16), "PNG")
    with pytest.raises(ImageTooLarge, match=f"{len(data)} bytes is more than the 100-byte"):
        decode_image(data, ImageLimits(max_bytes=100))


def test_more_pixels_than_the_limit_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(noise_image(20, 30), "PNG", exif=exif_with(x0110="cam"))

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(TooManyPixels, match=r"30x20 is 600 pixels.*refused before decoding"):
        decode_image(data, ImageLimits(max_pixels=599))


def test_decompression_bomb_header_is_refused_without_decoding() -> None:
    """A 1x1 PNG whose header claims 60000x60000: refusing it must not allocate 10 GB."""
    data = bytearray(encode(noise_image(1, 1), "PNG"))
    data[16:24] = struct.pack(">II", 60000, 60000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(TooManyPixels):
        decode_image(bytes(data))


def test_tiff_with_a_rational_strip_offset_is_refused_as_corrupt() -> None:
    """Found by the byte fuzzer: Pillow raised TypeError while loading this TIFF."""
    data = base64.b64decode(
        "SUkqAAgAAAAKAAABBAABAAAAIAAAAAEBBAABAAAAGAAAAAIBAwADAAAAhgAAAAMBAwABAAAAAQAAAAYBAwABAAAA"
        "AgAAABEBBQABAAAAjAAAABUBAwABAAAAAwAAABYBBAQBAAAAGAAAABcBBAABAAADAAkAABwBAwABAAAAAQAAAAAA"
        "AAAIAAgACABfgj9YcZiebYDb80IHGw1q7XrJHrgjimpP/wAAAAACSUuEc3hH8tuExA==")
    with pytest.raises(UnsupportedImage, match="corrupt TIFF data"):
        decode_image(data)


def test_unsupported_format_is_refused() -> None:
    with pytest.raises(UnsupportedImage, match="not a JPEG, PNG or TIFF"):
        decode_image(encode(noise_image(8, 8), "BMP"))


def test_non_image_bytes_are_refused() -> None:
    with pytest.raises(UnsupportedImage):
        decode_image(b"%PDF-1.7 this is not an image")


def test_corrupt_image_data_is_refused() -> None:
    data = bytearray(encode(noise_image(64, 64), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 60] = bytes(50)  # the zlib stream no longer inflates
    with pytest.raises(UnsupportedImage, match="corrupt PNG data"):
        decode_image(bytes(data))


def test_truncated_jpeg_is_refused() -> None:
    data = encode(noise_image(64, 64), "JPEG")
    with pytest.raises(TruncatedImage, match="truncated JPEG"):
        decode_image(data[: len(data) // 2])


def test_jpeg_cut_inside_its_header_is_truncated_too() -> None:
    data = encode(noise_image(64, 64), "JPEG")
    with pytest.raises(TruncatedImage, match="header is incomplete"):
        decode_image(data[:100])
