"""The one resolver of a --model value (a built-in name, a TF Hub handle, a gs:// or local
SavedModel folder): where its SavedModel is, its native image size, and whether it is usable.
Start-up (pipeline/config.py) and the workers (handler.py) both resolve through here."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.storage.local import read_whole
from transforms.storage.uris import is_remote_file_uri, is_web_url
from transforms.vocabulary import ImageError

DEFAULT_MODEL = "https://tfhub.dev/tensorflow/efficientnet/b3/classification/1"
# The built-in model (lite0.py, whose NAME this is; imported only when used: it loads
# TensorFlow, which --help need not).
LITE0 = "efficientnet-lite0"
FALLBACK_MODEL = LITE0  # used when --model is not given and TF Hub is away

# Each known model's native input side; a model the table does not name gets B3's.
NATIVE_SIZES: dict[str, int] = {DEFAULT_MODEL: 300, LITE0: 224}
DEFAULT_IMAGE_SIZE = NATIVE_SIZES[DEFAULT_MODEL]
BUILTIN_MODELS = (LITE0,)  # names --model accepts besides handles and paths


class ModelError(ValueError):
    """A --model value that cannot be used: one line saying why and what to do."""


class ModelDownloadError(ModelError):
    """A TF Hub handle could not be downloaded (no network, TF Hub away)."""


class ModelOutputError(ModelError):
    """The model does not return what a classifier must (one number tensor [batch, classes]):
    a dict or tuple, another rank, or a width other than the number of labels. Raised at
    start-up where saved_model.pb tells, else when the worker loads the model (handler.py);
    the one-line message names the model and what it returns."""


# What a SavedModel function's output structure (StructuredValue's `kind`) is, in words.
_STRUCTURES = {
    "dict_value": "a dict of values",
    "tuple_value": "a tuple of values",
    "list_value": "a list of values",
    "named_tuple_value": "a named tuple of values",
    "none_value": "nothing",
}
WANTED = "one tensor of scores [batch, classes]"


def native_size(model: str) -> int:
    return NATIVE_SIZES.get(model, DEFAULT_IMAGE_SIZE)


def is_builtin_model(handle: str) -> bool:
    return handle in BUILTIN_MODELS


def user_cache_dir(*parts: str) -> str:
    """A lasting per-user folder for models (converted built-ins, TF Hub downloads):
    $XDG_CACHE_HOME or ~/.cache, then beam-image-labeler/."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "beam-image-labeler", *parts)


def use_lasting_hub_cache() -> None:
    """TF Hub downloads go to the user's cache (not the system temp folder, which is
    emptied), so a second run does not download again; TFHUB_CACHE_DIR, if set, wins."""
    os.environ.setdefault("TFHUB_CACHE_DIR", user_cache_dir("tfhub"))


def locate(handle: str) -> str:
    """The folder holding the SavedModel a --model value names, readable with Beam's
    FileSystems: a built-in name -> its SavedModel (converted once into the user's cache); a
    TF Hub handle -> its download in the TF Hub cache (downloaded once); gs:// and local paths
    as given. ModelError (ModelDownloadError for TF Hub) in one line if it cannot be."""
    if is_builtin_model(handle):
        from transforms.models import lite0

        try:
            return lite0.lite0_saved_model(user_cache_dir("models"))
        except lite0.Lite0Error as e:
            raise ModelError(f"--model {e}") from None
    if is_web_url(handle):
        import tensorflow_hub as hub

        use_lasting_hub_cache()
        try:
            return hub.resolve(handle)
        except Exception as e:  # any failure means the same to the user
            raise ModelDownloadError(
                f"cannot download the model {handle} ({type(e).__name__}: {e}). Download "
                "the SavedModel where the internet is reachable, copy it here or to gs://, "
                "and pass --model /path/to/saved_model_dir (README 'Models')"
            ) from e
    return handle


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


def resolve_model_dir(handle: str) -> str:
    """The local folder a worker loads the model from: locate(), with a remote folder copied
    to local disk once."""
    folder = locate(handle)
    return copy_model_locally(folder) if is_remote_file_uri(folder) else folder


VERSION_FILES = ("saved_model.pb", "variables/variables.index")  # the graph; every weight's crc32c


def model_version(folder: str) -> str:
    """A digest of the model's content: SHA-256 over saved_model.pb and the variables' index
    (which holds a checksum of every weight), so new weights under the same name are a new
    version. Read once at start-up, with Beam's FileSystems (gs:// too)."""
    digest = hashlib.sha256()
    for name in VERSION_FILES:
        digest.update(name.encode() + b"\0")
        path = FileSystems.join(folder.rstrip("/"), *name.split("/"))
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# Protocol buffers cannot exceed 2 GiB; a SavedModel's graph is MBs (its weights are in
# variables/), so 1 GiB refuses only what is not a SavedModel's, before it fills memory.
MAX_SAVED_MODEL_BYTES = 1 << 30


def saved_model_outputs(model_dir: str) -> int | None:
    """Number of outputs of the SavedModel's __call__, read from saved_model.pb alone (no
    variables loaded), or None when the file does not say (then the load-time check rules).
    ModelOutputError when it says __call__ returns anything but one rank-2 tensor."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    pb = FileSystems.join(model_dir.rstrip("/"), "saved_model.pb")
    saved.ParseFromString(read_whole(pb, MAX_SAVED_MODEL_BYTES))
    graph = saved.meta_graphs[0].object_graph_def
    calls = [c.node_id for c in graph.nodes[0].children if c.local_name == "__call__"]
    sizes = set()
    for node in calls:
        for name in graph.nodes[node].function.concrete_functions:
            structure = graph.concrete_functions[name].output_signature
            kind = structure.WhichOneof("kind")
            if kind in _STRUCTURES:
                raise ModelOutputError(f"returns {_STRUCTURES[kind]}, not {WANTED}")
            if kind != "tensor_spec_value":
                continue
            shape = structure.tensor_spec_value.shape
            if not shape.unknown_rank and len(shape.dim) != 2:
                raise ModelOutputError(
                    f"returns a rank-{len(shape.dim)} tensor, not {WANTED}: one row of scores "
                    "per image"
                )
            if shape.dim:
                sizes.add(shape.dim[-1].size)
    return sizes.pop() if len(sizes) == 1 and min(sizes) > 0 else None


def check_label_count(model: str, outputs: int, num_labels: int) -> None:
    """The one check that a model's outputs and the class names agree (at start-up from
    saved_model.pb, on the worker after loading); ModelError with the fix otherwise."""
    if outputs != num_labels:
        raise ModelError(
            f"--model {model} has {outputs} outputs but the labels file has {num_labels} "
            "names; pass --labels_file with one class name per model output"
        )


def check_model(handle: str, num_labels: int) -> str:
    """A --model value is usable: located (built-ins converted, TF Hub handles downloaded),
    a SavedModel there (saved_model.pb and variables/), its outputs, where saved_model.pb
    states them, matching the labels. Returns the located folder; ModelError otherwise."""
    if not is_builtin_model(handle) and not is_web_url(handle):
        if not is_remote_file_uri(handle) and not os.path.isdir(handle):
            raise ModelError(f"--model {handle} does not exist; pass a SavedModel directory")
    folder = locate(handle)
    root = folder.rstrip("/")
    if not FileSystems.exists(FileSystems.join(root, "saved_model.pb")):
        raise ModelError(
            f"--model {handle} is not a SavedModel directory (no saved_model.pb in it)"
        )
    if not FileSystems.exists(FileSystems.join(root, "variables", "variables.index")):
        raise ModelError(
            f"--model {handle} is an incomplete SavedModel (no variables/variables.index in "
            "it); copy the whole SavedModel folder, variables/ included"
        )
    try:
        outputs = saved_model_outputs(folder)
    except ModelOutputError as e:
        raise ModelOutputError(f"--model {handle} {e}") from None
    except ImageError as e:  # a FIFO, a device, a folder, too large: refused unread
        raise ModelError(f"--model {handle}: saved_model.pb cannot be read ({e})") from None
    except Exception as e:  # not a protobuf, or not a SavedModel's
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ModelError(
            f"--model {handle}: saved_model.pb is not a readable SavedModel "
            f"({type(e).__name__}: {reason})"
        ) from None
    if outputs is not None:
        check_label_count(handle, outputs, num_labels)
    return folder


def import_tensorflow_quietly() -> None:
    """TensorFlow prints a dozen C++ lines as it loads (oneDNN, CUDA drivers, a cuInit error
    on machines without a GPU), before its own log level applies: unless the user set
    TF_CPP_MIN_LOG_LEVEL, it is imported here with file descriptor 2 pointed at /dev/null.
    Called when the model is chosen (and on a worker before it loads the model), so a run
    refused for a bad option or input never pays for the import.

    TensorFlow also imports a Keras as it loads; unless the user chose, the Keras 2 that TF
    Hub needs anyway (tf_keras, TF_USE_LEGACY_KERAS=1), not Keras 3, which imports
    matplotlib with it (a second more of every start). Restoring a SavedModel needs
    neither.

    And unless the user chose, TensorFlow keeps the CPU memory it has used for the next
    batch (its BFC allocator, TF_CPU_ALLOCATOR_USE_BFC): by default each batch's float
    tensors (35 MB for 32 images of 300x300, past glibc's mmap threshold) are new pages
    that the kernel faults in and zeroes, batch after batch (docs/performance.md)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow  # noqa: F401

        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow  # noqa: F401 - loaded now, silently; later imports reuse it
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def choose_model(given: str | None, num_labels: int) -> str:
    """--model as given, checked; without --model, EfficientNet-B3 from TF Hub, or where TF
    Hub cannot be reached, the built-in EfficientNet-Lite0, said in one line on stderr."""
    import_tensorflow_quietly()
    if given:
        check_model(given, num_labels)
        return given
    try:
        check_model(DEFAULT_MODEL, num_labels)
        return DEFAULT_MODEL
    except ModelDownloadError:
        pass
    print(
        f"TF Hub cannot be reached: labelling with the built-in {FALLBACK_MODEL} instead of "
        "EfficientNet-B3 (pass --model to choose; README 'Models')",
        file=sys.stderr,
    )
    check_model(FALLBACK_MODEL, num_labels)
    return FALLBACK_MODEL
