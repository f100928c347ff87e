"""Does Grad-CAM point at the finding? The pointing game on a demo run's test images.

    python benchmarks/gradcam_hits.py RUN_DIR [RUN_DIR...] [--layers layer4,layer3] [--labels Cardiomegaly,Mass,...]

For each run (trained on a chexui demo set) and each of its explainable models (fp32 / sparse artifacts,
a QAT run's int8 twin, or the best checkpoint), per label: on the run's test images whose drawing shows
the finding, the share of Grad-CAM maps whose peak lies inside the region the generator drew it in,
beside chance (the mean share of the image that region covers). Not a speed benchmark: no timings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import config  # noqa: E402
from engine.evaluation import predictions
from engine.inference import explain

DRAWN = [
    "Cardiomegaly",
    "Mass",
    "Nodule",
    "Effusion",
    "Pneumothorax",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pleural_Thickening",
    "Hernia",
    "Edema",
    "Infiltration",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--layers", default="layer4,layer3", help="blocks to map (ResNet: layer4 is the default)")
    ap.add_argument("--labels", default=",".join(DRAWN))
    args = ap.parse_args()
    labels = args.labels.split(",")
    for run in map(Path, args.run_dirs):
        cfg = config.load_run_config(run / "config.toml")
        size, root = cfg["data"]["image_size"], explain.data_root(run)
        names = predictions.load(predictions.path_for(run, "test"))["image_ids"].tolist()
        named = explain.models(run)  # every explainable model of the run
        print(f"run {run.name}: {cfg['model']['arch']} at {size} px, {len(names)} test images of {root}")
        for layer in args.layers.split(","):
            for kind, model in named.items():
                res = explain.localisation(model, root, names, size, labels, layer)
                print(f"  {kind:<16} Grad-CAM of {layer}:")
                for lab, v in res.items():
                    if v["images"]:
                        print(
                            f"    {lab:<20} peak in drawn region {v['hits']:>4}/{v['images']:<4} = {v['rate']:6.1%}"
                            f"   (chance {v['chance']:5.1%})"
                        )


if __name__ == "__main__":
    main()
