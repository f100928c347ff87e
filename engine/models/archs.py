"""The architecture table: every model chexui can train, and what each part of chexui needs to know of it.

One `Arch` per architecture: how its body is built (a torchvision name, or a function), which attribute
holds the classifier the 14-label head replaces, the block Grad-CAM maps by default, torchvision's
ImageNet weight names, and the preset whose per-width targets `chexui compress --prune adaptive` uses.
The config (model.arch, model.weights), the model builder, checkpoint loading, explain, compress and the
TUI's launcher read this table. Pure Python (no torch): chexui validates presets with it.

Adding an architecture is one `register(Arch(...))` call (docs/ARCHITECTURE.md has the recipe). A
registration is seen by the process that made it: the engine under torchrun imports `engine.models.archs`, so
an architecture for real runs is registered here (or in a module this one imports).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError


@dataclass(frozen=True)
class Arch:
    name: str
    head: str  # the module path of the classifier (an nn.Linear) the 14-label head replaces
    cam_layer: str  # the block whose activations Grad-CAM maps by default: the last convolutional block
    torchvision: str | None = None  # torchvision.models name the body is built from ...
    build: Callable[[], Any] | None = None  # ... or a function returning the body (an nn.Module)
    weights: tuple[str, ...] = ()  # torchvision's ImageNet weight names (model.pretrained = "imagenet")
    adaptive_preset: str | None = None  # the preset whose prune.adaptive targets `compress --prune adaptive` uses
    # engine/compression/channels.py knows its blocks' channel groups (prune.structure = "channel")
    channel_groups: bool = False
    # why QAT and PTQ are refused in the config for it; empty: they give a working int8 model (measured)
    int8_why: str = ""
    # the module whose nn.Linear layers are 1x1 convolutions written as Linear on channels-last tensors
    # (ConvNeXt's blocks): prune.scope and quantize.scope "conv" cover them, as a CNN's 1x1 convs
    pointwise_linears: str | None = None
    # the BatchNorm momentum chexui trains it with, where torchvision builds it with another: the share
    # of each batch's statistics the running ones take (PyTorch's default 0.1)
    bn_momentum: float | None = None

    @property
    def int8(self) -> bool:
        return not self.int8_why


_ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    if (arch.torchvision is None) == (arch.build is None):
        raise ValueError(f"architecture {arch.name!r}: give torchvision or build, not both or neither")
    _ARCHS[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    _ARCHS.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_ARCHS)


def weight_names() -> tuple[str, ...]:
    """Every weight name any architecture has (model.weights' choices; `get(arch).weights` per arch)."""
    return tuple(dict.fromkeys(w for a in _ARCHS.values() for w in a.weights))


def get(name: str) -> Arch:
    try:
        return _ARCHS[name]
    except KeyError:
        near = difflib.get_close_matches(name, _ARCHS, n=1)
        raise ConfigError(
            f"model.arch = {name!r}: expected one of {', '.join(_ARCHS)}"
            + (f" (did you mean {near[0]!r}?)" if near else "")
        ) from None


def all_archs() -> tuple[Arch, ...]:
    return tuple(_ARCHS.values())


register(
    Arch(
        "densenet121",
        torchvision="densenet121",
        head="classifier",
        cam_layer="features",  # (DenseNet's forward applies its final ReLU in place after it)
        weights=("IMAGENET1K_V1",),
        adaptive_preset="prune-adaptive",
        channel_groups=True,
    )
)
register(
    Arch(
        "resnet50",
        torchvision="resnet50",
        head="fc",
        cam_layer="layer4",
        weights=("IMAGENET1K_V1", "IMAGENET1K_V2"),
        adaptive_preset="resnet50-prune-adaptive",
        channel_groups=True,
    )
)
# ResNet18 (tests and the demo) shares ResNet50's widths 64-512 and so its adaptive table
register(
    Arch(
        "resnet18",
        torchvision="resnet18",
        head="fc",
        cam_layer="layer4",
        weights=("IMAGENET1K_V1",),
        adaptive_preset="resnet50-prune-adaptive",
        channel_groups=True,
    )
)
register(
    Arch(
        "densenet169",
        torchvision="densenet169",
        head="classifier",
        cam_layer="features",
        weights=("IMAGENET1K_V1",),
        adaptive_preset="prune-adaptive",  # DenseNet121's widths: the same growth and bottleneck
        channel_groups=True,
    )
)
register(
    Arch(
        "resnet101",
        torchvision="resnet101",
        head="fc",
        cam_layer="layer4",
        weights=("IMAGENET1K_V1", "IMAGENET1K_V2"),
        adaptive_preset="resnet50-prune-adaptive",  # ResNet50's widths, 23 blocks in layer3 instead of 6
        channel_groups=True,
    )
)
# the small and newer CNNs: their blocks (inverted residuals with squeeze-excitation, ConvNeXt's)
# have no channel groups in engine/compression/channels.py, and no adaptive per-width table
register(
    Arch(
        "efficientnet_b0",
        torchvision="efficientnet_b0",
        head="classifier.1",  # (Dropout, Linear)
        cam_layer="features",
        weights=("IMAGENET1K_V1",),
        int8_why="its QAT int8 model gave constant outputs (test AUROC 0.5000) on the demo data; not yet fixed",
    )
)
register(
    Arch(
        "efficientnet_v2_s",
        torchvision="efficientnet_v2_s",
        head="classifier.1",
        cam_layer="features",
        weights=("IMAGENET1K_V1",),
        int8_why="EfficientNet-B0's QAT int8 model gave constant outputs (test AUROC 0.5000); not yet fixed",
    )
)
register(
    Arch(
        "convnext_tiny",
        torchvision="convnext_tiny",
        head="classifier.2",  # (LayerNorm2d, Flatten, Linear)
        cam_layer="features",
        weights=("IMAGENET1K_V1",),
        pointwise_linears="features",
        # int8 measured on a run (demo data, 64 px, 2 epochs, QAT of all layers): the shipped int8 model
        # 0.8132 test AUROC, its fake-quantized model 0.8132, its fp32 weights 0.8134, ONNX int8 0.8132
    )
)
register(
    Arch(
        "mobilenet_v3_large",
        torchvision="mobilenet_v3_large",
        head="classifier.3",  # (Linear, Hardswish, Dropout, Linear): the first Linear is the head's MLP
        cam_layer="features",
        weights=("IMAGENET1K_V1", "IMAGENET1K_V2"),
        int8_why="its QAT run's float twin disagreed with its int8 model (test AUROC 0.4989 vs 0.6836)",
        # torchvision's 0.01 (TensorFlow's decay 0.99, set for ImageNet's hundreds of epochs) leaves the
        # running statistics near their initial values after a short run: evaluation then saw another
        # network (demo data, 2 epochs from scratch at 64 px: test AUROC 0.5039)
        bn_momentum=0.1,
    )
)
