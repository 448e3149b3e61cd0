"""Records, image/mask decoding and the bad-input policy shared by readers and builders.

A `Record` is one (image, instruction, answer, masks) sample as released. Images come back as RGB
uint8 [H, W, 3]; masks as uint8 0/1 [N, H, W] with N = answer.count("[SEG]"), in `[SEG]` order.
Anything malformed raises `BadInput`, whose message names the file and the record id; a
`SkipReport` applies the policy ("raise" or "skip") and counts what it skipped, by reason.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import numbers
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import cv2
import numpy as np
from PIL import TiffImagePlugin
from pycocotools import mask as mask_utils

from segearth_jax import errors
from segearth_jax.text import SEG

POLICIES = ("raise", "skip")
MAX_PIXELS = 1 << 28  # Sanity bound on a mask size declared in an annotation (16384 x 16384).

# Reasons (`BadInput.kind`), the keys of `SkipReport.counts`.
KINDS = {
    "missing_file": "a file named by the layout or an annotation does not exist",
    "unreadable_image": "an image or mask file does not decode (corrupt, truncated, not an image)",
    "unsupported_image": "decodes, but is not 8-bit with 1-4 channels (16-bit, float, multi-band)",
    "bad_file": "a whole annotation file is unreadable (truncated JSON, bad pickle, wrong type)",
    "bad_annotation": "a field of one record is missing or has the wrong type",
    "bad_rle": "a mask RLE or polygon is malformed",
    "mask_count": "the number of masks differs from the number of [SEG] in the answer",
    "mask_shape": "a mask's size differs from the image's (or masks differ among themselves)",
    "empty_mask": "a ground-truth mask has no foreground pixel",
    "no_seg": "the answer has no [SEG]",
    "unpaired": "files that must pair by stem do not (EarthReason)",
    "duplicate_id": "a record id occurs twice in one split",
}


class BadInput(errors.UserError, ValueError):
    """Malformed input. `str(e)` is "<file>: record <id>: <problem>" (or "(whole file)").
    `examples`: how many examples it costs when skipped (an EarthReason QAs file holds one per
    question)."""

    def __init__(self, file: str | os.PathLike, record_id: str | None, problem: str,
                 kind: str = "bad_annotation", examples: int = 1):
        if kind not in KINDS:
            raise ValueError(f"unknown BadInput kind {kind!r}; one of {sorted(KINDS)}")
        self.file = os.fspath(file)
        self.record_id = record_id
        self.problem = problem
        self.kind = kind
        self.examples = examples
        where = "(whole file)" if record_id is None else f"record {record_id}"
        super().__init__(f"{self.file}: {where}: {problem}")

    def __reduce__(self):
        return BadInput, (self.file, self.record_id, self.problem, self.kind, self.examples)


@dataclasses.dataclass(frozen=True)
class Record:
    """One sample. `masks()` decodes uint8 0/1 [N, H, W] (N = answer.count("[SEG]")) on demand;
    `masks` is None when the split carries no masks (e.g. LaSeRS test files without "mask")."""

    id: str  # Unique within a dataset split.
    image_path: str
    instruction: str
    answer: str  # One `[SEG]` per target.
    masks: Callable[[], np.ndarray] | None
    subset: str
    source: str  # The annotation file this record came from.

    @property
    def n_targets(self) -> int:
        return self.answer.count(SEG)


# ----------------------------------------------------------------------------- images and masks

def _read_bytes(path: str | os.PathLike, record_id: str | None) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadInput(path, record_id, "file does not exist", "missing_file") from None
    except OSError as e:
        raise BadInput(path, record_id, f"cannot be read ({e.strerror or e})",
                       "unreadable_image") from None


def _is_tiff(data: bytes) -> bool:
    return data[:4] in TiffImagePlugin.PREFIXES


def _first_int(value: Any, default: int) -> int:
    value = value[0] if isinstance(value, tuple) and value else value
    return value if _is_int(value) else default


def _tiff_layout(data: bytes) -> tuple[int, int] | None:
    """(samples per pixel, bits per sample) from the first IFD of a TIFF, else None: Pillow's
    IFD reader, which reads the tags of files that neither Pillow nor OpenCV decodes (5 bands)."""
    if not _is_tiff(data):
        return None
    fp = io.BytesIO(data)
    try:
        with warnings.catch_warnings():  # "Truncated File Read": the tags read so far are kept.
            warnings.simplefilter("ignore")
            ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=fp.read(16 if data[2] == 43 else 8))
            fp.seek(ifd.next)
            ifd.load(fp)
    except Exception:  # noqa: BLE001 - garbage tags only lose the detail of the error message
        return None
    return _first_int(ifd.get(277), 1), _first_int(ifd.get(258), 1)


def _decode(data: bytes, path, record_id: str | None, *, first_page_only: bool) -> np.ndarray:
    """Decodes from memory: unlike cv2.imread, cv2.imdecode refuses a truncated JPEG instead
    of filling the missing rows with gray."""
    buf = np.frombuffer(data, np.uint8)
    image = None
    try:
        if _is_tiff(data) and not first_page_only:
            ok, pages = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED)
            pages = list(pages) if ok else []
            if len(pages) > 1:
                raise BadInput(path, record_id,
                               f"multi-page TIFF ({len(pages)} pages): expected a single page "
                               "holding an 8-bit RGB image; save bands 1-3 as one RGB page",
                               "unsupported_image")
            image = pages[0] if pages else None
        elif buf.size:
            image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        layout = _tiff_layout(data)
        if layout is not None and layout[0] > 4:
            raise BadInput(path, record_id,
                           f"multi-band TIFF with {layout[0]} bands of {layout[1]}-bit samples: "
                           "expected 8-bit RGB (3 bands); export the RGB bands as an 8-bit image",
                           "unsupported_image")
        raise BadInput(path, record_id, f"does not decode as an image ({len(data)} bytes: corrupt, "
                       "truncated or not an image file)", "unreadable_image")
    return image


def load_image(path: str | os.PathLike, record_id: str | None) -> np.ndarray:
    """RGB uint8 [H, W, 3], decoded by OpenCV with IMREAD_UNCHANGED (EXIF orientation is not
    applied: pixels are taken in stored order, as the masks were drawn on them).

    8-bit RGB as is; 8-bit gray replicated to 3 channels; gray+alpha and RGBA lose the alpha.
    16-bit, float, more than 4 channels, multi-page TIFF, missing or corrupt files: BadInput.
    """
    data = _read_bytes(path, record_id)
    image = _decode(data, path, record_id, first_page_only=False)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != np.uint8:
        raise BadInput(path, record_id,
                       f"{image.dtype} image with {channels} channel(s) ({image.dtype.itemsize * 8}"
                       "-bit samples): only 8-bit images are supported; rescale to 8-bit RGB "
                       "(e.g. a per-band percentile stretch) and save as PNG/TIFF",
                       "unsupported_image")
    if image.ndim == 2:
        image = image[:, :, None]
    if channels in (1, 2):  # Gray, gray + alpha.
        return np.ascontiguousarray(np.repeat(image[:, :, :1], 3, axis=2))
    if channels in (3, 4):  # BGR, BGRA.
        return np.ascontiguousarray(image[:, :, 2::-1])
    raise BadInput(path, record_id,
                   f"{channels}-band image: expected 8-bit RGB (3 bands); export the RGB bands",
                   "unsupported_image")


def load_mask(path: str | os.PathLike, record_id: str | None) -> np.ndarray:
    """uint8 0/1 [H, W] from a mask image: foreground = any nonzero color channel (alpha, if
    present, is ignored). Any bit depth is accepted since only zero/nonzero matters."""
    data = _read_bytes(path, record_id)
    mask = _decode(data, path, record_id, first_page_only=True)
    if mask.ndim == 3:
        mask = mask[:, :, :3] if mask.shape[2] >= 3 else mask[:, :, :1]
        return np.ascontiguousarray((mask != 0).any(axis=2), dtype=np.uint8)
    return np.ascontiguousarray(mask != 0, dtype=np.uint8)


# ----------------------------------------------------------------------------- COCO RLE

def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _short(x: Any, n: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= n else text[:n] + "..."


def _compressed_counts(s: bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string, parsed as pycocotools' rleFrString does, so
    that a string is validated before the C decoder (which trusts it) ever sees it. Values are
    limited to 6 characters (30 bits), enough for any run in a MAX_PIXELS mask.

    pycocotools has no validating parser: 2.0.11 decodes {"size": [2, 2], "counts": "0"} (runs
    summing to 0, not 4) into uninitialised memory instead of raising, so this check stays."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k = 0, 0
        while True:
            if p >= len(s):
                raise ValueError("the string ends inside a run length")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"byte {s[p]:#04x} at position {p} is not in the RLE alphabet "
                                 "'0'..'o'")
            x |= (c & 0x1F) << (5 * k)
            p, k = p + 1, k + 1
            if not c & 0x20:
                if c & 0x10:
                    x |= -1 << (5 * k)
                break
            if k >= 6:
                raise ValueError(f"run length at position {p} is longer than 6 characters")
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError(f"run length {len(counts)} is negative ({x})")
        counts.append(x)
    return counts


def decode_rle(rle: Any, record_id: str | None, source: str | os.PathLike) -> np.ndarray:
    """uint8 0/1 [H, W] from a COCO RLE {"size": [H, W], "counts": ...}; counts may be a
    compressed string (str or bytes) or an uncompressed list of run lengths (column-major, first
    run = background). Validated in Python first: garbage gives BadInput, never a crash."""

    def bad(problem: str) -> BadInput:
        return BadInput(source, record_id, f"mask RLE {problem}", "bad_rle")

    if not isinstance(rle, Mapping):
        raise bad(f"must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2
            and all(_is_int(v) and v > 0 for v in size)):
        raise bad(f"'size' must be [height, width] (two positive ints), got {_short(size)}")
    h, w = int(size[0]), int(size[1])
    if h * w > MAX_PIXELS:
        raise bad(f"size {h}x{w} exceeds {MAX_PIXELS} pixels")
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise bad("'counts' string has non-ASCII characters") from None
    if isinstance(counts, bytes | bytearray):
        counts = bytes(counts)
        try:
            runs = _compressed_counts(counts)
        except ValueError as e:
            raise bad(f"'counts' string is malformed: {e}") from None
        encoded: Any = {"size": [h, w], "counts": counts}
    elif isinstance(counts, list | tuple):
        if not all(_is_int(c) and 0 <= c < 1 << 32 for c in counts):
            raise bad(f"'counts' list must hold non-negative ints, got {_short(counts)}")
        runs = [int(c) for c in counts]
        encoded = None
    else:
        raise bad(f"'counts' must be a string or a list of ints, got {type(counts).__name__}")
    if sum(runs) != h * w:
        raise bad(f"run lengths sum to {sum(runs)} but size {h}x{w} has {h * w} pixels")
    if encoded is None:
        encoded = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    return np.ascontiguousarray(mask_utils.decode(encoded), dtype=np.uint8)


# ----------------------------------------------------------------------------- validation

def check_example(record: Record, image: np.ndarray, masks: np.ndarray | None, *,
                  allow_no_target: bool = False, allow_empty_mask: bool = False) -> None:
    """Raises BadInput unless: the answer has >= 1 `[SEG]` (0 allowed with `allow_no_target`,
    EarthReason's no-target samples); masks (if any) are uint8 0/1 [N, H, W] with N = number of
    `[SEG]` and H, W the image's; every mask has a foreground pixel (unless `allow_empty_mask`:
    evaluation splits keep such records, which every published metric scores)."""
    n = record.n_targets
    if n == 0 and not allow_no_target:
        raise BadInput(record.source, record.id, f"answer has no {SEG}: {_short(record.answer)}",
                       "no_seg")
    if masks is None:
        return
    h, w = image.shape[:2]
    if masks.ndim != 3 or masks.dtype != np.uint8:
        raise BadInput(record.source, record.id, f"masks must be uint8 [N, H, W], got "
                       f"{masks.dtype} {masks.shape}", "mask_shape")
    if masks.shape[0] != n:
        raise BadInput(record.source, record.id, f"{masks.shape[0]} mask(s) but the answer has "
                       f"{n} {SEG}: {_short(record.answer)}", "mask_count")
    if n and masks.shape[1:] != (h, w):
        raise BadInput(record.source, record.id, f"masks are {masks.shape[1]}x{masks.shape[2]} "
                       f"(HxW) but image {record.image_path} is {h}x{w}", "mask_shape")
    if masks.size and masks.max() > 1:
        raise BadInput(record.source, record.id, f"mask values must be 0/1, found {masks.max()}",
                       "bad_rle")
    empty = [i for i in range(n) if not masks[i].any()]
    if empty and not allow_empty_mask:
        raise BadInput(record.source, record.id, f"mask(s) {empty} (in {SEG} order) have no "
                       "foreground pixel", "empty_mask")


# ----------------------------------------------------------------------------- skip policy

class SkipReport:
    """The bad-input policy. "raise": BadInput propagates. "skip": it is counted by `kind`, the
    first `keep` messages are kept, and processing goes on; `summary()` says what was skipped.
    `kept` is incremented by the caller for each record it keeps (for the summary)."""

    def __init__(self, policy: str = "raise", *, name: str = "", keep: int = 5):
        if policy not in POLICIES:
            raise ValueError(f"on_error policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.name = name
        self.keep = keep
        self.kept = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.whole_files: list[str] = []
        self.messages: list[str] = []

    @property
    def skipped(self) -> int:
        """Records skipped one by one (whole files are in `whole_files`, their size unknown)."""
        return sum(self.counts.values())

    def handle(self, error: BadInput) -> None:
        """Re-raises under "raise"; records the error under "skip"."""
        if self.policy == "raise":
            raise error
        if error.record_id is None:
            self.whole_files.append(error.file)
        else:
            self.counts[error.kind] += error.examples
        if len(self.messages) < self.keep:
            self.messages.append(str(error))

    def skip(self, error: BadInput) -> None:
        """Counts `error` as skipped whatever the policy (an expected gap in released data,
        such as an empty mask in a training split)."""
        self.counts[error.kind] += error.examples
        if len(self.messages) < self.keep:
            self.messages.append(str(error))

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """`with report.guard(): ...` - a BadInput inside is handled (the block is abandoned)."""
        try:
            yield
        except BadInput as e:
            self.handle(e)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), or None if it raised BadInput under "skip"."""
        try:
            return fn(*args, **kwargs)
        except BadInput as e:
            self.handle(e)
            return None

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "kept": self.kept, "skipped": self.skipped,
                "by_reason": dict(sorted(self.counts.items())),
                "whole_files_skipped": list(self.whole_files), "first_messages": self.messages}

    def summary(self) -> str:
        head = f"{self.name or 'input'}: policy={self.policy}, kept {self.kept} record(s)"
        if not self.skipped and not self.whole_files:
            return head + ", skipped nothing"
        lines = [head + f", skipped {self.skipped} record(s)"]
        lines += [f"  {kind}: {n}  ({KINDS[kind]})" for kind, n in sorted(self.counts.items())]
        if self.whole_files:
            lines.append(f"  whole files skipped ({len(self.whole_files)}; their number of "
                         "records is unknown, not counted above):")
            lines += [f"    {f}" for f in self.whole_files]
        lines.append(f"  first {len(self.messages)} message(s):")
        lines += [f"    {m}" for m in self.messages]
        return "\n".join(lines)
