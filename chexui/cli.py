"""The `chexui` command line (typer). Heavy modules (pandas, torch) are imported inside commands.

Exit codes: 0 ok, 1 run failed, 2 bad usage/config/data.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from chexui import presets as presets_mod
from chexui import runs as runs_mod
from chexui.format import csv_cell, duration, fmt, json_text, labelled, with_ci
from chexui.headless import HeadlessView, auc_table, console, epoch_line, plain_mode, table
from engine import config
from engine.errors import UserError
from engine.sanitize import clean

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Train and compress CheXNet-style chest X-ray classifiers. Without a command: the TUI.")
runs_app = typer.Typer(no_args_is_help=True, help="Runs in the runs dir.")
presets_app = typer.Typer(no_args_is_help=True, help="Preset files (TOML).")
data_app = typer.Typer(no_args_is_help=True, help="NIH-layout datasets.")
app.add_typer(runs_app, name="runs")
app.add_typer(presets_app, name="presets")
app.add_typer(data_app, name="data")

err = console(stderr=True)


def say(text: str) -> None:
    """Plain output that may hold run names, paths or preset text: no control characters."""
    print(clean(text))


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"error: {clean(message)}", markup=False)
    return typer.Exit(code)


def find(run_ref: str, runs_dir: Optional[str]) -> Path:
    """RUN (an id, a unique part of one, or a path) in the runs dir, or exit 2 saying why."""
    try:
        return runs_mod.find_run(run_ref, runs_mod.runs_dir(runs_dir))
    except UserError as e:
        raise fail(str(e))


def print_json(obj) -> None:
    print(json_text(obj))


def progress_bar(label: str):
    """A rich progress callback (done, total) in a terminal; occasional plain lines otherwise."""
    if plain_mode(sys.stderr):
        state = {"t": 0.0}

        def cb(done: int, total: int) -> None:
            if done == total or time.monotonic() - state["t"] > 5:
                state["t"] = time.monotonic()
                print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)
        return cb, None
    from rich.progress import Progress
    prog = Progress(console=err, transient=True)
    task = prog.add_task(label, total=None)
    prog.start()
    return (lambda done, total: prog.update(task, completed=done, total=total)), prog


@app.callback(invoke_without_command=True)
def tui(ctx: typer.Context, runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Without a command: the full-screen app (launcher, live monitor, runs browser)."""
    if ctx.invoked_subcommand is None:
        from chexui.tui.app import make_app
        make_app(runs_mod.runs_dir(runs_dir)).run()


# ---------------------------------------------------------------- run

@contextmanager
def progress(label: str):
    """`progress_bar` as a context manager (engine.dataset's progress hook)."""
    cb, prog = progress_bar(label)
    try:
        yield cb
    finally:
        if prog:
            prog.stop()


def _prepare_data(cfg: dict) -> None:
    """Check the dataset (exit 2 on bad data) and build the demo set / cache with a progress bar, so the
    engine (engine.dataset, the same decision) finds them ready."""
    from engine import dataset
    dataset.prepare(cfg["data"], progress)


def _launch_and_follow(cfg: dict, run_dir: Path, node, view: HeadlessView) -> int:
    from chexui.launch import Launcher, run_to_end
    from engine.events import EventTail
    launcher, tail = Launcher(cfg, run_dir, node), EventTail(run_dir / "events.jsonl")
    code = asyncio.run(run_to_end(launcher, lambda: [view.handle(e) for e in tail.poll()]))
    view.close()
    if launcher.log_error:
        view.say(f"warning: {launcher.log_error}")
    return code


@app.command()
def run(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="preset NAME or FILE (default: demo)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override: SECTION.KEY=VALUE (repeatable)"),
    data: Optional[str] = typer.Option(None, "--data", help="NIH-layout dataset dir (sets data.root)"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="processes per node (GPUs)"),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="number of nodes"),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="this node's rank"),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of the rendezvous"),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help="runs dir (default ./runs or $CHEXUI_RUNS_DIR)"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (default: the preset's name)"),
    headless: bool = typer.Option(False, "--headless", help="plain progress output, no TUI"),
    detach: bool = typer.Option(False, "--detach", help="run in the background; follow with `chexui watch`"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue a stopped or failed RUN"),
) -> None:
    """Train a model: resolve the preset, start the engine under torchrun, show progress."""
    from chexui.launch import NodeSpec, save_config
    base = runs_mod.runs_dir(runs_dir)
    node = NodeSpec(nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    try:
        if nnodes > 1 and not rdzv_endpoint:
            raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the node-rank-0 host)")
        if resume:
            if preset or data or nproc:
                raise UserError("--resume continues a run with its saved config; use --set to change keys")
            run_dir = runs_mod.find_run(resume, base)
            if runs_mod.launcher_process(run_dir) is not None:
                raise UserError(f"run {run_dir.name} is running already (chexui stop {run_dir.name})")
            info = runs_mod.load_run(run_dir)
            if info.problem:  # (its events are not a regular file: nothing is appended through a link)
                raise UserError(info.problem)
            if info.status == "completed":
                raise UserError(f"run {run_dir.name} is completed: nothing to resume (start a new run, "
                                "or `chexui eval` / `chexui bench` it)")
            cfg = config.load_run_config(run_dir / "config.toml")
            if set_:
                cfg = config.validate(config.apply_sets(cfg, set_), str(run_dir / "config.toml"))
                save_config(cfg, run_dir)
        else:
            cfg = presets_mod.resolve(preset or "demo", set_, data, nproc, nnodes if nnodes > 1 else None)
        _prepare_data(cfg)
        if not resume:
            run_dir = runs_mod.new_run_dir(base, name or cfg.get("name", "run"))
            save_config(cfg, run_dir)
    except UserError as e:
        raise fail(str(e))
    _start(cfg, run_dir, base, node, headless, detach)


def _start(cfg: dict, run_dir: Path, base: Path, node, headless: bool, detach: bool) -> None:
    """Launch the engine on a prepared run dir: in the background, under the TUI, or followed headless."""
    from chexui.launch import start_detached
    if detach:
        pid = start_detached(run_dir, base, node)
        say(f"started {run_dir.name} in the background (pid {pid})")
        say(f"  follow: chexui watch {run_dir.name} --headless")
        say(f"  stop:   chexui stop {run_dir.name}")
        raise typer.Exit(0)
    if not headless and sys.stdout.isatty():  # without a terminal there is no TUI: plain output
        start_detached(run_dir, base, node)
        from chexui.tui.app import make_app
        make_app(base, run=run_dir).run()
        raise typer.Exit(0)
    runs_mod.write_launcher(run_dir)
    view = HeadlessView()
    view.say(f"run dir: {run_dir}")
    code = _launch_and_follow(cfg, run_dir, node, view)
    raise typer.Exit(code)


@app.command()
def compress(
    run_ref: str = typer.Argument(..., metavar="RUN", help="a finished run (its checkpoints/best.pt)"),
    prune: Optional[str] = typer.Option(None, "--prune", help="one-shot magnitude pruning: 0.5, 0.7 (any "
                                        "sparsity) or adaptive (the per-width targets of the adaptive presets)"),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", min=0, help="masked fine-tune epochs after pruning"),
    ptq: bool = typer.Option(False, "--ptq", help="post-training static int8 quantization (PT2E), calibrated "
                             "on a seeded sample of the training split"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (default: pt-<what it does>)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override: SECTION.KEY=VALUE (repeatable)"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="processes (GPUs) for the fine-tune"),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir"),
    headless: bool = typer.Option(False, "--headless", help="plain progress output, no TUI"),
    detach: bool = typer.Option(False, "--detach", help="run in the background; follow with `chexui watch`"),
) -> None:
    """Compress a trained run after training, as a new run that records its parent: prune its best model
    at once (optionally fine-tune with the masks held) and/or quantize it to int8. Stop and resume it
    like any run (`chexui run --resume`); `chexui compare` puts it beside training-time compression."""
    from chexui.compress import compress_config
    from chexui.launch import NodeSpec, save_config
    base = runs_mod.runs_dir(runs_dir)
    parent = find(run_ref, runs_dir)
    try:
        cfg = compress_config(parent, prune, finetune_epochs, ptq, name, set_, nproc)
        _prepare_data(cfg)
        run_dir = runs_mod.new_run_dir(base, cfg["name"])
        save_config(cfg, run_dir)
    except UserError as e:
        raise fail(str(e))
    _start(cfg, run_dir, base, NodeSpec(), headless, detach)


@app.command()
def watch(run_ref: str = typer.Argument(..., metavar="RUN"),
          headless: bool = typer.Option(False, "--headless", help="text output instead of the TUI"),
          runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Follow a running or finished run from the start of its event stream."""
    from engine.events import follow
    try:
        run_dir = runs_mod.find_run(run_ref, runs_mod.runs_dir(runs_dir))
    except UserError as e:
        raise fail(str(e))
    if not headless and sys.stdout.isatty():  # without a terminal: the text output below
        from chexui.tui.app import make_app
        make_app(runs_mod.runs_dir(runs_dir), run=run_dir).run()
        raise typer.Exit(0)
    view = HeadlessView()
    alive = lambda: runs_mod.launcher_process(run_dir) is not None  # noqa: E731
    for e in follow(run_dir / "events.jsonl", stop=lambda: not alive()):
        view.handle(e)
    view.close()
    info = runs_mod.load_run(run_dir)
    raise typer.Exit(runs_mod.exit_code(info.status, info.events))


@app.command()
def stop(run_ref: str = typer.Argument(..., metavar="RUN"),
         runs_dir: Optional[str] = typer.Option(None, "--runs-dir"),
         timeout: float = typer.Option(120.0, help="seconds to wait for the run to end")) -> None:
    """Stop a running run cleanly: checkpoint kept, status "stopped", no process left."""
    try:
        run_dir = runs_mod.find_run(run_ref, runs_mod.runs_dir(runs_dir))
        if not runs_mod.stop_run(run_dir, timeout):
            raise fail(f"run {run_dir.name} did not stop within {timeout:.0f}s", 1)
    except UserError as e:
        raise fail(str(e))
    say(f"{run_dir.name}: {runs_mod.load_run(run_dir).status}")


# ---------------------------------------------------------------- runs

@runs_app.command("list")
def runs_list(as_json: bool = typer.Option(False, "--json"), runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Runs with status, preset, world size, epochs, the shipped model's validation AUROC (its best epoch)
    and test AUROC with its 95 % CI, and duration."""
    rows = [r.summary() for r in runs_mod.list_runs(runs_mod.runs_dir(runs_dir))]
    if as_json:
        return print_json(rows)
    t = table("run", "status", "preset", "world", "epochs", "val AUC at best epoch", "test AUC (labels) 95% CI", "time")
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get("sweep") or "", []).append(r)
    for sweep, members in groups.items():
        if sweep:
            t.add_row(f"sweep {sweep}:", "", "", "", "", "", "", "")
        for r in members:
            best = f"{fmt(r['best_val_auc'])} (ep {r['best_epoch']})" if r.get("best_epoch") is not None else "-"
            t.add_row(r["id"], r["status"], str(r["preset"] or "-"), str(r["world_size"] or "-"), str(r["epochs"]),
                      best, with_ci(labelled(r["test_auc"], r.get("test_labels")), r.get("test_auc_ci")),
                      duration(r["duration_s"]))
    console().print(t)


@runs_app.command("show")
def runs_show(run_ref: str = typer.Argument(..., metavar="RUN"), as_json: bool = typer.Option(False, "--json"),
              runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """One run: summary, per-epoch figures and the test AUROC table."""
    try:
        info = runs_mod.load_run(runs_mod.find_run(run_ref, runs_mod.runs_dir(runs_dir)))
    except UserError as e:
        raise fail(str(e))
    summary = info.summary()
    epochs = [e for e in info.events if e["type"] == "epoch_ended"]
    tests = [e for e in info.events if e["type"] == "evaluated"]
    errors = [e["message"] for e in info.events if e["type"] == "error"]
    if as_json:
        return print_json({**summary, "epochs_detail": epochs, "evaluations": tests, "errors": errors})
    con = console()
    for k, v in summary.items():
        con.print(f"{k}: {v}")
    for e in epochs:
        con.print(epoch_line(e))
    for e in tests:
        con.print(auc_table(e, f"{e['split']} AUROC ({e['n']} images)"))
    for m in errors:
        con.print(f"error: {m}", markup=False)


# ---------------------------------------------------------------- eval

@app.command("eval")
def eval_cmd(run_ref: str = typer.Argument(..., metavar="RUN"),
             data: str = typer.Option(..., "--data", help="NIH-layout dataset dir"),
             split: str = typer.Option("test", "--split", help="test (the run's split rule) or all"),
             as_json: bool = typer.Option(False, "--json"),
             trust: bool = typer.Option(False, "--trust", help="load an int8 artifact whose sha256 does not match "
                                        "the one recorded at export (it may run code)"),
             runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Evaluate what a trained run ships on any NIH-layout dataset: per-class AUROC with 95 % CIs.

    The best fp32 model; for a QAT run, its int8 artifact and its fake-quantized best model."""
    if split not in ("test", "all"):
        raise fail(f"--split {split!r}: expected test or all")
    run_dir = find(run_ref, runs_dir)
    from engine import nih
    try:
        nih.find_csv(Path(data))  # a bad --data fails here, before torch is imported
        from engine.evaluate import evaluate_run
        res = evaluate_run(run_dir, data, split, trust)
    except UserError as e:
        raise fail(str(e))
    if as_json:
        return print_json(res)
    con = console()
    for m in res["models"]:
        con.print(auc_table(m, f"{m['model']}: {res['split']} AUROC on {data} ({res['n']} images)"))


@app.command("predict")
def predict_cmd(run_ref: str = typer.Argument(..., metavar="RUN"),
                paths: list[str] = typer.Argument(..., metavar="PATH...", help="image files or directories "
                                                  "(PNG, JPEG, DICOM)"),
                artifact: Optional[str] = typer.Option(None, "--artifact", help="fp32 | sparse | int8 | onnx_fp32 "
                                                       "| onnx_int8 (default: what the run ships)"),
                fmt_: str = typer.Option("table", "--format", help="table | csv | json"),
                calibrate: bool = typer.Option(False, "--calibrate", help="show probabilities after the run's "
                                               "per-label temperature scaling (fitted on validation)"),
                trust: bool = typer.Option(False, "--trust", help="load an artifact whose sha256 does not match"),
                runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """The 14 probabilities per image from a trained run's model, and the positive labels at the run's
    operating points (chosen on validation); unreadable files are listed and skipped."""
    from engine.labels import LABELS
    if fmt_ not in ("table", "csv", "json"):
        raise fail(f"--format {fmt_!r}: expected table, csv or json")
    run_dir = find(run_ref, runs_dir)
    try:
        from engine.predict import predict
        with progress("predicting") as cb:
            res = predict(run_dir, paths, artifact, trust, progress=cb, calibrate=calibrate)
    except UserError as e:
        raise fail(str(e))
    for b in res["unreadable"]:
        err.print(f"skipped: {clean(b['reason'])}", markup=False)
    if not res["rows"]:
        raise fail(f"none of the {len(res['unreadable'])} files could be read")
    if fmt_ == "json":
        print_json(res)
    elif fmt_ == "csv":
        import csv
        w = csv.writer(sys.stdout)
        w.writerow(["file", *LABELS, "positive"])
        for r in res["rows"]:
            w.writerow([csv_cell(clean(r["file"])), *(f"{p:.6f}" for p in r["probs"]), "|".join(r["positive"])])
    else:
        t = table("file", *LABELS, "positive")
        for r in res["rows"]:  # "+": a positive call at the run's operating point
            t.add_row(clean(r["file"]), *(f"{p:.3f}" + ("+" if c else "") for p, c in zip(r["probs"], r["calls"])),
                      ", ".join(r["positive"]) or ("-" if res["operating_point"] else "(no thresholds)"))
        con = console()
        op = res["operating_point"]
        con.print(f"{res['run']}: {res['model']}, {res['image_size']} px; "
                  + (f"calls at the run's {op['rule']} thresholds (chosen on validation)" if op else
                     "no operating points recorded: probabilities only")
                  + ("; probabilities temperature-scaled" if res["calibrated"] else ""), markup=False)
        con.print(t)


@app.command("explain")
def explain_cmd(run_ref: str = typer.Argument(..., metavar="RUN"),
                paths: list[str] = typer.Argument(..., metavar="IMAGE...", help="image files or directories"),
                out: Optional[str] = typer.Option(None, "--out", help="directory for the PNGs and agreement.json "
                                                  "(default: RUN/explain, listed in the TUI's runs browser)"),
                labels: str = typer.Option("top3", "--labels", help="top3 | all | NAME,NAME..."),
                artifacts: Optional[str] = typer.Option(None, "--artifacts", help="fp32,sparse,int8 (default: "
                                                        "all the run has; int8 = a QAT run's fake-quantized twin)"),
                baseline: Optional[str] = typer.Option(None, "--baseline", help="RUN whose best model is the "
                                                       "baseline (default: a compress run's parent)"),
                layer: Optional[str] = typer.Option(None, "--layer", help="block whose activations are mapped "
                                                    "(default: the last, layer4 / features; e.g. layer3 for finer maps)"),
                trust: bool = typer.Option(False, "--trust", help="load an artifact whose sha256 does not match"),
                runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Grad-CAM heatmaps of a run's models on images, side by side, with each model's agreement with the
    baseline (Pearson r of the maps, IoU of their top 10 %)."""
    run_dir = find(run_ref, runs_dir)
    base_dir = find(baseline, runs_dir) if baseline else None
    try:
        from engine.explain import explain_run
        res = explain_run(run_dir, paths, Path(out) if out else run_dir / "explain", labels,
                          artifacts.split(",") if artifacts else None, trust, base_dir, layer)
    except UserError as e:
        raise fail(str(e))
    for line in res["skipped"]:
        err.print(f"skipped: {clean(line)}", markup=False)
    if not res["records"]:
        raise fail("no image could be read")
    t = table("image", "label", "artifact", "probability", "r (vs baseline)", "top-10% IoU")
    for r in res["records"]:
        t.add_row(clean(Path(r["image"]).name), r["label"], r["artifact"], f"{r['probability']:.3f}",
                  fmt(r.get("pearson"), ".3f"), fmt(r.get("top_iou"), ".3f"))
    console().print(t)
    say(f"figures and agreement.json in {res['out']}")


@app.command("bench")
def bench_cmd(run_ref: str = typer.Argument(..., metavar="RUN"), as_json: bool = typer.Option(False, "--json"),
              trust: bool = typer.Option(False, "--trust", help="load artifacts whose sha256 does not match "
                                         "the one recorded at export (they may run code)"),
              compile_: bool = typer.Option(True, "--compile/--no-compile",
                                            help="also time the fp32 and int8 models compiled (torch.compile)"),
              runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Inference benchmark of the run's exported models: bytes, test AUROC, CPU (and GPU) speed, eager
    and compiled; the speed-up is against the fastest fp32 row."""
    run_dir = find(run_ref, runs_dir)
    try:
        size = config.load_run_config(run_dir / "config.toml")["data"]["image_size"]
        from engine.infer_bench import bench_run
        res = bench_run(run_dir, size, trust, compile_)
    except UserError as e:
        raise fail(str(e))
    if as_json:
        return print_json(res)
    gpu = res["gpu"] is not None
    cols = ["model", "runtime", "file", "bytes", "gzip bytes", "x fp32", "test AUROC", "CPU b1 ms", "CPU b32 img/s",
            "x fp32 speed"]
    t = table(*cols, *(["GPU b1 ms", "GPU b256 img/s", "bf16 b1 ms", "bf16 b256 img/s"] if gpu else []))
    for a in res["artifacts"]:
        cells = [a["kind"], a["runtime"], a["path"], f"{a['bytes']:,}", f"{a['gzip_bytes']:,}", fmt(a["x_fp32"], ".2f"),
                 fmt(a["test_auc_mean"]), f"{a['cpu']['latency_b1_ms']:.1f}", f"{a['cpu']['throughput_b32']:.1f}",
                 fmt(a["x_fp32_speed"], ".2f")]
        if gpu:
            g = a["gpu"]
            cells += [f"{g['latency_b1_ms']:.2f}", f"{g['throughput']:.0f}", f"{g['bf16_latency_b1_ms']:.2f}",
                      f"{g['bf16_throughput']:.0f}"] if g else ["-"] * 4
        t.add_row(*cells)
    con = console()
    con.print(f"{res['run']}: {res['image_size']} px; CPU {res['cpu']} (int8: {res.get('cpu_int8_isa', '?')}; {res['threads']} threads)"
              + (f"; GPU {res['gpu']} (fp32, and bf16 autocast)" if gpu else ""), markup=False)
    con.print(t)
    if any(a["kind"] == "sparse" for a in res["artifacts"]):
        con.print("sparse: loaded into dense tensors, so it runs at fp32 speed; its zeros save storage", markup=False)
    for line in res.get("skipped", []):
        con.print(f"not measured: {line}", markup=False)


# ---------------------------------------------------------------- sweeps and study tables

def _run_dirs(refs: list[str], base: Path) -> list[Path]:
    """RUN ids/paths; a sweep id stands for all of its runs."""
    from chexui import sweep as sweep_mod
    out: list[Path] = []
    for ref in refs:
        if (sweep_mod.sweeps_dir(base) / f"{ref}.json").is_file():
            sw = sweep_mod.load(ref, base)
            out += [runs_mod.find_run(p["run"], base) for p in sw.points if p["run"]]
        else:
            out.append(runs_mod.find_run(ref, base))
    return out


@app.command()
def sweep(file: Optional[str] = typer.Argument(None, metavar="[FILE]", help="sweep file (TOML) or NAME"),
          set_: list[str] = typer.Option([], "--set", "-s", help="override for every run: SECTION.KEY=VALUE"),
          data: Optional[str] = typer.Option(None, "--data", help="NIH-layout dataset dir for every run"),
          parallel: Optional[int] = typer.Option(None, "--parallel", min=1, help="runs at once (default: the file's)"),
          seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="repeat every point with training seeds "
                                              "0..N-1 (compare pools them: mean, SD, CIs with seed variation)"),
          resume: Optional[str] = typer.Option(None, "--resume", help="continue a stopped sweep by its id"),
          runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Run a grid over config keys as a queue of runs tagged with the sweep id (Ctrl-C stops it)."""
    from chexui import sweep as sweep_mod
    base = runs_mod.runs_dir(runs_dir)
    try:
        if bool(file) == bool(resume):
            raise UserError("give a sweep FILE, or --resume SWEEP_ID (not both)")
        if resume:
            if set_ or data or seeds:
                raise UserError("--resume continues a sweep with its saved settings; --set/--data/--seeds are not allowed")
            sw = sweep_mod.load(resume, base)
        else:
            sw = sweep_mod.load_file(sweep_mod.find_file(file), set_, data, base, seeds)
        if parallel:
            sw.parallel = parallel
        seen = set()
        for p in sw.points:  # build the demo set and caches once, before runs start side by side
            if "compress" in p:
                continue  # (on its parent's data)
            cfg = sw.config(p)
            key = (cfg["data"]["root"], cfg["data"]["image_size"], cfg["data"]["cache"])
            if key not in seen:
                seen.add(key)
                _prepare_data(cfg)
        sweep_mod.save(sw, base)
    except UserError as e:
        raise fail(str(e))
    say = HeadlessView().say
    n_after = sum("compress" in p for p in sw.points)
    say(f"sweep {sw.id}: {len(sw.points) - n_after} runs of {sw.preset}"
        + (f" (and presets in its grid) + {n_after} post-training compressions" if n_after else "")
        + f", {sw.parallel} at a time; runs dir {base}")
    say(f"  Ctrl-C stops it; continue with: chexui sweep --resume {sw.id}")

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    # (SIGINT too: a process started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python then leaves it so; Ctrl-C or `kill -INT` must still stop the sweep cleanly)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        results = sweep_mod.run_queue(sw, base, say)
    except KeyboardInterrupt:
        stopped = sweep_mod.stop_active(sw, base)
        say(f"sweep stopped ({', '.join(stopped) or 'no run was running'}); "
            f"continue with: chexui sweep --resume {sw.id}")
        raise typer.Exit(0)
    except UserError as e:
        raise fail(str(e))
    failed = [r for r, st in results.items() if st != "completed"]
    say(f"sweep {sw.id}: {len(results) - len(failed)}/{len(results)} runs completed"
        + (f"; not completed: {', '.join(failed)}" if failed else ""))
    say(f"  compare: chexui compare {sw.id}")
    raise typer.Exit(1 if failed else 0)


FORMATS = ("table", "csv", "markdown", "json")


def _with_baseline(refs: list[str], baseline: str | None, base_dir: Path) -> tuple[list[Path], int]:
    """The run dirs, and the baseline's position among them (added first when not one of them)."""
    dirs = _run_dirs(refs, base_dir)
    if baseline is None:
        return dirs, 0
    b = runs_mod.find_run(baseline, base_dir).resolve()
    resolved = [d.resolve() for d in dirs]
    if b in resolved:
        return dirs, resolved.index(b)
    return [b, *dirs], 0


@app.command("compare")
def compare_cmd(run_refs: list[str] = typer.Argument(..., metavar="RUN...", help="run ids/paths or sweep ids"),
                fmt: str = typer.Option("table", "--format", "-f", help="table, csv, markdown or json"),
                baseline: Optional[str] = typer.Option(None, "--baseline", metavar="RUN",
                                                       help="run the others are compared with (default: the first)"),
                heatmaps: int = typer.Option(0, "--heatmaps", min=0, metavar="N", help="also Grad-CAM agreement "
                                             "with the baseline on N seeded test images (runs the models)"),
                runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """Study tables across runs: per-class test AUROC (with CheXNet's), training time, storage, and
    each run's paired difference from a baseline with its 95 % CI and p-value (same test split)."""
    if fmt not in FORMATS:
        raise fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    try:
        dirs, base = _with_baseline(run_refs, baseline, runs_mod.runs_dir(runs_dir))
    except UserError as e:
        raise fail(str(e))
    from chexui import compare
    try:
        tbls = compare.tables(compare.load(dirs), base, heatmaps)
    except UserError as e:
        raise fail(str(e))
    if fmt == "table":
        con = console()
        for t in compare.rich_tables(tbls):
            con.print(t)
    else:
        say(compare.render(tbls, fmt))


@app.command("report")
def report_cmd(run_refs: list[str] = typer.Argument(..., metavar="RUN...", help="run ids/paths or sweep ids"),
               out: str = typer.Option(..., "--out", help="output dir for report.md and the PNG figures"),
               title: str = typer.Option("chexui report", "--title"),
               baseline: Optional[str] = typer.Option(None, "--baseline", metavar="RUN",
                                                      help="run the others are compared with (default: the first)"),
               heatmaps: int = typer.Option(16, "--heatmaps", min=0, metavar="N", help="Grad-CAM agreement "
                                            "with the baseline on N seeded test images (0: none)"),
               runs_dir: Optional[str] = typer.Option(None, "--runs-dir")) -> None:
    """A Markdown report with the compare tables (paired differences and Grad-CAM agreement included)
    and PNG figures."""
    try:
        dirs, base = _with_baseline(run_refs, baseline, runs_mod.runs_dir(runs_dir))
    except UserError as e:
        raise fail(str(e))
    from chexui import compare, report
    try:
        path = report.write_report(compare.load(dirs), Path(out), title, base, heatmaps)
    except UserError as e:
        raise fail(str(e))
    say(f"wrote {path} and {len(list(path.parent.glob('*.png')))} figures")


# ---------------------------------------------------------------- presets

@presets_app.command("list")
def presets_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Presets reachable by name, with the directory each comes from."""
    items = presets_mod.available()
    if as_json:
        return print_json([{"name": p.name, "source": p.source, "path": clean(str(p.path)), "description": p.description}
                           for p in items])
    t = table("name", "source", "description")
    for p in items:
        t.add_row(p.name, f"{p.source}: {p.path.parent}", p.description)
    console().print(t)


@presets_app.command("show")
def presets_show(name: str, set_: list[str] = typer.Option([], "--set", "-s")) -> None:
    """Print the fully resolved config of a preset (extends and --set applied) as TOML."""
    try:
        print(config.dumps(presets_mod.resolve(name, set_)), end="")
    except UserError as e:
        raise fail(str(e))


@presets_app.command("validate")
def presets_validate(file: str) -> None:
    """Check one preset file: keys, types, ranges and its extends chain."""
    try:
        presets_mod.resolve(file)
    except UserError as e:
        raise fail(str(e))
    say(f"{file}: ok")


# ---------------------------------------------------------------- data

@data_app.command("demo")
def data_demo(out: str, images: int = typer.Option(2000, "--images", min=10),
              size: int = typer.Option(128, "--size", min=16, max=4096),
              seed: int = typer.Option(0, "--seed", min=0)) -> None:
    """Generate the synthetic demo dataset (chest radiograph phantoms) in the NIH layout."""
    from engine import demo
    cb, prog = progress_bar(f"drawing {images} phantoms at {size} px")
    t0 = time.perf_counter()
    try:
        demo.generate(out, images, size, seed, progress=cb)
    finally:
        if prog:
            prog.stop()
    say(f"{out}: {images} images at {size} px in {time.perf_counter() - t0:.1f}s (synthetic; see README.txt)")


@data_app.command("check")
def data_check(root: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Validate an NIH-layout dataset and print its summary (exit 2 on problems)."""
    from engine import nih
    try:
        s = nih.check_dataset(root)
    except UserError as e:
        raise fail(str(e))
    if as_json:
        print_json(s)
    else:
        con = console()
        con.print(f"{s['root']}: {s['images']} images, {s['patients']} patients ({s['csv']})")
        con.print("labels: " + ", ".join(f"{k} {v}" for k, v in s["label_counts"].items()))
        con.print("views: " + (", ".join(f"{k} {v}" for k, v in s["views"].items()) or "-"))
        con.print("image formats: " + ", ".join(f"{k} ({v})" for k, v in s["image_formats"].items()))
        con.print(f"patient split (0.1/0.2, seed 0): {s['split']}; patients in two splits: {s['leakage_patients']}")
        con.print(f"official split lists: {'yes' if s['official_split'] else 'no'}")
    if s["problems"]:
        for p in s["problems"][:10]:
            err.print(f"problem: {p}", markup=False)
        raise typer.Exit(2)


@data_app.command("prepare")
def data_prepare(root: str, size: int = typer.Option(..., "--size", min=16, max=2048),
                 workers: int = typer.Option(0, "--workers", min=0, help="processes (0: all cores)"),
                 force: bool = typer.Option(False, "--force", help="rebuild even if current")) -> None:
    """Decode every image once into the uint8 cache used for fast training."""
    from engine import cache, nih
    try:
        index = nih.index_dataset(root)
        cb, prog = progress_bar(f"decoding {len(index)} images at {size} px")
        t0 = time.perf_counter()
        try:
            cache.prepare(index, size, workers=workers or None, progress=cb, force=force)
        finally:
            if prog:
                prog.stop()
    except UserError as e:
        raise fail(str(e))
    dt = time.perf_counter() - t0
    say(f"cache: {cache.cache_paths(index, size)[0]} ({len(index)} images, {dt:.1f}s)")


def main() -> None:
    try:
        app()
    except UserError as e:  # a user error raised outside a command's own handling
        err.print(f"error: {e}", markup=False)
        sys.exit(2)
    except SystemExit as e:
        if "torch" not in sys.modules:
            raise
        # a command that loaded torch (eval, bench, predict...): skip the interpreter's teardown of
        # its modules, over a second per process (measured); output is flushed, files are closed
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
