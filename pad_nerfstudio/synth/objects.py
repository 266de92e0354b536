"""Procedural LEGO-like brick animals. A class name and a global seed determine, through a stable hash, one object:
a body plan (quadruped, bird, swimmer or crawler, picked from the animal name where it is one of MAD's), a
complexity knob (number of bricks, legs, neck, ears, tail, spikes, symmetry) and a colour-contrast knob (palette of
1 to 5 LEGO colours, similar or saturated). Bricks live on the stud grid (x, y in studs, z in plates; a brick is 3
plates) and are turned into renderable primitives (boxes, stud cylinders) scaled to fit a sphere of radius
``OBJECT_RADIUS`` around the origin. Removing a brick re-exposes the studs it covered, so "Missing" defects look
like a real brick pulled off.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from pad_nerfstudio.synth.raycast import Scene

PLATE_HEIGHT = 0.4
"""Plate height in stud pitches (3.2 mm / 8 mm); a brick is three plates."""
STUD_RADIUS = 0.3
STUD_HEIGHT = 0.2125
ROUND_RADIUS = 0.48
"""Radius of round 1x1 bricks and plates, slightly under half a pitch so neighbours do not touch."""
OBJECT_RADIUS = 1.1
"""Every object is scaled to fit inside this sphere around the world origin."""

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.79, 0.10, 0.04),
    "yellow": (0.95, 0.80, 0.22),
    "blue": (0.00, 0.33, 0.75),
    "green": (0.14, 0.50, 0.25),
    "white": (0.93, 0.93, 0.91),
    "black": (0.11, 0.13, 0.15),
    "orange": (1.00, 0.54, 0.09),
    "lime": (0.73, 0.91, 0.04),
    "azure": (0.21, 0.68, 0.75),
    "tan": (0.89, 0.80, 0.62),
    "dark_tan": (0.58, 0.54, 0.45),
    "medium_nougat": (0.67, 0.49, 0.33),
    "light_grey": (0.63, 0.65, 0.66),
    "dark_grey": (0.42, 0.43, 0.41),
    "reddish_brown": (0.35, 0.16, 0.07),
    "dark_red": (0.45, 0.05, 0.06),
    "dark_blue": (0.04, 0.20, 0.39),
    "medium_blue": (0.35, 0.58, 0.86),
    "dark_green": (0.09, 0.30, 0.17),
    "sand_green": (0.63, 0.74, 0.67),
    "light_orange": (0.97, 0.73, 0.24),
}
# Families of similar colours make low-contrast objects; the saturated set makes high-contrast ones.
SIMILAR_FAMILIES = (
    ("tan", "dark_tan", "medium_nougat"),
    ("light_grey", "sand_green", "white"),
    ("red", "dark_red", "reddish_brown"),
    ("blue", "medium_blue", "dark_blue"),
    ("green", "dark_green", "sand_green"),
    ("yellow", "light_orange", "orange"),
    ("dark_grey", "light_grey", "dark_tan"),
)
CONTRASTING = ("red", "yellow", "blue", "green", "white", "black", "orange", "lime", "azure")

BODY_PLANS = ("quadruped", "bird", "swimmer", "crawler")
_NAME_PLANS = {
    **{animal: "quadruped" for animal in ("gorilla", "unicorn", "sabertooth", "sheep", "pig", "elephant", "cat")},
    "bear": "quadruped",
    "puppy": "quadruped",
    "mallard": "bird",
    "bird": "bird",
    "owl": "bird",
    "swan": "bird",
    "pheonix": "bird",
    "parrot": "bird",
    "whale": "swimmer",
    "turtle": "swimmer",
    "scorpion": "crawler",
}


@dataclass(frozen=True)
class Brick:
    """One brick or plate on the stud grid; (x, y, z) is its minimum corner in (studs, studs, plates)."""

    x: int
    y: int
    z: int
    size_x: int
    size_y: int
    size_z: int
    """Height in plates: 3 for a brick, 1 for a plate."""
    colour: tuple[float, float, float]
    part: str = "body"
    """What the brick belongs to (body, leg, head, ...); informative only."""
    round: bool = False
    """A round 1x1 brick or plate (a cylinder) instead of a box."""

    def cells(self) -> list[tuple[int, int, int]]:
        return [
            (i, j, k)
            for i in range(self.x, self.x + self.size_x)
            for j in range(self.y, self.y + self.size_y)
            for k in range(self.z, self.z + self.size_z)
        ]


@dataclass(frozen=True)
class BrickObject:
    """A brick model plus the grid-to-world transform that centres it and fits it into ``OBJECT_RADIUS``."""

    name: str
    seed: int
    body_plan: str
    bricks: tuple[Brick, ...]
    centre: np.ndarray = field(repr=False)
    """Grid-space point (studs, studs, stud pitches) that maps to the world origin."""
    scale: float
    """World units per stud pitch."""

    def to_world(self, grid_points: np.ndarray) -> np.ndarray:
        """Grid points in (studs, studs, stud pitches) -> world coordinates."""
        return (np.asarray(grid_points, dtype=np.float64) - self.centre) * self.scale

    def scene(self, removed: int | None = None) -> Scene:
        """Primitives of the object, optionally without brick ``removed`` (its covered neighbours regain studs)."""
        return bricks_to_scene(self.bricks, self.centre, self.scale, removed)

    def supports(self) -> np.ndarray:
        """(num_bricks,) bool: whether something rests on top of the brick (removing it would leave a gap)."""
        owner = _cell_owner(self.bricks)
        covered = np.zeros(len(self.bricks), dtype=bool)
        for index, brick in enumerate(self.bricks):
            top = brick.z + brick.size_z
            covered[index] = any(
                (i, j, top) in owner
                for i in range(brick.x, brick.x + brick.size_x)
                for j in range(brick.y, brick.y + brick.size_y)
            )
        return covered


def class_seed(seed: int, name: str) -> int:
    """Stable 63-bit seed from the global seed and a class name (Python's ``hash()`` changes between runs)."""
    digest = hashlib.sha256(f"pad-synth/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def build_brick_animal(name: str, seed: int = 0) -> BrickObject:
    """The brick animal of class ``name`` (e.g. "01Gorilla") for global ``seed``; same inputs, same object.

    Example:
        >>> gorilla = build_brick_animal("01Gorilla", seed=0)
        >>> len(gorilla.bricks) > 0
        True
    """
    rng = np.random.default_rng(class_seed(seed, name))
    complexity = float(rng.uniform())
    contrast = float(rng.uniform())
    animal = "".join(ch for ch in name.lower() if ch.isalpha())
    plan = _NAME_PLANS.get(animal) or str(rng.choice(["quadruped", "quadruped", "bird", "swimmer", "crawler"]))
    builder = _Builder(_palette(rng, contrast), rng, complexity, symmetric=bool(rng.uniform() < 1.2 - complexity))
    {"quadruped": _quadruped, "bird": _bird, "swimmer": _swimmer, "crawler": _crawler}[plan](builder, animal)
    bricks = tuple(builder.bricks)
    centre, scale = _fit_transform(bricks)
    return BrickObject(name=name, seed=seed, body_plan=plan, bricks=bricks, centre=centre, scale=scale)


def bricks_to_scene(bricks: tuple[Brick, ...], centre: np.ndarray, scale: float, removed: int | None = None) -> Scene:
    """Boxes for bricks, cylinders for round bricks and for the studs on every exposed top cell."""
    kept = [(index, brick) for index, brick in enumerate(bricks) if index != removed]
    owner = _cell_owner([brick for _, brick in kept])
    box_lo, box_hi, box_colour, box_part = [], [], [], []
    cyl_xy, cyl_z, cyl_radius, cyl_colour, cyl_part = [], [], [], [], []
    for index, brick in kept:
        lo = np.array([brick.x, brick.y, brick.z * PLATE_HEIGHT])
        hi = np.array([brick.x + brick.size_x, brick.y + brick.size_y, (brick.z + brick.size_z) * PLATE_HEIGHT])
        if brick.round:
            cyl_xy.append(0.5 * (lo[:2] + hi[:2]))
            cyl_z.append([lo[2], hi[2]])
            cyl_radius.append(ROUND_RADIUS * brick.size_x)
            cyl_colour.append(brick.colour)
            cyl_part.append(index)
        else:
            box_lo.append(lo)
            box_hi.append(hi)
            box_colour.append(brick.colour)
            box_part.append(index)
        top = brick.z + brick.size_z
        for i in range(brick.x, brick.x + brick.size_x):
            for j in range(brick.y, brick.y + brick.size_y):
                if (i, j, top) in owner:
                    continue  # covered studs are inside the brick above and can never be seen
                cyl_xy.append([i + 0.5, j + 0.5])
                cyl_z.append([hi[2], hi[2] + STUD_HEIGHT])
                cyl_radius.append(STUD_RADIUS)
                cyl_colour.append(brick.colour)
                cyl_part.append(index)

    def world(points: list) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64).reshape(-1, 3) - centre) * scale

    cyl_xy_arr = np.asarray(cyl_xy, dtype=np.float64).reshape(-1, 2)
    cyl_z_arr = np.asarray(cyl_z, dtype=np.float64).reshape(-1, 2)
    return Scene(
        box_lo=world(box_lo),
        box_hi=world(box_hi),
        box_colour=np.asarray(box_colour, dtype=np.float64).reshape(-1, 3),
        box_part=np.asarray(box_part, dtype=np.int64),
        cylinder_xy=(cyl_xy_arr - centre[:2]) * scale,
        cylinder_z=(cyl_z_arr - centre[2]) * scale,
        cylinder_radius=np.asarray(cyl_radius, dtype=np.float64) * scale,
        cylinder_colour=np.asarray(cyl_colour, dtype=np.float64).reshape(-1, 3),
        cylinder_part=np.asarray(cyl_part, dtype=np.int64),
    )


def _cell_owner(bricks) -> dict[tuple[int, int, int], int]:
    return {cell: index for index, brick in enumerate(bricks) for cell in brick.cells()}


def _fit_transform(bricks: tuple[Brick, ...]) -> tuple[np.ndarray, float]:
    """Centre of the bounding box and the scale that puts the farthest corner (studs included) on OBJECT_RADIUS."""
    corners = []
    for brick in bricks:
        top = (brick.z + brick.size_z) * PLATE_HEIGHT + STUD_HEIGHT
        for x in (brick.x, brick.x + brick.size_x):
            for y in (brick.y, brick.y + brick.size_y):
                corners.extend([(x, y, brick.z * PLATE_HEIGHT), (x, y, top)])
    corners = np.asarray(corners, dtype=np.float64)
    centre = 0.5 * (corners.min(0) + corners.max(0))
    return centre, OBJECT_RADIUS / np.linalg.norm(corners - centre, axis=1).max()


def _luminance(colour) -> float:
    r, g, b = colour
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _palette(rng: np.random.Generator, contrast: float) -> list[tuple[float, float, float]]:
    """1-5 colours; low ``contrast`` draws few colours from one family of similar ones, high draws saturated ones."""
    count = 1 + int(contrast * 4.999)
    if contrast < 0.45:
        family = SIMILAR_FAMILIES[rng.integers(len(SIMILAR_FAMILIES))]
        names = [family[i] for i in rng.permutation(len(family))[:count]]
    else:
        names = [CONTRASTING[i] for i in rng.permutation(len(CONTRASTING))[:count]]
    # The body takes the first colour; a near-black body would hide the shape, so lead with a lighter one.
    names.sort(key=lambda name: _luminance(COLOURS[name]) < 0.2)
    return [COLOURS[name] for name in names]


class _Builder:
    """Accumulates bricks, refusing any that would overlap an existing one, and hands out colours by role."""

    ROLES = ("body", "leg", "head", "accent", "stripe")

    def __init__(self, palette, rng: np.random.Generator, complexity: float, symmetric: bool):
        self.palette = palette
        self.rng = rng
        self.complexity = complexity
        self.symmetric = symmetric
        self.bricks: list[Brick] = []
        self.occupied: set[tuple[int, int, int]] = set()

    def colour(self, role: str) -> tuple[float, float, float]:
        index = {"body": 0, "leg": 1, "head": 2, "accent": 3, "stripe": 4}[role]
        if len(self.palette) < 3 and role == "head":
            index = 0
        return self.palette[index % len(self.palette)]

    def chance(self, probability: float) -> bool:
        return bool(self.rng.uniform() < probability)

    def add(self, x, y, z, size_x, size_y, size_z, role, part=None, round_=False, colour=None) -> bool:
        brick = Brick(
            int(x),
            int(y),
            int(z),
            int(size_x),
            int(size_y),
            int(size_z),
            self.colour(role) if colour is None else colour,
            part or role,
            round_,
        )
        cells = brick.cells()
        if brick.z < 0 or any(cell in self.occupied for cell in cells):
            return False
        self.occupied.update(cells)
        self.bricks.append(brick)
        return True

    def row(self, x0: int, length: int, y0: int, width: int, z: int, size_z: int, role: str, stagger: bool) -> None:
        """Tile a length x width slab with bricks of length 2-4, halves split across y for wide slabs."""
        halves = [(y0, width)] if width <= 2 else [(y0, width // 2), (y0 + width // 2, width - width // 2)]
        for half, (y, w) in enumerate(halves):
            x = x0
            remaining = length
            first = True
            while remaining > 0:
                piece = int(self.rng.integers(2, 5))
                if first and (stagger ^ bool(half)) and remaining > 2:
                    piece = 1 if self.rng.uniform() < 0.5 else 3
                piece = min(piece, remaining)
                if remaining - piece == 1:
                    piece += 1 if piece < 4 else -1
                role_here = role
                if role == "body" and len(self.palette) >= 5 and (z // 3) % 2 == 1:
                    role_here = "stripe"
                self.add(x, y, z, piece, w, size_z, role_here, part=role)
                x += piece
                remaining -= piece
                first = False

    def slab(self, x0, length, y0, width, z0, layers, role) -> int:
        """Stack ``layers`` staggered brick rows; returns the plate height of the slab's top."""
        for layer in range(layers):
            self.row(x0, length, y0, width, z0 + 3 * layer, 3, role, stagger=bool(layer % 2))
        return z0 + 3 * layers

    def lateral_shift(self) -> int:
        return 0 if self.symmetric else int(self.rng.choice([-1, 1]))


def _head(b: _Builder, front_x: int, body_y0: int, body_width: int, z: int, beak: bool, animal: str) -> None:
    """Head block with eyes, snout or beak, and optional ears or a horn; ``front_x`` is the body's front face."""
    rng, c = b.rng, b.complexity
    hx = int(rng.integers(2, 4))
    hy = 2 if body_width <= 2 or b.chance(0.5) else min(body_width, 4)
    overhang = int(rng.integers(0, 3))
    x0 = front_x - hx + overhang
    y0 = body_y0 + (body_width - hy) // 2 + b.lateral_shift()
    layers = 1 + int(c > 0.4 and b.chance(0.6))
    top = b.slab(x0, hx, y0, hy, z, layers, "head")
    front = x0 + hx
    if c > 0.15:
        eye_colour = (0.93, 0.93, 0.91) if _luminance(b.colour("head")) < 0.3 else (0.11, 0.13, 0.15)
        b.add(front - 1, y0, top, 1, 1, 1, "accent", part="eye", round_=True, colour=eye_colour)
        if b.symmetric or b.chance(0.5):
            b.add(front - 1, y0 + hy - 1, top, 1, 1, 1, "accent", part="eye", round_=True, colour=eye_colour)
    if beak:
        b.add(
            front,
            y0 + hy // 2 - 1 + (hy % 2),
            z + 1,
            1 + int(b.chance(0.5)),
            2 if hy >= 2 else 1,
            1,
            "accent",
            part="beak",
        )
    elif c > 0.25:
        b.add(front, y0 + (hy - 2) // 2, z, 1, 2, 3 if b.chance(0.5) else 2, "accent", part="snout")
    if animal == "unicorn" or (c > 0.55 and b.chance(0.25)):
        for level in range(2):
            b.add(front - 2, y0 + hy // 2 - 1 + (hy % 2), top + 3 * level, 1, 1, 3, "accent", part="horn", round_=True)
    elif c > 0.3 and b.chance(0.7):
        ear = 3 if b.chance(0.5) else 1
        b.add(x0, y0, top, 1, 1, ear, "head", part="ear")
        if b.symmetric or b.chance(0.3):
            b.add(x0, y0 + hy - 1, top, 1, 1, ear, "head", part="ear")


def _tail(b: _Builder, body_y0: int, body_width: int, top: int, upward: bool) -> None:
    length = int(b.rng.integers(2, 4))
    y = body_y0 + (body_width - 1) // 2 + (0 if b.symmetric else b.lateral_shift())
    b.add(-length + 1, y, top, length, 1, 1, "accent", part="tail")
    if upward:
        for level in range(int(b.rng.integers(1, 3))):
            b.add(-length + 1, y, top + 1 + 3 * level, 1, 1, 3, "accent", part="tail", round_=level > 0)


def _spikes(b: _Builder, length: int, body_y0: int, body_width: int, top: int) -> None:
    y = body_y0 + (body_width - 1) // 2
    step = int(b.rng.integers(1, 3))
    for x in range(1, length - 2, step):
        b.add(
            x,
            y,
            top,
            1,
            1,
            1 + 2 * int(b.chance(0.4)),
            "stripe" if len(b.palette) >= 5 else "accent",
            part="spike",
            round_=b.chance(0.5),
        )


def _quadruped(b: _Builder, animal: str) -> None:
    rng, c = b.rng, b.complexity
    length = int(rng.integers(4, 6 + round(4 * c)))
    width = 2 if c < 0.3 else int(rng.choice([2, 3, 4]))
    y0 = -(width // 2)
    leg_height = 1 + int(c > 0.45) + int(b.chance(0.5 * c))
    feet = c > 0.55 and b.chance(0.7)
    z_body = int(feet) + 3 * leg_height
    if c < 0.25:
        for x in (0, length - 1):
            for level in range(leg_height):
                b.add(x, y0, 3 * level, 1, width, 3, "leg")
    else:
        lx = 1 if length < 6 or b.chance(0.5) else 2
        ly = 1 if width <= 2 or b.chance(0.5) else 2
        for x in (0, length - lx):
            for y in (y0, y0 + width - ly):
                if feet:
                    b.add(x, y, 0, lx + 1, ly, 1, "accent", part="foot")
                for level in range(leg_height):
                    b.add(x, y, int(feet) + 3 * level, lx, ly, 3, "leg")
    layers = 1 + int(c > 0.35) + int(c > 0.75 and b.chance(0.6))
    top = b.slab(0, length, y0, width, z_body, layers, "body")
    head_z = top
    if c > 0.5 and b.chance(0.6) or animal == "elephant":
        neck_w = 2 if width >= 2 else 1
        for level in range(int(rng.integers(1, 3))):
            b.add(length - 2, y0 + (width - neck_w) // 2, top + 3 * level, 2, neck_w, 3, "body", part="neck")
            head_z = top + 3 * (level + 1)
    _head(b, length, y0, width, head_z, beak=False, animal=animal)
    if c > 0.2:
        _tail(b, y0, width, top, upward=c > 0.5 and b.chance(0.5))
    if c > 0.6 and b.chance(0.6):
        _spikes(b, length, y0, width, top)


def _bird(b: _Builder, animal: str) -> None:
    rng, c = b.rng, b.complexity
    length = int(rng.integers(3, 5 + round(2 * c)))
    width = int(rng.choice([2, 4])) if c > 0.3 else 2
    y0 = -(width // 2)
    leg_height = 1 + int(c > 0.5 and b.chance(0.5))
    x_leg = max(0, length // 2 - 1)
    for y in (y0, y0 + width - 1):
        b.add(x_leg, y, 0, 2, 1, 1, "accent", part="foot")
        for level in range(leg_height):
            b.add(x_leg, y, 1 + 3 * level, 1, 1, 3, "leg", round_=c > 0.6)
    z_body = 1 + 3 * leg_height
    layers = 1 + int(c > 0.3) + int(animal == "owl" or (c > 0.7 and b.chance(0.5)))
    top = b.slab(0, length, y0, width, z_body, layers, "body")
    if c > 0.25 and length >= 3:
        wing = 1 + int(c > 0.6)
        span = max(1, length - 2)
        b.add(1, y0 - wing, top, span, wing + 1, 1, "accent", part="wing")
        if b.symmetric or b.chance(0.5):
            b.add(1, y0 + width - 1, top, span, wing + 1, 1, "accent", part="wing")
    head_z = top
    neck_levels = 2 + int(b.chance(0.5)) if animal == "swan" else int(c > 0.45 and b.chance(0.5))
    for level in range(neck_levels):
        b.add(
            length - 1,
            y0 + (width - 1) // 2,
            top + 3 * level,
            1,
            1 if width <= 2 else 2,
            3,
            "body",
            part="neck",
            round_=width <= 2 and level > 0,
        )
        head_z = top + 3 * (level + 1)
    _head(b, length, y0, width, head_z, beak=True, animal=animal)
    if c > 0.15:
        fan = 2 if c > 0.5 else 1
        b.add(-fan, y0, top, fan + 1, width, 1, "accent", part="tail")


def _swimmer(b: _Builder, animal: str) -> None:
    rng, c = b.rng, b.complexity
    length = int(rng.integers(5, 7 + round(3 * c)))
    width = int(rng.choice([3, 4])) if c > 0.2 else 2
    y0 = -(width // 2)
    shell = animal == "turtle" or (c > 0.5 and b.chance(0.4))
    z_body = 1 if shell else 0
    if shell:
        for x in (1, length - 3):
            b.add(x, y0 - 1, 0, 2, width + 2, 1, "leg", part="flipper")
    layers = 1 + int(c > 0.45)
    top = b.slab(0, length, y0, width, z_body, layers, "body")
    if shell:
        inset = 1
        while length - 2 * inset >= 2 and inset <= 1 + int(c > 0.6):
            top = b.slab(inset, length - 2 * inset, y0, width, top, 1, "stripe" if len(b.palette) > 3 else "accent")
            inset += 1
    elif c > 0.35:
        b.add(1, y0 - 1, z_body, 2, 1, 1, "leg", part="flipper")
        b.add(1, y0 + width, z_body, 2, 1, 1, "leg", part="flipper")
    _head(b, length + 1, y0, width, z_body, beak=False, animal=animal)
    fluke = width + 2 if c > 0.3 else width
    b.add(-2, y0, z_body, 2, width, 1, "body", part="tail")
    b.add(-3, y0 - (fluke - width) // 2, z_body + 1, 2, fluke, 1, "accent", part="tail")


def _crawler(b: _Builder, animal: str) -> None:
    rng, c = b.rng, b.complexity
    length = int(rng.integers(4, 6 + round(2 * c)))
    width = 2
    y0 = -1
    pairs = 2 + int(c > 0.4) + int(c > 0.7 and length >= 6)
    for k in range(pairs):
        x = min(length - 1, 2 * k if pairs <= 2 or length >= 2 * pairs else k)
        reach = 2 if c > 0.3 else 1
        b.add(x, y0 - reach, 0, 1, width + 2 * reach, 1, "leg")
    top = b.slab(0, length, y0, width, 1, 1 + int(c > 0.55), "body")
    for y in (y0 - 1, y0 + width):
        b.add(length - 1, y, 1, 3, 1, 1 if c < 0.5 else 3, "accent", part="claw")
        if c > 0.35:
            b.add(length + 1, y + (-1 if y < 0 else 1), 1, 1, 1, 1, "accent", part="pincer", round_=True)
    _head(b, length + 1, y0, width, top - 3, beak=False, animal=animal)
    levels = 1 + int(rng.integers(1, 3)) + int(c > 0.6)
    b.add(-1, y0, top, 2, width, 1, "body", part="tail")
    for level in range(levels):
        b.add(-1, y0, top + 1 + 3 * level, 1, 1, 3, "leg" if level % 2 else "body", part="tail")
    sting_z = top + 1 + 3 * levels
    b.add(-1, y0, sting_z, 2, 1, 1, "accent", part="tail")
    b.add(0, y0, sting_z + 1, 1, 1, 1, "accent", part="stinger", round_=True)
