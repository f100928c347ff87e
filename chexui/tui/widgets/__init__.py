"""The TUI's widgets, one per file. Each takes its data through a reactive attribute (data down) and
redraws only when it changed; none reads a run dir or knows the screen it sits on."""
