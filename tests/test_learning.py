"""The tiny config learns: trained on synthetic scenes, it segments held-out images far better
than the best trivial mask (all-zero or all-one), scored by the real evaluator.

The short, in-suite version of `experiments/learn_tiny.py` (its long runs on the full synthetic
mix are in `experiments/RESULTS.md`): to fit a CPU test budget it trains on the easiest
records only (`--subsets semantic single explicit short`, objects drawn twice as large) for a
few hundred steps, then goes through the user's path: train_and_evaluate -> merged export ->
evaluate (greedy generation, one mask per generated `[SEG]`) on the held-out test split.
"""

from __future__ import annotations

import json

import numpy as np

EASY = ("semantic", "single", "explicit", "short")
N_RECORDS, STEPS, EVAL_RECORDS = 1200, 500, 96


def test_tiny_config_beats_trivial_masks_on_held_out_images(tmp_path):
    from configs import tiny
    from data import builders, synthetic
    from segearth_jax.evaluate import evaluate, trivial_baselines
    from segearth_jax.input.sources import open_source
    from segearth_jax.train import train_and_evaluate

    synthetic.generate(tmp_path / "raw", n=N_RECORDS, seed=0, object_scale=2.0, subsets=EASY)
    builders.build("synthetic", manual_dir=tmp_path / "raw", data_dir=tmp_path / "tfds")
    config = tiny.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.max_len, config.data.max_prompt_len = 96, 80  # short records: shorter sequences
    config.eval.max_new_tokens = 32
    config.total_steps = STEPS
    config.checkpoint.every = STEPS
    config.optim.lr, config.log_every = 1e-3, 25  # the measured recipe below (not the demo's)
    train_and_evaluate(config, tmp_path / "run")

    # Every loss term falls (means over the first and the last log windows of 25 steps).
    logged = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    first, last = logged[0], logged[-1]
    assert last["step"] == STEPS and all(np.isfinite(m["loss"]) for m in logged)
    for key, factor in (("text_loss", 0.2), ("bce_loss", 0.6), ("dice_loss", 0.6),
                        ("spatial_loss", 0.9)):
        assert last[key] < factor * first[key], (key, first, last)

    report = evaluate(config, tmp_path / "run/export", out=tmp_path / "eval",
                      limit=EVAL_RECORDS)
    summary = report["average"]
    assert report["mode"] == "generate"  # configs/tiny.py: the demo's whole path
    trivial = trivial_baselines(open_source(config.data, config.data.eval_split),
                                limit=EVAL_RECORDS)
    assert summary["n_samples"] == EVAL_RECORDS and summary["n_failed"] == 0, summary
    # Measured (2026-11-23, idle 2-core CPU, 8 min): gIoU 0.45 (cIoU 0.46, Pr@0.5 0.48) against
    # 0.07 for all-one and 0 for all-zero masks; first -> last 25 steps: text 6.6 -> 0.35, BCE
    # 2.11 -> 0.66, dice 4.41 -> 1.51, spatial 13.5 -> 9.3. With other seeds (model and data)
    # the same setup gave 0.65 against 0.09; 300 steps gave 0.21 to 0.52 (experiments/RESULTS.md):
    # the masks improve after a plateau of ~125 steps, hence 500 steps and a 3x margin.
    best_trivial = max(trivial.values())
    assert summary["gIoU"] > 3 * best_trivial and summary["gIoU"] > 0.3, (summary, trivial)

    # The official protocol (teacher-forced: prompt + GT answer, masks at the GT [SEG]s) on the
    # same records: where generation reproduced the GT answer exactly, both modes feed the
    # same tokens, so they give the same IoUs (up to masks thresholded from hidden states of
    # the KV-cache decode vs one full forward: fp32 rounding may flip a boundary pixel).
    forced = evaluate(config, tmp_path / "run/export", out=tmp_path / "eval_tf",
                      limit=EVAL_RECORDS, mode="teacher_forced")
    assert forced["mode"] == "teacher_forced"
    assert forced["average"]["n_samples"] == EVAL_RECORDS and forced["average"]["n_failed"] == 0
    read = lambda d: {x["id"]: x for x in map(json.loads, (
        tmp_path / d / "eval_test_segearth_r2_records.jsonl").read_text().splitlines())}
    gen, tf = read("eval"), read("eval_tf")
    source = open_source(config.data, config.data.eval_split)
    text = lambda x: x.decode() if isinstance(x, bytes) else str(x)
    gt_answer = {text(source[i]["id"]): text(source[i]["answer"]) for i in range(EVAL_RECORDS)}
    # (The decoded answer starts with the space the template puts after "ASSISTANT:". The
    # synthetic answers vary their wording at random, so only some are reproduced exactly:
    # measured 9 of 96, each with the same IoUs in both modes.)
    same = [k for k in gen if gen[k]["answer"].strip() == gt_answer[k].strip()]
    assert len(same) >= 5, [(gen[k]["answer"], gt_answer[k]) for k in gen][:5]
    for k in same:
        np.testing.assert_allclose(gen[k]["iou"], tf[k]["iou"], atol=0.02, err_msg=k)
    emitted = sum(r["seg_emission"]["equal"] for r in report["subsets"].values())
    assert emitted >= len(same)
