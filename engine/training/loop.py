"""The epoch loop of one training process: the steps of each epoch, its validation, the plateau and
early-stop rules, and the checkpoints after it. `Run.train()` calls `fit()` between setup and test;
a stopped epoch resumes at `state.step` (the loop reads and advances the run's `TrainState`)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import psutil
import torch
from torch import nn

from engine.data.batches import flip_mask, loader, to_input, train_batches
from engine.training.context import RunContext
from engine.training.running_loss import RunningLoss
from engine.training.state import Diverged

# Training and validation losses both this many times the loss of predicting 0.5 for every label: diverged
DIVERGED_FACTOR = 100.0


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


class Utilisation:
    """This rank's mean GPU utilisation (%) over an epoch, sampled every `every_s` from NVML through
    `torch.cuda.utilization` (needs nvidia-ml-py: the `gpu` extra). None on the CPU, or where NVML
    cannot be read (the run goes on without the figure). `read` replaces the NVML reading in tests."""

    def __init__(self, device: torch.device, every_s: float = 0.5, read=None) -> None:
        if read is None and device.type == "cuda":
            read = lambda: torch.cuda.utilization(device)  # noqa: E731
        self.read, self.every_s = read, every_s
        self.samples: list[float] = []
        self.last = -math.inf

    def reset(self) -> None:
        """A new epoch: its own mean."""
        self.samples = []

    def sample(self, now: float) -> None:
        if self.read is None or now - self.last < self.every_s:
            return
        self.last = now
        try:
            self.samples.append(float(self.read()))
        except Exception:  # no nvidia-ml-py, or no access to the driver's counters
            self.read = None

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far (Dynamo tracing and Inductor,
    forward and backward graphs; autotuning included). torch keeps this in a private counter, read
    here only: 0.0 where a release lacks it, so the run goes on without the figure."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except (ImportError, AttributeError):
        return 0.0


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of a training step: `dtype` on `device` (run.amp, decided in setup), or none."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def train_step(
    net: nn.Module,
    loss_fn: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast,
    x: torch.Tensor,
    y: torch.Tensor,
    distill=None,
) -> torch.Tensor:
    """One optimizer step. The scaler is a pass-through unless it is enabled (fp16), where it scales the
    loss so that small fp16 gradients do not underflow to zero, and skips steps with inf/NaN gradients.
    `distill` (engine/training/distill.py) mixes in the teacher's term."""
    with autocast:
        logits = net(x)
        loss = loss_fn(logits, y)
        if distill is not None:
            loss = distill(loss, logits, x)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


def run_step(run: RunContext, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor, autocast_ctx) -> torch.Tensor:
    """One training step of a run on a loaded batch: its seeded flips, the device and memory layout, the
    optimizer step (the epoch loop's, and the LR range test's)."""
    if run.compile_mode is not None:  # a new step: CUDA graph outputs may be reused (no-op without graphs)
        torch.compiler.cudagraph_mark_step_begin()
    flip = flip_mask(len(x), run.dc["hflip"], run.t["seed"], epoch, step, run.d.rank)
    return train_step(
        run.net,
        run.loss_fn,
        run.opt,
        run.scaler,
        autocast_ctx,
        to_input(x, run.d.device, flip, run.channels_last),
        y.to(run.d.device, non_blocking=True).float(),
        run.distiller,
    )


def check_diverged(epoch: int, train_loss: float, val: dict) -> None:
    """Not finite, or both losses far worse than guessing. The validation loss alone can spike by
    orders of magnitude early in a sound run (BatchNorm running statistics at a high LR; seen at LR
    0.01, from which such runs recover), so the training loss must agree."""
    if not (math.isfinite(train_loss) and math.isfinite(val["loss"])):
        raise Diverged(f"the loss is not finite at epoch {epoch} (train {train_loss}, val {val['loss']})")
    if train_loss > DIVERGED_FACTOR * val["train_chance_loss"] and val["loss"] > DIVERGED_FACTOR * val["chance_loss"]:
        raise Diverged(
            f"the training and validation losses at epoch {epoch} ({train_loss:.4g}, "
            f"{val['loss']:.4g}) are more than {DIVERGED_FACTOR:.0f}x the loss of predicting "
            f"0.5 for every label ({val['train_chance_loss']:.4g}, {val['chance_loss']:.4g})"
        )


class Loop:
    """The epochs of a run's process, from where its state stands to the last (or a stop, or early stop)."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.epoch_images_per_s = 0.0  # the last epoch's training throughput (every rank's images)
        self.util = Utilisation(run.d.device)

    def fit(self) -> str:
        run, st = self.run, self.run.state
        t_start = time.perf_counter()
        wall0 = st.wall_time_s
        epochs = run.t["epochs"]
        while st.epoch < epochs:
            epoch = st.epoch + 1
            if st.step == 0:
                run.emit("epoch_started", epoch=epoch)
                st.loss_sum = st.loss_n = 0.0
            for method in run.methods:
                method.epoch_start(epoch)
            t_epoch, compile0 = time.perf_counter(), compile_seconds()
            self.util.reset()
            if not self.train_one_epoch(epoch):
                # the epoch's loss so far is every rank's: rank 0 keeps the sum in last.pt (the others
                # resume from 0), so the resumed epoch's mean is the uninterrupted one's
                s, n = run.d.all_reduce_sum([st.loss_sum, st.loss_n])
                st.loss_sum, st.loss_n = (s, n) if run.d.is_main else (0.0, 0.0)
                st.wall_time_s = wall0 + time.perf_counter() - t_start
                run.save()
                return "stopped"
            s, n = run.d.all_reduce_sum([st.loss_sum, st.loss_n])
            train_loss = s / n if n else math.nan
            val = run.evaluator.evaluate("val")
            check_diverged(epoch, train_loss, val)  # before anything of this epoch is kept
            epoch_time = time.perf_counter() - t_epoch
            # compilation in this epoch (train and validation): epoch 1's, and any recompile later
            compiled = {"compile_s": compile_seconds() - compile0} if run.compile_mode is not None else {}
            old_lr = run.opt.param_groups[0]["lr"]
            run.sched.step(val["loss"])
            lr = run.opt.param_groups[0]["lr"]
            # a model a method has not finished making (mid pruning schedule) is not a candidate for best
            # and early stopping waits for it
            settled = all(method.settled(st.global_step) for method in run.methods)
            improved = settled and val["loss"] < st.best_val_loss
            if improved:
                st.best_val_loss, st.best_epoch, st.bad_epochs = val["loss"], epoch, 0
            elif settled:
                st.bad_epochs += 1
            usage = run.d.all_gather_object((round(memory_mb(run.d.device), 1), self.util.mean()))
            fields = {"sparsity": None, **run.method_fields("epoch_fields")}
            if any(util is not None for _, util in usage):
                fields["gpu_util"] = [util for _, util in usage]
            for method in run.methods:
                method.epoch_end(epoch)
            st.epoch, st.step = epoch, 0
            run.emit(
                "epoch_ended",
                epoch=epoch,
                train_loss=train_loss,
                val_loss=val["loss"],
                val_auc=val["auc"],
                val_auc_mean=val["auc_mean"],
                lr=lr,
                epoch_time_s=epoch_time,
                images_per_s=self.epoch_images_per_s,
                memory_mb=[mem for mem, _ in usage],
                **fields,
                **compiled,
            )
            note = f" (compile {compiled['compile_s']:.1f}s)" if compiled.get("compile_s") else ""
            run.log(
                f"epoch {epoch}/{epochs} train_loss {train_loss:.4f} val_loss {val['loss']:.4f} "
                f"val_auc {val['auc_mean'] or float('nan'):.4f} lr {lr:.2e} {epoch_time:.1f}s{note}"
            )
            if lr < old_lr:
                run.emit("lr_reduced", epoch=epoch, lr=lr)
            st.wall_time_s = wall0 + time.perf_counter() - t_start
            run.save(best=improved)
            patience = run.t["early_stop_patience"]
            if patience and st.bad_epochs >= patience:
                run.emit("early_stopped", epoch=epoch)
                run.log(f"early stop: no val-loss improvement for {patience} epochs")
                break
        return "completed"

    def train_one_epoch(self, epoch: int) -> bool:
        """Train from state.step to the end of the epoch; False when a stop was requested."""
        run, st = self.run, self.run.state
        run.net.train()
        batches = train_batches(run.n_train, run.t["batch_size"], run.d.world, run.d.rank, run.t["seed"], epoch)
        with loader(
            run.data.images,
            batches[st.step :],
            run.data.split["train"],
            run.dc["workers"],
            run.d.device,
            pin=run.d.device.type == "cuda",
        ) as dl:
            return self.train_steps(epoch, dl)

    def train_steps(self, epoch: int, dl) -> bool:
        """The steps of one epoch over `dl` (its batches from state.step on); False when a stop was requested."""
        run, st = self.run, self.run.state
        # the step never reads a device tensor (see running_loss): the stop and divergence flags are
        # checked every `every` steps (every step on the CPU, where reading costs nothing)
        every = 1 if run.d.device.type == "cpu" else 10
        losses = RunningLoss(run.d.device, every)
        # (decided once, in setup: the autocast context is entered per step, never rebuilt from the config)
        autocast_ctx = autocast(run.d.device, run.amp)
        t0 = last_report = time.perf_counter()
        seen = 0
        for step, (x, y, _) in enumerate(dl, start=st.step):
            loss = run_step(run, epoch, step, x, y, autocast_ctx)
            losses.add(loss)
            st.global_step += 1
            for method in run.methods:
                method.after_step(st.global_step)
            st.step = step + 1
            seen += len(x)
            now = time.perf_counter()
            self.util.sample(now)
            known = losses.latest()
            if run.d.is_main and now - last_report > 0.5 and known is not None and math.isfinite(known[0]):
                last_report = now
                run.emit(
                    "progress",
                    epoch=epoch,
                    step=step + 1,
                    steps=run.steps_per_epoch,
                    loss=known[0],
                    images_per_s=seen * run.d.world / (now - t0),
                )
            if (step + 1) % every == 0:
                stop, bad = run.d.any_flags([run.stop.requested, not losses.finite()])
                if bad:
                    raise Diverged(f"the training loss is not finite at epoch {epoch} step {step + 1}")
                if stop:
                    self.add_losses(losses)
                    st.train_time_s += time.perf_counter() - t0
                    return False
        self.add_losses(losses)
        if run.d.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        st.train_time_s += dt
        self.epoch_images_per_s = seen * run.d.world / max(dt, 1e-9)
        return not run.d.any_flags([run.stop.requested])[0]

    def add_losses(self, losses: RunningLoss) -> None:
        """This call's step losses into the epoch's (a stopped and resumed epoch has several calls). A
        non-finite loss after the last check makes the epoch's mean non-finite: check_diverged stops
        the run there, on every rank alike (the sums are all-reduced first)."""
        run = self.run
        total, n = losses.total()
        run.state.loss_sum += total
        run.state.loss_n += n
