"""Readers of each dataset's layout exactly as released (data/README.md, layouts):
`read_x(root, split, report=None) -> Iterator[Record]`, sorted deterministically. Masks are
decoded lazily by `Record.masks()`; images are not opened here (the builders load and validate
both).

Errors in one record are routed through `report` (a SkipReport, default policy "raise"); an
unreadable whole file (truncated JSON, bad pickle) is one BadInput with record id None.

Referring datasets (RRSIS-D, RefSegRS, RISBench) have no answer text: the instruction and answer
come from REFER_INSTRUCTION / REFER_ANSWER (one `[SEG]`).
"""

from __future__ import annotations

import collections
import functools
import json
import numbers
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from segearth_jax import safe_pickle
from segearth_jax.input.records import (
    BadInput,
    Record,
    SkipReport,
    _is_int,
    _short,
    decode_rle,
    load_mask,
)
from segearth_jax.text import SEG

REFER_INSTRUCTION = "Please segment {expression} in this image."
REFER_ANSWER = "Sure, it is <p>{expression}</p>" + SEG + "."
# EarthReason: the released answer text (answer[0]) gets one [SEG] appended when it has none.
REASON_ANSWER = "{answer} " + SEG
NO_TARGET_ANSWER = "There is no target object in the image."  # Empty `answer` list: 0 [SEG].
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _report(report: SkipReport | None) -> SkipReport:
    return SkipReport("raise") if report is None else report


def _require_dir(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise BadInput(path, None, f"folder does not exist; expected {expected}", "missing_file")


def load_json(path: str | os.PathLike, record_id: str | None = None) -> Any:
    """Parsed JSON; a missing, non-UTF-8 or truncated/invalid file is one BadInput."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise BadInput(path, record_id, "file does not exist", "missing_file") from None
    except UnicodeDecodeError as e:
        raise BadInput(path, record_id, f"is not UTF-8 text ({e.reason} at byte {e.start})",
                       "bad_file") from None
    except json.JSONDecodeError as e:
        raise BadInput(path, record_id, f"is not valid JSON (truncated or corrupt): {e.msg} at "
                       f"line {e.lineno} column {e.colno}", "bad_file") from None
    except (OSError, RecursionError, ValueError) as e:
        raise BadInput(path, record_id, f"cannot be read as JSON: {e}", "bad_file") from None


def _text(item: Mapping, key: str, source, rid: str, *, allow_empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise BadInput(source, rid, f"{key!r} must be a non-empty string, got {_short(value)}")
    return value


def _stem_of(name: str) -> str:
    """`name` without a known image extension (RISBench phrase files give names with or without
    one); other dots are kept."""
    root, ext = os.path.splitext(name)
    return root if ext.lower() in IMAGE_EXTENSIONS else name


# ----------------------------------------------------------------------------- LaSeRS

class LasersItem(NamedTuple):
    id: str
    image_name: str
    description: str
    answer: str
    rles: list | None  # None when the item has no "mask".


def parse_lasers_item(item: Any, source: str | os.PathLike, index: int, *,
                      require_mask: bool) -> LasersItem:
    """Validates entry `index` {"id", "image_name", "description", "answer", "mask": [RLE, ...]}
    of a LaSeRS annotation list (RLEs are checked when decoded). Errors name the record
    "<file stem>/<id>" (or "<file stem>/#<index>" when the id itself is bad)."""
    stem = Path(source).stem
    rid = f"{stem}/#{index}"
    if not isinstance(item, Mapping):
        raise BadInput(source, rid, f"entry must be a JSON object, got {type(item).__name__}")
    raw_id = item.get("id")
    if not (_is_int(raw_id) or (isinstance(raw_id, str) and raw_id.strip())):
        raise BadInput(source, rid, f"'id' must be a string or int, got {_short(raw_id)}")
    rid = f"{stem}/{raw_id}"
    image_name = _text(item, "image_name", source, rid)
    description = _text(item, "description", source, rid)
    answer = _text(item, "answer", source, rid)
    rles = item.get("mask")
    if rles is None and "mask" not in item:
        if require_mask:
            raise BadInput(source, rid, "no 'mask': training annotations must carry one RLE per "
                           f"{SEG}")
    elif not isinstance(rles, list):
        raise BadInput(source, rid, f"'mask' must be a list of RLEs, got {_short(rles)}",
                       "bad_rle")
    return LasersItem(str(raw_id), image_name, description.strip(), answer.strip(), rles)


def _stack(masks: list[np.ndarray], record_id: str, source) -> np.ndarray:
    shapes = sorted({m.shape for m in masks})
    if len(shapes) > 1:
        raise BadInput(source, record_id, f"masks differ in size: {shapes}", "mask_shape")
    if not masks:
        return np.zeros((0, 0, 0), np.uint8)
    return np.stack(masks)


def _decode_rles(rles: list, record_id: str, source: str) -> np.ndarray:
    return _stack([decode_rle(r, record_id, source) for r in rles], record_id, source)


def read_lasers(root: str | os.PathLike, split: str,
                report: SkipReport | None = None) -> Iterator[Record]:
    """LaSeRS (and the synthetic set): `{split}/images/*`, `{split}/annotations/*.json`.

    Each annotation file is a JSON list of {"id", "image_name", "description", "answer",
    "mask": [RLE, ...]}; subset = the file's stem (the evaluated test subsets); Record.id =
    "<subset>/<id>" (the same sample may appear in several test subsets). Test files may lack
    "mask" (masks None); train entries must have it.
    """
    report = _report(report)
    base = Path(root) / split
    ann_dir = base / "annotations"
    _require_dir(ann_dir, f"{split}/annotations/*.json under the LaSeRS root")
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        report.handle(BadInput(ann_dir, None, "no *.json annotation file", "missing_file"))
    for path in files:
        items = report.run(load_json, path)
        if items is None:
            continue
        if not isinstance(items, list):
            report.handle(BadInput(path, None, f"must hold a JSON list of entries, got "
                                   f"{type(items).__name__}", "bad_file"))
            continue
        seen: set[str] = set()
        for index, item in enumerate(items):
            record = report.run(_lasers_record, item, index, path, base, split, seen)
            if record is not None:
                yield record


def _lasers_record(item, index: int, path: Path, base: Path, split: str, seen: set) -> Record:
    source = str(path)
    it = parse_lasers_item(item, source, index, require_mask=split == "train")
    rid = f"{path.stem}/{it.id}"
    if it.id in seen:
        raise BadInput(source, rid, "id occurs twice in this file", "duplicate_id")
    seen.add(it.id)
    masks = None if it.rles is None else functools.partial(_decode_rles, it.rles, rid, source)
    return Record(id=rid, image_path=str(base / "images" / it.image_name),
                  instruction=it.description, answer=it.answer, masks=masks, subset=path.stem,
                  source=source)


# ----------------------------------------------------------------------------- RRSIS-D

# Lists, dicts, strings and numbers only (plus numpy scalars): a refs file cannot run code.
_REFS_ALLOWED = safe_pickle.NUMPY_SCALARS


def _load_refs(path: Path) -> list:
    try:
        with open(path, "rb") as f:
            refs = safe_pickle.restricted_load(
                f, _REFS_ALLOWED, "plain lists, dicts, strings and numbers", encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(path, None, "file does not exist", "missing_file") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise BadInput(path, None, f"is not a readable refs pickle ({type(e).__name__}: {e})",
                       "bad_file") from None
    if not isinstance(refs, list):
        raise BadInput(path, None, f"must hold a list of refs, got {type(refs).__name__}",
                       "bad_file")
    return refs


def _index(entries: Any, key: str, path: Path) -> dict:
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) and _is_int(e.get("id"))
                                                for e in entries):
        raise BadInput(path, None, f"{key!r} must be a list of objects with an int 'id'",
                       "bad_file")
    return {int(e["id"]): e for e in entries}


def _polygons_mask(polys: list, h: Any, w: Any, record_id: str, source: str) -> np.ndarray:
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        raise BadInput(source, record_id, "polygon segmentation needs the image's 'height' and "
                       f"'width' in instances.json, got {_short(h)} x {_short(w)}", "bad_rle")
    limit = 2 * max(h, w)  # Sanity bound: pycocotools rasterises the whole polygon outline.
    for poly in polys:
        if not (len(poly) >= 6 and len(poly) % 2 == 0 and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and -limit <= v <= limit
                for v in poly)):
            raise BadInput(source, record_id, f"polygon must be [x0, y0, x1, y1, ...] with >= 3 "
                           f"points inside +-{limit}, got {_short(poly)}", "bad_rle")
    rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polys], int(h), int(w))
    return np.ascontiguousarray(mask_utils.decode(mask_utils.merge(rles)), dtype=np.uint8)


def _rrsisd_masks(ann: Mapping, h: Any, w: Any, record_id: str, source: str) -> np.ndarray:
    """[1, H, W]: the union of the annotation's parts (compressed/uncompressed RLEs, polygons)."""
    seg = ann.get("segmentation")
    parts = [seg] if isinstance(seg, Mapping) else seg
    if not isinstance(parts, list) or not parts:
        raise BadInput(source, record_id, f"'segmentation' must be an RLE or a non-empty list, "
                       f"got {_short(seg)}", "bad_rle")
    polys = [p for p in parts if isinstance(p, list)]
    masks = [decode_rle(p, record_id, source) for p in parts if not isinstance(p, list)]
    if polys:
        masks.append(_polygons_mask(polys, h, w, record_id, source))
    return np.maximum.reduce(_stack(masks, record_id, source), axis=0, keepdims=True)


def _in_split(ref_split: Any, split: str) -> bool:
    if not isinstance(ref_split, str):
        return False
    return "test" in ref_split if split == "test" else ref_split == split  # As refer's REFER.


def read_rrsisd(root: str | os.PathLike, split: str,
                report: SkipReport | None = None) -> Iterator[Record]:
    """RRSIS-D: `rrsisd/refs(unc).p` (pickled list of refs {ref_id, ann_id, image_id, split,
    sentences: [{"raw"|"sent"}], file_name}), `rrsisd/instances.json` (COCO; annotation category
    key spelled `categories_id`), images `images/rrsisd/JPEGImages/<file_name>`.

    One Record per (ref, sentence), id "<ref_id>_<sentence index>"; text = "raw" (else "sent");
    file_name from the COCO image entry (else the ref's); split "test" matches test* as refer
    does. Mask = union of the annotation's segmentation parts, [1, H, W].
    """
    report = _report(report)
    root = Path(root)
    refs_path = root / "rrsisd" / "refs(unc).p"
    inst_path = root / "rrsisd" / "instances.json"
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    with report.guard():
        refs = _load_refs(refs_path)
        instances = load_json(inst_path)
        if not isinstance(instances, Mapping):
            raise BadInput(inst_path, None, "must hold a COCO object", "bad_file")
        images = _index(instances.get("images"), "images", inst_path)
        anns = _index(instances.get("annotations"), "annotations", inst_path)
        chosen = [(i, r) for i, r in enumerate(refs)
                  if not isinstance(r, Mapping) or _in_split(r.get("split"), split)]
        for index, ref in chosen:
            yield from report.run(_rrsisd_records, ref, index, refs_path, inst_path, image_dir,
                                  images, anns) or ()


def _rrsisd_records(ref, index: int, refs_path: Path, inst_path: Path, image_dir: Path,
                    images: dict, anns: dict) -> list[Record]:
    source = str(refs_path)
    rid = f"#{index}"
    if not isinstance(ref, Mapping):
        raise BadInput(source, rid, f"ref must be a dict, got {type(ref).__name__}")
    if not _is_int(ref.get("ref_id")):
        raise BadInput(source, rid, f"'ref_id' must be an int, got {_short(ref.get('ref_id'))}")
    rid = str(ref["ref_id"])
    ann = anns.get(ref.get("ann_id")) if _is_int(ref.get("ann_id")) else None
    if ann is None:
        raise BadInput(source, rid, f"'ann_id' {_short(ref.get('ann_id'))} is not an annotation "
                       f"id of {inst_path}")
    image = images.get(ref.get("image_id")) if _is_int(ref.get("image_id")) else None
    file_name = image.get("file_name") if image is not None else ref.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise BadInput(source, rid, f"no image file name: image_id {_short(ref.get('image_id'))} "
                       f"is not in {inst_path} and the ref has no 'file_name'")
    h, w = (image.get("height"), image.get("width")) if image is not None else (None, None)
    sentences = ref.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise BadInput(source, rid, f"'sentences' must be a non-empty list, got "
                       f"{_short(sentences)}")
    records = []
    for s_idx, sent in enumerate(sentences):
        text = None
        if isinstance(sent, Mapping):
            text = next((sent[k] for k in ("raw", "sent")
                         if isinstance(sent.get(k), str) and sent[k].strip()), None)
        if text is None:
            raise BadInput(source, f"{rid}_{s_idx}", "sentence must be a dict with a non-empty "
                           f"'raw' or 'sent', got {_short(sent)}")
        sid = f"{rid}_{s_idx}"
        # Its source is instances.json: what can still fail once the record exists is its mask.
        records.append(_referring_record(
            sid, image_dir / file_name, text, "rrsisd", str(inst_path),
            functools.partial(_rrsisd_masks, ann, h, w, sid, str(inst_path))))
    return records


# ----------------------------------------------------------------------------- RefSegRS, RISBench

def parse_phrase_line(line: str, source: str | os.PathLike,
                      line_no: int) -> tuple[str, str] | None:
    """"<file name> <phrase>" split at the first whitespace -> (name, phrase); None for a blank
    line. The name may not contain path separators."""
    text = line.strip()
    if not text:
        return None
    parts = text.split(None, 1)
    rid = f"line {line_no}"
    if len(parts) < 2 or not parts[1].strip():
        raise BadInput(source, rid, f"expected '<file name> <phrase>', got {_short(text)}")
    name = parts[0]
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BadInput(source, rid, f"file name {_short(name)} must be a plain file name")
    return name, parts[1].strip()


def _phrase_lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise BadInput(path, None, "file does not exist", "missing_file") from None
    except UnicodeDecodeError as e:
        raise BadInput(path, None, f"is not UTF-8 text ({e.reason} at byte {e.start})",
                       "bad_file") from None


def _referring_record(rid: str, image_path: Path, expression: str, subset: str, source: str,
                      masks: Callable[[], np.ndarray]) -> Record:
    expression = expression.strip()
    return Record(id=rid, image_path=str(image_path),
                  instruction=REFER_INSTRUCTION.format(expression=expression),
                  answer=REFER_ANSWER.format(expression=expression), masks=masks, subset=subset,
                  source=source)


def _one_mask(path: Path, record_id: str) -> np.ndarray:
    return load_mask(path, record_id)[None]


def _read_phrases(root: Path, split: str, report: SkipReport, subset: str, image_dir: str,
                  image_ext: str, mask_dir: str, mask_ext: str, keep_ext: bool
                  ) -> Iterator[Record]:
    source_path = root / f"output_phrase_{split}.txt"
    source = str(source_path)
    lines = report.run(_phrase_lines, source_path) or []
    seen: collections.Counter[str] = collections.Counter()
    for line_no, line in enumerate(lines, 1):
        parsed = report.run(parse_phrase_line, line, source, line_no)
        if parsed is None:
            continue
        name, phrase = parsed
        stem = _stem_of(name)
        rid = f"{stem}_{seen[stem]}"  # An image may come with several expressions.
        seen[stem] += 1
        image_name = name if keep_ext and stem != name else stem + image_ext
        yield _referring_record(rid, root / image_dir / image_name, phrase, subset, source,
                                functools.partial(_one_mask, root / mask_dir / (stem + mask_ext),
                                                  rid))


def read_refsegrs(root: str | os.PathLike, split: str,
                  report: SkipReport | None = None) -> Iterator[Record]:
    """RefSegRS: `output_phrase_{split}.txt` lines "<id> <expression>", `images/<id>.tif`,
    `masks/<id>.tif` (foreground 255; any nonzero counts). Record.id = "<id>_<k>", k = the
    expression's rank among this image's lines."""
    yield from _read_phrases(Path(root), split, _report(report), "refsegrs", "images", ".tif",
                             "masks", ".tif", keep_ext=False)


def read_risbench(root: str | os.PathLike, split: str,
                  report: SkipReport | None = None) -> Iterator[Record]:
    """RISBench: `output_phrase_{split}.txt` lines "<file name> <phrase>" split at the first
    whitespace, `img_rgb/<name>.png`, `mask/<name>.png` (>0 foreground).

    The file name may carry an image extension or not: "x.png"/"x.jpg" is used as given under
    img_rgb/, a bare "x" becomes "x.png"; the mask is always mask/<stem>.png. Record.id =
    "<stem>_<k>", k = the phrase's rank among this image's lines."""
    yield from _read_phrases(Path(root), split, _report(report), "risbench", "img_rgb", ".png",
                             "mask", ".png", keep_ext=True)


# ----------------------------------------------------------------------------- EarthReason

def _by_stem(folder: Path, suffixes: tuple[str, ...] | None) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = collections.defaultdict(list)
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and (
                suffixes is None or p.suffix.lower() in suffixes):
            out[p.stem].append(p)
    return out


def parse_earthreason_qa(qa: Any, source: str | os.PathLike, stem: str
                         ) -> tuple[list[str], str | None]:
    """(questions, answer text or None for a no-target sample) of one EarthReason QAs file
    {"questions": [str, ...], "answer": [str, ...]}; answer[0] is used."""
    if not isinstance(qa, Mapping):
        raise BadInput(source, stem, f"must hold a JSON object, got {type(qa).__name__}")
    questions, answers = qa.get("questions"), qa.get("answer")
    if not (isinstance(questions, list) and questions
            and all(isinstance(q, str) and q.strip() for q in questions)):
        raise BadInput(source, stem, f"'questions' must be a non-empty list of strings, got "
                       f"{_short(questions)}")
    if not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
        raise BadInput(source, stem, f"'answer' must be a list of strings, got {_short(answers)}")
    if not answers:
        return [q.strip() for q in questions], None
    answer = answers[0].strip()
    if not answer:
        raise BadInput(source, stem, "answer[0] is empty (use an empty list for no target)")
    if answer.count(SEG) > 1:
        raise BadInput(source, stem, f"answer[0] has {answer.count(SEG)} {SEG} but EarthReason "
                       "has one label per image", "mask_count")
    return [q.strip() for q in questions], answer


def _earthreason_masks(label: Path, record_id: str, no_target: bool) -> np.ndarray:
    mask = load_mask(label, record_id)
    if not no_target:
        return mask[None]
    if mask.any():
        raise BadInput(label, record_id, f"the answer list is empty (no target) but the label has "
                       f"{int(mask.sum())} foreground pixels", "mask_count")
    return np.zeros((0, *mask.shape), np.uint8)


def read_earthreason(root: str | os.PathLike, split: str,
                     report: SkipReport | None = None) -> Iterator[Record]:
    """EarthReason: `{split}/images/*`, `{split}/labels/*.png` (nonzero = fg),
    `{split}/QAs/*.json` {"questions": [...], "answer": [...]}, paired by file stem (a stem
    missing from one folder is BadInput). One Record per question, id "<stem>_<q>" (evaluations
    that score one question per image keep the first: `evaluate`'s `questions="first"`). The
    release's nested `{split}/{split}/` folder (e.g. `val/val/images`) is accepted as well. A
    bad image/label/QAs triple is skipped as one example per question of its QAs file.

    Answer = answer[0] with " [SEG]" appended if it has none (REASON_ANSWER); an empty answer
    list is a no-target sample: NO_TARGET_ANSWER (no [SEG]), masks [0, H, W], label all zero.
    """
    report = _report(report)
    base = Path(root) / split
    folders = {"images": None, "labels": (".png",), "QAs": (".json",)}
    if not (base / "images").is_dir() and (base / split / "images").is_dir():
        base = base / split  # the released val set unpacks as val/val/
    for name in folders:
        _require_dir(base / name, f"{split}/images, {split}/labels and {split}/QAs")
    found = {name: _by_stem(base / name, suffixes) for name, suffixes in folders.items()}
    for stem in sorted(set().union(*found.values())):
        yield from report.run(_earthreason_records, stem, found) or ()


def _question_count(found: dict[str, dict[str, list[Path]]], stem: str) -> int:
    """The questions of `stem`'s QAs file (the examples it would give), 1 if unreadable."""
    try:
        questions = json.loads(found["QAs"][stem][0].read_bytes()).get("questions")
    except Exception:  # noqa: BLE001 - only a count for the skip report
        return 1
    return len(questions) if isinstance(questions, list) and questions else 1


def _earthreason_records(stem: str, found: dict[str, dict[str, list[Path]]]) -> list[Record]:
    try:
        return _earthreason_triple(stem, found)
    except BadInput as e:
        e.examples = _question_count(found, stem) if stem in found["QAs"] else 1
        raise


def _earthreason_triple(stem: str, found: dict[str, dict[str, list[Path]]]) -> list[Record]:
    for name, files in found.items():
        if len(files.get(stem, ())) > 1:
            raise BadInput(files[stem][0], stem, f"{len(files[stem])} files in {name}/ share this "
                           f"stem: {[p.name for p in files[stem]]}", "unpaired")
    present = {name: files[stem][0] for name, files in found.items() if stem in files}
    missing = [name for name in found if name not in present]
    if missing:
        raise BadInput(next(iter(present.values())), stem, f"no file with stem {stem!r} in "
                       f"{', '.join(f'{split_dir}/' for split_dir in missing)} (images, labels "
                       "and QAs pair by file stem)", "unpaired")
    source = str(present["QAs"])
    questions, answer = parse_earthreason_qa(load_json(source, stem), source, stem)
    if answer is not None and SEG not in answer:
        answer = REASON_ANSWER.format(answer=answer)
    no_target = answer is None
    return [Record(id=f"{stem}_{q}", image_path=str(present["images"]), instruction=question,
                   answer=NO_TARGET_ANSWER if no_target else answer,
                   masks=functools.partial(_earthreason_masks, present["labels"], f"{stem}_{q}",
                                           no_target),
                   subset="earthreason", source=source)
            for q, question in enumerate(questions)]


READERS: dict[str, Callable[..., Iterator[Record]]] = {
    "lasers": read_lasers,
    "rrsisd": read_rrsisd,
    "refsegrs": read_refsegrs,
    "risbench": read_risbench,
    "earthreason": read_earthreason,
    "synthetic": read_lasers,
}
