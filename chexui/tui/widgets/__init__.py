"""The TUI's widgets, one per file. Each takes its data through a reactive attribute (data down) and
redraws only when it changed, by its own watcher: the attributes are `var`s, which do not repaint
on their own (a reactive repainted the loss plot on every progress event: a plotext render each, about
half the frame time while following a run). None reads a run dir or knows the screen it sits on."""
