"""The baseline a user would write without Beam: PIL decode and resize, batches of 32 through
the SavedModel, top-5 rows into one Parquet file. Same model, same photos, one process.

    python -m benchmarks.simple_script PHOTOS_DIR MODEL OUT.parquet [BATCH]
"""

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def main(photos: str, model: str, out: str, batch_size: int = 32) -> None:
    import tensorflow as tf

    module = tf.saved_model.load(model)
    paths = sorted(os.path.join(photos, f) for f in os.listdir(photos))
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [
            np.asarray(Image.open(p).convert("RGB").resize((300, 300)), np.float32) / 255.0
            for p in chunk
        ]
        logits = module(np.stack(images)).numpy()
        top = np.argsort(-logits, axis=1)[:, :5]
        rows += [{"uri": p, "class_ids": t.tolist()} for p, t in zip(chunk, top, strict=True)]
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(len(rows))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
