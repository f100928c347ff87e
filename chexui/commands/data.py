"""`chexui data demo|check|prepare`: NIH-layout datasets (the synthetic demo set, checks, the cache)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from chexui.commands.common import AsJson, err, print_json, progress_bar, say
from chexui.headless import console

app = typer.Typer(no_args_is_help=True, help="NIH-layout datasets.")


@app.command("demo")
def data_demo(
    out: str,
    images: Annotated[int, typer.Option("--images", min=10)] = 2000,
    size: Annotated[int, typer.Option("--size", min=16, max=4096)] = 128,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
) -> None:
    """Generate the synthetic demo dataset (chest radiograph phantoms) in the NIH layout."""
    from engine.data import demo

    cb, prog = progress_bar(f"drawing {images} phantoms at {size} px")
    t0 = time.perf_counter()
    try:
        demo.generate(out, images, size, seed, progress=cb)
    finally:
        if prog:
            prog.stop()
    say(f"{out}: {images} images at {size} px in {time.perf_counter() - t0:.1f}s (synthetic; see README.txt)")


@app.command("check")
def data_check(root: str, as_json: AsJson = False) -> None:
    """Validate an NIH-layout dataset and print its summary (exit 2 on problems)."""
    from engine.data import nih

    s = nih.check_dataset(root)
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


@app.command("prepare")
def data_prepare(
    root: str,
    size: Annotated[int, typer.Option("--size", min=16, max=2048)],
    workers: Annotated[int, typer.Option("--workers", min=0, help="processes (0: all cores)")] = 0,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if current")] = False,
) -> None:
    """Decode every image once into the uint8 cache used for fast training."""
    from engine.data import cache, nih

    index = nih.index_dataset(root)
    cb, prog = progress_bar(f"decoding {len(index)} images at {size} px")
    t0 = time.perf_counter()
    try:
        cache.prepare(index, size, workers=workers or None, progress=cb, force=force)
    finally:
        if prog:
            prog.stop()
    say(f"cache: {cache.cache_paths(index, size)[0]} ({len(index)} images, {time.perf_counter() - t0:.1f}s)")
