"""Stage 3: the model handler RunInference uses to load EfficientNet (TF Hub SavedModel) once
per worker process and label batches of uint8 images."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.metrics import NAMESPACE

DEFAULT_MODEL = "https://tfhub.dev/tensorflow/efficientnet/b3/classification/1"

LITE0 = "efficientnet-lite0"  # the built-in model (transforms/lite0.py)

# Built-in model names --model accepts besides handles and paths -> their native image size.
BUILTIN_IMAGE_SIZES: dict[str, int] = {LITE0: 224}


class BuiltinModelError(RuntimeError):
    """A built-in model cannot be made ready (weights missing or damaged, cache unwritable);
    the one-line message says why and what to do."""


FALLBACK_MODEL = LITE0  # used when --model is not given and TF Hub is away


def user_cache_dir(*parts: str) -> str:
    """A lasting per-user folder for models (converted built-ins, TF Hub downloads):
    $XDG_CACHE_HOME or ~/.cache, then beam-image-labeler/."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "beam-image-labeler", *parts)


def use_lasting_hub_cache() -> None:
    """TF Hub downloads go to the user's cache (not the system temp folder, which is
    emptied), so a second run does not download again; TFHUB_CACHE_DIR, if set, wins."""
    os.environ.setdefault("TFHUB_CACHE_DIR", user_cache_dir("tfhub"))


def is_builtin_model(handle: str) -> bool:
    return handle in BUILTIN_IMAGE_SIZES


def is_remote_file_uri(handle: str) -> bool:
    """A Beam filesystem path other than the local disk (gs://, s3://, ...)."""
    scheme = FileSystems.get_scheme(handle)
    return scheme not in (None, "file", "http", "https")


def copy_model_locally(uri: str, cache_root: str | None = None) -> str:
    """Copies a SavedModel directory from a Beam filesystem (gs://...) to local disk once.

    Goes through Beam's FileSystems rather than tf.io.gfile, so it honours the same
    credentials and endpoints as the rest of the pipeline. Returns the local directory.
    """
    uri = uri.rstrip("/")
    cache_root = cache_root or os.path.join(tempfile.gettempdir(), "image_labeler_models")
    local = os.path.join(cache_root, hashlib.sha256(uri.encode()).hexdigest()[:16])
    if os.path.exists(os.path.join(local, "saved_model.pb")):
        return local
    os.makedirs(cache_root, exist_ok=True)
    staging = tempfile.mkdtemp(dir=cache_root)
    for meta in FileSystems.match([uri + "/**"])[0].metadata_list:
        relative = meta.path[len(uri) + 1 :]
        target = os.path.join(staging, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        raw = FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED)
        with raw as src, open(target, "wb") as dst:
            while chunk := src.read(16 << 20):
                dst.write(chunk)
    try:
        os.rename(staging, local)  # atomic: concurrent loaders see all or nothing
    except OSError:  # another process won the race; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return local


def saved_model_outputs(model_dir: str) -> int | None:
    """Number of outputs of the SavedModel's __call__, read from saved_model.pb alone (no
    variables loaded), or None when the file does not say (then the load-time check rules)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with FileSystems.open(FileSystems.join(model_dir.rstrip("/"), "saved_model.pb")) as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].object_graph_def
    calls = [c.node_id for c in graph.nodes[0].children if c.local_name == "__call__"]
    sizes = {
        spec.shape.dim[-1].size
        for node in calls
        for name in graph.nodes[node].function.concrete_functions
        if (spec := graph.concrete_functions[name].output_signature.tensor_spec_value).shape.dim
    }
    return sizes.pop() if len(sizes) == 1 and min(sizes) > 0 else None


def check_label_count(model: str, outputs: int, num_labels: int) -> None:
    """The one check that a model's outputs and the class names agree (at start-up from
    saved_model.pb, on the worker after loading); ValueError with the fix otherwise."""
    if outputs != num_labels:
        raise ValueError(
            f"--model {model} has {outputs} outputs but the labels file has {num_labels} "
            "names; pass --labels_file with one class name per model output"
        )


def resolve_model_dir(handle: str) -> str:
    """What hub.load is given for a --model value: a built-in name -> its local SavedModel
    (converted once into the user's cache; BuiltinModelError if it cannot be), gs:// and
    other remote file systems -> a local copy, a TF Hub handle/URL or local path as given."""
    if is_builtin_model(handle):
        from transforms.lite0 import lite0_saved_model

        return lite0_saved_model()
    if is_remote_file_uri(handle):
        return copy_model_locally(handle)
    return handle


def load_module(handle: str) -> Any:
    """Built-in name, TF Hub handle/URL, gs:// or local SavedModel directory -> the
    restored module."""
    import tensorflow_hub as hub

    use_lasting_hub_cache()
    return hub.load(resolve_model_dir(handle))


def configure_gpus(require_gpu: bool = False) -> None:
    """Memory growth on every GPU (so TF does not grab all memory up front); with
    require_gpu, a worker without one stops here."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process by an earlier load
            pass
    if require_gpu and not gpus:
        raise RuntimeError(
            "--require_gpu is set but TensorFlow sees no GPU on this worker "
            "(check the accelerator and the NVIDIA driver of the worker image)"
        )


# TensorFlow takes a CPU array without copying it (DLPack) only when it starts on a 64-byte
# boundary (Eigen's alignment): a misaligned one crashes it. numpy aligns large arrays to 16.
TF_ALIGN = 64


def stack_aligned(batch: Sequence[np.ndarray]) -> np.ndarray:
    """np.stack(batch), in memory that starts on a TF_ALIGN-byte boundary."""
    first = batch[0]
    shape = (len(batch), *first.shape)
    nbytes = int(np.prod(shape)) * first.itemsize
    raw = np.empty(nbytes + TF_ALIGN, np.uint8)
    start = -raw.ctypes.data % TF_ALIGN
    out = raw[start : start + nbytes].view(first.dtype).reshape(shape)
    return np.stack(batch, out=out)


def as_tensor(images: np.ndarray) -> Any:
    """The batch for the compiled call: shared with TensorFlow by DLPack when aligned (the
    copy TensorFlow makes otherwise took 4.5 ms of a batch of 32 300x300 images, under the
    GIL, on the benchmark machine), else as it is, for TensorFlow to copy."""
    if images.ctypes.data % TF_ALIGN or not images.flags.c_contiguous:
        return images
    import tensorflow as tf

    return tf.experimental.dlpack.from_dlpack(images.__dlpack__())


class ImageClassifierHandler(ModelHandler[np.ndarray, PredictionResult, Callable]):
    """Loads a TF2 SavedModel image classifier with hub.load; input uint8 (N, S, S, 3).

    The uint8 -> float32 [0, 1] conversion runs inside the compiled call, so images travel
    (and queue, and go to the GPU) at a quarter of the float size.
    """

    def __init__(
        self,
        model: str,
        image_size: int,
        batch_size: int,
        num_classes: int | None = None,
        require_gpu: bool = False,
    ):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._model = model
        self._image_size = image_size
        self._num_classes = num_classes
        self._require_gpu = require_gpu

    def load_model(self) -> Callable:
        import tensorflow as tf

        configure_gpus(self._require_gpu)
        module = load_module(self._model)
        size = self._image_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
        def logits(images):
            return module(tf.cast(images, tf.float32) / 255.0)

        logits.module = module  # keep the restored variables alive with the function
        # One grey image traces the function and tells the number of outputs.
        outputs = logits(np.full((1, size, size, 3), 128, np.uint8)).shape[-1]
        if self._num_classes is not None:
            check_label_count(self._model, outputs, self._num_classes)
        return logits

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: Callable,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        logits = model(as_tensor(stack_aligned(batch))).numpy()
        return [PredictionResult(image, row) for image, row in zip(batch, logits, strict=True)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE
