"""Grad-CAM heatmaps (`chexui explain`), how much two models' maps agree, and whether a map's peak
falls where the demo generator drew the finding.

Grad-CAM (Selvaraju et al.): a convolutional block's activations A (by default the last one: DenseNet121's
`features`, after its final ReLU; ResNet's `layer4`), weighted per channel by the mean gradient of one
label's logit, summed, ReLU, upsampled to the image and scaled to [0, 1]. Hand-written (a forward hook,
or an FX interpreter that keeps one node's output) rather than pytorch-grad-cam: that package pulls in
opencv-python, a 60 MB wheel, and cannot hook a quantized graph, which has no submodules.

Models: the float artifacts (fp32, sparse) and, for a QAT run, the int8 artifact's fake-quantized twin
(the QAT graph from the best checkpoint, observers frozen: the same weights and ranges the int8
program was converted from; its fake-quant ops pass gradients straight through). The int8 program
itself has no gradients (its quantize ops round to integers), and a post-training int8 run has no twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine import rundir
from engine.errors import DataError, UserError
from engine.models import archs

INT8_TWIN = "int8"  # the --artifacts name; shown as "int8 (QAT twin)"
TWIN_NOTE = "int8 (QAT twin)"
FLOAT_KINDS = ("fp32", "sparse")


def default_layer(model: nn.Module) -> str:
    """The Grad-CAM block of the model's architecture (engine/models/archs.py: its last convolutional block),
    found by the blocks the model (or its QAT graph) has."""
    if isinstance(model, torch.fx.GraphModule):
        have = {p.split(".")[0] for paths in _node_paths(model).values() for p in paths}
    else:
        have = {name for name, _ in model.named_children()}
    found = {a.cam_layer for a in archs.all_archs() if a.cam_layer in have}
    if len(found) > 1:  # several architectures' blocks: the one whose classifier the model has too
        found = {a.cam_layer for a in archs.all_archs() if a.cam_layer in have and a.head.split(".")[0] in have}
    if len(found) != 1:
        raise ValueError(f"no single Grad-CAM layer known for {type(model).__name__} (found {sorted(found)})")
    return found.pop()


def _node_paths(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, list[str]]:
    """The module paths each node of a graph came from (torch.export's nn_module_stack; FX's
    call_module target)."""
    out = {}
    for n in gm.graph.nodes:
        paths = [v[0] for v in (n.meta.get("nn_module_stack") or {}).values()]
        if n.op == "call_module":
            paths.append(str(n.target))
        out[n] = [p for p in paths if p]
    return out


def _tap_node(gm: torch.fx.GraphModule, layer: str) -> torch.fx.Node:
    """The graph's node for block `layer`'s output: its last node, or the fake-quant that reads it (the
    activation the int8 program passes on)."""
    inside = [n for n, paths in _node_paths(gm).items() if any(p == layer or p.startswith(layer + ".") for p in paths)]
    if not inside:
        raise UserError(f"--layer {layer}: no such block in the model's graph")
    last = inside[-1]
    users = list(last.users)
    if len(users) == 1 and users[0].op == "call_module" and "activation_post_process" in str(users[0].target):
        return users[0]
    return last


class _Tap(torch.fx.Interpreter):
    """Runs a graph and keeps one node's output (with its autograd history)."""

    def __init__(self, gm: torch.fx.GraphModule, node: torch.fx.Node):
        super().__init__(gm)
        self.node = node
        self.value: Any = None

    def run_node(self, n):
        out = super().run_node(n)
        if n is self.node:
            self.value = out
        return out


def _forward_keeping(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, activations of `layer`) of one forward pass."""
    if isinstance(model, torch.fx.GraphModule):
        tap = _Tap(model, _tap_node(model, layer))
        out = tap.run(x)
        return (out[0] if isinstance(out, (list, tuple)) else out), tap.value
    try:
        block = model.get_submodule(layer)
    except AttributeError:
        raise UserError(f"--layer {layer}: {type(model).__name__} has no such block") from None
    saved: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda m, i, out: saved.append(out))
    try:
        return model(x), saved[0]
    finally:
        handle.remove()


def gradcam(model: nn.Module, x: torch.Tensor, labels: list[int], layer: str | None = None) -> np.ndarray:
    """Maps [len(labels), H, W] in [0, 1] for one normalised image x [1, 3, H, W]."""
    model.eval()
    with torch.enable_grad():
        logits, act = _forward_keeping(model, x, layer or default_layer(model))
        maps = []
        for j in labels:
            (grad,) = torch.autograd.grad(logits[0, j], act, retain_graph=True)
            cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            maps.append((cam / cam.max().clamp_min(1e-12)).detach().numpy())
    return np.stack(maps)


def agreement(a: np.ndarray, b: np.ndarray, top: float = 0.10) -> dict:
    """Pearson correlation of two maps and the IoU of their top-`top` regions (by pixel count: the pixels
    at or above the k-th highest value, ties included)."""
    fa, fb = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if not (fa.std() > 0 and fb.std() > 0):  # a flat map (all zero after the ReLU) has no region
        return {"pearson": None, "top_iou": None}
    pearson = float(np.corrcoef(fa, fb)[0, 1])
    k = max(1, int(round(top * fa.size)))
    ta, tb = _top_region(fa, k), _top_region(fb, k)
    return {"pearson": pearson, "top_iou": float((ta & tb).sum() / (ta | tb).sum())}


def _top_region(f: np.ndarray, k: int) -> np.ndarray:
    """The pixels at or above the k-th highest value, zeros left out (a map with fewer than k nonzero
    pixels: those). The maps are float32 scaled to [0, 1], and upsampled from a coarse layer they hold
    plateaus of equal values: values within 1e-6 count as one (another summation order moves them by
    about 1e-7), and a plateau is in the region whole or not at all. (Picking k pixels by argsort cut
    plateaus at arbitrary pixels: two maps equal to 1e-15 could score an IoU of 0.96.)"""
    r = np.round(f, 6)
    return (r >= np.sort(r)[-k]) & (r > 0)


def peak_in(cam: np.ndarray, region: np.ndarray) -> bool | None:
    """Whether the map's peak lies inside a drawn region (resized to the map, nearest); None for a
    flat map, which has no peak."""
    if not cam.max() > cam.min():
        return None
    if region.shape != cam.shape:
        from PIL import Image

        region = np.asarray(Image.fromarray(region).resize(cam.shape[::-1], Image.Resampling.NEAREST))
    return bool(region.flat[int(cam.argmax())])


def choose_labels(spec: str, probs: np.ndarray) -> list[int]:
    """ "top3" (the baseline's three most probable), "all", or comma-separated label names."""
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


def models(run_dir: Path, kinds: list[str] | None = None, trust: bool = False) -> dict[str, nn.Module]:
    """The run's explainable models by name: its float artifacts and, for a QAT run, the int8
    artifact's twin (`kinds` picks among fp32, sparse, int8; default all it has). A run that exported
    nothing: its best checkpoint's model (the twin too for QAT)."""
    from engine import compression
    from engine.evaluation.evaluate import _checkpoint
    from engine.inference import export

    cfg = rundir.load_config(run_dir)
    arts = export.recorded(run_dir)
    maker = compression.int8_maker(cfg)  # (a run whose int8 method has a twin: QAT)
    twin = maker is not None and not maker.no_twin and (export.INT8 in arts or not arts)
    have = [k for k in FLOAT_KINDS if k in arts] + ([INT8_TWIN] if twin else [])
    if kinds is None:
        kinds = have or []
    bad = [k for k in kinds if k not in have]
    if bad:
        why = (
            maker.no_twin
            if INT8_TWIN in bad and maker is not None and maker.no_twin
            else "explain takes fp32, sparse and (QAT runs) int8"
        )
        raise UserError(
            f"--artifacts {','.join(bad)}: run {run_dir.name} has {', '.join(have) or 'none of them'}; {why}"
        )
    out: dict[str, nn.Module] = {}
    ck = None
    if not arts:
        ck = _checkpoint(run_dir)[1]
        out["best checkpoint"] = export.build_float(cfg["model"]["arch"], ck["model"])
    for k in kinds:
        if k != INT8_TWIN:
            out[k] = export.load_model(run_dir, arts[k], trust)
        elif maker is not None and (twin_model := maker.twin(cfg, ck or _checkpoint(run_dir)[1])) is not None:
            out[TWIN_NOTE] = twin_model
    return out


def shipped(run_dir: Path) -> tuple[list[str] | None, str | None]:
    """The model a run ships, as `models` kinds (None: its best checkpoint), or why it has none to
    explain: a QAT run's int8 twin, a pruned run's sparse artifact, else its fp32 artifact."""
    from engine import compression
    from engine.inference import export

    cfg = rundir.load_config(run_dir)
    arts = export.recorded(run_dir)
    maker = compression.int8_maker(cfg)
    if maker is not None:
        return ([INT8_TWIN], None) if not maker.no_twin else (None, maker.no_twin)
    kind = next((k for k in ("sparse", "fp32") if k in arts), None)
    return ([kind] if kind else None), None


def explain_run(
    run_dir,
    paths: list[str],
    out,
    label_spec: str = "top3",
    kinds: list[str] | None = None,
    trust: bool = False,
    baseline=None,
    layer: str | None = None,
) -> dict:
    """Grad-CAM of each image for the chosen labels under each model of the run, PNG overlays and one
    side-by-side figure per image in `out`, and every model's agreement with the first one's map (also
    `out/agreement.json`). The first is the baseline: the best model of `baseline` (a run dir), by
    default the run's parent for a `chexui compress` run, else the run's first model."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.data import images
    from engine.evaluation.evaluate import load_best, probabilities
    from engine.fsutil import OutputDir
    from engine.labels import LABELS
    from engine.sanitize import for_matplotlib

    run_dir, out = Path(run_dir), Path(out)
    cfg = rundir.load_config(run_dir)
    size = cfg["data"]["image_size"]
    named = models(run_dir, kinds, trust)
    if not named:
        raise UserError(f"run {run_dir.name}: nothing to explain (no float artifact, no QAT twin)")
    parent = baseline or cfg["compress"]["parent"] or None
    if parent is not None:  # the uncompressed model comes first: what the others are compared with
        named = {f"baseline {Path(parent).name}": load_best(Path(parent))[0], **named}
    kinds = list(named)
    files = images.find(paths)
    stems = output_stems(files)
    # never through a planted link (RUN itself included when writing RUN/explain), never over a file
    # chexui did not write
    writer = OutputDir(out, below=run_dir.parent if out == run_dir / "explain" else None)
    records, skipped = [], []
    for path, stem in zip(files, stems):
        try:
            pixels = images.load(path, size)
        except DataError as e:
            skipped.append(str(e))
            continue
        x = _as_input(pixels)
        with torch.no_grad():
            probs = {k: probabilities(m(x).detach().numpy())[0] for k, m in named.items()}
        labels = choose_labels(label_spec, probs[kinds[0]])
        maps = {k: gradcam(m, x, labels, layer) for k, m in named.items()}
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
                extra = (
                    f"\nr={rec['pearson']:.2f} IoU={rec['top_iou']:.2f}" if c > 0 and rec["pearson"] is not None else ""
                )
                ax.set_title(
                    for_matplotlib(
                        f"{LABELS[j]} p={probs[k][j]:.2f} ({k.split(' ')[0] if parent and c == 0 else k}){extra}"
                    ),
                    fontsize=7,
                )
                ax.axis("off")
                writer.write(
                    f"{stem}-{k.split(' ')[0]}-{LABELS[j]}.png", _png(plt.imsave, _overlay(pixels, maps[k][r]))
                )
        fig.suptitle(
            for_matplotlib(f"{path.name}: {run_dir.name}" + (f" vs baseline {Path(parent).name}" if parent else "")),
            fontsize=8,
        )
        fig.tight_layout()
        writer.write(f"{stem}-compare.png", _png(fig.savefig, dpi=100))
        plt.close(fig)
    res = {"run": run_dir.name, "artifacts": kinds, "layer": layer, "records": records, "skipped": skipped}
    writer.write("agreement.json", json.dumps(res, indent=1))
    writer.close()
    return {**res, "out": str(out)}


def _png(save, *args, **kwargs) -> bytes:
    """What matplotlib's `save(file, ...)` (imsave, savefig) writes, as bytes."""
    import io

    buf = io.BytesIO()
    save(buf, *args, format="png", **kwargs)
    return buf.getvalue()


def output_stems(files: list[Path]) -> list[str]:
    """A file-name stem per input image, unique among them: its own stem (control characters out, 80
    characters at most), with a short hash of its full path when two inputs share a stem (a/x.png and
    b/x.png must not become one figure)."""
    import hashlib
    from collections import Counter

    from engine.sanitize import clean

    base = [(clean(f.stem).replace("/", "_").lstrip(".") or "image")[:80] for f in files]
    seen = Counter(base)
    return [
        b if seen[b] == 1 else f"{b}-{hashlib.sha256(str(f.resolve()).encode()).hexdigest()[:8]}"
        for b, f in zip(base, files)
    ]


def _as_input(pixels: np.ndarray) -> torch.Tensor:
    """One decoded image (uint8 [H, W], `images.load`) as the normalised batch of one the models take."""
    from engine.data.batches import to_input

    return to_input(torch.tensor(pixels[None]), torch.device("cpu"))


def _overlay(pixels: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The grayscale image with the map in the jet colour map blended over it (RGB float in [0, 1])."""
    import matplotlib

    rgb = np.repeat(pixels[..., None] / 255.0, 3, axis=2)
    return np.clip(0.6 * rgb + 0.4 * matplotlib.colormaps["jet"](cam)[..., :3], 0, 1)


def sample_agreement(
    base_dir: Path, run_dirs: list[Path], n_images: int = 16, seed: int = 0, top: int = 3, layer: str | None = None
) -> list[dict]:
    """For `compare`/`report`: on a seeded sample of the baseline's test images, each run's models'
    Grad-CAM agreement with the baseline's best model for the baseline's `top` most probable labels,
    and, on a chexui demo set, how often each model's peak falls inside the drawn finding (labels the
    image shows). One record per (run, model it ships: `shipped`); runs on other data or image sizes,
    and post-training int8 runs, are left out with why."""
    from engine.data import demo, images, nih
    from engine.evaluation import predictions
    from engine.evaluation.evaluate import load_best, probabilities

    try:
        base_model, base_cfg = load_best(base_dir)
        size, root = base_cfg["data"]["image_size"], data_root(base_dir)
        ids = predictions.load(predictions.path_for(base_dir, "test"))["image_ids"]
    except (UserError, DataError) as e:  # e.g. a run copied without its checkpoints
        return [
            {
                "run": base_dir.name,
                "model": None,
                "skipped": f"the baseline has no model or test predictions to read: {e}",
            }
        ]
    names = sorted(np.random.default_rng(seed).choice(ids, size=min(n_images, len(ids)), replace=False).tolist())
    files = nih.scan_images(Path(root))
    try:
        truth = demo.finding_regions(root, names)
    except (DataError, OSError, ValueError):
        truth = {}  # not a demo set: no drawn regions to check peaks against
    inputs = {}
    for name in names:
        if name not in files:
            raise DataError(f"{root}: test image {name} of the baseline run is missing")
        inputs[name] = _as_input(images.load(files[name], size))
    base_maps, base_labels, base_hits = {}, {}, []
    for name, x in inputs.items():
        with torch.no_grad():
            base_labels[name] = choose_labels(f"top{top}", probabilities(base_model(x).numpy())[0])
        base_maps[name] = gradcam(base_model, x, base_labels[name], layer)
        base_hits += _hits(base_maps[name], base_labels[name], truth.get(name))
    out = [
        {
            "run": base_dir.name,
            "model": "baseline",
            "images": len(names),
            "maps": sum(map(len, base_labels.values())),
            "compared": None,
            "pearson": None,
            "top_iou": None,
            **_rate(base_hits),
        }
    ]
    for run_dir in run_dirs:
        cfg = rundir.load_config(run_dir)
        if cfg["data"]["image_size"] != size or data_root(run_dir) != root:
            out.append({"run": run_dir.name, "model": None, "skipped": "other data or image size than the baseline's"})
            continue
        kinds, why = shipped(run_dir)
        if why:
            out.append({"run": run_dir.name, "model": None, "skipped": why})
            continue
        try:
            named = models(run_dir, kinds)
        except (UserError, DataError) as e:
            out.append({"run": run_dir.name, "model": None, "skipped": str(e)})
            continue
        for kind, model in named.items():
            scores, hits = [], []
            for name, x in inputs.items():
                maps = gradcam(model, x, base_labels[name], layer)
                scores += [agreement(a, b) for a, b in zip(base_maps[name], maps)]
                hits += _hits(maps, base_labels[name], truth.get(name))
            ok = [s for s in scores if s["pearson"] is not None]
            out.append(
                {
                    "run": run_dir.name,
                    "model": kind,
                    "images": len(names),
                    "maps": len(scores),
                    "compared": len(ok),  # the pairs of maps neither of which is flat: what r and IoU average
                    "pearson": float(np.mean([s["pearson"] for s in ok])) if ok else None,
                    "top_iou": float(np.mean([s["top_iou"] for s in ok])) if ok else None,
                    **_rate(hits),
                }
            )
    return out


def data_root(run_dir: Path) -> Path:
    """The dataset the run trained on, as it resolved it (`run_started`; "" in the config is the demo set)."""

    started = rundir.first(rundir.events(run_dir), "run_started")
    if not started:
        raise UserError(f"{run_dir}: no run_started event (not a chexui run dir)")
    return Path(started["dataset"]["root"])


def _hits(maps: np.ndarray, labels: list[int], truth) -> list[bool]:
    from engine.labels import LABELS

    if truth is None:
        return []
    shown, regions = truth
    found = [peak_in(cam, regions[LABELS[j]]) for cam, j in zip(maps, labels) if LABELS[j] in regions]
    return [h for h in found if h is not None]


def _rate(hits: list[bool]) -> dict:
    return {"peak_hits": sum(hits), "peak_maps": len(hits)}


def localisation(
    model: nn.Module, root: Path, names: list[str], size: int, labels: list[str], layer: str | None = None
) -> dict[str, dict]:
    """Per label: on the images of a demo set that show it, how often the model's Grad-CAM peak lies
    inside the region the generator drew it in ({"images", "hits", "rate", "chance"}; chance: the
    mean share of the image the region covers, the rate of a peak placed at random)."""
    from engine.data import demo, images
    from engine.labels import LABELS

    truth = demo.finding_regions(root, names)
    out = {lab: {"images": 0, "hits": 0, "area": 0.0} for lab in labels}
    for name, (shown, regions) in truth.items():
        want = [lab for lab in labels if lab in shown and lab in regions]
        if not want:
            continue
        x = _as_input(images.load(Path(root) / "images" / name, size))
        for lab, cam in zip(want, gradcam(model, x, [LABELS.index(lab) for lab in want], layer)):
            hit = peak_in(cam, regions[lab])
            if hit is not None:
                out[lab]["images"] += 1
                out[lab]["hits"] += hit
                out[lab]["area"] += float(regions[lab].mean())
    return {
        lab: {
            "images": v["images"],
            "hits": v["hits"],
            "rate": v["hits"] / v["images"] if v["images"] else None,
            "chance": v["area"] / v["images"] if v["images"] else None,
        }
        for lab, v in out.items()
    }
