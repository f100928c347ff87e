"""One training process of a run: its parts and the phase order (engine/train.py is the torchrun entry point).

`Run.train()` holds the phase order: setup (data, model, compression methods, optimizer) -> resume or
start -> the epochs (`Loop.fit`, engine/training/loop.py: steps, validation, plateau/early stop,
checkpoints) -> the test evaluation of what the run ships -> export (engine/training/shipping.py), every
evaluation through the run's `Evaluator` (engine/training/evaluator.py). Compression methods
(engine/compression/) act only through their hooks. Rank 0 alone writes events, logs and checkpoints. A
resumed run (after `chexui stop`, a crash, or a torchrun restart) continues exactly where the last
checkpoint left it: even mid-epoch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from engine import compression
from engine.compression import Method, MethodContext
from engine.data.batches import Data, load_data, train_batches
from engine.errors import UserError, one_line
from engine.events import EventWriter
from engine.fsutil import remove_stale_temps, write_atomic
from engine.labels import n_defined
from engine.models.chexnet import build_model, fit_to_state, losses
from engine.rundir import BEST, CHECKPOINTS_DIR, EVENTS_FILE, EXPORT_DIR, LAST, SPLIT_FILE
from engine.runtime import dist
from engine.trackers import Trackers
from engine.training import checkpoint, lr_find, shipping
from engine.training.checkpoint import RunCheckpoints
from engine.training.distill import Distiller, load_teacher
from engine.training.evaluator import Evaluator
from engine.training.loop import Loop, autocast
from engine.training.parent import parent_state, parent_summary
from engine.training.state import Diverged, RNGState, StopSignal, TrainState


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
    return autocast(device, amp_dtype(cfg, device))


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


def make_optimizer(params, t: dict, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam or SGD, fused (one kernel group for every parameter instead of several per tensor) on the
    devices torch fuses for, CUDA and the CPU, so the CPU suite runs the GPU's optimizer."""
    opt_cls = torch.optim.Adam if t["optimizer"] == "adam" else torch.optim.SGD
    return opt_cls(params, lr=lr, fused=device.type in ("cuda", "cpu"))


def compile_mode(value: bool | str) -> str | None:
    """`train.compile` -> torch.compile's mode ("default" for true), or None: not compiled."""
    return None if value is False else "default" if value is True else value


class Run:
    """Everything one training process holds; methods are the phases."""

    def __init__(self, cfg: dict, run_dir: Path, d: dist.Dist):
        self.cfg, self.run_dir, self.d = cfg, run_dir, d
        self.t, self.dc = cfg["train"], cfg["data"]
        self.events = EventWriter(run_dir / EVENTS_FILE) if d.is_main else None
        self.trackers: Trackers | None = None  # rank 0's, opened in setup()
        self.stop = StopSignal(run_dir)
        self.ckpts = RunCheckpoints(run_dir / CHECKPOINTS_DIR)
        self.state = TrainState()

    # ------------------------------------------------------------ output (rank 0 only)
    def emit(self, type_: str, **fields) -> None:
        if self.events:
            event = self.events.emit(type_, **fields)
            if self.trackers is not None:  # (TensorBoard, MLflow: the same event, its same values)
                self.trackers.handle(event)

    def log(self, msg: str) -> None:
        if self.d.is_main:
            print(msg, flush=True)

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        torch.manual_seed(self.t["seed"])
        if self.d.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.d.is_main:  # temp files of writes killed midway: only rank 0 writes here
            self.trackers = Trackers(self.cfg, self.run_dir)
            self.ckpts.clean()
            remove_stale_temps(self.run_dir, self.run_dir / EXPORT_DIR)
        self.data: Data = load_data(self.dc, self.d.is_main, self.d.barrier)
        self.n_train = len(self.data.split["train"])
        if self.d.is_main:
            write_atomic(self.run_dir / SPLIT_FILE, json.dumps(self.data.manifest))
        m = self.cfg["model"]
        model = build_model(m["arch"], m["pretrained"], m["weights"], log=self.log)
        self.parent = self.cfg["compress"]["parent"]
        if self.parent:  # the parent's model: its shapes (a channel-pruned parent's are smaller) and weights
            if self.ckpts.last.is_file():  # (a resume: the shapes of its own last.pt, whose weights it loads)
                model = fit_to_state(model, checkpoint.load(self.ckpts.last)["model"])
            else:
                state = parent_state(self.parent)
                model = fit_to_state(model, state)
                model.load_state_dict(state)
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
        ctx = MethodContext(self.cfg, self.run_dir, self.steps_per_epoch, self.d.is_main, self.log, self.d)
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
        self.distiller = None
        if self.cfg["distill"]["enabled"]:
            teacher, teacher_id = load_teacher(self.cfg, self.data.manifest["sha256"])
            teacher = teacher.to(  # type: ignore[call-overload]
                self.d.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
            )
            dc = self.cfg["distill"]
            self.distiller = Distiller(teacher, dc["alpha"], dc["temperature"])
            self.log(f"distilling from {teacher_id} (alpha {dc['alpha']}, temperature {dc['temperature']})")
        self.evaluator = Evaluator(self)  # every evaluation of this process (validation, test, artifacts)
        self.loop = Loop(self)  # the epochs

    def ship(self, model: nn.Module) -> None:
        """From the test phase on, `model` (a method's `shipped` model) is the run's model: what is tested,
        exported and quantized. Training is over: nothing updates it."""
        self.model = self.core = self.eval_net = model

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
        else:  # a stopped epoch's loss so far is every rank's sum, kept by rank 0 (Loop.fit)
            self.state.loss_sum = self.state.loss_n = 0.0
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
        val = self.evaluator.evaluate("val")
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

    # ------------------------------------------------------------ the phase order
    def train(self) -> int:
        """The run from start (or its last checkpoint) to its end: the process's exit code (0; 2 for bad
        data or a full disk met on the way; 1 when training diverged). A stop ends it early, status
        "stopped"; any other error is recorded as an `error` event and raised (torchrun may restart)."""
        # torchrun's restarts of this launch, plus the scheduler's requeues of a SLURM job (chexui/slurm.py)
        env = os.environ
        attempt = int(env.get("TORCHELASTIC_RESTART_COUNT", "0")) + int(env.get("SLURM_RESTART_COUNT", "0"))
        try:
            self.setup()
            if self.cfg["lr_find"]["enabled"]:  # the LR range test instead of training: nothing is kept
                self.start()
                self.finished(lr_find.find(self))
                self.d.barrier()
                return 0
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
            status = self.loop.fit()
            res = None
            if status == "completed":
                res, int8 = shipping.test(self)
                if self.cfg["export"]["enabled"]:
                    shipping.export(self, int8)
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
        finally:
            if self.trackers is not None:
                self.trackers.close()

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
            dataset=self.data.summary(),
            steps_per_epoch=self.steps_per_epoch,
            pid=os.getpid(),
            parameters=sum(p.numel() for p in self.model.parameters()),
            channels_last=weight.is_contiguous(memory_format=torch.channels_last) and weight.dim() == 4,
            amp=str(self.amp).removeprefix("torch.") if self.amp is not None else None,
            **{"quantization": None, **self.method_fields("run_started_fields")},
            **({"parent": parent} if parent else {}),
        )
        for method in self.methods:
            method.begin(self)
        if parent:
            self.start_from_parent(parent)

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
