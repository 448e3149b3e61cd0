#!/usr/bin/env bash
# The full-size GPU check, made to fit one device call of <= 10 minutes on a bare H100/H200 image
# that has jax[cuda], flax, optax, orbax, torch and transformers (not ml_collections): run from
# the repository root with the wheels of what the image lacks in .whl/ (ml_collections; fetch
# them here with `pip download --no-deps -d .whl ml_collections==1.1.0`) and carry ".whl".
#
#   bash experiments/gpu_check.sh            # writes $OUT (or ./gpu_check_out) and prints
#
# 1. bench_infer --preset full: s/image by stage, ours vs the transformers pipeline (~2 min).
# 2. bench_train --preset lasers: the paper's step (batch 4, bf16) with the spatial loss off and
#    on: step time, MFU / HFU from the jaxpr FLOP count, XLA's memory analysis, and the same
#    step's memory report (values live at the peak) to compare with the CPU proxy figures
#    (experiments/RESULTS.md) (~3 min each). The PyTorch reference runs first in each.
# Each part has its own time limit, so one slow part cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$out/gpu.txt"

run() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt" | grep -v "^W0000\|^I0000"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

run infer_full 130 python3 experiments/bench_infer.py --preset full --iters 5
run train_none 160 python3 experiments/bench_train.py --preset lasers --spatial none --iters 5
run train_paper 160 python3 experiments/bench_train.py --preset lasers --spatial paper --iters 5
run train_memory 80 python3 experiments/bench_train.py --preset lasers --spatial paper \
  --compile-only --no-flops --memory-report 15 --json "$out/train_memory.json"
