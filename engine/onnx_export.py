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


def save(model: nn.Module | torch.export.ExportedProgram, image_size: int, path,
         metadata: dict[str, str] | None = None) -> None:
    """Export a float model or an int8 program to ONNX at `path` (atomically), with `metadata` as the
    model's metadata_props (strings)."""
    from engine.fsutil import write_atomic
    example = (torch.zeros(2, 3, image_size, image_size),)
    if isinstance(model, nn.Module):
        model = model.cpu().eval()
    program = torch.onnx.export(model, example, dynamo=True, verbose=False, input_names=["image"],
                                output_names=["logits"], external_data=False,
                                dynamic_shapes=None if isinstance(model, torch.export.ExportedProgram)
                                else ({0: torch.export.Dim("batch")},))
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(path, proto.SerializeToString())


class _Runtime(nn.Module):
    """An ONNX model in another runtime, called like the torch models it stands beside: NCHW float32
    in, logits out; nothing in it depends on train/eval mode."""

    def train(self, mode: bool = True) -> "_Runtime":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (channels_last input is a strided view: the runtimes want contiguous NCHW)
        return torch.from_numpy(self.run(np.ascontiguousarray(x.detach().float().cpu().numpy())))

    def run(self, feed: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Session(_Runtime):
    """An onnxruntime CPU session. An ONNX file is data (a protobuf graph of standard ops), but chexui
    still opens one only after its sha256 check (`export.load_model`)."""

    def __init__(self, path):
        super().__init__()
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def run(self, feed: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: feed})[0]


class OpenVINO(_Runtime):
    """The ONNX model compiled by OpenVINO for the CPU (`chexui bench` only; opened after the sha256
    check). Float layers run in fp32: OpenVINO's default on CPUs with bf16 instructions is bf16, which
    made its "fp32" row twice the CPU's fp32 peak (measured on this AVX-512 EPYC)."""

    def __init__(self, path):
        super().__init__()
        import openvino as ov
        self.compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(self, feed: np.ndarray) -> np.ndarray:
        return self.compiled(feed)[0]
