"""In-training evaluation (`config.eval_every`) as users run it: `python -m segearth_jax.train`
with an evaluation after every step, then `python -m segearth_jax.evaluate --mode
teacher_forced` on the models it wrote. The metrics logged during training (metrics.jsonl and
TensorBoard) must be the standalone evaluation's of the same parameters on the same records,
and `WORKDIR/best` must hold the step with the best `checkpoint.best_metric`.

Why the Dice loss alone (`loss.bce_weight=0`) at lr 3e-4: the mask logits start around 0 (a
quarter to half of the pixels positive), and at the tiny config's lr (2e-3) the first step
pushes every logit below -2 (the BCE of mostly-background maps): every predicted mask is empty
and every IoU is 0 until the masks recover after ~100 steps (tests/test_learning.py). With BCE
at lr 1e-4 the masks shrink step after step (gIoU 0.018, 0.0085, 0.0066: the best never moves
after step 1); with Dice alone they stay partly positive and, at lr 3e-4, the gIoU goes up then
down (measured 0.0300, 0.0311, 0.0296), so one run checks both that a better
evaluation replaces the best model and that a worse one keeps it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tests.conftest  # the offline environment and the compile flags of conftest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
LIMIT = 6  # eval.limit: not a multiple of the eval batch (4), so the last batch is padded
METRIC = "eval/gIoU"  # checkpoint.best_metric
# The live evaluation runs the unmerged LoRA parameters (fp32) on the training mesh, the
# standalone one the merged export: the logits differ by fp rounding, which may flip a pixel
# whose logit is ~0. One flipped pixel of a 128 x 128 image moves an IoU by < 1e-3 here.
# Measured (2026-12-07, this CPU): equal, difference 0.
TOL = 1e-3


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A small synthetic set (128 px images, objects drawn twice as large), its TFDS build and a
    trained tokenizer; the data flags of every command."""
    from configs import tiny
    from data import builders, synthetic
    from segearth_jax.input.sources import load_or_make_tokenizer, open_source

    root = tmp_path_factory.mktemp("eval_every")
    synthetic.generate(root / "raw", n=40, seed=0, size=128, object_scale=2.0)
    builders.build("synthetic", manual_dir=root / "raw", data_dir=root / "tfds")
    config = tiny.get_config()
    config.data.data_dir = str(root / "tfds")
    load_or_make_tokenizer(config, root, open_source(config.data, "train"))
    return dict(root=root, flags=[f"--config.data.data_dir={root / 'tfds'}",
                                  f"--config.tokenizer={root / 'tokenizer'}"])


def _run(module: str, *args: str) -> str:
    """A command compiled fast (tests/conftest.py): the training run, its in-training
    evaluations and the standalone ones all compiled alike, each running a few steps."""
    env = {**os.environ, "XLA_FLAGS": tests.conftest.FAST_COMPILE_XLA_FLAGS}
    p = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
    return p.stdout


def _tensorboard(logdir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value of the eval scalars clu wrote under `logdir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
                  for e in acc.Tensors(tag)} for tag in acc.Tags()["tensors"]
            if tag.startswith("eval/")}


def _standalone(summary: dict) -> dict[str, float]:
    """evaluate's summary JSON -> the scalars the training logs (`evaluate.summary_scalars`'s
    keys, rebuilt here from the report's fields)."""
    out = {f"eval/{k}": summary["average"][k] for k in ("gIoU", "cIoU")}
    for name, row in summary["subsets"].items():
        out.update({f"eval/{name}/{k}": row[k] for k in ("gIoU", "cIoU")})
    out["eval/n_samples"] = summary["average"]["n_samples"]
    out["eval/n_failed"] = summary["average"]["n_failed"]
    return out


def test_eval_every_metrics_equal_standalone_evaluate_and_best_follows_metric(env):
    work = env["root"] / "run"
    stdout = _run(
        "segearth_jax.train", "--config", "configs/tiny.py", "--workdir", work, *env["flags"],
        f"--config.total_steps={STEPS}", "--config.checkpoint.every=1", "--config.log_every=1",
        "--config.checkpoint.keep=3", "--config.data.batch_size=4", "--config.optim.lr=3e-4",
        "--config.loss.bce_weight=0", "--config.eval_every=1",
        f"--config.eval.limit={LIMIT}", "--config.eval.batch_size=4",
        f"--config.checkpoint.best_metric={METRIC}")

    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    evals = {m["step"]: m for m in lines if "eval/gIoU" in m}
    assert sorted(evals) == [1, 2, 3]  # one eval line per step, beside the training lines
    assert len([m for m in lines if "loss" in m]) == STEPS
    for m in evals.values():
        assert m["eval/n_samples"] == LIMIT and m["eval/n_failed"] == 0, m
        # Non-trivial values: masks neither empty nor all-one everywhere (gIoU, cIoU > 0).
        assert m["eval/gIoU"] > 0.005 and m["eval/cIoU"] > 0.005, m
    # The live parameters are evaluated, not the initial ones: each step's values differ.
    values = [evals[s][METRIC] for s in (1, 2, 3)]
    assert len(set(values)) == 3, values

    # best.json: the first step with the highest value (a later equal value does not replace
    # it); `best ... exported` printed at each step that improved on the best so far.
    best_step = 1 + int(np.argmax(values))
    best = json.loads((work / "best" / "best.json").read_text())
    assert best == {"step": best_step, "metric": METRIC, "value": values[best_step - 1]}
    improved = [s for s in (1, 2, 3) if values[s - 1] > max(values[:s - 1], default=-1.0)]
    printed = [int(x.split(" at step ")[1].split(":")[0]) for x in stdout.splitlines()
               if x.startswith(f"best {METRIC} ")]
    assert printed == improved, (printed, values)
    # This setup checks both ways: a later step replaced the first, and a worse one did not.
    assert 1 < len(improved) < STEPS, values

    # TensorBoard holds the same eval scalars (float32) at the same steps.
    board = _tensorboard(work / "logs")
    assert board.keys() == evals[1].keys() - {"step"}, sorted(board)
    for step, m in evals.items():
        for k, v in m.items():
            if k != "step":
                assert board[k][step] == pytest.approx(v, rel=1e-6, abs=1e-7), (k, step)

    # The standalone evaluation of the best model, and of another step's checkpoint exported
    # by `segearth_jax.export` (the tiny config's optimizer state is one flat vector), on the
    # same first LIMIT records gives the logged values.
    other = min(s for s in (1, 2, 3) if s != best_step)
    _run("segearth_jax.export", "--workdir", work, "--step", other, "--out", work / "other")
    for directory, step in ((work / "best", best_step), (work / "other", other)):
        out = env["root"] / f"eval_{directory.name}"
        _run("segearth_jax.evaluate", "--config", "configs/tiny.py", "--checkpoint", directory,
             *env["flags"], "--mode", "teacher_forced", "--limit", LIMIT,
             "--config.eval.batch_size=4", "--out", out)
        summary = json.loads((out / "eval_test_segearth_r2.json").read_text())
        assert summary["mode"] == "teacher_forced"
        ref, live = _standalone(summary), {k: v for k, v in evals[step].items() if k != "step"}
        assert ref.keys() == live.keys(), (sorted(ref), sorted(live))
        assert ref["eval/n_samples"] == LIMIT
        err = {k: abs(ref[k] - live[k]) for k in ref}
        assert max(err.values()) <= TOL, (directory.name, err, ref, live)
