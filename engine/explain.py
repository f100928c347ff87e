"""Grad-CAM heatmaps (`chexui explain`) and how much two models' maps agree.

Grad-CAM (Selvaraju et al.): the last convolutional block's activations A (DenseNet121: `features`,
after its final ReLU; ResNet: `layer4`), weighted per channel by the mean gradient of one label's logit,
summed, ReLU, upsampled to the image and scaled to [0, 1]. Hand-written (20 lines over a forward hook)
rather than pytorch-grad-cam: that package pulls in opencv-python, a 60 MB wheel, for this much.

Float models only (fp32 and sparse artifacts: the sparse one is the same architecture with zeros).
A QAT/PTQ int8 program is a flattened graph with no named blocks to hook; explaining it is not done yet.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def target_layer(model: nn.Module) -> nn.Module:
    if hasattr(model, "layer4"):  # torchvision ResNets
        return model.layer4
    if hasattr(model, "features"):  # torchvision DenseNets (its forward applies ReLU in place after it)
        return model.features
    raise ValueError(f"no Grad-CAM layer known for {type(model).__name__}")


def gradcam(model: nn.Module, x: torch.Tensor, labels: list[int]) -> np.ndarray:
    """Maps [len(labels), H, W] in [0, 1] for one normalised image x [1, 3, H, W]."""
    model.eval()
    saved: list[torch.Tensor] = []
    handle = target_layer(model).register_forward_hook(lambda m, i, out: saved.append(out))
    try:
        with torch.enable_grad():
            logits = model(x)
            act = saved[0]
            maps = []
            for j in labels:
                (grad,) = torch.autograd.grad(logits[0, j], act, retain_graph=True)
                cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
                cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                maps.append((cam / cam.max().clamp_min(1e-12)).detach().numpy())
    finally:
        handle.remove()
    return np.stack(maps)


def agreement(a: np.ndarray, b: np.ndarray, top: float = 0.10) -> dict:
    """Pearson correlation of two maps and the IoU of their top-`top` regions (by pixel count)."""
    fa, fb = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if not (fa.std() > 0 and fb.std() > 0):  # a flat map (all zero after the ReLU) has no region
        return {"pearson": None, "top_iou": None}
    pearson = float(np.corrcoef(fa, fb)[0, 1])
    k = max(1, int(round(top * fa.size)))
    ta, tb = np.zeros(fa.size, bool), np.zeros(fb.size, bool)
    ta[np.argsort(fa)[-k:]] = True
    tb[np.argsort(fb)[-k:]] = True
    return {"pearson": pearson, "top_iou": float((ta & tb).sum() / (ta | tb).sum())}


def choose_labels(spec: str, probs: np.ndarray) -> list[int]:
    """"top3" (the baseline's three most probable), "all", or comma-separated label names."""
    from engine.errors import UserError
    from engine.labels import LABELS
    if spec == "all":
        return list(range(len(LABELS)))
    if spec.startswith("top") and spec[3:].isdigit():
        return [int(j) for j in np.argsort(-probs)[: int(spec[3:])]]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in LABELS]
    if unknown or not names:
        raise UserError(f"--labels {spec!r}: expected top3, all, or names from {', '.join(LABELS)}")
    return [LABELS.index(n) for n in names]


def explain_run(run_dir, paths: list[str], out, label_spec: str = "top3", kinds: list[str] | None = None,
                trust: bool = False, baseline=None) -> dict:
    """Grad-CAM of each image for the chosen labels under each float artifact of the run, PNG overlays
    and one side-by-side figure per image in `out`, and every model's agreement with the first one's map
    (also `out/agreement.json`). The first is the baseline: the best model of `baseline` (a run dir),
    by default the run's parent for a `chexui compress` run, else the run's first artifact."""
    import json
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine import config, export, images
    from engine.data import to_input
    from engine.errors import DataError, UserError
    from engine.evaluate import probabilities
    from engine.labels import LABELS
    from engine.sanitize import clean

    run_dir, out = Path(run_dir), Path(out)
    size = config.load_run_config(run_dir / "config.toml")["data"]["image_size"]
    arts = export.recorded(run_dir)
    kinds = kinds or [k for k in (export.FP32, export.SPARSE) if k in arts]
    bad = [k for k in kinds if k not in (export.FP32, export.SPARSE) or k not in arts]
    if not kinds or bad:
        raise UserError(f"--artifacts {','.join(bad or kinds) or '(none)'}: explain takes the run's float artifacts "
                        f"(exported here: {', '.join(k for k in arts if k in (export.FP32, export.SPARSE)) or 'none'}); "
                        "int8 programs have no named layers to explain yet")
    models = {k: export.load_model(run_dir, arts[k], trust) for k in kinds}
    parent = baseline or config.load_run_config(run_dir / "config.toml")["compress"]["parent"] or None
    if parent is not None:  # the uncompressed model comes first: what the others are compared with
        from engine.evaluate import load_best
        models = {f"baseline {Path(parent).name}": load_best(Path(parent))[0], **models}
        kinds = list(models)
    out.mkdir(parents=True, exist_ok=True)
    records, skipped = [], []
    for path in images.find(paths):
        try:
            pixels = images.load(path, size)
        except DataError as e:
            skipped.append(str(e))
            continue
        x = to_input(torch.from_numpy(pixels[None]), torch.device("cpu"))
        probs = {k: probabilities(m(x).detach().numpy())[0] for k, m in models.items()}
        labels = choose_labels(label_spec, probs[kinds[0]])
        maps = {k: gradcam(m, x, labels) for k, m in models.items()}
        stem = clean(path.stem)[:80]
        fig, axes = plt.subplots(len(labels), len(kinds), figsize=(3 * len(kinds), 3 * len(labels)), squeeze=False)
        for r, j in enumerate(labels):
            for c, k in enumerate(kinds):
                rec = {"image": str(path), "label": LABELS[j], "artifact": k, "probability": float(probs[k][j])}
                if c > 0:
                    rec.update(agreement(maps[kinds[0]][r], maps[k][r]))
                records.append(rec)
                ax = axes[r][c]
                ax.imshow(pixels, cmap="gray")
                ax.imshow(maps[k][r], cmap="jet", alpha=0.4)
                extra = f"\nr={rec['pearson']:.2f} IoU={rec['top_iou']:.2f}" if c > 0 and rec["pearson"] is not None else ""
                ax.set_title(f"{LABELS[j]} p={probs[k][j]:.2f} ({k}){extra}", fontsize=7)
                ax.axis("off")
                plt.imsave(out / f"{stem}-{k}-{LABELS[j]}.png", _overlay(pixels, maps[k][r]))
        fig.tight_layout()
        fig.savefig(out / f"{stem}-compare.png", dpi=100)
        plt.close(fig)
    (out / "agreement.json").write_text(json.dumps({"run": run_dir.name, "artifacts": kinds, "records": records,
                                                    "skipped": skipped}, indent=1))
    return {"run": run_dir.name, "artifacts": kinds, "records": records, "skipped": skipped, "out": str(out)}


def _overlay(pixels: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The grayscale image with the map in the jet colour map blended over it (RGB float in [0, 1])."""
    import matplotlib
    rgb = np.repeat(pixels[..., None] / 255.0, 3, axis=2)
    return np.clip(0.6 * rgb + 0.4 * matplotlib.colormaps["jet"](cam)[..., :3], 0, 1)
