"""grain input pipeline: records -> fixed-shape numpy batches (docs/architecture.md section 2).

    loader = make_loader(source, tokenizer, config.data, train=True, seed=0)
    it = iter(loader)          # it.get_state() / it.set_state(state) resume exactly
    batch = next(it)

`source` is any random-access source (`__len__`, `__getitem__`) of records in the TFDS layout
of `datasets.features()` (`builder.as_data_source()[split]`, or a list of dicts):
    id, subset, image_name, instruction, answer: text (str or bytes)
    image: PNG bytes of the RGB uint8 image; masks: uint8 [N, H, W] 0/1 ([0, H, W] if absent)
    has_masks: bool; height, width: int
Records are read by index, shuffled when training, decoded (cv2.imdecode) and preprocessed by
`Preprocess` in `worker_count` worker processes, then batched. Which records a process reads:
either `rows` (training: the rows of every global batch that this process's devices hold,
`sharding.process_rows`; the global order is the same whatever the process count, and processes
of one data replica read the same rows), or `shard_options` (evaluation: `ShardByJaxProcess`,
each process its own records, batched to `batch_size // shard_count`).

Train batch (B = per-process batch, L = max_len, S = image_size, Sg = siglip_size,
g = siglip_size // patch_size, Q = max_seg):
    siglip_pixels f32 [B, Sg, Sg, 3]   pixels f32 [B, S, S, 3]
    input_ids i32 [B, L]   labels i32 [B, L]   attention_mask bool [B, L]   (right padding)
    seg_positions i32 [B, Q] (-1 pad)   seg_valid bool [B, Q]   masks u8 [B, Q, S, S]
    masks_grid f32 [B, Q, g, g]   image_hw i32 [B, 2]   canvas_hw i32 [B, 2]
    record_index i64 [B]   truncated bool [B] (answer tail cut, see tokens.py)
Eval batch (`train=False`): input_ids / attention_mask [B, max_prompt_len] (LEFT padding, the
generation prompt), siglip_pixels, pixels, image_hw, canvas_hw, n_seg i32 [B] (GT mask count:
masks.shape[0], or the answer's `[SEG]` count for a record without masks), record_index (the
evaluator reads original-resolution GT masks from the source by this index).
Teacher-forced eval batch (`train=False, teacher_forced=True`: the official evaluation, which
feeds the ground-truth answer and reads the mask queries at its `[SEG]`s): input_ids /
attention_mask [B, max_len] (the train layout: prompt + GT answer, RIGHT padding),
seg_positions, seg_valid, n_seg, and the eval batch's pixels, sizes and record_index. A record
needs one mask per answer `[SEG]`, as for training.

Errors (`config.on_error`): "raise" (default) raises `RecordError` naming the record, from the
worker that met it. "skip" first validates every record in the main process (text, mask count,
PNG header; not the pixels), once, the same way on every process, and samples only the records
that pass; what it skipped is logged (count per reason, first ids) and kept on
`loader.validation`. A grain Map cannot drop elements, so skipping happens before sampling; a
record whose pixels then fail to decode still raises.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import cv2
import grain
import numpy as np

from segearth_jax import text
from segearth_jax.input import preprocess, tokens
from segearth_jax.input.settings import Settings
from segearth_jax.input.tokens import RecordError, TooLong

log = logging.getLogger(__name__)


def _str(v: Any) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _str(v.item())
    return str(v)


def record_name(record: dict) -> str:
    """How errors name a record: "<subset>/<id> (<image_name>)"."""
    get = lambda k: _str(record[k]) if k in record else "?"
    return f"{get('subset')}/{get('id')} ({get('image_name')})"


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG header, None when the bytes are not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def decode_image(record: dict) -> np.ndarray:
    """RGB uint8 [H, W, 3] from the record's encoded image, checked against height/width."""
    data = record["image"]
    data = data.item() if isinstance(data, np.ndarray) else data
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RecordError(f"record {record_name(record)}: the image bytes do not decode")
    hw = (int(record["height"]), int(record["width"]))
    if bgr.shape[:2] != hw:
        raise RecordError(f"record {record_name(record)}: image is {bgr.shape[:2]}, "
                          f"height/width say {hw}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _masks(record: dict) -> np.ndarray:
    m = np.asarray(record["masks"])
    if m.ndim != 3:
        raise RecordError(f"record {record_name(record)}: masks must be [N, H, W], got {m.shape}")
    hw = (int(record["height"]), int(record["width"]))
    if m.shape[0] and m.shape[1:] != hw:
        raise RecordError(f"record {record_name(record)}: masks are {m.shape[1:]}, "
                          f"height/width say {hw}")
    return m


def check_record(record: dict, tokenizer, s: Settings, *, train: bool) -> dict[str, np.ndarray]:
    """Everything about a record except its pixels: tokens (train or prompt layout), mask
    count and shape, presence of masks when training, PNG header size. Raises RecordError."""
    name = record_name(record)
    instruction = _str(record["instruction"])
    if not train:
        out = tokens.encode_prompt(tokenizer, instruction, n_image_tokens=s.n_image_tokens,
                                   image_token_id=s.image_token_id,
                                   max_prompt_len=s.max_prompt_len, record_id=name,
                                   **s.template_kwargs)
    else:
        if not bool(record["has_masks"]):
            raise RecordError(f"record {name}: has no masks; training needs one per [SEG]")
        out = tokens.encode_train(
            tokenizer, instruction, _str(record["answer"]), n_image_tokens=s.n_image_tokens,
            image_token_id=s.image_token_id, seg_id=tokenizer.convert_tokens_to_ids(text.SEG),
            max_len=s.max_len, max_seg=s.max_seg, record_id=name, **s.template_kwargs)
        n_masks = _masks(record).shape[0]
        if n_masks != int(out["n_seg"]):
            raise RecordError(f"record {name}: {n_masks} masks for {int(out['n_seg'])} [SEG] "
                              "tokens in the answer; expected one mask per [SEG]")
    data = record["image"]
    size = _png_size(data.item() if isinstance(data, np.ndarray) else data)
    hw = (int(record["height"]), int(record["width"]))
    if size is not None and size != hw:
        raise RecordError(f"record {name}: PNG header says {size}, height/width say {hw}")
    return out


class Preprocess(grain.transforms.Map):
    """(record_index, record) -> one example (see the module docstring for the keys)."""

    def __init__(self, tokenizer, settings: Settings, *, train: bool,
                 teacher_forced: bool = False):
        self.tokenizer = tokenizer
        self.settings = settings
        self.train = train
        self.teacher_forced = teacher_forced and not train

    def map(self, element: tuple[int, dict]) -> dict[str, np.ndarray]:
        index, record = element
        s = self.settings
        toks = check_record(record, self.tokenizer, s, train=self.train or self.teacher_forced)
        image = decode_image(record)
        pixels, (h1, w1) = preprocess.swin_view(image, s.image_size)
        out = dict(siglip_pixels=preprocess.siglip_view(image, s.siglip_size), pixels=pixels,
                   image_hw=np.asarray(image.shape[:2], np.int32),
                   canvas_hw=np.asarray((h1, w1), np.int32), record_index=np.int64(index))
        if self.teacher_forced:
            q = s.max_seg
            return dict(out, input_ids=toks["input_ids"], attention_mask=toks["attention_mask"],
                        seg_positions=toks["seg_positions"],
                        seg_valid=np.arange(q) < int(toks["n_seg"]),
                        n_seg=np.int32(toks["n_seg"]))
        if not self.train:
            if bool(record["has_masks"]):
                n_seg = _masks(record).shape[0]
            else:
                n_seg = _str(record["answer"]).count(text.SEG)
            return dict(out, input_ids=toks["input_ids"], attention_mask=toks["attention_mask"],
                        n_seg=np.int32(n_seg))
        masks = (_masks(record) > 0).astype(np.uint8)
        n, q, g = masks.shape[0], s.max_seg, s.grid
        canvas = np.zeros((q, s.image_size, s.image_size), np.uint8)
        canvas[:n] = preprocess.masks_to_canvas(masks, s.image_size, (h1, w1))
        grid = np.zeros((q, g, g), np.float32)
        grid[:n] = preprocess.masks_to_grid(masks, g, s.spatial_gt)
        return dict(out, input_ids=toks["input_ids"], labels=toks["labels"],
                    attention_mask=toks["attention_mask"], seg_positions=toks["seg_positions"],
                    seg_valid=np.arange(q) < n, masks=canvas, masks_grid=grid,
                    truncated=toks["truncated"])


class IndexedSource:
    """The records of `source` at `indices` (all when None), each read as (index, record) so the
    example keeps its index in the original source. Its repr is stable across processes and
    runs (grain checks it when restoring an iterator state)."""

    def __init__(self, source, indices: np.ndarray | None = None):
        self.source = source
        self.indices = None if indices is None else np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, dict]:
        j = int(i) if self.indices is None else int(self.indices[i])
        return j, self.source[j]

    def __repr__(self) -> str:
        src = self.source
        inner = (f"{type(src).__name__}(len={len(src)})"
                 if isinstance(src, (list, tuple)) or type(src).__repr__ is object.__repr__
                 else repr(src))
        kept = "all" if self.indices is None else (
            f"{len(self.indices)} kept, crc {_crc(self.indices)}")
        return f"IndexedSource({inner}, {kept})"


def _crc(a: np.ndarray) -> str:
    import zlib

    return f"{zlib.crc32(a.tobytes()):08x}"


@dataclasses.dataclass
class Validation:
    """Result of the validation pre-pass: kept indices, skipped record names per reason."""

    kept: np.ndarray
    skipped: dict[str, list[str]]
    truncated: int

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {len(v)} (e.g. {', '.join(v[:3])})"
                          for k, v in sorted(self.skipped.items()))
        return (f"kept {len(self.kept)} records, skipped {self.n_skipped}"
                + (f" [{parts}]" if parts else "") + f"; {self.truncated} answers truncated")


def validate_records(source, tokenizer, settings: Settings, *, train: bool) -> Validation:
    """Checks every record's text, masks and PNG header (`check_record`); the pixels are not
    decoded. Reasons: "too_long" (`TooLong`), "invalid" (any other `RecordError`)."""
    kept, skipped, truncated = [], {}, 0
    for i in range(len(source)):
        record = source[i]
        try:
            out = check_record(record, tokenizer, settings, train=train)
        except TooLong as e:
            skipped.setdefault("too_long", []).append(f"{record_name(record)}: {e}")
            continue
        except RecordError as e:
            skipped.setdefault("invalid", []).append(f"{record_name(record)}: {e}")
            continue
        truncated += int(out.get("truncated", False))
        kept.append(i)
    return Validation(np.asarray(kept, np.int64), skipped, truncated)


class RowSampler:
    """The global sequence of `inner` (one sampler for all processes) cut into global batches
    of `batch_size` positions, of which this process reads `rows`: local index i is row
    `rows[i % k]` of global batch `i // k` (k = len(rows)). Picklable, with a stable repr
    (grain checks it when restoring an iterator state)."""

    def __init__(self, inner: grain.samplers.IndexSampler, rows: np.ndarray, batch_size: int):
        self.inner, self.rows, self.batch_size = inner, np.asarray(rows, np.int64), batch_size

    def __len__(self) -> int:
        return len(self.inner) // self.batch_size * len(self.rows)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        k = len(self.rows)
        md = self.inner[(index // k) * self.batch_size + int(self.rows[index % k])]
        return grain.RecordMetadata(index=index, record_key=md.record_key, rng=md.rng)

    def __repr__(self) -> str:
        return (f"RowSampler({self.inner!r}, rows {self.rows.tolist()} of "
                f"{self.batch_size})")


def make_loader(source, tokenizer, config: Any, *, train: bool, seed: int,
                rows: np.ndarray | None = None,
                shard_options: grain.sharding.ShardOptions | None = None,
                num_epochs: int | None = None, worker_count: int | None = None,
                drop_remainder: bool = True, teacher_forced: bool = False) -> grain.DataLoader:
    """A grain DataLoader over `source` (see the module docstring).

    config: `config.data` (its keys: configs/segearth_r2.py). seed: shuffling seed (train).
    rows: the rows of each global batch of `config.batch_size` this process reads (training,
    `sharding.process_rows`); the per-process batch is `len(rows)`. Else shard_options: defaults
    to `ShardByJaxProcess(drop_remainder=True)`; the per-process batch is
    `config.batch_size // shard_options.shard_count`. num_epochs: None repeats forever when
    training and reads once when evaluating. worker_count: defaults to `config.worker_count`.
    drop_remainder: drop the last partial batch; to see every record when evaluating, pass
    False (the last batch is then smaller) and shard options with drop_remainder=False.
    teacher_forced (with train=False): the teacher-forced eval layout (prompt + GT answer).
    Under `on_error="skip"` the loader carries the pre-pass result as `loader.validation`.
    """
    s = Settings.from_config(config)
    on_error = config.on_error
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error={on_error!r}; expected 'raise' or 'skip'")
    batch_size = int(config["batch_size"])
    if rows is not None:
        if shard_options is not None:
            raise ValueError("make_loader: pass rows or shard_options, not both")
        per_process = len(rows)
    else:
        if shard_options is None:
            shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
        if batch_size % shard_options.shard_count:
            raise ValueError(f"data.batch_size={batch_size} is the global batch; it must divide "
                             f"by the {shard_options.shard_count} processes")
        per_process = batch_size // shard_options.shard_count

    validation = None
    indices = None
    if on_error == "skip":
        validation = validate_records(source, tokenizer, s, train=train or teacher_forced)
        log.info("input validation (%s): %s", "train" if train else "eval", validation.summary())
        if validation.n_skipped:
            log.warning("skipped %d of %d records (on_error='skip'): %s", validation.n_skipped,
                        len(source), validation.summary())
        indices = validation.kept
    indexed = IndexedSource(source, indices)
    if len(indexed) == 0:
        raise ValueError("no records to read" + (f": {validation.summary()}" if validation else ""))

    workers = config.worker_count if worker_count is None else worker_count
    if num_epochs is None and not train:
        num_epochs = 1
    if rows is not None:  # one global sequence, cut by rows
        shard_options = grain.sharding.NoSharding()
        sampler = RowSampler(grain.samplers.IndexSampler(
            num_records=len(indexed), shard_options=shard_options, shuffle=train,
            num_epochs=num_epochs, seed=seed), rows, batch_size)
    else:
        sampler = grain.samplers.IndexSampler(
            num_records=len(indexed), shard_options=shard_options, shuffle=train,
            num_epochs=num_epochs, seed=seed)
    loader = grain.DataLoader(
        data_source=indexed, sampler=sampler, shard_options=shard_options,
        operations=[Preprocess(tokenizer, s, train=train, teacher_forced=teacher_forced),
                    grain.transforms.Batch(batch_size=per_process, drop_remainder=drop_remainder)],
        worker_count=workers,
        worker_buffer_size=config.prefetch,
        read_options=grain.ReadOptions(num_threads=config.read_threads))
    loader.validation = validation
    return loader
