"""`chexui report`: a Markdown report with the comparison tables and PNG figures (matplotlib).

Figures: train/val loss per epoch per run, training time by number of processes, storage per artifact,
per-class test AUROC with the CheXNet reference, from the runs' event streams; reliability diagrams
per label from their saved test predictions.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from chexui import compare  # noqa: E402
from chexui.runs import RunInfo  # noqa: E402
from engine.events import ARTIFACT_SPLITS  # noqa: E402
from engine.fsutil import OutputDir  # noqa: E402
from engine.labels import LABELS  # noqa: E402
from engine.sanitize import for_matplotlib  # noqa: E402


def _save(fig, path: tuple[OutputDir, str], dpi: int) -> None:
    """A figure as a PNG in the report's output dir (`OutputDir`: no planted link followed, no file
    chexui did not write replaced)."""
    import io

    out, name = path
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    out.write(name, buf.getvalue())


def loss_figure(runs: list[RunInfo], labels: list[str], path: tuple[OutputDir, str]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r, lab in zip(runs, labels):
        ep = r.state.epochs
        x = [e["epoch"] for e in ep]
        (line,) = axes[0].plot(x, [e["train_loss"] for e in ep], marker="o", label=lab)
        axes[1].plot(x, [e["val_loss"] for e in ep], marker="o", color=line.get_color(), label=lab)
    for ax, title in zip(axes, ("train loss", "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("BCE (train.loss; validation: train.val_loss)")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path, 120)


def time_figure(tbl, path: tuple[OutputDir, str]) -> None:
    """Total and per-epoch training time per run, bars coloured by the number of processes."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(tbl) + 1.8))
    procs = sorted({int(p) for p in tbl["processes"].dropna()})
    colors = {p: plt.cm.tab10(i) for i, p in enumerate(procs)}
    y = np.arange(len(tbl))
    for ax, col, unit in ((axes[0], "total h", "total (minutes)"), (axes[1], "h / epoch", "per epoch (minutes)")):
        vals = tbl[col].astype(float).fillna(0).to_numpy() * 60
        ax.barh(y, vals, color=[colors.get(int(p) if p == p else 0, "grey") for p in tbl["processes"]])
        ax.set_yticks(y, tbl.index if ax is axes[0] else [""] * len(y), fontsize=7)
        ax.set_xlabel(unit)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[p]) for p in procs]
    axes[1].legend(handles, [f"{p} process{'es' if p > 1 else ''}" for p in procs], fontsize=8)
    fig.suptitle("training time by number of processes")
    fig.tight_layout()
    _save(fig, path, 120)


def storage_figure(tbl, path: tuple[OutputDir, str]) -> None:
    kinds = [k for k in ARTIFACT_SPLITS if f"{k} bytes" in tbl and tbl[f"{k} bytes"].notna().any()]
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(tbl) + 1.8))
    y = np.arange(len(tbl))
    h = 0.8 / (2 * max(1, len(kinds)))
    k = 0
    for kind in kinds:
        for suffix, hatch in (("bytes", None), ("gzip", "//")):
            vals = tbl[f"{kind} {suffix}"].astype(float).fillna(0).to_numpy() / 2**20
            ax.barh(
                y + k * h,
                vals,
                height=h,
                label=f"{kind} {'file' if suffix == 'bytes' else 'gzip'}",
                color=plt.cm.tab10(kinds.index(kind)),
                hatch=hatch,
                alpha=0.9 if hatch is None else 0.55,
            )
            k += 1
    ax.set_yticks(y + h * (k - 1) / 2, tbl.index, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("MiB")
    ax.set_title("model storage: exported artifacts (file and gzip)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, 120)


def auroc_figure(tbl, path: tuple[OutputDir, str]) -> None:
    tbl = tbl.drop(index=compare.MEAN_LABELS)
    fig, ax = plt.subplots(figsize=(11, 5))
    x = np.arange(len(LABELS) + 1)
    cols = list(tbl.columns)
    w = 0.8 / len(cols)
    for i, col in enumerate(cols):
        ref = col == compare.REFERENCE
        ax.bar(
            x + (i - (len(cols) - 1) / 2) * w,
            tbl[col].astype(float).to_numpy(),
            width=w,
            label=col,
            color="black" if ref else None,
            alpha=0.35 if ref else 0.9,
        )
    ax.set_xticks(x, [*LABELS, "mean"], rotation=45, ha="right", fontsize=8)
    lowest = np.nanmin(tbl.astype(float).to_numpy()) if tbl.notna().any().any() else 0.5
    ax.set_ylim(min(0.4, np.floor(lowest * 20) / 20), 1.0)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("test AUROC")
    ax.set_title("per-class test AUROC (chance = 0.5)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars reach 1.0
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, 120)


def calibration_figure(runs: list[RunInfo], labels: list[str], path: tuple[OutputDir, str]) -> bool:
    """Reliability diagrams per label from each run's saved test predictions (mean predicted probability
    vs observed positive rate in 15 equal-width bins; the diagonal is perfect calibration), each run's ECE
    in the legend. False (no figure) when no run kept test predictions."""
    from engine.errors import DataError
    from engine.evaluation import operating, predictions

    kept = []
    for r, lab in zip(runs, labels):
        try:
            kept.append((lab, predictions.load(predictions.path_for(r.run_dir, "test"))))
        except DataError:
            continue
    if not kept:
        return False
    fig, axes = plt.subplots(4, 4, figsize=(13, 12.5))
    for ax, (j, name) in zip(axes.flat, enumerate(LABELS)):
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        for lab, p in kept:
            y, prob = p["labels"][:, j], p["probs"][:, j]
            if not 0 < y.sum() < len(y):
                continue
            mean_p, rate, _ = operating.reliability(y, prob)
            ax.plot(mean_p, rate, marker="o", ms=3, lw=1, label=f"{lab} ECE {operating.ece(y, prob):.3f}")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes.flat[len(LABELS) :]:
        ax.axis("off")
    fig.supxlabel("mean predicted probability (15 bins)")
    fig.supylabel("observed positive rate")
    fig.tight_layout()
    _save(fig, path, 80)  # 14 panels: 80 dpi keeps the PNG near 350 kB and still legible
    return True


def write_report(
    runs: list[RunInfo], out: Path, title: str = "chexui report", baseline: int = 0, heatmaps: int = 0
) -> Path:
    tbls = compare.tables(runs, baseline, heatmaps)
    writer = OutputDir(out)
    labels = list(tbls["time"].index)
    arm_labels = [c for c in tbls["auroc"].columns if c != compare.REFERENCE and c not in labels]  # (seed arms)
    # long labels would squeeze the plots: then figures say R1..Rn (A1..An for arms of several seeds) and
    # the lists below say which is which
    long = max(map(len, labels + arm_labels)) > 32
    short = [f"R{i + 1}" for i in range(len(runs))] if long else [for_matplotlib(lab) for lab in labels]
    arm_short = [f"A{i + 1}" for i in range(len(arm_labels))] if long else [for_matplotlib(a) for a in arm_labels]
    names = dict(zip(labels + arm_labels, short + arm_short))
    fig_tbls = {}
    for k, v in tbls.items():
        fig_tbls[k] = v.rename(index=names, columns=names)
        fig_tbls[k].attrs = {
            **v.attrs,
            **({"baseline": names.get(v.attrs["baseline"], v.attrs["baseline"])} if "baseline" in v.attrs else {}),
        }
        for key in ("ci", "sd", "seeds"):  # keyed by a column label, or (run, column)
            if isinstance(v.attrs.get(key), dict):
                fig_tbls[k].attrs[key] = {
                    ((names.get(c[0], c[0]), *c[1:]) if isinstance(c, tuple) else names.get(c, c)): x
                    for c, x in v.attrs[key].items()
                }
    figures = {
        "loss.png": "Train and validation loss per epoch",
        "auroc.png": "Per-class test AUROC",
        "time.png": "Training time",
        "storage.png": "Model storage",
    }
    loss_figure(runs, short, (writer, "loss.png"))
    auroc_figure(fig_tbls["auroc"], (writer, "auroc.png"))
    time_figure(fig_tbls["time"], (writer, "time.png"))
    storage_figure(fig_tbls["storage"], (writer, "storage.png"))
    if calibration_figure(runs, short, (writer, "calibration.png")):
        figures["calibration.png"] = "Calibration: reliability diagrams of the test predictions"
    datasets = sorted({str((r.state.started.get("dataset") or {}).get("root")) for r in runs})
    lines = [f"# {title}", "", f"Generated by `chexui report` on {time.strftime('%Y-%m-%d %H:%M')}.", "", "Runs:", ""]
    for r, lab, sh in zip(runs, labels, short):
        s = r.summary()
        name = f"{sh}: {lab}" if sh != lab else lab
        lines.append(
            f"- **{name}**: `{r.id}`, {s['status']}, preset {s['preset']}, {s['arch']}, world size {s['world_size']}"
        )
    if arm_labels:
        lines += ["", "Arms (runs that differ only by train.seed, pooled in the AUROC and paired tables):", ""]
        lines += [f"- **{sh}: {lab}**" if sh != lab else f"- **{lab}**" for lab, sh in zip(arm_labels, arm_short)]
    lines += ["", "Data: " + ", ".join(f"`{d}`" for d in datasets), ""]
    lines.append(compare.render(fig_tbls, "markdown"))
    for fname, caption in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({fname})", ""]
    path = writer.write("report.md", "\n".join(lines))
    writer.close()
    return path
