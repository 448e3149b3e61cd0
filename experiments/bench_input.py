"""Throughput of the grain input pipeline at the paper's sizes (Swin canvas 1024, SigLIP 384),
on synthetic records held in memory (PNG-encoded, two masks each), and where the time goes.

    python experiments/bench_input.py                      # 1024 x 1024 and 800 x 800 records
    python experiments/bench_input.py --workers 8 --batches 50 --step-time 0.3

Prints examples/s of the loader (workers = os.cpu_count() by default, global batch 4, one
process) and whether it would feed a training step of `--step-time` seconds per batch, plus the
single-process cost of each preprocessing stage per example.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import grain  # noqa: E402
import numpy as np  # noqa: E402

from configs import segearth_r2 as segearth_r2_config  # noqa: E402
from experiments.timing import timeit  # noqa: E402
from segearth_jax import text  # noqa: E402
from segearth_jax.input import pipeline, settings, tokens  # noqa: E402
from segearth_jax.input import preprocess as P  # noqa: E402

INSTRUCTION = "Please segment the airplane and the tennis court next to the storage tanks."
ANSWER = "Sure, it is <p>airplane</p>[SEG] and <p>tennis court</p>[SEG]."


def synthetic_records(n: int, size: int, seed: int = 0) -> list[dict]:
    """Aerial-like images (smooth fields plus texture, so the PNG compresses like a photo, not
    like white noise) with two rectangular masks each."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        low = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        masks = np.zeros((2, size, size), np.uint8)
        for m in masks:
            y, x = rng.integers(0, size // 2, 2)
            m[y: y + size // 4, x: x + size // 3] = 1
        records.append(dict(id=str(i).encode(), subset=b"bench", image_name=f"{i}.png".encode(),
                            instruction=INSTRUCTION.encode(), answer=ANSWER.encode(),
                            image=cv2.imencode(".png", img)[1].tobytes(), masks=masks,
                            has_masks=True, height=size, width=size))
    return records


def stage_times(record: dict, tok, cfg) -> dict[str, float]:
    """Median single-process seconds of each stage for one record."""
    s = settings.Settings.from_config(cfg)
    img = pipeline.decode_image(record)
    masks = record["masks"]
    _, extent = P.swin_view(img, s.image_size)
    seg = tok.convert_tokens_to_ids(text.SEG)
    return {
        "decode PNG": timeit(lambda: pipeline.decode_image(record), 5),
        "siglip_view": timeit(lambda: P.siglip_view(img, s.siglip_size), 5),
        "swin_view": timeit(lambda: P.swin_view(img, s.image_size), 5),
        "masks_to_canvas": timeit(lambda: P.masks_to_canvas(masks, s.image_size, extent), 5),
        f"masks_to_grid ({s.spatial_gt})": timeit(
            lambda: P.masks_to_grid(masks, s.grid, s.spatial_gt), 5),
        "tokens": timeit(lambda: tokens.encode_train(
            tok, INSTRUCTION, ANSWER, n_image_tokens=s.n_image_tokens,
            image_token_id=s.image_token_id, seg_id=seg, max_len=s.max_len,
            max_seg=s.max_seg), 5),
        "Preprocess.map (all)": timeit(
            lambda: pipeline.Preprocess(tok, s, train=True).map((0, record)), 5),
    }


def loader_rate(records, tok, cfg, workers: int, batches: int) -> tuple[float, float]:
    """(examples/s after the first batch, seconds to the first batch)."""
    loader = pipeline.make_loader(records, tok, cfg, train=True, seed=0, worker_count=workers,
                                  shard_options=grain.sharding.NoSharding())
    it = iter(loader)
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * cfg.batch_size / (time.perf_counter() - t0), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--records", type=int, default=24)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 800])
    parser.add_argument("--step-time", type=float, default=0.3,
                        help="seconds per training step of one global batch, to compare with")
    parser.add_argument("--tokenizer", default="",
                        help="tokenizer directory (default: the tiny test tokenizer)")
    args = parser.parse_args()

    if args.tokenizer:
        tok = text.load_tokenizer(args.tokenizer)
    else:
        from convert.tiny_mipha import write_tokenizer

        d = Path(tempfile.mkdtemp())
        write_tokenizer(d, vocab_size=512)
        tok = text.load_tokenizer(d)
    cfg = segearth_r2_config.base().data
    cfg.batch_size = 4
    print(f"cpus {os.cpu_count()}, workers {args.workers}, batch {cfg.batch_size}, canvas "
          f"{cfg.image_size}, siglip {cfg.siglip_size}, max_len {cfg.max_len}, "
          f"max_seg {cfg.max_seg}, spatial_gt {cfg.spatial_gt}")
    need = cfg.batch_size / args.step_time
    for size in args.sizes:
        records = synthetic_records(args.records, size)
        mb = np.mean([len(r["image"]) for r in records]) / 2**20
        print(f"\n{size} x {size} records (PNG {mb:.2f} MiB each)")
        total = 0.0
        for name, sec in stage_times(records[0], tok, cfg).items():
            print(f"  {name:28s} {sec * 1e3:8.1f} ms")
            total = sec
        print(f"  -> one process: {1 / total:.1f} examples/s")
        rate, first = loader_rate(records, tok, cfg, args.workers, args.batches)
        verdict = "feeds it" if rate >= need else "does NOT feed it"
        print(f"  loader, {args.workers} workers: {rate:.1f} examples/s "
              f"(first batch after {first:.1f} s); a {args.step_time:g} s step of batch "
              f"{cfg.batch_size} needs {need:.1f} examples/s: {verdict} "
              f"({rate / need:.1f}x)")


if __name__ == "__main__":
    main()
