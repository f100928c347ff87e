"""Load a chexui `export/model_fp32.pt` with torch and torchvision alone (no chexui installed), a
channel-pruned one included, and print or save its 14 probabilities.

    python load_model.py RUN/export/model_fp32.pt                    # the model, and its layer sizes
    python load_model.py RUN/export/model_fp32.pt inputs.npy out.npy # probabilities of float32 [N, 3, S, S] inputs

The file is a plain dict read with weights_only=True: "arch" (a torchvision model name), "image_size",
"model" (the state dict) and, for a channel-pruned model, "channels" {layer: [in, out]} for every conv,
BatchNorm and linear whose size is not the architecture's own. Inputs are what chexui feeds the model:
the grayscale radiograph resized to image_size, scaled to [0, 1], repeated to 3 channels and normalised
with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
"""

import sys

import numpy as np
import torch
import torchvision
from torch import nn

HEADS = {"densenet": "classifier", "resnet": "fc"}  # the attribute holding the classifier, by family


def resized(m: nn.Module, n_in: int, n_out: int) -> nn.Module:
    if isinstance(m, nn.BatchNorm2d):
        return nn.BatchNorm2d(n_out, m.eps, m.momentum)
    if isinstance(m, nn.Linear):
        return nn.Linear(n_in, n_out, bias=m.bias is not None)
    assert isinstance(m, nn.Conv2d)
    return nn.Conv2d(n_in, n_out, m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None)


def load(path: str) -> nn.Module:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = torchvision.models.get_model(ck["arch"], weights=None)
    head = next(h for family, h in HEADS.items() if ck["arch"].startswith(family))
    setattr(model, head, nn.Linear(getattr(model, head).in_features, 14))
    for name, (n_in, n_out) in ck.get("channels", {}).items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, resized(getattr(owner, child), n_in, n_out))
    model.load_state_dict(ck["model"])
    return model.eval()


if __name__ == "__main__":
    model = load(sys.argv[1])
    if len(sys.argv) < 4:
        print(model)
        sys.exit(0)
    x = torch.from_numpy(np.load(sys.argv[2], allow_pickle=False))
    with torch.no_grad():
        probs = torch.sigmoid(model(x)).double().numpy()
    np.save(sys.argv[3], probs)
