"""Evaluation: `python -m segearth_jax.evaluate --config configs/X.py --checkpoint DIR
[--split test] [--preset segearth_r2] [--mode teacher_forced|generate] [--out DIR]`.

Two protocols (`--mode`, config `eval.mode`):
- `teacher_forced`, the official SegEarth-R2 evaluation (its `eval.py`, following MMR): no text
  is generated; one forward over the prompt + the ground-truth answer, and one mask per GT
  `[SEG]`, its query the hidden state at that position. This is how the paper's numbers were
  made, so it is the `segearth_r2` preset's default (`eval.mode="auto"`).
- `generate`: each answer is generated greedily (deterministic), one mask per generated `[SEG]`
  (the preset's rule matches the count to the GT's). The report adds, per subset, the `[SEG]`
  emission counts (answers with as many `[SEG]` as GT masks / fewer / more / none), so low
  scores can be told apart: text side or mask side.
The loader prompts and shows the images as `--config`'s data section says; those fields
(`MODEL_INPUTS`: the two image views and the prompt) must be the ones the model directory's
model.json "input" records, else one error names the flags to set (`check_model_inputs`).
The masks are mapped back to the original image size and scored against the ground truth with a
named metric preset (`segearth_jax.metrics.PRESETS`). Prints one row per subset plus the average
(the layout of the paper's Table 2) and writes `eval_<split>_<preset>.{md,json}` (the JSON has
`"mode"`) and `eval_<split>_<preset>_records.jsonl` (one line per record: its IoUs, and in
generate mode the answer and its `[SEG]` count). A record that fails is listed in the report,
never scored silently.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from segearth_jax import cli, errors, metrics
from segearth_jax.inference import SegEarthPredictor, masks_to_image

MODES = ("teacher_forced", "generate")
# Which questions of an image are scored: "all" (one example per question, as we build them), or
# "first" (the first question of each image only: the SegEarth-R1 evaluation of EarthReason,
# 1,928 test images rather than ~11.5k questions).
QUESTIONS = ("all", "first")
# The `config.data` fields that decide what the model is shown: its two image views and the
# prompt. They must be the ones of the model's model.json "input" (what it was trained or
# converted with). The sequence lengths (capacity) and `spatial_gt` (a training loss) may differ.
MODEL_INPUTS = ("siglip_size", "image_size", "patch_size", "image_token_id", "template",
                "seg_in_prompt", "official_prompt")


class _Subset:
    """The records of `source` at `indices`, re-indexed from 0 (a random-access source)."""

    def __init__(self, source: Any, indices: list[int]):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.source[self.indices[int(i)]]

    def __repr__(self) -> str:
        return f"_Subset({self.source!r}, {len(self.indices)} records)"


def first_question_per_image(source: Any) -> list[int]:
    """Indices of the first record (in source order) of each distinct `image_name`."""
    seen, keep = set(), []
    for i in range(len(source)):
        name = _str(source[i]["image_name"])
        if name not in seen:
            seen.add(name)
            keep.append(i)
    return keep


def resolve_questions(questions: str | None, preset: str) -> str:
    """`questions` ("auto" or None: "first" for the `segearth_r1` preset, the official
    EarthReason protocol; "all" otherwise) -> one of QUESTIONS."""
    if questions in (None, "", "auto"):
        return "first" if preset == "segearth_r1" else "all"
    if questions not in QUESTIONS:
        raise errors.BadValue(f"--questions / config.eval.questions {questions!r}: one of "
                              f"{QUESTIONS} or 'auto'")
    return questions


def _str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def resolve_mode(mode: str | None, preset: str) -> str:
    """`mode` ("auto" or None: teacher-forced for the `segearth_r2` preset, whose published
    numbers were made that way; generate otherwise) -> one of MODES."""
    if mode in (None, "", "auto"):
        return "teacher_forced" if preset == "segearth_r2" else "generate"
    if mode not in MODES:
        raise errors.BadValue(f"--mode / config.eval.mode {mode!r}: one of {MODES} or 'auto'")
    return mode


def check_model_inputs(data: ml_collections.ConfigDict, checkpoint_dir: str | Path) -> None:
    """Raises one `BadValue` naming each `MODEL_INPUTS` field where `data` (config.data, which
    the evaluation's loader prompts with) differs from the model directory's model.json
    "input", with the flag that makes them agree."""
    from segearth_jax import checkpoint
    from segearth_jax.input.settings import Settings

    where = Path(checkpoint_dir) / "model.json"
    trained = Settings.from_spec(checkpoint.read_model_spec(checkpoint_dir), str(where))
    fixes = [f"--config.data.{k}={getattr(trained, k)!r} (the config has {data[k]!r})"
             for k in MODEL_INPUTS if data[k] != getattr(trained, k)]
    if fixes:
        raise errors.BadValue(f"config.data prompts or shows images otherwise than {where} "
                              f"says the model was trained (its \"input\"); set "
                              f"{', '.join(fixes)}, or use the config it was trained with")


def open_eval_source(config: ml_collections.ConfigDict, split: str, questions: str) -> Any:
    """The records `split` of `config.data.name` scores under the `questions` rule."""
    from segearth_jax.input.sources import open_source

    source = open_source(config.data, split)
    return _Subset(source, first_question_per_image(source)) if questions == "first" else source


def predictions(config: ml_collections.ConfigDict, predictor: SegEarthPredictor, source: Any,
                mode: str, limit: int | None = None) -> Iterator[tuple[dict, Any, Any]]:
    """Runs `predictor` over `source` (this process's share, `config.eval.batch_size` at a
    time) in `mode`; yields per record (line, predicted masks [M, H, W] bool or None, GT masks
    [N, H, W] bool): `line` holds id, subset and, in generate mode, the answer and its `[SEG]`
    count; or an "error" (then the masks are None). Prints progress."""
    from segearth_jax.input import pipeline

    forced = mode == "teacher_forced"
    n_total = len(source) if limit is None else min(limit, len(source))
    if n_total < len(source):  # exactly the first `limit` records, split over the processes
        source = _Subset(source, list(range(n_total)))
    data_cfg = config.data.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.batch_size = config.eval.batch_size
    # Every record exactly once over all processes (no drop_remainder).
    shards = grain.sharding.ShardByJaxProcess(drop_remainder=False)
    loader = pipeline.make_loader(source, predictor.tokenizer, data_cfg, train=False,
                                  seed=config.seed, num_epochs=1, shard_options=shards,
                                  worker_count=config.data.worker_count, drop_remainder=False,
                                  teacher_forced=forced)
    n_done, t0 = 0, time.time()
    run = predictor.teacher_forced if forced else predictor.predict
    for batch in loader:
        b = len(batch["record_index"])
        results = run(_pad_batch(batch, config.eval.batch_size))[:b]
        for i, res in enumerate(results):
            yield record_result(source[int(batch["record_index"][i])], batch, i, res,
                                data_cfg.image_size, None if forced else predictor.seg_id)
        n_done += b
        rate = n_done / max(time.time() - t0, 1e-9)
        if jax.process_index() == 0:
            print(f"\revaluated {n_done}/{n_total}  {rate:.2f} img/s  "
                  f"ETA {(n_total - n_done) / max(rate, 1e-9):.0f}s", end="", flush=True)
    print(file=sys.stderr if jax.process_index() else sys.stdout)


def record_result(rec: dict, batch: dict[str, np.ndarray], i: int, res: dict[str, Any],
                  image_size: int, seg_id: int | None = None) -> tuple[dict, Any, Any]:
    """Row `i` of an eval `batch` and its model result `res` (mask_logits [n, S/4, S/4] on the
    canvas grid; with `seg_id`, generate mode: also answer and tokens) for the source record
    `rec` -> (line, predicted masks [n, H, W] bool, GT masks [N, H, W] bool), as `predictions`
    yields them; a failure is the line's "error" (masks None)."""
    line: dict[str, Any] = dict(id=_str(rec["id"]), subset=_str(rec["subset"]))
    if seg_id is not None:
        line.update(answer=res["answer"], n_seg_emitted=int(np.sum(res["tokens"] == seg_id)))
    try:
        gt = np.asarray(rec["masks"]).astype(bool)
        hw = tuple(int(x) for x in batch["image_hw"][i])
        pred = masks_to_image(res["mask_logits"], tuple(batch["canvas_hw"][i]), hw, image_size)
    except Exception as e:  # noqa: BLE001 - reported in the summary, never scored
        line["error"] = f"{type(e).__name__}: {e}"
        pred = gt = None
    return line, pred, gt


def summary_scalars(summary: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """An evaluator summary -> flat scalars to log: `eval/gIoU`, `eval/cIoU` (the average row),
    `eval/<subset>/gIoU`, `eval/<subset>/cIoU`, `eval/n_samples`, `eval/n_failed`."""
    out = {f"{prefix}{k}": float(summary["average"][k]) for k in ("gIoU", "cIoU")
           if summary["average"][k] is not None}
    for name, row in summary["subsets"].items():
        out.update({f"{prefix}{name}/{k}": float(row[k]) for k in ("gIoU", "cIoU")
                    if row[k] is not None})
    out.update({f"{prefix}n_samples": float(summary["average"]["n_samples"]),
                f"{prefix}n_failed": float(summary["average"]["n_failed"])})
    return out


class LiveEvaluation:
    """Teacher-forced evaluation inside training (`config.eval_every`), with the live
    (trainable, frozen) parameters where they are: global arrays on the training mesh, however
    sharded, LoRA unmerged. The first `config.eval.limit` records (0: all) of
    `config.data.eval_split` (under `config.eval.questions`) run in global batches of
    `config.eval.batch_size` (the last one padded by repeating its last record), each process
    reading the rows its devices hold (`sharding.process_rows`, like training); a row held by
    several processes is scored by one of them (`sharding.row_owners`), and the results merge on
    process 0 through `out` (storage every process sees), as `evaluate` does.

        live = LiveEvaluation(config, model, mesh, (trainable_sh, frozen_sh), tokenizer, out)
        summary = live(trainable, frozen)   # the merged summary on process 0, partial elsewhere
    """

    def __init__(self, config: ml_collections.ConfigDict, model: Any, mesh: Any,
                 param_shardings: tuple[Any, Any], tokenizer: Any, out: Path):
        from segearth_jax import optim, sharding
        from segearth_jax.input import pipeline

        self.preset = config.eval.preset
        if self.preset not in metrics.PRESETS:
            raise errors.BadValue(f"config.eval.preset {self.preset!r}: one of "
                                  f"{sorted(metrics.PRESETS)}")
        questions = resolve_questions(config.eval.questions, self.preset)
        source = open_eval_source(config, config.data.eval_split, questions)
        self.n = len(source) if not config.eval.limit else min(config.eval.limit, len(source))
        if self.n == 0:
            raise errors.BadValue(f"config.data.eval_split {config.data.eval_split!r} has no "
                                  "records")
        bs = config.eval.batch_size
        axes = sharding.batch_axes(mesh, bs)
        positions = list(range(self.n))
        positions += [self.n - 1] * (-self.n % bs)
        self.records = _Subset(source, positions)  # position p -> record positions[p]
        rows = sharding.process_rows(mesh, bs, axes)
        self.mine = sharding.row_owners(mesh, bs, axes)[rows] == jax.process_index()
        data_cfg = config.data.copy_and_resolve_references()
        with data_cfg.unlocked():
            data_cfg.batch_size = bs
        self.image_size, self.out, self.mesh = data_cfg.image_size, out, mesh
        self.loader = pipeline.make_loader(
            self.records, tokenizer, data_cfg, train=False, seed=config.seed, rows=rows,
            num_epochs=1, worker_count=config.data.worker_count, teacher_forced=True)
        self.keys = ("input_ids", "siglip_pixels", "pixels", "seg_positions", "seg_valid")
        self.bs, self.axes = bs, axes
        self.compiled = None

        def forward(trainable, frozen, ids, sp, px, pos, valid):
            params = optim.merge_params(trainable, frozen)
            return model.apply({"params": params}, ids, sp, px, pos, valid)["mask_logits"][-1]

        # The logits stay split over the batch axes: each process reads its own rows.
        self.forward = jax.jit(forward, out_shardings=sharding.batch_sharding(mesh, 4, axes),
                               in_shardings=(*param_shardings, *(
                                   sharding.batch_sharding(mesh, nd, axes)
                                   for nd in (2, 4, 4, 2, 2))))

    def __call__(self, trainable: Any, frozen: Any) -> dict[str, Any]:
        from segearth_jax import sharding

        evaluator = metrics.Evaluator(metrics.PRESETS[self.preset])
        for batch in self.loader:
            glob = sharding.global_batch(self.mesh, {k: batch[k] for k in self.keys}, self.bs,
                                         self.axes)
            args = (trainable, frozen, *(glob[k] for k in self.keys))
            if self.compiled is None:  # compiled ahead, then all processes start together
                self.compiled = self.forward.lower(*args).compile()
                sharding.barrier("eval compiled")
            logits = self.compiled(*args)
            local = {}
            for shard in logits.addressable_shards:
                start = shard.index[0].start or 0
                for j, row in enumerate(np.asarray(shard.data, np.float32)):
                    local[start + j] = row
            rows = sorted(local)  # == this process's rows, the batch's order
            n_seg = np.asarray(batch["seg_valid"]).sum(axis=1)
            for i, row in enumerate(rows):
                p = int(batch["record_index"][i])
                if not self.mine[i] or p >= self.n:  # scored by another process, or padding
                    continue
                res = dict(mask_logits=local[row][:n_seg[i]])
                score(evaluator, *record_result(self.records[p], batch, i, res,
                                                self.image_size))
        if jax.process_count() > 1:
            sharding.barrier("eval scored")  # the merge is a collective; scoring takes a while
            evaluator = _merge_processes(evaluator, self.out)
        return evaluator.summary()


def score(evaluator: metrics.Evaluator, line: dict, pred: Any, gt: Any) -> None:
    """Adds one record of `predictions` to `evaluator` (a failure is listed, never scored);
    its IoUs and GT count go into `line`."""
    if "error" in line:
        evaluator.failed(line["id"], line["error"])
        return
    try:
        line["iou"] = evaluator.add(line["id"], [line["subset"]], pred, gt,
                                    line.get("n_seg_emitted"))
        line["n_gt"] = int(gt.shape[0])
    except Exception as e:  # noqa: BLE001 - reported in the summary, never scored
        line["error"] = f"{type(e).__name__}: {e}"
        evaluator.failed(line["id"], line["error"])


def evaluate(config: ml_collections.ConfigDict, checkpoint_dir: str | Path, *,
             split: str | None = None, preset: str | None = None, out: str | Path | None = None,
             limit: int | None = None, mode: str | None = None,
             questions: str | None = None) -> dict[str, Any]:
    """Scores `checkpoint_dir` on `split` of `config.data.name`; returns the summary dict (with
    `"mode"`, the protocol used, and `"questions"`, which questions of an image were scored)."""
    split = split or config.data.eval_split
    preset = preset or config.eval.preset
    if preset not in metrics.PRESETS:
        raise errors.BadValue(f"--preset / config.eval.preset {preset!r}: one of "
                              f"{sorted(metrics.PRESETS)}")
    mode = resolve_mode(mode or config.eval.mode, preset)
    questions = resolve_questions(questions or config.eval.questions, preset)
    check_model_inputs(config.data, checkpoint_dir)
    evaluator = metrics.Evaluator(metrics.PRESETS[preset])
    predictor = SegEarthPredictor(checkpoint_dir, max_new_tokens=config.eval.max_new_tokens,
                                  temperature=config.eval.temperature, seed=config.seed)
    source = open_eval_source(config, split, questions)
    records = []
    for line, pred, gt in predictions(config, predictor, source, mode, limit):
        score(evaluator, line, pred, gt)
        records.append(line)
    out = Path(out) if out else Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"eval_{split}_{preset}"
    part = "" if jax.process_count() == 1 else f".{jax.process_index()}"
    Path(f"{stem}_records{part}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    if jax.process_count() > 1:
        evaluator = _merge_processes(evaluator, out)
    summary = {"mode": mode, "questions": questions, **evaluator.summary()}
    title = (f"{config.data.name} {split}, {mode.replace('_', '-')}"
             + (", first question per image" if questions == "first" else ""))
    if jax.process_index() == 0:
        report = evaluator.markdown(title)
        print(report)
        (stem.parent / f"{stem.name}.md").write_text(report)
        (stem.parent / f"{stem.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {stem}.md and {stem}.json ({mode})")
    return summary


def trivial_baselines(source: Any, preset: str = "segearth_r2", limit: int | None = None
                      ) -> dict[str, float]:
    """gIoU (average row) of predicting all-zero or all-one masks for every GT mask of the first
    `limit` records of `source` (all by default), scored like `evaluate`: the floor a trained
    model must clear. Returns {"all_zero": gIoU, "all_one": gIoU}."""
    out = {}
    n = len(source) if limit is None else min(limit, len(source))
    for name, fill in (("all_zero", False), ("all_one", True)):
        evaluator = metrics.Evaluator(metrics.PRESETS[preset])
        for i in range(n):
            rec = source[i]
            gt = np.asarray(rec["masks"]).astype(bool)
            evaluator.add(_str(rec["id"]), [_str(rec["subset"])], np.full(gt.shape, fill), gt)
        out[name] = evaluator.summary()["average"]["gIoU"]
    return out


def _merge_processes(evaluator: metrics.Evaluator, out: Path) -> metrics.Evaluator:
    """Every process's per-record results, merged on process 0 (through `out`, which must be
    on a filesystem all processes share)."""
    import pickle

    from jax.experimental import multihost_utils

    out.mkdir(parents=True, exist_ok=True)
    part = out / f".eval_state.{jax.process_index()}.pkl"
    part.write_bytes(pickle.dumps(evaluator.state()))
    multihost_utils.sync_global_devices("eval_states_written")
    if jax.process_index() == 0:
        states = [pickle.loads((out / f".eval_state.{i}.pkl").read_bytes())
                  for i in range(jax.process_count())]
        evaluator = metrics.Evaluator(evaluator.preset).merge(states)
    multihost_utils.sync_global_devices("eval_states_read")
    part.unlink()
    return evaluator


def _pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Repeats the last row so every jitted call sees the same batch size."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] < size:
            v = np.concatenate([v, np.repeat(v[-1:], size - v.shape[0], axis=0)])
        out[k] = v
    return out


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (defined only when run as a program, so modules import freely)."""
    config_flags.DEFINE_config_file("config", None, "Required: the training configuration "
                                    "file (its data and eval sections are used).",
                                    lock_config=True)
    flags.DEFINE_string("checkpoint", None, "a SegEarth-R2 model directory (training export or "
                        "convert.segearth_r2 output)")
    flags.DEFINE_string("split", None, "dataset split (default: config.data.eval_split)")
    flags.DEFINE_string("preset", None, f"metric preset: {sorted(metrics.PRESETS)}")
    flags.DEFINE_string("out", None, "where the report goes (default: the checkpoint directory)")
    flags.DEFINE_integer("limit", None, "evaluate only the first N records")
    flags.DEFINE_enum("mode", None, [*MODES, "auto"], "teacher_forced: one forward over prompt + "
                      "GT answer (the official protocol); generate: generated answers "
                      "(default: config.eval.mode)")
    flags.DEFINE_enum("questions", None, [*QUESTIONS, "auto"], "all: every question of an image; "
                      "first: its first question only (the SegEarth-R1 EarthReason protocol) "
                      "(default: config.eval.questions)")
    cli.require_flags("config", "checkpoint")


@cli.entry_point
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    errors.check_dir(FLAGS.checkpoint, "--checkpoint", "a SegEarth-R2 model directory (a "
                     "convert.segearth_r2 --out or a training export)")
    evaluate(FLAGS.config, FLAGS.checkpoint, split=FLAGS.split, preset=FLAGS.preset,
             out=FLAGS.out, limit=FLAGS.limit, mode=FLAGS.mode, questions=FLAGS.questions)


def run() -> None:
    """The program (`python -m`, the console script): defines the flags, then runs `main`."""
    define_flags()
    cli.run_absl(main)


if __name__ == "__main__":
    run()
