"""Run under torchrun by test_engine.py: plain-SGD steps with the engine's sampler, input pipeline and
loss (BatchNorm in eval mode), or evaluation of a saved checkpoint. Rank 0 saves the result."""

import argparse

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from engine.data import nih
from engine.data.batches import Images, to_input, train_batches
from engine.evaluation.evaluate import predict_logits
from engine.models.chexnet import WeightedBCE, build_model
from engine.runtime import dist

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--eval-ckpt", default=None)
args = ap.parse_args()

d = dist.setup("gloo")
index = nih.index_dataset(args.data)
rows = np.arange(len(index))
images = Images(index, 32, None)
torch.manual_seed(0)
model = build_model("resnet18", "none")
model.eval()  # BatchNorm uses running stats: per-process batch statistics would differ otherwise
net = DDP(model) if d.active else model
opt = torch.optim.SGD(model.parameters(), lr=0.05)
y_all = index.labels.astype(np.float64)
loss_fn = WeightedBCE(y_all.sum(0), len(y_all) - y_all.sum(0))
batches = train_batches(len(rows), args.batch, d.world, d.rank, seed=0, epoch=1)
for b in batches[: args.steps]:
    x, y, _ = images[rows[np.sort(b)]]
    loss = loss_fn(net(to_input(x, d.device)), y.float())
    opt.zero_grad()
    loss.backward()
    opt.step()
result = {
    "weights": model.state_dict(),
    "logits": torch.from_numpy(predict_logits(model, images, rows, d, 16)),
    "world": d.world,
}
if args.eval_ckpt:  # the same saved checkpoint, evaluated over this run's ranks
    other = build_model("resnet18", "none")
    other.load_state_dict(torch.load(args.eval_ckpt, weights_only=True)["weights"])
    result["ckpt_logits"] = torch.from_numpy(predict_logits(other, images, rows, d, 16))
if d.is_main:
    torch.save(result, args.out)
dist.cleanup(sync=True)
