"""The model handler: loading a SavedModel, the uint8 -> [0, 1] scaling, output checks."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.savedmodels import expected_probe_logits
from transforms.models.catalog import copy_model_locally
from transforms.models.handler import (
    TF_ALIGN,
    ImageClassifierHandler,
    as_tensor,
    stack_aligned,
)
from transforms.storage.uris import is_remote_file_uri


def test_handler_scales_uint8_to_unit_range(probe_model):
    handler = ImageClassifierHandler(probe_model, image_size=32, batch_size=4, num_classes=1000)
    model = handler.load_model()
    rng = np.random.default_rng(1)
    batch = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    results = handler.run_inference(batch, model)
    assert len(results) == 3
    for image, result in zip(batch, results, strict=True):
        np.testing.assert_allclose(result.inference, expected_probe_logits(image), atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (300, 300, 3)])
def test_batches_are_stacked_on_tensorflow_s_alignment(shape):
    rng = np.random.default_rng(2)
    for count in (1, 3, 32):
        batch = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
        stacked = stack_aligned(batch)
        assert stacked.ctypes.data % TF_ALIGN == 0
        assert stacked.flags.c_contiguous
        np.testing.assert_array_equal(stacked, np.stack(batch))


def test_an_aligned_batch_is_shared_with_tensorflow_and_a_misaligned_one_is_not():
    batch = stack_aligned([np.zeros((4, 4, 3), np.uint8)] * 2)
    tensor = as_tensor(batch)
    batch[1, 2, 3, 0] = 9  # no copy: TensorFlow sees the change
    assert int(tensor[1, 2, 3, 0]) == 9
    raw = np.zeros(2 * 48 + TF_ALIGN + 1, np.uint8)
    start = -raw.ctypes.data % TF_ALIGN + 1  # one byte past a boundary
    misaligned = raw[start : start + 96].reshape(2, 4, 4, 3)
    assert as_tensor(misaligned) is misaligned  # left for TensorFlow to copy


def test_handler_batches_at_the_configured_size(probe_model):
    handler = ImageClassifierHandler(probe_model, image_size=32, batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8}
    assert handler.get_num_bytes([np.zeros((32, 32, 3), np.uint8)] * 2) == 2 * 32 * 32 * 3


def test_label_count_must_match_model_outputs(probe_model):
    handler = ImageClassifierHandler(probe_model, image_size=32, batch_size=4, num_classes=10)
    with pytest.raises(ValueError, match="1000 outputs but the labels file has 10"):
        handler.load_model()


def test_remote_uris_are_recognised():
    assert is_remote_file_uri("gs://bucket/model")
    assert not is_remote_file_uri("/models/b3")
    assert not is_remote_file_uri("https://tfhub.dev/tensorflow/efficientnet/b3/classification/1")


def test_copy_model_locally_copies_every_file_once(probe_model, tmp_path):
    def files(root) -> dict:
        root = pathlib.Path(root)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    local = copy_model_locally(probe_model, str(tmp_path))
    assert files(local) == files(probe_model)  # every file, byte for byte
    stamps = {p: p.stat().st_mtime_ns for p in pathlib.Path(local).rglob("*")}
    assert copy_model_locally(probe_model, str(tmp_path)) == local
    assert {p: p.stat().st_mtime_ns for p in pathlib.Path(local).rglob("*")} == stamps  # once
    handler = ImageClassifierHandler(local, image_size=8, batch_size=1)
    assert handler.run_inference([np.zeros((8, 8, 3), np.uint8)], handler.load_model())


def test_require_gpu_stops_at_load_without_a_gpu(probe_model):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("needs a machine without a GPU (CI has none): here TensorFlow sees one")
    handler = ImageClassifierHandler(probe_model, image_size=32, batch_size=4, require_gpu=True)
    with pytest.raises(RuntimeError, match="--require_gpu is set but TensorFlow sees no GPU"):
        handler.load_model()


def test_tf_hub_downloads_go_to_a_lasting_user_cache(monkeypatch, tmp_path):
    from tensorflow_hub import resolver

    from transforms.models.catalog import use_lasting_hub_cache

    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    use_lasting_hub_cache()
    assert resolver.tfhub_cache_dir() == str(tmp_path / "beam-image-labeler" / "tfhub")
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/somewhere/else")  # the user's choice wins
    use_lasting_hub_cache()
    assert resolver.tfhub_cache_dir() == "/somewhere/else"


@pytest.mark.parametrize(("given", "expected"), [(None, "true"), ("false", "false")])
def test_tensorflow_keeps_its_cpu_memory_for_the_next_batch_unless_the_user_chose(given, expected):
    """TensorFlow's BFC allocator is chosen before TensorFlow loads (in a fresh process: it
    reads the variable once), and a user's own setting is kept."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if given is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = given
    code = (
        "import os, sys; from transforms.models.catalog import import_tensorflow_quietly; "
        "import_tensorflow_quietly(); assert 'tensorflow' in sys.modules; "
        "print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [expected]
