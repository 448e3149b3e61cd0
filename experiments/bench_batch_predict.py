"""Batch prediction throughput: images/s of `predict --inputs` at several batch sizes.

    python experiments/bench_batch_predict.py --checkpoint DIR [--n 64] [--batch 1 8]

Writes `--n` random RGB images (sizes 64..256) into a temporary folder and runs
`segearth_jax.predict.predict_many` over them once per batch size, each into a fresh output
folder (the full path: loading, both image views, generation, segmentation, resizing the masks
back, writing the PNGs and JSON; no heatmaps). A first call on `batch` images compiles; the rate
is measured over the rest. Prints images/s per batch size and the ratio to the first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from segearth_jax.inference import SegEarthPredictor  # noqa: E402
from segearth_jax.predict import list_inputs, predict_many  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    predictor = SegEarthPredictor(args.checkpoint, max_new_tokens=args.max_new_tokens)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        for i in range(args.n):
            h, w = rng.integers(64, 257, 2)
            cv2.imwrite(str(tmp / "in" / f"{i:04d}.png"),
                        rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        inputs = list_inputs(str(tmp / "in"), "Segment the storage tanks.")
        rates = {}
        for b in args.batch:
            warm, rest = inputs[:b], inputs[b:]
            predict_many(predictor, warm, tmp / f"warm{b}", b)  # compiles this batch shape
            t0 = time.perf_counter()
            predict_many(predictor, rest, tmp / f"out{b}", b)
            rates[b] = len(rest) / (time.perf_counter() - t0)
    first = args.batch[0]
    for b, r in rates.items():
        print(f"batch {b}: {r:.2f} images/s ({r / rates[first]:.2f}x batch {first})")


if __name__ == "__main__":
    main()
