"""Run config: the schema, defaults, validation, `--set` overrides and TOML I/O.

Pure Python (no torch): chexui validates presets with it before anything heavy is imported.
A config is a plain nested dict {section: {key: value}} plus the top-level keys name/description.
Defaults follow the study (CheXNet-style training on NIH ChestX-ray14).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from engine.errors import ConfigError
from engine.models import archs


@dataclass(frozen=True)
class Field:
    default: Any
    kind: type | tuple[type, ...]
    choices: tuple | Callable[[], tuple] | None = None  # a function: read when checked (a registry's names)
    min: float | None = None  # inclusive
    max: float | None = None  # inclusive
    min_exclusive: bool = False
    path_ok: bool = False  # a value outside `choices` is accepted as a file path
    sparsity_ok: bool = False  # a number from 0 to 0.99 is accepted besides `choices`
    hint: str = ""  # said after "expected ..." when a value is refused (e.g. why an old value went)

    def options(self) -> tuple:
        """The allowed values (empty: any of `kind`)."""
        return (self.choices() if callable(self.choices) else self.choices) or ()

    def describe(self) -> str:
        if self.options():
            if self.kind == (bool, str):
                return "true, false or one of " + ", ".join(repr(c) for c in self.options())
            extra = " or a file path" if self.path_ok else " or a sparsity from 0 to 0.99" if self.sparsity_ok else ""
            return "one of " + ", ".join(repr(c) for c in self.options()) + extra
        name = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}.get(
            self.kind if isinstance(self.kind, type) else float, "a value"
        )
        lo = "" if self.min is None else f" {'>' if self.min_exclusive else '>='} {self.min}"
        hi = "" if self.max is None else f" <= {self.max}"
        return name + (lo + (" and" if lo and hi else "") + hi if (lo or hi) else "")


NUM = (int, float)
# torch.compile modes `train.compile` takes besides true/false
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

SCHEMA: dict[str, dict[str, Field]] = {
    "data": {
        "root": Field("", str),
        "image_size": Field(224, int, min=16, max=2048),
        "split": Field("patient", str, choices=("patient", "official")),
        "val_fraction": Field(0.1, NUM, min=0.0, max=0.5, min_exclusive=True),
        "test_fraction": Field(0.2, NUM, min=0.0, max=0.5, min_exclusive=True),
        "seed": Field(0, int, min=0),
        "hflip": Field(0.5, NUM, min=0.0, max=1.0),
        "cache": Field(True, bool),
        "workers": Field(4, int, min=0, max=64),
    },
    "model": {
        "arch": Field("densenet121", str, choices=archs.names),  # engine/models/archs.py: the architecture table
        "pretrained": Field("imagenet", str, choices=("imagenet", "none"), path_ok=True),
        # torchvision's name for the ImageNet weights (pretrained = "imagenet"): V1 is the classic recipe
        # the study's Keras weights correspond to; V2 (ResNet50 only) torchvision's newer one
        "weights": Field("IMAGENET1K_V1", str, choices=archs.weight_names),
    },
    "train": {
        "epochs": Field(100, int, min=0, max=10000),  # 0: compress runs only (no fine-tune)
        "batch_size": Field(16, int, min=1, max=4096),
        "lr": Field(0.001, NUM, min=0.0, max=10.0, min_exclusive=True),
        "lr_scale": Field("linear", str, choices=("linear", "none")),
        "optimizer": Field("adam", str, choices=("adam", "sgd")),
        "loss": Field("weighted_bce", str, choices=("weighted_bce", "bce")),
        # the validation loss (LR plateau, early stopping, best checkpoint): "same" as train.loss, or
        # "unweighted" BCE (Keras' class_weight weights the training loss only: the study's)
        "val_loss": Field("same", str, choices=("same", "unweighted")),
        # "keras": cut when bad epochs reach the patience, improvement = an absolute min_delta (the study's
        # Keras callback); "pytorch": torch's ReduceLROnPlateau (bad epochs exceed it, relative threshold)
        "plateau_rule": Field("keras", str, choices=("keras", "pytorch")),
        "plateau_min_delta": Field(1e-4, NUM, min=0.0, max=1.0),
        "plateau_patience": Field(5, int, min=0),
        "plateau_factor": Field(0.1, NUM, min=0.0, max=1.0, min_exclusive=True),
        "min_lr": Field(1e-5, NUM, min=0.0),
        "early_stop_patience": Field(15, int, min=0),  # 0 disables early stopping
        "amp": Field("auto", str, choices=("auto", "bf16", "fp16", "none")),
        "channels_last": Field(True, bool),
        # torch.compile the training step and the evaluation pass: false, true (Inductor's default
        # mode) or a torch.compile mode; epoch 1 then includes the compilation (`compile_s` in epoch_ended)
        "compile": Field(False, (bool, str), choices=COMPILE_MODES),
        "seed": Field(0, int, min=0),
    },
    "distributed": {
        "nproc": Field(1, int, min=1, max=1024),
        "nnodes": Field(1, int, min=1, max=1024),
        "backend": Field("auto", str, choices=("auto", "nccl", "gloo")),
        "max_restarts": Field(0, int, min=0, max=100),
    },
    "prune": {
        "enabled": Field(False, bool),
        "scope": Field("conv", str, choices=("conv", "all")),
        "initial_sparsity": Field(0.1, NUM, min=0.0, max=0.99),
        "final_sparsity": Field(0.5, NUM, min=0.0, max=0.99),
        "begin_epoch": Field(0.5, NUM, min=0.0),
        "end_epoch": Field(7.0, NUM, min=0.0),
        "power": Field(4, NUM, min=0.0, min_exclusive=True),  # the study's degree-4 polynomial
        "frequency_steps": Field(100, int, min=1),
        "adaptive": Field([], list),
        # widths `adaptive` does not list: a sparsity, "keep" (not pruned), or "final" (final_sparsity)
        "adaptive_default": Field("final", (int, float, str), choices=("keep", "final"), sparsity_ok=True),
        # which epochs may be the best checkpoint: "schedule_end" = only once the final sparsity is reached
        # (early stopping counts from there too); "start" = any epoch, as Keras' callbacks did in the study
        "best_from": Field("schedule_end", str, choices=("schedule_end", "start")),
        # "gradual": the polynomial schedule above; "one_shot": every layer pruned to its final target at
        # step 0 (from the starting weights: `chexui compress`'s post-training pruning), masks then fixed
        "schedule": Field("gradual", str, choices=("gradual", "one_shot")),
        # "unstructured": single weights (zeros in dense tensors: smaller files, not faster); "channel":
        # whole channels (engine/compression/channel_pruning.py: a physically smaller, faster model);
        # final_sparsity / adaptive then give the fraction of each group's channels removed
        "structure": Field("unstructured", str, choices=("unstructured", "channel")),
        # how channels are ranked: the group's L1 or L2 weight norms, or first-order Taylor scores
        "importance": Field("l1", str, choices=("l1", "l2", "taylor")),
        # channel pruning: > 0 = the fraction of the dense model's multiply-accumulates to keep (the
        # channel targets scaled to reach it); 0 = the targets as given
        "target_macs": Field(0.0, NUM, min=0.0, max=0.99),
    },
    "quantize": {
        "enabled": Field(False, bool),
        "scope": Field("conv", str, choices=("conv", "all")),
        "backend": Field("x86", str, choices=("x86",)),
        # torchao's PT2E flow, int8 artifact a torch.export program (.pt2). ("fx", torch.ao's FX graph
        # mode, was removed: deprecated by torch, and its TorchScript artifact a program file)
        "engine": Field(
            "pt2e",
            str,
            choices=("pt2e",),
            hint="the FX engine was removed: deprecated by torch, and its TorchScript artifact is a program file",
        ),
        # after this many epochs the observers' ranges stop updating (torchvision's QAT reference: 4);
        # 0 = never (the study's TF-MOT)
        "freeze_observers_epoch": Field(0, int, min=0),
        # BatchNorm freezing was FX-only; PT2E has none: 0 is the one value (kept so old configs load)
        "freeze_bn_epoch": Field(
            0, int, min=0, max=0, hint="BatchNorm freezing was the FX engine's, removed with it; PT2E QAT has none"
        ),
    },
    "eval": {
        # patient-bootstrap 95 % confidence intervals of every test AUROC; 0 resamples = none
        "bootstrap_resamples": Field(1000, int, min=0, max=10000),
        "bootstrap_seed": Field(0, int, min=0),
        # per-label decision thresholds, chosen on the validation split at the end of a run
        # (engine/evaluation/operating.py): "youden", "f1", "sensitivity=0.90" or "specificity=0.90"
        "operating_point": Field("youden", str),
    },
    # `chexui compress` sets this section: a run that starts from another run's best model
    "compress": {
        "parent": Field("", str),  # the parent run dir; empty: an ordinary training run
        "ptq": Field(False, bool),  # post-training static int8 quantization (PT2E) after any fine-tune
        "scope": Field("all", str, choices=("conv", "all")),  # what PTQ quantizes (as quantize.scope)
        "calibration_images": Field(512, int, min=1),  # seeded sample of the training split
    },
    # knowledge distillation (engine/training/distill.py) for any training or fine-tune
    "distill": {
        "enabled": Field(False, bool),
        "teacher": Field("parent", str, choices=("parent",), path_ok=True),  # a compress run's parent, or a run dir
        "alpha": Field(0.5, NUM, min=0.0, max=1.0),  # the weight of the teacher term
        "temperature": Field(2.0, NUM, min=0.0, min_exclusive=True, max=100.0),
    },
    # the LR range test (engine/training/lr_find.py): `chexui lr-find` sets `enabled`, and the run then
    # ramps the LR exponentially from start_lr to end_lr over `steps` optimizer steps instead of training
    "lr_find": {
        "enabled": Field(False, bool),
        "start_lr": Field(1e-6, NUM, min=0.0, min_exclusive=True, max=10.0),
        "end_lr": Field(1.0, NUM, min=0.0, min_exclusive=True, max=100.0),
        "steps": Field(200, int, min=10, max=100000),
        # the exponential moving average of the loss (bias-corrected): its weight on the past
        "smoothing": Field(0.9, NUM, min=0.0, max=0.999),
        # stop once the smoothed loss exceeds this many times its minimum so far (or is not finite)
        "diverge": Field(4.0, NUM, min=1.0, min_exclusive=True),
        # the suggestion: "steepest" = the LR where the smoothed loss falls fastest (per log LR), before
        # its minimum; "min/10" = a tenth of the LR at the smoothed loss's minimum
        "rule": Field("steepest", str, choices=("steepest", "min/10")),
    },
    # a SLURM job for the run (`chexui run --slurm`, chexui/slurm.py): one task per node, each starting
    # torchrun with distributed.nproc processes; every value is checked against a safe pattern (SLURM_SAFE)
    # before it reaches the sbatch script, which a shared preset must not be able to turn into commands
    "slurm": {
        "partition": Field("", str),
        "account": Field("", str),
        "time": Field("04:00:00", str),  # the job's time limit: MM, HH:MM:SS or D-HH:MM:SS
        "nodes": Field(1, int, min=1, max=1024),
        "gpus_per_node": Field(0, int, min=0, max=64),  # 0: no --gpus-per-node line (a CPU partition)
        "cpus_per_task": Field(8, int, min=1, max=1024),
        "mem": Field("", str),  # per node, e.g. "64G"; "": the partition's default
        "port": Field(29500, int, min=1024, max=65535),  # the c10d rendezvous on the first node
        # seconds before the time limit (or a preemption) SLURM warns the job (--signal=B:USR1@N): the run
        # checkpoints, stops, and the job requeues itself to resume from there (--requeue)
        "signal_s": Field(300, int, min=30, max=3600),
        "modules": Field([], list),  # `module load` names, e.g. ["cuda/12.4"]
        "env": Field([], list),  # "KEY=VALUE" exported before srun (the value quoted as data)
        "sbatch": Field([], list),  # further sbatch options, e.g. ["--qos=high", "--exclusive"]
    },
    # the lab's dashboards beside events.jsonl (engine/trackers/; `pip install 'chexui[trackers]'`), rank 0
    "log": {
        "tensorboard": Field(False, bool),  # TensorBoard event files under RUN_DIR/tensorboard/
        # "": off; an MLflow tracking URI (MLFLOW_URI below: a store on this machine, a server on loopback,
        # or "env" for $MLFLOW_TRACKING_URI)
        "mlflow": Field("", str),
    },
    "export": {
        "enabled": Field(True, bool),  # export/ artifacts + their test evaluation at the end of a run
        "onnx": Field(True, bool),  # also model_fp32.onnx / model_int8.onnx (needs the chexui[onnx] extra)
    },
}


def _prune_label(cfg: dict) -> str | None:
    p = cfg.get("prune") or {}
    if not p.get("enabled"):
        return None
    # adaptive pruning that leaves the widths it does not list dense (adaptive_default = "keep", the
    # study's) is another method than the built-in one: another label
    adaptive = "prune-adaptive-listed" if p.get("adaptive_default") == "keep" else "prune-adaptive"
    text = adaptive if p.get("adaptive") else f"prune{round(100 * p.get('final_sparsity', 0))}"
    if p.get("structure") == "channel":
        text = (
            f"channel-macs{round(100 * p['target_macs'])}"
            if p.get("target_macs")
            else (f"channel{round(100 * p.get('final_sparsity', 0))}" if not p.get("adaptive") else "channel-adaptive")
        )
    if (cfg.get("compress") or {}).get("parent") and (cfg.get("train") or {}).get("epochs"):
        text += f" ft{cfg['train']['epochs']}"  # a post-training masked fine-tune
    return text


def _quantize_label(cfg: dict) -> str | None:
    q = cfg.get("quantize") or {}
    return f"qat-{q.get('scope')}" if q.get("enabled") else None


def _compress_label(cfg: dict) -> str | None:
    c = cfg.get("compress") or {}
    return f"ptq-{c.get('scope')}" if c.get("ptq") else None


# A compression method's words for a run, by the config section that turns it on: how chexui's tables
# name a run's compression ("prune70", "qat-all", "ptq-conv"; chexui/format.py: compression_text), None
# when the section leaves it off. A plug-in gives its own to `add_section`.
LABELS: dict[str, Callable[[dict], str | None]] = {
    "prune": _prune_label,
    "quantize": _quantize_label,
    "compress": _compress_label,
    "distill": lambda cfg: "kd" if (cfg.get("distill") or {}).get("enabled") else None,
}


def add_section(name: str, fields: dict[str, Field], label: Callable[[dict], str | None] | None = None) -> None:
    """A plug-in's config section (a compression method's keys): validated, defaulted and `--set` like
    the built-in ones from then on, in this process; `label` gives its method's words in chexui's
    tables for a run's config (None when the method is off)."""
    if name in SCHEMA or name in TOP_LEVEL:
        raise ValueError(f"config section {name!r} exists already")
    SCHEMA[name] = dict(fields)
    if label is not None:
        LABELS[name] = label


def remove_section(name: str) -> None:
    SCHEMA.pop(name, None)
    LABELS.pop(name, None)


# `sweep` is set by `chexui sweep` on each run it starts (the sweep id); presets leave it empty
TOP_LEVEL = {
    "name": Field("custom", str),
    "description": Field("", str),
    "extends": Field("", str),
    "sweep": Field("", str),
}


def defaults() -> dict[str, Any]:
    cfg: dict[str, Any] = {k: f.default for k, f in TOP_LEVEL.items() if k != "extends"}
    for section, fields in SCHEMA.items():
        cfg[section] = {k: copy.deepcopy(f.default) for k, f in fields.items()}
    return cfg


def _unknown(key: str, allowed: list[str], what: str, source: str) -> ConfigError:
    """`what` names the unknown thing as the user wrote it, e.g. "key 'train.lrr'"."""
    near = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else f"; allowed: {', '.join(sorted(allowed))}"
    return ConfigError(f"{source}: unknown {what}{hint}")


def _check_value(qualified: str, field: Field, value: Any, source: str) -> Any:
    try:
        return _check_one(qualified, field, value, source)
    except ConfigError as e:
        if field.hint:
            raise ConfigError(f"{e} ({field.hint})") from None
        raise


def _check_one(qualified: str, field: Field, value: Any, source: str) -> Any:
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise ConfigError(f"{source}: key '{qualified}' = {value!r}: expected {field.describe()}")
    if field.options() and isinstance(value, str) and value not in field.options() and not field.path_ok:
        raise ConfigError(f"{source}: key '{qualified}' = {value!r}: expected {field.describe()}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: key '{qualified}' = {value!r}: expected a finite number ({field.describe()})")
    if field.sparsity_ok and isinstance(value, (int, float)) and not 0.0 <= value <= 0.99:
        raise ConfigError(f"{source}: key '{qualified}' = {value!r}: expected {field.describe()}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = field.min is not None and (value <= field.min if field.min_exclusive else value < field.min)
        too_high = field.max is not None and value > field.max
        if too_low or too_high:
            raise ConfigError(f"{source}: key '{qualified}' = {value!r}: expected {field.describe()}")
    return value


def _check_adaptive(items: list, source: str) -> list[dict]:
    out = []
    for i, item in enumerate(items):
        where = f"prune.adaptive[{i}]"
        if not isinstance(item, dict) or set(item) != {"out_channels", "sparsity"}:
            raise ConfigError(
                f"{source}: key '{where}': expected a table {{{{ out_channels = INT, sparsity = NUMBER }}}}"
            )
        _check_value(f"{where}.out_channels", Field(0, int, min=1), item["out_channels"], source)
        _check_value(f"{where}.sparsity", Field(0.0, NUM, min=0.0, max=0.99), item["sparsity"], source)
        out.append({"out_channels": item["out_channels"], "sparsity": float(item["sparsity"])})
    return out


def parse_operating_point(rule: str, source: str = "<config>") -> tuple[str, float | None]:
    """`eval.operating_point` -> ("youden" | "f1" | "sensitivity" | "specificity", target or None);
    ConfigError otherwise (engine/evaluation/operating.py chooses the thresholds)."""
    name, _, value = rule.partition("=")
    if name in ("youden", "f1") and not value:
        return name, None
    if name in ("sensitivity", "specificity"):
        try:
            target = float(value)
        except ValueError:
            target = -1.0
        if 0 < target < 1:
            return name, target
    raise ConfigError(
        f'{source}: key \'eval.operating_point\' = {rule!r}: expected "youden", "f1", "sensitivity=0.90" '
        'or "specificity=0.90" (a target between 0 and 1)'
    )


def validate(raw: dict[str, Any], source: str = "<config>", partial: bool = False) -> dict[str, Any]:
    """Check every key of `raw`; return it merged over the defaults (or as is when `partial`).

    Unknown keys, wrong types and out-of-range values raise ConfigError naming source and key.
    """
    for key, value in raw.items():
        if key in SCHEMA:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' must be a [{key}] table")
            for sub, v in value.items():
                if sub not in SCHEMA[key]:
                    raise _unknown(sub, list(SCHEMA[key]), f"key '{key}.{sub}'", source)
                _check_value(f"{key}.{sub}", SCHEMA[key][sub], v, source)
                if key == "prune" and sub == "adaptive":
                    value[sub] = _check_adaptive(v, source)
                if key == "eval" and sub == "operating_point":
                    parse_operating_point(v, source)
        elif key in TOP_LEVEL:
            _check_value(key, TOP_LEVEL[key], value, source)
        else:
            raise _unknown(key, list(SCHEMA) + list(TOP_LEVEL), f"section or key '{key}'", source)
    if partial:
        return raw
    cfg = merge(defaults(), raw)
    cfg.pop("extends", None)
    p = cfg["prune"]
    gradual = p["enabled"] and p["schedule"] == "gradual"
    if gradual and p["end_epoch"] <= p["begin_epoch"]:
        raise ConfigError(
            f"{source}: key 'prune.end_epoch' = {p['end_epoch']}: must be greater "
            f"than prune.begin_epoch = {p['begin_epoch']}"
        )
    if gradual and p["end_epoch"] > cfg["train"]["epochs"]:
        raise ConfigError(
            f"{source}: key 'prune.end_epoch' = {p['end_epoch']}: the schedule must end within "
            f"train.epochs = {cfg['train']['epochs']} (lower prune.end_epoch or raise train.epochs)"
        )
    q = cfg["quantize"]
    c = cfg["compress"]
    if cfg["train"]["epochs"] == 0 and not c["parent"]:
        raise ConfigError(
            f"{source}: key 'train.epochs' = 0: expected at least 1 (0 is for `chexui compress` "
            "runs, which start from a trained model)"
        )
    if c["ptq"] and (q["enabled"] or not c["parent"]):
        raise ConfigError(
            f"{source}: key 'compress.ptq' = true: post-training quantization is for `chexui compress` "
            "runs (compress.parent set) without QAT (quantize.enabled = false)"
        )
    if p["enabled"] and p["structure"] == "channel" and q["enabled"]:
        raise ConfigError(
            f"{source}: key 'prune.structure' = 'channel' with quantize.enabled = true: QAT traces the dense "
            "model before any channel goes; prune the channels first, then `chexui compress RUN --ptq`"
        )
    if p["target_macs"] and not (p["enabled"] and p["structure"] == "channel"):
        raise ConfigError(
            f"{source}: key 'prune.target_macs' = {p['target_macs']}: a MACs target is for channel pruning "
            "(prune.enabled = true, prune.structure = 'channel')"
        )
    if cfg["distill"]["enabled"] and cfg["distill"]["teacher"] == "parent" and not c["parent"]:
        raise ConfigError(
            f"{source}: key 'distill.teacher' = 'parent': only `chexui compress` runs have a parent; give "
            "a finished run's directory"
        )
    m = cfg["model"]
    spec = archs.get(m["arch"])
    if p["enabled"] and p["structure"] == "channel" and not spec.channel_groups:
        able = ", ".join(a.name for a in archs.all_archs() if a.channel_groups)
        raise ConfigError(
            f"{source}: key 'prune.structure' = 'channel': chexui knows no channel groups of {m['arch']}'s "
            f"blocks (channel pruning is for {able}); use prune.structure = 'unstructured'"
        )
    if not spec.int8 and (cfg["quantize"]["enabled"] or c["ptq"]):
        key = "quantize.enabled" if cfg["quantize"]["enabled"] else "compress.ptq"
        able = ", ".join(a.name for a in archs.all_archs() if a.int8)
        raise ConfigError(
            f"{source}: key '{key}' = true: int8 (QAT, PTQ) of {m['arch']} is refused: {spec.int8_why} "
            f"(int8 is for {able})"
        )
    have = spec.weights
    if m["pretrained"] == "imagenet" and m["weights"] not in have:
        raise ConfigError(
            f"{source}: key 'model.weights' = {m['weights']!r}: torchvision has no such weights for "
            f"{m['arch']} (expected {' or '.join(have)})"
            if have
            else f"{source}: key 'model.pretrained' = 'imagenet': {m['arch']} has no ImageNet weights in "
            'chexui\'s architecture table (expected "none" or a path to a state-dict file)'
        )
    lf = cfg["lr_find"]
    if lf["enabled"] and lf["start_lr"] >= lf["end_lr"]:
        raise ConfigError(
            f"{source}: key 'lr_find.start_lr' = {lf['start_lr']}: must be below lr_find.end_lr = {lf['end_lr']}"
        )
    if lf["enabled"] and (p["enabled"] or q["enabled"] or c["parent"] or cfg["distill"]["enabled"]):
        raise ConfigError(
            f"{source}: key 'lr_find.enabled' = true: the LR range test trains the float model alone; "
            "turn off prune, quantize, distill and compress (`chexui lr-find` does)"
        )
    _check_slurm(cfg["slurm"], source)
    if cfg["log"]["mlflow"] and not re.fullmatch(MLFLOW_URI, cfg["log"]["mlflow"]):
        raise ConfigError(
            f"{source}: key 'log.mlflow' = {cfg['log']['mlflow']!r}: expected \"\" (off), sqlite:///PATH, file:PATH, "
            'http://127.0.0.1:PORT or http://localhost:PORT (a server on this machine), or "env" '
            "($MLFLOW_TRACKING_URI: a remote server is named by your environment, not by a preset)"
        )
    d = cfg["data"]
    if d["val_fraction"] + d["test_fraction"] >= 0.9:
        raise ConfigError(f"{source}: keys 'data.val_fraction' + 'data.test_fraction' must be < 0.9")
    return cfg


# where [log] mlflow may send a run (its metrics, config and model files): a store on this machine or a
# server on loopback; a preset may be someone else's, so a remote server comes from $MLFLOW_TRACKING_URI
MLFLOW_URI = (
    r"env|sqlite:///[^\x00-\x1f]+|file:[^\x00-\x1f]+|https?://(127\.0\.0\.1|localhost)(:[0-9]{1,5})?(/[^\x00-\x1f]*)?"
)

# what each [slurm] value may look like. Each reaches an sbatch script a user submits from a preset that
# may be someone else's: no shell syntax anywhere; module names without a path (`module load` of a file
# would run it); environment variables that only tune collectives and threads (no LD_PRELOAD, PYTHONPATH,
# NCCL_*PLUGIN*: they load code); sbatch options that place and account a job (no --output, --chdir,
# --export or --wrap: they write files, move the job or run commands)
_SBATCH_OPTIONS = (
    "qos|constraint|reservation|exclusive|gres|nodelist|exclude|mail-type|mail-user|comment|mem-per-gpu|"
    "mem-per-cpu|hint|switches"
)
SLURM_SAFE: dict[str, tuple[str, str]] = {
    "partition": (r"[A-Za-z0-9_.,-]*", "letters, digits and _ . , -"),
    "account": (r"[A-Za-z0-9_.,-]*", "letters, digits and _ . , -"),
    "time": (r"[0-9]+(-[0-9]{1,2})?(:[0-9]{1,2}){0,2}", "MM, HH:MM:SS or D-HH:MM:SS"),
    "mem": (r"([0-9]+[KMGT]?)?", "a size such as 64G"),
    "modules": (r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*(/[A-Za-z0-9_+-][A-Za-z0-9_.+-]*)*", "a module name such as cuda/12.4"),
    "env": (
        r"(?!\w*PLUGIN)((TORCH_)?NCCL_[A-Z0-9_]+|GLOO_[A-Z0-9_]+|OMP_NUM_THREADS|MKL_NUM_THREADS)=[A-Za-z0-9_.,:-]*",
        "KEY=VALUE with KEY an NCCL_, TORCH_NCCL_ or GLOO_ setting (not a plugin), OMP_NUM_THREADS or MKL_NUM_THREADS",
    ),
    "sbatch": (
        rf"--({_SBATCH_OPTIONS})(=[A-Za-z0-9_.,:@%+-]+)?",
        f"--option or --option=value, the option one of {_SBATCH_OPTIONS.replace('|', ', ')}",
    ),
}


def _check_slurm(sl: dict[str, Any], source: str) -> None:
    for key, (pattern, what) in SLURM_SAFE.items():
        for value in sl[key] if isinstance(sl[key], list) else [sl[key]]:
            if not isinstance(value, str) or not re.fullmatch(pattern, value):
                raise ConfigError(f"{source}: key 'slurm.{key}' = {value!r}: expected {what}")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into a copy of `base` (tables merge, other values replace)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(item: str) -> dict[str, Any]:
    """`section.key=value` -> {section: {key: value}}; the value is read as TOML, else a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.01")
    key, text = (s.strip() for s in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # bare words such as resnet50 or a path
    except RecursionError:
        raise ConfigError(f"--set {key}=...: the value is nested too deeply") from None
    parts = key.split(".")
    if len(parts) == 1 and key in TOP_LEVEL:
        return {key: value}
    if len(parts) != 2:
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.01")
    section, sub = parts
    if section not in SCHEMA:
        raise _unknown(section, list(SCHEMA), f"section '{section}'", f"--set {item}")
    if sub not in SCHEMA[section]:
        raise _unknown(sub, list(SCHEMA[section]), f"key '{key}'", f"--set {item}")
    field = SCHEMA[section][sub]
    if field.kind is str and not isinstance(value, str):
        value = text
    return {section: {sub: value}}


def flatten(cfg: dict[str, Any]) -> dict[str, Any]:
    """{section: {key: v}} -> {"section.key": v}; top-level keys stay as they are."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update({f"{k}.{sub}": sv for sub, sv in v.items()})
        else:
            out[k] = v
    return out


def apply_sets(cfg: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """`--set SECTION.KEY=VALUE` items merged over `cfg`, in order (validate the result afterwards)."""
    for item in sets:
        cfg = merge(cfg, parse_set(item))
    return cfg


MAX_TOML = 1 << 20  # bytes of a preset or run config: far above any real one


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file (a preset, sweep or run config), which may come from anyone: a regular file (a FIFO
    would hang the reader) of at most MAX_TOML bytes; every problem a ConfigError naming the file."""
    import os
    import stat

    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path}: not a regular file")
            if st.st_size > MAX_TOML:
                raise ConfigError(f"{path}: {st.st_size:,} bytes; a config file has at most {MAX_TOML:,}")
            return tomllib.loads(f.read(MAX_TOML + 1).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{path}: nested too deeply to be a preset") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def dumps(cfg: dict[str, Any]) -> str:
    return tomli_w.dumps(cfg)


def save(cfg: dict[str, Any], path: str | Path) -> None:
    from engine.fsutil import write_atomic  # (a link planted at the path is replaced, not followed)

    write_atomic(path, dumps(cfg))


def load_run_config(path: str | Path) -> dict[str, Any]:
    """Read a resolved config (as saved in a run dir) and validate it fully."""
    return validate(load_toml(path), str(path))
