"""The U-Net as ONNX: exported at training (tf2onnx), and an untrusted model.onnx loaded as data
and run by ONNX Runtime, without TensorFlow.

The loader reads the file once, checks its SHA-256 against the model config, parses it without
external data and refuses what a U-Net export never holds: tensors stored outside the file,
nodes outside the default domain, operators outside ALLOWED_OPS, an opset other than the
exported one, a tensor that declares more bytes than the file has. The session is built from
the checked bytes, with no custom-operator library, no optimised-model file and no session
options read from the model (ORT_LOAD_CONFIG_FROM_MODEL ignored)."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sarcoma_seg.digest import bytes_sha256
from sarcoma_seg.errors import SarcomaSegError, one_line

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17  # the default-domain opset every export is written in (and the only one read)
INPUT_NAME = "image"  # (batch, rows, cols, channels) float32, as the Keras model takes it
MAX_ONNX_BYTES = 2**31 - 1  # protobuf's own limit; a 10-member resnet34 ensemble is ~1.1 GB
# largest |ONNX - Keras| probability accepted at export, on a random batch: float32 kernels of
# the two runtimes differ by ~1e-5 on trained models and up to ~2e-4 on a barely trained tiny one
# (test params); a wrong conversion is off by tenths
EXPORT_TOLERANCE = 1e-3
# the operators tf2onnx writes for segmentation-models U-Nets of the registry's backbones
# (ResNets, ensembles' mean): standard ONNX operators without file or network access; any other
# operator in a model.onnx is refused
ALLOWED_OPS = frozenset(
    [
        "Add",
        "BatchNormalization",
        "Cast",
        "Concat",
        "Constant",
        "Conv",
        "Div",
        "Gather",
        "Identity",
        "MaxPool",
        "Mean",
        "Mul",
        "Pad",
        "Relu",
        "Reshape",
        "Resize",
        "Shape",
        "Sigmoid",
        "Slice",
        "Squeeze",
        "Sub",
        "Sum",
        "Transpose",
        "Unsqueeze",
    ]
)
DEFAULT_DOMAINS = ("", "ai.onnx")
EXPORT_PASSES = ("optimize_transpose", "remove_identity", "remove_back_to_back", "fold_constants")


def export_onnx(model: Any, path: Path) -> str:
    """Convert a Keras U-Net to ONNX at path (any batch and image size), check that ONNX Runtime
    gives the Keras probabilities on a test batch, and return the file's SHA-256."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    channels = int(model.input_shape[-1])
    spec = (tf.TensorSpec((None, None, None, channels), tf.float32, name=INPUT_NAME),)
    from tf2onnx.optimizer import _optimizers as optimizers

    # the passes that matter for speed; tf2onnx's full set takes 2-3x as long (deep copies of
    # the weights per pass) for the same inference time (docs/results.md)
    passes = {name: optimizers[name] for name in EXPORT_PASSES}
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=spec, opset=ONNX_OPSET, optimizers=passes
    )
    # tf2onnx also declares the ai.onnx.ml domain; no node uses it, and the loader reads one opset
    del proto.opset_import[:]
    proto.opset_import.append(onnx.helper.make_opsetid("", ONNX_OPSET))
    data = proto.SerializeToString()
    batch = np.random.default_rng(0).random((2, 64, 64, channels), dtype=np.float32)
    keras = np.asarray(model(batch, training=False))
    onnx_probs = session_from_bytes(data, Path(path))(batch)
    if not np.allclose(onnx_probs, keras, atol=EXPORT_TOLERANCE):
        worst = float(np.abs(onnx_probs - keras).max())
        raise SarcomaSegError(f"{path}: the ONNX export differs from Keras by {worst:.2e}")
    Path(path).write_bytes(data)
    return bytes_sha256(data)


def graphs(graph: Any) -> Iterator[Any]:
    """A graph and every subgraph of its nodes' attributes, depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in (
                [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs
            ):
                yield from graphs(sub)


def tensors(graph: Any) -> Iterator[Any]:
    """Every tensor stored in a graph: initializers, sparse ones' parts, node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def declared_bytes(tensor: Any) -> int:
    """The bytes a tensor's dims and type declare (0 for a type without a fixed size)."""
    from onnx import helper

    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 0
    return int(np.prod([max(int(d), 0) for d in tensor.dims], dtype=np.float64)) * itemsize


def check_onnx_model(proto: Any, path: Path, size: int) -> None:
    """Refuse what no U-Net export holds (see the module's docstring); one line each."""
    from onnx import TensorProto

    for opset in proto.opset_import:
        if opset.domain not in DEFAULT_DOMAINS or opset.version != ONNX_OPSET:
            name = opset.domain or "ai.onnx"
            raise SarcomaSegError(
                f"{path}: opset {name} {opset.version} is not the exported {ONNX_OPSET}"
            )
    for graph in graphs(proto.graph):
        for node in graph.node:
            if node.domain not in DEFAULT_DOMAINS:
                raise SarcomaSegError(
                    f"{path}: node {node.name!r} is in the custom domain {node.domain!r}"
                )
            if node.op_type not in ALLOWED_OPS:
                raise SarcomaSegError(
                    f"{path}: operator {node.op_type} (node {node.name!r}) is not one a U-Net uses"
                )
        for tensor in tensors(graph):
            if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
                raise SarcomaSegError(
                    f"{path}: tensor {tensor.name!r} is stored outside the file; refused"
                )
            if declared_bytes(tensor) > size:
                raise SarcomaSegError(
                    f"{path}: tensor {tensor.name!r} declares {declared_bytes(tensor)} bytes, "
                    f"more than the file's {size}"
                )


def session_from_bytes(data: bytes, path: Path) -> Any:
    """An ONNX Runtime session over checked model bytes, as a batch -> probabilities function."""
    import onnxruntime as ort

    os.environ.pop("ORT_LOAD_CONFIG_FROM_MODEL", None)  # model metadata never sets options
    # kernels log through the default logger (e.g. a deprecation notice of tf2onnx's Resize)
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: stderr holds our one line, not ORT's notices
    options.add_session_config_entry("session.load_config_from_model", "0")
    # a GPU build of onnxruntime runs on CUDA where it can; the CPU one has only this provider
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types, all one line here
        reason = one_line(exc)
        raise SarcomaSegError(f"{path}: ONNX Runtime cannot build the model ({reason})") from exc
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        """Tumour probabilities (n, rows, cols, 1) of a float32 batch."""
        return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0]

    return run


def load_onnx(path: Path, sha256: str | None, config: Path) -> Any:
    """An untrusted model.onnx as a batch -> probabilities function: size bound, hash checked
    against the config, parsed without external data, checked (check_onnx_model), then run."""
    from google.protobuf.message import DecodeError
    from onnx import ModelProto

    if sha256 is None:
        raise SarcomaSegError(f"{config}: has no model.onnx_sha256; use --engine tensorflow")
    try:
        size = path.stat().st_size
        if size > MAX_ONNX_BYTES:
            raise SarcomaSegError(f"{path}: {size} bytes, more than an ONNX file may hold")
        with path.open("rb") as f:
            data = f.read(MAX_ONNX_BYTES + 1)
    except OSError as exc:
        raise SarcomaSegError(f"{path}: cannot read the ONNX model ({exc.strerror})") from exc
    if bytes_sha256(data) != sha256:
        raise SarcomaSegError(
            f"{path}: SHA-256 differs from onnx_sha256 in {config}; the file was changed "
            "or damaged since training"
        )
    proto = ModelProto()
    try:
        proto.ParseFromString(data)  # bytes only: external data is never looked up
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise SarcomaSegError(f"{path}: not a readable ONNX model (truncated or damaged)") from exc
    if not proto.HasField("graph"):
        raise SarcomaSegError(f"{path}: not a readable ONNX model (no graph)")
    check_onnx_model(proto, path, len(data))
    return session_from_bytes(data, path)
