"""Where the train step's compile time goes: XLA's own trace events of one compile, by name.

    python experiments/profile_compile.py --preset lasers     # the full-size step (abstract)
    python experiments/profile_compile.py --preset tiny --top 30

The step (`Trainer.step_fn`) is lowered from abstract shapes (`Trainer.abstract_init`, nothing
allocated), then compiled once under `jax.profiler.trace`. XLA marks each HLO pass, pass pipeline
and backend stage (LLVM IR emission, LLVM optimization and code generation) with a trace event;
this prints the total time per event name, those that contain others (pipelines) included, so
the rows overlap: read them as a profile, not as a sum. Reads the trace with TensorFlow's XPlane
protos (TensorFlow comes with tfds and clu's writers).
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
from segearth_jax.train import Trainer, abstract_batch  # noqa: E402


def event_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
    """(seconds, count) per trace event name, over every plane and line."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    path = next(Path(trace_dir).rglob("*.xplane.pb"))
    space.ParseFromString(path.read_bytes())
    seconds, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        meta = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                name = meta.get(ev.metadata_id, "?")
                seconds[name] += ev.duration_ps * 1e-12
                count[name] += 1
    return seconds, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="lasers", choices=["tiny", "medium", "lasers"])
    parser.add_argument("--spatial", default="paper", choices=["none", "paper"])
    parser.add_argument("--top", type=int, default=40)
    args, overrides = parser.parse_known_args()
    config = preset(args.preset, args.spatial, overrides)
    trainer = Trainer(config)
    state, frozen = trainer.abstract_init()
    t0 = time.perf_counter()
    lowered = trainer.step_fn.lower(state, frozen, abstract_batch(config))
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            lowered.compile()
        t2 = time.perf_counter()
        seconds, count = event_times(trace_dir)
    print(f"{args.preset}: lower {t1 - t0:.1f} s, compile {t2 - t1:.1f} s (traced)")
    print(f"{'seconds':>9} {'count':>7}  event")
    for name, s in seconds.most_common(args.top):
        print(f"{s:9.2f} {count[name]:7d}  {name[:110]}")


if __name__ == "__main__":
    main()
