"""Stage 2 of the pipeline: image bytes -> uint8 RGB array of the model's input size.

Pure functions, no Beam: decode, orient, first frame, any mode to RGB, bilinear resize.
Pixels stay uint8 here; the model handler scales them to float [0, 1] inside the batched call.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from transforms import vocabulary as v

# Images above this many pixels are refused before any pixel is decoded (PIL's own default
# limit, about a 9,500 x 9,500 image, at which it only warns).
DEFAULT_MAX_PIXELS = 89_478_485

# The largest model input side accepted (EfficientNet-B7 takes 600): a batch of 64 such
# images is 768 MiB as float32, so memory stays bounded whatever --image_size says.
MAX_IMAGE_SIZE = 1024

# Transparent pixels are composited onto this background (what a viewer shows).
BACKGROUND = (255, 255, 255)

# 16-bit grayscale (PNG, TIFF); "I" is how some Pillow versions open it.
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class DecodeError(v.ImageError):
    """The bytes are not an image this stage can label; `reason` says which kind of bad
    (one of vocabulary.REASONS[DECODE]), the message the detail."""


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Parses the header and refuses empty data, non-images and decompression bombs.

    Reads no pixels yet, so a bomb is refused before it costs memory.
    """
    if not data:
        raise DecodeError(v.EMPTY, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # PIL warns (and past 2x raises) on huge images; we apply our own limit below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise DecodeError(v.TOO_MANY_PIXELS, f"decompression bomb: {e}") from e
        except Image.UnidentifiedImageError as e:
            raise DecodeError(
                v.NOT_AN_IMAGE,
                f"not an image or unsupported format ({len(data)} bytes, starts {data[:8]!r})",
            ) from e
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(
            v.TOO_MANY_PIXELS,
            f"decompression bomb: {width}x{height} = {width * height} pixels "
            f"exceeds the limit of {max_pixels}",
        )
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is composited onto a white background."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255; scale the full range instead.
        wide = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
        img = Image.fromarray(np.round(wide / 257.0).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_and_resize(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> uint8 array of shape (size, size, 3), RGB, upright.

    Follows the EfficientNet TF Hub module's conventions: EXIF orientation applied, first
    frame of an animation, any mode to RGB, bilinear resize to a square (no crop, no
    mean/std normalisation). Raises DecodeError with a readable reason on bad input.
    """
    img = open_image(data, max_pixels)
    try:
        if img.format == "JPEG" and min(img.size) >= 2 * size:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below 2x the target.
            img.draft("RGB", (2 * size, 2 * size))
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img)
    except OSError as e:  # truncated or corrupt pixel data, codec errors
        raise DecodeError(v.CORRUPT, f"corrupt or truncated image data ({img.format}): {e}") from e
    except (ValueError, SyntaxError, EOFError) as e:
        raise DecodeError(v.CORRUPT, f"undecodable {img.format} image: {e}") from e
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
