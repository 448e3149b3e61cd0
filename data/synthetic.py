"""Synthetic LaSeRS-format data: procedurally drawn aerial-like scenes with instructions that
cover the paper's four dimensions (docs/design.md section 5):

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

Scenes: textured ground (grass / soil / concrete), water (river / lake / coast), roads with lane
markings, tree clumps (never targets), and objects of 7 categories drawn in flat, distinct colours
(`CATEGORIES[c].colors`) with parts: airplane, tennis court, building, storage tank, ship, vehicle,
ground track field; plus the "stuff" categories water and road. Objects drawn later occlude earlier
ones; masks come from the final label maps, so they match the drawn pixels exactly. Image shapes
are `size x size`, `0.75 size x size` or `size x 0.75 size` (H x W).

Deterministic: sample i depends only on (seed, i) and its rank in its split.

  python -m data.synthetic --out DIR --n 2000 [--seed 0] [--size 256] [--test-fraction 0.2]
      [--object-scale 1.0] [--subsets semantic single explicit short]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segearth_jax import cli

GRANULARITY = ("semantic", "instance", "part")
MULTIPLICITY = ("single", "multiple")
REASONING = ("explicit", "implicit")
LENGTH = ("short", "long")
DIMENSIONS = {"granularity": GRANULARITY, "multiplicity": MULTIPLICITY,
              "reasoning": REASONING, "length": LENGTH}
SUBSETS = GRANULARITY + MULTIPLICITY + REASONING + LENGTH

RGB = tuple[int, int, int]
SHIFT = 4  # Sub-pixel bits of every OpenCV drawing call (coordinates are scaled by 2**SHIFT).
NOISE = 5  # Pixel noise added to the final image: uniform in [-NOISE, NOISE] per channel.
JITTER = 10  # Per-instance colour offset, uniform in [-JITTER, JITTER] per channel.
MIN_VISIBLE = 12  # Pixels an instance / semantic target must show to be a target.
MIN_PART = 6  # Pixels a part must show to be a target.
MIN_FRACTION = 0.5  # Fraction of its drawn area an instance / part must keep after occlusion.


@dataclass(frozen=True)
class Category:
    """A target category: colours of its drawn components (RGB), its parts, and the words used
    for it. Implicit instructions use `head` + `clause` ("facility" + "that stores oil")."""
    name: str
    plural: str
    colors: dict[str, RGB]
    parts: tuple[str, ...] = ()
    head: tuple[str, str] = ("", "")  # Singular, plural.
    clause: tuple[str, str] = ("", "")  # Singular, plural.
    reason: str = ""
    looks: tuple[str, str] = ("", "")  # "It looks like {0}." / "They look like {1}."
    stuff: bool = False  # Background region (water, road): semantic targets only.


CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("airplane", "airplanes",
             {"fuselage": (240, 240, 240), "wings": (200, 205, 215), "engines": (70, 70, 80)},
             ("fuselage", "wings", "engines"), ("machine", "machines"),
             ("that carries passengers through the air", "that carry passengers through the air"),
             "airplanes carry passengers and cargo through the air",
             ("a white cross-shaped object", "white cross-shaped objects")),
    Category("tennis court", "tennis courts",
             {"apron": (40, 130, 120), "court": (40, 90, 190), "lines": (245, 245, 245),
              "net": (30, 30, 30)},
             ("net", "service boxes"), ("place", "places"),
             ("where people can play a racket sport",) * 2,
             "tennis is a racket sport played on tennis courts",
             ("a blue rectangle with white lines", "blue rectangles with white lines")),
    Category("building", "buildings",
             {"roof": (200, 110, 70), "chimney": (60, 45, 40), "solar panel": (25, 35, 95)},
             ("chimney", "solar panel"), ("structure", "structures"),
             ("where people live or work",) * 2,
             "people live and work in buildings",
             ("an orange rectangular roof", "orange rectangular roofs")),
    Category("storage tank", "storage tanks",
             {"wall": (235, 230, 205), "roof": (105, 95, 80)},
             ("roof",), ("facility", "facilities"), ("that stores oil", "that store oil"),
             "storage tanks hold oil and other liquids",
             ("a pale ring around a dark disc", "pale rings around dark discs")),
    Category("ship", "ships",
             {"hull": (70, 75, 80), "deck": (150, 150, 140), "bow": (120, 60, 50),
              "stern": (240, 240, 240)},
             ("bow", "stern"), ("vessel", "vessels"),
             ("that carries cargo across the sea", "that carry cargo across the sea"),
             "ships carry cargo across the sea",
             ("a long pointed hull on the water", "long pointed hulls on the water")),
    Category("vehicle", "vehicles",
             {"red": (200, 40, 40), "white": (235, 235, 235), "black": (35, 35, 35),
              "blue": (30, 50, 235), "yellow": (225, 200, 40), "silver": (165, 165, 170)},
             (), ("thing", "things"), ("that people drive to work",) * 2,
             "people drive vehicles to work",
             ("a small bright rectangle", "small bright rectangles")),
    Category("ground track field", "ground track fields",
             {"track": (150, 40, 45), "field": (60, 150, 60)},
             ("running track", "inner field"), ("venue", "venues"),
             ("where athletes race around an oval",) * 2,
             "ground track fields host running races",
             ("a red oval ring around a green field", "red oval rings around green fields")),
    Category("water", "water", {"water": (35, 70, 110)}, (), ("area", "area"),
             ("where boats can sail",) * 2, "boats sail on water",
             ("a dark blue area", "a dark blue area"), stuff=True),
    Category("road", "roads", {"road": (95, 95, 100), "marking": (225, 225, 225)}, (),
             ("path", "paths"), ("that traffic uses to travel",) * 2,
             "traffic travels along roads", ("a long gray strip", "long gray strips"), stuff=True),
)}
VEHICLE_COLORS = tuple(CATEGORIES["vehicle"].colors)


@dataclass(frozen=True)
class Part:
    """Words for one part: names and implicit descriptions (singular, plural), with `{owner}`."""
    names: tuple[str, str]
    implicit: tuple[str, str]
    plural: bool  # The part's name is grammatically plural ("wings").
    reason: str


PARTS: dict[tuple[str, str], Part] = {
    ("airplane", "fuselage"): Part(
        ("fuselage", "fuselages"), ("the part of {owner} where the passengers sit",
                                    "the parts of {owner} where the passengers sit"),
        False, "passengers sit in the fuselage"),
    ("airplane", "wings"): Part(
        ("wings", "wings"), ("the parts of {owner} that generate lift",) * 2,
        True, "the wings generate lift"),
    ("airplane", "engines"): Part(("engines", "engines"),
                                  ("the parts of {owner} that provide thrust",) * 2,
                                  True, "the engines provide thrust"),
    ("tennis court", "net"): Part(("net", "nets"), (
        "the barrier that the ball must cross on {owner}",
        "the barriers that the ball must cross on {owner}"), False, "the ball must cross the net"),
    ("tennis court", "service boxes"): Part(
        ("service boxes", "service boxes"), ("the areas of {owner} where a serve must land",) * 2,
        True, "a serve must land in a service box"),
    ("building", "chimney"): Part(("chimney", "chimneys"), (
        "the part of {owner} where smoke escapes", "the parts of {owner} where smoke escapes"),
        False, "smoke escapes through the chimney"),
    ("building", "solar panel"): Part(("solar panel", "solar panels"), (
        "the equipment on {owner} that turns sunlight into electricity",) * 2,
        False, "solar panels turn sunlight into electricity"),
    ("storage tank", "roof"): Part(("roof", "roofs"), (
        "the lid of {owner} that floats on the stored oil",
        "the lids of {owner} that float on the stored oil"), False,
        "a floating roof covers the stored oil"),
    ("ship", "bow"): Part(("bow", "bows"), ("the front end of {owner} that cuts through the waves",
                                            "the front ends of {owner} that cut through the waves"),
                          False, "the bow is the front of a ship"),
    ("ship", "stern"): Part(("stern", "sterns"), ("the rear end of {owner} where the bridge sits",
                                                  "the rear ends of {owner} where the bridges sit"),
                            False, "the bridge sits at the stern of a ship"),
    ("ground track field", "running track"): Part(("running track", "running tracks"), (
        "the lanes of {owner} where athletes run",) * 2, False, "athletes run on the track"),
    ("ground track field", "inner field"): Part(("inner field", "inner fields"), (
        "the inner area of {owner} where football can be played",
        "the inner areas of {owner} where football can be played"), False,
        "football is played on the inner field"),
}

# Scene themes: (setting words, ground, water kind or None, probability of water, road count
# range, {category: (min, max) instances}).
Theme = tuple[str, str, str | None, float, tuple[int, int], dict[str, tuple[int, int]]]
THEMES: dict[str, Theme] = {
    "airport": ("an airport", "concrete", "lake", 0.15, (0, 1),
                {"airplane": (2, 5), "vehicle": (0, 6), "building": (0, 3),
                 "storage tank": (0, 3)}),
    "harbor": ("a harbour", "soil", "coast", 1.0, (1, 2),
               {"ship": (2, 4), "storage tank": (0, 4), "building": (0, 3), "vehicle": (0, 4)}),
    "town": ("a small town", "grass", "river", 0.35, (1, 2),
             {"building": (2, 6), "tennis court": (1, 3), "ground track field": (0, 1),
              "vehicle": (2, 6), "storage tank": (0, 2), "ship": (0, 2)}),
    "industrial": ("an industrial zone", "soil", None, 0.0, (1, 2),
                   {"storage tank": (2, 6), "building": (1, 4), "vehicle": (0, 5),
                    "tennis court": (0, 1)}),
    "sports": ("a sports park", "grass", "lake", 0.3, (0, 1),
               {"ground track field": (1, 1), "tennis court": (2, 4), "building": (0, 3),
                "vehicle": (0, 4)}),
}
GROUNDS: dict[str, tuple[RGB, RGB]] = {  # Main colour, patch colour.
    "grass": ((85, 125, 60), (150, 120, 85)),
    "soil": ((150, 120, 85), (110, 125, 70)),
    "concrete": ((165, 165, 160), (140, 140, 135)),
}
TREE: RGB = (35, 75, 35)
WATER, ROAD, TREES = 1, 2, 3  # Stuff-map labels (0 = ground).

CELLS = (("in the top-left corner", "at the top", "in the top-right corner"),
         ("on the left", "in the center", "on the right"),
         ("in the bottom-left corner", "at the bottom", "in the bottom-right corner"))

SHORT = ("Segment {np}.", "Please segment {np}.", "Show me {np}.", "Find {np} in this image.",
         "Can you highlight {np}?", "Where {be} {np}?", "Mark {np} in the picture.")
INTROS = ("This is an aerial image of {setting}.", "The satellite image shows {setting}.",
          "Here is a high-resolution remote sensing image of {setting}.",
          "A drone captured this top-down view of {setting}.")
PURPOSES = (
    "A city planner is updating the land-use map of this area and needs precise outlines.",
    "After a heavy storm, an emergency team wants to check the state of everything here.",
    "We are preparing a detailed inventory of the objects that are visible in this scene.",
    "An insurance company needs to assess the assets located in this region.",
    "A research group is making reference maps for a new mapping tool.",
)
REQUESTS = ("Please identify and segment {np}.", "Could you locate {np} and outline {obj}?",
            "I need an accurate mask of {np}.", "Help me find {np} in the picture.")
CLOSINGS = ("Be precise at the boundaries.", "Ignore everything else in the scene.",
            "Take care with the small details.", "Objects near the image border count as well.")
MULTI_NOTE = "Each of them needs its own mask."
ANSWERS = ("Sure, {x}.", "{x}.", "{Pron} {x}.", "Sure, here {be} {x}.")


@dataclass(frozen=True)
class Spec:
    """The four dimensions of one record."""
    granularity: str
    multiplicity: str
    reasoning: str
    length: str

    def subsets(self) -> tuple[str, str, str, str]:
        return (self.granularity, self.multiplicity, self.reasoning, self.length)


# Binary dims (multiplicity, reasoning, length) in an order where every 3 consecutive entries
# (cyclically) hold a complementary pair, so any 3 consecutive records of a split cover all 9
# subsets; with granularity = j % 3 every 24 consecutive records hold all 24 combinations.
_BITS = ((0, 0, 0), (1, 1, 1), (0, 1, 0), (1, 0, 1), (0, 0, 1), (1, 1, 0), (1, 0, 0), (0, 1, 1))


def spec_for(rank: int, subsets: Sequence[str] = ()) -> Spec:
    """Dimensions of the record at position `rank` within its split (balanced cycle of 24).

    `subsets` restricts the dimensions that name any of them to those values, e.g.
    ("semantic", "explicit") gives only semantic, explicit records of every multiplicity and
    length; the others keep their balanced cycle."""
    m, r, ln = _BITS[rank % 8]
    spec = Spec(GRANULARITY[rank % 3], MULTIPLICITY[m], REASONING[r], LENGTH[ln])
    values = []
    for dim, value in zip(DIMENSIONS.values(), spec.subsets(), strict=True):
        allowed = [v for v in dim if v in subsets] or dim
        values.append(value if value in allowed else allowed[rank % len(allowed)])
    return Spec(*values)


# ----------------------------------------------------------------------------------------------
# Drawing.


@dataclass
class Shape:
    """One drawing primitive of an object, in the object's frame (x forward), in pixels."""
    part: str | None  # None: the object's body.
    color: str  # Key into the category's colours.
    pts: np.ndarray  # [N, 2] (x, y).
    thickness: int = 0  # 0: filled polygon; > 0: open polyline of that width.


@dataclass
class Obj:
    """A drawn instance and what survived occlusion."""
    category: str
    inst_id: int
    color_name: str | None = None
    part_ids: dict[str, int] = field(default_factory=dict)
    drawn: int = 0  # Pixels it covered right after drawing.
    drawn_parts: dict[str, int] = field(default_factory=dict)
    visible: int = 0  # Pixels left in the final label map.
    visible_parts: dict[str, int] = field(default_factory=dict)
    centroid: tuple[float, float] = (0.0, 0.0)  # (x, y) of the visible pixels.


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8 RGB.
    inst: np.ndarray  # [H, W] int32 instance id (0: none).
    part: np.ndarray  # [H, W] int32 part id (0: none / body).
    stuff: np.ndarray  # [H, W] uint8 (0 ground, WATER, ROAD, TREES).
    objects: list[Obj]
    setting: str
    n_roads: int


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float32)


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], -1).astype(np.float32)


def _stadium(half_straight: float, r: float, n: int = 16) -> np.ndarray:
    t = np.linspace(-np.pi / 2, np.pi / 2, n)
    right = np.stack([half_straight + r * np.cos(t), r * np.sin(t)], -1)
    left = np.stack([-half_straight - r * np.cos(t), -r * np.sin(t)], -1)
    return np.concatenate([right, left]).astype(np.float32)


def _mirror(p: np.ndarray) -> np.ndarray:
    return p * np.array([1, -1], np.float32)


def _airplane(rng: np.random.Generator, s: float) -> tuple[list[Shape], float]:
    n = rng.uniform(32, 56) * s  # Length, nose at +x.
    wing = np.array([(0.12, 0.05), (-0.12, 0.48), (-0.2, 0.48), (-0.1, 0.05)], np.float32) * n
    stab = np.array([(-0.36, 0.04), (-0.47, 0.18), (-0.51, 0.18), (-0.47, 0.04)], np.float32) * n
    fus = np.array([(0.5, 0), (0.42, 0.06), (-0.45, 0.05), (-0.5, 0.02), (-0.5, -0.02),
                    (-0.45, -0.05), (0.42, -0.06)], np.float32) * n
    engine = _ellipse(0.08 * n, 0.2 * n, 0.08 * n, 0.035 * n, 12)
    return [Shape("wings", "wings", wing), Shape("wings", "wings", _mirror(wing)),
            Shape(None, "wings", stab), Shape(None, "wings", _mirror(stab)),
            Shape("engines", "engines", engine), Shape("engines", "engines", _mirror(engine)),
            Shape("fuselage", "fuselage", fus)], 0.55 * n


def _tennis_court(rng: np.random.Generator, s: float) -> tuple[list[Shape], float]:
    n = rng.uniform(26, 40) * s  # Court length; widths follow the real 23.77 x 10.97 m court.
    sx, sy, hy = 0.27 * n, 0.173 * n, 0.23 * n  # Service line, singles sideline, doubles sideline.
    lines = [np.array(p, np.float32) for p in (
        [(-0.5 * n, -hy), (0.5 * n, -hy), (0.5 * n, hy), (-0.5 * n, hy), (-0.5 * n, -hy)],
        [(-0.5 * n, -sy), (0.5 * n, -sy)], [(-0.5 * n, sy), (0.5 * n, sy)],
        [(-sx, -sy), (-sx, sy)], [(sx, -sy), (sx, sy)], [(-sx, 0), (sx, 0)])]
    net = np.array([(0, -0.27 * n), (0, 0.27 * n)], np.float32)
    return [Shape(None, "apron", _rect(-0.65 * n, 0.65 * n, -0.38 * n, 0.38 * n)),
            Shape(None, "court", _rect(-0.5 * n, 0.5 * n, -hy, hy)),
            Shape("service boxes", "court", _rect(-sx, sx, -sy, sy)),
            *[Shape(None, "lines", p, 1) for p in lines],
            Shape("net", "net", net, max(1, round(n / 20)))], math.hypot(0.65, 0.38) * n


def _building(rng: np.random.Generator, s: float) -> tuple[list[Shape], float]:
    a = rng.uniform(14, 34) * s
    b = rng.uniform(0.5, 1.0) * a
    shapes = [Shape(None, "roof", _rect(-a / 2, a / 2, -b / 2, b / 2))]
    if rng.random() < 0.3:  # L-shaped building: a wing on one side.
        shapes.append(Shape(None, "roof", _rect(0.1 * a, a / 2, b / 2 - 1, b / 2 + 0.6 * b)))
    if rng.random() < 0.5:
        c = min(max(3 * s, 0.18 * b), b / 3.5)
        x, y = rng.uniform(-a / 2 + c, a / 2 - 2 * c), rng.uniform(-b / 2 + c, b / 2 - 2 * c)
        shapes.append(Shape("chimney", "chimney", _rect(x, x + c, y, y + c)))
    else:
        pw, ph = 0.45 * a, 0.35 * b
        x, y = rng.uniform(-a / 2 + 1, a / 2 - pw - 1), rng.uniform(-b / 2 + 1, b / 2 - ph - 1)
        shapes.append(Shape("solar panel", "solar panel", _rect(x, x + pw, y, y + ph)))
    radius = max(float(np.linalg.norm(sh.pts, axis=1).max()) for sh in shapes)
    return shapes, radius


def _storage_tank(rng: np.random.Generator, s: float) -> tuple[list[Shape], float]:
    r = rng.uniform(6, 14) * s
    return [Shape(None, "wall", _ellipse(0, 0, r, r, 32)),
            Shape("roof", "roof", _ellipse(0, 0, 0.72 * r, 0.72 * r, 32))], r


def _ship(rng: np.random.Generator, s: float) -> tuple[list[Shape], float]:
    n = rng.uniform(26, 48) * s
    w = 0.2 * n
    hull = np.array([(-0.5 * n, -w / 2), (0.25 * n, -w / 2), (0.5 * n, 0), (0.25 * n, w / 2),
                     (-0.5 * n, w / 2)], np.float32)
    bow = np.array([(0.25 * n, -w / 2), (0.5 * n, 0), (0.25 * n, w / 2)], np.float32)
    return [Shape(None, "hull", hull),
            Shape(None, "deck", _rect(-0.28 * n, 0.22 * n, -0.35 * w, 0.35 * w)),
            Shape("bow", "bow", bow),
            Shape("stern", "stern", _rect(-0.47 * n, -0.3 * n, -0.4 * w, 0.4 * w))], 0.5 * n


def _vehicle(rng: np.random.Generator, s: float, color: str) -> tuple[list[Shape], float]:
    n = rng.uniform(6, 10) * s
    return [Shape(None, color, _rect(-n / 2, n / 2, -0.24 * n, 0.24 * n))], 0.55 * n


def _ground_track_field(rng: np.random.Generator, s: float) -> tuple[list[Shape], float]:
    r = rng.uniform(18, 28) * s
    half = rng.uniform(0.9, 1.5) * r
    return [Shape("running track", "track", _stadium(half, r)),
            Shape("inner field", "field", _stadium(half, 0.72 * r))], half + r


def _field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth random field [H, W] float32, about unit variance."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _fixed(pts: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> the int32 fixed-point form OpenCV draws with `SHIFT`."""
    return np.round(pts * (1 << SHIFT)).astype(np.int32)


def _paint(canvases: Sequence[tuple[np.ndarray, int | RGB]], pts: np.ndarray | list[np.ndarray],
           thickness: int = 0) -> None:
    """Draws the same polygon (thickness 0) or open polylines into every (canvas, value) pair, so
    image and label maps cover exactly the same pixels."""
    p = [_fixed(q) for q in pts] if isinstance(pts, list) else [_fixed(pts)]
    for canvas, value in canvases:
        if thickness == 0:
            cv2.fillPoly(canvas, p, value, cv2.LINE_8, SHIFT)
        else:
            cv2.polylines(canvas, p, False, value, thickness, cv2.LINE_8, SHIFT)


def _shifted(color: RGB, offset: Sequence[int]) -> RGB:
    """`color + offset`, clipped to [0, 255]."""
    return tuple(min(255, max(0, int(c) + int(o))) for c, o in zip(color, offset, strict=True))


def _background(rng: np.random.Generator, h: int, w: int, ground: str, water: str | None,
                n_roads: int) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Ground texture, water and roads. Returns image [H, W, 3] uint8 RGB, stuff map [H, W] uint8,
    roads as (point, unit direction, width)."""
    stuff = np.zeros((h, w), np.uint8)
    tex = 1 + 0.07 * _field(rng, h, w, 6) + 0.04 * _field(rng, h, w, 24)
    patches = _field(rng, h, w, 5) > 0.9
    m = min(h, w)
    if water == "coast":  # Water beyond a ragged coast line on one side.
        depth = rng.uniform(0.3, 0.45)
        xs = np.linspace(-0.1, 1.1, 9)
        ys = depth + rng.uniform(-0.06, 0.06, xs.size)
        coast = np.stack([xs, ys], -1)
        poly = np.concatenate([coast, [(1.1, -0.1), (-0.1, -0.1)]])
        side = rng.integers(4)  # Flip / transpose the unit-square polygon to pick a side.
        if side & 1:
            poly[:, 1] = 1 - poly[:, 1]
        if side & 2:
            poly = poly[:, ::-1]
        _paint([(stuff, WATER)], (poly * np.array([w, h])).astype(np.float32))
    elif water == "river":
        ys = np.linspace(-0.1, 1.1, 5) * h
        xs = rng.uniform(0.2, 0.8) * w + rng.uniform(-0.12, 0.12, 5) * w
        pts = np.stack([xs, ys], -1).astype(np.float32)
        if rng.random() < 0.5:
            pts = pts[:, ::-1] * np.array([w / h, h / w], np.float32)
        _paint([(stuff, WATER)], pts, max(3, round(rng.uniform(0.1, 0.16) * m)))
    elif water == "lake":
        c = rng.uniform(0.25, 0.75, 2) * np.array([w, h])
        _paint([(stuff, WATER)], _ellipse(*c, *(rng.uniform(0.12, 0.25, 2) * m), 32))
    roads = []
    for _ in range(n_roads):  # Straight roads across the image (over water: bridges).
        p = rng.uniform(0.2, 0.8, 2) * np.array([w, h])
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        width = max(3, round(rng.uniform(7, 12) * m / 256))
        far = 2 * (h + w)
        _paint([(stuff, ROAD)], np.array([p - far * d, p + far * d], np.float32), width)
        roads.append((p, d, width))
    ripple = 1 + 0.05 * _field(rng, h, w, 16)
    water_px, road_px = stuff == WATER, stuff == ROAD
    tex[water_px] = ripple[water_px]
    tex[road_px] = 1
    palette = np.float32([*GROUNDS[ground], CATEGORIES["water"].colors["water"],
                          CATEGORIES["road"].colors["road"]])
    kind = patches.astype(np.uint8)  # 0 main ground, 1 patch, 2 water, 3 road.
    kind[water_px] = 2
    kind[road_px] = 3
    img = np.empty((h, w, 3), np.uint8)
    for ch in range(3):  # Per channel: palette lookup times texture, rounded and saturated.
        img[..., ch] = cv2.convertScaleAbs(palette[:, ch][kind] * tex)
    marking = CATEGORIES["road"].colors["marking"]
    for p, d, width in roads:  # Dashed centre line: drawn on the image only (it is road).
        if width < 7:
            continue
        dash = 6 * m / 256
        ts = np.arange(-(h + w), h + w, 2 * dash)
        ends = p + np.stack([ts, ts + dash], -1)[..., None] * d  # [n_dashes, 2, 2]
        inside = np.all((ends > -dash) & (ends < np.array([w, h]) + dash), axis=(1, 2))
        _paint([(img, marking)], list(ends[inside].astype(np.float32)), 1)
    return img, stuff, roads


_BUILDERS = {"airplane": _airplane, "tennis court": _tennis_court, "building": _building,
             "storage tank": _storage_tank, "ship": _ship,
             "ground track field": _ground_track_field}


@functools.lru_cache(maxsize=8)
def _pixel_coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel of an H x W image, flattened row-major, float64 [H * W]."""
    return np.tile(np.arange(w, dtype=np.float64), h), np.repeat(np.arange(h, dtype=np.float64), w)


def _terrain_ok(stuff: np.ndarray, pts: np.ndarray, want_water: bool) -> bool:
    h, w = stuff.shape
    xi = np.clip(pts[:, 0].astype(int), 0, w - 1)
    yi = np.clip(pts[:, 1].astype(int), 0, h - 1)
    s = stuff[yi, xi]
    return bool(np.all(s == WATER)) if want_water else bool(np.all(s == 0))


def make_scene(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Draws one random scene of H x W pixels; `scale` multiplies every object size."""
    name = str(rng.choice(sorted(THEMES)))
    setting, ground, water, p_water, road_range, counts = THEMES[name]
    water = water if rng.random() < p_water else None
    n_roads = int(rng.integers(road_range[0], road_range[1] + 1))
    img, stuff, roads = _background(rng, h, w, ground, water, n_roads)
    inst = np.zeros((h, w), np.int32)
    part = np.zeros((h, w), np.int32)

    todo = []  # (category, shapes, radius, colour name)
    for cat, (lo, hi) in counts.items():
        if cat == "ship" and water is None:
            continue
        for _ in range(int(rng.integers(lo, hi + 1))):
            if cat == "vehicle":
                color = VEHICLE_COLORS[int(rng.integers(len(VEHICLE_COLORS)))]
                todo.append((cat, *_vehicle(rng, scale, color), color))
            else:
                todo.append((cat, *_BUILDERS[cat](rng, scale), None))
    todo.sort(key=lambda t: -t[2])  # Large first: small objects are drawn on top.

    placed: list[tuple[float, float, float]] = []
    objects: list[Obj] = []
    n_parts = 0
    for cat, shapes, radius, color in todo:
        for _ in range(40):
            on_road = cat == "vehicle" and roads and rng.random() < 0.8
            if on_road:  # Along a road, in a lane.
                p, d, width = roads[int(rng.integers(len(roads)))]
                c = p + d * rng.uniform(-0.5, 0.5) * (h + w) / 2
                c = c + np.array([-d[1], d[0]]) * rng.choice([-0.25, 0.25]) * width
                angle = math.atan2(d[1], d[0]) + np.pi * rng.integers(2)
            else:
                c = np.array([rng.uniform(0.6 * radius, w - 0.6 * radius),
                              rng.uniform(0.6 * radius, h - 0.6 * radius)])
                angle = rng.uniform(0, 2 * np.pi)
            if not (0 <= c[0] < w and 0 <= c[1] < h):
                continue
            if any(math.hypot(c[0] - x, c[1] - y) < 0.8 * (radius + r) for x, y, r in placed):
                continue
            rot = np.array([[math.cos(angle), -math.sin(angle)],
                            [math.sin(angle), math.cos(angle)]], np.float32)
            if not on_road:  # Every vertex on ground (ships: on water).
                probe = np.concatenate([sh.pts for sh in shapes] + [np.zeros((1, 2))]) @ rot.T
                if not _terrain_ok(stuff, probe + c, want_water=cat == "ship"):
                    continue
            break
        else:
            continue  # No room for this object.
        placed.append((float(c[0]), float(c[1]), radius))
        obj = Obj(cat, len(objects) + 1, color)
        offset = rng.integers(-JITTER, JITTER + 1, 3).tolist()  # One lighting change per object.
        colors = CATEGORIES[cat].colors
        all_pts = []
        for sh in shapes:
            pts = sh.pts @ rot.T + c
            all_pts.append(pts)
            if sh.part is not None and sh.part not in obj.part_ids:
                n_parts += 1
                obj.part_ids[sh.part] = n_parts
            pid = obj.part_ids.get(sh.part, 0) if sh.part is not None else 0
            value = _shifted(colors[sh.color], offset)
            _paint([(img, value), (inst, obj.inst_id), (part, pid)], pts, sh.thickness)
        box = np.concatenate(all_pts)
        x0, y0 = np.clip(np.floor(box.min(0)).astype(int) - 2, 0, None)
        x1, y1 = np.ceil(box.max(0)).astype(int) + 3
        obj.drawn = int(np.count_nonzero(inst[y0:y1, x0:x1] == obj.inst_id))
        window = part[y0:y1, x0:x1]
        obj.drawn_parts = {k: int(np.count_nonzero(window == v)) for k, v in obj.part_ids.items()}
        objects.append(obj)

    # Tree clumps on open ground; they occlude whatever they overlap and are never targets.
    n_clumps = int(rng.integers(0, 7 if ground == "grass" else 3))
    for _ in range(n_clumps):
        c = rng.uniform(0, 1, 2) * np.array([w, h])
        if stuff[int(c[1]), int(c[0])] != 0 or inst[int(c[1]), int(c[0])] != 0:
            continue
        for _ in range(int(rng.integers(3, 9))):
            q = c + rng.normal(0, 4 * scale, 2)
            r = rng.uniform(2, 4) * scale
            value = _shifted(TREE, rng.integers(-JITTER, JITTER + 1, 3).tolist())
            _paint([(img, value), (inst, 0), (part, 0), (stuff, TREES)], _ellipse(*q, r, r, 12))

    noise = rng.integers(-NOISE, NOISE + 1, img.shape, dtype=np.int8)
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    n_inst = len(objects) + 1
    vis = np.bincount(inst.ravel(), minlength=n_inst)
    flat = inst.ravel()
    xs, ys = _pixel_coords(h, w)
    sx = np.bincount(flat, weights=xs, minlength=n_inst)
    sy = np.bincount(flat, weights=ys, minlength=n_inst)
    pvis = np.bincount(part.ravel(), minlength=n_parts + 1)
    for o in objects:
        o.visible = int(vis[o.inst_id])
        if o.visible:
            o.centroid = (sx[o.inst_id] / o.visible, sy[o.inst_id] / o.visible)
        o.visible_parts = {k: int(pvis[v]) for k, v in o.part_ids.items()}
    return Scene(img, inst, part, stuff, objects, setting, n_roads)


# ----------------------------------------------------------------------------------------------
# Targets and text.


@dataclass
class Target:
    """One `[SEG]`: its mask and the words that refer to it."""
    key: tuple
    mask: np.ndarray  # [H, W] bool.
    explicit: str  # Noun phrase naming the category / part.
    implicit: str  # Noun phrase describing its function instead.
    answer: str  # Answer phrase with exactly one "<p>...</p>[SEG]".
    plural: bool
    reason: str
    looks: str | None = None  # Appearance sentence for long instructions.
    answer_plural: bool | None = None  # Number in the answer when it differs from `plural`.

    def __post_init__(self):
        if self.answer_plural is None:
            self.answer_plural = self.plural


def _existing(scene: Scene, cat: str) -> list[Obj]:
    return [o for o in scene.objects if o.category == cat and o.visible >= 5]


def _eligible(o: Obj) -> bool:
    return o.visible >= MIN_VISIBLE and o.visible >= MIN_FRACTION * o.drawn


def _locators(o: Obj, others: list[Obj], h: int, w: int) -> list[tuple[str, str]]:
    """(adjective, suffix) pairs that single out `o` among `others` of its category."""
    out = []
    (x, y), eps = o.centroid, 0.04
    if all(abs(x - b) > eps * w for b in (w / 3, 2 * w / 3)) and all(
            abs(y - b) > eps * h for b in (h / 3, 2 * h / 3)):
        cell = (min(int(3 * y / h), 2), min(int(3 * x / w), 2))
        if all((min(int(3 * p.centroid[1] / h), 2), min(int(3 * p.centroid[0] / w), 2)) != cell
               for p in others):
            out.append(("", " " + CELLS[cell[0]][cell[1]]))
    xs = [p.centroid[0] for p in others]
    ys = [p.centroid[1] for p in others]
    areas = [p.visible for p in others]
    if x + 0.08 * w < min(xs):
        out.append(("leftmost ", ""))
    if x - 0.08 * w > max(xs):
        out.append(("rightmost ", ""))
    if y + 0.08 * h < min(ys):
        out.append(("topmost ", ""))
    if y - 0.08 * h > max(ys):
        out.append(("bottommost ", ""))
    if o.visible > 1.4 * max(areas):
        out.append(("largest ", ""))
    if 1.4 * o.visible < min(areas):
        out.append(("smallest ", ""))
    if o.color_name is not None and all(p.color_name != o.color_name for p in others):
        out.append((o.color_name + " ", ""))
    return out


def _looks(cat: Category, plural: bool) -> str:
    return f"They look like {cat.looks[1]}." if plural else f"It looks like {cat.looks[0]}."


def _semantic_targets(rng: np.random.Generator, scene: Scene) -> list[Target]:
    out = []
    for name, cat in CATEGORIES.items():
        if cat.stuff:  # Instruction and answer in the number actually present.
            label = WATER if name == "water" else ROAD
            mask = (scene.stuff == label) & (scene.inst == 0)
            plural = name == "road" and scene.n_roads > 1
            explicit = f"the {cat.plural if plural else cat.name}"
            implicit = f"the {cat.head[plural]} {cat.clause[plural]}"
            answer, answer_plural = f"the <p>{cat.plural if plural else cat.name}</p>[SEG]", plural
        else:  # The instruction asks for all of them, whatever their number.
            ids = [o.inst_id for o in scene.objects if o.category == name]
            mask = np.isin(scene.inst, ids) if ids else np.zeros(scene.inst.shape, bool)
            every, plural = _choice(rng, ("the ", "all the ")), True
            explicit = f"{every}{cat.plural}"
            implicit = f"{every}{cat.head[1]} {cat.clause[1]}"
            answer_plural = len(_existing(scene, name)) > 1
            answer = (f"{every}<p>{cat.plural}</p>[SEG]" if answer_plural
                      else f"the <p>{cat.name}</p>[SEG]")
        if np.count_nonzero(mask) < MIN_VISIBLE:
            continue
        out.append(Target(("semantic", name), mask, explicit, implicit, answer, plural,
                          cat.reason, _looks(cat, answer_plural), answer_plural))
    return out


def _reference(rng: np.random.Generator, o: Obj, scene: Scene) -> tuple[str, str] | None:
    """(adjective, suffix) that singles `o` out, ("", "") when it is the only one, else None."""
    others = [p for p in _existing(scene, o.category) if p is not o]
    if not others:
        return ("", "")
    options = _locators(o, others, *scene.inst.shape)
    return options[int(rng.integers(len(options)))] if options else None


def _instance_targets(rng: np.random.Generator, scene: Scene) -> list[Target]:
    out = []
    for o in scene.objects:
        cat = CATEGORIES[o.category]
        if len(_existing(scene, o.category)) < 2 or not _eligible(o):
            continue
        ref = _reference(rng, o, scene)
        if ref is None:
            continue
        adj, suffix = ref
        out.append(Target(
            ("instance", o.inst_id), scene.inst == o.inst_id, f"the {adj}{cat.name}{suffix}",
            f"the {adj}{cat.head[0]}{suffix} {cat.clause[0]}",
            f"the {adj}<p>{cat.name}</p>[SEG]{suffix}", False, cat.reason, _looks(cat, False)))
    return out


def _part_targets(rng: np.random.Generator, scene: Scene) -> list[Target]:
    out = []
    for o in scene.objects:  # A part of one instance.
        if not _eligible(o):
            continue
        ref: tuple[str, str] | None = None
        for pname, pid in o.part_ids.items():
            if o.visible_parts[pname] < MIN_PART or (
                    o.visible_parts[pname] < MIN_FRACTION * o.drawn_parts[pname]):
                continue
            if ref is None:
                ref = _reference(rng, o, scene)
                if ref is None:
                    break
            part = PARTS[(o.category, pname)]
            owner = f"the {ref[0]}{o.category}{ref[1]}"
            out.append(Target(
                ("part", o.inst_id, pname), scene.part == pid, f"the {part.names[0]} of {owner}",
                part.implicit[0].format(owner=owner),
                f"the <p>{part.names[0]}</p>[SEG] of {owner}", part.plural, part.reason))
    for name, cat in CATEGORIES.items():  # A part of every instance of a category.
        owners = [o for o in scene.objects if o.category == name]
        if len(_existing(scene, name)) < 2:
            continue
        for pname in cat.parts:
            ids = [o.part_ids[pname] for o in owners if pname in o.part_ids]
            shown = [o for o in owners if o.visible_parts.get(pname, 0) >= MIN_PART]
            if len(shown) < 2:
                continue
            part = PARTS[(name, pname)]
            owner = f"all the {cat.plural}"
            out.append(Target(
                ("part", name, pname), np.isin(scene.part, ids), f"the {part.names[1]} of {owner}",
                part.implicit[1].format(owner=owner),
                f"the <p>{part.names[1]}</p>[SEG] of {owner}", True, part.reason))
    return out


def _pick(rng: np.random.Generator, scene: Scene, spec: Spec) -> list[Target] | None:
    """Targets for `spec` in `scene`, or None when the scene cannot serve it."""
    make = {"semantic": _semantic_targets, "instance": _instance_targets,
            "part": _part_targets}[spec.granularity]
    candidates = make(rng, scene)
    want = 1 if spec.multiplicity == "single" else (3 if rng.random() < 0.3 else 2)
    order = rng.permutation(len(candidates))
    chosen: list[Target] = []
    for i in order:  # Disjoint targets only (one pixel cannot answer two [SEG]s).
        t = candidates[i]
        if all(not np.any(t.mask & c.mask) for c in chosen):
            chosen.append(t)
        if len(chosen) == want:
            break
    if spec.multiplicity == "multiple" and len(chosen) >= 2:
        return chosen
    return chosen if len(chosen) == want else None


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _instruction(rng: np.random.Generator, scene: Scene, targets: list[Target],
                 spec: Spec) -> str:
    nps = [t.implicit if spec.reasoning == "implicit" else t.explicit for t in targets]
    np_text = _join(nps)
    plural = len(targets) > 1 or targets[0].plural
    if spec.length == "short":
        return _choice(rng, SHORT).format(np=np_text, be="are" if plural else "is")
    sentences = [_choice(rng, INTROS).format(setting=scene.setting), _choice(rng, PURPOSES),
                 _choice(rng, REQUESTS).format(np=np_text, obj="them" if plural else "it")]
    if len(targets) > 1:
        sentences.append(MULTI_NOTE)
    elif targets[0].looks:
        sentences.append(targets[0].looks)
    sentences.append(_choice(rng, CLOSINGS))
    return " ".join(sentences)


def _answer(rng: np.random.Generator, targets: list[Target], spec: Spec) -> str:
    plural = len(targets) > 1 or targets[0].answer_plural
    x = _join([t.answer for t in targets])
    text = _choice(rng, ANSWERS).format(x=x, Pron="They are" if plural else "It is",
                                        be="are" if plural else "is")
    text = _cap(text)
    if spec.reasoning == "implicit":
        reasons = list(dict.fromkeys(t.reason for t in targets))
        text += " " + " ".join(_cap(r) + "." for r in reasons)
    return text


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
        targets = _pick(rng, scene, spec)
        if targets:
            break
    else:
        raise RuntimeError(f"sample {index}: no scene in 100 tries serves {spec}")
    name = f"syn{index:06d}"
    answer = _answer(rng, targets, spec)
    record = {"id": name, "image_name": f"{name}.png",
              "description": _instruction(rng, scene, targets, spec), "answer": answer,
              "mask": [encode_mask(t.mask) for t in targets]}
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
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise cli.OutputExists(f"--out {out} is not empty; pass --overwrite (overwrite=True)"
                                   " to replace its train/ and test/ folders")
        for split in ("train", "test"):
            if (out / split).exists():
                shutil.rmtree(out / split)
    for split in ("train", "test"):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "annotations").mkdir(parents=True, exist_ok=True)

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
        split = "test" if test else "train"
        path = out / split / "images" / record["image_name"]
        if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
            raise OSError(f"could not write {path}")
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
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=2000, help="number of samples (images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="longest image side in pixels")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="object size multiplier (relative to the image; 2 = twice as long)")
    parser.add_argument("--subsets", nargs="+", default=(), metavar="SUBSET",
                        help="only records of these subsets in the dimensions they name, e.g. "
                             "`semantic single explicit short` for the easiest set")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT/train and OUT/test when OUT is not empty")
    args = parser.parse_args(argv)
    try:
        _check_args(args.n, args.size, args.test_fraction, args.object_scale, args.subsets)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    counts = generate(args.out, args.n, args.seed, args.size, args.test_fraction,
                      overwrite=args.overwrite, verbose=True, object_scale=args.object_scale,
                      subsets=args.subsets)  # an existing --out: cli.OutputExists
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {counts['train']} train, "
          f"{counts['test']} test records, {counts['masks']} masks")
    for dim, names in DIMENSIONS.items():
        print(f"  test {dim:12s} " + ", ".join(f"{s} {counts['test_subsets'][s]}" for s in names))


if __name__ == "__main__":
    main(sys.argv[1:])
