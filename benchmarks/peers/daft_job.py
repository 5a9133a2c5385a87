"""The labelling job in Daft, as its image guide writes one: from_glob_path, download,
decode_image (RGB), resize(300, 300) in Daft's own image ops, the model in a daft.cls class
whose batch method takes 32 images, write_parquet. Daft's local (native) runner.

    python -m benchmarks.peers.daft_job PHOTOS_DIR MODEL OUT_DIR
"""

import os
import sys

import numpy as np

os.environ.setdefault("DO_NOT_TRACK", "true")  # no network on the benchmark machine

import daft  # noqa: E402
from daft import DataType, col  # noqa: E402


@daft.cls
class Labeler:
    def __init__(self, model: str):
        import tensorflow as tf

        self.module = tf.saved_model.load(model)

    @daft.method.batch(return_dtype=DataType.list(DataType.int64()), batch_size=32)
    def __call__(self, images: daft.Series):
        batch = np.stack(images.to_pylist()).astype(np.float32) / 255.0
        return np.argsort(-self.module(batch).numpy(), axis=1)[:, :5].tolist()


def main(photos: str, model: str, out: str) -> None:
    df = daft.from_glob_path(os.path.join(photos, "*.jpg"))
    df = df.with_column("image", col("path").download().decode_image(mode="RGB").resize(300, 300))
    labeler = Labeler(model)
    df = df.select(
        col("path").alias("uri"), labeler(col("image").image_to_tensor()).alias("class_ids")
    )
    df.write_parquet(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
