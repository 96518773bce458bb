#!/usr/bin/env bash
# Train the zoo's best-effort EP model (fmnist-resnet3w64-ep) on a GPU within a
# wall-clock budget: a 20-batch probe measures the rate, then the run gets as
# many epochs (of the full training split) as fit, 3 to 30.
#
#   scripts/train_best_gpu.sh [BUDGET_SECONDS=420] [OUT_DIR=models_zoo]
#
# Env: PY (python with torch; default python3), DEVICE (default cuda),
# EXPLORER_DATA (Fashion-MNIST folder; default the Debian package's).
# Resumable: the run uses --resume, so a killed one continues from its last
# checkpoint (every 100 batches and every epoch) with the same epoch count.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
BUDGET=${1:-420}
OUT_DIR=${2:-models_zoo}
DATA=${EXPLORER_DATA:-/usr/share/datasets/fashion-mnist}
NAME=fmnist-resnet3w64-ep
COMMON=(--builder resnet --depth 3 --width "${WIDTH:-64}" --dataset fashion_mnist --data-path "$DATA"
        --batch-size 128 --lr-step batch --t-free 40 --t-nudge 15 --tol 1e-3 --flip true
        --save-every 100 --device "${DEVICE:-cuda}" --no-progress)
start=$(date +%s)
probe=$(mktemp -d)
if [[ ! -f "$OUT_DIR/$NAME.json" ]]; then
  "$PY" -m explorer train "${COMMON[@]}" --limit 2560 --epochs 1 --eval-limit 256 --final-eval-limit 256 \
      --log-every 1 --out "$probe/probe" >/dev/null
  epochs=$("$PY" - "$probe/probe.metrics.jsonl" "$BUDGET" "$start" <<'EOF'
import json, statistics, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
secs = [r["seconds"] for r in rows if r["kind"] == "batch"][5:]   # after warm-up
per_epoch = statistics.median(secs) * 469 * 1.1 + 3.0            # 469 batches of 128, +10 %, + evaluation
left = float(sys.argv[2]) - (time.time() - float(sys.argv[3])) - 30.0
print(max(3, min(30, int(left // per_epoch))))
print(f"probe: {statistics.median(secs) * 1000:.1f} ms/batch, {per_epoch:.1f} s/epoch, {left:.0f} s left",
      file=sys.stderr)
EOF
)
else
  epochs=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['settings']['epochs'])" "$OUT_DIR/$NAME.json")
fi
echo "training $NAME for $epochs epochs"
"$PY" -m explorer train "${COMMON[@]}" --epochs "$epochs" --eval-limit 2000 --log-every 20 \
    --out "$OUT_DIR/$NAME" --resume
rm -rf "$probe"
echo "done in $(( $(date +%s) - start )) s"
