"""One row per epoch: losses, validation AUROC, LR, time, throughput, and the columns of a compression
run (sparsity of a pruning run, MACs of a channel-pruned one, the observers' state of a QAT run) once
its events carry them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.reactive import var

from chexui.format import epoch_time_text, fmt, mean_text
from chexui.safe import safe
from chexui.tui.widgets.fitted_table import FittedTable

# epoch_ended fields that compression methods add -> (column header, how a value reads)
METHOD_COLUMNS: dict[str, tuple[str, Callable[[Any], str | Text]]] = {
    "sparsity": ("sparsity", lambda v: fmt(v, ".3f")),
    "qat_observers": ("QAT observers", lambda v: "-" if v is None else safe(v)),
    # channel pruning: the model's MACs over the dense model's (its `sparsity` is of channels)
    "macs_ratio": ("MACs", lambda v: f"{v:.2f}x" if isinstance(v, (int, float)) else "-"),
}


class EpochTable(FittedTable):
    epochs: var[tuple] = var(tuple)

    def on_mount(self) -> None:
        self.watch_epochs(self.epochs)

    def watch_epochs(self, epochs: tuple) -> None:
        extra = [k for k in METHOD_COLUMNS if any(e.get(k) is not None for e in epochs)]
        rows = [
            [
                str(e["epoch"]),
                fmt(e["train_loss"]),
                fmt(e["val_loss"]),
                mean_text(e.get("val_auc_mean"), e.get("val_auc")),
                f"{e['lr']:.1e}",
                epoch_time_text(e),
                f"{e['images_per_s']:.0f}",
                *(METHOD_COLUMNS[k][1](e.get(k)) for k in extra),
            ]
            for e in epochs
        ]
        self.fill(
            ["ep", "train", "val", "val AUC", "LR", "time", "img/s", *(METHOD_COLUMNS[k][0] for k in extra)], rows
        )
