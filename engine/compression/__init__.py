"""Compression methods behind one interface (`base.Method`): what a method does to a run is a set of
hooks the trainer calls at fixed points, the checkpoint parts it adds, and (for int8 methods) the int8
model the run ships. Built in: gradual and one-shot magnitude pruning (`pruning`), quantization-aware
training (`qat`), post-training static quantization (`ptq`) and channel pruning (`channel_pruning`).

Adding a method is one module: a `Method` subclass decorated with `@register`, enabled by its own
config keys (docs/ARCHITECTURE.md has the recipe). A registration is seen by the process that made it:
the engine under torchrun imports this package, so a method for real runs is imported here.
"""

from engine.compression import channel_pruning, pruning, ptq, qat  # noqa: F401  (they register themselves)
from engine.compression.base import Method, MethodContext, active, int8_maker, rebuilt_float, register, unregister

__all__ = ["Method", "MethodContext", "active", "int8_maker", "rebuilt_float", "register", "unregister"]
