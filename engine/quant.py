"""Quantization-aware training and the int8 conversion: torchao's PT2E flow (default) or torch.ao's FX
graph mode (`quantize.engine = "fx"`, deprecated by torch, kept for one release).

PT2E (`quantize.engine = "pt2e"`): the float model is captured with `torch.export` (strict: torchvision's
ResNets reuse one ReLU module, which non-strict capture cannot annotate), `X86InductorQuantizer` annotates
it (`scope = "conv"`: conv layers, fused with their BatchNorm/ReLU; `"all"`: every supported op but the
14-logit classifier), and `prepare_qat_pt2e` inserts fake quantization: int8 weights per channel,
uint8 activations (8 bits; FX's x86 settings use 7). `convert_pt2e` folds BatchNorm and quantizes the
weights; the int8 artifact is that graph as a `torch.export` program (`.pt2`: int8 weight tensors, torch's
quantize/dequantize ops, tensors stored as raw bytes), which loads with `torch.export.load` alone, no chexui
code; chexui loads one only after its sha256 check and `check_program_archive`.

FX (`"fx"`): `prepare` traces the float model and inserts fake-quant observers: `scope = "conv"` quantizes conv
layers only (with their fused BatchNorm/ReLU), `"all"` every layer the x86 backend supports (conv,
add, pooling, BatchNorm, ...) but the final classifier, whose logits stay float. Where BatchNorm
follows a conv (ResNet) the QAT conv-bn module simulates the folding during training and folds it at
conversion; DenseNet's BN-ReLU-conv order leaves its BatchNorms standalone (quantized BatchNorm with
"all", float with "conv").

Either way the prepared module shares every parameter with the float model it was made from, so the
float model's state_dict (checkpoints, the fp32 artifact) always holds the QAT-trained weights, and the
pruner's in-place masks act on the weights QAT sees.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn


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


def _batch_dim():
    return ({0: torch.export.Dim("batch")},)


def prepare(model: nn.Module, q: dict, image_size: int) -> nn.Module:
    """The QAT model (a GraphModule) for a float model in train mode; `q` is the [quantize] config."""
    if q["engine"] == "fx":
        return _prepare_fx(model, q["scope"], image_size, q["backend"])
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    model.train()
    qat = prepare_qat_pt2e(_captured(model, image_size), _quantizer(model, q["scope"], is_qat=True))
    allow_exported_model_train_eval(qat)  # .train()/.eval() switch BatchNorm and dropout in the graph
    return qat


def _captured(model: nn.Module, image_size: int) -> torch.fx.GraphModule:
    """The model as torch.export captures it (strict: torchvision's ResNets reuse one ReLU module, which
    non-strict capture leaves unannotatable), any batch size."""
    example = (torch.zeros(2, 3, image_size, image_size, device=next(model.parameters()).device),)
    return torch.export.export(model, example, dynamic_shapes=_batch_dim(), strict=True).module()


def _quantizer(model: nn.Module, scope: str, is_qat: bool):
    """x86 Inductor quantization of the conv layers ("conv") or of every supported op but the classifier."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    quantizer, config = xiq.X86InductorQuantizer(), xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if scope == "all":
        head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        return quantizer.set_global(config).set_module_name_qconfig(head, None)
    return quantizer.set_module_type_qconfig(nn.Conv2d, config)


@torch.no_grad()
def post_training(model: nn.Module, scope: str, image_size: int, batches) -> nn.Module:
    """Post-training static quantization (PT2E): observers calibrated on `batches` (normalised input
    tensors, as the model sees them in evaluation), then the int8 graph `convert` makes from a QAT model."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    model = copy.deepcopy(model).cpu().eval()
    prepared = prepare_pt2e(_captured(model, image_size), _quantizer(model, scope, is_qat=False))
    for x in batches:
        prepared(x.cpu())
    return _without_unused_tensors(convert_pt2e(prepared))


def _prepare_fx(model: nn.Module, scope: str, image_size: int, backend: str = "x86") -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_qat_fx
    torch.backends.quantized.engine = backend
    model.train()
    example = (torch.zeros(2, 3, image_size, image_size, device=next(model.parameters()).device),)
    gm = traced(model)
    # (torch warns that the FX API is deprecated: it is, and chexui lets the warning through)
    return prepare_qat_fx(gm, qconfig_mapping(gm, scope, backend), example)


def is_pt2e(qat_model: nn.Module) -> bool:
    return not any(name.endswith("weight_fake_quant") for name, _ in qat_model.named_modules())


def is_pt2e_int8(int8_model: nn.Module) -> bool:
    """A converted model is PT2E's when its graph calls torch's decomposed quantize/dequantize ops (FX's
    converted graphs call quantized modules instead)."""
    return isinstance(int8_model, torch.fx.GraphModule) and any(
        n.op == "call_function" and "quantized_decomposed" in str(n.target) for n in int8_model.graph.nodes)


def convert(qat_model: nn.Module) -> nn.Module:
    """An int8 copy of a QAT model (CPU, eval mode); the QAT model itself is left as it is."""
    m = copy.deepcopy(qat_model).cpu().eval()
    if is_pt2e(qat_model):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
        return _without_unused_tensors(convert_pt2e(m))
    from torch.ao.quantization.quantize_fx import convert_fx
    return convert_fx(m)


def _without_unused_tensors(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """convert_pt2e leaves the float weights registered beside the int8 ones it made; export would
    store both (1.25x the fp32 bytes). Drop every parameter and buffer the graph no longer reads.
    The result accepts .eval() (evaluation code calls it; an int8 graph has nothing mode-dependent)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)
    allow_exported_model_train_eval(gm)
    return gm


def _fake_quants(qat_model: nn.Module) -> dict[str, nn.Module]:
    """The fake-quantize modules of either engine (torch.ao's and torchao's have the same buffers)."""
    return {name: m for name, m in qat_model.named_modules()
            if isinstance(getattr(m, "observer_enabled", None), torch.Tensor) and hasattr(m, "quant_max")}


@contextmanager
def observers_frozen(qat_model: nn.Module):
    """Fake quantization stays on, but the observers stop updating their ranges (evaluation); each
    observer is left as it was (a range frozen by `freeze_observers` stays frozen)."""
    fqs = list(_fake_quants(qat_model).values())
    before = [fq.observer_enabled.clone() for fq in fqs]
    freeze_observers(qat_model)
    try:
        yield
    finally:
        for fq, flag in zip(fqs, before):
            fq.observer_enabled.copy_(flag)


def freeze_observers(qat_model: nn.Module) -> None:
    """Stop every observer for the rest of training (its flag is a buffer: checkpoints keep it)."""
    for fq in _fake_quants(qat_model).values():
        fq.observer_enabled.fill_(0)


def freeze_bn(qat_model: nn.Module) -> None:
    """FX only (config refuses it with PT2E). The conv-BN modules QAT folds (ResNet's) stop updating their BatchNorm statistics. DenseNet's
    BatchNorms precede their convs, are not folded, and keep training like the float model's."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    qat_model.apply(freeze_bn_stats)


def bit_widths(qat_model: nn.Module) -> dict:
    """What the QAT model quantizes to: activation and weight bit widths (PT2E: 8 and 8; FX's x86
    settings: activations 7 bits - `reduce_range`, which keeps VNNI-less int8 kernels from overflowing),
    and how many fake-quant points each has. Weights are the per-channel ones."""
    acts, weights = [], []
    for fq in _fake_quants(qat_model).values():
        bits = int(fq.quant_max - fq.quant_min + 1).bit_length() - 1
        per_channel = fq.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        (weights if per_channel else acts).append(bits)
    return {"activation_bits": sorted(set(acts)), "weight_bits": sorted(set(weights)),
            "activation_points": len(acts), "weight_points": len(weights)}


def program(int8_model: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """A PT2E int8 model as the `torch.export` program its .pt2 and ONNX artifacts are made from."""
    example = (torch.zeros(2, 3, image_size, image_size),)
    return torch.export.export(int8_model, example, dynamic_shapes=_batch_dim())


def save_int8(int8_model: nn.Module | torch.export.ExportedProgram, image_size: int, path,
              extra: dict[str, str] | None = None) -> None:
    """PT2E: a `torch.export` program (.pt2), with `extra` text files in it. FX: TorchScript (trace +
    freeze). Either loads with torch alone, no chexui or engine code needed."""
    from functools import partial

    from engine.checkpoint import save_atomic
    if str(path).endswith(".pt2"):
        if not isinstance(int8_model, torch.export.ExportedProgram):
            int8_model = program(int8_model, image_size)
        save_atomic(int8_model, path, write=partial(_save_deflated, extra=extra))
        return
    with torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(int8_model, torch.zeros(1, 3, image_size, image_size)))
    save_atomic(scripted, path, write=torch.jit.save)


def _save_deflated(program, f, extra: dict[str, str] | None = None) -> None:
    """torch.export.save, with the archive's JSON entries (the serialized graph) deflated: torch stores
    them uncompressed, and DenseNet121's graph alone is 3.7 MB, more than half its int8 weights.
    torch.export.load reads the deflated entries as they are (tensor entries stay stored)."""
    import io
    import zipfile
    raw = io.BytesIO()
    torch.export.save(program, raw, extra_files=extra)
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(f, "w") as dst:
        for info in src.infolist():
            kind = zipfile.ZIP_DEFLATED if info.filename.endswith(".json") else zipfile.ZIP_STORED
            dst.writestr(info, src.read(info), compress_type=kind)


class Program(nn.Module):
    """A loaded .pt2 program as a module that can be put in eval mode: an exported module refuses
    .train()/.eval(), and a converted int8 graph has nothing that depends on the mode."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> "Program":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def check_program_archive(path) -> None:
    """Refuse a .pt2 that holds anything torch.export.load would unpickle: entries marked `use_pickle`,
    custom-object constants, AOTInductor or legacy-format parts, and a sample-inputs file that
    `torch.load(weights_only=True)` rejects (torch then retries it with weights_only=False). The programs
    chexui writes hold plain tensors only, so this costs them nothing."""
    import io
    import json
    import zipfile

    from engine.errors import StorageError
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        configs = [n for n in names if n.endswith(("/model_weights_config.json", "/model_constants_config.json"))]
        odd = [n for n in names if "aotinductor" in n or n.rsplit("/", 1)[-1].startswith("serialized_")]
        if len(configs) != 2 or odd:
            raise StorageError(f"{path}: not a torch.export program as chexui writes them; refusing to load it")
        for name in configs:
            for key, meta in json.loads(z.read(name))["config"].items():
                if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                    raise StorageError(f"{path}: entry {key!r} is not a plain tensor; refusing to load it")
        for name in (n for n in names if n.endswith(".pt")):
            try:
                torch.load(io.BytesIO(z.read(name)), weights_only=True)
            except Exception:
                raise StorageError(f"{path}: {name} is not plain tensor data; refusing to load it") from None


def load_int8(path) -> nn.Module:
    """Call this only through `export.load_model`, which first checks the file against the sha256
    recorded when the engine wrote it (a TorchScript file is a program; torch.export.load unpickles
    some entries, which `check_program_archive` refuses besides)."""
    if str(path).endswith(".pt2"):
        check_program_archive(path)
        # torch's own quantize/dequantize ops, which a .pt2 program calls, are registered by this import
        import torch.ao.quantization.fx._decomposed  # noqa: F401
        return Program(torch.export.load(str(path)).module())
    torch.backends.quantized.engine = "x86"
    return torch.jit.load(str(path), map_location="cpu").eval()
