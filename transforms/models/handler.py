"""The ModelHandler RunInference uses to load the model (resolved by catalog.py) once per worker
process and label batches of uint8 images: GPU set-up and the aligned, copy-free hand-off."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.metrics import NAMESPACE
from transforms.models.catalog import (
    WANTED,
    ModelError,
    ModelOutputError,
    check_label_count,
    import_tensorflow_quietly,
    resolve_model_dir,
)
from transforms.postprocess import top_k


def load_module(handle: str) -> Any:
    """Any --model value (catalog.resolve_model_dir) -> the restored module. The folder is a
    TF2 SavedModel, which is what hub.load restores too; TF Hub itself (a second of imports)
    is imported only to download a handle (catalog.locate)."""
    import tensorflow as tf

    return tf.saved_model.load(resolve_model_dir(handle))


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


def output_problem(out: Any, images: int) -> str | None:
    """What is wrong with a model's output for a batch of `images` (a value returned by the
    traced call), or None if it is one number tensor [images, classes]."""
    if isinstance(out, dict):
        return f"returns a dict ({', '.join(map(repr, sorted(map(str, out))))}), not {WANTED}"
    if isinstance(out, (tuple, list)):
        return f"returns a {type(out).__name__} of {len(out)} values, not {WANTED}"
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape is None or dtype is None:
        return f"returns a {type(out).__name__}, not {WANTED}"
    if not (dtype.is_floating or dtype.is_integer):
        return f"returns {dtype.name} values, not numbers: not {WANTED}"
    if len(shape) != 2 or shape[0] != images:
        return (
            f"returns a tensor of shape {tuple(shape)} for {images} image(s), not {WANTED}: "
            "one row of scores per image"
        )
    return None


# The process's loaded model, by the settings it was loaded with (at most one entry).
_LOADED: dict[tuple, Callable] = {}


class ImageClassifierHandler(ModelHandler[np.ndarray, PredictionResult, Callable]):
    """Loads a TF2 SavedModel image classifier; input uint8 (N, S, S, 3).

    The uint8 -> float32 [0, 1] conversion runs inside the compiled call, so images travel
    (and queue, and go to the GPU) at a quarter of the float size. Each image's result is
    its logits, or with `top_k` its postprocess.TopK (or the error of logits that give no
    probabilities), found for the whole batch at once.
    """

    def __init__(
        self,
        model: str,
        image_size: int,
        batch_size: int,
        num_classes: int | None = None,
        require_gpu: bool = False,
        top_k: int | None = None,
    ):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._top_k = top_k
        self._model = model
        self._image_size = image_size
        self._num_classes = num_classes
        self._require_gpu = require_gpu

    def load_model(self) -> Callable:
        """The model, loaded once per process for these settings: RunInference shares it
        among a job's threads, and a run in portions (one job after another in this process)
        finds it loaded (_LOADED)."""
        key = (self._model, self._image_size, self._num_classes, self._require_gpu)
        if key not in _LOADED:
            _LOADED.clear()  # one model at a time: another run's goes
            _LOADED[key] = self._load()
        return _LOADED[key]

    def _load(self) -> Callable:
        import_tensorflow_quietly()
        import tensorflow as tf

        configure_gpus(self._require_gpu)
        module = load_module(self._model)
        size = self._image_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
        def logits(images):
            return module(tf.cast(images, tf.float32) / 255.0)

        logits.module = module  # keep the restored variables alive with the function
        # One grey image traces the function and tells what it returns: a wrong shape or
        # type stops the job here with one line (ModelOutputError), before any image.
        self._check_output(logits(np.full((1, size, size, 3), 128, np.uint8)), 1)
        return logits

    def _check_output(self, out: Any, images: int) -> None:
        """ModelOutputError (one line naming the model) unless `out` is one number tensor
        [images, classes] with a class per label."""
        if problem := output_problem(out, images):
            raise ModelOutputError(f"--model {self._model} {problem}")
        if self._num_classes is not None:
            try:
                check_label_count(self._model, out.shape[-1], self._num_classes)
            except ModelError as e:
                raise ModelOutputError(str(e)) from None

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: Callable,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        out = model(as_tensor(stack_aligned(batch)))
        self._check_output(out, len(batch))  # an output that changes with the batch: these fail
        results = out.numpy() if self._top_k is None else top_k(out.numpy(), self._top_k)
        return [PredictionResult(image, r) for image, r in zip(batch, results, strict=True)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE
