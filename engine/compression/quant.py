"""Quantization-aware training and the int8 conversion (torchao's PT2E flow), post-training static
quantization, and the int8 artifact.

The float model is captured with `torch.export` (strict: torchvision's ResNets reuse one ReLU module,
which non-strict capture cannot annotate), `X86InductorQuantizer` annotates it (`scope = "conv"`: conv
layers, fused with their BatchNorm/ReLU; `"all"`: every supported op but the 14-logit classifier), and
`prepare_qat_pt2e` inserts fake quantization: int8 weights per channel, uint8 activations. The prepared
module shares every parameter with the float model it was made from, so the float model's state_dict
(checkpoints, the fp32 artifact) always holds the QAT-trained weights, and the pruner's in-place masks
act on the weights QAT sees. `convert_pt2e` folds BatchNorm and quantizes the weights.

The int8 artifact (`model_int8.pt2`) is that graph as a `torch.export` program for users to deploy.
chexui itself never loads a `.pt2` (nor any other program file) from a run dir: `torch.export.load`
evaluates strings of the archive's graph (`sympy.sympify` on shape expressions, attribute look-ups on
the torch module for operator names) and unpickles some entries, so a planted archive runs code however
its entries are checked. The same graph is also kept as data in the run's best checkpoint
(`graph_record`: its nodes as JSON, its tensors as tensors, read with weights_only), and chexui runs the
int8 model from that record (`from_graph_record`), which admits only the tensor operations a converted
CNN uses (`INT8_OPS`): nothing in it can name a function to call, so nothing in it can run code.

(torch.ao's FX graph-mode engine, `quantize.engine = "fx"`, was removed: deprecated by torch, its int8
artifact TorchScript - a program - and its QAT runs had failed at the end since the PT2E switch.)
"""

from __future__ import annotations

import copy
import types
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def prepare(model: nn.Module, q: dict, image_size: int, arch: str | None = None) -> nn.Module:
    """The QAT model (a GraphModule) for a float model in train mode; `q` is the [quantize] config, `arch`
    the model's architecture (what its "conv" scope covers)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    model.train()
    captured = _captured(model, image_size)
    with _patterns_of_present_convs(captured):
        qat = prepare_qat_pt2e(captured, _quantizer(model, q["scope"], is_qat=True, arch=arch))
    return allow_train_eval(qat)  # .train()/.eval() switch BatchNorm (and dropout) in the graph


def _batch_dim():
    return ({0: torch.export.Dim("batch")},)


def _captured(model: nn.Module, image_size: int) -> torch.fx.GraphModule:
    """The model as torch.export captures it (strict: torchvision's ResNets reuse one ReLU module, which
    non-strict capture leaves unannotatable), any batch size."""
    example = (torch.zeros(2, 3, image_size, image_size, device=next(model.parameters()).device),)
    with _capturable(model):
        return torch.export.export(model, example, dynamic_shapes=_batch_dim(), strict=True).module()


@contextmanager
def _capturable(model: nn.Module):
    """The model as the QAT graph can switch between training and evaluation. `allow_exported_model_train_eval`
    rewrites BatchNorm for evaluation, but not stochastic depth (EfficientNets, ConvNeXt: random ops in
    the graph), and dropout only sometimes (MobileNetV3's head with quantize.scope = "conv" kept
    training=True): their int8 models answered differently at every call. Both are captured in eval
    mode, the identity, so a QAT run fine-tunes without them (neither has parameters; the float model is
    left as it was)."""
    from torchvision.ops import StochasticDepth

    random = [m for m in model.modules() if isinstance(m, (StochasticDepth, nn.Dropout)) and m.training]
    for m in random:
        m.training = False
    try:
        yield
    finally:
        for m in random:
            m.training = True


def _quantizer(model: nn.Module, scope: str, is_qat: bool, arch: str | None = None):
    """x86 Inductor quantization of the conv layers ("conv": `conv_layers`, ConvNeXt's pointwise
    nn.Linear layers included) or of every supported op but the classifier: AUROC ranks images by the 14
    logits, and 256 levels over their range would tie many of them."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer, config = xiq.X86InductorQuantizer(), xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if scope == "all":
        head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        return quantizer.set_global(config).set_module_name_qconfig(head, None)
    from engine.models.chexnet import conv_layers

    quantizer.set_module_type_qconfig(nn.Conv2d, config)
    for name, m in conv_layers(model, arch).items():
        if isinstance(m, nn.Linear):
            quantizer.set_module_name_qconfig(name, config)
    return quantizer


@torch.no_grad()
def post_training(model: nn.Module, scope: str, image_size: int, batches, arch: str | None = None) -> nn.Module:
    """Post-training static quantization (PT2E): observers calibrated on `batches` (normalised input
    tensors, as the model sees them in evaluation), then the int8 graph `convert` makes from a QAT model."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model = copy.deepcopy(model).cpu().eval()
    prepared = prepare_pt2e(_captured(model, image_size), _quantizer(model, scope, is_qat=False, arch=arch))
    for x in batches:
        prepared(x.cpu())
    return _without_unused_tensors(_convert(prepared))


def convert(qat_model: nn.Module) -> nn.Module:
    """An int8 copy of a QAT model (CPU, eval mode); the QAT model itself is left as it is."""
    return _without_unused_tensors(_convert(copy.deepcopy(qat_model).cpu().eval()))


def _convert(prepared: nn.Module) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with _patterns_of_present_convs(prepared):
        return convert_pt2e(prepared)


@contextmanager
def _swapped(module: Any, replacements: dict[str, Any]):
    """`module`'s attributes replaced while the block runs (torchao's private helpers, see the callers),
    and only those it has: a torchao release that renamed one runs as it is."""
    present = {name: getattr(module, name) for name in replacements if hasattr(module, name)}
    for name in present:
        setattr(module, name, replacements[name])
    try:
        yield
    finally:
        for name, original in present.items():
            setattr(module, name, original)


@contextmanager
def _patterns_of_present_convs(gm: nn.Module):
    """torchao fuses (QAT prepare) and folds (convert) conv-BN pairs by matching patterns of conv1d,
    conv2d, conv_transpose1d and conv_transpose2d, exporting a pattern graph for each variant of each
    kind: measured on 2 cores, 4.0 s of a ResNet18 QAT prepare's 4.6 s and 33 s of its convert's 34 s, the
    same for any model. Patterns of a conv kind the graph does not call cannot match, so those kinds are
    skipped: the result is the same graph, and a CNN of conv2d layers pays a quarter."""
    from torchao.quantization.pt2e import qat_utils

    present = _aten_ops(gm)

    def only_present(name: str):
        helper = getattr(qat_utils, name)

        def call(m, conv_fn, *args, **kwargs):
            return helper(m, conv_fn, *args, **kwargs) if conv_fn.__name__ in present else m

        return call

    names = [n for n in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper") if hasattr(qat_utils, n)]
    replacements: dict[str, Any] = {name: only_present(name) for name in names}
    with _swapped(qat_utils, {**replacements, "_get_aten_graph_module_for_pattern": _pattern_graph}):
        yield


def _pattern_graph(pattern, example_inputs: tuple, is_cuda: bool = False, **kwargs) -> torch.fx.GraphModule:
    """torchao's `_get_aten_graph_module_for_pattern` (the aten graph of a conv-BN, BatchNorm or dropout
    pattern function, to match in a model's graph and to replace with), traced by non-strict
    `torch.export` instead of strict: the same graph but for its nodes' names (a pattern is a plain
    function of tensor ops, nothing for TorchDynamo to guard), in a third of the time. The 29 pattern
    graphs of a ResNet18 QAT prepare and convert at 32 px, one thread (`benchmarks/qat_patterns.py`, 2-core
    EPYC): 4.17 s strict, 1.25 s here, its convert 4.09 s to 2.18 s (DenseNet121's 6.93 s to 3.77 s), the
    same int8 graph and outputs; tests/test_compression.py compares every pattern graph with torchao's
    own. torchao's clean-up, as it does it: the copies of mutated inputs `ep.module()` adds, and dead
    code, removed."""
    if is_cuda:
        example_inputs = tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in example_inputs)
    gm: Any = torch.export.export(pattern, example_inputs, kwargs, strict=False).module()
    graph = gm.graph
    graph.eliminate_dead_code()
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.copy_.default and not node.users:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def graph_structure(gm: nn.Module) -> list[tuple]:
    """A graph's nodes in order (op, target, arguments by position) without their names, which count the
    rewrites and traces a graph has been through: what two graphs that compute alike share (the tests and
    benchmarks compare chexui's pattern graphs and switches with torchao's own by it)."""
    graph: Any = gm.graph
    at = {node: i for i, node in enumerate(graph.nodes)}

    def refs(a):
        return torch.fx.node.map_arg(a, lambda n: at[n])

    return [(n.op, "" if n.op == "placeholder" else str(n.target), refs(n.args), refs(n.kwargs)) for n in graph.nodes]


def _aten_ops(gm: nn.Module) -> set[str]:
    """The names of the aten operators a graph calls ("conv2d", "batch_norm", "_native_batch_norm_legit", ...)."""
    graph: Any = gm.graph  # (an nn.Module's attribute, typed Tensor | Module by torch's stub)
    targets = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    return {t.split(".")[1] for t in targets if t.startswith("aten.")}


def _without_unused_tensors(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """convert_pt2e leaves the float weights registered beside the int8 ones it made; export would
    store both (1.25x the fp32 bytes). Drop every parameter and buffer the graph no longer reads.
    The result accepts .eval() (evaluation code calls it; an int8 graph has nothing mode-dependent)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)
    return allow_train_eval(gm)


def allow_train_eval(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """torchao's `allow_exported_model_train_eval`: `.train()` / `.eval()` on the graph rewrite its dropout and
    BatchNorm ops between their training and evaluation forms, exporting six pattern graphs to match at
    every switch (twice an epoch, and at every evaluation of an int8 model). A rewrite whose op the graph
    does not call is skipped: it would match nothing (a captured CNN has no dropout, `_capturable`; an
    int8 graph has neither), and the BatchNorm rewrite's two pattern graphs are made once per process
    (`_reused`, `_pattern_graph`). A ResNet18 QAT graph's switch at 32 px, one thread
    (`benchmarks/qat_switch.py`, 2-core EPYC): torchao's own 0.52 s, 0.04 s here (DenseNet121: 1.11 s,
    0.26 s); the same graph but for its nodes' names. torchao's private helpers are wrapped only during a
    switch."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(gm)
    for name in ("train", "eval"):  # (bound to gm, as torchao's are)
        setattr(gm, name, types.MethodType(_only_present_rewrites(getattr(gm, name).__func__), gm))
    return gm


# torchao's train/eval rewrites, by the operators (a part of an aten operator's name) their patterns match
_REWRITES = {"_replace_dropout": "dropout", "_replace_batchnorm": "batch_norm"}


def _only_present_rewrites(switch):
    from torchao.quantization.pt2e import export_utils
    from torchao.quantization.pt2e import utils as pt2e_utils

    def call(self, *args, **kwargs):
        ops = _aten_ops(self)
        skipped = [name for name, op in _REWRITES.items() if not any(op in called for called in ops)]
        with (
            _swapped(export_utils, {name: lambda m, train_to_eval: None for name in skipped}),
            _swapped(pt2e_utils, {"_get_aten_graph_module_for_pattern": _reused}),
        ):
            switch(self, *args, **kwargs)
        return self

    return call


# pattern graphs made once in this process, by what they depend on (see `_reused`)
_PATTERN_GRAPHS: dict[tuple, torch.fx.GraphModule] = {}


def _reused(pattern, example_inputs, is_cuda=False, **kwargs) -> torch.fx.GraphModule:
    """`_pattern_graph`, made once per process for a pattern that depends on nothing but its code and its
    example inputs' shapes (a closure-free function, no keyword inputs): the BatchNorm rewrite's two, made
    again at every train/eval switch otherwise. A matched pattern and its replacement are only read (the
    replacement is copied into the model's graph). Dropout's patterns close over `inplace`: made each time."""
    fn = getattr(pattern, "fn", None)  # (torchao wraps a pattern function in a WrapperModule)
    if (
        kwargs
        or not isinstance(fn, types.FunctionType)
        or fn.__closure__
        or fn.__defaults__
        or not all(isinstance(x, torch.Tensor) for x in example_inputs)
    ):  # (it may depend on more than its code and the inputs' shapes: made each time)
        return _pattern_graph(pattern, example_inputs, is_cuda, **kwargs)
    key = (fn.__code__, is_cuda, tuple((tuple(x.shape), x.dtype) for x in example_inputs))
    if key not in _PATTERN_GRAPHS:
        _PATTERN_GRAPHS[key] = _pattern_graph(pattern, example_inputs, is_cuda)
    return _PATTERN_GRAPHS[key]


def _fake_quants(qat_model: nn.Module) -> dict[str, Any]:
    """The fake-quantize modules of a QAT model."""
    return {
        name: m
        for name, m in qat_model.named_modules()
        if isinstance(getattr(m, "observer_enabled", None), torch.Tensor) and hasattr(m, "quant_max")
    }


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


def bit_widths(qat_model: nn.Module) -> dict:
    """What the QAT model quantizes to: activation and weight bit widths (8 and 8) and how many
    fake-quant points each has. Weights are the per-channel ones."""
    acts: list[int] = []
    weights: list[int] = []
    for fq in _fake_quants(qat_model).values():
        bits = int(fq.quant_max - fq.quant_min + 1).bit_length() - 1
        per_channel = fq.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        (weights if per_channel else acts).append(bits)
    return {
        "activation_bits": sorted(set(acts)),
        "weight_bits": sorted(set(weights)),
        "activation_points": len(acts),
        "weight_points": len(weights),
    }


def program(int8_model: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """An int8 model as the `torch.export` program its .pt2 and ONNX artifacts are made from."""
    example = (torch.zeros(2, 3, image_size, image_size),)
    return torch.export.export(int8_model, example, dynamic_shapes=_batch_dim())


def save_int8(
    int8_model: nn.Module | torch.export.ExportedProgram, image_size: int, path, extra: dict[str, str] | None = None
) -> None:
    """The int8 model as a `torch.export` program (.pt2), with `extra` text files in it: users load it
    with torch alone (`torch.export.load`, as much trust as unpickling: only files they made)."""
    from functools import partial

    from engine.training.checkpoint import save_atomic

    if not isinstance(int8_model, torch.export.ExportedProgram):
        int8_model = program(int8_model, image_size)
    save_atomic(int8_model, path, write=partial(_save_deflated, extra=extra))


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


# -------------------------------------------------------------- the int8 graph as data

GRAPH_FORMAT = "chexui-int8-graph/1"
MAX_NODES = 100_000
# the operations a converted torchvision CNN's int8 graph calls (engine/models/archs.py's), by the names their
# OpOverloads print: nothing else is admitted from a record (aten has ops that read and write files,
# e.g. from_file, so a namespace is never admitted whole)
INT8_OP_NAMES = (
    "quantized_decomposed.quantize_per_tensor.default",
    "quantized_decomposed.dequantize_per_tensor.default",
    "quantized_decomposed.quantize_per_channel.default",
    "quantized_decomposed.dequantize_per_channel.default",
    "aten.conv2d.default",
    "aten.linear.default",
    "aten.batch_norm.default",
    "aten.relu.default",
    "aten.relu_.default",
    "aten.add.Tensor",
    "aten.add_.Tensor",
    "aten.cat.default",
    "aten.max_pool2d.default",
    "aten.avg_pool2d.default",
    "aten.adaptive_avg_pool2d.default",
    "aten.flatten.using_ints",
    "aten.mean.dim",
    "aten.hardtanh.default",
    "aten.hardtanh_.default",
    # EfficientNet, MobileNetV3 (activations, squeeze-excitation's scaling) and ConvNeXt (channels-last
    # LayerNorm and GELU between its pointwise layers)
    "aten.silu.default",
    "aten.silu_.default",
    "aten.hardswish.default",
    "aten.hardswish_.default",
    "aten.hardsigmoid.default",
    "aten.sigmoid.default",
    "aten.mul.Tensor",
    "aten.permute.default",
    "aten.layer_norm.default",
    "aten.gelu.default",
)
_EVAL_DROPOUT = (torch.ops.aten.dropout.default, torch.ops.aten.dropout_.default)
_DTYPES = {str(d): d for d in (torch.uint8, torch.int8, torch.int32, torch.int64, torch.float32)}


def _int8_ops() -> dict:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    ops = {}
    for name in INT8_OP_NAMES:
        namespace, op, overload = name.split(".")
        ops[name] = getattr(getattr(getattr(torch.ops, namespace), op), overload)
    return ops


def graph_record(int8_model: nn.Module) -> dict:
    """A converted int8 graph as data: {"format", "nodes": JSON text, "tensors": {name: tensor}}, what
    `from_graph_record` rebuilds (a checkpoint part: torch.load(weights_only=True) reads it back)."""
    gm: Any = int8_model.module if isinstance(int8_model, Program) else int8_model
    ops = {op: name for name, op in _int8_ops().items()}
    index: dict[torch.fx.Node, int] = {}
    state = dict(gm.state_dict(keep_vars=False))
    nodes: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return {"node": index[a]}
        if isinstance(a, (list, tuple)):
            return [arg(v) for v in a]
        if isinstance(a, torch.dtype):
            return {"dtype": str(a)}
        if a is None or isinstance(a, (bool, int, float)):
            return a
        raise TypeError(f"int8 graph argument of type {type(a).__name__}")

    for n in gm.graph.nodes:
        if n.op == "call_module" and not n.users:  # torch.export's input-shape guard: nothing reads it
            continue
        if n.op == "call_function" and n.target in _EVAL_DROPOUT and n.args[2] is False:
            index[n] = index[n.args[0]]  # dropout captured in eval mode (`_capturable`): the identity
            continue
        if n.op == "placeholder":
            rec = {"op": "placeholder"}
        elif n.op == "get_attr":
            name = f"t{len(tensors)}"
            tensors[name] = state[n.target].detach().clone()
            rec = {"op": "get_attr", "tensor": name}
        elif n.op == "call_function" and n.target in ops and not n.kwargs:
            rec = {"op": "call", "fn": ops[n.target], "args": arg(n.args)}
        elif n.op == "output":  # (one logits tensor; torch.export's graph returns it in a 1-tuple)
            out = n.args[0]
            rec = {"op": "output", "args": arg(out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out)}
        else:
            raise TypeError(f"int8 graph node {n.format_node()} is not one chexui records")
        index[n] = len(nodes)
        nodes.append(rec)
    import json

    return {"format": GRAPH_FORMAT, "nodes": json.dumps(nodes), "tensors": tensors}


def from_graph_record(record: dict) -> Program:
    """The int8 model of a `graph_record`, which may come from anyone (a run dir's checkpoint): only the
    ops of INT8_OPS, arguments of plain types and earlier nodes, tensors of the record itself. Anything
    else raises ValueError, naming what."""
    import json

    if not isinstance(record, dict) or record.get("format") != GRAPH_FORMAT:
        raise ValueError(f"not a {GRAPH_FORMAT} record")
    nodes, tensors = json.loads(record["nodes"]), record["tensors"]
    if not isinstance(nodes, list) or not isinstance(tensors, dict) or len(nodes) > MAX_NODES:
        raise ValueError("ill-shaped record")
    ops, graph = _int8_ops(), torch.fx.Graph()
    made: list[torch.fx.Node] = []
    root, inputs = nn.Module(), 0

    def arg(a, depth=0):
        if depth > 4:
            raise ValueError("argument nested too deeply")
        if isinstance(a, dict):
            if set(a) == {"node"} and type(a["node"]) is int and 0 <= a["node"] < len(made):
                return made[a["node"]]
            if set(a) == {"dtype"} and a["dtype"] in _DTYPES:
                return _DTYPES[a["dtype"]]
            raise ValueError(f"argument {str(a)[:60]!r}")
        if isinstance(a, list):
            return [arg(v, depth + 1) for v in a]
        if a is None or isinstance(a, (bool, int, float)):
            return a
        raise ValueError(f"argument of type {type(a).__name__}")

    for i, rec in enumerate(nodes):
        op = rec.get("op") if isinstance(rec, dict) else None
        if op == "placeholder" and not inputs:
            inputs += 1
            made.append(graph.placeholder("x"))
        elif (
            op == "get_attr"
            and isinstance(tensors.get(rec.get("tensor")), torch.Tensor)
            and str(rec["tensor"]).isidentifier()
        ):
            if not hasattr(root, rec["tensor"]):
                root.register_buffer(rec["tensor"], tensors[rec["tensor"]])
            made.append(graph.get_attr(rec["tensor"]))
        elif op == "call" and rec.get("fn") in ops and isinstance(rec.get("args"), list):
            made.append(graph.call_function(ops[rec["fn"]], tuple(arg(a) for a in rec["args"])))
        elif op == "output" and i == len(nodes) - 1 and i > 0:
            made.append(graph.output(arg(rec.get("args"))))
        else:
            raise ValueError(f"node {i} ({str(rec)[:80]!r}) is not one an int8 graph may have")
    if not made or made[-1].op != "output" or not inputs:
        raise ValueError("the record has no input or no output")
    return Program(torch.fx.GraphModule(root, graph).eval())


class Program(nn.Module):
    """An int8 graph as a module that can be put in eval mode (an exported module refuses
    .train()/.eval(); a converted int8 graph has nothing that depends on the mode)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> Program:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
