"""Image bytes -> uint8 RGB array of the model's input size, for feed.py.

Pure functions, no Beam: decode, orient, first frame, any mode to RGB, bilinear resize.
Pixels stay uint8 here; the model handler scales them to float [0, 1] inside the batched call.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from transforms import vocabulary as v

# Images above this many pixels are refused before any pixel is decoded (PIL's own default
# limit, about a 9,500 x 9,500 image, at which it only warns).
DEFAULT_MAX_PIXELS = 89_478_485

# The largest model input side accepted (EfficientNet-B7 takes 600): a batch of 64 such
# images is 768 MiB as float32, so memory stays bounded whatever --image_size says.
MAX_IMAGE_SIZE = 1024

# JPEGs are decoded at a reduced DCT scale (1/2, 1/4, 1/8) as long as both sides stay at least
# this many times the model's input side; the bilinear resize does the rest.
DCT_FLOOR = 2

ORIENTATION_TAG = 0x0112  # EXIF

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
            raise DecodeError(
                v.TOO_MANY_PIXELS, "decompression bomb: more than twice the pixel limit"
            ) from e
        except Image.UnidentifiedImageError as e:
            raise DecodeError(
                v.NOT_AN_IMAGE, f"not an image or unsupported format ({len(data):,} bytes)"
            ) from e
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(
            v.TOO_MANY_PIXELS,
            f"decompression bomb: {width}x{height} = {width * height} pixels "
            f"exceeds the limit of {max_pixels}",
        )
    return img


def corrupt(fmt: str | None, exc: BaseException) -> DecodeError:
    """The error for pixel data a decoder gave up on. It names the kind of failure and the
    decoder's exception type, never the decoder's message: those quote the file's bytes
    (PIL: "broken PNG file (chunk b'...')", "not a TIFF file (header b'...')", libjpeg:
    marker values), and error rows must hold no content of the input."""
    message = str(exc).lower()
    # PIL says "truncated"; libjpeg (simplejpeg) "Premature end of JPEG file".
    what = "truncated" if "truncat" in message or "premature end" in message else "corrupt"
    return DecodeError(v.CORRUPT, f"{what} {fmt or 'image'} data ({type(exc).__name__})")


ROWS_AT_ONCE = 256  # rows of a 16-bit image widened at a time


def sixteen_to_eight(wide: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer) gray -> 8-bit, round(clip(v, 0, 65535) / 257), a band of
    rows at a time: the temporary widening never holds more than ROWS_AT_ONCE rows."""
    out = np.empty(wide.shape, np.uint8)
    for top in range(0, wide.shape[0], ROWS_AT_ONCE):
        band = np.clip(wide[top : top + ROWS_AT_ONCE].astype(np.int64), 0, 65535)
        out[top : top + ROWS_AT_ONCE] = (band + 128) // 257
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is composited onto a white background."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255; scale the full range instead.
        img = Image.fromarray(sixteen_to_eight(np.asarray(img)), mode="L")
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
    return to_square(data, open_image(data, max_pixels), size)


# Bytes per pixel of a decoded frame, by PIL mode (modes not listed: 4, PIL's widest band set).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 4, "YCbCr": 4}
_MODE_BYTES |= dict.fromkeys(_SIXTEEN_BIT_MODES - {"I"}, 2)


def decoded_bytes(img: Image.Image, size: int) -> int:
    """About the most memory decoding this opened image takes at once (its first frame, and
    the 8-bit RGB copy made from it), from the header alone: what the feeder holds in its
    pixel budget while decoding. A JPEG the fast path decodes counts at its DCT scale."""
    width, height = img.size
    if img.format == "JPEG" and img.mode in ("RGB", "L"):
        scale = dct_scale(width, height, size)
        return 2 * 3 * -(-width // scale) * -(-height // scale)
    frame = width * height * _MODE_BYTES.get(img.mode, 4)
    return frame + 4 * width * height  # the frame, and PIL's RGB (4 bytes a pixel)


def to_square(data: bytes, img: Image.Image, size: int) -> np.ndarray:
    """An opened image (open_image) -> uint8 (size, size, 3) RGB, upright: decode_and_resize
    after its header check. A JPEG whose scans are whole but whose end marker is missing is
    decoded with the marker added (what a browser shows); one cut inside its scans is not."""
    try:
        return decode_square(data, img, size)
    except DecodeError:
        whole = with_end_marker(data, img) if img.format == "JPEG" else None
        if whole is None:
            raise
    return decode_square(whole, Image.open(io.BytesIO(whole)), size)


def decode_square(data: bytes, img: Image.Image, size: int) -> np.ndarray:
    if img.format == "JPEG" and img.mode in ("RGB", "L"):
        return jpeg_to_square(data, img, size)
    try:
        if img.format == "JPEG" and min(img.size) >= 2 * size:  # CMYK JPEGs
            img.draft("RGB", (2 * size, 2 * size))
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # bad pixel data, codec errors
        raise corrupt(img.format, e) from e
    return resize_square(rgb, size)


def preprocess_id(size: int) -> str:
    """What changes pixels, in a row's `preprocess` column: the input side, the resize kernel,
    the JPEG DCT floor and the decoders' versions."""
    import PIL

    return (
        f"{size}x{size} bilinear dct>={DCT_FLOOR}x simplejpeg-{simplejpeg.__version__} "
        f"pillow-{PIL.__version__}"
    )


def resize_square(rgb: Image.Image, size: int) -> np.ndarray:
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def dct_scale(width: int, height: int, size: int) -> int:
    """The largest JPEG DCT reduction (1, 2, 4 or 8, libjpeg's exact ones) that keeps both
    sides at least DCT_FLOOR x the target side."""
    scale = 8
    while scale > 1 and min(width, height) < DCT_FLOOR * size * scale:
        scale //= 2
    return scale


# Orientation tag -> what a viewer does to the stored pixels, on a (rows, cols, 3) array.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def jpeg_to_square(data: bytes, img: Image.Image, size: int) -> np.ndarray:
    """A YCbCr or grayscale JPEG decoded by libjpeg-turbo (simplejpeg) at a reduced DCT scale,
    resized, then turned upright: the orientation is applied to the small square (a square
    resize commutes with flips and quarter turns), not to the full image."""
    width, height = img.size
    scale = dct_scale(width, height, size)
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_width=-(-width // scale),
            min_height=-(-height // scale),
        )
    except ValueError as e:  # libjpeg's errors and warnings (strict): truncated, corrupt
        raise corrupt("JPEG", e) from e
    out = resize_square(Image.fromarray(pixels), size)
    orient = _ORIENT.get(img.getexif().get(ORIENTATION_TAG))
    return np.ascontiguousarray(orient(out)) if orient else out


# --- A JPEG without its end marker ---------------------------------------------------------

EOI = b"\xff\xd9"  # end of image
_SOS = 0xDA  # start of scan
_DCT_FRAMES = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # baseline, extended, progressive (both codings)
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical


def with_end_marker(data: bytes, img: Image.Image) -> bytes | None:
    """`data` + EOI when the JPEG has no end marker but every scan it needs (scans_complete)
    and, with the marker added, decodes strictly (libjpeg-turbo, warnings as errors: scan
    data cut short hits the marker and fails); else None."""
    if not scans_complete(data):
        return None
    whole = data + EOI
    try:
        simplejpeg.decode_jpeg(whole, colorspace="CMYK" if img.mode == "CMYK" else "RGB")
    except ValueError:
        return None
    return whole


def scans_complete(data: bytes) -> bool:
    """Whether the JPEG's segments, walked from its start, end without an end-of-image
    marker, none cut short, after scans that bring every coefficient of every component to
    full precision (a progressive file cut between two scans has not). Whether the last
    scan's entropy-coded data is whole only a decode can say (with_end_marker)."""
    if data[:2] != b"\xff\xd8":
        return False
    pos, end = 2, len(data)
    final: dict[int, set[int]] | None = None  # component id -> coefficients at full precision
    while pos < end:
        if data[pos] != 0xFF:
            return False  # bytes between segments that are not a marker
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker, pos = data[pos], pos + 1
        if marker == EOI[1]:
            return False  # it has one
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")
        body = data[pos + 2 : pos + length]
        if length < 2 or len(body) < length - 2:
            return False  # a segment cut short
        pos += length
        if marker in _OTHER_FRAMES:
            return False
        if marker in _DCT_FRAMES and len(body) >= 6:
            final = {body[6 + 3 * i]: set() for i in range(body[5]) if 8 + 3 * i < len(body)}
        elif marker == _SOS:
            if final is None or not body or len(body) < 4 + 2 * body[0]:
                return False
            count = body[0]
            first, last, low = body[1 + 2 * count], body[2 + 2 * count], body[3 + 2 * count] & 15
            for component in body[1 : 1 + 2 * count : 2]:
                if component not in final:
                    return False
                if low == 0:  # this scan leaves these coefficients at full precision
                    final[component].update(range(first, min(last, 63) + 1))
            pos = scan_end(data, pos)
    return bool(final) and all(len(done) == 64 for done in final.values())


def scan_end(data: bytes, pos: int) -> int:
    """Where a scan's entropy-coded data from `pos` ends: at the next marker (0xFF followed
    by neither a stuffed 0x00 nor a restart marker), or at the end of the data."""
    while True:
        at = data.find(b"\xff", pos)
        if at < 0 or at + 1 >= len(data):
            return len(data)
        following = data[at + 1]
        if following == 0xFF:
            pos = at + 1
        elif following == 0x00 or 0xD0 <= following <= 0xD7:
            pos = at + 2
        else:
            return at
