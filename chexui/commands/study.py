"""The study commands: `sweep` (a grid of runs as a queue), `compare` (tables across runs), `report`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from chexui import runs as runs_mod
from chexui.commands.common import RunsDir, prepare_data, say
from chexui.headless import HeadlessView, console
from engine.errors import UserError

FORMATS = ("table", "csv", "markdown", "json")
RunRefs = Annotated[list[str], typer.Argument(metavar="RUN...", help="run ids/paths or sweep ids")]


Heatmaps = Annotated[
    int,
    typer.Option(
        "--heatmaps",
        min=0,
        metavar="N",
        help="Grad-CAM agreement with the baseline on N seeded test images (runs the models; 0: none)",
    ),
]
Baseline = Annotated[
    str | None,
    typer.Option("--baseline", metavar="RUN", help="run the others are compared with (default: the first)"),
]


def sweep(
    file: Annotated[str | None, typer.Argument(metavar="[FILE]", help="sweep file (TOML) or NAME")] = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="override for every run: SECTION.KEY=VALUE")] = [],  # noqa: B006
    data: Annotated[str | None, typer.Option("--data", help="NIH-layout dataset dir for every run")] = None,
    parallel: Annotated[
        int | None, typer.Option("--parallel", min=1, help="runs at once (default: the file's)")
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            min=1,
            help="repeat every point with training "
            "seeds 0..N-1 (compare pools them: mean, SD, CIs with seed variation)",
        ),
    ] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="continue a stopped sweep by its id")] = None,
    runs_dir: RunsDir = None,
) -> None:
    """Run a grid over config keys as a queue of runs tagged with the sweep id (Ctrl-C stops it)."""
    from chexui import sweep as sweep_mod

    base = runs_mod.runs_dir(runs_dir)
    if bool(file) == bool(resume):
        raise UserError("give a sweep FILE, or --resume SWEEP_ID (not both)")
    if resume:
        if set_ or data or seeds:
            raise UserError("--resume continues a sweep with its saved settings; --set/--data/--seeds are not allowed")
        sw = sweep_mod.load(resume, base)
    else:
        sw = sweep_mod.load_file(sweep_mod.find_file(str(file)), set_, data, base, seeds)
    if parallel:
        sw.parallel = parallel
    runs_mod.check_new_run(base, sw.name)
    seen = set()
    for p in sw.points:  # build the demo set and caches once, before runs start side by side
        if "compress" in p:
            continue  # (on its parent's data)
        cfg = sw.config(p)
        key = (cfg["data"]["root"], cfg["data"]["image_size"], cfg["data"]["cache"])
        if key not in seen:
            seen.add(key)
            prepare_data(cfg)
    sweep_mod.save(sw, base)
    out = HeadlessView().say
    n_after = sum("compress" in p for p in sw.points)
    out(
        f"sweep {sw.id}: {len(sw.points) - n_after} runs of {sw.preset}"
        + (f" (and presets in its grid) + {n_after} post-training compressions" if n_after else "")
        + f", {sw.parallel} at a time; runs dir {base}"
    )
    out(f"  Ctrl-C stops it; continue with: chexui sweep --resume {sw.id}")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # (SIGINT too: a process started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python then leaves it so; Ctrl-C or `kill -INT` must still stop the sweep cleanly)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        results = sweep_mod.run_queue(sw, base, out)
    except KeyboardInterrupt:
        stopped = sweep_mod.stop_active(sw, base)
        out(
            f"sweep stopped ({', '.join(stopped) or 'no run was running'}); "
            f"continue with: chexui sweep --resume {sw.id}"
        )
        raise typer.Exit(0) from None
    failed = [r for r, st in results.items() if st != "completed"]
    out(
        f"sweep {sw.id}: {len(results) - len(failed)}/{len(results)} runs completed"
        + (f"; not completed: {', '.join(failed)}" if failed else "")
    )
    out(f"  compare: chexui compare {sw.id}")
    raise typer.Exit(1 if failed else 0)


def _run_dirs(refs: list[str], base: Path) -> list[Path]:
    """RUN ids/paths; a sweep id stands for all of its runs that trained a model."""
    from chexui import sweep as sweep_mod

    out: list[Path] = []
    for ref in refs:
        if (sweep_mod.sweeps_dir(base) / f"{ref}.json").is_file():
            sw = sweep_mod.load(ref, base)
            # (its LR range tests train no model: nothing to compare)
            out += [runs_mod.find_run(p["run"], base) for p in sw.points if p["run"] and not p.get("lr_find")]
        else:
            out.append(runs_mod.find_run(ref, base))
    return out


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


def compare_cmd(
    run_refs: RunRefs,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv, markdown or json")] = "table",
    baseline: Baseline = None,
    heatmaps: Heatmaps = 0,
    runs_dir: RunsDir = None,
) -> None:
    """Study tables across runs: per-class test AUROC (with CheXNet's), training time, storage, and
    each run's paired difference from a baseline with its 95 % CI and p-value (same test split)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    dirs, base = _with_baseline(run_refs, baseline, runs_mod.runs_dir(runs_dir))
    from chexui import compare

    tbls = compare.tables(compare.load(dirs), base, heatmaps)
    if fmt == "table":
        con = console()
        for t in compare.rich_tables(tbls):
            con.print(t)
    else:
        say(compare.render(tbls, fmt))


def report_cmd(
    run_refs: RunRefs,
    out: Annotated[str, typer.Option("--out", help="output dir for report.md and the PNG figures")],
    title: Annotated[str, typer.Option("--title")] = "chexui report",
    baseline: Baseline = None,
    heatmaps: Heatmaps = 16,
    runs_dir: RunsDir = None,
) -> None:
    """A Markdown report with the compare tables (paired differences and Grad-CAM agreement included)
    and PNG figures."""
    dirs, base = _with_baseline(run_refs, baseline, runs_mod.runs_dir(runs_dir))
    from chexui import compare, report

    path = report.write_report(compare.load(dirs), Path(out), title, base, heatmaps)
    say(f"wrote {path} and {len(list(path.parent.glob('*.png')))} figures")
