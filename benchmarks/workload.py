"""Benchmark inputs: realistic photo JPEGs cut from the samples, and an EfficientNet-B3-sized
SavedModel (random weights) with the TF Hub module's signature."""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable

import numpy as np
from PIL import Image

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "samples"


def made_once(path: str, make: Callable[[str], object]) -> str:
    """path, made by make(path) unless an earlier call made it whole (a marker beside it says
    so; one cut short is made again from nothing)."""
    marker = path + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(path, ignore_errors=True)
        make(path)
        open(marker, "w").close()
    return path


def make_photos(n: int, folder: str, size=(500, 375), seed: int = 0) -> list[str]:
    """n JPEGs of about 500x375: random crops at random scales of the sample photos."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        scale = rng.uniform(0.5, 1.0)
        w, h = int(photo.width * scale), int(photo.height * scale)
        x, y = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        img = photo.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = os.path.join(folder, f"photo_{i:06d}.jpg")
        img.save(path, quality=90)
        paths.append(path)
    return paths


def build_b3(path: str) -> str:
    """Keras EfficientNet-B3 (random weights) saved as TF Hub saves a reusable SavedModel:
    one __call__, float32 [batch, H, W, 3] RGB in [0, 1] -> [batch, 1000] logits, and the
    variables; not Keras' per-layer functions, which would triple the load time (1,849 of
    them: 6.2 s to load instead of 1.7 s on the benchmark machine)."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    import tensorflow as tf
    import tf_keras

    net = tf_keras.applications.EfficientNetB3(weights=None, classifier_activation=None)

    @tf.function(input_signature=[tf.TensorSpec([None, 300, 300, 3], tf.float32)])
    def call(images):
        # Keras' EfficientNet rescales 0..255 itself; the hub module takes [0, 1].
        return net(images * 255.0, training=False)

    module = tf.Module()
    module.weights = list(net.variables)  # tracked; the Keras model itself is not
    module.__call__ = call
    tf.saved_model.save(module, path, signatures={"serving_default": call.get_concrete_function()})
    return path


def build_trivial(path: str) -> str:
    """A near-zero-cost model with the same signature (one pixel of each image, tiled to 1000
    logits): what the pipeline feeds per second when the model costs nothing. It reads one
    pixel, not all: a mean over every pixel costs about 0.25 ms per 300x300 image on this
    project's machine, a tenth of a decode, which is model work and not feeding."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    import tensorflow as tf

    class NearZero(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.tile(images[:, 0, 0, :], [1, 334])[:, :1000]  # [batch, 1000]

    tf.saved_model.save(NearZero(), path)
    return path
