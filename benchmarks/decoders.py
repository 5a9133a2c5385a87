"""Decode+resize candidates for JPEG photos, timed on one core, and the labels they give:
the measurements behind transforms/images.py's JPEG path (benchmarks.run calls this).

    taskset -c 0 .venv/bin/python -m benchmarks.decoders [--extra_path DIR] [--agreement N]

Candidates not in requirements.txt (OpenCV, TensorFlow's decoder) are timed when importable,
for instance from a scratch `pip install --target DIR` given as --extra_path. Rounds are
interleaved and the best round of each kept, so load from other processes weighs less.
Prints one JSON line: images/s per candidate and size, and with --agreement N the top-1
agreement of the adopted path with the reference (the Pillow path it replaced) on N photos
under efficientnet-lite0's real ImageNet weights.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from benchmarks.workload import make_photos
from transforms import images as image_ops

LARGE = (3000, 2250)  # what a 7-megapixel camera or phone writes


def pillow_reference(data: bytes, size: int) -> np.ndarray:
    """The JPEG path before simplejpeg: Pillow, DCT-scaled to at least 2x the target,
    EXIF transpose of the whole image, bilinear resize."""
    img = Image.open(io.BytesIO(data))
    if min(img.size) >= 2 * size:
        img.draft("RGB", (2 * size, 2 * size))
    img = ImageOps.exif_transpose(img).convert("RGB")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def simplejpeg_floor(floor: int) -> Callable[[bytes, int], np.ndarray]:
    """The adopted path with another DCT floor (1: decode down to the target side itself)."""

    def decode(data: bytes, size: int) -> np.ndarray:
        saved, image_ops.DCT_FLOOR = image_ops.DCT_FLOOR, floor
        try:
            return image_ops.decode_and_resize(data, size)
        finally:
            image_ops.DCT_FLOOR = saved

    return decode


def opencv_reduced(data: bytes, size: int) -> np.ndarray:
    """OpenCV's reduced decode (1/2, 1/4, 1/8 at >= 2x the target) + area resize."""
    import cv2

    height, width = Image.open(io.BytesIO(data)).size[::-1]
    scale = image_ops.dct_scale(width, height, size)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag.get(scale, cv2.IMREAD_REDUCED_COLOR_8))
    small = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def tensorflow_decode(data: bytes, size: int) -> np.ndarray:
    import tensorflow as tf

    height, width = Image.open(io.BytesIO(data)).size[::-1]
    rgb = tf.io.decode_jpeg(data, channels=3, ratio=image_ops.dct_scale(width, height, size))
    resized = tf.image.resize(rgb, (size, size), antialias=True)
    return tf.cast(tf.round(resized), tf.uint8).numpy()


def candidates() -> dict[str, Callable[[bytes, int], np.ndarray]]:
    found = {
        "pillow (before)": pillow_reference,
        "simplejpeg >=2x + pillow resize (adopted)": image_ops.decode_and_resize,
        "simplejpeg >=1x + pillow resize": simplejpeg_floor(1),
    }
    try:
        import cv2

        cv2.setNumThreads(1)
        found["opencv reduced + area resize"] = opencv_reduced
    except ImportError:
        pass
    if os.environ.get("DECODERS_TF"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        found["tensorflow decode_jpeg(ratio) + resize"] = tensorflow_decode
    return found


def time_rounds(
    fns: dict[str, Callable], images: list[bytes], size: int, rounds: int, seconds: float
) -> dict[str, float]:
    """Best images/s of each candidate over interleaved rounds of about `seconds` each."""
    best = dict.fromkeys(fns, 0.0)
    for fn in fns.values():
        fn(images[0], size)  # warm
    for _ in range(rounds):
        for name, fn in fns.items():
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for data in images:
                    fn(data, size)
                n += len(images)
            best[name] = max(best[name], n / (time.perf_counter() - started))
    return best


def photo_bytes(n: int, folder: str, size: tuple[int, int], seed: int) -> list[bytes]:
    if not os.path.isdir(folder) or len(os.listdir(folder)) != n:
        make_photos(n, folder, size=size, seed=seed)
    return [open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))]


def top1(model, images: list[np.ndarray], batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        x = np.stack(images[i : i + batch]).astype(np.float32) / 255.0
        out.append(np.argmax(model(x).numpy(), axis=1))
    return np.concatenate(out)


def agreement(datas: list[bytes], size: int, fns: dict[str, Callable]) -> dict[str, float]:
    """Share of photos whose top-1 class under efficientnet-lite0 (real ImageNet weights)
    is the same after each candidate as after the reference."""
    import tensorflow as tf

    from transforms.models.catalog import LITE0, locate

    model = tf.saved_model.load(locate(LITE0))
    reference = top1(model, [pillow_reference(d, size) for d in datas])
    return {
        name: float(np.mean(top1(model, [fn(d, size) for d in datas]) == reference))
        for name, fn in fns.items()
        if fn is not pillow_reference
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="target side (B3: 300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per candidate per round")
    parser.add_argument("--extra_path", default="", help="folder of trial decoders to import")
    parser.add_argument("--agreement", type=int, default=0, help="photos for label agreement")
    parser.add_argument("--workdir", default="/tmp/image-labeler-bench", help="scratch folder")
    args = parser.parse_args(argv)
    if args.extra_path:
        sys.path.append(args.extra_path)
    fns = candidates()
    small = photo_bytes(40, os.path.join(args.workdir, "decode_500x375"), (500, 375), 1)
    large = photo_bytes(12, os.path.join(args.workdir, "decode_3000x2250"), LARGE, 2)
    report = {
        "cores": len(os.sched_getaffinity(0)),
        "size": args.size,
        "rates": {
            label: time_rounds(fns, images, args.size, args.rounds, args.seconds)
            for label, images in (("500x375", small), ("3000x2250", large))
        },
    }
    if args.agreement:
        half = args.agreement // 2
        datas = photo_bytes(half, os.path.join(args.workdir, "agree_small"), (500, 375), 3)
        datas += photo_bytes(
            args.agreement - half, os.path.join(args.workdir, "agree_large"), (1600, 1200), 4
        )
        report["agreement_lite0_224"] = agreement(datas, 224, fns)
        report["agreement_photos"] = len(datas)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
