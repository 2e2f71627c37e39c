#!/usr/bin/env bash
# One proxy run of docs/TRAINING.md's identity experiments: fine-tune the shipped layered demo model for
# STEPS optimizer steps (default 200; the learning-rate schedule is that of a 500-step run, so rows compare at
# equal steps), export that checkpoint and measure it on the fixed 48-case proxy set. One torch thread.
#
#   scripts/proxy_run.sh NAME DATA_DIR [train flags...]      # e.g. scripts/proxy_run.sh control data/train --aligned-unlocked 0.7
#   env: HELDOUT (default data/heldout), RUNS (default runs), STEPS (default 200), MODEL (default the shipped
#   demo), POOL (default RUNS/pool-NAME: an existing pool cache of the same data and sampling is reused)
set -euo pipefail
NAME=$1; DATA=$2; shift 2
HELDOUT=${HELDOUT:-data/heldout}; RUNS=${RUNS:-runs}; STEPS=${STEPS:-200}
MODEL=${MODEL:-src/layercomposer/weights/demo}; POOL=${POOL:-$RUNS/pool-$NAME}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -d "$HELDOUT" ] || layercomposer world generate --out "$HELDOUT" --scenes 200 --seed 1 --size 256 --split heldout
layercomposer train --data "$DATA" --output "$RUNS/$NAME" --model "$MODEL" \
  --train-text-encoder --steps 500 --batch-size 8 --lr 3e-4 --warmup 50 --lr-schedule linear --ema-decay 0.995 \
  --sample-pool 800 --pool-cache "$POOL" --eval-data "$HELDOUT" --eval-every 200 --save-every 100 \
  --export-dtype float16 "$@" &
TRAIN=$!
ckpt=$(printf "%s/%s/checkpoints/step-%07d/trainer_state.json" "$RUNS" "$NAME" "$STEPS")
while [ ! -f "$ckpt" ]; do
  kill -0 $TRAIN 2>/dev/null || { wait $TRAIN; exit $?; }
  sleep 15
done
kill $TRAIN 2>/dev/null || true
wait $TRAIN 2>/dev/null || true
layercomposer train-export "$RUNS/$NAME" --step "$STEPS" -o "$RUNS/$NAME-$STEPS" --name demo
layercomposer eval sprites --model "$RUNS/$NAME-$STEPS" --scenes 48 --no-hard-lock --no-ablations --data "$HELDOUT" \
  --json "$RUNS/eval-$NAME.json"
python scripts/experiment_table.py "$NAME=$RUNS/$NAME@$STEPS:$RUNS/eval-$NAME.json"
