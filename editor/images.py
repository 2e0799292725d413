"""The engine's front door for user input: an uploaded image and an edit instruction.

Uploads are hostile until proven otherwise. Bytes are size-checked before Pillow sees
them, and the pixel count is checked from the header (``Image.open`` is lazy) before
anything is decoded, so a small file that claims a gigapixel canvas costs nothing.
Pillow's own decompression-bomb guard is turned into the same polite refusal.

Every image Pillow reads ends up as RGB at the diffusion model's resolution: the longer
side equals ``resolution``, the aspect ratio is kept and both sides are rounded to
multiples of 8 (the VAE downsamples by 8), never below 8. Transparency is composited on
white, 16-bit and float greyscale are scaled down to 8 bits, EXIF rotation is applied and
animations contribute their first frame. Images longer than ``MAX_ASPECT_RATIO`` times
their width (or the reverse) are refused rather than squashed: their short side would
shrink to a few latent pixels and the edit would be meaningless.
"""

from __future__ import annotations

import io
import math
import threading
import unicodedata
import warnings

import numpy as np
from PIL import Image, ImageOps

from editor.config import LimitsConfig
from editor.types import InvalidInput

#: The most elongated image accepted (longer side / shorter side).
MAX_ASPECT_RATIO = 8.0

#: Sides of the prepared image are multiples of this (the VAE's downsampling factor).
SIDE_MULTIPLE = 8

#: Whitespace a person may type; every other control character is refused.
_ALLOWED_CONTROLS = frozenset("\t\n\r\x0b\x0c\x85")
#: Letters that show as blank space (Hangul fillers), dropped like format characters.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")

# ``warnings.catch_warnings`` swaps process-wide state; serialise the (header-only) opens.
_OPEN_LOCK = threading.Lock()

_UNREADABLE = (
    "I couldn't read that file as an image. Please send a PNG, JPEG, WebP or GIF picture "
    "(the file may be damaged or incomplete)."
)


def load_image(data: bytes | Image.Image, limits: LimitsConfig, resolution: int) -> Image.Image:
    """Decode and normalise an upload (or an already opened image) for the diffusion model.

    Raises :class:`InvalidInput`, with a message meant for the sender, for anything that
    is not a reasonably sized, readable picture.
    """
    if resolution < SIDE_MULTIPLE or resolution % SIDE_MULTIPLE:
        raise ValueError(f"resolution must be a positive multiple of {SIDE_MULTIPLE}, got {resolution}")
    if isinstance(data, Image.Image):
        image = data
        _check_size(image.size, limits)
    elif isinstance(data, bytes | bytearray | memoryview):
        image = _open(data, limits)
        _check_size(image.size, limits)
        width, height = image.size
        scale = resolution / max(width, height)
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: big photos then cost a fraction.
        image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    else:
        raise InvalidInput("Please attach an image to edit.")
    image = _upright_rgb(image, limits)
    return image.resize(target_size(image.size, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_original(data: bytes, limits: LimitsConfig) -> Image.Image:
    """An upload as the person posted it (upright RGB, full size), refused as :func:`load_image` would."""
    image = _open(data, limits)
    _check_size(image.size, limits)
    return _upright_rgb(image, limits)


def _upright_rgb(image: Image.Image, limits: LimitsConfig) -> Image.Image:
    """EXIF rotation applied, any mode to RGB; decoding errors become a polite refusal."""
    try:
        return _to_rgb(ImageOps.exif_transpose(image))
    except InvalidInput:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidInput(_too_many_pixels_message(limits)) from error
    except Exception as error:  # Pillow's decoders raise many types on corrupt data
        raise InvalidInput(_UNREADABLE) from error


def target_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """Longer side = ``resolution``, aspect kept, both sides multiples of 8 and at least 8."""
    width, height = size
    scale = resolution / max(width, height)

    def side(length: int) -> int:
        return max(SIDE_MULTIPLE, round(length * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE)

    return side(width), side(height)


def normalise_instruction(text: str) -> str:
    """What an instruction says, the way every check reads it: NFKC-normalised (full-width and
    styled letters become plain ones), invisible characters dropped (zero-width spaces and
    joiners outside emoji, soft hyphens, direction marks: Unicode's format characters, and
    Hangul fillers), and runs of whitespace collapsed to one space."""
    text = unicodedata.normalize("NFKC", text)
    visible = "".join(
        c
        for i, c in enumerate(text)
        if c not in _INVISIBLE_LETTERS and (unicodedata.category(c) != "Cf" or _joins_emoji(text, i))
    )
    return " ".join(visible.split())


def _joins_emoji(text: str, index: int) -> bool:
    """A zero-width joiner inside an emoji sequence (🐕‍🦺): part of the picture, not a disguise."""
    if text[index] != "\u200d" or not 0 < index < len(text) - 1:
        return False
    before, after = text[index - 1], text[index + 1]
    return (unicodedata.category(before) == "So" or before == "\ufe0f") and unicodedata.category(
        after
    ) == "So"


def check_instruction(text: str, limits: LimitsConfig) -> str:
    """The normalised instruction (:func:`normalise_instruction`), or :class:`InvalidInput`."""
    if not isinstance(text, str):
        raise InvalidInput("Please write the edit you want as text, e.g. “make it snowy”.")
    for character in text:
        if character not in _ALLOWED_CONTROLS and unicodedata.category(character) in ("Cc", "Cs"):
            raise InvalidInput(
                f"The instruction contains an invisible or invalid character (U+{ord(character):04X}). "
                "Please retype it as plain text."
            )
    instruction = normalise_instruction(text)
    if not instruction:
        raise InvalidInput("The instruction is empty. Please describe the edit, e.g. “make it snowy”.")
    if len(instruction) > limits.max_instruction_chars:
        raise InvalidInput(
            f"The instruction is {len(instruction)} characters long; please keep it under "
            f"{limits.max_instruction_chars + 1} characters."
        )
    return instruction


def _open(data: bytes | bytearray | memoryview, limits: LimitsConfig) -> Image.Image:
    """Read the header only; refuse before decoding anything too big."""
    size = memoryview(data).nbytes
    if not size:
        raise InvalidInput("The file is empty. Please attach an image to edit.")
    if size > limits.max_input_bytes:
        raise InvalidInput(
            f"The file is {_megabytes(size)}; the limit is {_megabytes(limits.max_input_bytes)}. "
            "Please send a smaller image."
        )
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidInput(_too_many_pixels_message(limits)) from error
    except Exception as error:  # UnidentifiedImageError, or a plugin choking on a broken header
        raise InvalidInput(_UNREADABLE) from error


def _check_size(size: tuple[int, int], limits: LimitsConfig) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidInput("The image has no pixels. Please send a real picture.")
    if width * height > limits.max_input_pixels:
        raise InvalidInput(_too_many_pixels_message(limits, size))
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InvalidInput(
            f"The image is {width}x{height} pixels, too long and thin to edit. Please crop it so "
            f"its longer side is at most {MAX_ASPECT_RATIO:g} times its shorter side."
        )


def _too_many_pixels_message(limits: LimitsConfig, size: tuple[int, int] | None = None) -> str:
    dimensions = f" ({size[0]}x{size[1]})" if size else ""
    return (
        f"The image is too large{dimensions}; the limit is {limits.max_input_pixels / 1e6:g} megapixels. "
        "Please send a smaller version."
    )


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent pixels become white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_grey_to_8_bit(image)).convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as error:  # a mode Pillow reads but cannot convert
        raise InvalidInput(
            f"Images in the {image.mode} colour mode aren't supported. Please send an RGB picture."
        ) from error


def _grey_to_8_bit(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit and float greyscale scaled to 0..255 (Pillow would clip, not scale).

    16-bit modes use their full range. Integer ``I`` images are taken as 8-bit when all
    values fit, else as 16-bit. Float ``F`` images are taken as 0..1 when all values fit
    (the usual convention), else as 0..255; NaN becomes black.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        values = values / 257.0
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
