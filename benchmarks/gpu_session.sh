#!/usr/bin/env bash
# What one short GPU lease runs, in one command (docs/gpu.md has the results of each lease):
#
#   bash benchmarks/gpu_session.sh OUTDIR [SECONDS]
#
# within SECONDS (default 540) of wall time, on the first CUDA device:
#   1. environment (nvidia-smi, torch, CUDA);
#   2. probe: one dlgsanet_tiny training step at the fine-tuning batch (cuda_check.py --train-speed);
#   3. the fine-tuning cycle configs/gpu_dlgsanet_tiny_x4_ft.yaml, with total_iter set so that the
#      cosine schedule ends inside the time left for training (TRAIN_SECONDS, default 270), and beside
#      it (correctness only, no timing): cuda_check.py --ops --models --precision, `lightsr eval
#      --device cuda` on Set5 and `lightsr upscale --demo --device cuda --precision fp16`;
#   4. alone on the GPU: `lightsr bench --device cuda` (float32, float16) and the training step of
#      every model (cuda_check.py --train-speed, batch 16, LR 48).
# OUTDIR receives session.log (everything printed), the run's net_g_latest.safetensors and
# results.tgz (every table, JSON, log and the run folder). Data: $LIGHTSR_SHARED (default ../shared)
# must hold datasets/train and datasets/benchmark/Set5. Without a GPU, GPU_DRYRUN=1 runs it all on the
# CPU with tiny budgets (a check of this script, not of CUDA).
set -u
OUT=${1:?usage: gpu_session.sh OUTDIR [SECONDS]}
TOTAL=${2:-540}
TRAIN_S=${TRAIN_SECONDS:-270}
SHARED=${LIGHTSR_SHARED:-../shared}
PY=${PYTHON:-python3}
DEVICE=cuda
NUM_GPU=1
if [ "${GPU_DRYRUN:-0}" = 1 ]; then DEVICE=cpu; NUM_GPU=0; fi
T0=$(date +%s)
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/session.log") 2>&1

left() { echo $((T0 + TOTAL - $(date +%s))); }
log() { echo "=== [$(date +%T), $(( $(date +%s) - T0 )) s, $(left) s left] $*"; }
# run a phase with a time limit (seconds), never past the session's end minus a reserve
phase() {
    local limit=$1; shift
    local cap=$(( $(left) - 25 ))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 5 ]; then log "skipped (no time left): $*"; return 124; fi
    timeout -k 10 "$limit" "$@"
}

log "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
$PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
nproc

# the config's ../shared paths point at $SHARED
CFG=$WORK/gpu_dlgsanet_tiny_x4_ft.yaml
sed "s#\.\./shared/#$SHARED/#g" configs/gpu_dlgsanet_tiny_x4_ft.yaml > "$CFG"

log "probe: dlgsanet_tiny training step, batch 32, LR 48"
PROBE_ARGS=(--train-batch 32 --train-patch 48 --repeats 10)
[ "$DEVICE" = cpu ] && PROBE_ARGS=(--train-batch 2 --train-patch 16 --repeats 2)
phase 120 $PY benchmarks/cuda_check.py --device $DEVICE --train-speed --models-list dlgsanet_tiny "${PROBE_ARGS[@]}" \
    --json "$WORK/probe.json" | tee "$WORK/probe.md"
ITERS=$($PY - "$WORK/probe.json" "$TRAIN_S" <<'EOF'
import json, sys
try:
    step = json.load(open(sys.argv[1]))["train_speed"][0]["fp32_ms"] / 1000
except Exception as exc:  # no probe: a conservative count
    print(2000); print("probe failed:", exc, file=sys.stderr); sys.exit()
# 30 s to start (data, model, workers); 20% for data stalls, EMA, validation and checkpoints
print(max(200, min(30000, int((float(sys.argv[2]) - 30) / (1.2 * step)) // 100 * 100)))
EOF
)
[ "$DEVICE" = cpu ] && ITERS=40
log "training: $ITERS iterations (budget ${TRAIN_S} s)"
RUN=gpu_dlgsanet_tiny_x4_ft
TRAIN_ARGS=(train.total_iter=$ITERS num_gpu=$NUM_GPU)
[ "$DEVICE" = cpu ] && TRAIN_ARGS+=(datasets.train.batch_size=2 datasets.train.num_worker_per_gpu=1 val.val_freq=20
                                    logger.print_freq=10 logger.save_checkpoint_freq=20 train.num_threads=1)
phase $((TRAIN_S + 30)) $PY -m lightsr train "$CFG" --resume auto "${TRAIN_ARGS[@]}" > "$WORK/train.out" 2>&1 &
TRAIN_PID=$!

log "correctness beside the training (GPU shared: no timings here)"
CHECK_MODELS=(--models-list all)
[ "$DEVICE" = cpu ] && CHECK_MODELS=(--models-list dlgsanet_tiny imdn)
phase 240 $PY benchmarks/cuda_check.py --device $DEVICE --ops --models "${CHECK_MODELS[@]}" --precision \
    --data "$SHARED/datasets/benchmark" --json "$WORK/correctness.json" | tee "$WORK/correctness.md"
phase 60 $PY -m lightsr eval --model dlgsanet_tiny --scale 4 --data "$SHARED/datasets/benchmark" --sets Set5 \
    --device $DEVICE -o "$WORK/eval_x4" 2>&1 | tail -n 12
phase 60 $PY -m lightsr upscale --demo --device $DEVICE --precision fp16 -o "$WORK/demo" 2>&1 | tail -n 8

log "waiting for the training"
wait $TRAIN_PID
echo "training exit status: $?"
tail -n 25 "$WORK/train.out"
cp experiments/$RUN/models/net_g_latest.safetensors "$OUT/" 2>/dev/null || echo "no net_g_latest.safetensors"

log "speed, alone on the device"
BENCH_MODELS=(dlgsanet_tiny dlgsanet_light dlgsanet lgun lamnet lamnet_large imdn pan)
[ "$DEVICE" = cpu ] && BENCH_MODELS=(dlgsanet_tiny)
for dt in float32 float16; do
    phase 60 $PY -m lightsr bench --device $DEVICE --dtype $dt --scales 4 --models "${BENCH_MODELS[@]}" \
        --time-budget 1 --json "$WORK/bench_$dt.json" | tee "$WORK/bench_$dt.md"
done
SPEED_ARGS=(--train-batch 16 --train-patch 48 --repeats 5)
[ "$DEVICE" = cpu ] && SPEED_ARGS=(--train-batch 1 --train-patch 16 --repeats 1 --models-list dlgsanet_tiny)
phase 100 $PY benchmarks/cuda_check.py --device $DEVICE --train-speed "${SPEED_ARGS[@]}" \
    --json "$WORK/train_speed.json" | tee "$WORK/train_speed.md"

log "packing"
cp -r experiments/$RUN "$WORK/run" 2>/dev/null
rm -rf "$WORK/run/training_states" "$WORK"/run/models/*.pth "$WORK"/run/models/net_g_[0-9]*
tar czf "$OUT/results.tgz" -C "$WORK" . && ls -la "$OUT"
log "done"
