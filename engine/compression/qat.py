"""Quantization-aware training (PT2E) as a compression method: the model trains as a traced copy with
fake-quant observers that shares its weights; the run ships the converted int8 model. The mechanics
are engine/compression/quant.py."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from torch import nn

from engine.compression import quant
from engine.compression.base import Method, register
from engine.models.chexnet import build_float
from engine.rundir import BEST


@register
class QAT(Method):
    name, enabled_by = "qat", "quantize.enabled"
    autocast_ok = False  # the observers calibrate on fp32 activations
    makes_int8 = True
    artifacts = ("int8", "onnx_int8")
    qat: nn.Module | None = None  # the traced model with fake-quant observers (convert)
    frozen = False  # the observers' ranges no longer move (quantize.freeze_observers_epoch)

    def convert(self, model: nn.Module) -> nn.Module:
        self.qat = quant.prepare(model, self.cfg, self.ctx.cfg["data"]["image_size"], self.ctx.cfg["model"]["arch"])
        return self.qat

    def parts(self) -> dict[str, Any]:
        return {"qat": self.qat}

    def best_parts(self) -> tuple[str, ...]:
        return ("qat",)

    def run_started_fields(self) -> dict[str, Any]:
        assert self.qat is not None
        return {"quantization": quant.bit_widths(self.qat)}

    def epoch_start(self, epoch: int) -> None:
        """Late in QAT, stop moving the observers' ranges (quantize.freeze_observers_epoch; 0 = never);
        applied at every epoch start, so a resumed run is frozen too."""
        assert self.qat is not None
        if self.cfg["freeze_observers_epoch"] and epoch > self.cfg["freeze_observers_epoch"]:
            quant.freeze_observers(self.qat)
            self.frozen = True

    def epoch_fields(self) -> dict[str, Any]:
        return {"qat_observers": "frozen" if self.frozen else "live"}

    def evaluating(self, model: nn.Module) -> AbstractContextManager:
        # evaluating the QAT model must not move its observers' ranges
        return quant.observers_frozen(model) if model is self.qat else nullcontext()

    def before_test(self, run: Any) -> None:
        qat = run.evaluator.evaluate("test", self.qat)  # every rank takes part: the QAT model is distributed
        if run.d.is_main:
            run.evaluator.report("test_qat", qat, f"QAT fake-quantized model of {BEST}")

    def int8(self, run: Any) -> nn.Module:
        assert self.qat is not None
        return quant.convert(self.qat)

    no_twin = ""

    @classmethod
    def companion(cls, cfg: dict, ck: dict, where: str) -> tuple[str, nn.Module] | None:
        return f"QAT fake-quantized model of {where}", fake_quantized(cfg, ck)

    @classmethod
    def twin(cls, cfg: dict, ck: dict) -> nn.Module | None:
        return fake_quantized(cfg, ck)  # the int8 model's graph before conversion: its differentiable twin

    @classmethod
    def rebuild_int8(cls, cfg: dict, ck: dict, where: str) -> nn.Module:
        return quant.Program(quant.convert(fake_quantized(cfg, ck)))  # (seconds to a minute)


def fake_quantized(cfg: dict, ck: dict) -> nn.Module:
    """A QAT run's fake-quantized model from its checkpoint `ck` (eval mode, observers frozen), in the
    run's memory layout: the int8 model's differentiable twin, and what `int8` converts."""
    model = build_float(cfg["model"]["arch"], ck["model"], cfg["train"]["channels_last"])
    qat = quant.prepare(model, cfg["quantize"], cfg["data"]["image_size"], cfg["model"]["arch"])
    qat.load_state_dict(ck["qat"])
    quant.freeze_observers(qat)  # evaluation must not move the ranges it was trained with
    qat.eval()  # (a PT2E model's eval() switches its graph in place and returns None)
    return qat
