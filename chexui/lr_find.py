"""`chexui lr-find`'s config and `--apply`: the LR range test of a preset (engine/training/lr_find.py runs
it), and the preset that takes its suggestion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chexui import presets as presets_mod
from engine import config
from engine.errors import ConfigError
from engine.fsutil import write_atomic

# the range test trains the float model alone: the preset's compression is not what the LR is for
# (pruning and QAT start later in a run, from weights the first epochs made)
OFF = ["prune.enabled=false", "quantize.enabled=false", "distill.enabled=false", "export.enabled=false"]


def test_config(preset: str, sets: list[str], data: str | None, nproc: int | None) -> dict[str, Any]:
    """The run config of a preset's LR range test: the preset with `sets` applied (its data, model,
    batch size, optimizer, processes), then `as_test`."""
    return as_test(presets_mod.resolve(preset, sets, data, nproc))


def as_test(cfg: dict[str, Any]) -> dict[str, Any]:
    """A resolved run config's LR range test: compression off, `lr_find.enabled`, named lr-find-NAME."""
    out = config.apply_sets(cfg, [*OFF, "lr_find.enabled=true"])
    out["name"] = f"lr-find-{cfg.get('name', 'run')}"
    return config.validate(out, f"the LR range test of {cfg.get('name', 'run')}")


def applied_preset(preset: str, sets: list[str], data: str | None, nproc: int | None, train_lr: float) -> dict:
    """The preset as the range test ran it (`sets`, data and processes included, its compression kept)
    with `train.lr` = the suggestion, as a complete config: it extends nothing, so it means the same
    wherever it is copied."""
    cfg = presets_mod.resolve(preset, sets, data, nproc)
    cfg["train"]["lr"] = float(f"{train_lr:.3g}")
    base = cfg.get("name", "run")
    cfg["name"] = f"{base}-lr"
    cfg["description"] = f"{base} with train.lr {cfg['train']['lr']:g} from `chexui lr-find`" + (
        f" ({cfg['description']})" if cfg.get("description") else ""
    )
    return config.validate(cfg, f"the lr-find preset of {preset}")


def preset_path(test_cfg: dict, out: Path | None) -> Path:
    """Where `--apply` writes: `out`, or NAME-lr.toml in the user's preset dir (found by name from then
    on). Checked before the test runs: an existing file is never replaced (`ConfigError`, exit 2)."""
    path = out or presets_mod.user_dir() / f"{test_cfg['name'].removeprefix('lr-find-')}-lr.toml"
    if path.exists() or path.is_symlink():
        raise ConfigError(f"{path}: exists already; remove it or give another file with --apply-to")
    return path


def write_preset(cfg: dict, path: Path) -> None:
    if path.exists() or path.is_symlink():  # (made while the test ran)
        raise ConfigError(f"{path}: exists already; remove it or give another file with --apply-to")
    write_atomic(path, config.dumps(cfg))
