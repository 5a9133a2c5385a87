"""The labelling job in Ray Data, as its batch-inference guide writes one: read_images (PIL,
RGB, 300x300 bilinear), a callable class in map_batches (the model loaded once per actor, one
actor), write_parquet. A local Ray, no dashboard.

    python -m benchmarks.peers.ray_data_job PHOTOS_DIR MODEL OUT_DIR
"""

import os
import sys

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network on the benchmark machine


class Labeler:
    def __init__(self, model: str):
        import tensorflow as tf

        self.module = tf.saved_model.load(model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = self.module(batch["image"].astype(np.float32) / 255.0).numpy()
        return {"uri": batch["path"], "class_ids": np.argsort(-logits, axis=1)[:, :5]}


def main(photos: str, model: str, out: str) -> None:
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.read_images(photos, size=(300, 300), mode="RGB", include_paths=True)
        ds = ds.map_batches(
            Labeler,
            fn_constructor_args=(model,),
            batch_size=32,
            compute=ray.data.ActorPoolStrategy(size=1),
        )
        ds.write_parquet(out)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
