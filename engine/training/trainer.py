"""One training process of a run: its state and its phases (engine/train.py is the torchrun entry point).

`Run.train()` holds the phase order: setup (data, model, compression methods, optimizer) -> resume or
start -> per epoch (train_one_epoch, evaluate, plateau/early stop, checkpoints) -> test evaluation of
what the run ships -> export. Compression methods (engine/compression/) act only through their hooks.
Rank 0 alone writes events, logs and checkpoints. A resumed run (after `chexui stop`, a crash, or a
torchrun restart) continues exactly where the last checkpoint left it: even mid-epoch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from engine import compression
from engine.compression import Method, MethodContext, quant
from engine.data.batches import Data, flip_mask, load_data, loader, to_input, train_batches
from engine.errors import UserError, one_line
from engine.evaluation import bootstrap, operating, predictions
from engine.evaluation.evaluate import auroc_from_logits, eval_batch_size, predict_logits, probabilities
from engine.events import ARTIFACT_SPLITS, EventWriter
from engine.fsutil import remove_stale_temps, write_atomic
from engine.inference import export
from engine.labels import n_defined
from engine.models.chexnet import build_model, losses
from engine.rundir import BEST, CHECKPOINTS_DIR, EVENTS_FILE, EXPORT_DIR, LAST, SPLIT_FILE, STOP_FILE
from engine.runtime import dist
from engine.training import checkpoint
from engine.training.checkpoint import RunCheckpoints
from engine.training.parent import parent_state, parent_summary
from engine.training.running_loss import RunningLoss

# Training and validation losses both this many times the loss of predicting 0.5 for every label: diverged
DIVERGED_FACTOR = 100.0


class Diverged(Exception):
    """The loss is not finite, or far worse than guessing: no later epoch can be trusted."""


class StopSignal:
    """SIGTERM/SIGINT handling. A requested stop (STOP_FILE present) ends at the next step boundary
    with a checkpoint; otherwise torchrun is tearing the group down (a peer died): leave at once and
    keep the last consistent checkpoint, which a restart resumes from."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.requested = run_dir, False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if (self.run_dir / STOP_FILE).exists():
            self.requested = True
        else:
            os._exit(128 + signum)


def amp_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None. "auto": bf16 on CUDA, none on the CPU; "bf16"/"fp16" are honoured on
    any device (so the CPU suite runs the autocast path). QAT's observers calibrate on fp32 activations."""
    amp = cfg["train"]["amp"]
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if not all(method.autocast_ok for method in compression.active(cfg)):  # QAT
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast_for(cfg: dict, device: torch.device):
    dtype = amp_dtype(cfg, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def plateau_scheduler(opt: torch.optim.Optimizer, t: dict) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """torch's ReduceLROnPlateau set to cut the LR when `train.plateau_rule` says:
    "keras" (the study's Keras 2.3 callback): an epoch improves when val loss < best - min_delta
    (absolute), and the LR is cut when the bad epochs *reach* the patience; torch cuts when they
    *exceed* it, so Keras' patience p is torch's p - 1 (patience 0 and 1 both cut on every bad epoch
    in Keras), and Keras cuts whenever the LR is above min_lr (torch skips cuts smaller than its eps,
    1e-8). "pytorch": torch's own rule, min_delta as its relative threshold."""
    keras = t["plateau_rule"] == "keras"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode="min",
        factor=t["plateau_factor"],
        min_lr=t["min_lr"],
        threshold=t["plateau_min_delta"],
        threshold_mode="abs" if keras else "rel",
        eps=0.0 if keras else 1e-8,
        patience=max(t["plateau_patience"] - 1, 0) if keras else t["plateau_patience"],
    )


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def make_optimizer(params, t: dict, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam or SGD, fused (one kernel group for every parameter instead of several per tensor) on the
    devices torch fuses for, CUDA and the CPU, so the CPU suite runs the GPU's optimizer."""
    opt_cls = torch.optim.Adam if t["optimizer"] == "adam" else torch.optim.SGD
    return opt_cls(params, lr=lr, fused=device.type in ("cuda", "cpu"))


def compile_mode(value: bool | str) -> str | None:
    """`train.compile` -> torch.compile's mode ("default" for true), or None: not compiled."""
    return None if value is False else "default" if value is True else value


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far (Dynamo tracing and Inductor,
    forward and backward graphs; autotuning included). torch keeps this in a private counter, read
    here only: 0.0 where a release lacks it, so the run goes on without the figure."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except (ImportError, AttributeError):
        return 0.0


def train_step(
    net: nn.Module,
    loss_fn: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast,
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """One optimizer step. The scaler is a pass-through unless it is enabled (fp16), where it scales the
    loss so that small fp16 gradients do not underflow to zero, and skips steps with inf/NaN gradients."""
    with autocast:
        loss = loss_fn(net(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint (as "state") and restored on resume."""

    epoch: int = 0  # last completed epoch
    step: int = 0  # steps done in the current epoch (a stop can land mid-epoch)
    global_step: int = 0  # optimizer steps since the start (the pruning schedule's clock)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    loss_sum: float = 0.0  # the current epoch's train losses (every step's)
    loss_n: float = 0.0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class RNGState:
    """The CPU generator (model init, dropout) as a checkpoint part."""

    def state_dict(self) -> torch.Tensor:
        return torch.get_rng_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        torch.set_rng_state(state)


class Run:
    """Everything one training process holds; methods are the phases."""

    def __init__(self, cfg: dict, run_dir: Path, d: dist.Dist):
        self.cfg, self.run_dir, self.d = cfg, run_dir, d
        self.t, self.dc = cfg["train"], cfg["data"]
        self.events = EventWriter(run_dir / EVENTS_FILE) if d.is_main else None
        self.stop = StopSignal(run_dir)
        self.ckpts = RunCheckpoints(run_dir / CHECKPOINTS_DIR)
        self.state = TrainState()

    # ------------------------------------------------------------ output (rank 0 only)
    def emit(self, type_: str, **fields) -> None:
        if self.events:
            self.events.emit(type_, **fields)

    def log(self, msg: str) -> None:
        if self.d.is_main:
            print(msg, flush=True)

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        torch.manual_seed(self.t["seed"])
        if self.d.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.d.is_main:  # temp files of writes killed midway: only rank 0 writes here
            self.ckpts.clean()
            remove_stale_temps(self.run_dir, self.run_dir / EXPORT_DIR)
        self.data: Data = load_data(self.dc, self.d.is_main, self.d.barrier)
        self.n_train = len(self.data.split["train"])
        if self.d.is_main:
            write_atomic(self.run_dir / SPLIT_FILE, json.dumps(self.data.manifest))
        m = self.cfg["model"]
        model = build_model(m["arch"], m["pretrained"], m["weights"], log=self.log)
        self.parent = self.cfg["compress"]["parent"]
        if self.parent and not self.ckpts.last.is_file():  # (a resume reads its own last.pt instead)
            model.load_state_dict(parent_state(self.parent))
        # channels_last on every device when asked (CUDA's fast path; as fast or faster on the CPUs
        # measured), so the CPU suite runs the same weight layout as the GPU servers
        self.channels_last = self.t["channels_last"]
        self.model = model.to(  # type: ignore[call-overload]  # (torch's stub lacks device + memory_format)
            self.d.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        self.steps_per_epoch = len(
            train_batches(self.n_train, self.t["batch_size"], self.d.world, self.d.rank, self.t["seed"], 0)
        )
        # the compression methods the config enables, each converting what trains in turn (QAT: a traced
        # copy with fake-quant observers that shares the model's weights)
        ctx = MethodContext(self.cfg, self.run_dir, self.steps_per_epoch, self.d.is_main, self.log)
        self.methods: list[Method] = [cls(self.model, ctx) for cls in compression.active(self.cfg)]
        self.core = self.model  # what trains and is validated
        for method in self.methods:
            self.core = method.convert(self.core)
        self.net = (
            DDP(self.core, device_ids=[self.d.device.index] if self.d.device.type == "cuda" else None)
            if self.d.active
            else self.core
        )
        # compiled: the training step (through DDP, whose optimizer splits the graph at its buckets)
        # and the evaluation pass of the same model, whose batches are padded to one shape
        self.compile_mode = compile_mode(self.t["compile"])
        self.eval_net = self.core
        if self.compile_mode is not None:
            self.net = torch.compile(self.net, mode=self.compile_mode)
            self.eval_net = torch.compile(self.core, mode=self.compile_mode)
        pos, neg = self.data.pos_neg()
        self.loss_fn, self.val_loss_fn = (f.to(self.d.device) for f in losses(self.t, pos, neg))
        self.lr = self.t["lr"] * (self.d.world if self.t["lr_scale"] == "linear" else 1)
        self.opt = make_optimizer(self.model.parameters(), self.t, self.lr, self.d.device)
        self.sched = plateau_scheduler(self.opt, self.t)
        self.amp = amp_dtype(self.cfg, self.d.device)
        # fp16 gradients underflow without loss scaling (a Hernia negative weighs about 0.002)
        self.scaler = torch.amp.GradScaler(self.d.device.type, enabled=self.amp == torch.float16)
        self.int8: nn.Module | None = None  # the int8 model a QAT/PTQ run ships, made in test()
        self.operating: dict | None = None  # rank 0: thresholds and temperatures chosen on val, in test()

    def parts(self) -> dict:
        """The named stateful parts of a checkpoint (state_dict / load_state_dict each): adding a part
        to training state is one line here."""
        parts = {
            "model": self.model,
            "optimizer": self.opt,
            "scheduler": self.sched,
            "scaler": self.scaler,
            "state": self.state,
            "rng": RNGState(),
        }
        for method in self.methods:
            parts.update(method.parts())
        return parts

    def method(self, name: str) -> Method | None:
        """The run's compression method of that name (engine/compression/), if it uses it."""
        return next((m for m in self.methods if m.name == name), None)

    def method_fields(self, hook: str) -> dict:
        """The methods' fields of an event (`hook`: run_started_fields, epoch_fields, exported_fields)."""
        out: dict = {}
        for method in self.methods:
            out.update(getattr(method, hook)())
        return out

    def resume(self) -> bool:
        if not self.ckpts.last.is_file():
            return False
        ck = checkpoint.load(self.ckpts.last)
        for name, part in self.parts().items():
            if name in ck:  # (a checkpoint from before a part existed resumes with its fresh state)
                part.load_state_dict(ck[name])
        if self.d.is_main:
            self.ckpts.recover(self.state.best_epoch)
        return True

    def save(self, best: bool = False) -> None:
        if not self.d.is_main:
            return
        meta = {"arch": self.cfg["model"]["arch"], "image_size": self.dc["image_size"]}
        last = {**meta, **{name: part.state_dict() for name, part in self.parts().items()}}
        best_ck = None
        if best:
            best_ck = {**meta, "model": last["model"], "epoch": self.state.epoch, "val_loss": self.state.best_val_loss}
            for method in self.methods:
                best_ck.update({name: last[name] for name in method.best_parts()})
        self.ckpts.save(last, best_ck)
        self.emit("checkpoint_saved", epoch=self.state.epoch, path=LAST, best=False)
        if best:
            self.emit("checkpoint_saved", epoch=self.state.epoch, path=BEST, best=True)

    # ------------------------------------------------------------ phases
    def train_one_epoch(self, epoch: int) -> bool:
        """Train from state.step to the end of the epoch; False when a stop was requested."""
        st = self.state
        self.net.train()
        batches = train_batches(self.n_train, self.t["batch_size"], self.d.world, self.d.rank, self.t["seed"], epoch)
        with loader(
            self.data.images,
            batches[st.step :],
            self.data.split["train"],
            self.dc["workers"],
            self.d.device,
            pin=self.d.device.type == "cuda",
        ) as dl:
            return self.train_steps(epoch, dl)

    def train_steps(self, epoch: int, dl) -> bool:
        """The steps of one epoch over `dl` (its batches from state.step on); False when a stop was requested."""
        st = self.state
        # the step never reads a device tensor (see running_loss): the stop and divergence flags are
        # checked every `every` steps (every step on the CPU, where reading costs nothing)
        every = 1 if self.d.device.type == "cpu" else 10
        losses = RunningLoss(self.d.device, every)
        # (decided once, in setup: the autocast context is entered per step, never rebuilt from the config)
        autocast = torch.autocast(self.d.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        t0 = last_report = time.perf_counter()
        seen = 0
        for step, (x, y, _) in enumerate(dl, start=st.step):
            if self.compile_mode is not None:  # a new step: CUDA graph outputs may be reused (no-op without graphs)
                torch.compiler.cudagraph_mark_step_begin()
            flip = flip_mask(len(x), self.dc["hflip"], self.t["seed"], epoch, step, self.d.rank)
            x = to_input(x, self.d.device, flip, self.channels_last)
            loss = train_step(
                self.net,
                self.loss_fn,
                self.opt,
                self.scaler,
                autocast,
                x,
                y.to(self.d.device, non_blocking=True).float(),
            )
            losses.add(loss)
            st.global_step += 1
            for method in self.methods:
                method.after_step(st.global_step)
            st.step = step + 1
            seen += len(x)
            now = time.perf_counter()
            known = losses.latest()
            if self.d.is_main and now - last_report > 0.5 and known is not None and math.isfinite(known[0]):
                last_report = now
                self.emit(
                    "progress",
                    epoch=epoch,
                    step=step + 1,
                    steps=self.steps_per_epoch,
                    loss=known[0],
                    images_per_s=seen * self.d.world / (now - t0),
                )
            if (step + 1) % every == 0:
                stop, bad = self.d.any_flags([self.stop.requested, not losses.finite()])
                if bad:
                    raise Diverged(f"the training loss is not finite at epoch {epoch} step {step + 1}")
                if stop:
                    self.add_losses(losses)
                    st.train_time_s += time.perf_counter() - t0
                    return False
        self.add_losses(losses)
        if self.d.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        st.train_time_s += dt
        self.epoch_images_per_s = seen * self.d.world / max(dt, 1e-9)
        return not self.d.any_flags([self.stop.requested])[0]

    def add_losses(self, losses: RunningLoss) -> None:
        """This call's step losses into the epoch's (a stopped and resumed epoch has several calls). A
        non-finite loss after the last check makes the epoch's mean non-finite: check_diverged stops
        the run there, on every rank alike (the sums are all-reduced first)."""
        total, n = losses.total()
        self.state.loss_sum += total
        self.state.loss_n += n

    def predict(
        self,
        rows: np.ndarray,
        model: nn.Module | None = None,
        device: torch.device | None = None,
        d: dist.Dist | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of `rows` over the ranks of `d` (default: all of them), in fp32 on every
        device: autocast is a training-speed setting, and a validation or test figure in bf16 is not the
        fp32 model's (thresholds, AUROCs and CIs moved by 1e-4 on a CPU stand-in; an int8 program's
        logits by 0.03). The memory layout is the run's (channels_last), as every evaluation of it."""
        model = self.core if model is None else model
        device, d = device or self.d.device, d or self.d
        compiled = model is self.core and self.eval_net is not self.core
        with ExitStack() as around:  # (the methods' conditions of an evaluation: QAT's observers stay put)
            for method in self.methods:
                around.enter_context(method.evaluating(model))
            logits = predict_logits(
                self.eval_net if compiled else model,
                self.data.images,
                rows,
                d,
                eval_batch_size(self.cfg),
                self.channels_last,
                device=device,
                pad=compiled,
            )
        return logits, self.data.index.labels[rows].astype(np.float32)

    def evaluate(
        self, split: str, model: nn.Module | None = None, device: torch.device | None = None, d: dist.Dist | None = None
    ) -> dict:
        if model is None:
            # each rank holds its own BatchNorm statistics / observer ranges after an epoch: validate
            # (and so save) rank 0's
            self.d.broadcast_state(self.core, buffers_only=True)
        logits, y = self.predict(self.data.split[split], model, device, d)
        lt, yt = torch.from_numpy(logits).to(self.d.device), torch.from_numpy(y).to(self.d.device)
        zeros = torch.zeros_like(lt)  # predicting 0.5 for every label: the chance losses
        auc, mean, reasons = auroc_from_logits(y, logits)
        for r in reasons:
            self.log(f"[{split}] {r}")
        return {
            "loss": float(self.val_loss_fn(lt, yt)),
            "chance_loss": float(self.val_loss_fn(zeros, yt)),
            "train_chance_loss": float(self.loss_fn(zeros, yt)),
            "auc": auc,
            "auc_mean": mean,
            "n": len(y),
            "logits": logits,
            "labels": y,
        }

    def check_diverged(self, epoch: int, train_loss: float, val: dict) -> None:
        """Not finite, or both losses far worse than guessing. The validation loss alone can spike by
        orders of magnitude early in a sound run (BatchNorm running statistics at a high LR; seen at LR
        0.01, from which such runs recover), so the training loss must agree."""
        if not (math.isfinite(train_loss) and math.isfinite(val["loss"])):
            raise Diverged(f"the loss is not finite at epoch {epoch} (train {train_loss}, val {val['loss']})")
        if (
            train_loss > DIVERGED_FACTOR * val["train_chance_loss"]
            and val["loss"] > DIVERGED_FACTOR * val["chance_loss"]
        ):
            raise Diverged(
                f"the training and validation losses at epoch {epoch} ({train_loss:.4g}, "
                f"{val['loss']:.4g}) are more than {DIVERGED_FACTOR:.0f}x the loss of predicting "
                f"0.5 for every label ({val['train_chance_loss']:.4g}, {val['chance_loss']:.4g})"
            )

    # ------------------------------------------------------------ main loop
    def fit(self) -> str:
        st = self.state
        t_start = time.perf_counter()
        wall0 = st.wall_time_s
        epochs = self.t["epochs"]
        while st.epoch < epochs:
            epoch = st.epoch + 1
            if st.step == 0:
                self.emit("epoch_started", epoch=epoch)
                st.loss_sum = st.loss_n = 0.0
            for method in self.methods:
                method.epoch_start(epoch)
            t_epoch, compile0 = time.perf_counter(), compile_seconds()
            if not self.train_one_epoch(epoch):
                st.wall_time_s = wall0 + time.perf_counter() - t_start
                self.save()
                return "stopped"
            s, n = self.d.all_reduce_sum([st.loss_sum, st.loss_n])
            train_loss = s / n if n else math.nan
            val = self.evaluate("val")
            self.check_diverged(epoch, train_loss, val)  # before anything of this epoch is kept
            epoch_time = time.perf_counter() - t_epoch
            # compilation in this epoch (train and validation): epoch 1's, and any recompile later
            compiled = {"compile_s": compile_seconds() - compile0} if self.compile_mode is not None else {}
            old_lr = self.opt.param_groups[0]["lr"]
            self.sched.step(val["loss"])
            lr = self.opt.param_groups[0]["lr"]
            # a model a method has not finished making (mid pruning schedule) is not a candidate for best
            # and early stopping waits for it
            settled = all(method.settled(st.global_step) for method in self.methods)
            improved = settled and val["loss"] < st.best_val_loss
            if improved:
                st.best_val_loss, st.best_epoch, st.bad_epochs = val["loss"], epoch, 0
            elif settled:
                st.bad_epochs += 1
            mem = self.d.all_gather_object(round(memory_mb(self.d.device), 1))
            fields = {"sparsity": None, **self.method_fields("epoch_fields")}
            for method in self.methods:
                method.epoch_end(epoch)
            st.epoch, st.step = epoch, 0
            self.emit(
                "epoch_ended",
                epoch=epoch,
                train_loss=train_loss,
                val_loss=val["loss"],
                val_auc=val["auc"],
                val_auc_mean=val["auc_mean"],
                lr=lr,
                epoch_time_s=epoch_time,
                images_per_s=self.epoch_images_per_s,
                memory_mb=mem,
                **fields,
                **compiled,
            )
            note = f" (compile {compiled['compile_s']:.1f}s)" if compiled.get("compile_s") else ""
            self.log(
                f"epoch {epoch}/{epochs} train_loss {train_loss:.4f} val_loss {val['loss']:.4f} "
                f"val_auc {val['auc_mean'] or float('nan'):.4f} lr {lr:.2e} {epoch_time:.1f}s{note}"
            )
            if lr < old_lr:
                self.emit("lr_reduced", epoch=epoch, lr=lr)
            st.wall_time_s = wall0 + time.perf_counter() - t_start
            self.save(best=improved)
            patience = self.t["early_stop_patience"]
            if patience and st.bad_epochs >= patience:
                self.emit("early_stopped", epoch=epoch)
                self.log(f"early stop: no val-loss improvement for {patience} epochs")
                break
        return "completed"

    def load_best(self) -> None:
        """The best epoch's model on every rank: rank 0 reads best.pt (checked to be the epoch last.pt
        names) and broadcasts it, so no rank reads a file another is writing, and on several nodes the
        ranks that have no copy of the run dir get it too."""
        if self.d.is_main:
            best = self.ckpts.load_best(self.state.best_epoch)
            if best is not None:
                self.model.load_state_dict(best["model"])
                parts = self.parts()
                for method in self.methods:
                    for name in method.best_parts():
                        parts[name].load_state_dict(best[name])
        self.d.broadcast_state(self.core)

    def report(self, split: str, res: dict, model: str) -> None:
        """Rank 0: keep the split's predictions (predictions/<split>.npz) and emit `evaluated` with the
        patient-bootstrap 95 % intervals of every AUROC, and, at the operating points chosen on
        validation, each label's sensitivity, specificity, PPV, NPV and F1 (with intervals from the same
        resamples) and its calibration error (raw and after the validation temperatures)."""
        if not self.d.is_main:
            return
        rows, idx = self.data.split["test"], self.data.index
        probs = probabilities(res["logits"])
        path = predictions.save(self.run_dir, split, idx.names[rows], idx.patients[rows], res["labels"], probs)
        spec, extra = bootstrap.Spec.from_config(self.cfg["eval"]), {}
        t0 = time.perf_counter()
        if spec is not None:
            extra = bootstrap.intervals(res["labels"], probs, idx.patients[rows], res["auc"], spec)
        if self.operating is not None:
            op = self.operating
            extra.update(
                operating_point=op["rule"],
                at_threshold=operating.at_thresholds(res["labels"], probs, op["thresholds"], idx.patients[rows], spec),
                ece=operating.eces(res["labels"], probs),
                ece_calibrated=operating.eces(res["labels"], operating.calibrated(probs, op["temperatures"])),
            )
        if spec is not None:
            self.log(f"[{split}] bootstrap: {spec.resamples} patient resamples in {time.perf_counter() - t0:.1f}s")
        self.emit(
            "evaluated",
            split=split,
            n=res["n"],
            auc=res["auc"],
            auc_mean=res["auc_mean"],
            model=model,
            n_labels_defined=n_defined(res["auc"]),
            predictions=str(path.relative_to(self.run_dir)),
            **extra,
        )

    def choose_operating_points(
        self, model: nn.Module | None = None, device: torch.device | None = None, d: dist.Dist | None = None
    ) -> None:
        """Per-label thresholds (rule `eval.operating_point`) and temperatures of the model the run ships,
        fitted on the validation split only; rank 0 keeps them (predictions/val.npz, the
        `operating_points` event, the best checkpoint). Every rank of `d` takes part in the evaluation."""
        res = self.evaluate("val", model, device, d)
        if not self.d.is_main:
            return
        rows, idx = self.data.split["val"], self.data.index
        probs, rule = probabilities(res["logits"]), self.cfg["eval"]["operating_point"]
        self.operating = {
            "rule": rule,
            "split": "val",
            "n": res["n"],
            "thresholds": operating.choose(res["labels"], probs, rule),
            "temperatures": operating.temperatures(res["labels"], res["logits"]),
        }
        predictions.save(self.run_dir, "val", idx.names[rows], idx.patients[rows], res["labels"], probs)
        self.emit("operating_points", **self.operating, ece=operating.eces(res["labels"], probs))
        # stored with the model it was chosen for (a compress run without epochs: its copy)
        self.ckpts.amend_best(operating_points=self.operating)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in self.operating["thresholds"].items() if v is not None)
        self.log(f"operating points ({rule}, on {res['n']} validation images): {shown}")

    def start_from_parent(self, info: dict) -> None:
        """A compress run's epoch 0 (fresh runs only): the parent's best model, pruned when pruning, on
        the parent's very split (`info`: `parent_summary`); validated and saved as the best so
        far, so a fine-tune epoch replaces it only by beating it, and a run without fine-tune has its
        model checkpointed."""
        t0 = time.perf_counter()
        if info["split_sha256"] != self.data.manifest["sha256"]:
            raise UserError(
                f"{self.parent}: its data split (sha256 {info['split_sha256']}) is not this run's "
                f"({self.data.manifest['sha256']}): the data or [data] keys changed since it ran"
            )
        val = self.evaluate("val")
        self.state.best_val_loss = val["loss"]
        made = self.method_fields("epoch_fields")
        sparsity = f", sparsity {made['sparsity']:.3f}" if made.get("sparsity") is not None else ""
        self.log(
            f"epoch 0: best model of {info['run_id']}{sparsity}: val_loss {val['loss']:.4f} "
            f"val_auc {val['auc_mean'] or float('nan'):.4f}"
        )
        for method in self.methods:
            method.epoch_end(0)
        self.state.wall_time_s += time.perf_counter() - t0  # compression time counts as the run's time
        self.save(best=True)

    def keep_int8(self, int8: nn.Module) -> nn.Module:
        """Rank 0: the int8 graph as data in best.pt, beside the model it was made from (what chexui
        runs: export.int8_model, never the .pt2 program), and the int8 model read back from that very
        record, so that every evaluation here is of what a user gets."""
        record = quant.graph_record(int8)
        self.ckpts.amend_best(int8_graph=record)
        return quant.from_graph_record(record)

    def test(self) -> dict:
        """What the run ships, on the test split: its operating points chosen on validation, then its test
        evaluation (`test`, the run's headline). A QAT or post-training int8 run ships its int8 model
        (made here on rank 0, on the CPU, kept as a graph record in best.pt and evaluated as read back
        from it); a QAT run's fake-quantized model, what it trained, is measured too (`test_qat`)."""
        self.load_best()
        for method in self.methods:
            method.before_test(self)
        int8_maker = next((method for method in self.methods if method.makes_int8), None)
        if int8_maker is None:
            self.choose_operating_points(self.core)
            fp32 = self.evaluate("test", self.core)
            self.report("test", fp32, f"fp32 model of {BEST}")
            return fp32
        res = None
        if self.d.is_main:
            self.int8 = self.keep_int8(int8_maker.int8(self))
            cpu = torch.device("cpu")
            self.choose_operating_points(self.int8, cpu, dist.Dist(device=cpu))
            res = self.evaluate("test", self.int8, cpu, dist.Dist(device=cpu))
            where = f"; the graph of export/{export.FILES[export.INT8]}" if self.cfg["export"]["enabled"] else ""
            self.report("test", res, f"int8 model (kept in {BEST}{where})")
        return self.d.all_gather_object(res)[0]

    def export(self) -> None:
        """Write export/ from the best model, then evaluate every artifact as a user would load it, on the
        test split: `test_fp32` (the float weights: for a QAT run, without fake quantization), `test_sparse`,
        `test_onnx_fp32`, `test_onnx_int8` (ONNX on the CPU). The int8 artifact's graph is the one `test`
        measured (test() made it). Rank 0 alone: the files are on its disk."""
        if self.d.is_main:
            arts = export.export_models(
                self.run_dir,
                self.model,
                self.cfg["model"]["arch"],
                self.dc["image_size"],
                any(method.sparse_weights for method in self.methods),
                self.int8,
                self.cfg["export"]["onnx"],
                self.log,
                self.operating,
            )
            params = list(self.model.parameters())
            self.emit(
                "exported",
                artifacts=arts,
                parameters=sum(p.numel() for p in params),
                nonzero_parameters=sum(int(p.count_nonzero()) for p in params),
                **{"sparsity": None, **self.method_fields("exported_fields")},
            )
            for a in arts:
                self.log(f"exported {a['kind']}: {a['path']} {a['bytes']:,} bytes (gzip {a['gzip_bytes']:,})")
            for a in arts:
                if a["kind"] == export.INT8:
                    continue  # the graph of the `test` evaluation (the record in best.pt, as chexui runs it)
                model = export.load_model(self.run_dir, a)
                device = torch.device("cpu") if a["kind"] in export.CPU_ONLY else self.d.device
                if self.channels_last and a["kind"] not in export.CPU_ONLY:  # in the layout the run evaluates in
                    model = model.to(memory_format=torch.channels_last)
                res = self.evaluate("test", model.to(device), device, dist.Dist(device=device))
                self.report(ARTIFACT_SPLITS[a["kind"]][0], res, f"{a['kind']} artifact {a['path']}")
        self.d.barrier()

    # ------------------------------------------------------------ the phase order
    def train(self) -> int:
        """The run from start (or its last checkpoint) to its end: the process's exit code (0; 2 for bad
        data or a full disk met on the way; 1 when training diverged). A stop ends it early, status
        "stopped"; any other error is recorded as an `error` event and raised (torchrun may restart)."""
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        try:
            self.setup()
            if self.resume():
                self.emit(
                    "restarted",
                    attempt=attempt,
                    resumed_epoch=self.state.epoch,
                    resumed_step=self.state.step,
                    world_size=self.d.world,
                )
                self.log(f"resumed from epoch {self.state.epoch} step {self.state.step} (attempt {attempt})")
            else:
                self.start()
            status = self.fit()
            res = None
            if status == "completed":
                res = self.test()
                if self.cfg["export"]["enabled"]:
                    self.export()
            self.finished(status, res)
            self.d.barrier()  # every rank is done before the group is torn down
            return 0
        except UserError as e:  # bad data met during the run, a full disk: final, no restart helps
            return self.finish_failed(one_line(e), e.exit_code)
        except Diverged as e:
            return self.finish_failed(
                f"training diverged: {e}; lower train.lr (now {self.t['lr']}) or check "
                f"the data. The last good checkpoint (epoch {self.state.epoch}) is kept.",
                1,
            )
        except Exception as e:
            self.emit("error", message=f"{type(e).__name__}: {one_line(e)}")
            raise

    def start(self) -> None:
        """A fresh run's `run_started` (and a compress run's epoch 0 from its parent)."""
        parent = parent_summary(self.parent) if self.parent else None
        weight = next(m.weight for m in self.model.modules() if isinstance(m, nn.Conv2d))
        d = self.d
        self.emit(
            "run_started",
            run_id=self.run_dir.name,
            config=self.cfg,
            world_size=d.world,
            nnodes=d.nnodes,
            device=str(d.device) if d.device.type == "cpu" else torch.cuda.get_device_name(d.device),
            dataset=self.dataset_summary(),
            steps_per_epoch=self.steps_per_epoch,
            pid=os.getpid(),
            parameters=sum(p.numel() for p in self.model.parameters()),
            channels_last=weight.is_contiguous(memory_format=torch.channels_last) and weight.dim() == 4,
            amp=str(self.amp).removeprefix("torch.") if self.amp is not None else None,
            **{"quantization": None, **self.method_fields("run_started_fields")},
            **({"parent": parent} if parent else {}),
        )
        if parent:
            self.start_from_parent(parent)

    def dataset_summary(self) -> dict:
        from engine.data.nih import label_counts

        idx, split = self.data.index, self.data.split
        return {
            "root": str(idx.root),
            "n_train": len(split["train"]),
            "n_val": len(split["val"]),
            "n_test": len(split["test"]),
            "n_patients": int(len(np.unique(idx.patients))),
            "split_sha256": self.data.manifest["sha256"],
            "label_counts": label_counts(idx.labels[split["train"]]),
        }

    def finish_failed(self, message: str, code: int) -> int:
        """A run that cannot go on: say why, keep the last good checkpoint, status failed."""
        self.emit("error", message=message, code=code)
        self.finished("failed")
        print(f"error: {message}", file=sys.stderr)
        return code

    def finished(self, status: str, test: dict | None = None) -> None:
        """The `run_finished` event (`test`: the shipped model's test evaluation, when it ran)."""
        st = self.state
        self.emit(
            "run_finished",
            status=status,
            epochs=st.epoch,
            total_time_s=st.wall_time_s,
            best_epoch=st.best_epoch,
            test_auc_mean=test["auc_mean"] if test else None,
            # (a failed run's event has the required fields only)
            **(
                {}
                if status == "failed"
                else {
                    "test_n_labels_defined": n_defined(test["auc"]) if test else None,
                    "train_time_s": st.train_time_s,
                }
            ),
        )
