#!/usr/bin/env bash
# Channel pruning + distillation on the embedded demo data at 128 px (#31's acceptance), per architecture:
#   dense (4 epochs from scratch)
#   post-training: --prune-channels 0.5 --finetune-epochs 2, without and with --distill, then --ptq on top
#   during training: channel 50 % on the study's schedule (0.5 -> 3 of 4 epochs), distilled from the dense run,
#     from scratch ("dt"), and from the dense run's weights as the study's runs start from pretrained ones
#     ("dtd": 3 epochs, 10 -> 50 % over the first, Taylor scores, LR 5e-4)
# then `chexui bench` of each against the dense run (x dense speed, same runtime). CPU hours on 2 cores:
#   ARCHS="resnet50 densenet121" STAGE=train|bench|all RUNS=/tmp/channel-study bash benchmarks/channel_study.sh
set -euo pipefail
ARCHS=${ARCHS:-"resnet50 densenet121"}
STAGE=${STAGE:-all}
RUNS=${RUNS:-/tmp/channel-study}
EPOCHS=${EPOCHS:-4}
C=${CHEXUI:-chexui}
mkdir -p "$RUNS"
run_of() { ls -d "$RUNS"/*-"$1" | tail -1; }
common=(--preset demo --set data.image_size=128 --set train.epochs="$EPOCHS" --set train.early_stop_patience=0
        --runs-dir "$RUNS" --headless)
for arch in $ARCHS; do
  if [[ $STAGE == train || $STAGE == all ]]; then
    ls -d "$RUNS"/*-"dense-$arch" >/dev/null 2>&1 ||
      $C run "${common[@]}" --set model.arch="$arch" --name "dense-$arch" | tail -3
    dense=$(run_of "dense-$arch")
    $C compress "$dense" --prune-channels 0.5 --finetune-epochs 2 --name "pt-ch50-$arch" --runs-dir "$RUNS" --headless | tail -2
    $C compress "$dense" --prune-channels 0.5 --finetune-epochs 2 --distill --name "pt-ch50-kd-$arch" --runs-dir "$RUNS" --headless | tail -2
    $C compress "$(run_of "pt-ch50-kd-$arch")" --ptq --name "pt-ch50-kd-ptq-$arch" --runs-dir "$RUNS" --headless | tail -2
    $C run "${common[@]}" --set model.arch="$arch" --name "dt-ch50-kd-$arch" \
      --set prune.enabled=true --set prune.structure=channel --set prune.final_sparsity=0.5 \
      --set prune.begin_epoch=0.5 --set prune.end_epoch=3 --set prune.frequency_steps=10 \
      --set distill.enabled=true --set distill.teacher="$dense" | tail -2
    $C run "${common[@]}" --set model.arch="$arch" --name "dtd-ch50-kd-$arch" --set train.epochs=3 \
      --set model.pretrained="$dense/checkpoints/best.pt" --set train.lr=0.0005 \
      --set prune.enabled=true --set prune.structure=channel --set prune.final_sparsity=0.5 \
      --set prune.begin_epoch=0 --set prune.end_epoch=1 --set prune.frequency_steps=6 --set prune.importance=taylor \
      --set distill.enabled=true --set distill.teacher="$dense" | tail -2
  fi
  if [[ $STAGE == bench || $STAGE == all ]]; then
    dense=$(run_of "dense-$arch")
    # (pt-ch50 and pt-ch50-kd have the very layer sizes of pt-ch50-kd-ptq's fp32 model: the same speed)
    for r in "pt-ch50-kd-ptq-$arch" "dt-ch50-kd-$arch"; do
      $C bench "$(run_of "$r")" --dense "$dense" --runs-dir "$RUNS" --json > "$RUNS/bench-$r.json"
      python3 - "$RUNS/bench-$r.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"{b['run']}: {b['image_size']} px, CPU {b['cpu']} (int8: {b['cpu_int8_isa']}), {b['threads']} threads")
for ref in (b.get("dense") or {}).get("artifacts", []):
    print(f"  dense {ref['kind']:<10} {ref['runtime']:<12} {ref['macs'] / 1e9:6.3f} GMACs  b32 {ref['cpu']['throughput_b32']:7.1f} img/s")
for r in b["artifacts"]:
    x = f"  x dense {r['x_dense_speed']:.2f}" if r.get("x_dense_speed") else ""
    print(f"  {r['kind']:<16} {r['runtime']:<12} {r['macs'] / 1e9:6.3f} GMACs  b32 {r['cpu']['throughput_b32']:7.1f} img/s{x}")
PY
    done
    $C compare $(for r in dense pt-ch50 pt-ch50-kd pt-ch50-kd-ptq dt-ch50-kd dtd-ch50-kd; do run_of "$r-$arch"; done) \
      --baseline "$dense" --runs-dir "$RUNS" --format markdown
  fi
done
