"""`chexui runs list|show`: the runs in a runs dir, and one run whole."""

from __future__ import annotations

import typer

from chexui import runs as runs_mod
from chexui.commands.common import AsJson, RunRef, RunsDir, find, print_json
from chexui.format import duration, fmt, labelled, with_ci
from chexui.headless import auc_table, console, epoch_line, lr_suggestion_text, table

app = typer.Typer(no_args_is_help=True, help="Runs in the runs dir.")


@app.command("list")
def runs_list(as_json: AsJson = False, runs_dir: RunsDir = None) -> None:
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
            status = r["status"]
            if r.get("slurm_job"):  # the scheduler's job and its state (chexui run --slurm)
                status += f"\njob {r['slurm_job']} {r['slurm_state'] or '?'}"
            t.add_row(
                r["id"],
                status,
                str(r["preset"] or "-"),
                str(r["world_size"] or "-"),
                str(r["epochs"]),
                best,
                with_ci(labelled(r["test_auc"], r.get("test_labels")), r.get("test_auc_ci")),
                duration(r["duration_s"]),
            )
    console().print(t)


@app.command("show")
def runs_show(run_ref: RunRef, as_json: AsJson = False, runs_dir: RunsDir = None) -> None:
    """One run: summary, per-epoch figures and the test AUROC table."""
    info = runs_mod.load_run(find(run_ref, runs_dir))
    summary = info.summary()
    epochs = info.state.epochs
    tests = [e for e in info.events if e["type"] == "evaluated"]
    errors = [e["message"] for e in info.events if e["type"] == "error"]
    if as_json:
        return print_json(
            {
                **summary,
                "epochs_detail": epochs,
                "evaluations": tests,
                "errors": errors,
                **({"lr_suggested": info.state.lr_suggested} if info.state.lr_suggested else {}),
            }
        )
    con = console()
    for k, v in summary.items():
        con.print(f"{k}: {v}")
    for e in epochs:
        con.print(epoch_line(e))
    for e in tests:
        con.print(auc_table(e, f"{e['split']} AUROC ({e['n']} images)"))
    if info.state.lr_suggested:  # an LR range test (`chexui lr-find`)
        con.print(lr_suggestion_text(info.state.lr_suggested))
    for m in errors:
        con.print(f"error: {m}", markup=False)
