"""A run's Grad-CAM images (RUN/explain, from `chexui explain`); enter opens one in the system's image
viewer. Nothing here needs a viewer: without one the screen says where the file is."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from chexui.safe import safe
from engine.sanitize import clean


class ExplanationsScreen(Screen):
    BINDINGS = [Binding("enter", "view", "Open in viewer"), Binding("b,escape", "app.pop_screen", "Back")]
    HELP = """\
## Explanations: a run's Grad-CAM images

| key | |
|---|---|
| `enter` | open the image under the cursor in the system's image viewer |
| `b` `escape` | back |

The images are what `chexui explain RUN IMAGE...` wrote to `RUN/explain`: side-by-side figures of the
models a run ships first (`*-compare.png`), then one per image and model, with the heatmap of each of
the most probable labels.
"""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)

    def compose(self) -> ComposeResult:
        yield Static(safe(f"explanations of {self.run_dir.name}"), id="title")
        yield DataTable(id="images", cursor_type="row", zebra_stripes=True)
        yield Static("", id="note")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("image", "kB", "written")
        self.files = explanation_images(self.run_dir)
        for i, f in enumerate(self.files):
            st = f.stat()
            table.add_row(
                safe(f.relative_to(self.run_dir / "explain")),
                f"{st.st_size / 1e3:.0f}",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime)),
                key=str(i),
            )
        note = (
            f"{len(self.files)} images in {self.run_dir / 'explain'}"
            if self.files
            else f"no explanations yet: chexui explain {self.run_dir.name} IMAGE... writes them to "
            f"{self.run_dir / 'explain'}"
        )
        self.query_one("#note", Static).update(safe(note))

    def action_view(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            self.view(self.files[table.cursor_row])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_view()

    @work(thread=True)
    def view(self, path: Path) -> None:
        opened = open_in_viewer(path)
        self.app.call_from_thread(
            self.notify,
            clean(f"opened {path.name}" if opened else f"no image viewer found; the file is {path}"),
            severity="information" if opened else "warning",
            markup=False,
        )


def explanation_images(run_dir: Path) -> list[Path]:
    """PNGs under RUN/explain, side-by-side figures first, then by name."""
    found = sorted((run_dir / "explain").rglob("*.png")) if (run_dir / "explain").is_dir() else []
    return sorted(found, key=lambda p: (not p.name.endswith("-compare.png"), str(p)))


def open_in_viewer(path: Path) -> bool:
    """Open a file with the desktop's viewer (xdg-open / open / os.startfile); False when there is none.
    The path is passed as one argument, never through a shell."""
    import os
    import shutil
    import subprocess
    import sys

    if sys.platform == "win32":
        os.startfile(str(path))  # noqa: S606 (a file we listed, opened by its associated viewer)
        return True
    opener = shutil.which("open" if sys.platform == "darwin" else "xdg-open")
    if opener is None:
        return False
    subprocess.Popen(
        [opener, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return True
