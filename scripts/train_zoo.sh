#!/usr/bin/env bash
# Train the model zoo (models_zoo/), one model after another, on one CPU thread.
#
#   nohup scripts/train_zoo.sh > runs/train_zoo.log 2>&1 &     # start (or resume) in the background
#   tail -f runs/train_zoo.log                                  # watch
#   scripts/train_zoo.sh --list                                 # the queue and what is finished
#   scripts/train_zoo.sh --table                                # the depth table for models_zoo/README.md
#
# Resumable: every model is trained with --resume, so a finished model is
# skipped and a killed one continues from its last checkpoint (every 100
# batches and every epoch). A lock keeps a second copy from running.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ZOO=${ZOO:-models_zoo}
mkdir -p runs "$ZOO"

# The engine is frozen for the queue, so that every model (and every resumed
# piece of one) trains on the same dynamics while the working tree moves on:
# ENGINE_COMMIT's explorer/ plus this tree's training files, under runs/zoo_engine.
ENGINE_COMMIT=${ENGINE_COMMIT:-ded21d8}
ENGINE=$PWD/runs/zoo_engine
if [[ ! -f "$ENGINE/explorer/train.py" ]]; then
  mkdir -p "$ENGINE"
  git archive "$ENGINE_COMMIT" explorer | tar -x -C "$ENGINE"
  cp explorer/train.py explorer/evaluate.py explorer/baseline.py "$ENGINE/explorer/"
fi
# -P: do not put the working directory first on sys.path, so PYTHONPATH's copy is imported
TRAIN=(env PYTHONPATH="$ENGINE" nice -n 19 "$PY" -P -m explorer train)

# Shared settings (measured on this machine, see models_zoo/README.md): the
# paper's recipe except T_free 40 / T_nudge 15 with tol 1e-3, batch 64, the
# first 30,000 training images, 2 epochs with a per-batch cosine schedule.
EP="--dataset fashion_mnist --limit 30000 --epochs 2 --batch-size 64 --lr-step batch \
    --t-free 40 --t-nudge 15 --tol 1e-3 --width 8 --eval-limit 2000 --save-every 100 --log-every 20 --threads 1"
BP="--trainer bp --dataset fashion_mnist --limit 30000 --epochs 2 --batch-size 64 --lr-step batch \
    --width 8 --eval-limit 2000 --save-every 200 --log-every 50 --threads 1"

# The deepest pair (and its BP baselines) first, so it is there even if the queue is cut short.
QUEUE=(
  "fmnist-resnet3-ep     --builder resnet --depth 3 $EP"
  "fmnist-plain3-ep      --builder plain  --depth 3 $EP"
  "fmnist-resnet7-ep     --builder resnet --depth 7 $EP"
  "fmnist-plain7-ep      --builder plain  --depth 7 $EP"
  "fmnist-resnet7-bp-bn  --builder resnet --depth 7 $BP"
  "fmnist-plain7-bp-bn   --builder plain  --depth 7 $BP"
  "fmnist-resnet7-bp     --builder resnet --depth 7 $BP --batch-norm false"
  "fmnist-plain7-bp      --builder plain  --depth 7 $BP --batch-norm false"
  "fmnist-resnet5-ep     --builder resnet --depth 5 $EP"
  "fmnist-plain5-ep      --builder plain  --depth 5 $EP"
  "fmnist-resnet5-bp-bn  --builder resnet --depth 5 $BP"
  "fmnist-plain5-bp-bn   --builder plain  --depth 5 $BP"
  "fmnist-resnet3-bp-bn  --builder resnet --depth 3 $BP"
  "fmnist-plain3-bp-bn   --builder plain  --depth 3 $BP"
  # a best-effort EP model: wider, on the full training split
  "fmnist-resnet3w16-ep  --builder resnet --depth 3 $EP --width 16 --limit all"
)

if [[ "${1:-}" == "--list" ]]; then
  for entry in "${QUEUE[@]}"; do
    name=${entry%% *}
    state=$($PY - "$ZOO/$name.json" <<'EOF'
import json, sys
try:
    m = json.load(open(sys.argv[1]))
except OSError:
    print("not started"); raise SystemExit
card, t = m.get("card"), m.get("training", {})
print(f"finished, test accuracy {card['test_accuracy']:.4f}" if card and t.get("finished")
      else f"at epoch {t.get('epoch')} batch {t.get('batch')} (step {t.get('step')})")
EOF
)
    printf '%-22s %s\n' "$name" "$state"
  done
  exit 0
fi

if [[ "${1:-}" == "--table" ]]; then   # the depth table of models_zoo/README.md, from the cards
  exec "$PY" - "$ZOO" <<'EOF'
import json, sys
from pathlib import Path
rows = []
for js in sorted(Path(sys.argv[1]).glob("*.json")):
    m = json.loads(js.read_text())
    if m.get("format") != "hopfield-explorer-checkpoint" or "card" not in m:
        continue
    s, c, net = m["settings"], m["card"], m["network"]
    graph = "residual" if any(e["kind"] == "skip" for e in net["edges"]) else "plain"
    depth = sum(1 for l in net["layers"] if l["name"] != "y")
    trainer = "EP" if s["trainer"] == "ep" else ("BP+BN" if s.get("batch_norm") else "BP")
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(c.get("test_verdicts", {}).items())) or "-"
    size = js.with_suffix(".safetensors").stat().st_size / 1e6
    rows.append((depth, graph, trainer, js.stem, 100 * c["test_accuracy"], c["epochs"], c["wall_time_s"],
                 verdicts, size))
rows.sort(key=lambda r: (r[2], r[0], r[1]))
print("| model | depth | graph | trainer | test accuracy (10,000) | epochs | train wall time | free-phase verdicts (test batches) | size |")
print("|---|---|---|---|---|---|---|---|---|")
for d, g, t, name, acc, ep, wall, v, size in rows:
    print(f"| `{name}` | {d} | {g} | {t} | {acc:.2f} % | {ep} | {wall / 60:.1f} min | {v} | {size:.2f} MB |")
EOF
fi

exec 9>runs/train_zoo.lock
if [[ "${1:-}" == "--wait" ]]; then   # queue behind a running copy (or its last training process)
  flock 9
elif ! flock -n 9; then
  echo "train_zoo.sh is already running (runs/train_zoo.lock); --wait queues behind it"; exit 1
fi

for entry in "${QUEUE[@]}"; do
  name=${entry%% *}
  args=${entry#* }
  echo "=== $(date -u +%FT%TZ) $name"
  # word splitting of $args is intended: it is a list of options
  # shellcheck disable=SC2086
  "${TRAIN[@]}" $args --out "$ZOO/$name" --resume || echo "!!! $name failed ($?)"
done
echo "=== $(date -u +%FT%TZ) queue done"
