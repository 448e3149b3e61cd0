"""Builds the TFDS dataset (array_record) of LaSeRS, RRSIS-D, RefSegRS, RISBench, EarthReason or
the synthetic LaSeRS-layout set: the builder (`segearth_jax.input.datasets`) reads the released
folder (`--manual-dir`) with `segearth_jax.input.readers`, validates every example and writes the
features of `segearth_jax.input.datasets.features()`.

    python -m data.builders lasers --manual-dir /data/LaSeRS --data-dir /data/tfds [--on-error skip]

(The underscore spellings `--manual_dir`, `--data_dir`, `--on_error` are accepted too. This
program rather than `tfds build`: it passes the bad-input policy and prints the skip summary.)
Read back with `load(name, data_dir)[split][i]` (a dict of numpy values; text as bytes).

Bad input (see segearth_jax.input.records): on_error="raise" (default) stops at the first
BadInput; "skip" leaves the record out, counts it by reason and prints the summary after each
split (also stored in the dataset's metadata.json). The policy is the builder argument
`on_error`, else the environment variable SEGEARTH_ON_ERROR, else "raise".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from segearth_jax import cli
from segearth_jax.input.datasets import BUILDERS, ON_ERROR_ENV, build, load
from segearth_jax.input.records import POLICIES

__all__ = ["BUILDERS", "ON_ERROR_ENV", "build", "load", "main"]


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.builders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BUILDERS), help="The dataset to build.")
    parser.add_argument("--manual-dir", "--manual_dir", dest="manual_dir", required=True,
                        help="Required: the dataset folder as released.")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir",
                        default=os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"),
                        help="Where the TFDS dataset is written (default: $TFDS_DATA_DIR, "
                             "else ~/tensorflow_datasets).")
    parser.add_argument("--on-error", "--on_error", dest="on_error", choices=POLICIES,
                        default=None, help=f"The bad-input policy (default: ${ON_ERROR_ENV}, "
                                           "else 'raise').")
    parser.add_argument("--overwrite", action="store_true",
                        help="Rebuild the dataset if it is already built.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    builder = build(args.name, args.manual_dir, os.path.expanduser(args.data_dir),
                    on_error=args.on_error, overwrite=args.overwrite, flag="--manual-dir")
    sizes = ", ".join(f"{s}: {info.num_examples}" for s, info in builder.info.splits.items())
    print(f"{args.name} {builder.version} in {builder.data_dir} ({sizes})")


if __name__ == "__main__":
    main(sys.argv[1:])
