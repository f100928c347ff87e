"""CheXNet training under torchrun: `torchrun ... -m engine.train --config FILE --run-dir DIR`.

Read top to bottom: setup -> load_data -> build model/optimizer -> resume -> per epoch
(train_one_epoch, evaluate, plateau/early stop, checkpoints) -> test evaluation of the best model.
Rank 0 alone writes events, logs and checkpoints. A resumed run (after `chexui stop`, a crash, or a
torchrun restart) continues exactly where the last checkpoint left it: even mid-epoch.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from engine import checkpoint, config, dist, export, metrics, quant
from engine.data import Data, eval_batches, flip_mask, load_data, loader, to_input, train_batches
from engine.errors import UserError
from engine.events import ARTIFACT_SPLITS, STOP_FILE, EventWriter
from engine.labels import LABELS
from engine.models import build_model
from engine.prune import Pruner



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


def die_with_parent() -> None:
    """torchrun starts workers in their own sessions: make sure none outlives it (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WeightedBCE(nn.Module):
    """CheXNet loss: per class w+ = |N|/(|P|+|N|) on positives, w- = |P|/(|P|+|N|) on negatives."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray, weighted: bool = True):
        super().__init__()
        total = np.maximum(pos + neg, 1)
        wp, wn = (neg / total, pos / total) if weighted else (np.ones_like(pos), np.ones_like(neg))
        self.register_buffer("wp", torch.tensor(wp, dtype=torch.float32))
        self.register_buffer("wn", torch.tensor(wn, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = y * self.wp + (1 - y) * self.wn
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, weight=w)


def autocast_for(cfg: dict, device: torch.device):
    amp = cfg["train"]["amp"]
    # QAT's fake-quant observers calibrate on fp32 activations: no autocast for a QAT run
    if device.type != "cuda" or amp == "none" or cfg["quantize"]["enabled"]:
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


@torch.no_grad()
def predict_logits(model: nn.Module, images, rows: np.ndarray, d: dist.Dist, batch_size: int,
                   channels_last: bool = False, autocast=nullcontext, device: torch.device | None = None) -> np.ndarray:
    """Logits for `rows` in `rows` order: each image exactly once over all ranks (no sampler padding),
    gathered to every rank. `device` overrides the rank's device (the int8 model runs on the CPU)."""
    model.eval()
    device = device or d.device
    mine, batches = eval_batches(len(rows), batch_size, d.world, d.rank)
    out = []
    for pos in batches:
        x, _, _ = images[rows[pos]]
        with autocast():
            out.append(model(to_input(x, device, None, channels_last)).float().cpu())
    logits = torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)
    full = np.zeros((len(rows), len(LABELS)), np.float32)
    for positions, part in d.all_gather_object((mine, logits)):
        full[positions] = part
    return full


class Run:
    """Everything one training process holds; methods are the phases."""

    def __init__(self, cfg: dict, run_dir: Path, d: dist.Dist):
        self.cfg, self.run_dir, self.d = cfg, run_dir, d
        self.t, self.dc = cfg["train"], cfg["data"]
        self.events = EventWriter(run_dir / "events.jsonl") if d.is_main else None
        self.stop = StopSignal(run_dir)
        self.ckpt_dir = run_dir / "checkpoints"
        self.state = {"epoch": 0, "step": 0, "global_step": 0, "best_val_loss": math.inf,
                      "best_epoch": 0, "bad_epochs": 0, "loss_sum": 0.0, "loss_n": 0.0,
                      "train_time_s": 0.0, "wall_time_s": 0.0}

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
        self.data: Data = load_data(self.dc, self.d.is_main, self.d.barrier)
        self.n_train = len(self.data.split["train"])
        if self.d.is_main:
            import json
            (self.run_dir / "split.json").write_text(json.dumps(self.data.manifest))
        model = build_model(self.cfg["model"]["arch"], self.cfg["model"]["pretrained"])
        self.channels_last = self.t["channels_last"] and self.d.device.type == "cuda"
        model = model.to(self.d.device, memory_format=torch.channels_last if self.channels_last else
                         torch.contiguous_format)
        self.model = model
        # QAT trains a traced copy with fake-quant observers that shares the model's weights
        q = self.cfg["quantize"]
        self.qat = quant.prepare(model, q["scope"], self.dc["image_size"], q["backend"]) if q["enabled"] else None
        core = self.qat if self.qat is not None else model
        self.net = DDP(core, device_ids=[self.d.device.index] if self.d.device.type == "cuda" else None) \
            if self.d.active else core
        if self.t["compile"]:
            self.net = torch.compile(self.net)
        pos, neg = self.data.pos_neg()
        self.loss_fn = WeightedBCE(pos, neg, self.t["loss"] == "weighted_bce").to(self.d.device)
        self.lr = self.t["lr"] * (self.d.world if self.t["lr_scale"] == "linear" else 1)
        opt_cls = torch.optim.Adam if self.t["optimizer"] == "adam" else torch.optim.SGD
        self.opt = opt_cls(self.model.parameters(), lr=self.lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=self.t["plateau_factor"], patience=self.t["plateau_patience"],
            min_lr=self.t["min_lr"])
        self.steps_per_epoch = len(train_batches(self.n_train, self.t["batch_size"], self.d.world,
                                                 self.d.rank, self.t["seed"], 0))
        self.pruner = Pruner(self.model, self.cfg["prune"], self.steps_per_epoch) \
            if self.cfg["prune"]["enabled"] else None

    def resume(self) -> bool:
        last = self.ckpt_dir / "last.pt"
        if not last.is_file():
            return False
        ck = checkpoint.load(last)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        if self.qat is not None:
            self.qat.load_state_dict(ck["qat"])  # observers' ranges and scales
        self.state.update(ck["state"])
        torch.set_rng_state(ck["rng"])
        if self.pruner is not None:
            self.pruner.load_state_dict(ck["prune"])
        return True

    def save(self, best: bool = False) -> None:
        if not self.d.is_main:
            return
        ck = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
              "scheduler": self.sched.state_dict(), "state": dict(self.state),
              "rng": torch.get_rng_state(), "arch": self.cfg["model"]["arch"],
              "image_size": self.dc["image_size"]}
        if self.pruner is not None:
            ck["prune"] = self.pruner.state_dict()
        if self.qat is not None:
            ck["qat"] = self.qat.state_dict()
        checkpoint.save_atomic(ck, self.ckpt_dir / "last.pt")
        self.emit("checkpoint_saved", epoch=self.state["epoch"], path="checkpoints/last.pt", best=False)
        if best:
            best_ck = {"model": ck["model"], "arch": ck["arch"], "image_size": ck["image_size"],
                       "epoch": self.state["epoch"], "val_loss": self.state["best_val_loss"]}
            if self.qat is not None:
                best_ck["qat"] = ck["qat"]
            checkpoint.save_atomic(best_ck, self.ckpt_dir / "best.pt")
            self.emit("checkpoint_saved", epoch=self.state["epoch"], path="checkpoints/best.pt", best=True)

    def save_layer_sparsity(self, epoch: int) -> None:
        """Per-layer sparsity by epoch in the run dir (prune_layers.json)."""
        import json
        path = self.run_dir / "prune_layers.json"
        history = json.loads(path.read_text()) if path.is_file() else {}
        history[str(epoch)] = self.pruner.layer_sparsity()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(history))
        os.replace(tmp, path)

    # ------------------------------------------------------------ phases
    def train_one_epoch(self, epoch: int) -> bool:
        """Train from state['step'] to the end of the epoch; False when a stop was requested."""
        self.net.train()
        batches = train_batches(self.n_train, self.t["batch_size"], self.d.world, self.d.rank,
                                self.t["seed"], epoch)
        start = self.state["step"]
        dl = loader(self.data.images, batches[start:], self.data.split["train"], self.dc["workers"],
                    pin=self.d.device.type == "cuda")
        sync_every = 1 if self.d.device.type == "cpu" else 10
        t0 = last_report = time.perf_counter()
        seen = 0
        for step, (x, y, _) in enumerate(dl, start=start):
            flip = flip_mask(len(x), self.dc["hflip"], self.t["seed"], epoch, step, self.d.rank)
            x = to_input(x, self.d.device, flip, self.channels_last)
            y = y.to(self.d.device, non_blocking=True).float()
            with autocast_for(self.cfg, self.d.device):
                loss = self.loss_fn(self.net(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.state["global_step"] += 1
            if self.pruner is not None:
                self.pruner.step(self.state["global_step"])
            self.state["step"] = step + 1
            # .item() waits for the GPU: on CUDA only every 10th step's loss is read, so the epoch's
            # train_loss there is the mean of those samples (on CPU, of every step)
            lv = loss.item() if self.d.device.type == "cpu" or step % sync_every == 0 else None
            if lv is not None:
                self.state["loss_sum"] += lv
                self.state["loss_n"] += 1
            seen += len(x)
            now = time.perf_counter()
            if self.d.is_main and now - last_report > 0.5 and lv is not None:
                last_report = now
                self.emit("progress", epoch=epoch, step=step + 1, steps=self.steps_per_epoch, loss=lv,
                          images_per_s=seen * self.d.world / (now - t0))
            if (step + 1) % sync_every == 0 and self.d.any_flag(self.stop.requested):
                self.state["train_time_s"] += time.perf_counter() - t0
                return False
        if self.d.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.state["train_time_s"] += dt
        self.epoch_images_per_s = seen * self.d.world / max(dt, 1e-9)
        return not self.d.any_flag(self.stop.requested)

    def predict(self, rows: np.ndarray, model: nn.Module | None = None,
                device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
        if model is None:
            model = self.qat if self.qat is not None else self.model
        device = device or self.d.device
        # evaluating the QAT model must not move its observers' ranges
        with quant.observers_frozen(model) if model is self.qat else nullcontext():
            logits = predict_logits(model, self.data.images, rows, self.d, self.t["batch_size"] * 2,
                                    self.channels_last and device.type == "cuda",
                                    lambda: autocast_for(self.cfg, device), device)
        return logits, self.data.index.labels[rows].astype(np.float32)

    def evaluate(self, split: str, model: nn.Module | None = None, device: torch.device | None = None) -> dict:
        logits, y = self.predict(self.data.split[split], model, device)
        loss = float(self.loss_fn(torch.from_numpy(logits).to(self.d.device),
                                  torch.from_numpy(y).to(self.d.device)))
        probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
        auc, mean, reasons = metrics.per_class_auroc(y, probs)
        for r in reasons:
            self.log(f"[{split}] {r}")
        return {"loss": loss, "auc": auc, "auc_mean": mean, "n": len(y)}

    # ------------------------------------------------------------ main loop
    def fit(self) -> str:
        t_start = time.perf_counter()
        wall0 = self.state["wall_time_s"]
        epochs = self.t["epochs"]
        while self.state["epoch"] < epochs:
            epoch = self.state["epoch"] + 1
            if self.state["step"] == 0:
                self.emit("epoch_started", epoch=epoch)
                self.state["loss_sum"] = self.state["loss_n"] = 0.0
            t_epoch = time.perf_counter()
            if not self.train_one_epoch(epoch):
                self.state["wall_time_s"] = wall0 + time.perf_counter() - t_start
                self.save()
                return "stopped"
            s, n = self.d.all_reduce_sum([self.state["loss_sum"], self.state["loss_n"]])
            val = self.evaluate("val")
            epoch_time = time.perf_counter() - t_epoch
            old_lr = self.opt.param_groups[0]["lr"]
            self.sched.step(val["loss"])
            lr = self.opt.param_groups[0]["lr"]
            # while the pruning schedule runs, a less pruned model is not a candidate for best (it would
            # be exported instead of the pruned one) and early stopping waits for the final sparsity
            settled = self.pruner is None or self.pruner.finished(self.state["global_step"])
            improved = settled and val["loss"] < self.state["best_val_loss"]
            if improved:
                self.state.update(best_val_loss=val["loss"], best_epoch=epoch, bad_epochs=0)
            elif settled:
                self.state["bad_epochs"] += 1
            mem = self.d.all_gather_object(round(memory_mb(self.d.device), 1))
            sparsity = self.pruner.sparsity() if self.pruner is not None else None
            if self.pruner is not None and self.d.is_main:
                self.save_layer_sparsity(epoch)
            self.state.update(epoch=epoch, step=0)
            self.emit("epoch_ended", epoch=epoch, train_loss=s / max(n, 1), val_loss=val["loss"],
                      val_auc=val["auc"], val_auc_mean=val["auc_mean"], lr=lr, epoch_time_s=epoch_time,
                      images_per_s=self.epoch_images_per_s, sparsity=sparsity, memory_mb=mem)
            self.log(f"epoch {epoch}/{epochs} train_loss {s / max(n, 1):.4f} val_loss {val['loss']:.4f} "
                     f"val_auc {val['auc_mean'] or float('nan'):.4f} lr {lr:.2e} {epoch_time:.1f}s")
            if lr < old_lr:
                self.emit("lr_reduced", epoch=epoch, lr=lr)
            self.state["wall_time_s"] = wall0 + time.perf_counter() - t_start
            self.save(best=improved)
            patience = self.t["early_stop_patience"]
            if patience and self.state["bad_epochs"] >= patience:
                self.emit("early_stopped", epoch=epoch)
                self.log(f"early stop: no val-loss improvement for {patience} epochs")
                break
        return "completed"

    def test(self) -> dict:
        best = checkpoint.load(self.ckpt_dir / "best.pt") if (self.ckpt_dir / "best.pt").is_file() else None
        if best is not None:
            self.model.load_state_dict(best["model"])
            if self.qat is not None:
                self.qat.load_state_dict(best["qat"])
        res = self.evaluate("test")
        self.emit("evaluated", split="test", n=res["n"], auc=res["auc"], auc_mean=res["auc_mean"])
        return res

    def export(self) -> None:
        """Write export/ from the best model (rank 0), then evaluate every compressed artifact as a
        user would load it, on the test split: `test_fp32` (QAT runs: the float weights without
        fake quantization), `test_sparse`, `test_int8` (on the CPU)."""
        arts = None
        if self.d.is_main:
            arts = export.export_models(self.run_dir, self.model, self.cfg["model"]["arch"],
                                        self.dc["image_size"], self.pruner is not None, self.qat)
            params = list(self.model.parameters())
            self.emit("exported", artifacts=arts, parameters=sum(p.numel() for p in params),
                      nonzero_parameters=sum(int(p.count_nonzero()) for p in params))
            for a in arts:
                self.log(f"exported {a['kind']}: {a['path']} {a['bytes']:,} bytes (gzip {a['gzip_bytes']:,})")
        arts = self.d.all_gather_object(arts)[0]  # rank 0's list, on every rank
        for a in arts:
            if a["kind"] == export.FP32 and self.qat is None:
                continue  # the fp32 artifact is the model the `test` evaluation just measured
            model = export.load_model(self.run_dir, a)
            device = torch.device("cpu") if a["kind"] == export.INT8 else self.d.device
            res = self.evaluate("test", model.to(device), device)
            self.emit("evaluated", split=ARTIFACT_SPLITS[a["kind"]][0], n=res["n"], auc=res["auc"],
                      auc_mean=res["auc_mean"])


def dataset_summary(run: Run) -> dict:
    idx, split = run.data.index, run.data.split
    from engine.nih import label_counts
    return {"root": str(idx.root), "n_train": len(split["train"]), "n_val": len(split["val"]),
            "n_test": len(split["test"]), "n_patients": int(len(np.unique(idx.patients))),
            "split_sha256": run.data.manifest["sha256"], "label_counts": label_counts(idx.labels[split["train"]])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="engine.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="resolved run config (TOML)")
    ap.add_argument("--run-dir", required=True, help="run directory (events, checkpoints, logs)")
    args = ap.parse_args(argv)
    die_with_parent()
    run_dir = Path(args.run_dir)
    try:
        cfg = config.load_run_config(args.config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = dist.setup(cfg["distributed"]["backend"])
    run = Run(cfg, run_dir, d)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    try:
        run.setup()
        resumed = run.resume()
        if resumed:
            run.emit("restarted", attempt=attempt, resumed_epoch=run.state["epoch"],
                     resumed_step=run.state["step"], world_size=d.world)
            run.log(f"resumed from epoch {run.state['epoch']} step {run.state['step']} (attempt {attempt})")
        else:
            run.emit("run_started", run_id=run_dir.name, config=cfg, world_size=d.world, nnodes=d.nnodes,
                     device=str(d.device) if d.device.type == "cpu" else torch.cuda.get_device_name(d.device),
                     dataset=dataset_summary(run), steps_per_epoch=run.steps_per_epoch, pid=os.getpid(),
                     parameters=sum(p.numel() for p in run.model.parameters()))
        status = run.fit()
        test_mean = None
        if status == "completed":
            test_mean = run.test()["auc_mean"]
            if cfg["export"]["enabled"]:
                run.export()
        run.emit("run_finished", status=status, epochs=run.state["epoch"],
                 total_time_s=run.state["wall_time_s"],
                 best_epoch=run.state["best_epoch"], test_auc_mean=test_mean,
                 train_time_s=run.state["train_time_s"])
        d.barrier()  # every rank is done before the group is torn down
        return 0
    except UserError as e:  # bad data met during the run (e.g. a corrupt image): final, no restart helps
        run.emit("error", message=str(e))
        run.emit("run_finished", status="failed", epochs=run.state["epoch"], total_time_s=run.state["wall_time_s"],
                 best_epoch=run.state["best_epoch"], test_auc_mean=None)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        run.emit("error", message=f"{type(e).__name__}: {e}")
        raise
    finally:
        if run.events:
            run.events.close()
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
