"""Knowledge distillation (`[distill]`): the training loss mixed with a loss against a teacher's outputs.

    loss = (1 - alpha) * weighted BCE(student, labels) + alpha * T^2 * BCE(sigmoid(student / T), sigmoid(teacher / T))

The 14 outputs are independent sigmoids (multi-label), so the soft targets are the teacher's 14
probabilities at temperature T (a softmax over labels would be wrong here), compared by binary cross
entropy; T^2 keeps the gradient scale independent of T (Hinton et al. 2015). The teacher is a finished
run's model (`teacher = "parent"`: a compress run's parent; or a run dir), read weights-only from its
best checkpoint, in eval mode, without gradients, in the same autocast precision and memory layout as
the student, on every rank (it is not wrapped in DDP: nothing of it is trained). Its forward pass is in
the step, so its cost is in the epoch times. The validation loss stays the plain one: the best
checkpoint, the LR plateau and early stopping judge the labels, not the teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from engine import rundir
from engine.errors import UserError


def teacher_dir(cfg: dict) -> Path:
    teacher = cfg["distill"]["teacher"]
    if teacher == "parent":
        parent = cfg["compress"]["parent"]
        if not parent:
            raise UserError(
                'distill.teacher = "parent": this run has no parent (only `chexui compress` runs do); '
                "give a finished run's directory"
            )
        return Path(parent)
    return Path(teacher)


def load_teacher(cfg: dict, split_sha256: str) -> tuple[nn.Module, str]:
    """The teacher's float model (what its run ships) and its run id. A teacher trained on another split
    could have seen this run's validation or test images: refused."""
    from engine import compression
    from engine.models.chexnet import build_float
    from engine.training import checkpoint
    from engine.training.parent import parent_summary

    where = teacher_dir(cfg)
    if not (where / rundir.BEST).is_file():
        raise UserError(f"distill.teacher = {str(where)!r}: no {rundir.BEST} there (a finished chexui run's dir)")
    info = parent_summary(where)
    if info["split_sha256"] != split_sha256:
        raise UserError(
            f"distill.teacher = {str(where)!r}: its data split (sha256 {info['split_sha256']}) is not this "
            f"run's ({split_sha256}): it may have trained on this run's validation or test images"
        )
    tcfg = rundir.load_config(where)
    if tcfg["quantize"]["enabled"] or tcfg["compress"]["ptq"]:
        raise UserError(f"distill.teacher = {str(where)!r}: an int8 run; the teacher is a float run")
    if tcfg["data"]["image_size"] != cfg["data"]["image_size"]:
        raise UserError(
            f"distill.teacher = {str(where)!r}: trained at {tcfg['data']['image_size']} px, this run at "
            f"{cfg['data']['image_size']} px"
        )
    ck = checkpoint.load(where / rundir.BEST)
    model = compression.rebuilt_float(tcfg, ck) or build_float(tcfg["model"]["arch"], ck["model"])
    return model, info["run_id"]


class Distiller:
    def __init__(self, teacher: nn.Module, alpha: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.t = alpha, temperature

    def __call__(self, loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The step's loss given the plain `loss` of the student's `logits` on the batch `x` (called
        inside the step's autocast: the teacher runs in the student's precision)."""
        with torch.no_grad():
            soft = torch.sigmoid(self.teacher(x).float() / self.t)
        kd = F.binary_cross_entropy_with_logits(logits.float() / self.t, soft) * self.t**2
        return (1 - self.alpha) * loss + self.alpha * kd
