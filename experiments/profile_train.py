"""Where the train step's time goes: each XLA op's time from a profiler trace, attributed to the
model's parts and to forward / backward by the op's source metadata.

    python experiments/profile_train.py --preset tiny                 # CPU
    python experiments/profile_train.py --preset medium --top 40

The jitted step (`Trainer.step_fn`, random batch, as bench_train.py) runs `--warmup` times, then
`--steps` times under `jax.profiler.trace`. Every traced event whose name is an instruction of the
compiled module is one op's execution (loops and calls, which contain other traced ops, are left
out); its `op_name` metadata (the JAX name stack) gives the part (`segearth_jax.flops.scope_of`:
the first `--depth` (2) Flax module names, e.g. `mllm/llm`, `seg_head/pixel_decoder`) and the phase
(autodiff's transpose = backward). Ops outside any module (the losses, the optimizer, fused ops
XLA gave no metadata) are grouped by their primitive and the innermost jitted helper they are
in (`_uniform`: jax.random's draws). Times are per step, summed over the threads
that run ops concurrently, so they can add up to more than the step's wall time.
Reads the trace with TensorFlow's XPlane protos (TensorFlow comes with tfds and clu's writers).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from experiments.bench_train import preset  # noqa: E402
from experiments.hlo import instructions, part_of  # noqa: E402
from segearth_jax.testing import random_batch  # noqa: E402
from segearth_jax.train import Trainer  # noqa: E402

# Ops whose traced time contains other traced ops.
CONTAINERS = ("while", "call", "conditional", "async-start", "async-done")


def op_times(trace_dir: str, names: dict) -> collections.Counter:
    """Total traced time (seconds) per instruction name, over every plane and line."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    path = next(Path(trace_dir).rglob("*.xplane.pb"))
    space.ParseFromString(path.read_bytes())
    total = collections.Counter()
    for plane in space.planes:
        meta = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                name = meta.get(ev.metadata_id, "")
                if name in names and names[name][0] not in CONTAINERS:
                    total[name] += ev.duration_ps * 1e-12
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "medium", "lasers"])
    parser.add_argument("--spatial", default="paper", choices=["none", "paper"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25, help="how many single ops to list")
    parser.add_argument("--depth", type=int, default=2, help="module names per part")
    args = parser.parse_args()

    config = preset(args.preset, args.spatial)
    trainer = Trainer(config)
    state, frozen = trainer.init(0)
    batch = trainer.global_batch(random_batch(config))
    compiled = trainer.step_fn.lower(state, frozen, batch).compile()
    names = instructions(compiled.as_text())
    for _ in range(args.warmup):
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                state, metrics = compiled(state, frozen, batch)
                jax.block_until_ready(metrics)
        wall = (time.perf_counter() - t0) / args.steps
        times = op_times(trace_dir, names)
    if not times:
        raise SystemExit("no op of the compiled step was found in the trace")

    per_step = {n: t / args.steps for n, t in times.items()}
    total = sum(per_step.values())
    by_part = collections.Counter()
    for n, t in per_step.items():
        by_part[part_of(names[n][1], names[n][0], args.depth)] += t
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); preset "
          f"{args.preset}, spatial {args.spatial}; {args.steps} profiled steps: "
          f"{1e3 * wall:.1f} ms per step (wall, under the profiler); op time "
          f"{1e3 * total:.1f} ms per step (summed over threads)")
    print(f"{'part':<48}{'phase':<10}{'ms/step':>9}{'share':>8}")
    for (part, phase), t in by_part.most_common():
        if t / total < 0.002:
            continue
        print(f"{part[:47]:<48}{phase:<10}{1e3 * t:9.2f}{100 * t / total:7.1f}%")
    print(f"\nthe {args.top} costliest ops:")
    for n, t in sorted(per_step.items(), key=lambda kv: -kv[1])[:args.top]:
        opcode, op_name = names[n]
        print(f"{1e3 * t:8.2f} ms  {n[:30]:<30} {opcode:<12} {op_name[-90:]}")


if __name__ == "__main__":
    main()
