"""Quantization-aware training with torch.ao's FX graph mode (x86 backend) and the int8 conversion.

`prepare` traces the float model and inserts fake-quant observers: `scope = "conv"` quantizes conv
layers only (with their fused BatchNorm/ReLU), `"all"` every layer the x86 backend supports (conv,
add, pooling, BatchNorm, ...) but the final classifier, whose logits stay float. Where BatchNorm
follows a conv (ResNet) the QAT conv-bn module simulates the folding during training and folds it at
conversion; DenseNet's BN-ReLU-conv order leaves its BatchNorms standalone (quantized BatchNorm with
"all", float with "conv").

The prepared module shares every parameter and buffer with the float model it was made from, so the
float model's state_dict (checkpoints, the fp32 artifact) always holds the QAT-trained weights, and the
pruner's in-place masks act on the weights QAT sees.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _quiet():
    # torch.ao.quantization announces its move to torchao on every call; the API is what we use here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def traced(model: nn.Module) -> torch.fx.GraphModule:
    """The model as an FX graph in which every module call has its own module: torchvision's ResNet
    calls one ReLU after bn1, bn2 and the residual add, and a qconfig set on it would apply to all three.
    Parameterless copies only, so every weight is still the float model's."""
    gm = torch.fx.symbolic_trace(model)
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            if node.target in seen and not any(True for _ in gm.get_submodule(node.target).parameters()):
                fresh = f"{node.target}_{len(seen)}".replace(".", "_")
                gm.add_submodule(fresh, copy.deepcopy(gm.get_submodule(node.target)))
                node.target = fresh
            seen.add(node.target)
    gm.recompile()
    return gm


def conv_chains(gm: torch.fx.GraphModule) -> list[str]:
    """Module names of every conv plus the BatchNorm, ReLU and max-pool right after it (the x86 backend
    fuses conv-bn-relu, and fusion needs one qconfig for the whole chain)."""
    mods = dict(gm.named_modules())

    def next_module(node, kind):
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(mods[users[0].target], kind):
            return users[0]
        return None

    names = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], nn.Conv2d):
            names.append(node.target)
            bn = next_module(node, nn.BatchNorm2d)
            relu = next_module(bn or node, nn.ReLU)
            # a max-pool right after (ResNet's stem) passes the int8 tensor on: it must be marked
            # quantized too, or FX treats its output as float and feeds int8 into a float add
            pool = next_module(relu or bn or node, nn.MaxPool2d)
            names += [n.target for n in (bn, relu, pool) if n is not None]
    return names


def qconfig_mapping(gm: torch.fx.GraphModule, scope: str, backend: str = "x86"):
    from torch.ao.quantization import QConfigMapping, get_default_qat_qconfig, get_default_qat_qconfig_mapping
    if scope == "all":
        # ... except the 14-logit classifier: AUROC ranks images by these scores, and 256 levels over the
        # logit range would tie many of them (a float Linear of 14 outputs costs a few KB)
        head = [name for name, m in gm.named_modules() if isinstance(m, nn.Linear)][-1]
        return get_default_qat_qconfig_mapping(backend).set_module_name(head, None)
    qconfig, mapping = get_default_qat_qconfig(backend), QConfigMapping()
    for name in conv_chains(gm):
        mapping.set_module_name(name, qconfig)
    return mapping


def prepare(model: nn.Module, scope: str, image_size: int, backend: str = "x86") -> nn.Module:
    """The QAT model (a torch.fx GraphModule) for a float model in train mode."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx
    torch.backends.quantized.engine = backend
    model.train()
    example = (torch.zeros(2, 3, image_size, image_size, device=next(model.parameters()).device),)
    gm = traced(model)
    with _quiet():
        return prepare_qat_fx(gm, qconfig_mapping(gm, scope, backend), example)


def convert(qat_model: nn.Module) -> nn.Module:
    """An int8 copy of a QAT model (CPU, eval mode); the QAT model itself is left as it is."""
    from torch.ao.quantization.quantize_fx import convert_fx
    m = copy.deepcopy(qat_model).cpu().eval()
    with _quiet():
        return convert_fx(m)


def _fake_quants(qat_model: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.quantization import FakeQuantizeBase
    return {name: m for name, m in qat_model.named_modules() if isinstance(m, FakeQuantizeBase)}


@contextmanager
def observers_frozen(qat_model: nn.Module):
    """Fake quantization stays on, but the observers stop updating their ranges (evaluation); each
    observer is left as it was (a range frozen by `freeze_observers` stays frozen)."""
    from torch.ao.quantization import disable_observer
    fqs = list(_fake_quants(qat_model).values())
    before = [fq.observer_enabled.clone() for fq in fqs]
    qat_model.apply(disable_observer)
    try:
        yield
    finally:
        for fq, flag in zip(fqs, before):
            fq.observer_enabled.copy_(flag)


def freeze_observers(qat_model: nn.Module) -> None:
    """Stop every observer for the rest of training (its flag is a buffer: checkpoints keep it)."""
    from torch.ao.quantization import disable_observer
    qat_model.apply(disable_observer)


def freeze_bn(qat_model: nn.Module) -> None:
    """The conv-BN modules QAT folds (ResNet's) stop updating their BatchNorm statistics. DenseNet's
    BatchNorms precede their convs, are not folded, and keep training like the float model's."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    qat_model.apply(freeze_bn_stats)


def bit_widths(qat_model: nn.Module) -> dict:
    """What the QAT model quantizes to: activation and weight bit widths (the x86 settings quantize
    activations to 7 bits - `reduce_range`, which keeps the older VNNI-less int8 kernels from
    overflowing - and weights to 8), and how many fake-quant points each has."""
    acts, weights = [], []
    for name, fq in _fake_quants(qat_model).items():
        bits = int(fq.quant_max - fq.quant_min + 1).bit_length() - 1
        (weights if name.endswith("weight_fake_quant") else acts).append(bits)
    return {"activation_bits": sorted(set(acts)), "weight_bits": sorted(set(weights)),
            "activation_points": len(acts), "weight_points": len(weights)}


def save_int8(int8_model: nn.Module, image_size: int, path) -> None:
    """TorchScript (trace + freeze): loads with torch.jit.load alone, no chexui or engine code needed."""
    from engine.checkpoint import save_atomic
    with torch.no_grad(), _quiet():
        scripted = torch.jit.freeze(torch.jit.trace(int8_model, torch.zeros(1, 3, image_size, image_size)))
    save_atomic(scripted, path, write=torch.jit.save)


def load_int8(path) -> torch.jit.ScriptModule:
    """A TorchScript file is a program: call this only through `export.load_model`, which first checks
    the file against the sha256 recorded when the engine wrote it."""
    torch.backends.quantized.engine = "x86"
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu").eval()
