"""Running loss and per-epoch train/val loss. A new epoch's point is drawn at once; running-loss points
at most every PLOT_EVERY_S, so following a busy run stays cheap."""

from __future__ import annotations

import time

from textual.reactive import var
from textual.timer import Timer
from textual_plotext import PlotextPlot

PLOT_EVERY_S = 2.0


class LossPlot(PlotextPlot):
    """`curves` = (running points (x, loss), epoch_ended events)."""

    ALLOW_MAXIMIZE = True
    curves: var[tuple] = var(lambda: ((), ()))

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._drawn_at, self._epochs_drawn = 0.0, -1
        self._timer: Timer | None = None

    def watch_curves(self, curves: tuple) -> None:
        wait = PLOT_EVERY_S - (time.monotonic() - self._drawn_at)
        if len(curves[1]) != self._epochs_drawn or wait <= 0:
            self._draw()
        elif self._timer is None:  # a new running-loss point can wait; it is drawn with the next one
            self._timer = self.set_timer(wait, self._draw)

    def _draw(self) -> None:
        running, epochs = self.curves
        self._drawn_at, self._epochs_drawn, self._timer = time.monotonic(), len(epochs), None
        plt = self.plt
        plt.clear_data()
        if running:
            xs, ys = zip(*running[-400:])
            plt.plot(list(xs), list(ys), label="running", marker="dot")
        if epochs:
            ep = [e["epoch"] for e in epochs]
            plt.plot(ep, [e["train_loss"] for e in epochs], label="train", marker="hd")
            plt.plot(ep, [e["val_loss"] for e in epochs], label="val", marker="hd")
        plt.xlabel("epoch")
        self.refresh()
