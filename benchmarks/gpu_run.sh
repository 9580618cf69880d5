#!/usr/bin/env bash
# The GPU checks of issues 9 and 11 as ONE prepared device call, most important first.
#
# Why one script: a task that is lent a GPU gets ~15 minutes of device time in all (start-up,
# idle and every try included), at most 10 minutes per command. Each step below has its own
# time limit and writes its log as it goes, so a step that overruns costs only its own slot and
# what ran before it still comes back. The limits add up to 450 s (7.5 minutes); call it with
# timeout_s=480. What the steps need on a CPU rehearsal: 82 s in all at the small sizes.
#
# On the device machine (python3 there holds CUDA torch; pytorch-optimizer is not installed
# there, so carry its wheel, see benchmarks/README.md "GPU run"):
#
#     bash benchmarks/gpu_run.sh            # logs and CSVs under $OUT (at most 8 files come back)
#
# Rehearsal on a CPU machine, tiny sizes, to check every command before spending GPU time:
#
#     GPU_RUN_DEVICE=cpu GPU_RUN_SMALL=1 PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh /tmp/gpu_rehearsal
#
# GPU_RUN_DRY=1 only prints each step's command, one argument per line (tests/test_gpu_run.py
# parses every benchmark command with the benchmark's own argument parser).
set -u
OUT_DIR=${1:-${OUT:-benchmarks/results_gpu/latest}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
DEVICE=${GPU_RUN_DEVICE:-cuda}
SMALL=${GPU_RUN_SMALL:-0}

if [ "${GPU_RUN_DRY:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
    # carried wheels (pytorch-optimizer for SOAP): installed aside, never over the image's torch
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
START=$SECONDS

# step NAME SECONDS COMMAND...: run with a time limit, log to $OUT_DIR/NAME.log, show its tail
step() {
    local name=$1 limit=$2
    shift 2
    if [ "${GPU_RUN_DRY:-0}" = 1 ]; then
        printf 'STEP %s\n' "$name"
        printf '%s\n' "$@"
        return
    fi
    echo "== $name: limit ${limit} s, starts at $((SECONDS - START)) s"
    timeout -k 5 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -n 30 "$OUT_DIR/$name.log"
    echo "== $name: rc $rc$([ $rc -eq 124 ] && echo ' (time limit)'), ends at $((SECONDS - START)) s"
}

if [ "$SMALL" = 1 ]; then
    GRID=32; STEPS=4; PAPER=(--quick); E2E=(--quick --uncertainty off)
else
    GRID=128; STEPS=50; PAPER=(--tasks chromatin langevin heat --backbones mlp --noise 0.01 --iterations 1000
                               --timeout 20); E2E=(--counts 1e6 --seeds 0)
fi

# 1. what the machine is (the versions go next to every number)
step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; \
    $PY -c 'import torch, chromflow, platform; print(platform.python_version(), torch.__version__, \
torch.cuda.is_available() and torch.cuda.get_device_name(), chromflow.__version__)'"
# 2. the CUDA tests (CI never has a GPU): same maps on CUDA as on CPU, training, the layer
step tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_inverse.py tests/test_mollifier.py \
    tests/test_training.py
# 3. issue 11's headline: per-step time and peak memory at 128^2, mollifier vs Taylor mode vs recursive
step chromatin_step 90 "$PY" benchmarks/chromatin_step.py --device "$DEVICE" --grid "$GRID" --steps "$STEPS" \
    --modes mollifier autodiff autodiff_recursive
# 4. the default run of a 128^2 nucleus with uncertainty (target < 3 s on an H100/H200)
step end_to_end 90 "$PY" benchmarks/end_to_end.py --device "$DEVICE" --methods pinn "${E2E[@]}" \
    --out "$OUT_DIR/end_to_end.csv"
# 5. the paper's table, one backbone and noise level per task, equal iteration budgets
step paper_table 150 "$PY" benchmarks/paper_table.py --device "$DEVICE" "${PAPER[@]}" \
    --out "$OUT_DIR/paper_table.csv"
echo "== all steps done in $((SECONDS - START)) s; files in $OUT_DIR"
