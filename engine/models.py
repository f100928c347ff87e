"""CheXNet-style models from torchvision with a 14-logit head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from engine.errors import ConfigError
from engine.labels import NUM_CLASSES

ARCHS = ("densenet121", "resnet50", "resnet18")


def _replace_head(model: nn.Module, arch: str) -> nn.Module:
    if arch.startswith("densenet"):
        model.classifier = nn.Linear(model.classifier.in_features, NUM_CLASSES)
    else:
        model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model


def _imagenet(arch: str, name: str) -> nn.Module:
    try:
        weights = models.get_model_weights(arch)[name]
    except KeyError:
        raise ConfigError(f"model.weights = {name!r}: torchvision has no such weights for {arch}") from None
    try:
        return models.get_model(arch, weights=weights)
    except Exception as e:  # offline: URLError, OSError, RuntimeError from the hub download
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise ConfigError(
            f"model.pretrained = \"imagenet\": cannot get the ImageNet weights {name} for {arch} ({type(e).__name__}: "
            f"{e}). Download {weights.url} to {cache}, or set model.pretrained = \"none\" "
            "or a path to a state-dict file") from None


def build_model(arch: str, pretrained: str = "none", weights: str = "IMAGENET1K_V1") -> nn.Module:
    """arch in ARCHS; pretrained: "imagenet" (torchvision's `weights`, e.g. IMAGENET1K_V1, from the hub
    cache), "none", or a state-dict path."""
    if arch not in ARCHS:
        raise ConfigError(f"model.arch = {arch!r}: expected one of {', '.join(ARCHS)}")
    if pretrained == "imagenet":
        return _replace_head(_imagenet(arch, weights), arch)
    model = _replace_head(models.get_model(arch, weights=None), arch)
    if pretrained not in ("none", ""):
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(f"model.pretrained = {pretrained!r}: file not found "
                              "(expected \"imagenet\", \"none\" or a state-dict path)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        own = model.state_dict()
        usable = {k.removeprefix("module."): v for k, v in state.items()}
        usable = {k: v for k, v in usable.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ConfigError(f"model.pretrained = {pretrained!r}: no tensor matches a {arch}")
        model.load_state_dict(usable, strict=False)
    return model


class WeightedBCE(nn.Module):
    """Binary cross-entropy with the study's class weighting, as in CheXNet-Keras (the CheXNet paper's
    14-label model used unweighted BCE; the weighting is the study's, not CheXNet's): per class
    w+ = |N|/(|P|+|N|) on positives and w- = |P|/(|P|+|N|) on negatives, from the training split's
    counts. `weighted=False`: plain BCE. In the study (Keras `class_weight`) only the training loss was
    weighted; `train.val_loss` chooses for the validation loss."""

    def __init__(self, pos, neg, weighted: bool = True):
        super().__init__()
        import numpy as np
        pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
        total = np.maximum(pos + neg, 1)
        wp, wn = (neg / total, pos / total) if weighted else (np.ones_like(pos), np.ones_like(neg))
        self.register_buffer("wp", torch.tensor(wp, dtype=torch.float32))
        self.register_buffer("wn", torch.tensor(wn, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = y * self.wp + (1 - y) * self.wn
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, weight=w)


def losses(train_cfg: dict, pos, neg) -> tuple[WeightedBCE, WeightedBCE]:
    """(training loss, validation loss) from `train.loss` and `train.val_loss`: the validation loss
    (LR plateau, early stopping, best checkpoint) is the training loss ("same") or plain BCE
    ("unweighted", as with the study's Keras `class_weight`, which weights training only)."""
    train = WeightedBCE(pos, neg, train_cfg["loss"] == "weighted_bce")
    return train, (train if train_cfg["val_loss"] == "same" else WeightedBCE(pos, neg, False))
