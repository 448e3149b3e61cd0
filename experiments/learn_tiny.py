"""Does the tiny SegEarth-R2 learn? Train `configs/tiny.py` on the synthetic set, evaluate the
held-out test split (generation + masks, preset segearth_r2) and compare with the best trivial
masks (all-zero, all-one) scored by the same evaluator.

    python experiments/learn_tiny.py --out runs/learn_tiny --n 2000 --steps 3000 \
        --object-scale 2 --eval-limit 400 [--set optim.lr=3e-4 ...]

Writes OUT/learning.json (gIoU, cIoU and the trivial masks' gIoU on the same records). The
in-suite check (tests/test_learning.py) is the short version on the easiest records:
`--n 1200 --steps 500 --object-scale 2 --subsets semantic single explicit short
--set data.max_len=96 data.max_prompt_len=80 eval.max_new_tokens=32 --eval-limit 96`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(out: Path, n: int, steps: int, extra: tuple[str, ...] = (), object_scale: float = 1.0,
        eval_limit: int | None = None, subsets: tuple[str, ...] = ()) -> dict:
    from absl import flags

    from configs import tiny
    from data import builders, synthetic
    from segearth_jax.evaluate import evaluate, trivial_baselines
    from segearth_jax.input.sources import open_source
    from segearth_jax.train import train_and_evaluate

    flags.FLAGS.mark_as_parsed()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "raw").exists():
        synthetic.generate(out / "raw", n=n, seed=0, object_scale=object_scale,
                           subsets=subsets)
    builders.build("synthetic", manual_dir=out / "raw", data_dir=out / "tfds")
    config = tiny.get_config()
    config.data.data_dir = str(out / "tfds")
    config.total_steps = steps
    for kv in extra:
        key, value = kv.split("=", 1)
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = type(node[leaf])(value)
    train_and_evaluate(config, out / "run")
    summary = evaluate(config, out / "run" / "export", out=out, limit=eval_limit)
    base = trivial_baselines(open_source(config.data, config.data.eval_split), limit=eval_limit)
    result = {"steps": steps, "n": n, "object_scale": object_scale, "subsets": list(subsets),
              "eval_limit": eval_limit,
              "gIoU": summary["average"]["gIoU"],
              "cIoU": summary["average"]["cIoU"], **{f"trivial_{k}": v for k, v in base.items()}}
    (out / "learning.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="synthetic object size multiplier (python -m data.synthetic)")
    parser.add_argument("--subsets", nargs="+", default=(),
                        help="synthetic records of these subsets only (python -m data.synthetic)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="score only the first N test records (all by default)")
    parser.add_argument("--set", nargs="*", default=(), help="config overrides key=value")
    args = parser.parse_args()
    run(args.out, args.n, args.steps, tuple(args.set), args.object_scale, args.eval_limit,
        tuple(args.subsets))


if __name__ == "__main__":
    main()
