"""Preset files: search order, `extends` chains, `--set` overrides, validation.

Search order for a NAME: $CHEXUI_PRESETS (colon-separated dirs, e.g. a lab's shared folder), the user
config dir (~/.config/chexui/presets, XDG-aware), then the built-in presets shipped with the package.
A path (anything ending in .toml or containing a slash) is used as is. Presets are data, never code.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs

from engine import config
from engine.errors import ConfigError
from engine.sanitize import clean


@dataclass
class PresetFile:
    name: str
    path: Path
    source: str  # "env", "user", "builtin"
    description: str


def builtin_dir() -> Path:
    return Path(str(resources.files("presets")))


def user_dir() -> Path:
    return Path(platformdirs.user_config_dir("chexui")) / "presets"


def search_dirs() -> list[tuple[Path, str]]:
    dirs = [(Path(p).expanduser(), "env") for p in os.environ.get("CHEXUI_PRESETS", "").split(":") if p]
    return dirs + [(user_dir(), "user"), (builtin_dir(), "builtin")]


def _name_of(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def check_trusted(path: Path) -> None:
    """A preset anyone on the machine can rewrite (world-writable, or in a world-writable dir without
    the sticky bit) is refused: it decides what data, weights and paths a run uses. One owned by another
    user is normal in a lab's shared folder, and is named on stderr once."""
    st = path.stat()
    parent = path.parent.stat()
    if st.st_mode & stat.S_IWOTH or (parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX):
        where = path if st.st_mode & stat.S_IWOTH else path.parent
        raise ConfigError(f"{path}: refused: {where} is writable by every user (chmod o-w {where})")
    if st.st_uid not in (os.getuid(), 0) and path not in _NOTED:
        _NOTED.add(path)
        try:
            import pwd

            owner = pwd.getpwuid(st.st_uid).pw_name
        except (ImportError, KeyError):
            owner = f"uid {st.st_uid}"
        print(clean(f"note: preset {path} belongs to {owner}"), file=sys.stderr)


_NOTED: set[Path] = set()


def available() -> list[PresetFile]:
    """Every preset reachable by name; a name found earlier in the search order hides later ones."""
    seen: dict[str, PresetFile] = {}
    for d, source in search_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*.toml")):
            if p.name.endswith(".sweep.toml"):
                continue  # sweep files (chexui sweep) live beside the presets they use
            name = _name_of(p, d)
            if name in seen:
                continue
            try:
                check_trusted(p)
                desc = str(config.load_toml(p).get("description", ""))
            except ConfigError as e:
                desc = f"(unusable: {e})"
            seen[name] = PresetFile(clean(name), p, source, clean(desc))
    return list(seen.values())


def is_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref and Path(ref).exists()


def find(ref: str) -> Path:
    if is_path(ref):
        p = Path(ref).expanduser()
        if not p.is_file():
            raise ConfigError(f"{p}: preset file not found")
        return p
    for d, _ in search_dirs():
        p = d / f"{ref}.toml"
        if p.is_file():
            return p
    names = [pf.name for pf in available()]
    near = difflib.get_close_matches(ref, names, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else f"; available: {', '.join(sorted(names))}"
    raise ConfigError(f"preset '{ref}' not found in {', '.join(str(d) for d, _ in search_dirs())}{hint}")


def load_chain(ref: str, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """The preset merged over the presets it extends (checked file by file, errors name the file)."""
    path = find(ref).resolve()
    check_trusted(path)
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself ({' -> '.join(p.name for p in _seen)})")
    raw = config.validate(config.load_toml(path), str(path), partial=True)
    raw.setdefault("name", path.stem)
    parent = raw.pop("extends", "")
    if not parent:
        return raw, [path]
    base, chain = load_chain(parent, _seen + (path,))
    return config.merge(base, raw), chain + [path]


def resolve(
    ref: str = "demo",
    sets: list[str] | None = None,
    data: str | None = None,
    nproc: int | None = None,
    nnodes: int | None = None,
) -> dict[str, Any]:
    """Preset -> full, validated run config. Order: preset chain, --data/--nproc, --set (last)."""
    raw, chain = load_chain(ref)
    if data is not None:
        raw = config.merge(raw, {"data": {"root": str(Path(data).expanduser().resolve())}})
    if nproc is not None:
        raw = config.merge(raw, {"distributed": {"nproc": nproc}})
    if nnodes is not None:
        raw = config.merge(raw, {"distributed": {"nnodes": nnodes}})
    return config.validate(config.apply_sets(raw, sets or []), str(chain[-1]))
