"""chexui: terminal app (typer CLI + Textual TUI) for training and compressing CheXNet-style models.

Never imports torch at module level: the engine runs in its own processes under torchrun.
"""

__version__ = "0.1.0"
