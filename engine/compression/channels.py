"""Channel (structured) pruning: which channels may go together, which go, and the smaller model without them.

A *group* is a set of channels that is removed as one: the output channels (filters) of a producer
conv, the BatchNorm over exactly those channels, and every module that reads them as input (a conv's
input channels, a pre-activation BatchNorm, the classifier's inputs), at the offset where they sit in
that module's input. Groups are found from torchvision's block structure:

- ResNet (Bottleneck, BasicBlock): the inner channels of each block (conv1 -> bn1 -> conv2, and in a
  Bottleneck conv2 -> bn2 -> conv3). The channels a residual add joins are left whole: removing one
  would have to remove it from every block of the stage and its shortcut at once.
- DenseNet (_DenseBlock): each layer's bottleneck channels (conv1 -> norm2 -> conv2) and its growth
  channels (conv2's outputs), which the block concatenates into the input of every later layer
  (norm1 and conv1 there), of the transition after the block (norm, conv) or, after the last block,
  of norm5 and the classifier: the group records each reader's offset into its concatenated input.

Written here rather than taken from torch-pruning: its traced dependency graph mis-sizes concatenated
inputs (VainF/Torch-Pruning#146 and #481, open), which a DenseNet is made of; and it prunes by
replacing parameters, so the optimizer's state and DDP's buckets would be rebuilt at every mask update
of a gradual schedule. Here training keeps the dense shapes and *masks* a group's channels (its filters,
the BatchNorm's weight and bias, the readers' input weights), so a masked channel contributes exactly
zero everywhere; `slim` then cuts the masked channels out once, and the smaller model computes the
same function. Masks are made from the weights (and gradients) that DDP keeps identical on every rank,
and rank 0's choice is what every rank applies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import ConfigError

IMPORTANCE = ("l1", "l2", "taylor")


@dataclass(frozen=True)
class Group:
    producer: str  # the conv whose output channels these are
    width: int  # its output channels in the dense model
    norms: tuple[str, ...]  # BatchNorms over exactly these channels, right after the producer
    readers: tuple[tuple[str, int], ...]  # (module, offset of these channels in its input)


def _resnet_groups(prefix: str, block: Any) -> list[Group]:
    pairs = [("conv1", "bn1", "conv2")]
    if hasattr(block, "conv3"):  # Bottleneck
        pairs.append(("conv2", "bn2", "conv3"))
    return [
        Group(f"{prefix}.{conv}", getattr(block, conv).out_channels, (f"{prefix}.{bn}",), ((f"{prefix}.{reader}", 0),))
        for conv, bn, reader in pairs
    ]


def _densenet_groups(prefix: str, block: nn.Module, after: list[str]) -> list[Group]:
    """A dense block's groups; `after`: the modules reading the block's output (the transition's norm
    and conv, or norm5 and the classifier)."""
    layers: list[tuple[str, Any]] = [(f"{prefix}.{name}", layer) for name, layer in block.named_children()]
    c_in = layers[0][1].norm1.num_features
    out = []
    for i, (name, layer) in enumerate(layers):
        out.append(Group(f"{name}.conv1", layer.conv1.out_channels, (f"{name}.norm2",), ((f"{name}.conv2", 0),)))
        offset = c_in + sum(lay.conv2.out_channels for _, lay in layers[:i])
        readers = [(f"{later}.{m}", offset) for later, _ in layers[i + 1 :] for m in ("norm1", "conv1")]
        readers += [(m, offset) for m in after]
        out.append(Group(f"{name}.conv2", layer.conv2.out_channels, (), tuple(readers)))
    return out


def groups(model: nn.Module) -> list[Group]:
    """The model's channel groups (empty for an architecture whose blocks are not known here)."""
    from torchvision.models.densenet import _DenseBlock, _Transition
    from torchvision.models.resnet import BasicBlock, Bottleneck

    out: list[Group] = []
    named = dict(model.named_modules())
    for name, m in named.items():
        if isinstance(m, (Bottleneck, BasicBlock)):
            out += _resnet_groups(name, m)
        elif isinstance(m, _DenseBlock):
            parent, _, child = name.rpartition(".")
            siblings = list(named[parent].named_children()) if parent else []
            idx = [n for n, _ in siblings].index(child)
            nxt = siblings[idx + 1] if idx + 1 < len(siblings) else None
            if nxt is not None and isinstance(nxt[1], _Transition):
                after = [f"{parent}.{nxt[0]}.norm", f"{parent}.{nxt[0]}.conv"]
            else:  # the last block: the final norm, then the classifier
                head = next(
                    (n for n, mod in model.named_children() if isinstance(mod, nn.Linear)),
                    None,
                )
                norm = f"{parent}.{nxt[0]}" if nxt is not None else None
                if norm is None or head is None:
                    raise ConfigError("prune.structure = 'channel': a DenseNet without its final norm or classifier")
                after = [norm, head]
            out += _densenet_groups(name, m, after)
    return out


def supported(model: nn.Module, arch: str) -> list[Group]:
    found = groups(model)
    if not found:
        raise ConfigError(
            f"prune.structure = 'channel': chexui knows no channel groups of {arch}'s blocks "
            "(ResNet and DenseNet blocks are known); use prune.structure = 'unstructured'"
        )
    return found


# ------------------------------------------------------------------ removed channels, per module
def removals(gs: list[Group], removed: dict[str, list[int]]) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """(output channels, input channels) each module loses when the groups lose `removed` (group
    producer -> channel indices). A BatchNorm's channels count as its outputs."""
    out: dict[str, set[int]] = {}
    inp: dict[str, set[int]] = {}
    for g in gs:
        idx = removed.get(g.producer, [])
        if not idx:
            continue
        for name in (g.producer, *g.norms):
            out.setdefault(name, set()).update(idx)
        for name, offset in g.readers:
            inp.setdefault(name, set()).update(offset + i for i in idx)
    return out, inp


def _keep(n: int, drop: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


@torch.no_grad()
def masks(model: nn.Module, gs: list[Group], removed: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Multiplicative masks (parameter name -> 0/1 tensor of its shape) that zero the removed channels
    everywhere they appear: filters, BatchNorm weight and bias, readers' input weights."""
    out, inp = removals(gs, removed)
    named = dict(model.named_modules())
    result: dict[str, torch.Tensor] = {}
    for name in sorted(set(out) | set(inp)):
        m = named[name]
        drop_out, drop_in = sorted(out.get(name, ())), sorted(inp.get(name, ()))
        if isinstance(m, nn.BatchNorm2d):
            mask = torch.ones(m.num_features)
            mask[drop_out + drop_in] = 0
            result[f"{name}.weight"] = mask
            result[f"{name}.bias"] = mask.clone()
        else:  # a conv or the classifier: rows are outputs, columns inputs
            mask = torch.ones_like(m.weight, device="cpu")
            mask[drop_out] = 0
            mask[:, drop_in] = 0
            result[f"{name}.weight"] = mask
            if getattr(m, "bias", None) is not None and drop_out:
                b = torch.ones_like(m.bias, device="cpu")
                b[drop_out] = 0
                result[f"{name}.bias"] = b
    return result


# ------------------------------------------------------------------ which channels go
def _norm_per_channel(t: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    t = t.detach().float().movedim(dim, 0).reshape(t.shape[dim], -1)
    return t.abs().sum(1) if p == 1 else t.pow(2).sum(1).sqrt()


def group_slices(model: nn.Module, g: Group) -> list[tuple[nn.Parameter, int, int]]:
    """The group's parameters as (parameter, dim, offset): its channels are [offset, offset + width)
    along `dim`."""
    named = dict(model.named_modules())
    parts: list[tuple[nn.Parameter, int, int]] = [(named[g.producer].weight, 0, 0)]
    for n in g.norms:
        parts += [(named[n].weight, 0, 0), (named[n].bias, 0, 0)]
    for name, offset in g.readers:
        m = named[name]
        if isinstance(m, nn.BatchNorm2d):
            parts += [(m.weight, 0, offset), (m.bias, 0, offset)]
        else:
            parts.append((m.weight, 1, offset))
    return parts


def magnitude(model: nn.Module, g: Group, p: int) -> torch.Tensor:
    """Each channel's L1/L2 norm over every parameter of its group, each part's norms divided by their
    mean over the group's channels first: a filter of 1,152 weights and a BatchNorm scale then weigh
    alike (a conv's filter norm alone says little where a BatchNorm rescales its output)."""
    total = torch.zeros(g.width)
    for param, dim, offset in group_slices(model, g):
        norms = _norm_per_channel(param.narrow(dim, offset, g.width), dim, p).cpu()
        total += norms / norms.mean().clamp_min(1e-12)
    return total


def taylor_terms(model: nn.Module, g: Group) -> torch.Tensor:
    """First-order Taylor estimate of the loss change when the channel goes, (sum of w * dL/dw over
    its group's parameters)^2, for the current gradients (Molchanov et al., CVPR 2019)."""
    total = torch.zeros(g.width)
    for param, dim, offset in group_slices(model, g):
        if param.grad is None:
            continue
        wg = (param.detach() * param.grad.detach()).narrow(dim, offset, g.width).float()
        total += wg.movedim(dim, 0).reshape(g.width, -1).sum(1).cpu()
    return total.pow(2)


def choose(scores: torch.Tensor, n_remove: int, already: list[int]) -> list[int]:
    """The `n_remove` lowest-scoring channels, always including those removed before (a removed channel
    never comes back: its weights are zero, and the optimizer's state for it is stale)."""
    s = scores.clone().double()
    s[already] = -float("inf")
    n_remove = max(n_remove, len(already))
    return sorted(int(i) for i in torch.argsort(s, stable=True)[:n_remove])


# ------------------------------------------------------------------ MACs of a model with fewer channels
def spatial_sizes(model: nn.Module, image_size: int) -> dict[str, int]:
    """Each conv's output positions (H x W) for one image, from one pass of a copy on the meta device
    (shapes only: no memory, no arithmetic)."""
    sizes: dict[str, int] = {}
    meta = copy.deepcopy(model).to("meta").eval()
    for name, m in meta.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, i, o, name=name: sizes.__setitem__(name, o.shape[-1] * o.shape[-2]))
    with torch.no_grad():
        meta(torch.empty(1, 3, image_size, image_size, device="meta"))
    return sizes


def macs_after(model: nn.Module, sizes: dict[str, int], out: dict[str, set[int]], inp: dict[str, set[int]]) -> int:
    """Multiply-accumulates of one image through the convs and linears with these channels removed
    (BatchNorm, pooling and activations are not MACs)."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            o = m.out_channels - len(out.get(name, ()))
            i = m.in_channels - len(inp.get(name, ()))
            total += o * (i // m.groups) * m.kernel_size[0] * m.kernel_size[1] * sizes[name]
        elif isinstance(m, nn.Linear):
            total += m.out_features * (m.in_features - len(inp.get(name, ())))
    return total


# ------------------------------------------------------------------ the smaller model
def _take(t: torch.Tensor, dim: int, keep: torch.Tensor | None) -> torch.Tensor:
    return t.detach() if keep is None else t.detach().index_select(dim, keep.to(t.device))


def _shrunk(m: Any, keep_out: torch.Tensor | None, keep_in: torch.Tensor | None) -> nn.Module:
    """A copy of the conv, BatchNorm or linear `m` with only the `keep_out` output and `keep_in` input
    channels (a BatchNorm's channels are its outputs)."""
    new: Any = copy.deepcopy(m)
    if isinstance(m, nn.BatchNorm2d):
        for name in ("weight", "bias"):
            setattr(new, name, nn.Parameter(_take(getattr(m, name), 0, keep_out).clone()))
        for name in ("running_mean", "running_var"):
            setattr(new, name, _take(getattr(m, name), 0, keep_out).clone())
        new.num_features = new.weight.shape[0]
        return new
    new.weight = nn.Parameter(_take(_take(m.weight, 0, keep_out), 1, keep_in).clone())
    if m.bias is not None:
        new.bias = nn.Parameter(_take(m.bias, 0, keep_out).clone())
    if isinstance(m, nn.Linear):
        new.out_features, new.in_features = new.weight.shape[:2]
    else:
        assert m.groups == 1, "grouped convolutions are not channel-pruned"
        new.out_channels, new.in_channels = new.weight.shape[:2]
    return new


def slim(model: nn.Module, gs: list[Group], removed: dict[str, list[int]]) -> nn.Module:
    """A copy of `model` with the removed channels cut out (same device, dtype and memory layout)."""
    out, inp = removals(gs, removed)
    new = copy.deepcopy(model)
    named = dict(new.named_modules())
    for name in set(out) | set(inp):
        m = named[name]
        n_out = m.num_features if isinstance(m, nn.BatchNorm2d) else m.weight.shape[0]
        n_in = m.num_features if isinstance(m, nn.BatchNorm2d) else m.weight.shape[1]
        keep_out = _keep(n_out, out[name]) if name in out else None
        keep_in = _keep(n_in, inp[name]) if name in inp and not isinstance(m, nn.BatchNorm2d) else None
        if isinstance(m, nn.BatchNorm2d) and name in inp:
            keep_out = _keep(n_out, out.get(name, set()) | inp[name])
        replacement = _shrunk(m, keep_out, keep_in)
        if isinstance(m, nn.Conv2d) and m.weight.is_contiguous(memory_format=torch.channels_last):
            replacement = replacement.to(memory_format=torch.channels_last)
        parent, _, child = name.rpartition(".")
        setattr(named[parent] if parent else new, child, replacement)
    return new


def channel_counts(model: nn.Module) -> dict[str, list[int]]:
    """[in, out] channels (features for the classifier) of every conv, BatchNorm and linear: the data
    from which a smaller model is rebuilt (`fit_to_counts`)."""
    counts: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            counts[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.BatchNorm2d):
            counts[name] = [m.num_features, m.num_features]
        elif isinstance(m, nn.Linear):
            counts[name] = [m.in_features, m.out_features]
    return counts


def fit_to_counts(model: nn.Module, counts: dict[str, Any]) -> nn.Module:
    """`model` (a dense skeleton) with every conv, BatchNorm and linear resized to `counts` (module ->
    [in, out]); fresh weights, to be loaded. Raises ValueError for a module the model lacks or a count
    that is not a positive int no larger than the dense one."""
    named = dict(model.named_modules())
    for name, pair in counts.items():
        m = named.get(name)
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, int) and v > 0 for v in pair)
        if m is None or not ok or not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            raise ValueError(f"channel count {name!r}: {pair!r} is not [in, out] of a conv, BatchNorm or linear")
        n_in, n_out = pair
        if isinstance(m, nn.BatchNorm2d):
            if n_in != n_out or n_in > m.num_features:
                raise ValueError(f"channel count {name!r}: {pair!r} does not fit a BatchNorm of {m.num_features}")
            if n_in == m.num_features:
                continue
            keep = torch.arange(n_in)
            new: nn.Module = _shrunk(m, keep, None)
        else:
            w_out, w_in = m.weight.shape[0], m.weight.shape[1]
            if n_in > w_in or n_out > w_out:
                raise ValueError(f"channel count {name!r}: {pair!r} is larger than the dense [{w_in}, {w_out}]")
            if (n_in, n_out) == (w_in, w_out):
                continue
            new = _shrunk(m, torch.arange(n_out), torch.arange(n_in))
        parent, _, child = name.rpartition(".")
        setattr(named[parent] if parent else model, child, new)
    return model
