"""Channel pruning as a compression method (`prune.structure = "channel"`): whole channels removed on the
study's polynomial schedule (gradual), or at once from a trained model (`chexui compress --prune-channels`,
one-shot), ranked by `prune.importance` ("l1", "l2": the group's weight norms; "taylor": first-order
Taylor scores from the training gradients). `prune.final_sparsity` is the fraction of each group's
channels removed (per width with `prune.adaptive`); `prune.target_macs` (> 0) instead scales those
targets until the smaller model keeps that fraction of the dense model's multiply-accumulates.

Training keeps the dense shapes with the removed channels masked to zero (engine/compression/channels.py
says why); the run ships the physically smaller model (`shipped`): its test evaluation, export/ files,
and a post-training int8 model made on top (`--ptq`) are of the smaller model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.compression import channels
from engine.compression.base import Method, MethodContext, register
from engine.compression.prune import Pruner, Schedule
from engine.errors import ConfigError

# training batches whose gradients rank the channels of a one-shot Taylor pruning (a trained model,
# `chexui compress`): 16 batches of train.batch_size, in the training split's seeded order
TAYLOR_BATCHES = 16
MAX_FRACTION = 0.95  # at least 1 channel in 20 stays in every group, whatever the targets say


def final_targets(model: nn.Module, gs: list[channels.Group], cfg: dict, sizes: dict[str, int]) -> dict[str, float]:
    """Each group's final fraction of channels removed: by width from `adaptive` (as magnitude pruning's
    per-layer targets) or `final_sparsity`; with `target_macs`, those targets times the one factor
    (found by bisection) at which the smaller model keeps `target_macs` of the dense MACs; `sizes`: the
    convs' output positions (channels.spatial_sizes)."""
    by_width = {a["out_channels"]: a["sparsity"] for a in cfg["adaptive"]}
    base = {g.producer: by_width.get(g.width, Pruner.unlisted(cfg)) for g in gs}
    if not cfg["target_macs"]:
        return {k: min(v, MAX_FRACTION) for k, v in base.items()}
    dense = channels.macs_after(model, sizes, {}, {})

    def macs(k: float) -> int:
        removed = {g.producer: list(range(round(min(k * base[g.producer], MAX_FRACTION) * g.width))) for g in gs}
        return channels.macs_after(model, sizes, *channels.removals(gs, removed))

    goal = cfg["target_macs"] * dense
    lo, hi = 0.0, MAX_FRACTION / max(min((v for v in base.values() if v > 0), default=1.0), 1e-6)
    if macs(hi) > goal:
        raise ConfigError(
            f"prune.target_macs = {cfg['target_macs']}: removing {MAX_FRACTION:.0%} of every prunable "
            f"group's channels keeps {macs(hi) / dense:.3f} of the MACs (the rest are in layers whose channels "
            "stay: the stem, shortcuts, transitions); raise prune.target_macs"
        )
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(mid) > goal else (lo, mid)
    return {k: min(hi * v, MAX_FRACTION) for k, v in base.items()}


@register
class ChannelPruning(Method):
    name, enabled_by = "channel_prune", "prune.enabled"

    @classmethod
    def enabled(cls, cfg: dict) -> bool:
        return bool(cfg["prune"]["enabled"]) and cfg["prune"]["structure"] == "channel"

    def __init__(self, model: nn.Module, ctx: MethodContext) -> None:
        super().__init__(model, ctx)
        arch, self.image_size = ctx.cfg["model"]["arch"], ctx.cfg["data"]["image_size"]
        self.groups = channels.supported(model, arch)
        self.sizes = channels.spatial_sizes(model, self.image_size)
        self.final = final_targets(model, self.groups, self.cfg, self.sizes)
        self.schedule = Schedule(self.cfg, ctx.steps_per_epoch)
        self.removed: dict[str, list[int]] = {}
        self.last_update = -1
        self.taylor: dict[str, torch.Tensor] = {}  # accumulated Taylor scores since the last update
        self._factors: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.dense_macs = channels.macs_after(model, self.sizes, {}, {})

    # ------------------------------------------------------------ state
    def parts(self) -> dict[str, Any]:
        return {"channel_prune": self}

    def best_parts(self) -> tuple[str, ...]:
        return ("channel_prune",)  # which channels the best model lacks: the smaller model is made from it

    def state_dict(self) -> dict:
        return {
            "removed": {k: torch.tensor(v, dtype=torch.long) for k, v in self.removed.items()},
            "last_update": self.last_update,
            "taylor": {k: v.clone() for k, v in self.taylor.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.removed = {k: [int(i) for i in v] for k, v in state["removed"].items()}
        self.last_update = int(state["last_update"])
        self.taylor = {k: v.clone() for k, v in state.get("taylor", {}).items()}
        self._factors = None
        self.apply()

    # ------------------------------------------------------------ the schedule
    def begin(self, run: Any) -> None:
        if self.cfg["schedule"] == "one_shot":
            if self.cfg["importance"] == "taylor":
                self._taylor_from_batches(run)
            self.update(0)

    def after_step(self, global_step: int) -> None:
        if self.cfg["importance"] == "taylor" and self.schedule.active(global_step, self.last_update):
            self._accumulate_taylor()
        if self.schedule.due(global_step, self.last_update):
            self.update(global_step)
        self.apply()

    def settled(self, global_step: int) -> bool:
        return self.cfg["best_from"] == "start" or self.schedule.finished(global_step)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """New masks: each group's lowest-ranked channels up to its target at `step`, rank 0's choice
        applied on every rank."""
        chosen: dict[str, list[int]] = {}
        for g in self.groups:
            target = self.schedule.target(self.final[g.producer], step)
            n = min(round(target * g.width), g.width - 1)
            chosen[g.producer] = channels.choose(self._scores(g), n, self.removed.get(g.producer, []))
        d = self.ctx.d
        self.removed = d.all_gather_object(chosen)[0] if d is not None and d.active else chosen
        self.last_update = step
        self.taylor = {}
        self._factors = None
        self.apply()

    def _scores(self, g: channels.Group) -> torch.Tensor:
        imp = self.cfg["importance"]
        if imp == "taylor" and g.producer in self.taylor:
            return self.taylor[g.producer]
        return channels.magnitude(self.model, g, 2 if imp == "l2" else 1)

    def _accumulate_taylor(self) -> None:
        for g in self.groups:
            t = channels.taylor_terms(self.model, g)
            self.taylor[g.producer] = self.taylor.get(g.producer, torch.zeros_like(t)) + t

    def _taylor_from_batches(self, run: Any) -> None:
        """Gradients of the training loss over the first TAYLOR_BATCHES training batches (every rank the
        same ones), one Taylor score per batch; the model's weights are not changed."""
        from engine.data.batches import to_input, train_batches

        t = run.t
        batches = train_batches(run.n_train, t["batch_size"], 1, 0, t["seed"], 0)[:TAYLOR_BATCHES]
        was_training = self.model.training
        self.model.train()  # (BatchNorm in training mode, as in a training step; its running stats are kept)
        saved = {k: v.clone() for k, v in self.model.state_dict().items() if "running" in k or "batches" in k}
        for pos in batches:
            rows = run.data.split["train"][pos]
            x, y = run.data.images[rows][:2]
            self.model.zero_grad(set_to_none=True)
            out = self.model(to_input(x, run.d.device, None, run.channels_last))
            run.loss_fn(out, y.to(run.d.device).float()).backward()
            self._accumulate_taylor()
        self.model.zero_grad(set_to_none=True)
        self.model.load_state_dict(saved, strict=False)
        self.model.train(was_training)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the removed channels' weights (after every optimizer step: Adam moves them off zero), one
        foreach multiply over the masked parameters."""
        if not self.removed:
            return
        if self._factors is None:
            params = dict(self.model.named_parameters())
            masks = channels.masks(self.model, self.groups, self.removed)
            self._factors = (
                [params[k] for k in masks],
                [torch.empty_like(params[k]).copy_(m) for k, m in masks.items()],
            )
        torch._foreach_mul_(*self._factors)

    # ------------------------------------------------------------ what it reports and ships
    def fraction(self) -> float:
        """Channels removed over the prunable groups' channels."""
        return sum(len(v) for v in self.removed.values()) / sum(g.width for g in self.groups)

    def macs(self) -> int:
        return channels.macs_after(self.model, self.sizes, *channels.removals(self.groups, self.removed))

    def epoch_fields(self) -> dict[str, Any]:
        return {"sparsity": self.fraction(), "macs_ratio": round(self.macs() / self.dense_macs, 4)}

    def shipped(self, model: nn.Module) -> nn.Module:
        slim = channels.slim(model, self.groups, self.removed)
        d = self.ctx.d
        if d is not None and d.active:
            counts = d.all_gather_object(channels.channel_counts(slim))
            self.ranks_agree = all(c == counts[0] for c in counts)
            self.ctx.log(f"channel counts {'identical' if self.ranks_agree else 'DIFFERENT'} on {len(counts)} ranks")
        return slim

    def exported_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "sparsity": self.fraction(),
            "structure": "channel",
            "macs_ratio": round(self.macs() / self.dense_macs, 4),
        }
        if hasattr(self, "ranks_agree"):
            fields["channel_counts_agree"] = self.ranks_agree
        return fields

    @classmethod
    def float_model(cls, cfg: dict, ck: dict) -> nn.Module | None:
        """The smaller model a finished run ships, from its best checkpoint (the dense model with the
        channels masked, and which channels)."""
        from engine.models.chexnet import build_float

        if "channel_prune" not in ck:
            return None
        model = build_float(cfg["model"]["arch"], ck["model"])
        removed = {k: [int(i) for i in v] for k, v in ck["channel_prune"]["removed"].items()}
        return channels.slim(model, channels.groups(model), removed)
