"""The limit: the model's own call, as the pipeline's handler compiles it (uint8 batches scaled
inside), on pre-decoded batches, with no pipeline around it.

    python -m benchmarks.bare_model MODEL_DIR BATCH_SIZE BATCHES [IMAGE_SIZE]

Prints one JSON line: load seconds, first-batch seconds, steady images/s at the batch size.
"""

import json
import sys
import time

import numpy as np


def main(model: str, batch_size: int, batches: int, size: int = 300) -> None:
    started = time.perf_counter()
    from transforms.models.handler import ImageClassifierHandler

    call = ImageClassifierHandler(model, image_size=size, batch_size=batch_size).load_model()
    loaded = time.perf_counter()
    images = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), np.uint8)
    call(images).numpy()
    first = time.perf_counter()
    call(images).numpy()  # second warm-up: one-off allocations settle
    t0 = time.perf_counter()
    for _ in range(batches):
        call(images).numpy()
    rate = batches * batch_size / (time.perf_counter() - t0)
    print(json.dumps({"load_s": loaded - started, "first_batch_s": first - loaded, "rate": rate}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:5]))
