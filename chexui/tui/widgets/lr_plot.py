"""The LR range test's curve (`chexui lr-find`, the launcher's Find LR): loss and smoothed loss against
log10 of the LR, the suggestion marked once it is known."""

from __future__ import annotations

import math

from textual.reactive import var
from textual_plotext import PlotextPlot

from engine.sanitize import clean


class LRPlot(PlotextPlot):
    """`curve` = (points (lr, loss, smoothed), the `lr_suggested` event or None): a run dir's, so its
    rule's name is shown as plain text."""

    curve: var[tuple] = var(lambda: ((), None))

    def watch_curve(self, curve: tuple) -> None:
        points, suggested = curve
        plt = self.plt
        plt.clear_data()
        # (plotext's log axis labels 10^k poorly in a small pane: log10 values read plainly)
        pts = [(math.log10(lr), loss, sm) for lr, loss, sm in points if lr > 0 and math.isfinite(sm)]
        if pts:
            xs, raw, smoothed = (list(v) for v in zip(*pts))
            plt.plot(xs, raw, label="loss", marker="dot", color="gray")
            plt.plot(xs, smoothed, label="smoothed", marker="hd")
            lo, first = min(smoothed), smoothed[0]
            plt.ylim(lo - 0.1 * abs(first - lo) - 1e-3, max(first, lo) + 0.5 * abs(first - lo) + 1e-3)
        if suggested and suggested.get("suggested_lr"):
            plt.vline(math.log10(suggested["suggested_lr"]), "red")
            weak = " - no clear fall, a guess" if suggested.get("clear") is False else ""
            plt.title(clean(f"suggested LR {suggested['suggested_lr']:.2g} ({suggested['rule']}){weak}"))
        else:
            plt.title("LR range test")
        plt.xlabel("log10 learning rate")
        self.refresh()
