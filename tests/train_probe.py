"""Runs a few tiny training steps on random data and saves the result (a subprocess of
tests/test_train.py, so that device counts and jax.distributed can differ per run).

python -m tests.train_probe --out F.npz [--mesh 4,2] [--devices N] [--process-id i
  --num-processes n --port P] [--trainable paper|all] [--steps 2] [--accum K]
  [--deterministic] [--sgd LR]

--deterministic: no dropout and the full-resolution mask loss (no random points), so that runs
that draw their random numbers differently (accumulated micro-batches) are comparable.
--sgd LR: plain SGD instead of the config's AdamW, so that each update is the gradient times LR
(Adam divides a gradient by its own size and so turns rounding noise into a full-size step).
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--mesh", default="1,1")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--trainable", default="all")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--sgd", type=float, default=None)
    a = p.parse_args()
    from tests.conftest import FAST_COMPILE_XLA_FLAGS  # a few steps: compiled fast

    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={a.devices} "
                               f"{FAST_COMPILE_XLA_FLAGS}")

    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    from flax import traverse_util

    from configs import segearth_r2, tiny
    from segearth_jax import optim, sharding
    from segearth_jax.testing import random_batch
    from segearth_jax.train import Trainer

    config = tiny.get_config()
    config.data.batch_size = 8
    config.total_steps = 10
    # The paper's loss weights: the tiny recipe's text weight 5 is a lever of the CPU demo, and
    # these layout checks compare the paper's step (tests/test_train.py's tolerances).
    config.loss.text_weight = 1.0
    data, fsdp = (int(x) for x in a.mesh.split(","))
    config.mesh.data, config.mesh.fsdp = data, fsdp
    config.optim.accum_steps = a.accum
    if a.deterministic:
        config.model.mllm.llm.lora.dropout = 0.0
        config.loss.full_resolution = True
    if a.trainable == "paper":
        config.trainable = segearth_r2.TRAINABLE
    if a.num_processes:
        config.distributed.update(dict(enabled=True, coordinator_address=f"localhost:{a.port}",
                                       num_processes=a.num_processes, process_id=a.process_id))
    sharding.maybe_initialize_distributed(config)
    trainer = Trainer(config)
    if a.sgd is not None:
        import optax

        trainer.tx = optax.sgd(a.sgd)  # read by init() and step_fn, both below
    state, frozen = trainer.init(config.seed)
    before = traverse_util.flatten_dict(
        jax.device_get(optim.merge_params(state.params, frozen)), sep="/")
    full = random_batch(config)
    n, i = jax.process_count(), jax.process_index()
    local = {k: v[trainer.rows] for k, v in full.items()}
    losses = []
    for _ in range(a.steps):
        state, metrics = trainer.step_fn(state, frozen, trainer.global_batch(local))
        losses.append(float(metrics["loss"]))
        print({k: float(v) for k, v in metrics.items()}, int(state.bad_step), flush=True)
    from jax.experimental import multihost_utils

    gather = ((lambda t: multihost_utils.process_allgather(t, tiled=True)) if n > 1
              else jax.device_get)
    after = traverse_util.flatten_dict(
        gather(optim.merge_params(state.params, frozen)), sep="/")
    if i == 0:
        np.savez(a.out, losses=np.asarray(losses),
                 **{"before/" + k: np.asarray(v) for k, v in before.items()},
                 **{"after/" + k: np.asarray(v) for k, v in after.items()},
                 trainable=np.asarray(sorted(traverse_util.flatten_dict(
                     jax.device_get(state.params), sep="/"))))
    print("losses", losses, flush=True)


if __name__ == "__main__":
    main()
