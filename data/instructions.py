"""Instruction text for the synthetic data set: which targets a record asks for, and the
instruction and answer that refer to them, in the four dimensions of LaSeRS (data/README.md,
docs/architecture.md section 1):

  granularity   semantic (every instance of a category, ONE mask) | instance | part
  multiplicity  single (one `[SEG]`) | multiple (2-3 `[SEG]`s, one mask each)
  reasoning     explicit (names the category / part) | implicit (describes its function)
  length        short (one sentence) | long (a scenario of four or more sentences)

`spec_for` spreads the dimensions evenly over a split; `pick_targets` chooses the targets of a
drawn scene (`data.scenes`) for one record, `describe` words its instruction and answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.scenes import STUFF, Obj, Scene

GRANULARITY = ("semantic", "instance", "part")
MULTIPLICITY = ("single", "multiple")
REASONING = ("explicit", "implicit")
LENGTH = ("short", "long")
DIMENSIONS = {"granularity": GRANULARITY, "multiplicity": MULTIPLICITY,
              "reasoning": REASONING, "length": LENGTH}
SUBSETS = GRANULARITY + MULTIPLICITY + REASONING + LENGTH

MIN_VISIBLE = 12  # Pixels an instance / semantic target must show to be a target.
MIN_PART = 6  # Pixels a part must show to be a target.
MIN_FRACTION = 0.5  # Fraction of its drawn area an instance / part must keep after occlusion.


@dataclass(frozen=True)
class Words:
    """The words for a category. Implicit instructions use `head` + `clause` ("facility" +
    "that stores oil"); pairs are (singular, plural)."""
    plural: str
    head: tuple[str, str]
    clause: tuple[str, str]
    reason: str
    looks: tuple[str, str]  # "It looks like {0}." / "They look like {1}."


WORDS: dict[str, Words] = {  # In the order semantic targets are considered.
    "airplane": Words(
        "airplanes", ("machine", "machines"),
        ("that carries passengers through the air", "that carry passengers through the air"),
        "airplanes carry passengers and cargo through the air",
        ("a white cross-shaped object", "white cross-shaped objects")),
    "tennis court": Words(
        "tennis courts", ("place", "places"), ("where people can play a racket sport",) * 2,
        "tennis is a racket sport played on tennis courts",
        ("a blue rectangle with white lines", "blue rectangles with white lines")),
    "building": Words(
        "buildings", ("structure", "structures"), ("where people live or work",) * 2,
        "people live and work in buildings",
        ("an orange rectangular roof", "orange rectangular roofs")),
    "storage tank": Words(
        "storage tanks", ("facility", "facilities"), ("that stores oil", "that store oil"),
        "storage tanks hold oil and other liquids",
        ("a pale ring around a dark disc", "pale rings around dark discs")),
    "ship": Words(
        "ships", ("vessel", "vessels"),
        ("that carries cargo across the sea", "that carry cargo across the sea"),
        "ships carry cargo across the sea",
        ("a long pointed hull on the water", "long pointed hulls on the water")),
    "vehicle": Words(
        "vehicles", ("thing", "things"), ("that people drive to work",) * 2,
        "people drive vehicles to work", ("a small bright rectangle", "small bright rectangles")),
    "ground track field": Words(
        "ground track fields", ("venue", "venues"), ("where athletes race around an oval",) * 2,
        "ground track fields host running races",
        ("a red oval ring around a green field", "red oval rings around green fields")),
    "water": Words("water", ("area", "area"), ("where boats can sail",) * 2,
                   "boats sail on water", ("a dark blue area", "a dark blue area")),
    "road": Words("roads", ("path", "paths"), ("that traffic uses to travel",) * 2,
                  "traffic travels along roads", ("a long gray strip", "long gray strips")),
}


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
# Targets.


@dataclass
class Target:
    """One `[SEG]`: its mask and the words that refer to it."""
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


def _looks(words: Words, plural: bool) -> str:
    return f"They look like {words.looks[1]}." if plural else f"It looks like {words.looks[0]}."


def _semantic_targets(rng: np.random.Generator, scene: Scene) -> list[Target]:
    """Every category present (all its instances, or the stuff region), one target each."""
    out = []
    for name, words in WORDS.items():
        if name in STUFF:  # Instruction and answer in the number actually present.
            mask = (scene.stuff == STUFF[name]) & (scene.inst == 0)
            plural = name == "road" and scene.n_roads > 1
            explicit = f"the {words.plural if plural else name}"
            implicit = f"the {words.head[plural]} {words.clause[plural]}"
            answer, answer_plural = f"the <p>{words.plural if plural else name}</p>[SEG]", plural
        else:  # The instruction asks for all of them, whatever their number.
            ids = [o.inst_id for o in scene.objects if o.category == name]
            mask = np.isin(scene.inst, ids) if ids else np.zeros(scene.inst.shape, bool)
            every, plural = _choice(rng, ("the ", "all the ")), True
            explicit = f"{every}{words.plural}"
            implicit = f"{every}{words.head[1]} {words.clause[1]}"
            answer_plural = len(_existing(scene, name)) > 1
            answer = (f"{every}<p>{words.plural}</p>[SEG]" if answer_plural
                      else f"the <p>{name}</p>[SEG]")
        if np.count_nonzero(mask) < MIN_VISIBLE:
            continue
        out.append(Target(mask, explicit, implicit, answer, plural, words.reason,
                          _looks(words, answer_plural), answer_plural))
    return out


def _reference(rng: np.random.Generator, o: Obj, scene: Scene) -> tuple[str, str] | None:
    """(adjective, suffix) that singles `o` out, ("", "") when it is the only one, else None."""
    others = [p for p in _existing(scene, o.category) if p is not o]
    if not others:
        return ("", "")
    options = _locators(o, others, *scene.inst.shape)
    return options[int(rng.integers(len(options)))] if options else None


def _instance_targets(rng: np.random.Generator, scene: Scene) -> list[Target]:
    """Every instance that can be singled out among two or more of its category."""
    out = []
    for o in scene.objects:
        words, name = WORDS[o.category], o.category
        if len(_existing(scene, o.category)) < 2 or not _eligible(o):
            continue
        ref = _reference(rng, o, scene)
        if ref is None:
            continue
        adj, suffix = ref
        out.append(Target(
            scene.inst == o.inst_id, f"the {adj}{name}{suffix}",
            f"the {adj}{words.head[0]}{suffix} {words.clause[0]}",
            f"the {adj}<p>{name}</p>[SEG]{suffix}", False, words.reason, _looks(words, False)))
    return out


def _part_targets(rng: np.random.Generator, scene: Scene) -> list[Target]:
    """The visible parts of each instance that can be singled out, then each part shown by two
    or more instances of a category (that part of all of them)."""
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
            owner = f"the {ref[0]}{o.category}{ref[1]}"
            out.append(_part_target(PARTS[(o.category, pname)], scene.part == pid, owner, 0))
    for (name, pname), part in PARTS.items():  # A part of every instance of a category.
        owners = [o for o in scene.objects if o.category == name]
        if len(_existing(scene, name)) < 2:
            continue
        ids = [o.part_ids[pname] for o in owners if pname in o.part_ids]
        shown = [o for o in owners if o.visible_parts.get(pname, 0) >= MIN_PART]
        if len(shown) >= 2:
            mask = np.isin(scene.part, ids)
            out.append(_part_target(part, mask, f"all the {WORDS[name].plural}", 1))
    return out


def _part_target(part: Part, mask: np.ndarray, owner: str, number: int) -> Target:
    """The target `part` of `owner` (the owners' phrase); number 0: singular, 1: plural."""
    name = part.names[number]
    return Target(mask, f"the {name} of {owner}", part.implicit[number].format(owner=owner),
                  f"the <p>{name}</p>[SEG] of {owner}", bool(number) or part.plural, part.reason)


def pick_targets(rng: np.random.Generator, scene: Scene, spec: Spec) -> list[Target] | None:
    """Targets for `spec` in `scene` (disjoint masks), or None when the scene cannot serve it."""
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


# ----------------------------------------------------------------------------------------------
# Text.


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


def describe(rng: np.random.Generator, scene: Scene, targets: list[Target], spec: Spec
             ) -> tuple[str, str]:
    """(instruction, answer) for `targets` of `scene`; the answer has one `<p>name</p>[SEG]` per
    target, in order. The answer's words are drawn from `rng` first."""
    answer = _answer(rng, targets, spec)
    return _instruction(rng, scene, targets, spec), answer
