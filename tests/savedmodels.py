"""Small SavedModels with the EfficientNet TF Hub module's signature, built at test time.

float32 [batch, H, W, 3] RGB in [0, 1] -> float32 [batch, classes] logits.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

GRID = 4
GAIN = 10.0


class GridProbe(tf.Module):
    """Logit (row*GRID + col)*3 + channel = GAIN x the mean of that channel in that grid cell.

    So the top class says where the brightest patch is and in which channel, and the
    scores say on what scale pixel values arrived: channel order, orientation and value
    range all move the output.
    """

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.classes = classes

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        cells = tf.image.resize(images, [GRID, GRID], method="area")
        features = GAIN * tf.reshape(cells, [-1, GRID * GRID * 3])
        return tf.pad(features, [[0, 0], [0, self.classes - GRID * GRID * 3]])


class Failing(tf.Module):
    """Fails on any batch holding an all-black image (for the dead-letter path)."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        peak = tf.reduce_max(images, axis=[1, 2, 3])
        tf.debugging.assert_positive(peak, message="black image in batch")
        return tf.pad(tf.reduce_mean(images, axis=[1, 2]), [[0, 0], [0, 997]])


def save(module: tf.Module, path: str) -> str:
    tf.saved_model.save(
        module, path, signatures={"serving_default": module.__call__.get_concrete_function()}
    )
    return path


def expected_probe_logits(image: np.ndarray, classes: int = 1000) -> np.ndarray:
    """The GridProbe's output computed independently in NumPy from a uint8 (S, S, 3) image
    whose side is a multiple of GRID."""
    size = image.shape[0]
    cell = size // GRID
    blocks = image.astype(np.float64).reshape(GRID, cell, GRID, cell, 3).mean(axis=(1, 3))
    logits = np.zeros(classes)
    logits[: GRID * GRID * 3] = GAIN * blocks.reshape(-1) / 255.0
    return logits


def probe_class(row: int, col: int, channel: int) -> int:
    return (row * GRID + col) * 3 + channel


class Constant(tf.Module):
    """The same logits for every image (NaN and infinities included)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = tf.constant(logits, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return tf.tile(self.logits[None, :], [tf.shape(images)[0], 1])


class NanWhenDark(tf.Module):
    """GridProbe's logits, but NaN ones for an image whose mean is under 0.1."""

    def __init__(self):
        super().__init__()
        self.probe = GridProbe()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        logits = self.probe(images)
        dark = tf.reduce_mean(images, axis=[1, 2, 3]) < 0.1
        return tf.where(dark[:, None], tf.fill(tf.shape(logits), float("nan")), logits)


class StructuredOutput(tf.Module):
    """Returns a dict ({"logits": ...}) or a tuple of two tensors instead of one tensor."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        logits = tf.pad(tf.reduce_mean(images, axis=[1, 2]), [[0, 0], [0, 997]])
        return {"logits": logits} if self.kind == "dict" else (logits, logits)


class UndeclaredWidth(tf.Module):
    """`classes` logits (rank 2), or (rank 3) `classes` rows of 2, in a shape computed at run
    time, so saved_model.pb declares [None, None] (or rank 3) and does not tell the width."""

    def __init__(self, classes: int, rank: int = 2):
        super().__init__()
        self.classes = classes
        self.rank = rank

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        means = tf.reduce_mean(images, axis=[1, 2])
        extra = tf.shape(images)[1] * 0 + self.classes - 3  # known only when it runs
        logits = tf.pad(means, [[0, 0], [0, extra]])
        return tf.stack([logits, logits], axis=-1) if self.rank == 3 else logits
