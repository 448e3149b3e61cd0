"""Export a training checkpoint as an inference model: `python -m segearth_jax.export --workdir W
[--step N] [--out DIR] [--distributed]`.

The model directory (`checkpoint.py` layout, kind `segearth_r2`) holds the merged parameters
(LoRA folded into its kernels: `kernel + lora_a @ lora_b * alpha / rank`, the model then built
with LoRA rank 0), `model.json` and the tokenizer: what evaluate, predict and the app load. The
writing itself is library code (`segearth_jax/merged.py: write_model`, also called by training
and `segearth_jax.testing`); this module is the program around it.

Multi-host: the parameters stay global arrays on the mesh from start to end and every process
writes its own shards (merged.py says how), so DIR must be on storage every process sees (the
workdir already is).

The command reads `W/config.json` (written by training) and the orbax checkpoint of step N
(default: the latest), rebuilds the frozen weights as training did (`config.init`, the seed) on
a mesh of all devices with fsdp over every one of them (any device count reads the checkpoint;
orbax reshards; a run with one flat optimizer vector, `optim.flatten` at fsdp=1, is read
replicated), and writes DIR (default `W/export_<step>`; it must be new or empty). It runs on
one process, or, with --distributed, on every host of a cluster at once (jax.distributed with its
cluster detection, or the run's `distributed` overrides).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import ml_collections
from absl import logging as absl_logging

from segearth_jax import cli, errors, sharding
from segearth_jax.merged import merged_params, write_model

__all__ = ["export_checkpoint", "load_config", "main", "merged_params", "save_config",
           "write_model"]  # merged_params, write_model: segearth_jax/merged.py

CONFIG_FILE = "config.json"  # the training config, in the workdir


def save_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Writes the run's config to `workdir/config.json` (process 0), for `export` to read."""
    if jax.process_index() == 0:
        (workdir / CONFIG_FILE).write_text(config.to_json(indent=2, sort_keys=True) + "\n")


def load_config(workdir: Path) -> ml_collections.ConfigDict:
    path = workdir / CONFIG_FILE
    if not path.exists():
        raise errors.MissingFile(f"{path} is missing: --workdir takes the workdir of a training "
                                 "run (segearth_jax.train --workdir)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def export_checkpoint(workdir: str | Path, step: int | None = None,
                      out: str | Path | None = None) -> Path:
    """`W/checkpoints/<step>` (default: the latest) -> a model directory (default
    `W/export_<step>`); returns it. See the module docstring."""
    from segearth_jax import train

    workdir = Path(workdir)
    config = load_config(workdir)
    mngr = train.checkpoint_manager(workdir, config, read_only=True)
    steps = sorted(mngr.all_steps())
    if not steps:
        raise errors.MissingFile(f"{workdir / 'checkpoints'}: no training checkpoint to export")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise errors.BadValue(f"--step {step}: no such checkpoint in {workdir / 'checkpoints'} "
                              f"(steps: {', '.join(map(str, steps))})")
    out = Path(out) if out else workdir / f"export_{step}"
    errors.check_new_dir(out)
    tokenizer_dir = workdir / "tokenizer"  # training keeps its tokenizer there
    # fsdp over every device: the least memory per device, and any device count reads it;
    # but a run whose optimizer state is one flat vector (optim.flatten at mesh.fsdp=1) is
    # read replicated, so that the restored state has the structure the run saved.
    flat = config.optim.flatten and config.mesh.fsdp == 1
    with config.unlocked():
        config.mesh.update(dict(data=-1 if flat else 1, fsdp=1 if flat else -1, dcn_data=1,
                                dcn_fsdp=1))
    trainer = train.Trainer(config)
    state, frozen = trainer.init(config.seed)
    state = train.restore_state(mngr, step, state)
    mngr.close()
    write_model(out, config, state.params, frozen, tokenizer_dir)
    return out


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m segearth_jax.export",
        description="Export a training checkpoint as a merged-LoRA model directory (params, "
        "model.json, tokenizer) for evaluate / predict / the app.")
    p.add_argument("--workdir", required=True, help="the training run's --workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None, help="output directory, new or empty "
                   "(default: WORKDIR/export_<step>)")
    p.add_argument("--distributed", action="store_true",
                   help="run on every process of a cluster (jax.distributed.initialize with its "
                   "cluster detection, or the run's config.distributed overrides)")
    a = p.parse_args(argv)
    # orbax's absl notes (e.g. "Given directory is read only" for the run's checkpoints) would
    # stand before the one `error:` line of a user error; its errors still raise.
    absl_logging.set_verbosity(absl_logging.ERROR)
    errors.check_dir(a.workdir, "--workdir", "the workdir of a training run")
    if a.distributed:
        config = load_config(Path(a.workdir))
        with config.unlocked():
            config.distributed.enabled = True
        sharding.maybe_initialize_distributed(config)
    out = export_checkpoint(a.workdir, a.step, a.out)
    if jax.process_index() == 0:
        print(f"exported {a.workdir} to {out}", flush=True)


if __name__ == "__main__":
    main()
