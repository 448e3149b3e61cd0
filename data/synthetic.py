"""Synthetic LaSeRS-format data: procedurally drawn aerial-like scenes with instructions that
cover the paper's four dimensions (data/README.md):

  granularity   semantic (every instance of a category, ONE mask) | instance | part
  multiplicity  single (one `[SEG]`) | multiple (2-3 `[SEG]`s, one mask each)
  reasoning     explicit (names the category / part) | implicit (describes its function)
  length        short (one sentence) | long (a scenario of four or more sentences)

Layout written (the LaSeRS layout read by the data pipeline):

  OUT/{train,test}/images/synNNNNNN.png
  OUT/train/annotations/train.json
  OUT/test/annotations/{semantic,instance,part,single,multiple,explicit,implicit,short,long}.json

Each annotation file is a JSON list of {"id", "image_name", "description", "answer", "mask"}:
`answer` holds one `<p>name</p>[SEG]` per target, `mask` one COCO RLE per `[SEG]` in order. Each
test record is in exactly one file per dimension (the files are views of the test set).

Scenes are drawn by `data.scenes`, instructions and answers worded by `data.instructions`. Image
shapes are `size x size`, `0.75 size x size` or `size x 0.75 size` (H x W).

Deterministic: sample i depends only on (seed, i) and its rank in its split.

  python -m data.synthetic --out DIR --n 2000 [--seed 0] [--size 256] [--test-fraction 0.2]
      [--object-scale 1.0] [--subsets semantic single explicit short]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from data.instructions import DIMENSIONS, SUBSETS, Spec, describe, pick_targets, spec_for
from data.scenes import make_scene
from segearth_jax import cli, errors


def encode_mask(mask: np.ndarray) -> dict:
    """[H, W] bool -> COCO RLE {"size": [H, W], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def image_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(H, W): square half of the time, else one side 3/4 of `size`."""
    short = size * 3 // 4
    return [(size, size), (size, size), (short, size), (size, short)][int(rng.integers(4))]


def make_sample(seed: int, index: int, spec: Spec, size: int = 256, object_scale: float = 1.0
                ) -> tuple[np.ndarray, dict]:
    """One image [H, W, 3] uint8 RGB and its LaSeRS record for `spec`; objects are drawn
    `object_scale` times their default size (relative to the image)."""
    rng = np.random.default_rng([seed, index])
    h, w = image_shape(rng, size)
    for _ in range(100):
        scene = make_scene(rng, h, w, size / 256 * object_scale)
        targets = pick_targets(rng, scene, spec)
        if targets:
            break
    else:
        raise RuntimeError(f"sample {index}: no scene in 100 tries serves {spec}")
    name = f"syn{index:06d}"
    instruction, answer = describe(rng, scene, targets, spec)
    record = {"id": name, "image_name": f"{name}.png", "description": instruction,
              "answer": answer, "mask": [encode_mask(t.mask) for t in targets]}
    assert answer.count("[SEG]") == len(record["mask"]), record
    return scene.image, record


# ----------------------------------------------------------------------------------------------
# Writing the data set.


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records, ensure_ascii=True) + "\n")


def _check_args(n: int, size: int, test_fraction: float, object_scale: float = 1.0,
                subsets: Sequence[str] = ()) -> None:
    if n < 1 or size < 64 or not 0 <= test_fraction <= 1 or not 0.25 <= object_scale <= 4:
        raise ValueError(f"need n >= 1, size >= 64, 0 <= test_fraction <= 1, 0.25 <= "
                         f"object_scale <= 4; got n={n}, size={size}, "
                         f"test_fraction={test_fraction}, object_scale={object_scale}")
    unknown = sorted(set(subsets) - set(SUBSETS))
    if unknown:
        raise ValueError(f"unknown subsets {unknown}; choose from {', '.join(SUBSETS)}")


def _prepare(out: Path, overwrite: bool) -> None:
    """Makes out/{train,test}/{images,annotations}; `out` must be empty or absent unless
    `overwrite` (then only out/train and out/test are removed first)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise errors.OutputExists(f"--out {out} is not empty; pass --overwrite (overwrite=True)"
                                      " to replace its train/ and test/ folders")
        for split in ("train", "test"):
            if (out / split).exists():
                shutil.rmtree(out / split)
    for split in ("train", "test"):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "annotations").mkdir(parents=True, exist_ok=True)


def _write_image(path: Path, image: np.ndarray) -> None:
    """Writes an RGB uint8 image [H, W, 3] (as PNG when `path` ends in .png)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"could not write {path}")


def generate(out: Path, n: int, seed: int = 0, size: int = 256, test_fraction: float = 0.2,
             overwrite: bool = False, verbose: bool = False, object_scale: float = 1.0,
             subsets: Sequence[str] = ()) -> dict:
    """Writes `n` samples (one image and one record each) under `out`; returns counts:
    {"train": int, "test": int, "masks": int, "test_subsets": {subset: int}}.

    `subsets` restricts the records' dimensions (`spec_for`); the test files of the excluded
    subsets are written empty. `out` must be empty or absent unless `overwrite` (then only
    out/train and out/test are removed first)."""
    out = Path(out)
    _check_args(n, size, test_fraction, object_scale, subsets)
    _prepare(out, overwrite)
    n_test = round(n * test_fraction)
    is_test = np.zeros(n, bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    train: list[dict] = []
    by_subset: dict[str, list[dict]] = {s: [] for s in SUBSETS}
    ranks = {False: 0, True: 0}
    n_masks, start = 0, time.perf_counter()
    for i in range(n):
        test = bool(is_test[i])
        spec = spec_for(ranks[test], subsets)
        ranks[test] += 1
        image, record = make_sample(seed, i, spec, size, object_scale)
        _write_image(out / ("test" if test else "train") / "images" / record["image_name"], image)
        n_masks += len(record["mask"])
        if test:
            for s in spec.subsets():
                by_subset[s].append(record)
        else:
            train.append(record)
        if verbose and ((i + 1) % 250 == 0 or i + 1 == n):
            print(f"{i + 1}/{n} samples, {time.perf_counter() - start:.1f} s", flush=True)
    _write_json(out / "train" / "annotations" / "train.json", train)
    for s, records in by_subset.items():
        _write_json(out / "test" / "annotations" / f"{s}.json", records)
    return {"train": len(train), "test": n_test, "masks": n_masks,
            "test_subsets": {s: len(r) for s, r in by_subset.items()}}


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="Required: the output directory.")
    parser.add_argument("--n", type=int, default=2000,
                        help="The number of samples (images; default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0,
                        help="The random seed (default: %(default)s).")
    parser.add_argument("--size", type=int, default=256,
                        help="The longest image side in pixels (default: %(default)s).")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="The share of samples in the test split (default: %(default)s).")
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="The object size multiplier (relative to the image; 2 = twice as "
                             "long; default: %(default)s).")
    parser.add_argument("--subsets", nargs="+", default=(), metavar="SUBSET",
                        help="Only records of these subsets in the dimensions they name, e.g. "
                             "`semantic single explicit short` for the easiest set.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace OUT/train and OUT/test when OUT is not empty.")
    args = parser.parse_args(argv)
    try:
        _check_args(args.n, args.size, args.test_fraction, args.object_scale, args.subsets)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    counts = generate(args.out, args.n, args.seed, args.size, args.test_fraction,
                      overwrite=args.overwrite, verbose=True, object_scale=args.object_scale,
                      subsets=args.subsets)  # an existing --out: errors.OutputExists
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {counts['train']} train, "
          f"{counts['test']} test records, {counts['masks']} masks")
    for dim, names in DIMENSIONS.items():
        print(f"  test {dim:12s} " + ", ".join(f"{s} {counts['test_subsets'][s]}" for s in names))


if __name__ == "__main__":
    main(sys.argv[1:])
