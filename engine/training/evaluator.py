"""How one training process measures a model on a split of its data: logits over the ranks in fp32 and
the run's memory layout, losses and per-label AUROC (`evaluate`); the `evaluated` event with the
patient-bootstrap intervals and the calls at the operating points (`report`); and those operating points,
chosen on validation (`choose_operating_points`). The epoch loop validates through it, the test phase
and the export measure what the run ships through it, and a compression method's `before_test` may too."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from engine.compression import Method
from engine.data.batches import Data
from engine.evaluation import bootstrap, operating, predictions
from engine.evaluation.evaluate import auroc_from_logits, eval_batch_size, predict_logits, probabilities
from engine.labels import n_defined
from engine.runtime import dist
from engine.training.checkpoint import RunCheckpoints


class Evaluated(Protocol):
    """What an `Evaluator` reads of its run (engine/training/trainer.py: Run)."""

    cfg: dict
    run_dir: Path
    d: dist.Dist
    data: Data
    methods: list[Method]
    ckpts: RunCheckpoints
    core: nn.Module  # the model that trains and is validated (QAT: its fake-quantized graph)
    eval_net: nn.Module  # `core`, compiled when train.compile is on
    channels_last: bool

    @property
    def loss_fn(self) -> nn.Module: ...  # the training loss (weighted BCE)

    @property
    def val_loss_fn(self) -> nn.Module: ...  # the validation loss

    def emit(self, type_: str, **fields) -> None: ...

    def log(self, msg: str) -> None: ...


class Evaluator:
    """The evaluations of one run's process (rank 0 alone writes what they keep)."""

    def __init__(self, run: Evaluated) -> None:
        self.run = run
        self.operating: dict | None = None  # rank 0: thresholds and temperatures chosen on val (test phase)

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
        run = self.run
        model = run.core if model is None else model
        device, d = device or run.d.device, d or run.d
        compiled = model is run.core and run.eval_net is not run.core
        with ExitStack() as around:  # (the methods' conditions of an evaluation: QAT's observers stay put)
            for method in run.methods:
                around.enter_context(method.evaluating(model))
            logits = predict_logits(
                run.eval_net if compiled else model,
                run.data.images,
                rows,
                d,
                eval_batch_size(run.cfg),
                run.channels_last,
                device=device,
                pad=compiled,
            )
        return logits, run.data.index.labels[rows].astype(np.float32)

    def evaluate(
        self, split: str, model: nn.Module | None = None, device: torch.device | None = None, d: dist.Dist | None = None
    ) -> dict:
        run = self.run
        if model is None:
            # each rank holds its own BatchNorm statistics / observer ranges after an epoch: validate
            # (and so save) rank 0's
            run.d.broadcast_state(run.core, buffers_only=True)
        logits, y = self.predict(run.data.split[split], model, device, d)
        lt, yt = torch.from_numpy(logits).to(run.d.device), torch.from_numpy(y).to(run.d.device)
        zeros = torch.zeros_like(lt)  # predicting 0.5 for every label: the chance losses
        auc, mean, reasons = auroc_from_logits(y, logits)
        for r in reasons:
            run.log(f"[{split}] {r}")
        return {
            "loss": float(run.val_loss_fn(lt, yt)),
            "chance_loss": float(run.val_loss_fn(zeros, yt)),
            "train_chance_loss": float(run.loss_fn(zeros, yt)),
            "auc": auc,
            "auc_mean": mean,
            "n": len(y),
            "logits": logits,
            "labels": y,
        }

    def report(self, split: str, res: dict, model: str) -> None:
        """Rank 0: keep the split's predictions (predictions/<split>.npz) and emit `evaluated` with the
        patient-bootstrap 95 % intervals of every AUROC, and, at the operating points chosen on
        validation, each label's sensitivity, specificity, PPV, NPV and F1 (with intervals from the same
        resamples) and its calibration error (raw and after the validation temperatures)."""
        run = self.run
        if not run.d.is_main:
            return
        rows, idx = run.data.split["test"], run.data.index
        probs = probabilities(res["logits"])
        path = predictions.save(run.run_dir, split, idx.names[rows], idx.patients[rows], res["labels"], probs)
        spec, extra = bootstrap.Spec.from_config(run.cfg["eval"]), {}
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
            run.log(f"[{split}] bootstrap: {spec.resamples} patient resamples in {time.perf_counter() - t0:.1f}s")
        run.emit(
            "evaluated",
            split=split,
            n=res["n"],
            auc=res["auc"],
            auc_mean=res["auc_mean"],
            model=model,
            n_labels_defined=n_defined(res["auc"]),
            predictions=str(path.relative_to(run.run_dir)),
            **extra,
        )

    def choose_operating_points(
        self, model: nn.Module | None = None, device: torch.device | None = None, d: dist.Dist | None = None
    ) -> None:
        """Per-label thresholds (rule `eval.operating_point`) and temperatures of the model the run ships,
        fitted on the validation split only; rank 0 keeps them (predictions/val.npz, the
        `operating_points` event, the best checkpoint). Every rank of `d` takes part in the evaluation."""
        run = self.run
        res = self.evaluate("val", model, device, d)
        if not run.d.is_main:
            return
        rows, idx = run.data.split["val"], run.data.index
        probs, rule = probabilities(res["logits"]), run.cfg["eval"]["operating_point"]
        self.operating = {
            "rule": rule,
            "split": "val",
            "n": res["n"],
            "thresholds": operating.choose(res["labels"], probs, rule),
            "temperatures": operating.temperatures(res["labels"], res["logits"]),
        }
        predictions.save(run.run_dir, "val", idx.names[rows], idx.patients[rows], res["labels"], probs)
        run.emit("operating_points", **self.operating, ece=operating.eces(res["labels"], probs))
        # stored with the model it was chosen for (a compress run without epochs: its copy)
        run.ckpts.amend_best(operating_points=self.operating)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in self.operating["thresholds"].items() if v is not None)
        run.log(f"operating points ({rule}, on {res['n']} validation images): {shown}")
