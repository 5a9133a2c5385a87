"""Test images built in memory: known pixels in every mode and container, and bad files."""

from __future__ import annotations

import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

SAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "samples"
SAMPLES = ("astronaut", "cameraman", "cat", "coffee", "grace_hopper", "rocket")


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def quadrants(height: int = 48, width: int = 64) -> np.ndarray:
    """Four flat colours (red, green / blue, white): any flip or rotation moves them."""
    a = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    a[:h, :w] = (255, 0, 0)
    a[:h, w:] = (0, 255, 0)
    a[h:, :w] = (0, 0, 255)
    a[h:, w:] = (255, 255, 255)
    return a


def patch_image(size: int, row: int, col: int, channel: int, grid: int = 4) -> np.ndarray:
    """Black image with one grid cell lit in one channel."""
    a = np.zeros((size, size, 3), np.uint8)
    cell = size // grid
    a[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell, channel] = 255
    return a


def jpeg_with_orientation(stored: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(stored), "JPEG", quality=98, exif=exif.tobytes())


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (no pixel data needed)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def bad_files(photo_jpeg: bytes) -> dict[str, bytes]:
    """name -> bytes of every kind of bad input, with the reason expected in its error."""
    return {
        "empty.jpg": b"",
        "not_an_image.jpg": b"hello, I am a text file pretending to be a JPEG\n" * 20,
        "truncated.jpg": photo_jpeg[: len(photo_jpeg) // 2],
        "unsupported.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
        "bomb.png": png_bomb(),
    }


BAD_REASONS = {
    "empty.jpg": "empty file",
    "not_an_image.jpg": "not an image",
    "truncated.jpg": "truncated",
    "unsupported.pdf": "unsupported format",
    "bomb.png": "decompression bomb",
}
# The vocabulary reason each bad file's error row carries (README "What happens to bad input").
BAD_KINDS = {
    "empty.jpg": "empty file",
    "not_an_image.jpg": "not an image",
    "truncated.jpg": "corrupt image",
    "unsupported.pdf": "not an image",
    "bomb.png": "too many pixels",
}
