"""The LR range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; the form
fastai and PyTorch Lightning call `lr_find`): train the preset's model from its starting weights for
`lr_find.steps` optimizer steps while the LR grows exponentially from `start_lr` to `end_lr`, record the
loss at each LR, and stop once the smoothed loss diverges. The loss first stays flat (LR too small to
move), then falls, then blows up; a good initial LR lies where it falls fastest.

`Run.train()` calls `find()` instead of the epoch loop when `lr_find.enabled` (`chexui lr-find` sets it);
nothing is checkpointed (the weights the ramp leaves are thrown away). The ramp is the LR the optimizer
sees, every rank's step together: with `train.lr_scale = "linear"` the preset's `train.lr` for N
processes is the suggestion / N, which is what `lr_suggested.train_lr` says and `--apply` writes.
Rank 0 writes one `lr_find_step` event per step, one `lr_suggested` and the curve as lr_find.png.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from engine.data.batches import loader, train_batches
from engine.fsutil import write_atomic
from engine.training.loop import autocast, run_step

PNG = "lr_find.png"  # in the run dir
# the least fall of the smoothed loss below its start (a share of it) that makes a suggestion: a flatter
# curve is noise around a level, and its "steepest" point is the noise's. EfficientNetV2-S from scratch
# on the demo data fell 3.8 % (its suggestion, 1.5e-5, trained to 0.54 test AUROC where 1e-3 gave 0.63);
# ResNet18's fell 42 %
CLEAR_FALL = 0.10


NO_CLEAR_FALL = (
    "the smoothed loss fell only {fall:.1%} below its start (under "
    f"{CLEAR_FALL:.0%}): the curve has no clear fall and the suggestion is a guess (a longer ramp, "
    "lr_find.steps, or pretrained weights give one)"
)


def ramp(start: float, end: float, steps: int) -> np.ndarray:
    """`steps` LRs from `start` to `end`, evenly spaced in log LR."""
    return np.geomspace(start, end, steps)


class Ema:
    """The exponential moving average of a loss with weight `beta` on the past, bias-corrected (the
    first values are not pulled toward 0, as Adam corrects its moments)."""

    def __init__(self, beta: float) -> None:
        self.beta, self.avg, self.n = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        return self.avg / (1 - self.beta**self.n)


@dataclass
class Suggestion:
    lr: float  # the suggested LR, as the optimizer sees it (every rank's step)
    rule: str
    min_loss_lr: float  # the LR at the smoothed loss's minimum
    steepest_lr: float  # the LR where the smoothed loss falls fastest before its minimum
    fall: float  # how far the smoothed loss fell below its start (the first half decade's median), a share of it

    @property
    def clear(self) -> bool:
        return self.fall >= CLEAR_FALL


def suggest(lrs: np.ndarray, smoothed: np.ndarray, rule: str) -> Suggestion:
    """The rule's LR from a recorded curve (`lrs` evenly spaced in log LR, `smoothed` as long, >= 4).

    "steepest": where the smoothed loss falls fastest before its minimum, the slope measured across one
    decade of LR around each point (a point-to-point slope follows the noise of single batches: the
    first steps, averaged over few batches, would win); "min/10": the minimum's LR over 10 (the loss
    still falls there and is far from where it blows up)."""
    i_min = int(np.nanargmin(smoothed))
    log_lr = np.log10(lrs)
    half = max(1, round(0.5 / (log_lr[1] - log_lr[0])))  # points in half a decade
    centres = np.arange(half, i_min - half + 1)
    if centres.size:
        ahead, behind = centres + half, centres - half
        slope = (smoothed[ahead] - smoothed[behind]) / (log_lr[ahead] - log_lr[behind])
        i_steep = int(centres[np.nanargmin(slope)])
    else:  # the minimum within a decade of the start: the point-to-point slope up to it
        upto = max(i_min, 2) + 1
        i_steep = int(np.nanargmin(np.gradient(smoothed[:upto], log_lr[:upto])))
    min_lr, steep_lr = float(lrs[i_min]), float(lrs[i_steep])
    start = float(np.nanmedian(smoothed[: half + 1]))
    return Suggestion(
        lr=steep_lr if rule == "steepest" else min_lr / 10,
        rule=rule,
        min_loss_lr=min_lr,
        steepest_lr=steep_lr,
        fall=(start - float(smoothed[i_min])) / start if start > 0 else 0.0,
    )


def batches_forever(run) -> Generator[tuple[int, int, tuple], None, None]:
    """(epoch, step, batch) over the training split epoch after epoch, as the epoch loop draws them
    (the same shuffles and flips): a ramp may be longer than an epoch of the demo data."""
    epoch = 0
    while True:
        epoch += 1
        batches = train_batches(run.n_train, run.t["batch_size"], run.d.world, run.d.rank, run.t["seed"], epoch)
        with loader(
            run.data.images,
            batches,
            run.data.split["train"],
            run.dc["workers"],
            run.d.device,
            pin=run.d.device.type == "cuda",
        ) as dl:
            for step, batch in enumerate(dl):
                yield epoch, step, batch


def find(run) -> str:
    """The range test on `run` (set up; trainer.Run): "completed" (its `lr_suggested` emitted) or
    "stopped" (a stop request)."""
    lf = run.cfg["lr_find"]
    t0 = time.perf_counter()
    lrs = ramp(lf["start_lr"], lf["end_lr"], lf["steps"])
    run.net.train()
    autocast_ctx = autocast(run.d.device, run.amp)
    raw: list[float] = []
    smoothed: list[float] = []
    ema, best = Ema(lf["smoothing"]), math.inf
    ended = "end of ramp"
    with closing(batches_forever(run)) as stream:
        for i, (lr, (epoch, step, (x, y, _))) in enumerate(zip(lrs, stream, strict=False)):
            for group in run.opt.param_groups:
                group["lr"] = float(lr)
            loss = run_step(run, epoch, step, x, y, autocast_ctx)
            # every rank's mean loss, and the stop flag, so that all ranks end at the same step
            total, n, stop = run.d.all_reduce_sum([float(loss.detach()), 1.0, float(run.stop.requested)])
            raw.append(total / n)
            smoothed.append(ema.add(raw[-1]))
            best = min(best, smoothed[-1])
            run.emit("lr_find_step", step=i + 1, lr=float(lr), loss=raw[-1], smoothed=smoothed[-1])
            run.state.wall_time_s = run.state.train_time_s = time.perf_counter() - t0
            if stop:
                return "stopped"
            if not math.isfinite(smoothed[-1]) or smoothed[-1] > lf["diverge"] * best:
                ended = f"diverged at step {i + 1} (smoothed loss over {lf['diverge']:g}x its minimum)"
                break
    done = len(raw)
    if done < 4 or not math.isfinite(best):
        run.log(f"lr-find: {ended} after {done} steps: too few to suggest an LR (lower lr_find.start_lr)")
        run.emit("lr_suggested", suggested_lr=None, train_lr=None, rule=lf["rule"], steps=done, ended=ended)
        return "completed"
    # what the curve says up to where it diverged (the last point, past the divergence, is not a candidate)
    keep = done - 1 if ended != "end of ramp" else done
    s = suggest(lrs[:keep], np.asarray(smoothed[:keep]), lf["rule"])
    world_scale = run.d.world if run.t["lr_scale"] == "linear" else 1
    train_lr = s.lr / world_scale
    run.emit(
        "lr_suggested",
        suggested_lr=s.lr,
        train_lr=train_lr,
        rule=s.rule,
        min_loss_lr=s.min_loss_lr,
        steepest_lr=s.steepest_lr,
        fall=s.fall,
        clear=s.clear,
        steps=done,
        ended=ended,
        world_size=run.d.world,
        png=PNG,
    )
    scale = f" (train.lr {train_lr:.3g} for {run.d.world} processes: linear LR scaling)" if world_scale > 1 else ""
    run.log(
        f"lr-find: {done} steps, {ended}; suggested LR {s.lr:.3g} by the {s.rule} rule{scale} "
        f"(minimum loss at {s.min_loss_lr:.3g}, steepest fall at {s.steepest_lr:.3g})"
    )
    if not s.clear:
        run.log(f"lr-find: {NO_CLEAR_FALL.format(fall=s.fall)}")
    if run.d.is_main:
        write_atomic(run.run_dir / PNG, plot(lrs[:done], np.asarray(raw), np.asarray(smoothed), s))
    return "completed"


def plot(lrs: np.ndarray, raw: np.ndarray, smoothed: np.ndarray, s: Suggestion) -> bytes:
    """The curve as PNG bytes: loss against LR (log axis), the smoothed loss, the suggestion marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        ax.plot(lrs, raw, color="0.75", linewidth=0.8, label="loss")
        ax.plot(lrs, smoothed, color="C0", label="smoothed")
        ax.axvline(s.lr, color="C3", linestyle="--", label=f"suggested {s.lr:.2g} ({s.rule})")
        ax.set_xscale("log")
        finite = smoothed[np.isfinite(smoothed)]
        if finite.size:  # the divergence would squash the useful part of the curve
            lo, first = float(finite.min()), float(finite[0])
            ax.set_ylim(lo - 0.1 * abs(first - lo) - 1e-3, max(first, lo) + 0.5 * abs(first - lo) + 1e-3)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title("LR range test")
        ax.legend(loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
