#!/usr/bin/env bash
# What one GPU lease runs, in one command (docs/gpu.md: the plan and each lease's results):
#
#   bash benchmarks/gpu_session.sh [--dry-run] [--out DIR] [--seconds N] [--resume-from FILE]
#
# Within N seconds (default 540) of wall time, on the first CUDA device, in this order:
#   1. correctness: every Triton kernel and every fast op on CUDA against its float64 CPU reference
#      (output and every input gradient, fp32 / bf16 / fp16), the models (GPU vs CPU, reference vs
#      fast vs Triton, training gradients) and the shipped weights on Set5 per precision
#      (cuda_check.py --ops --triton --models --precision);
#   2. the inference table: every model, IMDN and PAN in one run, fp32 / bf16 / fp16, today's ops /
#      Triton / CUDA graph, median ms and MAC throughput relative to IMDN's (cuda_check.py --infer-speed);
#   3. the training-step table, batch 16 x LR 48: reference ops, today's ops, Triton, Triton with the
#      step in a CUDA graph; kernel launches per step from the profiler (cuda_check.py --train-table);
#   4. with the time left: a fine-tuning cycle of the default model's x4 weights
#      (configs/gpu_dlgsanet_tiny_x4_ft.yaml, `--resume auto`), total_iter sized from a step measured
#      at the config's batch on the path the trainer takes (Triton if lightsr.ops dispatches to it).
# DIR (default docs/results/gpu_<machine>_<date>) receives session.log, every table (*.md) with its
# JSON, the run's config and logs, net_g_latest.safetensors and resume.tgz (the last checkpoint:
# `--resume-from DIR/resume.tgz` at the next lease continues the cycle). Images come from
# $LIGHTSR_SHARED (default ../shared): datasets/train and datasets/benchmark/Set5; without them the
# phases that need images say so and are skipped.
#
# --dry-run runs all of it on the CPU at toy sizes, the Triton kernels under triton's interpreter
# (TRITON_INTERPRET=1; skipped with a message when triton is not installed) and the CUDA graphs
# falling back to eager: a check of this script before a lease, not of CUDA. DIR defaults to a
# temporary folder, the run to a temporary experiments root.
set -u
DRY=${GPU_DRYRUN:-0}
OUT=""
TOTAL=""
RESUME_FROM=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) OUT=$2; shift ;;
        --seconds) TOTAL=$2; shift ;;
        --resume-from) RESUME_FROM=$2; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) if [ -z "$OUT" ]; then OUT=$1; else TOTAL=$1; fi ;;  # old form: OUTDIR [SECONDS]
    esac
    shift
done
# paths given relative to where the script was started; then work from the repository root
[ -n "$OUT" ] && OUT=$(realpath -m "$OUT")
[ -n "$RESUME_FROM" ] && RESUME_FROM=$(realpath -m "$RESUME_FROM")
[ -n "${LIGHTSR_SHARED:-}" ] && LIGHTSR_SHARED=$(realpath -m "$LIGHTSR_SHARED")
cd "$(dirname "$0")/.." || exit 2
SHARED=${LIGHTSR_SHARED:-$(realpath -m ../shared)}
# the interpreter: $PYTHON, else the repository's .venv (README's set-up), else python3
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=${PYTHON:-python3}; fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_session.sh: $PY cannot import torch; set PYTHON=/path/to/python or run the README's set-up" >&2
    exit 2
fi
T0=$(date +%s)
WORK=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then
    DEVICE=cpu; NUM_GPU=0; MACHINE=cpu-dryrun
    SLOW=5; TOTAL=${TOTAL:-3000}  # phase limits x5: the interpreter and a shared CPU
    export TRITON_INTERPRET=1  # before any process imports triton
else
    DEVICE=cuda; NUM_GPU=1
    SLOW=1; TOTAL=${TOTAL:-540}
    MACHINE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | awk '{print tolower($NF)}')
fi
[ -n "$OUT" ] || OUT=$([ "$DRY" = 1 ] && echo "$WORK/out" || echo "docs/results/gpu_${MACHINE:-unknown}_$(date +%F)")
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1

left() { echo $((T0 + TOTAL - $(date +%s))); }
log() { echo "=== [$(date +%T), $(( $(date +%s) - T0 )) s, $(left) s left] $*"; }
FAILED=()
# run a phase with a time limit (seconds, x SLOW), never past the session's end minus a reserve for packing
phase() {
    local limit=$(( $1 * SLOW )); shift
    local cap=$(( $(left) - 30 ))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 5 ]; then log "skipped (no time left): $*"; return 124; fi
    timeout -k 10 "$limit" "$@"
    local rc=$?
    [ $rc -eq 124 ] && log "stopped at its time limit ($limit s): $*"
    return $rc
}
# a table phase: the script's output goes to OUT/NAME.md (and NAME.json); a failure is remembered
table() {
    local name=$1 limit=$2; shift 2
    phase "$limit" $PY benchmarks/cuda_check.py --device $DEVICE "$@" --json "$OUT/$name.json" | tee "$OUT/$name.md"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && FAILED+=("$name (exit $rc)")
    return 0
}
have() { [ -e "$SHARED/$1" ]; }

log "environment ($([ "$DRY" = 1 ] && echo "dry run on the CPU" || echo "CUDA lease"); results in $OUT)"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
$PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
$PY -c 'import triton; print("triton", triton.__version__)' 2>/dev/null || echo "triton: not installed (pip install 'lightsr[triton]'): the Triton rows are skipped"
git log -1 --format='lightsr commit %h %cd' 2>/dev/null || true
nproc

# --- 1. correctness ------------------------------------------------------------------------------
log "1. correctness: Triton kernels and fast ops against the CPU reference, models, shipped weights"
CHECK=(--ops --triton --models --models-list all)
# the dry run: toy sizes; --ops in float32 only (the bounds are CUDA's, the CPU's reduced-precision ops differ)
[ "$DRY" = 1 ] && CHECK=(--ops --dtypes float32 --triton --triton-dtypes float32 float16 --op-sizes 1x1x1 2x3x5
                         --models --models-list dlgsanet_tiny imdn --model-shapes 2x4x4 --weights dlgsanet_tiny:4)
if have datasets/benchmark/Set5; then
    CHECK+=(--precision --data "$SHARED/datasets/benchmark")
else
    echo "no $SHARED/datasets/benchmark/Set5: shipped weights not checked"
fi
table correctness 200 "${CHECK[@]}"

# --- 2. inference table --------------------------------------------------------------------------
log "2. inference: every model, IMDN and PAN, fp32 / bf16 / fp16"
INFER=(--models-list all --repeats 10)
[ "$DRY" = 1 ] && INFER=(--models-list dlgsanet_tiny imdn --infer-size 4 4 --dtypes float32 --repeats 1)
table inference 120 --infer-speed "${INFER[@]}"

# --- 3. training-step table ----------------------------------------------------------------------
log "3. training step, batch 16 x LR 48: reference ops, today's ops, Triton, Triton + CUDA graph"
TRAIN=(--models-list all --train-batch 16 --train-patch 48 --repeats 5)
[ "$DRY" = 1 ] && TRAIN=(--models-list dlgsanet_tiny --train-batch 1 --train-patch 4 --repeats 1)
table train_step 150 --train-table "${TRAIN[@]}"

# --- 4. training cycle ---------------------------------------------------------------------------
log "4. fine-tuning cycle of dlgsanet_tiny x4 with the time left"
RUN_ROOT=experiments/gpu_dlgsanet_tiny_x4_ft
[ "$DRY" = 1 ] && RUN_ROOT=$WORK/run
if ! have datasets/train; then
    echo "no $SHARED/datasets/train: no training cycle"
else
    mkdir -p "$RUN_ROOT"
    [ -n "$RESUME_FROM" ] && tar xzf "$RESUME_FROM" -C "$RUN_ROOT" && echo "resuming from $RESUME_FROM"
    CFG=$WORK/gpu_dlgsanet_tiny_x4_ft.yaml
    sed "s#\.\./shared/#$SHARED/#g" configs/gpu_dlgsanet_tiny_x4_ft.yaml > "$CFG"  # its ../shared paths -> $SHARED
    VARIANT=$($PY -c "
import sys, torch; sys.path.insert(0, 'benchmarks'); import cuda_check as cc
print('triton' if cc.dispatch_wired(torch.device('$DEVICE')) else 'ops')")
    PROBE=(--train-batch 32 --train-patch 48 --repeats 5)
    [ "$DRY" = 1 ] && PROBE=(--train-batch 2 --train-patch 24 --repeats 1)
    log "probe: dlgsanet_tiny step at the config's batch, the trainer's path ($VARIANT)"
    table probe 60 --train-table --models-list dlgsanet_tiny --variants "$VARIANT" "${PROBE[@]}"
    TRAIN_S=$(( $(left) - 60 ))
    ITERS=$($PY - "$OUT/probe.json" "$VARIANT" "$TRAIN_S" <<'EOF'
import json, sys
try:
    step = json.load(open(sys.argv[1]))["train_table"][0][f"{sys.argv[2]}_ms"] / 1000
except Exception as exc:  # no probe: a conservative count
    print(1000); print("probe failed:", exc, file=sys.stderr); sys.exit()
# 30 s to start (data, model, workers); 20% for data stalls, EMA, validation and checkpoints
print(max(100, min(30000, int((float(sys.argv[3]) - 30) / (1.2 * step)) // 100 * 100)))
EOF
)
    TRAIN_ARGS=(train.total_iter=$ITERS num_gpu=$NUM_GPU path.experiments_root=$RUN_ROOT)
    [ "$DRY" = 1 ] && ITERS=20 && TRAIN_ARGS=(train.total_iter=20 num_gpu=0 path.experiments_root=$RUN_ROOT
        datasets.train.batch_size=2 datasets.train.lq_size=24 datasets.train.num_worker_per_gpu=1
        datasets.train.dataset_enlarge_ratio=1 val.val_freq=20 logger.print_freq=10
        logger.save_checkpoint_freq=20 train.num_threads=1)
    log "training: $ITERS iterations (about $TRAIN_S s left for it)"
    phase $(( (TRAIN_S + 30) / SLOW )) $PY -m lightsr train "$CFG" --resume auto "${TRAIN_ARGS[@]}" > "$WORK/train.out" 2>&1
    RC=$?
    echo "training exit status: $RC"
    [ "$RC" -ne 0 ] && FAILED+=("training (exit $RC)")
    tail -n 25 "$WORK/train.out"
fi

# --- packing -------------------------------------------------------------------------------------
log "packing"
if [ -d "$RUN_ROOT/models" ]; then
    mkdir -p "$OUT/run"
    cp "$RUN_ROOT"/*.yaml "$RUN_ROOT"/*.csv "$RUN_ROOT"/*.log "$OUT/run/" 2>/dev/null
    cp "$RUN_ROOT/models/net_g_latest.safetensors" "$OUT/" 2>/dev/null || echo "no net_g_latest.safetensors"
    LAST=$(ls "$RUN_ROOT/training_states" 2>/dev/null | sed -n 's/^\([0-9]*\)\.state$/\1/p' | sort -n | tail -n1)
    [ -n "$LAST" ] && tar czf "$OUT/resume.tgz" -C "$RUN_ROOT" "training_states/$LAST.state" "models/net_g_$LAST.pth" \
        && echo "resume.tgz: iteration $LAST (--resume-from it continues the cycle)"
fi
cp "$WORK/train.out" "$OUT/run/" 2>/dev/null
ls -la "$OUT"
case $OUT in "$WORK"/*) ;; *) rm -rf "$WORK" ;; esac  # the scratch folder, unless the results are in it
if [ ${#FAILED[@]} -gt 0 ]; then
    log "done; failed or stopped: ${FAILED[*]}"
    exit 1
fi
log "done"
