"""The commands that run a trained run's models: `eval`, `predict`, `explain`, `bench`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from chexui.commands.common import AsJson, RunRef, RunsDir, Trust, err, fail, find, print_json, progress, say
from chexui.format import csv_cell, fmt
from chexui.headless import auc_table, console, table
from engine import rundir
from engine.errors import UserError
from engine.sanitize import clean

PREDICT_FORMATS = ("table", "csv", "json")


def eval_cmd(
    run_ref: RunRef,
    data: Annotated[str, typer.Option("--data", help="NIH-layout dataset dir")],
    split: Annotated[str, typer.Option("--split", help="test (the run's split rule) or all")] = "test",
    as_json: AsJson = False,
    trust: Trust = False,
    runs_dir: RunsDir = None,
) -> None:
    """Evaluate what a trained run ships on any NIH-layout dataset: per-class AUROC with 95 % CIs.

    The best fp32 model; for a QAT run, its int8 artifact and its fake-quantized best model."""
    if split not in ("test", "all"):
        raise UserError(f"--split {split!r}: expected test or all")
    run_dir = find(run_ref, runs_dir)
    from engine.data import nih

    nih.find_csv(Path(data))  # a bad --data fails here, before torch is imported
    from engine.evaluation.evaluate import evaluate_run

    res = evaluate_run(run_dir, data, split, trust)
    if as_json:
        return print_json(res)
    con = console()
    for m in res["models"]:
        con.print(auc_table(m, f"{m['model']}: {res['split']} AUROC on {data} ({res['n']} images)"))


def predict_cmd(
    run_ref: RunRef,
    paths: Annotated[
        list[str], typer.Argument(metavar="PATH...", help="image files or directories (PNG, JPEG, DICOM)")
    ],
    artifact: Annotated[
        str | None,
        typer.Option("--artifact", help="fp32 | sparse | int8 | onnx_fp32 | onnx_int8 (default: what the run ships)"),
    ] = None,
    fmt_: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="show probabilities after the run's per-label temperature scaling (fitted on validation)",
        ),
    ] = False,
    trust: Trust = False,
    runs_dir: RunsDir = None,
) -> None:
    """The 14 probabilities per image from a trained run's model, and the positive labels at the run's
    operating points (chosen on validation); unreadable files are listed and skipped."""
    if fmt_ not in PREDICT_FORMATS:
        raise UserError(f"--format {fmt_!r}: expected table, csv or json")
    run_dir = find(run_ref, runs_dir)
    from engine.inference.predict import predict

    with progress("predicting") as cb:
        res = predict(run_dir, paths, artifact, trust, progress=cb, calibrate=calibrate)
    for b in res["unreadable"]:
        err.print(f"skipped: {clean(b['reason'])}", markup=False)
    if not res["rows"]:
        raise fail(f"none of the {len(res['unreadable'])} files could be read")
    if fmt_ == "json":
        print_json(res)
    elif fmt_ == "csv":
        _predictions_csv(res)
    else:
        _predictions_table(res)


def _predictions_csv(res: dict) -> None:
    import csv

    from engine.labels import LABELS

    w = csv.writer(sys.stdout)
    w.writerow(["file", *LABELS, "positive"])
    for r in res["rows"]:
        w.writerow([csv_cell(clean(r["file"])), *(f"{p:.6f}" for p in r["probs"]), "|".join(r["positive"])])


def _predictions_table(res: dict) -> None:
    from engine.labels import LABELS

    t = table("file", *LABELS, "positive")
    for r in res["rows"]:  # "+": a positive call at the run's operating point
        t.add_row(
            clean(r["file"]),
            *(f"{p:.3f}" + ("+" if c else "") for p, c in zip(r["probs"], r["calls"])),
            ", ".join(r["positive"]) or ("-" if res["operating_point"] else "(no thresholds)"),
        )
    con = console()
    op = res["operating_point"]
    con.print(
        f"{res['run']}: {res['model']}, {res['image_size']} px; "
        + (
            f"calls at the run's {op['rule']} thresholds (chosen on validation)"
            if op
            else "no operating points recorded: probabilities only"
        )
        + ("; probabilities temperature-scaled" if res["calibrated"] else ""),
        markup=False,
    )
    con.print(t)


def explain_cmd(
    run_ref: RunRef,
    paths: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="image files or directories")],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="directory for the PNGs and agreement.json (default: RUN/explain, listed in the TUI's runs browser)",
        ),
    ] = None,
    labels: Annotated[str, typer.Option("--labels", help="top3 | all | NAME,NAME...")] = "top3",
    artifacts: Annotated[
        str | None,
        typer.Option(
            "--artifacts", help="fp32,sparse,int8 (default: all the run has; int8 = a QAT run's fake-quantized twin)"
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="RUN whose best model is the baseline (default: a compress run's parent)"),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="block whose activations are mapped "
            "(default: the last, layer4 / features; e.g. layer3 for finer maps)",
        ),
    ] = None,
    trust: Trust = False,
    runs_dir: RunsDir = None,
) -> None:
    """Grad-CAM heatmaps of a run's models on images, side by side, with each model's agreement with the
    baseline (Pearson r of the maps, IoU of their top 10 %)."""
    run_dir = find(run_ref, runs_dir)
    base_dir = find(baseline, runs_dir) if baseline else None
    from engine.inference.explain import explain_run

    res = explain_run(
        run_dir,
        paths,
        Path(out) if out else run_dir / "explain",
        labels,
        artifacts.split(",") if artifacts else None,
        trust,
        base_dir,
        layer,
    )
    for line in res["skipped"]:
        err.print(f"skipped: {clean(line)}", markup=False)
    if not res["records"]:
        raise fail("no image could be read")
    t = table("image", "label", "artifact", "probability", "r (vs baseline)", "top-10% IoU")
    for r in res["records"]:
        t.add_row(
            clean(Path(r["image"]).name),
            r["label"],
            r["artifact"],
            f"{r['probability']:.3f}",
            fmt(r.get("pearson"), ".3f"),
            fmt(r.get("top_iou"), ".3f"),
        )
    console().print(t)
    say(f"figures and agreement.json in {res['out']}")


def bench_cmd(
    run_ref: RunRef,
    as_json: AsJson = False,
    trust: Trust = False,
    compile_: Annotated[
        bool, typer.Option("--compile/--no-compile", help="also time the fp32 and int8 models compiled (torch.compile)")
    ] = True,
    dense: Annotated[
        str | None,
        typer.Option(
            "--dense",
            metavar="RUN",
            help="the dense run to compare speed with, runtime by runtime (default: a compressed run's dense ancestor)",
        ),
    ] = None,
    runs_dir: RunsDir = None,
) -> None:
    """Inference benchmark of the run's exported models: bytes, MACs, test AUROC, CPU (and GPU) speed,
    eager and compiled; the speed-up is against the fastest fp32 row, and against the dense run's fp32
    model in the same runtime (`x dense`)."""
    run_dir = find(run_ref, runs_dir)
    size = rundir.load_config(run_dir)["data"]["image_size"]
    from engine.inference.bench import bench_run

    res = bench_run(run_dir, size, trust, compile_, find(dense, runs_dir) if dense else None)
    if as_json:
        return print_json(res)
    gpu = res["gpu"] is not None
    cols = [
        "model",
        "runtime",
        "file",
        "bytes",
        "gzip bytes",
        "x fp32",
        "GMACs",
        "test AUROC",
        "CPU b1 ms",
        "CPU b32 img/s",
        "x fp32 speed",
        *(["x dense speed"] if res.get("dense") else []),
    ]
    t = table(*cols, *(["GPU b1 ms", "GPU b256 img/s", "bf16 b1 ms", "bf16 b256 img/s"] if gpu else []))
    for a in res["artifacts"]:
        cells = [
            a["kind"],
            a["runtime"],
            a["path"],
            f"{a['bytes']:,}",
            f"{a['gzip_bytes']:,}",
            fmt(a["x_fp32"], ".2f"),
            fmt(a["macs"] / 1e9 if isinstance(a.get("macs"), int) else None, ".3f"),
            fmt(a["test_auc_mean"]),
            f"{a['cpu']['latency_b1_ms']:.1f}",
            f"{a['cpu']['throughput_b32']:.1f}",
            fmt(a["x_fp32_speed"], ".2f"),
            *([fmt(a.get("x_dense_speed"), ".2f")] if res.get("dense") else []),
        ]
        if gpu:
            g = a["gpu"]
            cells += (
                [
                    f"{g['latency_b1_ms']:.2f}",
                    f"{g['throughput']:.0f}",
                    f"{g['bf16_latency_b1_ms']:.2f}",
                    f"{g['bf16_throughput']:.0f}",
                ]
                if g
                else ["-"] * 4
            )
        t.add_row(*cells)
    con = console()
    con.print(
        f"{res['run']}: {res['image_size']} px; CPU {res['cpu']} (int8: {res.get('cpu_int8_isa', '?')}; "
        f"{res['threads']} threads)" + (f"; GPU {res['gpu']} (fp32, and bf16 autocast)" if gpu else ""),
        markup=False,
    )
    con.print(t)
    if res.get("dense"):
        ref = ", ".join(
            f"{a['kind']} {a['runtime']} {a['cpu']['throughput_b32']:.1f} img/s" for a in res["dense"]["artifacts"]
        )
        con.print(
            f"x dense speed: b32 throughput over dense run {res['dense']['run']}'s in the same runtime ({ref})",
            markup=False,
        )
    if any(a["kind"] == "sparse" for a in res["artifacts"]):
        con.print("sparse: loaded into dense tensors, so it runs at fp32 speed; its zeros save storage", markup=False)
    for line in res.get("skipped", []):
        con.print(f"not measured: {line}", markup=False)
