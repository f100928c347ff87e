"""ONNX artifacts: `model_fp32.onnx` (every run) and `model_int8.onnx` (PT2E QAT and PTQ runs), and
running them with onnxruntime.

Both come from `torch.onnx.export` (the dynamo exporter, dynamic batch): the int8 one from the very
`torch.export` program saved as `model_int8.pt2`, whose quantize/dequantize ops become ONNX
QuantizeLinear/DequantizeLinear pairs around float ops (the QDQ format). onnxruntime fuses those pairs
into int8 kernels (QLinearConv, ...) when it loads the model, so the file keeps the QAT/PTQ scales
exactly and any ONNX runtime can run it. Input `image` (N, 3, H, W, normalised as in training),
output `logits` (N, 14).

onnx, onnxscript and onnxruntime are the optional extra `chexui[onnx]` (in `dev`); without them the
ONNX steps are skipped with a message saying how to enable them. `chexui bench` also runs the ONNX files
in OpenVINO when the optional extra `chexui[openvino]` is installed (it reads ONNX QDQ models as they are).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import nn

HINT = "install the ONNX extra to get them: pip install 'chexui[onnx]'"


def has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def missing() -> list[str]:
    """The packages ONNX export and inference need that are not installed."""
    return [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


def save(
    model: nn.Module | torch.export.ExportedProgram, image_size: int, path, metadata: dict[str, str] | None = None
) -> None:
    """Export a float model or an int8 program to ONNX at `path` (atomically), with `metadata` as the
    model's metadata_props (strings)."""
    from engine.fsutil import write_atomic

    example = (torch.zeros(2, 3, image_size, image_size),)
    if isinstance(model, nn.Module):
        model = model.cpu().eval()
    program = torch.onnx.export(
        model,
        example,
        dynamo=True,
        verbose=False,
        input_names=["image"],
        output_names=["logits"],
        external_data=False,
        dynamic_shapes=None if isinstance(model, torch.export.ExportedProgram) else ({0: torch.export.Dim("batch")},),
    )
    assert program is not None  # (torch.onnx.export returns the program with dynamo=True, its default)
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(path, proto.SerializeToString())


class _Runtime(nn.Module):
    """An ONNX model in another runtime, called like the torch models it stands beside: NCHW float32
    in, logits out; nothing in it depends on train/eval mode."""

    def train(self, mode: bool = True) -> _Runtime:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (channels_last input is a strided view: the runtimes want contiguous NCHW)
        return torch.from_numpy(self.run(np.ascontiguousarray(x.detach().float().cpu().numpy())))

    def run(self, feed: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def self_contained(path) -> bytes:
    """The bytes of an ONNX file from a run dir, checked to be a model with every tensor inside it (the
    files chexui writes): a tensor whose data lives in another file ("external data", a path the file
    names) is refused, so no runtime reads files the model points at. The file is parsed as protobuf
    (data) by onnx and handed to the runtime as these very bytes: nothing re-reads the path."""
    import onnx
    from google.protobuf.message import DecodeError

    from engine.errors import StorageError
    from engine.fsutil import read_regular

    data = read_regular(path)
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise StorageError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    outside = next((t.name for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL), None)
    if outside is not None:
        raise StorageError(
            f"{path}: tensor {outside!r} keeps its data in another file; chexui runs only "
            "self-contained ONNX files (as it writes them)"
        )
    return data


def _tensors(model):
    """Every tensor of an ONNX model: initializers and constant attributes, in subgraphs and functions too."""

    def graph(g):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in g.node:
            yield from nodes(node)

    def nodes(node):
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from graph(a.g)
            for sub in a.graphs:
                yield from graph(sub)

    yield from graph(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from nodes(node)


class Session(_Runtime):
    """An onnxruntime CPU session of a self-contained ONNX file (`self_contained`), after its sha256
    check (`export.load_model`)."""

    def __init__(self, path):
        super().__init__()
        import onnxruntime as ort

        from engine.errors import StorageError

        data = self_contained(path)
        try:
            self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types (Fail, InvalidGraph, ...)
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise StorageError(f"{path}: onnxruntime cannot load it ({reason})") from None
        self.input = self.session.get_inputs()[0].name

    def run(self, feed: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: feed})[0]


class OpenVINO(_Runtime):
    """The ONNX model compiled by OpenVINO for the CPU (`chexui bench` only; opened after the sha256
    check). Float layers run in fp32: OpenVINO's default on CPUs with bf16 instructions is bf16, which
    made its "fp32" row twice the CPU's fp32 peak (measured on this AVX-512 EPYC)."""

    def __init__(self, path):
        super().__init__()
        import tempfile

        import openvino as ov

        with tempfile.TemporaryDirectory() as tmp:  # the checked bytes, in a directory of their own
            model = f"{tmp}/model.onnx"
            with open(model, "wb") as f:
                f.write(self_contained(path))
            self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(self, feed: np.ndarray) -> np.ndarray:
        return self.compiled(feed)[0]
