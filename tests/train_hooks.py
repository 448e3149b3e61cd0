"""`python -m segearth_jax.train` with test hooks, for the kill-and-resume test:

    python -m tests.train_hooks --config configs/tiny.py --workdir DIR [--config.x=y ...] \
        [--log_data_order] [--sigkill_after_step N]

--log_data_order appends "<step> <record indices>" per step to DIR/data_order.<process>.txt;
--sigkill_after_step N kills the process (SIGKILL, no cleanup) right after step N and its
checkpoint are written. Both through `train_and_evaluate(on_step=...)`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import jax
from absl import app, flags

from segearth_jax import train

flags.DEFINE_bool("log_data_order", False, "record the record indices of every step")
flags.DEFINE_integer("sigkill_after_step", 0, "SIGKILL the run after this step's checkpoint")
FLAGS = flags.FLAGS


def hook(end: train.StepEnd) -> None:
    if FLAGS.log_data_order:
        path = Path(FLAGS.workdir) / f"data_order.{jax.process_index()}.txt"
        with open(path, "a") as f:
            f.write(f"{end.step} {' '.join(map(str, end.batch['record_index'].tolist()))}\n")
    if end.step == FLAGS.sigkill_after_step:  # a hard crash right after a checkpoint
        end.checkpoints.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    del argv
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, on_step=hook)


if __name__ == "__main__":
    train.define_flags()
    app.run(main)
