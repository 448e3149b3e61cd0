#!/usr/bin/env bash
# Quick start. `bash run.sh demo`: set up and run the main job; `bash run.sh test`: the tests.
# Both create ./.venv on first use (Python >= 3.11; torch is the CPU wheel torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
  if ! python -c "import segearth_jax, torch, pytest" 2>/dev/null \
      || [ pyproject.toml -nt .venv/.installed ]; then
    # (the grep drops this machine's pip notes about absent local index folders)
    python -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
    python -m pip install --quiet -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
    touch .venv/.installed
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}

demo() {
  setup
  rm -rf demo_out
  echo "== 1/3 a tiny random Mipha checkpoint in the published HF layout"
  python -m convert.tiny_mipha --out demo_out/tiny_mipha_hf
  echo "== 2/3 convert it to Flax (orbax) params"
  python -m convert.mipha --src demo_out/tiny_mipha_hf --out demo_out/tiny_mipha --dtype float32
  echo "== 3/3 greedy generation with the KV cache"
  python -m segearth_jax.generate --model demo_out/tiny_mipha \
    --prompt "Please segment the airplane." --max-new-tokens 24
}

tests() {
  setup
  python -m pytest -q tests "$@"
}

case "${1:-}" in
  demo) demo ;;
  test) shift; tests "$@" ;;
  *) echo "usage: bash run.sh demo | bash run.sh test [pytest args]" >&2; exit 2 ;;
esac
