"""`chexui presets list|show|validate`: the preset files reachable by name."""

from __future__ import annotations

import typer

from chexui import presets as presets_mod
from chexui.commands.common import AsJson, Sets, print_json, say
from chexui.headless import console, table
from engine import config
from engine.sanitize import clean

app = typer.Typer(no_args_is_help=True, help="Preset files (TOML).")


@app.command("list")
def presets_list(as_json: AsJson = False) -> None:
    """Presets reachable by name, with the directory each comes from."""
    items = presets_mod.available()
    if as_json:
        return print_json(
            [
                {"name": p.name, "source": p.source, "path": clean(str(p.path)), "description": p.description}
                for p in items
            ]
        )
    t = table("name", "source", "description")
    for p in items:
        t.add_row(p.name, f"{p.source}: {p.path.parent}", p.description)
    console().print(t)


@app.command("show")
def presets_show(name: str, set_: Sets = []) -> None:  # noqa: B006
    """Print the fully resolved config of a preset (extends and --set applied) as TOML."""
    print(config.dumps(presets_mod.resolve(name, set_)), end="")


@app.command("validate")
def presets_validate(file: str) -> None:
    """Check one preset file: keys, types, ranges and its extends chain."""
    presets_mod.resolve(file)
    say(f"{file}: ok")
