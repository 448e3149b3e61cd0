"""Segmentation metrics with the published conventions made explicit (docs/conventions.md,
Generation and evaluation).

Per GT mask: I = |pred & gt|, U = |pred | gt|, IoU = I / U, and U = 0 (both masks empty) scores
`empty_union` (1.0 in SegEarth/LISA, 0.0 in RMSIN). Exact I / U is used; the official SegEarth-R1
and LISA code divide by U + 1e-5 (a difference below 1e-5 / U).
- gIoU: the mean IoU over a unit, either each GT mask ("mask": SegEarth-R2, LISA) or each sample
  ("sample": SegEarth-R1), where a sample's IoU = sum of its masks' I / sum of their U (with the
  same empty-union rule).
- cIoU: sum(I) / sum(U) over all GT masks of a subset (`empty_union` if sum(U) = 0).
- Pr@t for t in 0.5..0.9: the fraction of the same units with IoU > t (SegEarth-R1) or >= t (RMSIN).

Scoring space: both masks are moved from the original resolution to the preset's space with
nearest-neighbour resizing (`cv2.INTER_NEAREST`, the masks being binary) and scored there:
- "original": as given (LISA).
- "letterbox": long edge resized to 1024 (SegEarth-R1, SAM's ResizeLongestSide rounding
  `int(side * 1024 / long + 0.5)`) and padded to 1024x1024.
- "canvas": the SegEarth-R2 1024 canvas, same resize, padded bottom/right. (The official R2 eval
  instead stretches the GT to the full 1024x1024 input with bilinear + `> 0`; that agrees with the
  canvas only for square images.)
- "square480": both masks resized to 480x480, aspect ratio not kept (RMSIN/LAVT).
Padding adds pixels that are empty in both masks, so it changes neither I nor U and is not
materialized: "letterbox" and "canvas" give identical numbers and differ in name only.

Count mismatch (official SegEarth-R2 eval, used by every preset): predictions are matched to GT
masks in `[SEG]` order; a missing prediction repeats the last one, extra ones are dropped, and no
prediction at all scores empty masks (`match_counts`). The referring-segmentation codes of
SegEarth-R1, LISA and RMSIN always produce exactly one mask per GT, where this is a no-op.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
SPACES = ("original", "letterbox", "canvas", "square480")
UNITS = ("mask", "sample")
CANVAS = 1024
SQUARE = 480


@dataclass(frozen=True)
class Preset:
    """One paper's evaluation convention."""

    name: str
    unit: str  # "mask" | "sample": what gIoU and Pr@ average over.
    empty_union: float  # IoU when U = 0.
    pr_strict: bool  # Pr@t counts IoU > t (True) or IoU >= t (False).
    space: str  # One of SPACES.
    description: str

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"preset {self.name!r}: unit {self.unit!r} is not one of {UNITS}")
        if self.space not in SPACES:
            raise ValueError(f"preset {self.name!r}: space {self.space!r} is not one of {SPACES}")


PRESETS = {
    "segearth_r2": Preset(
        "segearth_r2", "mask", 1.0, True, "canvas",
        "SegEarth-R2: gIoU = mean IoU over GT masks, empty union = 1, Pr@t with IoU > t, scored "
        "on the 1024 canvas (long edge 1024, nearest); missing predictions repeat the last one, "
        "extras dropped, none = empty masks."),
    "segearth_r1": Preset(
        "segearth_r1", "sample", 1.0, True, "letterbox",
        "SegEarth-R1: gIoU = mean over samples of sum(I)/sum(U), empty union = 1, Pr@t with "
        "IoU > t, scored letterboxed to 1024 (long edge 1024, nearest); count mismatch as "
        "SegEarth-R2."),
    "lisa": Preset(
        "lisa", "mask", 1.0, True, "original",
        "LISA: gIoU = mean IoU over GT masks, empty union = 1, Pr@t with IoU > t, scored at the "
        "original resolution; count mismatch as SegEarth-R2."),
    "rmsin": Preset(
        "rmsin", "mask", 0.0, False, "square480",
        "RMSIN: gIoU (mIoU) = mean IoU over GT masks, empty union = 0, Pr@t with IoU >= t, both "
        "masks resized to 480x480 (nearest); count mismatch as SegEarth-R2."),
}


def space_size(height: int, width: int, space: str) -> tuple[int, int]:
    """(h, w) of an original `height` x `width` mask in `space`, without padding."""
    if space == "original":
        return height, width
    if space in ("letterbox", "canvas"):
        scale = CANVAS / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
    if space == "square480":
        return SQUARE, SQUARE
    raise ValueError(f"unknown scoring space {space!r}; expected one of {SPACES}")


def to_space(masks: np.ndarray, space: str) -> np.ndarray:
    """[N, H, W] bool -> [N, h, w] bool in `space`, nearest-neighbour (cv2.INTER_NEAREST)."""
    n, height, width = masks.shape
    h, w = space_size(height, width, space)
    if (h, w) == (height, width):
        return masks.astype(bool)
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        out[i] = cv2.resize(masks[i].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def match_counts(preds: np.ndarray, n_gt: int) -> np.ndarray:
    """[M, H, W] predictions -> [n_gt, H, W]: repeat the last if M < n_gt, drop extras, zeros if
    M = 0 (the official SegEarth-R2 rule)."""
    m, height, width = preds.shape
    if m == 0:
        return np.zeros((n_gt, height, width), bool)
    if m >= n_gt:
        return preds[:n_gt]
    return np.concatenate([preds, np.repeat(preds[-1:], n_gt - m, axis=0)], axis=0)


def intersection_union(preds: np.ndarray, gts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts I [N] and U [N] (int64) of matched [N, H, W] bool masks."""
    i = np.logical_and(preds, gts).sum(axis=(1, 2), dtype=np.int64)
    u = np.logical_or(preds, gts).sum(axis=(1, 2), dtype=np.int64)
    return i, u


def iou(i: np.ndarray, u: np.ndarray, empty_union: float) -> np.ndarray:
    """I / U elementwise (float64), `empty_union` where U = 0."""
    i, u = np.asarray(i, np.int64), np.asarray(u, np.int64)
    return np.where(u > 0, i / np.maximum(u, 1), float(empty_union))


def _as_masks(x: Any, what: str, record_id: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"record {record_id!r}: {what} must be [N, H, W], got shape {x.shape}")
    if x.dtype != bool and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"record {record_id!r}: {what} must be bool (threshold logits first), "
                         f"got dtype {x.dtype}")
    return x.astype(bool)


def _metrics(units: list[float], i_sum: int, u_sum: int, preset: Preset) -> dict[str, float]:
    """gIoU, cIoU and Pr@t (fractions) of one subset; sums are order independent (fsum)."""
    n = len(units)
    out = {"gIoU": math.fsum(units) / n,
           "cIoU": i_sum / u_sum if u_sum > 0 else float(preset.empty_union)}
    for t in THRESHOLDS:
        hits = sum((v > t) if preset.pr_strict else (v >= t) for v in units)
        out[f"Pr@{t}"] = hits / n
    return out


METRIC_KEYS = ("gIoU", "cIoU") + tuple(f"Pr@{t}" for t in THRESHOLDS)
# How a generated answer's `[SEG]` count compares with the record's GT mask count.
EMISSION = ("equal", "fewer", "more", "none")


class Evaluator:
    """Accumulates per-mask I and U of scored records, grouped by subset, under one `Preset`.

    A record may be added once per subset (a record in several subsets may come in one call or
    several); adding the same (record, subset) twice raises. Failed records are listed, never
    scored. `state()`/`merge()` combine per-process evaluators with identical results.
    """

    def __init__(self, preset: Preset | str):
        self.preset = PRESETS[preset] if isinstance(preset, str) else preset
        self._ids: list[str] = []
        self._subsets: list[tuple[str, ...]] = []
        self._i: list[np.ndarray] = []  # One [N] int64 per record.
        self._u: list[np.ndarray] = []
        self._failures: list[tuple[str, str, tuple[str, ...]]] = []
        self._seen: set[tuple[str, str]] = set()
        self._emitted: list[int] = []  # `[SEG]`s the model emitted per record, -1: not given.

    def _check_new(self, record_id: str, subsets: Sequence[str],
                   pending: Collection[tuple[str, str]] = ()) -> tuple[str, ...]:
        """Sorted subset names; raises if (record, subset) was already scored."""
        if isinstance(subsets, str):
            raise TypeError(f"record {record_id!r}: subsets must be a sequence of names, "
                            f"got the string {subsets!r}")
        subsets = tuple(sorted(set(subsets)))
        if not subsets:
            raise ValueError(f"record {record_id!r}: no subset given")
        again = [s for s in subsets if (record_id, s) in self._seen or (record_id, s) in pending]
        if again:
            raise ValueError(f"record {record_id!r} was already scored in subset(s) {again}")
        return subsets

    def _append(self, record_id: str, subsets: tuple[str, ...], i: np.ndarray, u: np.ndarray,
                emitted: int = -1):
        self._seen.update((record_id, s) for s in subsets)
        self._ids.append(record_id)
        self._subsets.append(subsets)
        self._i.append(i)
        self._u.append(u)
        self._emitted.append(int(emitted))

    def add(self, record_id: str, subsets: Sequence[str], pred_masks: np.ndarray,
            gt_masks: np.ndarray, n_emitted: int | None = None) -> list[float]:
        """Scores predicted [M, H, W] against GT [N, H, W] bool masks at original resolution;
        returns the record's IoU units (one per GT mask, or one per sample, as the preset
        says). `n_emitted`: the `[SEG]`s the model generated for it (M may differ: the answer
        may hold more `[SEG]`s than the model segments), counted per subset in the summary's
        `seg_emission` (equal / fewer / more / none against the N GT masks)."""
        pred = _as_masks(pred_masks, "pred_masks", record_id)
        gt = _as_masks(gt_masks, "gt_masks", record_id)
        if pred.shape[1:] != gt.shape[1:]:
            raise ValueError(f"record {record_id!r}: prediction size {pred.shape[1:]} != GT size "
                             f"{gt.shape[1:]} (both must be at the original resolution)")
        if gt.shape[0] == 0:
            raise ValueError(f"record {record_id!r}: no GT mask (a sample without target needs "
                             "one empty GT mask)")
        subsets = self._check_new(record_id, subsets)
        pred = match_counts(pred, gt.shape[0])
        i, u = intersection_union(to_space(pred, self.preset.space),
                                  to_space(gt, self.preset.space))
        self._append(record_id, subsets, i, u, -1 if n_emitted is None else n_emitted)
        return self._units(len(self._ids) - 1)

    def failed(self, record_id: str, error: str | BaseException,
               subsets: Sequence[str] = ()) -> None:
        """Records a record that could not be scored; listed in the summary, not scored."""
        self._failures.append((record_id, str(error), tuple(sorted(set(subsets)))))

    def _units(self, k: int) -> list[float]:
        if self.preset.unit == "mask":
            return iou(self._i[k], self._u[k], self.preset.empty_union).tolist()
        return iou(self._i[k].sum(), self._u[k].sum(), self.preset.empty_union).reshape(1).tolist()

    def summary(self) -> dict[str, Any]:
        """Per-subset and average metrics as fractions in [0, 1] (None where nothing scored)."""
        names = sorted({s for ss in self._subsets for s in ss}
                       | {s for *_, ss in self._failures for s in ss})
        subsets: dict[str, dict[str, Any]] = {}
        for name in names:
            ks = [k for k, ss in enumerate(self._subsets) if name in ss]
            units = [v for k in ks for v in self._units(k)]
            row: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
            if ks:
                row.update(_metrics(units, sum(int(self._i[k].sum()) for k in ks),
                                    sum(int(self._u[k].sum()) for k in ks), self.preset))
            row["n_samples"] = len(ks)
            row["n_masks"] = sum(len(self._i[k]) for k in ks)
            row["n_failed"] = sum(name in ss for *_, ss in self._failures)
            emission = self._emission(ks)
            if emission is not None:
                row["seg_emission"] = emission
            subsets[name] = row
        scored = [r for r in subsets.values() if r["n_samples"]]
        average: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
        if scored:
            average.update({key: math.fsum(r[key] for r in scored) / len(scored)
                            for key in METRIC_KEYS})
        first = {}
        for k, rid in enumerate(self._ids):  # Distinct records (a record may be in many subsets).
            first.setdefault(rid, k)
        average.update(n_samples=len(first), n_masks=sum(len(self._i[k]) for k in first.values()),
                       n_failed=len({f[0] for f in self._failures}), n_subsets=len(scored))
        return {
            "preset": self.preset.name,
            "description": self.preset.description,
            "unit": self.preset.unit,
            "space": self.preset.space,
            "values": "fractions in [0, 1]; the markdown table shows percent",
            "subsets": subsets,
            "average": average,
            "failures": [{"record_id": r, "error": e, "subsets": list(ss)}
                         for r, e, ss in sorted(self._failures)],
        }

    def _emission(self, ks: Sequence[int]) -> dict[str, int] | None:
        """Records of `ks` by emitted `[SEG]` count vs GT mask count; None if none was given."""
        given = [k for k in ks if self._emitted[k] >= 0]
        if not given:
            return None
        out = dict.fromkeys(EMISSION, 0)
        for k in given:
            e, n = self._emitted[k], len(self._i[k])
            out["none" if e == 0 else "equal" if e == n else "fewer" if e < n else "more"] += 1
        return out

    def markdown(self, title: str = "Evaluation") -> str:
        """A table like the paper's Table 2: rows = subsets + average, values in percent."""
        s = self.summary()
        cols = METRIC_KEYS
        lines = [f"## {title}", "",
                 f"Preset `{s['preset']}`: {s['description']}", "",
                 "Values in percent. The average row is the mean of the subsets' values (as the "
                 "paper's avg); its n counts distinct records.", "",
                 "| subset | " + " | ".join(cols) + " | n | masks |",
                 "|---" * (len(cols) + 3) + "|"]

        def fmt(row: dict[str, Any], name: str) -> str:
            vals = ["-" if row[c] is None else f"{100 * row[c]:.2f}" for c in cols]
            return f"| {name} | " + " | ".join(vals) + f" | {row['n_samples']} | {row['n_masks']} |"

        lines += [fmt(row, name) for name, row in s["subsets"].items()]
        lines.append(fmt(s["average"], "average"))
        emission = {n: r["seg_emission"] for n, r in s["subsets"].items() if "seg_emission" in r}
        if emission:
            lines += ["", "`[SEG]` emission: answers with as many `[SEG]` as GT masks, fewer (but "
                      "some), more, or none (low scores with few `equal` come from the text side).",
                      "", "| subset | " + " | ".join(EMISSION) + " |",
                      "|---" * (len(EMISSION) + 1) + "|"]
            lines += [f"| {n} | " + " | ".join(str(e[k]) for k in EMISSION) + " |"
                      for n, e in emission.items()]
        if s["failures"]:
            lines += ["", f"{len(s['failures'])} failed record(s), not scored:"]
            lines += [f"- `{f['record_id']}`: {f['error']}" for f in s["failures"]]
        else:
            lines += ["", "No failed records."]
        return "\n".join(lines) + "\n"

    def to_json(self, path: str | Path) -> None:
        """Writes `summary()` (fractions) as JSON."""
        Path(path).write_text(json.dumps(self.summary(), indent=2) + "\n")

    def to_markdown(self, path: str | Path, title: str = "Evaluation") -> None:
        Path(path).write_text(self.markdown(title))

    def state(self) -> dict[str, Any]:
        """Everything scored so far as numpy arrays and lists (to gather across processes)."""
        return {
            "preset": self.preset.name,
            "record_ids": list(self._ids),
            "subsets": [list(ss) for ss in self._subsets],
            "masks_per_record": np.array([len(i) for i in self._i], np.int64),
            "intersection": np.concatenate(self._i) if self._i else np.zeros(0, np.int64),
            "union": np.concatenate(self._u) if self._u else np.zeros(0, np.int64),
            "emitted": np.array(self._emitted, np.int64),
            "failures": [[r, e, list(ss)] for r, e, ss in self._failures],
        }

    def merge(self, states: Iterable[dict[str, Any]]) -> Evaluator:
        """Adds other evaluators' `state()`s into this one (in place; returns self). Nothing is
        added if any state is inconsistent or repeats a scored (record, subset)."""
        rows, failures, pending = [], [], set()
        for st in states:
            if st["preset"] != self.preset.name:
                raise ValueError(f"cannot merge a {st['preset']!r} state into a "
                                 f"{self.preset.name!r} evaluator")
            counts = np.asarray(st["masks_per_record"], np.int64)
            inter = np.asarray(st["intersection"], np.int64)
            union = np.asarray(st["union"], np.int64)
            if not (len(counts) == len(st["record_ids"]) == len(st["subsets"])
                    and counts.sum() == len(inter) == len(union)):
                raise ValueError("inconsistent evaluator state: "
                                 f"{len(st['record_ids'])} records, {len(counts)} counts, "
                                 f"{counts.sum()} masks, {len(inter)} I, {len(union)} U")
            ends = np.cumsum(counts)
            emitted = np.asarray(st.get("emitted", np.full(len(counts), -1)), np.int64)
            for k, rid in enumerate(st["record_ids"]):
                subsets = self._check_new(rid, st["subsets"][k], pending)
                pending.update((rid, s) for s in subsets)
                sl = slice(ends[k] - counts[k], ends[k])
                rows.append((rid, subsets, inter[sl], union[sl], int(emitted[k])))
            failures += [(r, e, tuple(ss)) for r, e, ss in st["failures"]]
        for row in rows:
            self._append(*row)
        self._failures += failures
        return self
