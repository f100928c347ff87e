"""The chexui training engine: data, models, training under torchrun, compression.

Runs as `torchrun ... -m engine.train --config FILE --run-dir DIR`. Never imports textual.
Modules that chexui imports at start-up (config, events, labels, errors) do not import torch.
"""
