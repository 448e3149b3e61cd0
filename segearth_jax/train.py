"""Training: `python -m segearth_jax.train --config configs/X.py[:arg] --workdir DIR`.

One `jax.jit` step over a (data, fsdp) mesh; gradients and AdamW state only for the trainable
subtree (config `trainable` regexes), frozen weights stored in the compute dtype; orbax
checkpoints (async, keep-N) of the trainable params, optimizer state, step, rng and the grain
iterator state, so that a killed run resumes to the same result; clu metric writers
(TensorBoard + console) and `workdir/metrics.jsonl` (one JSON object per log line: "step" and
the means of the metrics over the steps since the previous line).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from segearth_jax import checkpoint, cli, errors, losses, optim, sharding
from segearth_jax import export as export_lib
from segearth_jax import init as init_lib
from segearth_jax.input import sources
from segearth_jax.input.batch import example_batch
from segearth_jax.input.settings import Settings
from segearth_jax.models.segearth_r2 import SegEarthR2, SegEarthR2Config, seg_attention


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Any  # trainable subtree (float32)
    opt_state: Any
    rng: jax.Array  # uint32 key data [2]
    bad_step: jax.Array  # int32: first step with a non-finite loss or gradient, -1 if none


def build_model(config: ml_collections.ConfigDict) -> SegEarthR2:
    return SegEarthR2(SegEarthR2Config.from_config(config.model))


def abstract_batch(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """The global train batch's shapes and dtypes (`data.batch_size` rows), to trace or compile
    the step without data."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
            for k, v in example_batch(config, config.data.batch_size).items()}


def _model_args(batch: dict[str, Any]) -> tuple:
    return (batch["input_ids"], batch["siglip_pixels"], batch["pixels"], batch["seg_positions"],
            batch["seg_positions"] >= 0)


def random_params(config: ml_collections.ConfigDict, model: SegEarthR2):
    """rng -> the model's randomly initialized params (to jit, or to `jax.eval_shape`)."""
    batch = {k: jnp.asarray(v) for k, v in example_batch(config, 1).items()}
    return lambda rng: model.init(rng, *_model_args(batch))["params"]


def accum_steps(config: ml_collections.ConfigDict) -> int:
    """Micro-batches per step (`optim.accum_steps`)."""
    k = config.optim.accum_steps
    if k < 1 or config.data.batch_size % k:
        raise ValueError(f"optim.accum_steps={k} must be >= 1 and divide data.batch_size="
                         f"{config.data.batch_size}")
    return k


def micro_batches(batch: dict[str, jax.Array], k: int, mesh: Any = None,
                  axes: tuple[str, ...] = sharding.BATCH_AXES) -> dict[str, jax.Array]:
    """[B, ...] -> [k, B/k, ...]: micro-batch i holds rows i, i + k, i + 2k, ... so that, with
    the batch split in contiguous blocks over the devices, every micro-batch spreads over all of
    them (no data moves when B is a multiple of k x devices)."""

    def split(x):
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            spec = jax.sharding.PartitionSpec(None, axes)
            x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
        return x

    return jax.tree.map(split, batch)


def make_train_step(model: SegEarthR2, config: ml_collections.ConfigDict,
                    tx: optax.GradientTransformation, mesh: Any = None,
                    batch_axes: tuple[str, ...] = sharding.BATCH_AXES):
    """(state, frozen, batch) -> (state, metrics); pure, to be jitted with shardings.

    With `optim.accum_steps` = k > 1 the batch is split into k micro-batches (`micro_batches`)
    whose gradients are summed in a `lax.scan` before one optimizer update. Every loss term
    divides by the whole batch's count (`losses.loss_denominators`), so the summed micro-batch
    losses and gradients are the whole batch's: the same update, with the activations of B/k
    rows alive at a time. (Dropout masks and the mask loss's random points are drawn per
    micro-batch, so they differ from the one-batch draws; the update is the same in
    distribution, and exactly the same without them.)"""
    k = accum_steps(config)

    def loss_fn(trainable, frozen, batch, rng, denominators):
        params = optim.merge_params(trainable, frozen)
        drop_rng, loss_rng = jax.random.split(rng)
        out, inter = model.apply({"params": params}, *_model_args(batch), deterministic=False,
                                 rngs={"dropout": drop_rng}, mutable=["intermediates"])
        outputs = {**out, "seg_attention": seg_attention(inter["intermediates"])}
        return losses.segearth_loss(outputs, batch, loss_rng, config.loss, denominators,
                                    num_heads=model.config.mllm.llm.num_heads)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def loss_and_grads(params, frozen, batch, rng):
        denominators = losses.loss_denominators(batch, config.loss)
        if k == 1:
            (_, metrics), grads = grad_fn(params, frozen, batch, rng, denominators)
            return metrics, grads

        def micro_step(acc, xs):
            micro, i = xs
            (_, m), g = grad_fn(params, frozen, micro, jax.random.fold_in(rng, i), denominators)
            return jax.tree.map(jnp.add, acc, (m, g)), None

        shapes = jax.eval_shape(lambda: grad_fn(
            params, frozen, jax.tree.map(lambda x: x[0], micro_batches(batch, k)), rng,
            denominators))
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (shapes[0][1], shapes[1]))
        (metrics, grads), _ = jax.lax.scan(micro_step, zeros,
                                           (micro_batches(batch, k, mesh, batch_axes),
                                            jnp.arange(k)))
        return metrics, grads

    def step(state: TrainState, frozen: Any, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        metrics, grads = loss_and_grads(state.params, frozen, batch, rng)
        # `tx` skips a step with non-finite gradients (optax.apply_if_finite, see
        # optim.make_optimizer); the host stops at its next check of `bad_step`.
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        gnorm = optax.tree.norm(grads)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(gnorm)
        new = TrainState(
            step=state.step + 1, params=optax.apply_updates(state.params, updates),
            opt_state=opt_state, rng=state.rng,
            bad_step=jnp.where((state.bad_step < 0) & ~ok, state.step, state.bad_step))
        metrics = {**metrics, "grad_norm": gnorm,
                   "learning_rate": optim.learning_rate(config)(state.step)}
        return new, metrics

    return step


class Trainer:
    """Everything `train_and_evaluate` needs, built once: mesh, model, shardings, jitted step."""

    def __init__(self, config: ml_collections.ConfigDict, devices: Any = None):
        self.config = config
        self.mesh = sharding.mesh_from_config(config.mesh, devices)
        self.model = build_model(config)
        Settings.from_config(config.data).check_model(self.model.config)
        self.tx = optim.make_optimizer(config)
        self.batch_size = config.data.batch_size
        self.accum_steps = accum_steps(config)
        # The axes each (micro-)batch splits over (data x fsdp, or data alone when its rows do
        # not divide over every device: then replicated over fsdp).
        self.batch_axes = sharding.batch_axes(self.mesh, self.batch_size // self.accum_steps)
        # The rows of every global batch this process reads: those its devices hold (processes
        # of one data replica read the same rows; the global order is that of one process).
        self.rows = sharding.process_rows(self.mesh, self.batch_size, self.batch_axes)
        self.batch_keys = tuple(example_batch(config, 1))  # the step's inputs

    def init(self, rng_seed: int) -> tuple[TrainState, Any]:
        """Fresh state: (TrainState, frozen params), each leaf made once, in its sharding and
        dtype: converted weights restored into place, the rest by a jit of the random init
        (`segearth_jax.init`)."""
        rng = jax.random.key(rng_seed)
        state, frozen = self.abstract_init()  # the targets: shapes, dtypes, shardings
        params = init_lib.init_params(self.config, random_params(self.config, self.model),
                                      jax.random.fold_in(rng, 1),
                                      optim.merge_params(state.params, frozen))
        trainable, frozen = optim.split_params(params, list(self.config.trainable))
        state = jax.jit(lambda p: self._fresh_state(p, rng), out_shardings=self.state_sharding,
                        donate_argnums=0)(trainable)
        return state, frozen

    def abstract_init(self) -> tuple[TrainState, Any]:
        """The shapes, dtypes and shardings `init` gives, nothing allocated (`jax.eval_shape`):
        for compiling or costing the full-size step on any machine."""
        return self._abstract

    @functools.cached_property
    def _abstract(self) -> tuple[TrainState, Any]:
        def fresh(rng):
            params = random_params(self.config, self.model)(rng)
            return self._split_state(flax.core.unfreeze(params), rng)

        state, frozen = jax.eval_shape(fresh, jax.random.key(0))
        put = lambda tree, sh: jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
        return (put(state, self._state_shardings(state)),
                put(frozen, sharding.param_shardings(self.mesh, frozen)))

    @property
    def state_sharding(self) -> TrainState:
        return jax.tree.map(lambda x: x.sharding, self._abstract[0])

    @property
    def frozen_sharding(self) -> Any:
        return jax.tree.map(lambda x: x.sharding, self._abstract[1])

    def _split_state(self, params: dict, rng: jax.Array) -> tuple[TrainState, Any]:
        trainable, frozen = optim.split_params(params, list(self.config.trainable))
        return self._fresh_state(trainable, rng), optim.cast(frozen, self.config.frozen_dtype)

    def _fresh_state(self, trainable: dict, rng: jax.Array) -> TrainState:
        return TrainState(step=jnp.array(0, jnp.int32), params=trainable,
                          opt_state=self.tx.init(trainable),
                          rng=jax.random.key_data(jax.random.fold_in(rng, 2)),
                          bad_step=jnp.array(-1, jnp.int32))

    def _state_shardings(self, state: TrainState) -> TrainState:
        rep = sharding.replicated(self.mesh)
        return TrainState(step=rep, params=sharding.param_shardings(self.mesh, state.params),
                          opt_state=sharding.param_shardings(self.mesh, state.opt_state),
                          rng=rep, bad_step=rep)

    @functools.cached_property
    def step_fn(self):
        """The jitted step: (state, frozen, global batch) -> (state, metrics); the state is
        donated."""
        batch_sh = {k: sharding.batch_sharding(self.mesh, v.ndim, self.batch_axes)
                    for k, v in example_batch(self.config, 1).items()}
        return jax.jit(make_train_step(self.model, self.config, self.tx, self.mesh,
                                       self.batch_axes),
                       in_shardings=(self.state_sharding, self.frozen_sharding, batch_sh),
                       out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
                       donate_argnums=0)

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows (`self.rows`) of the step's inputs -> global arrays over the
        mesh."""
        return sharding.global_batch(self.mesh, {k: local[k] for k in self.batch_keys},
                                     self.batch_size, self.batch_axes)


# ---------------------------------------------------------------------------------------------
# Data, tokenizer, checkpoints


def checkpoint_manager(workdir: Path, config: ml_collections.ConfigDict, *,
                       read_only: bool = False) -> ocp.CheckpointManager:
    """The run's orbax manager over `workdir/checkpoints` (every process writes its shards of
    the state: the workdir must be on storage all processes see, e.g. NFS or `gs://`)."""
    checkpoint.configure_array_saving()
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0,
                                           create=False) if read_only else \
        ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep, save_interval_steps=1,
                                     enable_async_checkpointing=config.checkpoint.async_save)
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def save(mngr: ocp.CheckpointManager, state: TrainState, data_iter: Any) -> None:
    import grain

    step = int(jax.device_get(state.step))
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        raise FloatingPointError(f"non-finite loss or gradient at step {bad}: not saving")
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=grain.checkpoint.CheckpointSave(data_iter)),
              force=True)


def restore(mngr: ocp.CheckpointManager, state: TrainState, data_iter: Any) -> TrainState:
    import grain

    step = mngr.latest_step()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    return out.state


def restore_state(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> TrainState:
    """The `state` item of checkpoint `step`, read into the shapes, dtypes and shardings of
    `state` (orbax reshards: the mesh may differ from the run's)."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    return mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepEnd:
    """What an `on_step` callback of `train_and_evaluate` sees after each step (and after that
    step's checkpoint, if one was due)."""

    step: int  # steps done
    batch: dict[str, np.ndarray]  # this process's rows of the step's batch (with record_index)
    state: TrainState
    checkpoints: ocp.CheckpointManager


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       on_step: Callable[[StepEnd], None] | None = None) -> dict[str, float]:
    """Trains `config.total_steps` steps (resuming from `workdir` if it holds a checkpoint),
    exports the merged model to `workdir/export`; returns the last logged metrics.
    `on_step(StepEnd)` runs after every step (tests use it to record the data order or to
    crash the run)."""
    from segearth_jax.input import pipeline

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sharding.maybe_initialize_distributed(config)
    trainer = Trainer(config)
    export_lib.save_config(workdir, config)
    source = sources.open_source(config.data, config.data.train_split)
    tokenizer = sources.load_or_make_tokenizer(config, workdir, source)
    tokenizer_dir = workdir / "tokenizer"
    if config.tokenizer != "train" and jax.process_index() == 0 and not tokenizer_dir.exists():
        tokenizer.save_pretrained(str(tokenizer_dir))
    loader = pipeline.make_loader(source, tokenizer, config.data, train=True, seed=config.seed,
                                  rows=trainer.rows, worker_count=config.data.worker_count)
    data_iter = iter(loader)

    live = None
    if config.eval_every:
        from segearth_jax import evaluate

        _check_best_metric(config.checkpoint.best_metric)
        live = evaluate.LiveEvaluation(
            config, trainer.model, trainer.mesh,
            (trainer.state_sharding.params, trainer.frozen_sharding), tokenizer, workdir / "eval")

    state, frozen = trainer.init(config.seed)
    _print_layout(trainer)
    sharding.barrier("initialized")  # the manager's first barrier is a collective
    mngr = checkpoint_manager(workdir, config)
    if mngr.latest_step() is not None:
        state = restore(mngr, state, data_iter)
        logging.info("resumed from %s at step %d", workdir, int(state.step))
    evaluation = None if live is None else functools.partial(
        _evaluate, live, config, frozen=frozen, workdir=workdir, tokenizer_dir=tokenizer_dir)
    state, last = _loop(trainer, state, frozen, data_iter, mngr, workdir, on_step, evaluation)
    if int(jax.device_get(state.step)) >= config.total_steps and config.export:
        export_lib.write_model(workdir / "export", config, state.params, frozen, tokenizer_dir)
        if jax.process_index() == 0:
            print(f"exported the merged model to {workdir / 'export'}", flush=True)
    mngr.close()
    return last


def _print_layout(trainer: Trainer) -> None:
    if jax.process_index() != 0:
        return
    k = trainer.accum_steps
    print(f"global batch {trainer.batch_size} per step over {trainer.mesh.size} device(s)"
          + (f" ({k} accumulated micro-batches of {trainer.batch_size // k})" if k > 1 else "")
          + ("; rows replicated over fsdp (they do not divide over every device)"
             if trainer.batch_axes != sharding.BATCH_AXES else ""), flush=True)


BEST_FILE = "best.json"  # in workdir/best: {"step", "metric", "value"}


def _check_best_metric(metric: str) -> None:
    if metric and not (metric in ("eval/gIoU", "eval/cIoU")
                       or (metric.startswith("eval/") and metric.endswith(("/gIoU", "/cIoU")))):
        raise errors.BadValue(f"config.checkpoint.best_metric {metric!r}: \"\" (none), "
                              "\"eval/gIoU\", \"eval/cIoU\" or \"eval/<subset>/gIoU|cIoU\"")


def _evaluate(live: Any, config: ml_collections.ConfigDict, state: TrainState, step: int,
              writer: Any, *, frozen: Any, workdir: Path, tokenizer_dir: Path) -> None:
    """In-training evaluation at `step` (`evaluate.LiveEvaluation`): gIoU/cIoU of the average
    and of every subset to the writer (TensorBoard) and metrics.jsonl (a line with "eval/..."
    keys); when `checkpoint.best_metric` improves on `workdir/best/best.json`, the model is
    exported to `workdir/best` (every process writes its shards)."""
    from jax.experimental import multihost_utils

    from segearth_jax import evaluate

    is_main = jax.process_index() == 0
    summary = live(state.params, frozen)
    scalars = evaluate.summary_scalars(summary)  # process 0 holds the merged summary
    metric = config.checkpoint.best_metric
    value = scalars.get(metric, float("nan")) if metric else float("nan")
    best_file = workdir / "best" / BEST_FILE
    if is_main:
        writer.write_scalars(step, scalars)
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        print(f"eval at step {step}: gIoU {scalars.get('eval/gIoU', float('nan')):.4f} "
              f"cIoU {scalars.get('eval/cIoU', float('nan')):.4f} over "
              f"{int(scalars['eval/n_samples'])} records", flush=True)
        if metric and metric not in scalars:
            logging.warning("best_metric %s not in the evaluation (%s)", metric, sorted(scalars))
    # Process 0 holds the merged summary: it decides, every process follows.
    best = json.loads(best_file.read_text()) if is_main and best_file.exists() else None
    better = bool(is_main and metric and np.isfinite(value) and (
        best is None or best["metric"] != metric or value > best["value"]))
    if jax.process_count() > 1:
        better = bool(multihost_utils.broadcast_one_to_all(np.int32(better)))
    if not better:
        return
    export_lib.write_model(workdir / "best", config, state.params, frozen, tokenizer_dir)
    if is_main:
        best_file.write_text(json.dumps({"step": step, "metric": metric,
                                         "value": float(value)}) + "\n")
        print(f"best {metric} {float(value):.4f} at step {step}: exported to "
              f"{workdir / 'best'}", flush=True)
    sharding.barrier("best written")


def _loop(trainer: Trainer, state: TrainState, frozen: Any, data_iter: Any,
          mngr: ocp.CheckpointManager, workdir: Path,
          on_step: Callable[[StepEnd], None] | None,
          evaluation: Callable[[TrainState, int, Any], None] | None = None
          ) -> tuple[TrainState, dict[str, float]]:
    """Steps from `state.step` to `total_steps`: metrics logged every `log_every` steps (means
    since the previous line) to the clu writer (console + TensorBoard) and metrics.jsonl, the
    progress (steps/s, ETA) by clu's `ReportProgress`; checkpoints every `checkpoint.every`
    steps, at the end, and on SIGTERM (then it returns early); `evaluation(state, step, writer)`
    every `eval_every` steps (after that step's checkpoint)."""
    # Imported here: clu's writers import TensorFlow, which the Trainer does not need.
    from clu import metric_writers, periodic_actions

    config, is_main = trainer.config, jax.process_index() == 0
    start, total = int(jax.device_get(state.step)), config.total_steps
    writer = metric_writers.create_default_writer(str(workdir / "logs"), just_logging=not is_main)
    if start == 0:
        writer.write_hparams(_flat_config(config))
    progress = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                               every_steps=config.log_every, every_secs=None)
    stop = {"signal": None}
    old = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    last: dict[str, float] = {}
    window, window_sum = 0, None  # metrics summed on device since the last log line
    step_fn = None
    try:
        for step in range(start, total):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                local = next(data_iter)
                batch = trainer.global_batch(local)
                if step_fn is None:  # compiled ahead, then all processes start together
                    step_fn = trainer.step_fn.lower(state, frozen, batch).compile()
                    sharding.barrier("step compiled")
                state, metrics = step_fn(state, frozen, batch)
            window += 1
            window_sum = metrics if window_sum is None else jax.tree.map(
                jnp.add, window_sum, metrics)
            done = step + 1
            if done % config.log_every == 0 or done == total:
                last = {k: float(v) / window for k, v in jax.device_get(window_sum).items()}
                window, window_sum = 0, None
                _check_finite(state, last, mngr)
                writer.write_scalars(done, last)
                if is_main:
                    with open(workdir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": done, **last}) + "\n")
            progress(done)
            if done % config.checkpoint.every == 0 or done == total or stop["signal"]:
                save(mngr, state, data_iter)
            if evaluation is not None and done % config.eval_every == 0:
                evaluation(state, done, writer)
            if on_step is not None:
                on_step(StepEnd(done, local, state, mngr))
            if stop["signal"]:
                logging.warning("signal %s: checkpoint saved at step %d, exiting",
                                stop["signal"], done)
                break
        mngr.wait_until_finished()
    finally:
        signal.signal(signal.SIGTERM, old)
        writer.flush()
    return state, last


def _check_finite(state: TrainState, last: dict[str, float], mngr: ocp.CheckpointManager):
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad} (loss components: {last}); "
            f"stopping without saving. Last good checkpoint: {mngr.latest_step()}")


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    out = {}
    for k, v in flax.traverse_util.flatten_dict(config.to_dict(), sep=".").items():
        out[k] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (defined only when run as a program, so modules import freely)."""
    config_flags.DEFINE_config_file(
        "config", None, "Required: the training configuration file, e.g. "
        "configs/segearth_r2.py:lasers; override its keys with --config.<key>=<value>.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Required: the directory for checkpoints, logs and "
                        "the exported model.")
    cli.require_flags("config", "workdir")


@cli.entry_point
def main(argv: list[str]) -> None:
    """Trains; a non-finite loss stops the run with one `error:` line and status 1."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except FloatingPointError as e:
        cli.fail(e, status=1)


def run() -> None:
    """The program (`python -m`, the console script): defines the flags, then runs `main`."""
    define_flags()
    cli.run_absl(main)


if __name__ == "__main__":
    run()
