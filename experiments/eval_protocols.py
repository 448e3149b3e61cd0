"""What each metric preset and evaluation mode give on the same predictions, so numbers can be
compared across papers.

    python experiments/eval_protocols.py --config configs/tiny.py --checkpoint DIR \
        [--config.data.data_dir=...] [--limit 96] [--split test]

For each mode (`teacher_forced`, then `generate`) the model predicts once
(`segearth_jax.evaluate.predictions`), and the same masks are scored under every preset of
`segearth_jax.metrics.PRESETS`. Prints one markdown table: rows = preset, columns = gIoU / cIoU
(average over subsets, percent) per mode, and in generate mode the share of answers with as many
`[SEG]` as GT masks.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from segearth_jax import cli, metrics  # noqa: E402
from segearth_jax.evaluate import (  # noqa: E402
    MODES,
    check_model_inputs,
    open_eval_source,
    predictions,
    score,
)
from segearth_jax.inference import SegEarthPredictor  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (defined only when run as a program)."""
    config_flags.DEFINE_config_file("config", None, "Required: the training configuration file "
                                    "(its data and eval sections are used).")
    flags.DEFINE_string("checkpoint", None, "Required: a SegEarth-R2 model directory.")
    flags.DEFINE_string("split", None, "The dataset split (default: config.data.eval_split).")
    flags.DEFINE_integer("limit", None, "Evaluate only the first N records.")
    cli.require_flags("config", "checkpoint")


@cli.entry_point
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.check_dir(FLAGS.checkpoint, "--checkpoint", "a SegEarth-R2 model directory")
    config = FLAGS.config
    split = FLAGS.split or config.data.eval_split
    check_model_inputs(config.data, FLAGS.checkpoint)
    predictor = SegEarthPredictor(FLAGS.checkpoint, max_new_tokens=config.eval.max_new_tokens,
                                  seed=config.seed)
    source = open_eval_source(config, split, "all")
    table = {}
    for mode in MODES:
        evaluators = {p: metrics.Evaluator(p) for p in metrics.PRESETS}
        for line, pred, gt in predictions(config, predictor, source, mode, FLAGS.limit):
            for ev in evaluators.values():
                score(ev, dict(line), pred, gt)
        for name, ev in evaluators.items():
            s = ev.summary()
            row = table.setdefault(name, {})
            row[mode] = s["average"]
            if mode == "generate":
                em = [r["seg_emission"] for r in s["subsets"].values() if "seg_emission" in r]
                n = sum(sum(e.values()) for e in em)
                row["equal"] = sum(e["equal"] for e in em) / max(n, 1)
    n = table["segearth_r2"]["teacher_forced"]["n_samples"]
    print(f"\n{config.data.name} {split}, {n} records\n")
    print("| preset | teacher-forced gIoU | cIoU | generate gIoU | cIoU | answers with the GT "
          "[SEG] count |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        tf, gen = row["teacher_forced"], row["generate"]
        print(f"| `{name}` | {100 * tf['gIoU']:.2f} | {100 * tf['cIoU']:.2f} | "
              f"{100 * gen['gIoU']:.2f} | {100 * gen['cIoU']:.2f} | {100 * row['equal']:.0f}% |")


if __name__ == "__main__":
    define_flags()
    cli.run_absl(main)
