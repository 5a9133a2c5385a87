"""Reads a legacy (non-zip) torch ``.pth`` state dict into NumPy arrays without torch.

Used by transforms/models/lite0.py to load pinned weights: the file's SHA-256 is checked before any
byte is unpickled, and the unpickler resolves only the few globals a state dict names.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import pickle
import struct
from typing import Any

import numpy as np

# The legacy format: five pickles (magic number, protocol version, sys info, the state dict,
# the storage keys), then each storage's raw bytes after an 8-byte little-endian count.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# The torch storage classes a state dict may name, and the element type each holds.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(ValueError):
    """The file is not a legacy torch state dict this reader accepts; one line says why."""


@dataclasses.dataclass(frozen=True)
class StorageType:
    """Stand-in for a torch storage class (torch.FloatStorage, ...): only its element type."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """A persistent id from the pickle: which storage, of what type and length."""

    key: str
    dtype: np.dtype
    size: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """What torch._utils._rebuild_tensor_v2 would rebuild: a strided view of a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def rebuild_tensor_v2(
    storage: StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2: records the view, builds nothing."""
    if not isinstance(storage, StorageRef):
        raise TorchPickleError(f"a tensor names {type(storage).__name__}, not a storage")
    return TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> what the restricted unpickler returns for it; nothing else loads."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
    }
    for name, dtype in STORAGE_DTYPES.items():
        allowed[("torch", name)] = StorageType(name, dtype)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allowed_globals() and torch's storage persistent ids.

    Any other global (os.system, builtins.eval, ...) raises TorchPickleError before it is
    looked up, so nothing but the stand-ins above can ever be called.
    """

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file)
        self._allowed = allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise TorchPickleError(f"refused to unpickle the global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> StorageRef:
        # ("storage", storage type, key, device, element count, view metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchPickleError(f"unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, size, view = pid
        if view is not None:
            raise TorchPickleError("storage views (legacy view metadata) are not supported")
        if not isinstance(storage_type, StorageType):
            raise TorchPickleError(f"persistent id names {storage_type!r}, not a storage type")
        return StorageRef(str(key), storage_type.dtype, int(size))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str, name: str) -> None:
    """Raises TorchPickleError unless the data's SHA-256 is the expected hex digest."""
    actual = sha256_hex(data)
    if actual != expected.lower():
        raise TorchPickleError(
            f"{name}: SHA-256 {actual[:16]}... does not match the pinned {expected[:16]}..., "
            "so it is damaged or not the pinned file"
        )


def restricted_load(stream: io.BufferedIOBase) -> Any:
    """One pickle from the stream through RestrictedUnpickler."""
    try:
        return RestrictedUnpickler(stream).load()
    except TorchPickleError:
        raise
    except Exception as e:  # truncated or malformed pickle data
        raise TorchPickleError(f"malformed pickle ({type(e).__name__}: {e})") from None


def read_storages(
    stream: io.BufferedIOBase, keys: list[str], refs: dict[str, StorageRef]
) -> dict[str, np.ndarray]:
    """The raw storages after the pickles, in the order of keys: each an int64 element count,
    then that many elements of the storage's type."""
    storages = {}
    for key in keys:
        if key not in refs:
            raise TorchPickleError(f"storage {key} is stored but no tensor uses it")
        ref = refs[key]
        header = stream.read(8)
        if len(header) != 8:
            raise TorchPickleError(f"truncated file: storage {key} is missing")
        (count,) = struct.unpack("<q", header)
        if count != ref.size:
            raise TorchPickleError(f"storage {key} holds {count} elements, not {ref.size}")
        raw = stream.read(count * ref.dtype.itemsize)
        if len(raw) != count * ref.dtype.itemsize:
            raise TorchPickleError(f"truncated file: storage {key} is cut short")
        storages[key] = np.frombuffer(raw, dtype=ref.dtype)
    return storages


def materialize(tensor: TensorRef, storage: np.ndarray) -> np.ndarray:
    """The tensor's values as a new C-contiguous array, honouring its offset and strides."""
    shape, strides = tensor.shape, tensor.strides
    if len(shape) != len(strides) or any(s < 0 for s in (*shape, *strides)):
        raise TorchPickleError(f"bad tensor view: size {shape}, stride {strides}")
    last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if tensor.offset < 0 or (all(shape) and last >= storage.size):
        raise TorchPickleError(
            f"tensor view (offset {tensor.offset}, size {shape}, stride {strides}) runs past "
            f"its storage of {storage.size} elements"
        )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :], shape=shape, strides=[s * item for s in strides], writeable=False
    )
    return np.ascontiguousarray(view)


def parse_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """The bytes of a legacy torch .pth holding a state dict -> {name: array}.

    Call it only on bytes whose digest was verified (read_state_dict does both).
    """
    stream = io.BytesIO(data)
    if restricted_load(stream) != MAGIC_NUMBER:
        raise TorchPickleError("not a legacy torch file (wrong magic number)")
    if restricted_load(stream) != PROTOCOL_VERSION:
        raise TorchPickleError("unsupported torch file protocol version")
    sys_info = restricted_load(stream)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise TorchPickleError("only little-endian torch files are supported")
    state = restricted_load(stream)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, TensorRef) for k, v in state.items()
    ):
        raise TorchPickleError("the file does not hold a state dict of tensors")
    keys = restricted_load(stream)
    if not isinstance(keys, list):
        raise TorchPickleError("the storage key list is missing")
    refs = {t.storage.key: t.storage for t in state.values()}
    storages = read_storages(stream, [str(k) for k in keys], refs)
    missing = set(refs) - set(storages)
    if missing:
        raise TorchPickleError(f"storage {sorted(missing)[0]} is used but not stored")
    return {name: materialize(t, storages[t.storage.key]) for name, t in state.items()}


def read_state_dict(path: str, sha256: str) -> dict[str, np.ndarray]:
    """Reads the file once, verifies its SHA-256 against the pinned digest, then parses it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TorchPickleError(f"{path}: cannot be read ({e.strerror or e})") from None
    verify_sha256(data, sha256, path)
    return parse_state_dict(data)
