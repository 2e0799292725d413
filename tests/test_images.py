"""Uploads of every kind Pillow reads, hostile files, and instruction checks."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from editor.config import LimitsConfig
from editor.images import MAX_ASPECT_RATIO, check_instruction, load_image, target_size
from editor.types import InvalidInput

LIMITS = LimitsConfig()
RESOLUTION = 64


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _grey_array(mode: str, value: float, size: tuple[int, int] = (40, 30)) -> Image.Image:
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(np.full((size[1], size[0]), value, dtype=dtype))
    assert image.mode == mode
    return image


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (40, 30), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 1
    return image


def _centre(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((image.width // 2, image.height // 2))


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# (what, encoded file, expected colour in the middle)
KINDS = [
    ("rgb png", _encode(Image.new("RGB", (40, 30), (10, 120, 200)), "PNG"), (10, 120, 200)),
    ("rgb jpeg", _encode(Image.new("RGB", (40, 30), (10, 120, 200)), "JPEG", quality=95), (10, 120, 200)),
    ("transparent rgba", _encode(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"), (255, 255, 255)),
    ("half rgba", _encode(Image.new("RGBA", (40, 30), (255, 0, 0, 128)), "PNG"), (255, 127, 127)),
    ("la", _encode(Image.new("LA", (40, 30), (0, 0)), "PNG"), (255, 255, 255)),
    ("greyscale", _encode(Image.new("L", (40, 30), 90), "PNG"), (90, 90, 90)),
    ("one bit", _encode(Image.new("1", (40, 30), 1), "PNG"), (255, 255, 255)),
    ("palette", _encode(Image.new("RGB", (40, 30), (0, 255, 0)).convert("P"), "PNG"), (0, 255, 0)),
    ("palette transparency png", _encode(_palette_with_transparency(), "PNG"), (255, 255, 255)),
    ("palette transparency gif", _encode(_palette_with_transparency(), "GIF"), (255, 255, 255)),
    ("cmyk jpeg", _encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0)),
    ("cmyk tiff", _encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "TIFF"), (255, 0, 0)),
    ("16-bit grey", _encode(_grey_array("I;16", 65535), "PNG"), (255, 255, 255)),
    ("16-bit mid grey", _encode(_grey_array("I;16", 32896), "PNG"), (128, 128, 128)),
    ("32-bit grey 8-bit range", _encode(_grey_array("I", 200), "TIFF"), (200, 200, 200)),
    ("32-bit grey 16-bit range", _encode(_grey_array("I", 65535), "TIFF"), (255, 255, 255)),
    ("float 0..1", _encode(_grey_array("F", 0.5), "TIFF"), (128, 128, 128)),
    ("float 0..255", _encode(_grey_array("F", 200.0), "TIFF"), (200, 200, 200)),
    ("float nan", _encode(_grey_array("F", float("nan")), "TIFF"), (0, 0, 0)),
    ("webp", _encode(Image.new("RGB", (40, 30), (200, 40, 40)), "WEBP", lossless=True), (200, 40, 40)),
    ("bmp", _encode(Image.new("RGB", (40, 30), (1, 2, 3)), "BMP"), (1, 2, 3)),
]


@pytest.mark.parametrize(("data", "colour"), [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_every_kind_of_image_becomes_rgb_at_the_model_size(data: bytes, colour: tuple[int, int, int]) -> None:
    image = load_image(data, LIMITS, RESOLUTION)
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert _close(_centre(image), colour)


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(image_format: str) -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert _close(_centre(load_image(data, LIMITS, RESOLUTION)), (255, 0, 0))


def test_exif_rotation_is_applied() -> None:
    # Landscape pixels, red on the left, with EXIF "rotate 90° clockwise to display".
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(_encode(image, "JPEG", quality=95, exif=exif), LIMITS, RESOLUTION)
    assert loaded.size == (32, 64)
    assert _close(loaded.getpixel((16, 8)), (255, 0, 0), tolerance=20)  # the left went to the top
    assert _close(loaded.getpixel((16, 56)), (0, 0, 255), tolerance=20)


def test_big_jpeg_is_decoded_at_reduced_scale_with_the_right_result() -> None:
    image = Image.new("RGB", (2000, 1500), (30, 160, 90))
    loaded = load_image(_encode(image, "JPEG", quality=90), LIMITS, RESOLUTION)
    assert loaded.size == (64, 48)
    assert _close(_centre(loaded), (30, 160, 90))


def test_an_opened_image_is_accepted_and_left_untouched() -> None:
    original = Image.new("RGBA", (30, 40), (0, 0, 0, 0))
    loaded = load_image(original, LIMITS, RESOLUTION)
    assert (loaded.mode, loaded.size) == ("RGB", (48, 64))
    assert (original.mode, original.size, original.getpixel((0, 0))) == ("RGBA", (30, 40), (0, 0, 0, 0))


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((80, 60), (64, 48)),
        ((60, 80), (48, 64)),
        ((64, 64), (64, 64)),
        ((1, 1), (64, 64)),
        ((3, 2), (64, 40)),
        ((1000, 130), (64, 8)),
        ((4000, 3000), (64, 48)),
    ],
)
def test_target_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert target_size(size, RESOLUTION) == expected


@given(
    st.integers(1, 20_000),
    st.floats(1.0, MAX_ASPECT_RATIO),
    st.booleans(),
    st.sampled_from([64, 256, 512, 768]),
)
def test_target_size_keeps_the_rules(short: int, ratio: float, portrait: bool, resolution: int) -> None:
    long = max(short, int(short * ratio))
    size = (short, long) if portrait else (long, short)
    width, height = target_size(size, resolution)
    assert max(width, height) == resolution
    assert width % 8 == 0
    assert height % 8 == 0
    # Aspect kept: each side is its exact scaled length rounded to a multiple of 8 (at least 8).
    scale = resolution / max(size)
    assert abs(width - size[0] * scale) <= 8
    assert abs(height - size[1] * scale) <= 8


def _png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose header says ``width`` x ``height`` (its data is a 1x1 image)."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "PNG")
    return data[: len(data) // 2]


HOSTILE = [
    ("empty", b"", "empty"),
    ("text file", b"Hello, this is not an image at all.\n" * 10, "couldn't read"),
    ("random bytes", np.random.default_rng(1).bytes(4096), "couldn't read"),
    ("truncated png", _truncated_png(), "couldn't read"),
    ("png signature only", b"\x89PNG\r\n\x1a\n", "couldn't read"),
    ("header bomb", _png_claiming(50_000, 50_000), "too large"),
    ("one by ten thousand", _png_claiming(1, 10_000), "too long and thin"),
    ("ten thousand by one", _encode(Image.new("L", (10_000, 1)), "PNG"), "too long and thin"),
]


@pytest.mark.parametrize(("data", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_refused_politely(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_image(data, LIMITS, RESOLUTION)


def test_files_over_the_byte_limit_are_refused_before_decoding() -> None:
    data = _encode(Image.new("RGB", (40, 30)), "PNG")
    with pytest.raises(InvalidInput, match=r"limit is 0\.0 MB"):
        load_image(data, LimitsConfig(max_input_bytes=len(data) - 1), RESOLUTION)
    assert load_image(data, LimitsConfig(max_input_bytes=len(data)), RESOLUTION).size == (64, 48)


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_other_byte_buffers_are_accepted(wrap: type) -> None:
    data = _encode(Image.new("RGB", (40, 30), (1, 2, 3)), "PNG")
    assert _centre(load_image(wrap(data), LIMITS, RESOLUTION)) == (1, 2, 3)


def test_pixel_limit_counts_width_times_height() -> None:
    data = _encode(Image.new("RGB", (40, 30)), "PNG")
    with pytest.raises(InvalidInput, match="too large"):
        load_image(data, LimitsConfig(max_input_pixels=40 * 30 - 1), RESOLUTION)
    assert load_image(data, LimitsConfig(max_input_pixels=40 * 30), RESOLUTION).size == (64, 48)


@pytest.mark.parametrize(
    "pixels",
    [Image.MAX_IMAGE_PIXELS + 1_000, 2 * Image.MAX_IMAGE_PIXELS + 1_000],
    ids=["pillow warning", "pillow error"],
)
def test_pillows_own_bomb_guard_becomes_invalid_input(pixels: int) -> None:
    side = int(pixels**0.5) + 1
    with pytest.raises(InvalidInput, match="too large"):
        load_image(_png_claiming(side, side), LimitsConfig(max_input_pixels=10**12), RESOLUTION)


def test_truncated_opened_image_is_refused() -> None:
    lazy = Image.open(io.BytesIO(_truncated_png()))
    with pytest.raises(InvalidInput, match="couldn't read"):
        load_image(lazy, LIMITS, RESOLUTION)


@pytest.mark.parametrize("value", ["a picture.png", 42, None])
def test_not_an_image_at_all(value: object) -> None:
    with pytest.raises(InvalidInput, match="attach an image"):
        load_image(value, LIMITS, RESOLUTION)  # type: ignore[arg-type]


def test_image_without_pixels_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no pixels"):
        load_image(Image.new("RGB", (0, 0)), LIMITS, RESOLUTION)


def test_resolution_must_be_a_multiple_of_8() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        load_image(Image.new("RGB", (8, 8)), LIMITS, 100)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  make it snowy  ", "make it snowy"),
        ("make it\nsnowy", "make it snowy"),
        ("make\r\n\tit   snowy\u2028now", "make it snowy now"),
        ("turn the cat into a 🐕‍🦺", "turn the cat into a 🐕‍🦺"),
        ("x" * 300, "x" * 300),
    ],
)
def test_instruction_is_normalised(text: str, expected: str) -> None:
    assert check_instruction(text, LIMITS) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * 301, "301 characters"),
        ("make it \x00snowy", "U+0000"),
        ("make it \x1b[31mred", "U+001B"),
        ("delete\x7f", "U+007F"),
        ("sneaky\x1cseparator", "U+001C"),
        ("broken \ud800 surrogate", "U+D800"),
        (b"make it snowy", "as text"),
    ],
)
def test_bad_instructions_are_refused_politely(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        check_instruction(text, LIMITS)
