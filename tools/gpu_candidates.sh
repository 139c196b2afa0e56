#!/usr/bin/env bash
# Issue 15 at 64 px, prepared for one GPU session (H100/H200): the shipped recipe trained through its whole
# schedule (2,500 steps of 256, no time limit) without and with non-leaking augmentation, and with augmentation
# plus ambient training above step 300 (tools/ambient.py; at 32 px it kept samples a little further from the
# photos than augmentation alone at the same class share: results/memorisation_32px),
# side by side on the GPU, then every model's novelty and class share against guidance (tools/novelty.py);
# keeps the models.
#   DATA=.data/animals OUT=results/private/candidates bash tools/gpu_candidates.sh
# On the lent GPU machine the photos must travel with the tree: copy the five classes into .data/animals
# (git-ignored) and name .data in the run's carry. Everything it keeps lands in $OUT (at most 8 files).
set -euo pipefail
DATA=${DATA:-../shared/data/animals}
RUNS=${RUNS:-runs/candidates}
OUT=${OUT:-results/private/candidates}
PYTHON=${PYTHON:-python3}
CLASSES=Dolphin,Giraffe,Panda,Tiger,Zebra
COMMON="--data-dir $DATA --classes $CLASSES --conditional --image-size 64 --patch-size 2 --base-channels 64
        --channel-mults 1,2,2,2 --batch-size 256 --lr 5e-4 --epochs 6464 --dropout 0.1 --seed 0 --log-every 10
        --sample-every 500 --save-every 100000 --compile"
declare -A EXTRA=([aug00]="--augment 0" [aug15]="--augment 0.15" [aug30]="--augment 0.3" [amb300]="--augment 0.15")
declare -A PROGRAM=([amb300]="tools/ambient.py --noisy-from 300 train")
mkdir -p "$RUNS" "$OUT"
started=$(date +%s)
for run in "${!EXTRA[@]}"; do
    $PYTHON ${PROGRAM[$run]:-rollNumber_05.py train} $COMMON ${EXTRA[$run]} --out-dir "$RUNS/$run" > "$RUNS/$run.log" 2>&1 &
done
wait
echo "4 runs side by side: $(( $(date +%s) - started )) s" | tee "$RUNS/wall_time.txt"
models=(--model "shipped=saved_models/ddpm_animals.pt")
for run in aug00 aug15 aug30 amb300; do
    models+=(--model "$run=$RUNS/$run/model.pt")
    cp "$RUNS/$run/model.pt" "$OUT/model_$run.pt"  # 13 MB each: the one chosen ships without training again
done
$PYTHON tools/novelty.py --data-dir "$DATA" "${models[@]}" --out "$OUT"
tar czf "$OUT/runs.tgz" "$RUNS"/*.log "$RUNS"/wall_time.txt "$RUNS"/*/run_info.json "$RUNS"/*/log.csv \
    "$RUNS"/*/config.json "$RUNS"/*/samples
