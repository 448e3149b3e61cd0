"""Tiny dataset folders in each released layout (20x30 images, known masks and texts).

Each `write_x(root)` writes the folder and returns {split: [Expected, ...]} in the order the
reader must yield them. Expected masks are drawn by hand (rectangles); RLEs are produced by
pycocotools' encoder (compressed) or by hand (uncompressed counts), images are random.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

H, W = 20, 30  # Non-square on purpose.


@dataclasses.dataclass
class Expected:
    id: str
    image_path: str
    instruction: str
    answer: str
    subset: str
    source: str
    image: np.ndarray  # RGB uint8 [H, W, 3]
    masks: np.ndarray | None  # uint8 0/1 [N, H, W]; None when the split has no masks


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def write_rgb(path: Path, image: np.ndarray) -> np.ndarray:
    """Writes an RGB image with OpenCV; returns the RGB pixels a reader must get back (for a
    lossy JPEG: what OpenCV decodes, read independently with IMREAD_COLOR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image[:, :, ::-1])
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def write_gray(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE with a str `counts` (as in JSON files)."""
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(enc["size"][0]), int(enc["size"][1])],
            "counts": enc["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE, computed by hand: column-major run lengths, background first."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_tiff(path: Path, arr: np.ndarray) -> None:
    """Minimal baseline TIFF (little-endian, uncompressed, one strip, interleaved samples) of a
    uint8/uint16 [H, W, C] array: OpenCV cannot write more than 4 channels."""
    arr = np.ascontiguousarray(arr if arr.ndim == 3 else arr[:, :, None])
    h, w, c = arr.shape
    bits = arr.dtype.itemsize * 8
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    n_tags = 10
    extra_at = 8 + 2 + 12 * n_tags + 4
    bits_list = struct.pack("<" + "H" * c, *([bits] * c))
    data_at = extra_at + (len(bits_list) if c > 2 else 0)

    def tag(code, typ, count, value):
        if typ == 3 and count <= 2:  # SHORT values stored inline.
            vals = list(value) if isinstance(value, list) else [value]
            return struct.pack("<HHI", code, typ, count) + struct.pack(
                "<HH", *(vals + [0] * (2 - len(vals))))
        return struct.pack("<HHII", code, typ, count, value)

    bits_tag = tag(258, 3, c, extra_at) if c > 2 else tag(258, 3, c, [bits] * c)
    tags = [tag(256, 4, 1, w), tag(257, 4, 1, h), bits_tag, tag(259, 3, 1, 1),
            tag(262, 3, 1, 2 if c >= 3 else 1), tag(273, 4, 1, data_at), tag(277, 3, 1, c),
            tag(278, 4, 1, h), tag(279, 4, 1, len(data)), tag(284, 3, 1, 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", n_tags) + b"".join(tags)
                + struct.pack("<I", 0) + (bits_list if c > 2 else b"") + data)


def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# ----------------------------------------------------------------------------- LaSeRS

def write_lasers(root: Path) -> dict[str, list[Expected]]:
    """train: a.png (1 target, compressed RLE), b.png (2 targets, compressed + uncompressed);
    test: subset "multiple" (no masks, ids 7 and 8) and subset "single" (c.jpg, id 7 again)."""
    root = Path(root)
    tr, te = root / "train", root / "test"
    a = write_rgb(tr / "images" / "a.png", rgb(1))
    b = write_rgb(tr / "images" / "b.png", rgb(2))
    c = write_rgb(te / "images" / "c.jpg", rgb(3))
    d = write_rgb(te / "images" / "d.png", rgb(4))
    m_a = rect(2, 9, 3, 20)
    m_b1, m_b2 = rect(0, 5, 0, 30), rect(10, 20, 25, 30)
    m_c = rect(5, 15, 10, 12)
    train_ann = tr / "annotations" / "train_ann.json"
    _dump_json(train_ann, [
        {"id": 1, "image_name": "a.png", "description": " Find the building. ",
         "answer": "It is the <p>building</p>[SEG].", "mask": [rle(m_a)]},
        {"id": "x2", "image_name": "b.png", "description": "Where can water collect?",
         "answer": "The <p>road</p>[SEG] and the <p>pond</p>[SEG].",
         "mask": [rle(m_b1), uncompressed_rle(m_b2)]},
    ])
    multiple = te / "annotations" / "multiple.json"
    single = te / "annotations" / "single.json"
    _dump_json(multiple, [
        {"id": 7, "image_name": "d.png", "description": "Segment the houses.",
         "answer": "<p>house</p>[SEG] <p>house</p>[SEG]"},
        {"id": 8, "image_name": "c.jpg", "description": "Segment the tree.",
         "answer": "<p>tree</p>[SEG]"},
    ])
    _dump_json(single, [
        {"id": 7, "image_name": "c.jpg", "description": "Segment the car.",
         "answer": "It is the <p>car</p>[SEG].", "mask": [rle(m_c)]},
    ])
    return {
        "train": [
            Expected("train_ann/1", str(tr / "images" / "a.png"), "Find the building.",
                     "It is the <p>building</p>[SEG].", "train_ann", str(train_ann), a,
                     m_a[None]),
            Expected("train_ann/x2", str(tr / "images" / "b.png"), "Where can water collect?",
                     "The <p>road</p>[SEG] and the <p>pond</p>[SEG].", "train_ann",
                     str(train_ann), b, np.stack([m_b1, m_b2])),
        ],
        "test": [
            Expected("multiple/7", str(te / "images" / "d.png"), "Segment the houses.",
                     "<p>house</p>[SEG] <p>house</p>[SEG]", "multiple", str(multiple), d, None),
            Expected("multiple/8", str(te / "images" / "c.jpg"), "Segment the tree.",
                     "<p>tree</p>[SEG]", "multiple", str(multiple), c, None),
            Expected("single/7", str(te / "images" / "c.jpg"), "Segment the car.",
                     "It is the <p>car</p>[SEG].", "single", str(single), c, m_c[None]),
        ],
    }


# ----------------------------------------------------------------------------- RRSIS-D

def _refer(expr: str) -> tuple[str, str]:
    return (f"Please segment {expr} in this image.", f"Sure, it is <p>{expr}</p>[SEG].")


def write_rrsisd(root: Path) -> dict[str, list[Expected]]:
    """Two JPEG images; ann 10 = compressed RLE, ann 11 = polygon (rows 4..11, cols 5..14),
    ann 12 = two RLE parts (union). Refs: 0 train (2 sentences), 1 val, 2 test ("testA")."""
    root = Path(root)
    img_dir = root / "images" / "rrsisd" / "JPEGImages"
    im1 = write_rgb(img_dir / "00001.jpg", rgb(11))
    im2 = write_rgb(img_dir / "00002.jpg", rgb(12))
    m10 = rect(3, 17, 2, 9)
    m11 = rect(4, 12, 5, 15)  # The polygon below, rasterised by hand.
    m12a, m12b = rect(0, 4, 0, 4), rect(15, 20, 20, 30)
    instances = root / "rrsisd" / "instances.json"
    _dump_json(instances, {
        "images": [{"id": 1, "file_name": "00001.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "00002.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "categories_id": 3, "segmentation": [rle(m10)]},
            {"id": 11, "image_id": 2, "categories_id": 1,
             "segmentation": [[5, 4, 15, 4, 15, 12, 5, 12]]},
            {"id": 12, "image_id": 1, "categories_id": 2,
             "segmentation": [rle(m12a), uncompressed_rle(m12b)]},
        ],
        "categories": [{"id": 1, "name": "pond"}, {"id": 2, "name": "vehicle"},
                       {"id": 3, "name": "building"}],
    })
    refs = root / "rrsisd" / "refs(unc).p"
    refs.write_bytes(pickle.dumps([
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "category_id": 3, "split": "train",
         "file_name": "00001_10.jpg",
         "sentences": [{"raw": "the large building", "sent": "the large building"},
                       {"raw": "The building on the left ", "sent": "the building on the left"}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 2, "category_id": 1, "split": "val",
         "file_name": "00002_11.jpg", "sentences": [{"raw": "a pond", "sent": "a pond"}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 1, "category_id": 2, "split": "testA",
         "file_name": "00001_12.jpg", "sentences": [{"sent": "two vehicles"}]},
    ], protocol=2))

    def exp(rid, path, image, expr, mask):
        # The record's source is instances.json (where its mask is, so mask errors name it).
        return Expected(rid, str(path), *_refer(expr), "rrsisd", str(instances), image,
                        mask[None])

    return {
        "train": [exp("0_0", img_dir / "00001.jpg", im1, "the large building", m10),
                  exp("0_1", img_dir / "00001.jpg", im1, "The building on the left", m10)],
        "val": [exp("1_0", img_dir / "00002.jpg", im2, "a pond", m11)],
        "test": [exp("2_0", img_dir / "00001.jpg", im1, "two vehicles",
                     np.maximum(m12a, m12b))],
    }


# ----------------------------------------------------------------------------- RefSegRS

def write_refsegrs(root: Path) -> dict[str, list[Expected]]:
    """RGB TIFF images, TIFF masks with foreground 255; image 0 has two expressions."""
    root = Path(root)
    images, masks = {}, {}
    for i in range(4):
        images[i] = write_rgb(root / "images" / f"{i}.tif", rgb(20 + i))
        masks[i] = rect(i, 10 + i, 2 * i, 20 + 2 * i)
        write_gray(root / "masks" / f"{i}.tif", masks[i] * 255)
    lines = {"train": "0 the road on the left\n1 a small pond near the road\n\n0 the long road\n",
             "val": "2 the building\n", "test": "3 the river\r\n"}
    out = {}
    for split, text in lines.items():
        src = root / f"output_phrase_{split}.txt"
        src.write_bytes(text.encode())
        out[split] = []
        seen: dict[str, int] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            name, expr = line.strip().split(" ", 1)
            k = seen.get(name, 0)
            seen[name] = k + 1
            out[split].append(Expected(f"{name}_{k}", str(root / "images" / f"{name}.tif"),
                                       *_refer(expr), "refsegrs", str(src), images[int(name)],
                                       masks[int(name)][None]))
    return out


# ----------------------------------------------------------------------------- RISBench

def write_risbench(root: Path) -> dict[str, list[Expected]]:
    """PNG images and masks (foreground 1 or 255); phrase lines name files with and without
    the extension."""
    root = Path(root)
    ims, mks = {}, {}
    for i, name in enumerate(["p1", "p2", "p3", "p4"]):
        ims[name] = write_rgb(root / "img_rgb" / f"{name}.png", rgb(30 + i))
        mks[name] = rect(1, 19, i, 10 + i)
        write_gray(root / "mask" / f"{name}.png", mks[name] * (1 if i % 2 else 255))
    lines = {"train": [("p1.png", "the red roof"), ("p2", "a  small pond"),
                       ("p1", "the roof of the red house")],
             "val": [("p3.png", "the runway")], "test": [("p4", "the ship")]}
    out = {}
    for split, items in lines.items():
        src = root / f"output_phrase_{split}.txt"
        src.write_text("".join(f"{n} {p}\n" for n, p in items))
        out[split] = []
        seen: dict[str, int] = {}
        for name, phrase in items:
            stem = name.removesuffix(".png")
            k = seen.get(stem, 0)
            seen[stem] = k + 1
            out[split].append(Expected(f"{stem}_{k}", str(root / "img_rgb" / f"{stem}.png"),
                                       *_refer(phrase), "risbench", str(src), ims[stem],
                                       mks[stem][None]))
    return out


# ----------------------------------------------------------------------------- EarthReason

def write_earthreason(root: Path) -> dict[str, list[Expected]]:
    """train: e1 (answer without [SEG], 2 questions; label 255), e2 (answer with [SEG]; label
    1; image is a JPEG), e3 (no target: empty answer list, all-zero label); val, test: 1 each."""
    root = Path(root)
    specs = {
        "train": [("e1", ".png", ["Which area suits a stadium?", "Where to land?"],
                   ["The flat field in the middle."], rect(5, 15, 5, 25), 255),
                  ("e2", ".jpg", ["Where is water stored?"], ["It is [SEG], the reservoir."],
                   rect(0, 20, 0, 3), 1),
                  ("e3", ".png", ["Where is the airport?"], [], np.zeros((H, W), np.uint8), 255)],
        "val": [("v1", ".png", ["Where to park?"], ["The parking lot."], rect(2, 3, 4, 5), 255)],
        "test": [("t1", ".png", ["Where is the dam?"], ["The dam."], rect(9, 11, 0, 30), 7)],
    }
    out = {}
    seed = 40
    for split, items in specs.items():
        out[split] = []
        for stem, ext, questions, answer, mask, fg in items:
            seed += 1
            img_path = root / split / "images" / f"{stem}{ext}"
            image = write_rgb(img_path, rgb(seed))
            write_gray(root / split / "labels" / f"{stem}.png", mask * fg)
            qa = root / split / "QAs" / f"{stem}.json"
            _dump_json(qa, {"questions": questions, "answer": answer})
            if answer:
                text = answer[0] if "[SEG]" in answer[0] else answer[0] + " [SEG]"
                masks = mask[None]
            else:
                text = "There is no target object in the image."
                masks = np.zeros((0, H, W), np.uint8)
            out[split] += [Expected(f"{stem}_{q}", str(img_path), question, text, "earthreason",
                                    str(qa), image, masks)
                           for q, question in enumerate(questions)]
    return out


WRITERS = {"lasers": write_lasers, "rrsisd": write_rrsisd, "refsegrs": write_refsegrs,
           "risbench": write_risbench, "earthreason": write_earthreason,
           "synthetic": write_lasers}
