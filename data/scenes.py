"""Aerial-like scenes for the synthetic data set: an RGB image and label maps drawn together.

Scenes: textured ground (grass / soil / concrete), water (river / lake / coast), roads with lane
markings, tree clumps (never targets), and objects of 7 categories drawn in flat, distinct colours
(`COLORS[category]`) with parts: airplane, tennis court, building, storage tank, ship, vehicle,
ground track field; plus the "stuff" categories water and road (`STUFF`). Objects drawn later
occlude earlier ones; every shape is drawn into the image and the label maps with the same call,
so the final label maps match the drawn pixels exactly. Vehicles only take colours that stand out
from their scene's ground (`vehicle_colors`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

RGB = tuple[int, int, int]
SHIFT = 4  # Sub-pixel bits of every OpenCV drawing call (coordinates are scaled by 2**SHIFT).
NOISE = 5  # Pixel noise added to the final image: uniform in [-NOISE, NOISE] per channel.
JITTER = 10  # Per-instance colour offset, uniform in [-JITTER, JITTER] per channel.
WATER, ROAD, TREES = 1, 2, 3  # Stuff-map labels (0 = ground).

# Colours (RGB) of each category's drawn components; a part is drawn in one of them.
COLORS: dict[str, dict[str, RGB]] = {
    "airplane": {"fuselage": (240, 240, 240), "wings": (200, 205, 215), "engines": (70, 70, 80)},
    "tennis court": {"apron": (40, 130, 120), "court": (40, 90, 190), "lines": (245, 245, 245),
                     "net": (30, 30, 30)},
    "building": {"roof": (200, 110, 70), "chimney": (60, 45, 40), "solar panel": (25, 35, 95)},
    "storage tank": {"wall": (235, 230, 205), "roof": (105, 95, 80)},
    "ship": {"hull": (70, 75, 80), "deck": (150, 150, 140), "bow": (120, 60, 50),
             "stern": (240, 240, 240)},
    "vehicle": {"red": (200, 40, 40), "white": (235, 235, 235), "black": (35, 35, 35),
                "blue": (30, 50, 235), "yellow": (225, 200, 40), "silver": (165, 165, 170)},
    "ground track field": {"track": (150, 40, 45), "field": (60, 150, 60)},
    "water": {"water": (35, 70, 110)},
    "road": {"road": (95, 95, 100), "marking": (225, 225, 225)},
}
STUFF = {"water": WATER, "road": ROAD}  # Background regions (semantic targets only): label.
VEHICLE_COLORS = tuple(COLORS["vehicle"])

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
# A vehicle's colour differs from its scene's ground colours by at least this much in some
# channel, so that the per-object jitter cannot hide it (silver on concrete: 10, invisible).
MIN_CONTRAST = 3 * JITTER


def vehicle_colors(ground: str) -> tuple[str, ...]:
    """The vehicle colour names that stand out on `ground` (see MIN_CONTRAST)."""
    return tuple(name for name in VEHICLE_COLORS
                 if all(max(abs(a - b) for a, b in zip(COLORS["vehicle"][name], g, strict=True))
                        >= MIN_CONTRAST for g in GROUNDS[ground]))


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


# ----------------------------------------------------------------------------------------------
# Object shapes: each returns (shapes in the object's frame, bounding radius in pixels).


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


_SHAPES = {"airplane": _airplane, "tennis court": _tennis_court, "building": _building,
           "storage tank": _storage_tank, "ship": _ship,
           "ground track field": _ground_track_field}


# ----------------------------------------------------------------------------------------------
# Rasterisation.


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


@functools.lru_cache(maxsize=8)
def _pixel_coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel of an H x W image, flattened row-major, float64 [H * W]."""
    return np.tile(np.arange(w, dtype=np.float64), h), np.repeat(np.arange(h, dtype=np.float64), w)


# ----------------------------------------------------------------------------------------------
# Background: ground, water, roads.


def _draw_water(rng: np.random.Generator, stuff: np.ndarray, water: str | None) -> None:
    """Labels WATER in the stuff map [H, W]: a coast, a river, a lake or nothing."""
    h, w = stuff.shape
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


def _draw_roads(rng: np.random.Generator, stuff: np.ndarray, n_roads: int) -> list[tuple]:
    """Labels ROAD in the stuff map [H, W] along `n_roads` straight roads across the image (over
    water: bridges); returns them as (point, unit direction, width)."""
    h, w = stuff.shape
    roads = []
    for _ in range(n_roads):
        p = rng.uniform(0.2, 0.8, 2) * np.array([w, h])
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        width = max(3, round(rng.uniform(7, 12) * min(h, w) / 256))
        far = 2 * (h + w)
        _paint([(stuff, ROAD)], np.array([p - far * d, p + far * d], np.float32), width)
        roads.append((p, d, width))
    return roads


def _draw_markings(img: np.ndarray, roads: list[tuple]) -> None:
    """Dashed centre lines of the roads wide enough, drawn on the image only (they are road)."""
    h, w = img.shape[:2]
    marking = COLORS["road"]["marking"]
    for p, d, width in roads:
        if width < 7:
            continue
        dash = 6 * min(h, w) / 256
        ts = np.arange(-(h + w), h + w, 2 * dash)
        ends = p + np.stack([ts, ts + dash], -1)[..., None] * d  # [n_dashes, 2, 2]
        inside = np.all((ends > -dash) & (ends < np.array([w, h]) + dash), axis=(1, 2))
        _paint([(img, marking)], list(ends[inside].astype(np.float32)), 1)


def _background(rng: np.random.Generator, h: int, w: int, ground: str, water: str | None,
                n_roads: int) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Ground texture, water and roads. Returns image [H, W, 3] uint8 RGB, stuff map [H, W] uint8,
    roads as (point, unit direction, width)."""
    stuff = np.zeros((h, w), np.uint8)
    tex = 1 + 0.07 * _field(rng, h, w, 6) + 0.04 * _field(rng, h, w, 24)
    patches = _field(rng, h, w, 5) > 0.9
    _draw_water(rng, stuff, water)
    roads = _draw_roads(rng, stuff, n_roads)
    ripple = 1 + 0.05 * _field(rng, h, w, 16)
    water_px, road_px = stuff == WATER, stuff == ROAD
    tex[water_px] = ripple[water_px]
    tex[road_px] = 1
    palette = np.float32([*GROUNDS[ground], COLORS["water"]["water"], COLORS["road"]["road"]])
    kind = patches.astype(np.uint8)  # 0 main ground, 1 patch, 2 water, 3 road.
    kind[water_px] = 2
    kind[road_px] = 3
    img = np.empty((h, w, 3), np.uint8)
    for ch in range(3):  # Per channel: palette lookup times texture, rounded and saturated.
        img[..., ch] = cv2.convertScaleAbs(palette[:, ch][kind] * tex)
    _draw_markings(img, roads)
    return img, stuff, roads


# ----------------------------------------------------------------------------------------------
# Objects.


def _object_list(rng: np.random.Generator, counts: dict[str, tuple[int, int]],
                 water: str | None, ground: str, scale: float) -> list[tuple]:
    """The scene's objects as (category, shapes, radius, colour name or None), largest first
    (small objects are drawn on top)."""
    todo = []
    colors = vehicle_colors(ground)
    for cat, (lo, hi) in counts.items():
        if cat == "ship" and water is None:
            continue
        for _ in range(int(rng.integers(lo, hi + 1))):
            if cat == "vehicle":
                color = colors[int(rng.integers(len(colors)))]
                todo.append((cat, *_vehicle(rng, scale, color), color))
            else:
                todo.append((cat, *_SHAPES[cat](rng, scale), None))
    todo.sort(key=lambda t: -t[2])
    return todo


def _terrain_ok(stuff: np.ndarray, pts: np.ndarray, want_water: bool) -> bool:
    h, w = stuff.shape
    xi = np.clip(pts[:, 0].astype(int), 0, w - 1)
    yi = np.clip(pts[:, 1].astype(int), 0, h - 1)
    s = stuff[yi, xi]
    return bool(np.all(s == WATER)) if want_water else bool(np.all(s == 0))


def _place(rng: np.random.Generator, cat: str, shapes: list[Shape], radius: float,
           stuff: np.ndarray, roads: list[tuple], placed: list[tuple[float, float, float]]
           ) -> tuple[np.ndarray, np.ndarray] | None:
    """A free position for an object: (centre [2] (x, y), rotation [2, 2]), or None after 40
    tries. Vehicles mostly go along a road, in a lane; other objects go on ground (ships: on
    water), away from the objects `placed` as (x, y, radius)."""
    h, w = stuff.shape
    for _ in range(40):
        on_road = cat == "vehicle" and roads and rng.random() < 0.8
        if on_road:
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
        return c, rot
    return None


def _draw_object(rng: np.random.Generator, obj: Obj, shapes: list[Shape], c: np.ndarray,
                 rot: np.ndarray, img: np.ndarray, inst: np.ndarray, part: np.ndarray,
                 n_parts: int) -> int:
    """Draws `obj` at centre `c` [2] rotated by `rot` [2, 2] into the image and label maps and
    records the pixels it covers; its parts get ids from `n_parts + 1`. Returns the new count."""
    offset = rng.integers(-JITTER, JITTER + 1, 3).tolist()  # One lighting change per object.
    colors = COLORS[obj.category]
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
    return n_parts


def _draw_trees(rng: np.random.Generator, img: np.ndarray, inst: np.ndarray, part: np.ndarray,
                stuff: np.ndarray, ground: str, scale: float) -> None:
    """Tree clumps on open ground; they occlude whatever they overlap and are never targets."""
    h, w = stuff.shape
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


def _count_visible(objects: list[Obj], inst: np.ndarray, part: np.ndarray, n_parts: int) -> None:
    """Sets each object's visible pixels, parts and centroid from the final label maps [H, W]."""
    h, w = inst.shape
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


def make_scene(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Draws one random scene of H x W pixels; `scale` multiplies every object size."""
    name = str(rng.choice(sorted(THEMES)))
    setting, ground, water, p_water, road_range, counts = THEMES[name]
    water = water if rng.random() < p_water else None
    n_roads = int(rng.integers(road_range[0], road_range[1] + 1))
    img, stuff, roads = _background(rng, h, w, ground, water, n_roads)
    inst = np.zeros((h, w), np.int32)
    part = np.zeros((h, w), np.int32)
    placed: list[tuple[float, float, float]] = []
    objects: list[Obj] = []
    n_parts = 0
    for cat, shapes, radius, color in _object_list(rng, counts, water, ground, scale):
        where = _place(rng, cat, shapes, radius, stuff, roads, placed)
        if where is None:
            continue  # No room for this object.
        c, rot = where
        placed.append((float(c[0]), float(c[1]), radius))
        obj = Obj(cat, len(objects) + 1, color)
        n_parts = _draw_object(rng, obj, shapes, c, rot, img, inst, part, n_parts)
        objects.append(obj)
    _draw_trees(rng, img, inst, part, stuff, ground, scale)
    noise = rng.integers(-NOISE, NOISE + 1, img.shape, dtype=np.int8)
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    _count_visible(objects, inst, part, n_parts)
    return Scene(img, inst, part, stuff, objects, setting, n_roads)
