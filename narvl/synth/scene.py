"""Scenes of coloured shapes and the language about them, for the embedded default dataset (`narvl synth`).

A scene is a few non-overlapping objects, each with a shape, a colour, a size (small/large) and a polygon, on a
plain background. From a scene this module renders the JPEG and writes the text: reference captions, VQA questions
with their answer, and referring expressions that pick out exactly one object. Everything is a function of a
`random.Random` passed in, so the same seed gives the same dataset.

Spatial relations are defined on boxes so that every statement made is unambiguous:
    a is (clearly) left of b    a.x1 < b.x0          (right, above, below alike)
    a is not left of b          a.cx >= b.cx         (what a distractor must satisfy)
A relation is only stated for pairs where it holds clearly; an expression "X left of Y" is only used when every
other object matching X is not left of Y. Image y grows downwards, so "above" means smaller y.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from itertools import combinations
from typing import Iterable

from PIL import Image, ImageDraw

# name -> RGB. Names are the answers and caption words; the rendered colour is jittered around these.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "purple": (145, 55, 190),
    "white": (245, 245, 245),
}
# COCO-style categories of refcoco/instances.json: id = position + 1
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: dict[str, tuple[int, int]] = {"gray": (105, 135), "dark gray": (50, 75)}  # name -> grey level range
DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("big", "large")}
GENERIC_NOUNS = ("object", "shape", "thing")
# phrases for "<target> REL <landmark>" ("is" is added by callers that need a verb)
REL_PHRASES = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
# ordinal phrases for the extreme object among several that match: "{n}" is the noun phrase
ORDINAL_PHRASES = {
    "left": ("left {n}", "{n} on the left", "leftmost {n}"),
    "right": ("right {n}", "{n} on the right", "rightmost {n}"),
    "above": ("top {n}", "{n} at the top", "upper {n}"),
    "below": ("bottom {n}", "{n} at the bottom", "lower {n}"),
}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    polygon: tuple[float, ...]  # x0, y0, x1, y1, ... in image pixels, rounded to 2 decimals
    rgb: tuple[int, int, int]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Tight box (x0, y0, x1, y1) of the polygon."""
        xs, ys = self.polygon[0::2], self.polygon[1::2]
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def attr(self, key: str) -> str:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}[key]


@dataclass(frozen=True)
class Scene:
    size: int
    background: str
    background_rgb: tuple[int, int, int]
    objects: tuple[Obj, ...]


# ------------------------------------------------------------------------------------------------------ geometry
def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of `shape` centred at (cx, cy) with half-extent r (the circle's radius)."""
    if shape == "circle":
        pts = [(math.cos(2 * math.pi * k / 24), math.sin(2 * math.pi * k / 24)) for k in range(24)]
    elif shape == "square":
        s = 0.85
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "triangle":
        pts = [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]
    elif shape == "diamond":
        pts = [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
               (-t, -t)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [(round(cx + r * x, 2), round(cy + r * y, 2)) for x, y in pts]


def polygon_area(polygon: tuple[float, ...]) -> float:
    xs, ys = polygon[0::2], polygon[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2


def _separated(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


SCENE_ATTEMPTS = 100


def make_scene(rng: random.Random, size: int, min_objects: int, max_objects: int,
               small_radius: tuple[float, float], large_radius: tuple[float, float]) -> Scene:
    """Sample a scene. Objects never overlap (their boxes keep a gap of 3% of the image); radii are drawn from
    `small_radius` or `large_radius` ([lo, hi] fractions of `size`)."""
    for _scene_attempt in range(SCENE_ATTEMPTS):  # a scene with too few objects placed is drawn again
        background = rng.choice(sorted(BACKGROUNDS))
        lo, hi = BACKGROUNDS[background]
        grey = rng.randint(lo, hi)
        tint = [rng.randint(-6, 6) for _ in range(3)]
        background_rgb = tuple(max(0, min(255, grey + t)) for t in tint)
        n = rng.randint(min_objects, max_objects)
        gap = 0.03 * size
        objects: list[Obj] = []
        for _ in range(n):
            # Repeat an existing shape or colour often, so that expressions need more than one attribute.
            if objects and rng.random() < 0.35:
                shape = rng.choice(objects).shape
            else:
                shape = rng.choice(SHAPES)
            if objects and rng.random() < 0.35:
                colour = rng.choice(objects).colour
            else:
                colour = rng.choice(sorted(COLOURS))
            kind = rng.choice(SIZES)
            for _attempt in range(60):
                r = size * rng.uniform(*(small_radius if kind == "small" else large_radius))
                cx = rng.uniform(r + 1, size - r - 1)
                cy = rng.uniform(r + 1, size - r - 1)
                pts = shape_polygon(shape, cx, cy, r)
                flat = tuple(v for p in pts for v in p)
                box = (min(flat[0::2]), min(flat[1::2]), max(flat[0::2]), max(flat[1::2]))
                if all(_separated(box, o.box, gap) for o in objects):
                    base = COLOURS[colour]
                    rgb = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in base)
                    objects.append(Obj(shape, colour, kind, flat, rgb))
                    break
        if len(objects) >= min_objects:
            return Scene(size, background, background_rgb, tuple(objects))
    raise ValueError(f"could not place {min_objects} objects of radii {small_radius} / {large_radius} (fractions "
                     f"of {size} px) without overlap in {SCENE_ATTEMPTS} scenes: make them smaller or fewer")


def render(scene: Scene, supersample: int, quality: int) -> bytes:
    """JPEG bytes of the scene: polygons drawn at `supersample` times the size, then downsampled (anti-aliasing)."""
    k = supersample
    img = Image.new("RGB", (scene.size * k, scene.size * k), scene.background_rgb)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        pts = [(o.polygon[i] * k, o.polygon[i + 1] * k) for i in range(0, len(o.polygon), 2)]
        draw.polygon(pts, fill=o.rgb)
    if k > 1:
        img = img.resize((scene.size, scene.size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    # baseline JPEG, 4:4:4 (small objects keep their colour), no EXIF, no optimisation pass: the bytes depend
    # only on the pixels and the pinned Pillow
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling=0)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- relations
def strictly(a: Obj, b: Obj, direction: str) -> bool:
    """a is clearly `direction` of b: their boxes are separated along that axis."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return {"left": ax1 < bx0, "right": ax0 > bx1, "above": ay1 < by0, "below": ay0 > by1}[direction]


def weakly(a: Obj, b: Obj, direction: str) -> bool:
    """a is `direction` of b by its centre (a distractor must fail this)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[direction]


# ------------------------------------------------------------------------------------------------- descriptions
ATTR_SUBSETS: tuple[tuple[str, ...], ...] = (
    (), ("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour"),
    ("size", "colour", "shape"),
)


@dataclass(frozen=True)
class Desc:
    """A description of one object: attributes, plus either an ordinal or a relation to a landmark."""

    attrs: tuple[tuple[str, str], ...]  # (key, value) in size, colour, shape order
    ordinal: str | None = None  # the extreme one in this direction among those matching attrs
    relation: str | None = None  # the one in this direction of the landmark
    landmark: Desc | None = None  # the landmark's own (attribute-only) description


def _attrs(o: Obj, keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((k, o.attr(k)) for k in keys)


def _match(o: Obj, attrs: tuple[tuple[str, str], ...]) -> bool:
    return all(o.attr(k) == v for k, v in attrs)


def resolve(scene: Scene, desc: Desc) -> list[int]:
    """Indices of the objects `desc` could refer to (a valid description resolves to exactly one)."""
    objs = scene.objects
    matching = [i for i, o in enumerate(objs) if _match(o, desc.attrs)]
    if desc.ordinal is not None:
        d = desc.ordinal
        if len(matching) < 2:
            return []
        return [i for i in matching if all(strictly(objs[i], objs[j], d) for j in matching if j != i)]
    if desc.relation is not None:
        landmarks = resolve(scene, desc.landmark)
        if len(landmarks) != 1:
            return []
        lm = landmarks[0]
        d = desc.relation
        candidates = [i for i in matching if i != lm]
        winners = [i for i in candidates if strictly(objs[i], objs[lm], d)]
        unclear = [i for i in candidates if i not in winners and weakly(objs[i], objs[lm], d)]
        return winners + unclear
    return matching


def descriptions(scene: Scene, target: int, exclude: tuple[str, ...] = ()) -> list[Desc]:
    """Every description (from the fixed grammar) that resolves to exactly `target` and names no `exclude` attribute.

    Landmarks use their shortest unique attribute description (they may name any attribute).
    """
    objs = scene.objects
    t = objs[target]
    subsets = [s for s in ATTR_SUBSETS if not set(s) & set(exclude)]
    out: list[Desc] = []
    for keys in subsets:
        if keys and resolve(scene, Desc(_attrs(t, keys))) == [target]:
            out.append(Desc(_attrs(t, keys)))
    for keys in subsets:
        for d in DIRECTIONS:
            desc = Desc(_attrs(t, keys), ordinal=d)
            if resolve(scene, desc) == [target]:
                out.append(desc)
    for lm, lo in enumerate(objs):
        if lm == target:
            continue
        lm_desc = next((Desc(_attrs(lo, k)) for k in ATTR_SUBSETS[1:] if resolve(scene, Desc(_attrs(lo, k))) == [lm]),
                       None)
        if lm_desc is None:
            continue
        for d in DIRECTIONS:
            if not strictly(t, lo, d):
                continue
            for keys in subsets:
                desc = Desc(_attrs(t, keys), relation=d, landmark=lm_desc)
                if resolve(scene, desc) == [target]:
                    out.append(desc)
    return out


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(noun: str) -> str:
    if noun.endswith("ss"):
        return noun + "es"
    return noun + "s"


def noun_phrase(rng: random.Random, attrs: tuple[tuple[str, str], ...]) -> str:
    """'big red circle', 'red one', 'small shape', 'object' ..."""
    values = dict(attrs)
    words = []
    if "size" in values:
        words.append(rng.choice(SIZE_WORDS[values["size"]]))
    if "colour" in values:
        words.append(values["colour"])
    if "shape" in values:
        words.append(values["shape"])
    else:
        words.append(rng.choice(GENERIC_NOUNS if words else GENERIC_NOUNS[:2]))
    return " ".join(words)


def phrase(rng: random.Random, desc: Desc) -> str:
    """Words for a description, without a leading article ('red circle left of the blue square')."""
    n = noun_phrase(rng, desc.attrs)
    if desc.ordinal is not None:
        return rng.choice(ORDINAL_PHRASES[desc.ordinal]).format(n=n)
    if desc.relation is not None:
        return f"{n} {rng.choice(REL_PHRASES[desc.relation])} the {noun_phrase(rng, desc.landmark.attrs)}"
    return n


def tokenize(text: str) -> list[str]:
    """Karpathy/refer-style tokens: lower case, punctuation dropped."""
    cleaned = "".join(c if c.isalnum() or c == " " else " " for c in text.lower())
    return cleaned.split()


# ------------------------------------------------------------------------------------------------ referring
def referring_expressions(rng: random.Random, scene: Scene, target: int, count: int) -> list[str]:
    """Up to `count` distinct expressions that each identify `target` uniquely, in varied forms."""
    descs = descriptions(scene, target)
    if not descs:
        return []
    # prefer different kinds of description (attributes / ordinal / relation), then different wordings
    by_kind: dict[str, list[Desc]] = {}
    for d in descs:
        kind = "ordinal" if d.ordinal else "relation" if d.relation else "attrs"
        by_kind.setdefault(kind, []).append(d)
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    out: list[str] = []
    for attempt in range(count * 8):
        if len(out) == count:
            break
        kind = kinds[attempt % len(kinds)]
        desc = rng.choice(by_kind[kind])
        text = phrase(rng, desc)
        if rng.random() < 0.3:
            text = "the " + text
        if text not in out:
            out.append(text)
    return out


# ---------------------------------------------------------------------------------------------------- captions
def _np_with_article(rng: random.Random, o: Obj, with_size: bool) -> str:
    keys = ("size", "colour", "shape") if with_size else ("colour", "shape")
    n = noun_phrase(rng, _attrs(o, keys))
    return f"{article(n)} {n}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _groups(rng: random.Random, scene: Scene) -> str:
    """'two red circles and a blue star' (objects grouped by colour and shape)."""
    counts: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        counts[(o.colour, o.shape)] = counts.get((o.colour, o.shape), 0) + 1
    parts = []
    for (colour, shape), c in sorted(counts.items()):
        parts.append(f"{article(colour)} {colour} {shape}" if c == 1 else f"{NUMBER_WORDS[c]} {colour} {plural(shape)}")
    rng.shuffle(parts)
    return _join(parts)


def _clear_pairs(scene: Scene) -> list[tuple[int, int, str]]:
    objs = scene.objects
    return [(i, j, d) for i, j in combinations(range(len(objs)), 2) for d in DIRECTIONS
            if strictly(objs[i], objs[j], d)]


def caption(rng: random.Random, scene: Scene) -> str:
    """One caption, in one of several forms (some long, some short; `captions` keeps those within a length)."""
    objs = list(scene.objects)
    n = len(objs)
    with_size = rng.random() < 0.5
    form = rng.randrange(8)
    pairs = _clear_pairs(scene)
    shapes = rng.choice(("shapes", "objects"))
    if form == 0:  # left to right
        items = [_np_with_article(rng, o, with_size) for o in sorted(objs, key=lambda o: o.centre[0])]
        return _join(items) + rng.choice(("", f" on a {scene.background} background"))
    if form == 1:  # counts
        lead = rng.choice((f"{NUMBER_WORDS[n]} {shapes} on a {scene.background} background:",
                           f"{NUMBER_WORDS[n]} {shapes}:"))
        return f"{lead} {_groups(rng, scene)}"
    if form == 2 and pairs:  # one relation, then the rest
        i, j, d = rng.choice(pairs)
        text = f"{_np_with_article(rng, objs[i], with_size)} {rng.choice(REL_PHRASES[d])} " \
               f"{_np_with_article(rng, objs[j], with_size)}"
        if n == 2:
            return text
        if rng.random() < 0.5:
            return text + f" and {_join([_np_with_article(rng, o, with_size) for k, o in enumerate(objs) if k not in (i, j)])}"
        return text + f" and {NUMBER_WORDS[n - 2]} other {'shape' if n == 3 else 'shapes'}"
    if form == 3 and pairs:
        i, j, d = rng.choice(pairs)
        return f"there is {_np_with_article(rng, objs[i], with_size)} {rng.choice(REL_PHRASES[d])} " \
               f"{_np_with_article(rng, objs[j], with_size)}"
    if form == 4:
        order = objs[:]
        rng.shuffle(order)
        lead = rng.choice(("an image with", "a picture of", "a drawing of"))
        return f"{lead} {_join([_np_with_article(rng, o, with_size) for o in order])}"
    if form == 5:  # a count and two of the objects
        a, b = rng.sample(objs, 2)
        lead = rng.choice(("a picture of", "an image of", ""))
        text = f"{NUMBER_WORDS[n]} {shapes} including {_np_with_article(rng, a, with_size)}"
        text += f" and {_np_with_article(rng, b, with_size)}" if n > 2 else ""
        return f"{lead} {text}".strip()
    if form == 6:
        return f"{_groups(rng, scene)} on a {scene.background} background"
    return _groups(rng, scene)


def caption_length(text: str) -> int:
    """Words plus punctuation marks: about the number of tokens a word-level tokenizer makes of the text."""
    return len(tokenize(text)) + sum(text.count(c) for c in ",.:;")


def captions(rng: random.Random, scene: Scene, count: int, max_length: int) -> list[str]:
    """Up to `count` distinct captions of at most `max_length` words and punctuation marks."""
    out: list[str] = []
    for _ in range(count * 20):
        if len(out) == count:
            break
        text = caption(rng, scene)
        if text not in out and caption_length(text) <= max_length:
            out.append(text)
    return out


# --------------------------------------------------------------------------------------------------------- VQA
@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    kind: str  # colour | shape | count | yesno | relation: decides the answer noise
    question_type: str  # VQAv2's question_type (its first words)
    answer_type: str  # yes/no | number | other


QUESTION_KINDS = ("colour", "shape", "count", "yesno", "relation")


def _unique_phrase(rng: random.Random, scene: Scene, target: int, exclude: tuple[str, ...],
                   phrases: str = "all") -> str | None:
    """A phrase naming only `target`: any description of the grammar, or with phrases="attributes" only plain
    attribute ones (no ordinal, no relation to another object)."""
    descs = descriptions(scene, target, exclude)
    if phrases == "attributes":
        descs = [d for d in descs if d.ordinal is None and d.relation is None]
    return phrase(rng, rng.choice(descs)) if descs else None


def _attribute_phrase(rng: random.Random, scene: Scene, target: int) -> str | None:
    return _unique_phrase(rng, scene, target, (), "attributes")


def question(rng: random.Random, scene: Scene, kind: str, phrases: str = "all") -> Question | None:
    """One question of `kind` about the scene, or None when the scene does not allow one. `phrases`: how colour and
    shape questions name their object ("all" descriptions of the grammar, or "attributes" only)."""
    objs = scene.objects
    if kind == "colour":
        t = rng.randrange(len(objs))
        p = _unique_phrase(rng, scene, t, ("colour",), phrases)
        if p is None:
            return None
        return Question(f"what color is the {p}?", objs[t].colour, kind, "what color is the", "other")
    if kind == "shape":
        t = rng.randrange(len(objs))
        p = _unique_phrase(rng, scene, t, ("shape",), phrases)
        if p is None:
            return None
        return Question(f"what is the shape of the {p}?", objs[t].shape, kind, "what is the", "other")
    if kind == "count":
        which = rng.randrange(3)
        if which == 0:
            noun = rng.choice(("shapes", "objects"))
            return Question(f"how many {noun} are there?", str(len(objs)), kind, "how many", "number")
        present = rng.random() < 0.5
        if which == 1:
            value = rng.choice(objs).shape if present else rng.choice(SHAPES)
            c = sum(o.shape == value for o in objs)
            return Question(f"how many {plural(value)} are there?", str(c), kind, "how many", "number")
        value = rng.choice(objs).colour if present else rng.choice(sorted(COLOURS))
        c = sum(o.colour == value for o in objs)
        noun = rng.choice(("shapes", "objects"))
        return Question(f"how many {value} {noun} are in the image?", str(c), kind, "how many", "number")
    if kind == "yesno":
        present = {(o.colour, o.shape) for o in objs}
        if rng.random() < 0.5:
            o = rng.choice(objs)
            colour, shape = o.colour, o.shape
        else:
            absent = [(c, s) for c in sorted(COLOURS) for s in SHAPES if (c, s) not in present]
            colour, shape = rng.choice(absent)
        answer = "yes" if (colour, shape) in present else "no"
        return Question(f"is there {article(colour)} {colour} {shape}?", answer, kind, "is there a", "yes/no")
    if kind == "relation":
        pairs = [(i, j, d) for i in range(len(objs)) for j in range(len(objs)) for d in DIRECTIONS
                 if i != j and strictly(objs[i], objs[j], d)]
        rng.shuffle(pairs)
        for i, j, d in pairs:
            if rng.random() < 0.5:  # yes/no about a pair
                a = _attribute_phrase(rng, scene, i)
                b = _attribute_phrase(rng, scene, j)
                if a is None or b is None:
                    continue
                asked, answer = (d, "yes") if rng.random() < 0.5 else (OPPOSITE[d], "no")
                rel = rng.choice(REL_PHRASES[asked])
                return Question(f"is the {a} {rel} the {b}?", answer, kind, "is the", "yes/no")
            # what is REL the landmark: the target must be the only object in that direction
            lm = Desc(_attrs(objs[j], ("colour", "shape")))
            if resolve(scene, lm) != [j]:
                continue
            desc = Desc((), relation=d, landmark=lm)
            if resolve(scene, desc) != [i]:
                continue
            rel = rng.choice(REL_PHRASES[d])
            lm_np = noun_phrase(rng, lm.attrs)
            if rng.random() < 0.5:
                return Question(f"what color is the shape {rel} the {lm_np}?", objs[i].colour, kind,
                                "what color is the", "other")
            return Question(f"what is the shape of the object {rel} the {lm_np}?", objs[i].shape, kind,
                            "what is the", "other")
        return None
    raise ValueError(f"unknown question kind {kind!r}")


def questions(rng: random.Random, scene: Scene, count: int, kinds: Iterable[str] = QUESTION_KINDS,
              phrases: str = "all") -> list[Question]:
    """Up to `count` questions with distinct texts, of `kinds` drawn without repetition where possible."""
    out: list[Question] = []
    kinds = list(kinds)
    rng.shuffle(kinds)
    attempts = 0
    while len(out) < count and attempts < count * 10:
        kind = kinds[attempts % len(kinds)]
        attempts += 1
        q = question(rng, scene, kind, phrases)
        if q is not None and q.question not in {x.question for x in out}:
            out.append(q)
    return out


# Plausible human deviations from the true answer (synonyms, near misses); a mistake picks another value.
SYNONYMS = {
    "red": ("dark red", "pink"), "orange": ("dark orange", "orange red"), "yellow": ("gold", "light yellow"),
    "green": ("dark green", "lime"), "blue": ("dark blue", "navy"), "purple": ("violet", "magenta"),
    "white": ("light gray", "silver"),
    "circle": ("round", "oval", "ball"), "square": ("rectangle", "box"), "triangle": ("triangular", "pyramid"),
    "diamond": ("rhombus", "kite"), "star": ("stars", "starfish"), "cross": ("plus", "plus sign"),
    "yes": ("yes", "yeah"), "no": ("no", "nope"),
}


OPPOSITE_YN = {"yes": "no", "no": "yes"}


def human_answers(rng: random.Random, q: Question, noise: float) -> list[tuple[str, str]]:
    """Ten (answer, confidence) pairs: mostly the true answer, some synonyms and mistakes (at most 4 deviate)."""
    answers = []
    deviations = 0
    for _ in range(10):
        if deviations < 4 and rng.random() < noise:
            deviations += 1
            if q.answer_type == "number":
                n = int(q.answer)
                options = [NUMBER_WORDS[n]] + [str(m) for m in (n - 1, n + 1) if m >= 0]
            elif q.answer_type == "yes/no":
                options = list(SYNONYMS[q.answer][1:]) + [OPPOSITE_YN[q.answer]]
            else:
                pool = sorted(COLOURS) if q.answer in COLOURS else list(SHAPES)
                options = list(SYNONYMS[q.answer]) + [v for v in pool if v != q.answer]
            answers.append((rng.choice(options), rng.choice(("maybe", "yes", "no"))))
        else:
            answers.append((q.answer, "yes" if rng.random() < 0.9 else "maybe"))
    return answers



# --------------------------------------------------------------------------------------------- visual entailment
VE_LABELS = ("entailment", "neutral", "contradiction")
# statements no picture of shapes can confirm or refute (SNLI's "neutral": plausible, not shown)
NEUTRAL_PREDICATES = ("is made of wood", "is made of paper", "is made of metal", "is heavy", "is moving",
                      "is spinning", "was drawn by a child", "was cut out of cardboard", "is about to fall")


def _count_phrase(rng: random.Random, m: int) -> str:
    noun = rng.choice(("shape", "object")) + ("" if m == 1 else "s")
    return f"there {'is' if m == 1 else 'are'} {NUMBER_WORDS[m]} {noun}"


def hypothesis(rng: random.Random, scene: Scene, label: str, counts: range = range(2, 5)) -> str | None:
    """A statement about the scene that the image entails, contradicts, or leaves open (SNLI-VE's three labels).

    Entailed and contradicted statements have the same forms, drawn alike: a colour-shape that is (or is not) in
    the scene, a count from `counts` (the scenes' object counts) that is (or is not) the scene's, a relation between
    two uniquely named objects as it is (or reversed). So the words alone cannot tell them apart: only the image
    can. Neutral statements name predicates no picture of shapes shows (as SNLI's, recognisable from the text)."""
    objs = scene.objects
    n = len(objs)
    present = {(o.colour, o.shape) for o in objs}
    form = rng.randrange(3)
    if label in ("entailment", "contradiction"):
        true = label == "entailment"
        if form == 0:
            pool = sorted(present) if true else [(c, s) for c in sorted(COLOURS) for s in SHAPES
                                                  if (c, s) not in present]
            c, s = rng.choice(pool)
            return f"there is {article(c)} {c} {s}"
        if form == 1:
            others = [m for m in counts if m != n]
            if not true and not others:
                return None
            return _count_phrase(rng, n if true else rng.choice(others))
        # a relation between two uniquely named objects, as it is or reversed
        pairs = [(i, j, d) for i, j, d in _clear_pairs(scene)
                 if resolve(scene, Desc(_attrs(objs[i], ("colour", "shape")))) == [i]
                 and resolve(scene, Desc(_attrs(objs[j], ("colour", "shape")))) == [j]]
        if not pairs:
            return None
        i, j, d = rng.choice(pairs)
        a, b = (noun_phrase(rng, _attrs(objs[k], ("colour", "shape"))) for k in (i, j))
        return f"the {a} is {rng.choice(REL_PHRASES[d if true else OPPOSITE[d]])} the {b}"
    if label == "neutral":
        t = rng.randrange(n)
        p = _attribute_phrase(rng, scene, t)
        subject = f"the {p}" if p is not None else f"one of the {rng.choice(('shapes', 'objects'))}"
        return f"{subject} {rng.choice(NEUTRAL_PREDICATES)}"
    raise ValueError(f"unknown label {label!r}")


POS = {**{w: "DT" for w in ("a", "an", "the")}, **{w: "JJ" for w in (*COLOURS, "small", "little", "tiny", "big",
                                                                     "large", "other", "left", "right", "heavy",
                                                                     "top", "bottom", "upper", "lower", "dark",
                                                                     "gray")},
       **{w: "NN" for w in (*SHAPES, "object", "shape", "thing", "background", "image", "picture", "drawing",
                            "wood", "paper", "metal", "child", "cardboard")},
       **{w: "IN" for w in ("of", "on", "above", "over", "below", "under", "beneath", "with", "by", "including",
                            "at", "to", "out")},
       "there": "EX", "is": "VBZ", "are": "VBP", "was": "VBD", "made": "VBN", "drawn": "VBN", "cut": "VBN",
       "moving": "VBG", "spinning": "VBG", "about": "IN", "fall": "VB", "and": "CC", "no": "DT"}


def _tag(word: str) -> str:
    if word in POS:
        return POS[word]
    if word in NUMBER_WORDS:
        return "CD"
    if word.endswith("s") and word[:-1] in POS and POS[word[:-1]] == "NN" or word.endswith("es"):
        return "NNS"
    return "NN"


def parses(text: str) -> tuple[str, str]:
    """(binary parse, parse) in SNLI's bracket notation, from a right-branching binarisation and a flat sentence
    node with Penn Treebank tags over the closed synthetic vocabulary (not a linguistic parse)."""
    words = tokenize(text)
    binary = words[-1]
    for w in reversed(words[:-1]):
        binary = f"( {w} {binary} )"
    flat = " ".join(f"({_tag(w)} {w})" for w in words)
    return binary, f"(ROOT (S {flat}))"
