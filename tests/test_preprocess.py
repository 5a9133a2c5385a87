"""Preprocessing conventions, each against an expectation computed independently in NumPy."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.images import BAD_KINDS, BAD_REASONS, bad_files, encode, jpeg_with_orientation, quadrants
from transforms.images import DecodeError, decode_and_resize


def test_output_is_uint8_rgb_of_requested_size():
    out = decode_and_resize(encode(Image.fromarray(quadrants()), "PNG"), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_channels_stay_in_rgb_order():
    a = quadrants(32, 32)
    out = decode_and_resize(encode(Image.fromarray(a), "PNG"), 32)
    np.testing.assert_array_equal(out, a)


# Display = what EXIF orientation N asks a viewer to do to the stored pixels; the stored
# image is built from the upright one with the inverse NumPy operation.
STORED_FROM_UPRIGHT = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),  # viewer rotates 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),  # viewer rotates 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(STORED_FROM_UPRIGHT))
def test_exif_orientation_is_applied(orientation):
    upright = quadrants(48, 48)
    upright[:8, :8] = (255, 255, 0)  # a yellow corner breaks the remaining symmetry
    stored = np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright))
    out = decode_and_resize(jpeg_with_orientation(stored, orientation), 48)
    assert np.abs(out.astype(int) - upright.astype(int)).mean() < 4


def test_grayscale_becomes_equal_channels():
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    out = decode_and_resize(encode(Image.fromarray(gray, "L"), "PNG"), 32)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_sixteen_bit_grayscale_uses_the_full_range():
    values = np.array([[0, 257 * 100, 32768, 65535]] * 4, dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I")
    out = decode_and_resize(encode(img, "PNG"), 4)
    np.testing.assert_array_equal(out[0, :, 0], np.round(values[0] / 257.0).astype(np.uint8))


def test_cmyk_converts_to_rgb():
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8] = (255, 0, 0, 0)  # cyan
    cmyk[:, 8:] = (0, 0, 0, 255)  # black
    out = decode_and_resize(encode(Image.fromarray(cmyk, "CMYK"), "TIFF"), 16)
    np.testing.assert_array_equal(out[0, 0], (0, 255, 255))
    np.testing.assert_array_equal(out[0, 15], (0, 0, 0))


def test_alpha_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 64
    alpha = 64 / 255
    expected = np.round(np.array([200, 0, 0]) * alpha + 255 * (1 - alpha))
    out = decode_and_resize(encode(Image.fromarray(rgba, "RGBA"), "PNG"), 8)
    assert np.abs(out[4, 4].astype(int) - expected).max() <= 1


def test_palette_with_transparency_is_composited_on_white():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.paste(1, (0, 0, 4, 8))
    out = decode_and_resize(encode(pal, "PNG", transparency=0), 8)
    np.testing.assert_array_equal(out[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(out[0, 7], (255, 255, 255))


def test_first_frame_of_an_animation():
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_and_resize(data, 16)
    np.testing.assert_array_equal(out[8, 8], (255, 0, 0))


def test_resize_is_bilinear_on_a_linear_ramp():
    # Any linear interpolation reproduces a linear ramp: value at output column j is the
    # ramp evaluated at that column's centre mapped back into the source.
    width, size = 400, 100
    ramp = np.tile(np.linspace(0, 255, width), (width, 1))
    img = Image.fromarray(np.round(ramp).astype(np.uint8), "L")
    out = decode_and_resize(encode(img, "PNG"), size)[..., 0].astype(float)
    centres = (np.arange(size) + 0.5) * width / size - 0.5
    expected = np.interp(centres, np.arange(width), np.linspace(0, 255, width))
    interior = slice(2, size - 2)
    assert np.abs(out[50, interior] - expected[interior]).max() <= 1.5


def test_draft_decoding_of_large_jpeg_matches_full_decode():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((1600, 1200), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=92)
    fast = decode_and_resize(data, 300).astype(float)
    full = np.asarray(big.resize((300, 300), Image.Resampling.BILINEAR), dtype=float)
    assert np.abs(fast - full).mean() < 3


@pytest.mark.parametrize("name", sorted(BAD_REASONS))
def test_bad_input_raises_a_clear_reason(name, sample_jpeg):
    with pytest.raises(DecodeError, match=BAD_REASONS[name]) as raised:
        decode_and_resize(bad_files(sample_jpeg)[name], 300)
    assert raised.value.reason == BAD_KINDS[name]


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(DecodeError, match="decompression bomb: 100x100"):
        decode_and_resize(data, 8, max_pixels=9_999)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_large_rotated_jpeg_matches_pillow_upright_then_resized(orientation):
    """The JPEG path turns the small square upright after a DCT-scaled decode; Pillow's
    order (whole image upright, then resize) gives the same pixels."""
    rng = np.random.default_rng(orientation)
    base = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    stored = np.asarray(Image.fromarray(base).resize((1600, 1200), Image.Resampling.BICUBIC))
    data = jpeg_with_orientation(stored, orientation)
    reference = Image.open(io.BytesIO(data))
    reference.draft("RGB", (600, 600))
    upright = np.asarray(
        ImageOps.exif_transpose(reference).convert("RGB").resize((300, 300), Image.BILINEAR),
        dtype=float,
    )
    assert np.abs(decode_and_resize(data, 300).astype(float) - upright).mean() < 1.5


def test_grayscale_jpeg_becomes_equal_channels():
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    out = decode_and_resize(encode(Image.fromarray(gray, "L"), "JPEG", quality=95), 64)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - gray).max() <= 4


# --- a JPEG without its end marker: whole scans labelled, cut scans not ----------------------


def photo_like(height: int = 96, width: int = 128) -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC))


def jpegs() -> dict[str, bytes]:
    """name -> a complete JPEG file (ending in its end marker, FFD9)."""
    picture = Image.fromarray(photo_like())
    cmyk = Image.fromarray(np.dstack([photo_like(), photo_like()[..., :1]]), "CMYK")
    return {
        "baseline": encode(picture, "JPEG", quality=90),
        "progressive": encode(picture, "JPEG", quality=90, progressive=True),
        "restart intervals": encode(picture, "JPEG", quality=90, restart_marker_blocks=2),
        "grayscale": encode(picture.convert("L"), "JPEG", quality=90),
        "cmyk": encode(cmyk, "JPEG", quality=90),
    }


def independent_decode(data: bytes, size: int) -> np.ndarray:
    """Pillow's own decode and bilinear resize of a complete file."""
    img = Image.open(io.BytesIO(data))
    img.load()
    rgb = img.convert("RGB") if img.mode != "CMYK" else img.convert("RGB")
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=float)


@pytest.mark.parametrize("name", sorted(jpegs()))
@pytest.mark.parametrize("cut", [b"\xff\xd9", b"\xd9"])  # the marker, or its second byte
def test_a_jpeg_missing_its_end_marker_is_decoded_as_the_complete_file(name, cut):
    complete = jpegs()[name]
    assert complete.endswith(b"\xff\xd9")
    missing = complete[: -len(cut)]
    out = decode_and_resize(missing, 64)
    np.testing.assert_array_equal(out, decode_and_resize(complete, 64))
    assert np.abs(out - independent_decode(complete, 64)).max() <= 3


def scan_starts(data: bytes) -> list[int]:
    """Offsets of the start-of-scan markers (FFDA) of a JPEG."""
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]


@pytest.mark.parametrize("name", sorted(jpegs()))
@pytest.mark.parametrize("where", [0.5, 0.9, 0.99])
def test_a_jpeg_cut_inside_its_scan_data_stays_truncated(name, where):
    complete = jpegs()[name]
    last = scan_starts(complete)[-1]
    cut = complete[: last + int((len(complete) - 2 - last) * where)]
    with pytest.raises(DecodeError, match="truncated") as raised:
        decode_and_resize(cut, 64)
    assert raised.value.reason == "corrupt image"


def test_a_progressive_jpeg_cut_between_its_scans_stays_truncated():
    """Every scan there is whole, but the later ones, which refine the coefficients, are
    missing: not the complete picture."""
    complete = jpegs()["progressive"]
    starts = scan_starts(complete)
    assert len(starts) > 2
    for start in starts[1:]:
        with pytest.raises(DecodeError, match="truncated"):
            decode_and_resize(complete[:start], 64)
