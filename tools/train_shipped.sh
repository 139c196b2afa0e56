#!/usr/bin/env bash
# The runs behind saved_models/ddpm_animals.pt and results/, on one NVIDIA H100 (about 10 minutes; on a CPU, days):
#   DATA=../shared/data/animals RUNS=runs bash tools/train_shipped.sh
# then:  cp runs/ship/model.pt saved_models/ddpm_animals.pt  and  python tools/make_results.py (see Readme.txt)
set -euo pipefail
DATA=${DATA:-../shared/data/animals}
RUNS=${RUNS:-runs}
PYTHON=${PYTHON:-python3}
CLASSES=Dolphin,Giraffe,Panda,Tiger,Zebra  # differ in shape, colour and texture, so a glance tells them apart
COMMON="--data-dir $DATA --classes $CLASSES --conditional --image-size 64 --patch-size 2 --base-channels 64
        --channel-mults 1,2,2,2 --batch-size 256 --log-every 10 --lr 5e-4 --epochs 6464 --augment 0
        --head-channels 0 --min-snr-gamma 0 --low-res-share 0"
# --epochs counts passes over the 99 photos: 6,464 passes in batches of 256 are 2,500 steps (640,000 images)
# --augment 0 ... --low-res-share 0: these runs were made before those options existed (see Readme.txt's train)

# 1. The shipped model and two regularised variants, side by side on the GPU, each stopped by a time limit
#    (SIGINT: checkpoint, model.pt and run_info.json are written). The limit ended them near step 1,370 of
#    their 2,500-step schedule, which is where the shipped model stops on purpose: trained to the end (step 2),
#    the same run copies its photos. The loop keeps every checkpoint for `evaluate` (the trainer keeps two).
LIMIT=${LIMIT:-174}
declare -A EXTRA=([ship]="--dropout 0.1" [dropout3]="--dropout 0.3" [dropout3_wd]="--dropout 0.3 --weight-decay 0.1")
for run in ship dropout3 dropout3_wd; do
    timeout -s INT "$LIMIT" $PYTHON rollNumber_05.py train $COMMON ${EXTRA[$run]} --sample-every 500 --save-every 500 \
        --out-dir "$RUNS/$run" &
done
mkdir -p "$RUNS/ship_snapshots"
while [ -n "$(jobs -r)" ]; do
    for f in "$RUNS"/ship/checkpoints/step_*.pt; do [ -e "$f" ] && cp -n "$f" "$RUNS/ship_snapshots/"; done
    sleep 1
done
mkdir -p "$RUNS/ship_evals"
for f in "$RUNS"/ship_snapshots/step_*.pt; do
    $PYTHON rollNumber_05.py evaluate --checkpoint "$f" --data-dir "$DATA" --out-json "$RUNS/ship_evals/$(basename "$f" .pt).json"
done

# 2. The same configuration trained through its whole schedule (alone on the GPU: 152 s): the first model shipped.
$PYTHON rollNumber_05.py train $COMMON --dropout 0.1 --sample-every 500 --save-every 1000 --out-dir "$RUNS/full2500"

# 3. The command line's defaults of the time (32 px, the small U-Net, batch 256 on a GPU) for 80 s.
#    (The defaults' 2,070 passes are 801 steps of 256; before passes, the run stopped here took 1,400 of 1,600.)
timeout -s INT 80 $PYTHON rollNumber_05.py train --data-dir "$DATA" --classes $CLASSES --image-size 32 --epochs 2070 \
    --sample-every 400 --augment 0 --head-channels 0 --min-snr-gamma 0 --low-res-share 0 --out-dir "$RUNS/gpu_default"
