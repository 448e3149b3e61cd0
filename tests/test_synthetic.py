"""Synthetic LaSeRS-format generator: valid files, exact mask/pixel alignment, coverage of the four
dimensions, determinism, overwrite refusal."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from data import instructions, scenes, synthetic

N, SEED, TEST_FRACTION = 40, 0, 0.5
KEYS = {"id", "image_name", "description", "answer", "mask"}
SUBSET_FILES = {"granularity": ("semantic", "instance", "part"),
                "multiplicity": ("single", "multiple"),
                "reasoning": ("explicit", "implicit"), "length": ("short", "long")}
SHAPES = {(256, 256), (192, 256), (256, 192)}  # size 256: square or one side 3/4.
# Objects are flat palette colours plus a per-instance offset (|.| <= JITTER per channel) plus
# uniform pixel noise (|.| <= NOISE), so every object pixel is within JITTER + NOISE = 15 of a
# palette colour in every channel. Water also carries a 5 % ripple texture, hence its own bound.
TOL = 10 + 5
WATER_TOL = 30
# The colour each part is drawn in: (category, colour key), written out from the drawing spec.
PART_COLOR = {
    "fuselage": ("airplane", "fuselage"), "wings": ("airplane", "wings"),
    "engines": ("airplane", "engines"), "net": ("tennis court", "net"),
    "service boxes": ("tennis court", "court"), "chimney": ("building", "chimney"),
    "solar panel": ("building", "solar panel"), "roof": ("storage tank", "roof"),
    "bow": ("ship", "bow"), "stern": ("ship", "stern"),
    "running track": ("ground track field", "track"),
    "inner field": ("ground track field", "field"),
}
SEG_NAME = re.compile(r"<p>(.*?)</p>\[SEG\]")
# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "lasers"
    return out, synthetic.generate(out, N, seed=SEED, test_fraction=TEST_FRACTION)


def _load(path: Path) -> list[dict]:
    records = json.loads(path.read_text())
    assert isinstance(records, list), f"{path}: expected a JSON list"
    return records


def _split(out: Path, split: str) -> dict[str, list[dict]]:
    """Annotation file stem -> records."""
    return {p.stem: _load(p) for p in sorted((out / split / "annotations").glob("*.json"))}


def _singular(name: str) -> str:
    """Singular form of a `<p>` name (they are regular plurals in this data set)."""
    if name.endswith("boxes"):
        return name[:-2]
    return name[:-1] if name.endswith("s") else name


def _image(out: Path, split: str, record: dict) -> np.ndarray:
    path = out / split / "images" / record["image_name"]
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None and bgr.ndim == 3 and bgr.dtype == np.uint8, f"{path} unreadable"
    return bgr[..., ::-1]


def _masks(record: dict) -> list[np.ndarray]:
    return [mask_utils.decode(m).astype(bool) for m in record["mask"]]


def test_files_are_valid_lasers_records(dataset):
    out, counts = dataset
    assert sorted(_split(out, "train")) == ["train"]
    assert sorted(_split(out, "test")) == sorted(instructions.SUBSETS)
    shapes = set()
    for split in ("train", "test"):
        names = set()
        for stem, records in _split(out, split).items():
            for r in records:
                where = f"{split}/{stem}.json record {r.get('id')}"
                assert set(r) == KEYS, f"{where}: keys {sorted(r)}"
                assert all(isinstance(r[k], str) for k in KEYS - {"mask"}), where
                n_seg = r["answer"].count("[SEG]")
                assert n_seg >= 1 and len(r["mask"]) == n_seg, f"{where}: {n_seg} [SEG]s"
                assert len(SEG_NAME.findall(r["answer"])) == n_seg, f"{where}: {r['answer']}"
                image = _image(out, split, r)
                shapes.add(image.shape[:2])
                for k, (rle, m) in enumerate(zip(r["mask"], _masks(r), strict=True)):
                    assert isinstance(rle["counts"], str) and rle["size"] == list(m.shape)
                    assert m.shape == image.shape[:2], f"{where} mask {k}: {m.shape}"
                    assert m.sum() > 0, f"{where} mask {k} is empty"
                names.add(r["image_name"])
        on_disk = {p.name for p in (out / split / "images").iterdir()}
        assert on_disk == names, f"{split}: images without records or records without images"
    assert shapes <= SHAPES and len(shapes) > 1, shapes  # Non-square images occur.
    train_ids = {r["id"] for r in _load(out / "train/annotations/train.json")}
    test_ids = {r["id"] for r in _load(out / "test/annotations/single.json")}
    test_ids |= {r["id"] for r in _load(out / "test/annotations/multiple.json")}
    assert len(train_ids) == counts["train"] == N - round(N * TEST_FRACTION)
    assert len(test_ids) == counts["test"] == round(N * TEST_FRACTION)
    assert not train_ids & test_ids
    assert counts["test_subsets"] == {s: len(r) for s, r in _split(out, "test").items()}


def test_each_dimension_partitions_the_test_set(dataset):
    out, _ = dataset
    files = _split(out, "test")
    ids = None
    for dim, subsets in SUBSET_FILES.items():
        seen = [r["id"] for s in subsets for r in files[s]]
        assert len(seen) == len(set(seen)), f"{dim}: a record is in two of {subsets}"
        ids = ids or set(seen)
        assert set(seen) == ids, f"{dim}: subsets {subsets} do not cover the test set"
        assert all(files[s] for s in subsets), f"{dim}: an empty subset among {subsets}"


def test_dimensions_are_what_the_files_say(dataset):
    out, _ = dataset
    files = _split(out, "test")
    for r in files["single"]:
        assert r["answer"].count("[SEG]") == 1, r["id"]
    for r in files["multiple"]:
        assert 2 <= r["answer"].count("[SEG]") <= 3, r["id"]
        masks = _masks(r)
        for a, b in itertools.combinations(masks, 2):
            assert not np.any(a & b), f"{r['id']}: targets overlap"
    for r in files["short"]:
        assert len(re.findall(r"[.?!]", r["description"])) == 1, r["description"]
    for r in files["long"]:
        assert len(re.findall(r"[.?!]", r["description"])) >= 4, r["description"]
    short = max(len(r["description"].split()) for r in files["short"] if r in files["single"])
    assert min(len(r["description"].split()) for r in files["long"]) > short
    for r in files["explicit"]:  # The instruction names every target ...
        for name in SEG_NAME.findall(r["answer"]):
            assert _singular(name) in r["description"].lower(), (r["id"], name)
    for r in files["implicit"]:  # ... or none of them.
        for name in SEG_NAME.findall(r["answer"]):
            assert _singular(name) not in r["description"].lower(), (r["id"], name)


def test_semantic_answers_name_categories_and_cover_all_instances(dataset):
    out, _ = dataset
    names = set(instructions.WORDS) | {w.plural for w in instructions.WORDS.values()}
    for r in _split(out, "test")["semantic"]:
        for name in SEG_NAME.findall(r["answer"]):
            assert name in names, f"{r['id']}: {name!r} is not a category"


def _within(image: np.ndarray, mask: np.ndarray, colors: list, tol: int) -> np.ndarray:
    """Per mask pixel: is it within `tol` (every channel) of one of `colors`?"""
    px = image[mask].astype(np.int32)[:, None, :]
    return (np.abs(px - np.asarray(colors, np.int32)[None]).max(-1) <= tol).any(-1)


def _colors_of(name: str) -> tuple[list, int]:
    """Palette colours a target called `name` (a `<p>` text) is drawn in, and the tolerance."""
    cats = {w.plural: c for c, w in instructions.WORDS.items()} | {c: c for c in scenes.COLORS}
    if name in cats:  # A semantic or instance target: any colour of the category.
        return list(scenes.COLORS[cats[name]].values()), WATER_TOL if name == "water" else TOL
    cat, key = PART_COLOR.get(name) or PART_COLOR[_singular(name)]
    return [scenes.COLORS[cat][key]], TOL


def test_mask_pixels_have_the_drawn_colours(dataset):
    """Masks are aligned with the pixels: inside an object / stuff mask every pixel has a colour
    of its category, inside a part mask the colour of that part; the same masks mirrored do not.
    Covers every record of both splits."""
    out, _ = dataset
    checked, controls = 0, []
    for split in ("train", "test"):
        for stem, records in _split(out, split).items():
            if stem in ("single", "multiple"):  # The other test files hold the same records.
                continue
            for r in records:
                image = _image(out, split, r)
                for name, mask in zip(SEG_NAME.findall(r["answer"]), _masks(r), strict=True):
                    colors, tol = _colors_of(name)
                    ok = _within(image, mask, colors, tol).mean()
                    need = 0.99 if name == "water" else 1.0
                    assert ok >= need, f"{split}/{stem} {r['id']} {name}: {ok:.3f} of pixels match"
                    if len(colors) == 1:  # Parts: the mean colour is the part's colour.
                        mean = image[mask].mean(0)
                        assert np.abs(mean - colors[0]).max() <= TOL, (r["id"], name, mean)
                    # Control: the check has teeth. A mirrored mask mostly lands on other colours
                    # (one may hit a look-alike, e.g. a vehicle on a vehicle, so average).
                    controls.append(_within(image, np.fliplr(mask), colors, tol).mean())
                    checked += 1
    assert checked >= 40, checked  # The check did run on enough masks.
    assert np.mean(controls) < 0.5, f"mirrored masks match too: {np.round(controls, 2)}"


def test_label_maps_agree_with_pixels_after_occlusion():
    """Scene level, many scenes: every pixel an instance (part) keeps in the final label map has
    its category's (part's) colour, so occluders (later objects, trees) left no stale labels."""
    rng = np.random.default_rng(11)
    n_checked = 0
    for _ in range(60):
        scene = scenes.make_scene(rng, 192, 256, 1.0)
        for o in scene.objects:
            px = scene.image[scene.inst == o.inst_id]
            assert len(px) == o.visible
            if o.visible == 0:
                continue
            colors = np.array(list(scenes.COLORS[o.category].values()))
            d = np.abs(px[:, None].astype(int) - colors[None])
            assert (d.max(-1).min(-1) <= TOL).all(), f"{o.category} {o.inst_id}: wrong colours"
            for pname, pid in o.part_ids.items():
                c, key = PART_COLOR[pname]
                ppx = scene.image[scene.part == pid].astype(int)
                assert len(ppx) == o.visible_parts[pname]
                assert (np.abs(ppx - scenes.COLORS[c][key]).max(-1) <= TOL).all(), (
                    f"{o.category} {o.inst_id} {pname}: wrong colours")
            n_checked += 1
    assert n_checked > 300, n_checked


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic.generate(tmp_path / name, 12, seed=seed, size=128)
    a, b, c = (tree(tmp_path / n) for n in "abc")
    assert a == b
    assert a["train/annotations/train.json"] != c["train/annotations/train.json"]
    images = [k for k in a if k.endswith(".png") and k in c]
    assert images and all(a[k] != c[k] for k in images)


def test_object_scale_draws_larger_targets(tmp_path):
    """Same seed, `object_scale` 2: the targets cover more of the image (median over 24
    samples); out-of-range scales are refused before anything is written."""

    def median_fraction(root: Path) -> float:
        records = json.loads((root / "train" / "annotations" / "train.json").read_text())
        areas = [mask_utils.area({"size": m["size"], "counts": m["counts"].encode()})
                 / (m["size"][0] * m["size"][1]) for r in records for m in r["mask"]]
        return float(np.median(areas))

    for name, scale in (("one", 1.0), ("two", 2.0)):
        synthetic.generate(tmp_path / name, 24, seed=5, size=128, test_fraction=0.0,
                           object_scale=scale)
    one, two = median_fraction(tmp_path / "one"), median_fraction(tmp_path / "two")
    assert two > 2 * one, (one, two)  # areas grow ~4x where the objects still fit
    for bad in (0.1, 5.0):
        with pytest.raises(ValueError, match="object_scale"):
            synthetic.generate(tmp_path / f"bad{bad}", 2, object_scale=bad)
        assert not (tmp_path / f"bad{bad}").exists()


def test_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    synthetic.generate(out, 3, size=128)
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(out, 3, size=128)
    with pytest.raises(SystemExit) as e:
        synthetic.main(["--out", str(out), "--n", "3", "--size", "128"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        synthetic.generate(other, 3, size=128)
    # With overwrite: train/ and test/ are replaced (stale files go), anything else stays.
    stale = out / "train" / "images" / "stale.png"
    stale.write_bytes(b"x")
    (out / "keep.txt").write_text("keep")
    counts = synthetic.generate(out, 2, size=128, test_fraction=0.5, overwrite=True)
    assert not stale.exists() and (out / "keep.txt").read_text() == "keep"
    assert counts["train"] == counts["test"] == 1
    assert len(list((out / "train" / "images").iterdir())) == 1


def test_spec_cycle_is_balanced():
    specs = [instructions.spec_for(j) for j in range(48)]
    assert len({s.subsets() for s in specs[:24]}) == 24  # All 3*2*2*2 combinations.
    for j in range(len(specs) - 2):  # Any 3 consecutive records cover all 9 subsets.
        assert {x for s in specs[j:j + 3] for x in s.subsets()} == set(instructions.SUBSETS)


def test_subsets_restrict_the_dimensions_they_name(tmp_path):
    specs = [instructions.spec_for(j, ("semantic", "part", "short")) for j in range(48)]
    assert {s.granularity for s in specs} == {"semantic", "part"}
    assert {s.length for s in specs} == {"short"}
    for dim in ("multiplicity", "reasoning"):  # not named: both values, balanced
        values = [getattr(s, dim) for s in specs]
        assert values.count(values[0]) == len(values) // 2
    counts = synthetic.generate(tmp_path / "easy", 6, seed=1, size=128, test_fraction=0.5,
                                subsets=("semantic", "single", "explicit", "short"))
    assert counts["test_subsets"] == {s: 3 if s in ("semantic", "single", "explicit", "short")
                                      else 0 for s in instructions.SUBSETS}
    records = json.loads((tmp_path / "easy/train/annotations/train.json").read_text())
    assert len(records) == 3 and all(r["answer"].count("[SEG]") == 1 for r in records)
    assert json.loads((tmp_path / "easy/test/annotations/part.json").read_text()) == []
    with pytest.raises(ValueError, match="unknown subsets"):
        synthetic.generate(tmp_path / "bad", 2, subsets=("semantics",))
    assert not (tmp_path / "bad").exists()


def _contrast_with_surroundings(scene: scenes.Scene, o: scenes.Obj) -> float:
    """Largest per-channel difference between an object's mean colour and the mean colour of the
    bare ground or road in a 3-pixel ring around it."""
    mask = (scene.inst == o.inst_id).astype(np.uint8)
    ring = cv2.dilate(mask, np.ones((7, 7), np.uint8)).astype(bool) & (scene.inst == 0) & (
        (scene.stuff == 0) | (scene.stuff == scenes.ROAD))
    if ring.sum() < 10:
        return np.inf  # Enclosed by other objects: nothing to compare with.
    inside = scene.image[mask.astype(bool)].mean(0)
    return float(np.abs(inside - scene.image[ring].mean(0)).max())


def test_vehicles_stand_out_from_the_ground():
    """No invisible targets: every vehicle differs from the ground or road around it (the old
    palette drew silver vehicles on concrete 0-10 levels from it, below the pixel noise)."""
    rng = np.random.default_rng(5)
    contrasts = []
    while len(contrasts) < 150:
        scene = scenes.make_scene(rng, 192, 256, 1.0)
        if "airport" not in scene.setting:  # Concrete ground: the hard case.
            continue
        contrasts += [_contrast_with_surroundings(scene, o) for o in scene.objects
                      if o.category == "vehicle" and o.visible >= 20]
    assert min(contrasts) >= 15, sorted(contrasts)[:5]
    assert scenes.vehicle_colors("concrete") == ("red", "white", "black", "blue", "yellow")
