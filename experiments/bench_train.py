"""Train-step time, memory and the cost of the spatial attention loss (on vs off).

    python experiments/bench_train.py --preset tiny      # CPU
    python experiments/bench_train.py --preset medium    # CPU, a wider/deeper LLM and 256 px
    python experiments/bench_train.py --preset lasers    # GPU: the paper's config, batch 4, bf16

Random batches with the pipeline's shapes (`segearth_jax.train.random_batch`); weights are
random (the speed does not depend on them). Prints, per setting, the median step time, the
compiled step's memory (arguments + temporaries, from XLA's memory analysis), the FLOPs XLA
counts for the step and, on a GPU, the model FLOPs utilization against the device's peak.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from configs import common, tiny  # noqa: E402
from experiments.timing import timeit  # noqa: E402
from segearth_jax.train import Trainer, random_batch  # noqa: E402

# bf16 dense peak FLOP/s, for MFU.
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def preset(name: str, spatial: str):
    if name == "tiny":
        c = tiny.get_config()
    elif name == "medium":
        c = tiny.get_config()
        c.model.mllm.update(dict(hidden_size=512, num_layers=8, num_heads=8,
                                 intermediate_size=2048))
        c.data.update(dict(image_size=256, max_len=256, batch_size=4))
        c.loss.num_heads = 8
    elif name == "lasers":
        c = common.base()
        c.tokenizer = ""
    else:
        raise SystemExit(f"unknown preset {name}")
    c.loss.spatial_variant = spatial
    return c


def bench(name: str, spatial: str, iters: int) -> dict:
    config = preset(name, spatial)
    trainer = Trainer(config)
    state, frozen = trainer.init(0)
    batch = trainer.global_batch(random_batch(config))
    compiled = trainer.step_fn.lower(state, frozen, batch).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    box = {"state": state}

    def step():
        box["state"], m = compiled(box["state"], frozen, batch)
        jax.block_until_ready(m)

    t = timeit(step, iters, warmup=1)
    gb = 2**30
    out = dict(step_s=t, flops=flops,
               args_gib=getattr(mem, "argument_size_in_bytes", 0) / gb if mem else float("nan"),
               temp_gib=getattr(mem, "temp_size_in_bytes", 0) / gb if mem else float("nan"))
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK.items() if k in kind), None)
    if peak and jax.default_backend() == "gpu":
        out["mfu"] = flops / t / (peak * jax.device_count())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny", choices=["tiny", "medium", "lasers"])
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, preset {args.preset}")
    res = {s: bench(args.preset, s, args.iters) for s in ("none", "paper")}
    for s, r in res.items():
        mfu = f"  MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
        print(f"spatial={s:6s} step {1e3 * r['step_s']:8.1f} ms  {r['flops'] / 1e12:7.3f} TFLOP  "
              f"args {r['args_gib']:.2f} GiB  temp {r['temp_gib']:.2f} GiB{mfu}")
    print(f"spatial loss cost: {res['paper']['step_s'] / res['none']['step_s']:.3f}x step time")


if __name__ == "__main__":
    main()
