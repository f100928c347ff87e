"""Sweeps: a grid over config keys, run as a queue of ordinary runs tagged with the sweep id.

A sweep file is TOML data:

    description = "The study's ResNet50 grid"
    preset = "study/resnet50"            # what every run starts from
    parallel = 1                         # runs at once (each with its own GPUs when there are GPUs)
    [set]                                # fixed overrides for every run (optional)
    "train.epochs" = 2
    [grid]                               # every combination, first key varying slowest
    "train.lr" = [0.01, 0.001]
    "train.batch_size" = [16, 32, 64]

`seeds = [0, 1, 2]` (or `chexui sweep --seeds N`: seeds 0..N-1) repeats every grid point with each
training seed (`train.seed`; the data split's seed stays, so every run is tested on the same images):
`chexui compare` pools the runs that differ only by seed into one arm. The study sweeps run 3 seeds.

The grid may vary the preset itself (`preset = ["study/densenet121", "study/densenet121-prune70"]`, the
`[set]` overrides apply to each). `[[compress]]` entries (`prune = 0.7` or `prune_channels = 0.5`,
`finetune_epochs = 2`, `distill = true`, `ptq = true`, as `chexui compress` takes them) add post-training
compression runs: each entry is applied to every grid run without compression once that run has completed
(a run that did not complete has none), so one sweep compares compressing during and after training.

`lr_find = true` finds each configuration's LR first: an LR range test (`chexui lr-find`) of every grid
point without its seed, and the point's runs (every seed) train at its suggestion (`train.lr` from its
`lr_suggested`, in place of the preset's); a point whose test suggests nothing is skipped. `chexui
compare SWEEP` leaves the range tests out (they train no model).

Its state lives in `<runs dir>/.sweeps/<id>.json`: the points and the run each one got. Starting the
sweep again with `--resume ID` skips completed runs, resumes stopped or failed ones from their last
checkpoint and starts the rest.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chexui import presets as presets_mod
from chexui import runs as runs_mod
from chexui.format import labelled, short_key, slug
from chexui.launch import gpu_count
from engine import config
from engine.errors import ConfigError, UserError
from engine.fsutil import write_atomic

FILE_KEYS = {"description", "preset", "parallel", "set", "grid", "name", "compress", "seeds", "lr_find"}
SEED_KEY = "train.seed"
COMPRESS_KEYS = {"prune", "prune_channels", "finetune_epochs", "ptq", "distill"}


@dataclass
class Sweep:
    id: str
    name: str
    preset: str
    grid: dict[str, list]
    fixed: dict[str, Any]
    parallel: int = 1
    # {"overrides": {key: value}, "run": id | None}; a compress point also has "compress" (its entry) and
    # "parent" (the index of the grid point it compresses); with `lr_find = true`, an LR range test point
    # has "lr_find": true and the grid points it serves "lr_from" (its index)
    points: list[dict] = field(default_factory=list)

    def sets(self, overrides: dict[str, Any]) -> list[str]:
        return [f"{k}={_toml_value(v)}" for k, v in {**self.fixed, **overrides}.items() if k != "preset"]

    def config(self, point: dict, base: Path | None = None) -> dict[str, Any]:
        """The full run config of one point (ConfigError naming the key when invalid); a compress
        point's is made from its parent's run (in `base`), which must have completed."""
        if "compress" in point:
            from chexui.compress import compress_config

            assert base is not None, "a compress point's config needs the runs dir of its parent"

            c = point["compress"]
            parent = runs_mod.find_run(self.points[point["parent"]]["run"], base)
            return compress_config(
                parent,
                None if c.get("prune") is None else str(c["prune"]),
                c.get("finetune_epochs", 0),
                c.get("ptq", False),
                None,
                [],
                None,
                None if c.get("prune_channels") is None else str(c["prune_channels"]),
                bool(c.get("distill", False)),
            )
        cfg = presets_mod.resolve(point["overrides"].get("preset", self.preset), self.sets(point["overrides"]))
        if point.get("lr_find"):
            from chexui.lr_find import as_test

            return as_test(cfg)
        if "lr_from" in point and base is not None:
            cfg["train"]["lr"] = suggested_lr(self.points[point["lr_from"]], base)
        return cfg


def suggested_lr(point: dict, base: Path) -> float:
    """The `train.lr` an LR range test point's run suggested; a `UserError` when it has none."""
    run_dir = runs_mod.find_run(point["run"], base) if point["run"] else None
    found = runs_mod.load_run(run_dir).state.lr_suggested if run_dir else None
    if not found or not isinstance(found.get("train_lr"), (int, float)) or not found["train_lr"] > 0:
        raise UserError(f"the LR range test {point['run']} suggested no LR")
    return float(found["train_lr"])


def _toml_value(v: Any) -> str:
    return config.dumps({"v": v}).split("=", 1)[1].strip()


def sweeps_dir(base: Path) -> Path:
    return base / ".sweeps"


def find_file(ref: str) -> Path:
    """A sweep FILE path, or a NAME looked up like presets (NAME.sweep.toml in the preset dirs)."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    for d, _ in presets_mod.search_dirs():
        cand = d / f"{ref}.sweep.toml"
        if cand.is_file():
            return cand
    raise ConfigError(f"sweep '{ref}': no such file, and no {ref}.sweep.toml in the preset dirs")


def load_file(path: Path, extra_sets: list[str], data: str | None, base: Path, seeds: int | None = None) -> Sweep:
    """Parse and check a sweep file; every grid point must resolve to a valid run config. `seeds` (the
    CLI's --seeds N) replaces the file's `seeds` with 0..N-1."""
    raw = config.load_toml(path)
    for k in raw:
        if k not in FILE_KEYS:
            raise ConfigError(f"{path}: unknown key '{k}'; allowed: {', '.join(sorted(FILE_KEYS))}")
    grid, fixed = raw.get("grid", {}), raw.get("set", {})
    if not isinstance(raw.get("preset"), str) and "preset" not in grid:
        raise ConfigError(f"{path}: key 'preset' (a preset NAME or FILE) is required, or a grid over 'preset'")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: a [grid] table with at least one key is required")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid key '{k}': expected a non-empty list of values")
    seed_list = list(range(seeds)) if seeds is not None else raw.get("seeds")
    if seed_list is not None:
        if (
            not isinstance(seed_list, list)
            or not seed_list
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seed_list)
            or len(set(seed_list)) < len(seed_list)
        ):
            raise ConfigError(f"{path}: key 'seeds' = {seed_list!r}: expected a list of distinct integers >= 0")
        if SEED_KEY in grid:
            raise ConfigError(f"{path}: 'seeds' and a grid over '{SEED_KEY}' say the same thing: keep one")
        grid = {SEED_KEY: seed_list, **grid}  # first: every configuration's seed 0, then its seed 1, ...
    parallel = raw.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ConfigError(f"{path}: key 'parallel' = {parallel!r}: expected an integer >= 1")

    def local(preset: str) -> str:
        return (
            str((path.parent / preset).resolve())
            if preset.endswith(".toml") and not Path(preset).is_absolute()
            else preset
        )

    preset = local(raw.get("preset") or grid["preset"][0])
    if "preset" in grid:
        grid = {**grid, "preset": [local(str(v)) for v in grid["preset"]]}
    variants = raw.get("compress", [])
    if not isinstance(variants, list) or not all(
        isinstance(v, dict) and v and set(v) <= COMPRESS_KEYS for v in variants
    ):
        raise ConfigError(
            f"{path}: key 'compress': expected [[compress]] tables with keys from {', '.join(sorted(COMPRESS_KEYS))}"
        )
    name = raw.get("name") or path.name.removesuffix(".toml").removesuffix(".sweep")
    sweep_id = new_id(base, name)
    fixed = {**fixed, **{k: v for item in extra_sets for k, v in config.flatten(config.parse_set(item)).items()}}
    if data is not None:
        fixed["data.root"] = str(Path(data).expanduser().resolve())
    lr_find = raw.get("lr_find", False)
    if not isinstance(lr_find, bool):
        raise ConfigError(f"{path}: key 'lr_find' = {lr_find!r}: expected true or false")
    if lr_find and "train.lr" in {**grid, **fixed}:
        raise ConfigError(f"{path}: 'lr_find = true' and a 'train.lr' in [grid] or [set] say the same thing: keep one")
    sw = Sweep(sweep_id, name, preset, grid, fixed, parallel)
    keys = list(grid)
    tests: dict[str, int] = {}  # a configuration without its seed -> its LR range test point
    for combo in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, combo))
        extra: dict[str, Any] = {}
        if lr_find:
            unseeded = {k: v for k, v in overrides.items() if k != SEED_KEY}
            key = json.dumps(unseeded, sort_keys=True)
            if key not in tests:
                tests[key] = len(sw.points)
                sw.points.append({"overrides": unseeded, "run": None, "lr_find": True})
                sw.config(sw.points[-1])
            extra = {"lr_from": tests[key]}
        sw.points.append({"overrides": overrides, "run": None, **extra})
        cfg = sw.config(sw.points[-1])  # every point must resolve before anything starts
        dense, parent = not (cfg["prune"]["enabled"] or cfg["quantize"]["enabled"]), len(sw.points) - 1
        for v in variants if dense else []:
            _check_variant(v, cfg["model"]["arch"], path)
            sw.points.append({"overrides": {}, "run": None, "compress": v, "parent": parent})
    return sw


def _check_variant(v: dict, arch: str, path: Path) -> None:
    from chexui.compress import channel_section, prune_section

    try:
        if "prune" in v and "prune_channels" in v:
            raise UserError("prune and prune_channels: one pruning at a time")
        if "prune" in v:
            prune_section(str(v["prune"]), arch)
        elif "prune_channels" in v:
            channel_section(str(v["prune_channels"]))
        elif v.get("finetune_epochs"):
            raise UserError("finetune_epochs needs prune or prune_channels (a masked fine-tune)")
        if not isinstance(v.get("finetune_epochs", 0), int) or not all(
            isinstance(v.get(k, False), bool) for k in ("ptq", "distill")
        ):
            raise UserError("finetune_epochs is an integer, ptq and distill true or false")
        if v.get("distill") and not v.get("finetune_epochs"):
            raise UserError("distill needs finetune_epochs")
        if "prune" not in v and "prune_channels" not in v and not v.get("ptq"):
            raise UserError("nothing to do: give prune, prune_channels and/or ptq = true")
    except UserError as e:
        raise ConfigError(f"{path}: [[compress]] {v}: {e}") from None


def new_id(base: Path, name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = slug(name, "sweep")
    k = 0
    while (sweeps_dir(base) / f"{stamp}-{safe}{f'-{k}' if k else ''}.json").exists():
        k += 1
    return f"{stamp}-{safe}{f'-{k}' if k else ''}"


def save(sw: Sweep, base: Path) -> None:
    write_atomic(sweeps_dir(base) / f"{sw.id}.json", json.dumps(sw.__dict__, indent=2))


def load(sweep_id: str, base: Path) -> Sweep:
    path = sweeps_dir(base) / f"{sweep_id}.json"
    if not path.is_file():
        known = sorted(p.stem for p in sweeps_dir(base).glob("*.json")) if sweeps_dir(base).is_dir() else []
        raise UserError(
            f"sweep '{sweep_id}' not found in {sweeps_dir(base)}" + (f"; known: {', '.join(known)}" if known else "")
        )
    return Sweep(**json.loads(path.read_text()))


def point_label(point: dict[str, Any]) -> str:
    if "compress" in point:
        return (
            "compress " + " ".join(f"{k}={v}" for k, v in point["compress"].items()) + f" of run {point['parent'] + 1}"
        )
    text = " ".join(f"{short_key(k)}={v}" for k, v in point["overrides"].items())
    if point.get("lr_find"):
        return f"LR range test {text}".rstrip()
    return text + (f" LR from run {point['lr_from'] + 1}" if "lr_from" in point else "")


def waits_on(point: dict) -> int | None:
    """The point whose run must complete before this one starts: a compress point's parent, or the LR
    range test whose suggestion a point trains at."""
    return point.get("parent", point.get("lr_from"))


def gpu_slots(parallel: int, nproc: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each of `parallel` run slots; None everywhere on a CPU-only machine."""
    n = gpu_count()
    if n == 0:
        return [None] * parallel
    if parallel * nproc > n:
        raise UserError(
            f"parallel = {parallel} runs x {nproc} processes needs {parallel * nproc} GPUs; this machine has {n}"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(n)]
    return [",".join(ids[k * nproc : (k + 1) * nproc]) for k in range(parallel)]


def run_queue(sw: Sweep, base: Path, say, poll_s: float = 1.0) -> dict[str, str]:
    """Run every point not yet completed, `parallel` at a time; {run id: final status}."""
    from chexui.launch import save_config, start_detached

    nproc = max(sw.config(p)["distributed"]["nproc"] for p in sw.points if "compress" not in p)
    free = gpu_slots(sw.parallel, nproc)
    active: dict[str, tuple[Path, str | None, int]] = {}  # run id -> (dir, its slot, its point)
    results: dict[str, str] = {}
    todo = list(range(len(sw.points)))

    def status_of(point: dict) -> str | None:
        return runs_mod.load_run(runs_mod.find_run(point["run"], base)).status if point["run"] else None

    while todo or active:
        waiting: list[int] = []  # compress points whose parent run is still queued or running
        while todo and free:
            i = todo.pop(0)
            point = sw.points[i]
            dep = waits_on(point)
            if dep is not None and status_of(sw.points[dep]) != "completed":
                pending = dep in todo + waiting or dep in [a[2] for a in active.values()]
                if pending:
                    waiting.append(i)
                else:
                    say(f"skipped {point_label(point)}: that run did not complete")
                continue
            run_dir = runs_mod.find_run(point["run"], base) if point["run"] else None
            status = runs_mod.load_run(run_dir).status if run_dir else None
            if run_dir is not None and status == "completed":
                results[run_dir.name] = status
                continue
            slot = free.pop(0)
            if run_dir is None:
                try:
                    cfg = sw.config(point, base)
                except UserError as e:  # (an LR range test that suggested nothing)
                    say(f"skipped {point_label(point)}: {e}")
                    free.append(slot)
                    continue
                cfg["sweep"] = sw.id
                run_dir = runs_mod.new_run_dir(base, f"{sw.name}-{i + 1:02d}")
                save_config(cfg, run_dir)
                point["run"] = run_dir.name
                save(sw, base)
            if status != "running":  # a run left running by an interrupted sweep is only waited for
                env = {"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {}
                start_detached(run_dir, base, env=env)
            say(f"{'resumed' if status else 'started'} {run_dir.name} ({point_label(point)})")
            active[run_dir.name] = (run_dir, slot, i)
        todo = waiting + todo
        time.sleep(poll_s)
        for rid, (run_dir, slot, _) in list(active.items()):
            if runs_mod.launcher_process(run_dir) is None:
                info = runs_mod.load_run(run_dir)
                s = info.summary()
                results[rid] = info.status
                error = info.last("error") if info.status != "completed" else None
                if error is not None:  # why it failed, in the sweep's own output
                    say(f"{info.status} {rid}: {error['message']}")
                else:
                    say(f"{info.status} {rid}: test AUROC {labelled(s['test_auc'], s['test_labels'])}")
                del active[rid]
                free.append(slot)
    return results


def stop_active(sw: Sweep, base: Path) -> list[str]:
    """Stop the sweep's running runs cleanly (checkpoints kept; `--resume` continues them)."""
    stopped = []
    for point in sw.points:
        if point["run"]:
            run_dir = runs_mod.find_run(point["run"], base)
            if runs_mod.launcher_process(run_dir) is not None:
                runs_mod.stop_run(run_dir)
                stopped.append(run_dir.name)
    return stopped
