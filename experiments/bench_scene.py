"""Whole-scene prediction: K questions in one pass against K single runs, and the memory and
time of a large 16-bit scene.

    python experiments/bench_scene.py prompts [--checkpoint DIR] [--size 768] [--k 5]
    python experiments/bench_scene.py memory [--checkpoint DIR] [--size 10000]

Without --checkpoint, the tiny config with random weights (the `[SEG]` column of its LM head
scaled up so that it answers with `[SEG]`s: `segearth_jax.testing.random_export`, as
tests/test_scene.py builds it) is exported into a temporary folder. Scenes are uint16, 4 bands
(B, G, R, NIR), EPSG:32633 at 0.5 m, drawn by `data.scenes` (tiled to the size), a 64-px nodata
border.

`prompts`: `scene.run_scene` with K questions (vision towers once per batch of windows) and K
runs of one question each, on the same compiled predictor (a first run on a small scene
compiles), interleaved twice (the machine may be shared); prints wall and CPU (process) times,
the best of each, and the speedups. `memory`: the `predict --scene` command as a
subprocess on a `--size` square scene; prints its wall time and peak RSS (ru_maxrss of the
child).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

PROMPTS = ["Segment the storage tanks.", "Where are the ships?", "Find every building.",
           "Segment the vehicles on the roads.", "Where is the water?", "Segment the airplanes.",
           "Find the tennis courts.", "Where are the roads?"]


def random_tiny_export(out: Path) -> Path:
    """The tiny config, random weights (`segearth_jax.testing.random_export`: the `[SEG]` logit
    column scaled by 40), a tokenizer trained on a few sentences."""
    from configs import tiny
    from segearth_jax import testing, text

    config = tiny.get_config()
    tok = out / "tokenizer_src"
    text.train_tokenizer(tok, [text.SYSTEM, *PROMPTS, "the <p>tank</p>[SEG]"],
                         vocab_size=config.tokenizer_vocab)
    return testing.random_export(out / "export", config, tok)


def write_scene(path: Path, size: int, tile: int = 1024, border: int = 64) -> None:
    """A size x size uint16 B, G, R, NIR GeoTIFF (0.5 m, nodata 0 in a border), written in
    strips of `tile` rows from one generator scene repeated (memory: a few tiles)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from data.scenes import make_scene

    rgb = make_scene(np.random.default_rng(0), tile, tile, 4.0).image.astype(np.uint16)
    block = np.stack([rgb[..., 2], rgb[..., 1], rgb[..., 0], rgb[..., 1] // 2 + 60]) * 37 + 400
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=4,
                       dtype="uint16", crs="EPSG:32633", nodata=0, tiled=True,
                       transform=from_origin(500000.0, 4000000.0, 0.5, 0.5)) as ds:
        for top in range(0, size, tile):
            h = min(tile, size - top)
            strip = np.tile(block[:, :h], (1, 1, -(-size // tile)))[:, :, :size].copy()
            rows = np.arange(top, top + h)[:, None]
            cols = np.arange(size)[None]
            inside = ((rows >= border) & (rows < size - border) & (cols >= border)
                      & (cols < size - border))
            ds.write(np.where(inside, strip, 0).astype(np.uint16), window=Window(0, top, size, h))


def bench_prompts(args: argparse.Namespace, export: Path, tmp: Path) -> None:
    from segearth_jax.inference import SegEarthPredictor
    from segearth_jax.scene import run_scene

    predictor = SegEarthPredictor(export, max_new_tokens=args.max_new_tokens)
    write_scene(tmp / "small.tif", 256)
    write_scene(tmp / "scene.tif", args.size)
    prompts = PROMPTS[:args.k]
    kw = dict(batch_size=args.batch_size)
    with _Open(tmp / "small.tif") as small:
        run_scene(predictor, small, prompts[:1], [tmp / "warm"], **kw)  # compiles
    def together(scene, tag):
        run_scene(predictor, scene, prompts, [tmp / tag / f"q{k}" for k in range(args.k)], **kw)

    def apart(scene, tag):
        for k, prompt in enumerate(prompts):
            run_scene(predictor, scene, [prompt], [tmp / tag / f"one{k}"], **kw)

    times = {"--prompts": [], "single runs": []}
    with _Open(tmp / "scene.tif") as scene:
        for i, (name, fn) in enumerate([("--prompts", together), ("single runs", apart)] * 2):
            wall, cpu = time.perf_counter(), time.process_time()
            fn(scene, f"run{i}")
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            print(f"{name}: wall {times[name][-1][0]:.1f} s, CPU {times[name][-1][1]:.1f} s",
                  flush=True)
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
    print(f"{args.size} x {args.size} scene, K = {args.k}, batch {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}; best of 2 (interleaved): --prompts wall "
          f"{best['--prompts'][0]:.1f} s / CPU {best['--prompts'][1]:.1f} s, {args.k} single "
          f"runs wall {best['single runs'][0]:.1f} s / CPU {best['single runs'][1]:.1f} s; "
          f"speedup wall {best['single runs'][0] / best['--prompts'][0]:.2f}x, CPU "
          f"{best['single runs'][1] / best['--prompts'][1]:.2f}x")


class _Open:
    """`open_scene` as a context manager."""

    def __init__(self, path: Path):
        from segearth_jax.scene import open_scene

        self.scene = open_scene(str(path))

    def __enter__(self):
        return self.scene

    def __exit__(self, *exc):
        self.scene.close()


def bench_memory(args: argparse.Namespace, export: Path, tmp: Path) -> None:
    t0 = time.perf_counter()
    write_scene(tmp / "big.tif", args.size)
    print(f"wrote {args.size} x {args.size} x 4 uint16 in {time.perf_counter() - t0:.0f} s",
          flush=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "segearth_jax.predict", "--checkpoint",
                        str(export), "--scene", str(tmp / "big.tif"), "--prompt", PROMPTS[0],
                        "--out", str(tmp / "out"), "--batch-size", str(args.batch_size),
                        "--max-new-tokens", str(args.max_new_tokens)], cwd=ROOT,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(p.stdout[-2000:], p.stderr[-1500:] if p.returncode else "")
    print(f"{args.size} x {args.size} uint16 4-band scene: wall {wall:.0f} s, peak RSS "
          f"{rss:.2f} GiB (exit {p.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["prompts", "memory"])
    parser.add_argument("--checkpoint", help="a SegEarth-R2 directory (default: random tiny)")
    parser.add_argument("--size", type=int, default=None,
                        help="scene side in px (prompts: 768, memory: 10000)")
    parser.add_argument("--k", type=int, default=5, help="prompts: questions")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    args.size = args.size or (768 if args.what == "prompts" else 10000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export = Path(args.checkpoint) if args.checkpoint else random_tiny_export(tmp)
        (bench_prompts if args.what == "prompts" else bench_memory)(args, export, tmp)


if __name__ == "__main__":
    main()
