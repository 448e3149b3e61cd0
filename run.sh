#!/usr/bin/env bash
# Quick start. `bash run.sh demo`: set up and run the main job; `bash run.sh test`: the tests;
# `bash run.sh app [--port 7860]`: the web app on the demo's model (after `bash run.sh demo`).
# Each creates ./.venv on first use (Python >= 3.11; torch is the CPU wheel torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
  if ! python -c "import segearth_jax, torch, pytest, gradio, selenium" 2>/dev/null \
      || [ pyproject.toml -nt .venv/.installed ]; then
    # (the grep drops this machine's pip notes about absent local index folders)
    python -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
    python -m pip install --quiet -e ".[app,test]" 2> >(grep -v "is ignored: it is neither" >&2)
    touch .venv/.installed
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}

demo() {
  setup
  rm -rf demo_out
  local times=() t
  stage() {  # stage NAME COMMAND...: runs it and records its wall time
    local name=$1 start=$SECONDS
    shift
    echo "== $name"
    "$@"
    times+=("$(printf '%-34s %5d s' "$name" $((SECONDS - start)))")
  }
  stage "1/5 synthetic data (2000 scenes)" \
    python -m data.synthetic --out demo_out/synthetic_raw --n 2000 --object-scale 2
  stage "2/5 TFDS (array_record) build" \
    python -m data.builders synthetic --manual-dir demo_out/synthetic_raw \
    --data-dir demo_out/tfds
  stage "3/5 train (configs/tiny.py, CPU)" \
    python -m segearth_jax.train --config configs/tiny.py --workdir demo_out/tiny_run \
    --config.data.data_dir=demo_out/tfds
  stage "4/5 evaluate (held-out test split)" \
    python -m segearth_jax.evaluate --config configs/tiny.py \
    --checkpoint demo_out/tiny_run/export --config.data.data_dir=demo_out/tfds --out demo_out/eval
  # The first record of the semantic test subset: its image and instruction.
  read -r image prompt < <(python - <<'PY'
import json
r = json.load(open("demo_out/synthetic_raw/test/annotations/semantic.json"))[0]
print("demo_out/synthetic_raw/test/images/" + r["image_name"], r["description"])
PY
)
  stage "5/5 predict (one test image)" \
    python -m segearth_jax.predict --checkpoint demo_out/tiny_run/export --image "$image" \
    --prompt "$prompt" --out demo_out/predict
  echo
  echo "demo done. Time per stage:"
  for t in "${times[@]}"; do echo "  $t"; done
  echo "Where to look:"
  echo "  held-out scores per subset: demo_out/eval/eval_test_segearth_r2.json (table above)"
  echo "  the prediction:             demo_out/predict/overlay.png (masks named), result.json"
  echo "  training curves:            tensorboard --logdir demo_out/tiny_run/logs"
  echo "  the web app on this model:  bash run.sh app"
}

tests() {
  setup
  # One worker per core; each test file stays on one worker (module fixtures train models once),
  # handed out slowest first (tests/conftest.py: SLOW_FILES, kept in order by
  # --no-loadscope-reorder).
  # The slowest tests are listed at the end (CI's wall time is watched).
  python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=15 tests "$@"
}

app() {
  setup
  if [ ! -f demo_out/tiny_run/export/model.json ]; then
    echo "no demo model in demo_out/tiny_run/export: run 'bash run.sh demo' first" \
      "(or: python -m segearth_jax.app --checkpoint MODEL_DIR)" >&2
    exit 1
  fi
  python -m segearth_jax.app --checkpoint demo_out/tiny_run/export \
    --examples demo_out/synthetic_raw/test "$@"
}

case "${1:-}" in
  demo) demo ;;
  test) shift; tests "$@" ;;
  app) shift; app "$@" ;;
  *) echo "usage: bash run.sh demo | bash run.sh test [pytest args] | bash run.sh app [--port N]" >&2
     exit 2 ;;
esac
