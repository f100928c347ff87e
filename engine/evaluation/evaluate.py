"""Predictions and AUROC: the engine's validation/test step and `chexui eval` (any NIH-layout dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine import rundir
from engine.data import cache, nih
from engine.data.batches import Images, Prefetched, eval_batches, to_input
from engine.evaluation import metrics
from engine.inference import export
from engine.labels import LABELS, n_defined
from engine.runtime.dist import Dist


def eval_batch_size(cfg: dict) -> int:
    """The batch of every evaluation of a run, the engine's and `chexui eval`'s alike (a QAT model's
    fake quantization can round a value the other way when a batch of another shape changes the conv
    algorithm: one batch size keeps eval's numbers the run's own)."""
    return cfg["train"]["batch_size"] * 2


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images,
    rows: np.ndarray,
    d: Dist,
    batch_size: int,
    channels_last: bool = False,
    device: torch.device | None = None,
    pad: bool = False,
) -> np.ndarray:
    """Logits for `rows` in `rows` order, in fp32 (no autocast: evaluation measures the model, not a
    training-speed setting): each image exactly once over all ranks (no sampler padding), gathered to
    every rank. `device` overrides the rank's device (the int8 model runs on the CPU).
    `pad`: a short last batch is padded with blank images to `batch_size` (its logits dropped), so a
    compiled model sees one input shape and compiles once (eval-mode BatchNorm keeps rows independent)."""
    model.eval()
    device = device or d.device
    mine, batches = eval_batches(len(rows), batch_size, d.world, d.rank)

    def inputs():  # read (and pinned, for a GPU) in a thread while the model runs on the last batch
        for pos in batches:
            x, _, _ = images[rows[pos]]
            n = len(x)
            if pad and n < batch_size:
                x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
            yield (x.pin_memory() if device.type == "cuda" else x), n

    out = []
    with Prefetched(inputs(), device) as xs:
        for x, n in xs:
            # kept on the device (a copy to the host would wait for the GPU every batch); cloned, as a
            # CUDA-graph output is overwritten by the next call
            out.append(model(to_input(x, device, None, channels_last))[:n].float().clone())
    logits = torch.cat(out).cpu().numpy() if out else np.zeros((0, len(LABELS)), np.float32)
    full = np.zeros((len(rows), len(LABELS)), np.float32)
    for positions, part in d.all_gather_object((mine, logits)):
        full[positions] = part
    return full


def probabilities(logits: np.ndarray) -> np.ndarray:
    """sigmoid(logits) in float64: no ties made by float32 rounding near 0 and 1."""
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


def auroc_from_logits(y: np.ndarray, logits: np.ndarray) -> tuple[dict, float | None, list[str]]:
    """Per-class AUROC of the probabilities."""
    return metrics.per_class_auroc(y, probabilities(logits))


def _checkpoint(run_dir: Path) -> tuple[Path, dict]:
    return export.best_checkpoint(run_dir)


def load_best(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    """The float model of the run's best checkpoint (its last when it has no best yet)."""
    cfg = rundir.load_config(run_dir)
    return export.build_float(cfg["model"]["arch"], _checkpoint(run_dir)[1]["model"]), cfg


def shipped_models(run_dir: Path, cfg: dict, trust: bool = False) -> list[tuple[str, nn.Module]]:
    """What the run ships, each with a description, the headline first: a run of an int8 method (QAT,
    PTQ) its int8 model (the program its int8 artifact holds, from the record kept in the best
    checkpoint), then what the method adds (`Method.companion`: QAT's fake-quantized model, PTQ's float
    model before quantization); any other run its best fp32 model. A QAT run's float weights alone are
    not a model it ships."""
    from engine import compression

    path, ck = _checkpoint(run_dir)
    rel = str(path.relative_to(run_dir))
    if compression.int8_maker(cfg) is None:
        return [(f"fp32 model of {rel}", export.build_float(cfg["model"]["arch"], ck["model"]))]
    out = []
    int8 = export.recorded(run_dir).get(export.INT8)
    if int8 is not None:
        export.verified_path(run_dir, int8, trust)  # (the exported file is there and unchanged)
        out.append((f"int8 artifact {int8['path']} (its graph, as kept in {rel})", export.int8_model(run_dir, cfg, ck)))
    return out + [c for m in compression.active(cfg) if (c := m.companion(cfg, ck, rel)) is not None]


def evaluate_run(run_dir: Path, data_root: str, split: str = "test", trust: bool = False) -> dict:
    """Per-class AUROC (with patient-bootstrap 95 % intervals) of what the run ships on any NIH-layout
    dataset, and each label's sensitivity/specificity/PPV/NPV/F1 at the run's operating points; the
    first model is the run's main one (QAT: the int8 artifact when there is one)."""
    from engine.evaluation import bootstrap, operating

    cfg = rundir.load_config(run_dir)
    op = operating.recorded(run_dir)
    index = nih.index_dataset(data_root)  # (a bad data dir fails before any model is loaded)
    shipped = shipped_models(run_dir, cfg, trust)
    size = cfg["data"]["image_size"]
    rows = np.arange(len(index)) if split == "all" else nih.make_split(index, cfg["data"])["test"]
    mem = cache.prepare(index, size) if cfg["data"]["cache"] else None
    y, spec = index.labels[rows], bootstrap.Spec.from_config(cfg["eval"])
    results = []
    for name, model in shipped:  # (as the engine evaluated the run: its batch and memory layout)
        logits = predict_logits(
            model, Images(index, size, mem), rows, Dist(), eval_batch_size(cfg), cfg["train"]["channels_last"]
        )
        auc, mean, reasons = auroc_from_logits(y, logits)
        res = {"model": name, "auc": auc, "auc_mean": mean, "n_labels_defined": n_defined(auc), "undefined": reasons}
        if spec is not None:
            res.update(bootstrap.intervals(y, probabilities(logits), index.patients[rows], auc, spec))
        if op is not None:  # the calls at the run's thresholds (chosen on its own validation split)
            res.update(
                operating_point=op["rule"],
                ece=operating.eces(y, probabilities(logits)),
                at_threshold=operating.at_thresholds(
                    y, probabilities(logits), op["thresholds"], index.patients[rows], spec
                ),
            )
        results.append(res)
    return {
        "run": run_dir.name,
        "data": str(index.root),
        "split": split,
        "n": int(len(rows)),
        **results[0],
        "models": results,
    }
