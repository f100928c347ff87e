"""The compression-method interface the trainer calls, and the registry of methods.

The shape is torchtitan's ModelConverter: a method converts the model that trains, hooks the training
loop (after each optimizer step, at epoch start and end), adds named stateful parts to checkpoints,
says whether the current model may be chosen as the best, and, for an int8 method, makes the int8
model the run ships. Every hook has a do-nothing default: a method overrides what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from engine.errors import StorageError


@dataclass
class MethodContext:
    """What a method may read of its run when it is built."""

    cfg: dict
    run_dir: Path
    steps_per_epoch: int
    is_main: bool  # rank 0: the one process that writes files
    log: Callable[[str], None] = print
    d: Any = None  # the process group (engine.runtime.dist.Dist): a method that must agree across ranks


class Method:
    """One compression method in one training process. `enabled(cfg)` decides whether a run uses it;
    the trainer builds it with the float model (after the parent's or pretrained weights are in) and
    calls the hooks below."""

    name: ClassVar[str] = ""
    # the config key that turns the method on ("section.key"); its section is `self.cfg`
    enabled_by: ClassVar[str] = ""
    # False: training runs in fp32 whatever train.amp says (QAT's observers calibrate on fp32 activations)
    autocast_ok: ClassVar[bool] = True

    @classmethod
    def enabled(cls, cfg: dict) -> bool:
        section, key = cls.enabled_by.split(".")
        return bool(cfg[section][key])

    def __init__(self, model: nn.Module, ctx: MethodContext) -> None:
        self.model, self.ctx = model, ctx
        self.cfg: dict = ctx.cfg[self.enabled_by.split(".")[0]]  # the method's own config section

    # ------------------------------------------------------------ the model and its state
    def convert(self, model: nn.Module) -> nn.Module:
        """The module that trains and is validated in place of `model` (which keeps the weights the
        optimizer updates: a converted module must share them)."""
        return model

    def parts(self) -> dict[str, Any]:
        """Named stateful parts (state_dict / load_state_dict) of every checkpoint."""
        return {}

    def best_parts(self) -> tuple[str, ...]:
        """The names among `parts` that the best checkpoint keeps with the model (to rebuild it)."""
        return ()

    def run_started_fields(self) -> dict[str, Any]:
        """Fields of the `run_started` event (e.g. the bit widths QAT trains)."""
        return {}

    # ------------------------------------------------------------ the training loop
    def begin(self, run: Any) -> None:
        """A fresh run's start, with its data, loss and weights in place, before epoch 0 (not on resume:
        the checkpoint's parts hold what this made). E.g. one-shot channel pruning ranks channels by
        training gradients here."""

    def epoch_start(self, epoch: int) -> None:
        """Before the epoch's first step (also when a resumed run re-enters an epoch)."""

    def after_step(self, global_step: int) -> None:
        """After every optimizer step; `global_step` counts steps since the run's start."""

    def settled(self, global_step: int) -> bool:
        """False while the model is not yet what the method makes (mid-schedule): not a candidate for
        the best checkpoint, and early stopping waits."""
        return True

    def epoch_fields(self) -> dict[str, Any]:
        """Fields of the `epoch_ended` event (every rank computes them; rank 0 emits)."""
        return {}

    def epoch_end(self, epoch: int) -> None:
        """After the epoch's validation (epoch 0: a compress run's starting model). Rank 0 may write files."""

    def evaluating(self, model: nn.Module) -> AbstractContextManager:
        """Around every evaluation of `model` (e.g. QAT's observers must not move)."""
        return nullcontext()

    # ------------------------------------------------------------ what the run ships
    makes_int8: ClassVar[bool] = False

    def before_test(self, run: Any) -> None:
        """At the test phase, before the shipped model's evaluation, with the best model loaded on every
        rank (e.g. QAT measures its fake-quantized model, `test_qat`)."""

    def shipped(self, model: nn.Module) -> nn.Module:
        """The float model the run ships in place of its best model `model` (at the test phase, on every
        rank): channel pruning's physically smaller one. What the test evaluation, the exported files and
        an int8 method's model are made of."""
        return model

    def int8(self, run: Any) -> nn.Module:
        """The int8 model the run ships (`makes_int8` methods; rank 0, on the CPU)."""
        raise NotImplementedError

    # the artifact kinds (engine/events.py: ARTIFACTS) the run exports because it uses this method,
    # beside every run's fp32 and onnx_fp32: "sparse" (zeros worth storing packed), "int8" and
    # "onnx_int8" (a `makes_int8` method's model)
    artifacts: ClassVar[tuple[str, ...]] = ()

    def exported_fields(self) -> dict[str, Any]:
        """Fields of the `exported` event (e.g. the achieved sparsity)."""
        return {}

    # ------------------------------------------------------------ a finished run, read back
    # (`chexui eval`, `predict`, `explain`: engine/evaluation/evaluate.py, engine/inference/). `cfg` is the
    # run's config, `ck` its best checkpoint (weights_only), `where` that file's path in the run dir.
    @classmethod
    def float_model(cls, cfg: dict, ck: dict) -> nn.Module | None:
        """The float model the run ships, rebuilt from its best checkpoint, where that is not the
        checkpoint's model as it stands (channel pruning: the smaller model); None otherwise."""
        return None

    @classmethod
    def companion(cls, cfg: dict, ck: dict, where: str) -> tuple[str, nn.Module] | None:
        """A model `chexui eval` measures after the int8 model a `makes_int8` method's run ships, with
        its description (QAT: the fake-quantized model it trained; PTQ: the float model it quantized)."""
        return None

    # why a `makes_int8` method's runs have no `twin` ("" when they have one)
    no_twin: ClassVar[str] = "its int8 program has no differentiable twin"

    @classmethod
    def twin(cls, cfg: dict, ck: dict) -> nn.Module | None:
        """A differentiable stand-in of the int8 model the run ships, for Grad-CAM (None: `no_twin`)."""
        return None

    @classmethod
    def rebuild_int8(cls, cfg: dict, ck: dict, where: str) -> nn.Module:
        """The int8 model of a run from before chexui kept its graph in best.pt (`int8_graph`), if the
        method can make it again from the checkpoint."""
        raise StorageError(
            f"{where}: no int8 graph (a run made before chexui kept it): its int8 model cannot be rebuilt"
        )


_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: the method is used by every run whose config enables it."""
    if not cls.name or cls.enabled_by.count(".") != 1:
        raise ValueError(f"{cls.__name__}: a compression method needs a name and enabled_by = 'section.key'")
    _METHODS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def int8_maker(cfg: dict) -> type[Method] | None:
    """The method that makes the int8 model a run with this config ships (QAT, PTQ), if any."""
    return next((m for m in active(cfg) if m.makes_int8), None)


def rebuilt_float(cfg: dict, ck: dict) -> nn.Module | None:
    """The float model a run with this config ships, rebuilt from its best checkpoint `ck` by the method
    that changes it (channel pruning's smaller model); None when the checkpoint's model is it."""
    return next((m for m in (method.float_model(cfg, ck) for method in active(cfg)) if m is not None), None)


def active(cfg: dict) -> list[type[Method]]:
    """The registered methods a run's config enables, in registration order (pruning before QAT: QAT's
    graph is traced from the model pruning masks)."""
    return [m for m in _METHODS.values() if m.enabled(cfg)]
