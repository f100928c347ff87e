"""CheXNet-style models with a 14-logit head, built from the architecture table (engine/models/archs.py)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from engine.errors import ConfigError
from engine.labels import NUM_CLASSES
from engine.models import archs


def _adapted(model: nn.Module, arch: str) -> nn.Module:
    """The network as chexui trains it: the 14-label head in place of the classifier, and the BatchNorm
    momentum of the architecture table where it sets one."""
    spec = archs.get(arch)
    if spec.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = spec.bn_momentum
    head = spec.head
    old = model.get_submodule(head)
    assert isinstance(old, nn.Linear), f"{arch}.{head} is not an nn.Linear"
    model.set_submodule(head, nn.Linear(old.in_features, NUM_CLASSES))
    return model


def _body(arch: str) -> nn.Module:
    """The architecture's network with random weights (its own head still on)."""
    spec = archs.get(arch)
    if spec.torchvision:
        return models.get_model(spec.torchvision, weights=None)
    assert spec.build is not None  # (archs.register requires one of the two)
    return spec.build()


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
            f'model.pretrained = "imagenet": cannot get the ImageNet weights {name} for {arch} ({type(e).__name__}: '
            f'{e}). Download {weights.url} to {cache}, or set model.pretrained = "none" '
            "or a path to a state-dict file"
        ) from None


def build_model(arch: str, pretrained: str = "none", weights: str = "IMAGENET1K_V1", log=None) -> nn.Module:
    """arch: a name in the architecture table; pretrained: "imagenet" (torchvision's `weights`, e.g.
    IMAGENET1K_V1, from the hub cache), "none", or a state-dict path (loaded by `load_pretrained`; `log`
    gets its counts)."""
    spec = archs.get(arch)
    if pretrained == "imagenet":
        if not spec.torchvision:
            raise ConfigError(
                f'model.pretrained = "imagenet": {arch} has no ImageNet weights in chexui\'s '
                'architecture table (expected "none" or a path to a state-dict file)'
            )
        return _adapted(_imagenet(spec.torchvision, weights), arch)
    model = _adapted(_body(arch), arch)
    if pretrained not in ("none", ""):
        counts = load_pretrained(model, pretrained, arch)
        if log:
            log(f"model.pretrained = {pretrained}: {loading_text(counts)}")
    return model


def conv_layers(model: nn.Module, arch: str | None = None) -> dict[str, nn.Conv2d | nn.Linear]:
    """The model's convolutions: every nn.Conv2d, and the nn.Linear layers `arch` uses as 1x1
    convolutions (the architecture table's `pointwise_linears`: ConvNeXt's blocks), what the "conv"
    scope of pruning and quantization covers. The classifier is never among them."""
    prefix = archs.get(arch).pointwise_linears if arch else None
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) or (prefix and isinstance(m, nn.Linear) and name.startswith(prefix + "."))
    }


def counts_of_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """[in, out] channels of each conv, BatchNorm and linear of `model` as the state dict's tensors have
    them, where they differ from the model's (a channel-pruned model's smaller layers)."""
    counts = {}
    for name, m in model.named_modules():
        w = state.get(f"{name}.weight")
        if not isinstance(w, torch.Tensor) or not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            continue
        if tuple(w.shape) != tuple(m.weight.shape):
            counts[name] = [int(w.shape[0])] * 2 if w.dim() == 1 else [int(w.shape[1]), int(w.shape[0])]
    return counts


def fit_to_state(model: nn.Module, state: dict[str, torch.Tensor], counts: dict | None = None) -> nn.Module:
    """`model` with its layers resized to the state dict's shapes (or to `counts`: module -> [in, out],
    a channel-pruned file's record); a dense state leaves it as it is. ValueError for counts that do not
    fit the architecture."""
    from engine.compression.channels import fit_to_counts

    counts = counts_of_state(model, state) if counts is None else counts
    return fit_to_counts(model, counts) if counts else model


def build_float(
    arch: str, state: dict[str, torch.Tensor], channels_last: bool = False, counts: dict | None = None
) -> nn.Module:
    """The float model of a state dict (eval mode), with the layer sizes the state has (or `counts`);
    `channels_last`: in the memory layout a run with train.channels_last trained and evaluated it in."""
    model = fit_to_state(build_model(arch, "none"), state, counts)
    model.load_state_dict(state)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


# torchvision's DenseNets before 0.3 named a layer's BatchNorm/ReLU/conv `norm.1`, `relu.1`, `conv.1`
# (torchvision's densenet.py remaps them the same way when it loads its own old files)
_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


# wrappers around the backbone: DataParallel/DDP (`module.`), CheXNet reimplementations (arnoweng/CheXNet:
# `densenet121.`, an architecture's name), Lightning-style `model.`
def _prefixes() -> tuple[str, ...]:
    return ("module.", "model.", "backbone.", *(f"{name}." for name in archs.names()))


def remap_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A foreign state dict's keys in torchvision's current names: wrapper prefixes stripped (repeatedly:
    `module.densenet121.`), legacy DenseNet `norm.1` -> `norm1`."""
    out, prefixes = {}, _prefixes()
    for key, value in state.items():
        k = key
        while k.startswith(prefixes):
            k = k.split(".", 1)[1]
        m = _LEGACY_DENSENET.match(k)
        out[m.group(1) + m.group(2) if m else k] = value
    return out


def is_head(arch: str, key: str) -> bool:
    """The classifier the 14-label head replaces (ImageNet files have 1,000 classes there)."""
    return key.startswith(archs.get(arch).head + ".")


def load_pretrained(model: nn.Module, path: str | Path, arch: str) -> dict:
    """Load a state-dict file into `model` and say how it went: {"loaded", "missing", "unexpected",
    "mismatched", "head_loaded"} (tensor counts) and the first names of each. A model that would train
    with any backbone tensor left at its random initialisation is refused (ConfigError naming the first
    missing keys): the silent failure of `strict=False` loading, a model that then scores AUROC ~0.5.
    The head may be missing or of another shape (ImageNet's 1,000 classes): it starts fresh."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f'model.pretrained = {str(path)!r}: file not found (expected "imagenet", "none" or a state-dict path)'
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors
        raise ConfigError(
            f"model.pretrained = {str(path)!r}: not a state-dict file torch can read safely ({type(e).__name__})"
        ) from None
    for key in ("model", "state_dict", "model_state_dict"):  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained = {str(path)!r}: expected a state dict (tensor names to tensors)")
    given, own = remap_keys(state), model.state_dict()
    usable = {k: v for k, v in given.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k in given if k in own and own[k].shape != given[k].shape)
    missing = sorted(k for k in own if k not in usable)
    counts = {
        "loaded": len(usable),
        "missing": len(missing),
        "unexpected": len(set(given) - set(own)),
        "mismatched": len(mismatched),
        "head_loaded": any(is_head(arch, k) for k in usable),
        "first_missing": missing[:3],
        "first_unexpected": sorted(set(given) - set(own))[:3],
    }
    backbone_missing = [k for k in missing if not is_head(arch, k) and not k.endswith("num_batches_tracked")]
    if backbone_missing:
        raise ConfigError(
            f"model.pretrained = {str(path)!r}: {len(backbone_missing)} {arch} backbone tensors are "
            f"missing or of another shape (first: {', '.join(backbone_missing[:3])}); "
            f"{loading_text(counts)}. Refusing to train from a partly random backbone"
        )
    model.load_state_dict(usable, strict=False)
    return counts


def loading_text(c: dict) -> str:
    return (
        f"{c['loaded']} tensors loaded, {c['missing']} missing, {c['unexpected']} unexpected, "
        f"{c['mismatched']} of another shape" + ("" if c["head_loaded"] else "; the 14-label head starts fresh")
    )


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
        self.wp: torch.Tensor
        self.wn: torch.Tensor
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
