#!/usr/bin/env bash
# The prepared check for one CUDA GPU, in at most 8 minutes, printing JSON lines:
#   1. the tests that need CUDA (augmentation on the GPU, images kept on the host when too large),
#   2. images/s of every stage of the `cifar10` preset (ResNet-18, the preset's batch sizes):
#      fp32 against bf16 + channels-last, torch.compile off and on (benchmarks/stages.py), and the
#      original-style steps in the same run (the speed ratio against the original on a GPU),
#   3. a shortened `cifar10` run (PRETEXT_EPOCHS SimCLR epochs, the rest of the preset's schedule cut
#      to fit) with its test ACC and stage times, when CIFAR-10 is given.
# Usage (from the repository root, with the package installed):
#   bash benchmarks/gpu.sh [CIFAR10_DATA]      # CIFAR10_DATA: an .npz or a torchvision CIFAR-10 root
# Environment: PRETEXT_EPOCHS (default 10), OUT (default /tmp/scan-gpu), PYTHON (default python).
# It has not been run yet: no GPU was available to this work (README "Not yet here").
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-}
PRETEXT_EPOCHS=${PRETEXT_EPOCHS:-10}
OUT=${OUT:-/tmp/scan-gpu}
PY=${PYTHON:-python}
mkdir -p "$OUT"
json() { printf '{"benchmark": "gpu", %s}\n' "$1"; }

if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  json '"error": "no CUDA device"'; exit 1
fi
json "\"gpu\": \"$($PY -c 'import torch; print(torch.cuda.get_device_name(0))')\", \"torch\": \"$($PY -c 'import torch; print(torch.__version__)')\""

# 1. CUDA tests (they skip on CPU-only machines).
start=$SECONDS
timeout 45 $PY -m pytest -q -rA tests/test_augment.py tests/test_stream.py -k "cuda or gpu" >"$OUT/cuda_tests.log" 2>&1
rc=$?
json "\"step\": \"cuda_tests\", \"rc\": $rc, \"summary\": \"$(tail -n 1 "$OUT/cuda_tests.log" | tr -d '"')\", \"seconds\": $((SECONDS - start))"

# 2. Throughput of each stage of the cifar10 preset (one JSON line per stage and setting); with the
#    CUDA defaults (bf16 + channels-last) also the original-style steps in the same run (--baseline:
#    PIL transforms in DataLoader workers, fp32), whose step_ratio/epoch_ratio are the GPU ratios.
#    Step timeouts add up to under 8 minutes with the run below.
for setting in "75 --precision fp32 --channels-last false" "100 --baseline" "100 --compile"; do
  limit=${setting%% *}; flags=${setting#* }
  timeout "$limit" $PY benchmarks/stages.py --device cuda --backbones resnet18_cifar \
      --only pretext mine cluster cluster_head_only selflabel --windows 2 --window-s 1 $flags \
      | grep -E '"(stages|baseline)"' || json "\"step\": \"stages\", \"setting\": \"$flags\", \"error\": \"failed or timed out\""
done

# 3. A shortened cifar10 run.
if [ -z "$DATA" ]; then
  json '"step": "cifar10_run", "skipped": "no CIFAR-10 data given (bash benchmarks/gpu.sh DATA)"'
  exit 0
fi
start=$SECONDS
timeout 150 $PY -m scan run cifar10 --data "$DATA" --out "$OUT/cifar10" --device cuda \
    pretext.epochs="$PRETEXT_EPOCHS" cluster.epochs=10 selflabel.epochs=5 >"$OUT/cifar10.log" 2>&1
rc=$?
$PY - "$OUT/cifar10/metrics.json" "$rc" "$((SECONDS - start))" "$PRETEXT_EPOCHS" <<'EOF'
import json, sys
path, rc, seconds, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
line = {"benchmark": "gpu", "step": "cifar10_run", "rc": rc, "wall_s": seconds, "pretext_epochs": epochs}
try:
    metrics = json.load(open(path))
    final = metrics.get("final", {}).get("step", "cluster")
    line.update(final_step=final, acc=metrics[final]["acc"], nmi=metrics[final]["nmi"], ari=metrics[final]["ari"],
                neighbor_accuracy=metrics.get("mine", {}).get("neighbor_accuracy"), seconds=metrics["seconds"])
except (OSError, KeyError, ValueError) as err:
    line["error"] = f"no metrics ({err}); see the log"
print(json.dumps(line))
EOF
