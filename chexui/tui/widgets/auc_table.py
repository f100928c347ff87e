"""Per-class AUROC: the full label names, each AUROC with the best and worst marked, both ends of the
95 % CI of a test evaluation, and the threshold, sensitivity and specificity at its operating points."""

from __future__ import annotations

from textual.reactive import var

from chexui.format import auroc_rows
from chexui.safe import safe
from chexui.tui.widgets.fitted_table import FittedTable

MARKS = {"best": " ▲", "worst": " ▼"}


class AucTable(FittedTable):
    """`aucs` = (title, an `evaluated` event or {"auc": {label: auc}, "auc_mean": mean})."""

    aucs: var[tuple] = var(lambda: ("val AUROC", {"auc": {}, "auc_mean": None}))

    def watch_aucs(self, value: tuple) -> None:
        title, ev = value
        at = ev.get("at_threshold")  # a test evaluation at the operating points chosen on validation
        self.border_title = safe(title + (f" · calls at {ev.get('operating_point')} thresholds" if at else ""))
        rows, mean = auroc_rows(ev, digits=2)
        cells = [[r.label, r.auroc + MARKS.get(r.mark, ""), r.ci, *(r.at or ())] for r in rows]
        cells.append([f"mean ({mean.label})" if mean.label else "mean", mean.auroc, mean.ci, *(mean.at or ())])
        self.fill(["label", "AUROC", "95% CI", *(("thr", "sens", "spec") if at else ())], cells)
