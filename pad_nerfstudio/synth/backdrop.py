"""The surroundings of a hand-held capture (``pad-synth --capture handheld``): the table the object stands on and the
wall around it, seen by every ray that misses the object. Both carry procedural textures defined in world
coordinates (wood planks, or a checked, flecked cloth on the table; panels and blotches on the wall), so all views see
the same 3D-consistent surfaces and structure-from-motion finds features on them, as on the backdrop of a real
photograph. The table is a disc at the object's lowest point, shaded like the object (``LIGHTS`` with normal +z, plus
ambient) under a lamp whose light falls off across it, with a soft contact shadow around the object's footprint
(ambient occlusion); with shadows on, it also receives the object's cast shadow (from the object's
:class:`~pad_nerfstudio.synth.raycast.ShadowMaps`). Beyond the table edge, rays meet a cylindrical wall around the
z axis, darker below the table top and lighter upwards, and above the wall a plain ceiling. Plain numpy, vectorised
over the samples, deterministic.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from pad_nerfstudio.synth.cameras import CAMERA_ANGLE_X, pixel_directions
from pad_nerfstudio.synth.raycast import (
    AMBIENT,
    LIGHTS,
    Hits,
    Scene,
    ShadowMaps,
    _cylinder_bounds,
    _geometry_key,
    cached,
)

BACKDROP_SUPERSAMPLE = 2
"""Samples per pixel side at which the backdrop is evaluated at most: its smooth texture needs less anti-aliasing
than the object's edges, and it fills most of the frame."""
TABLE_RADIUS = 7.0
"""Radius of the table disc around the z axis, in world units (the object fits a sphere of radius 1.1)."""
WALL_RADIUS = 10.0
"""Radius of the cylindrical wall around the z axis."""
WALL_HEIGHT = 3.5
"""Height of the wall above the table top; the ceiling above it is plain."""
CEILING_COLOUR = (0.93, 0.92, 0.89)
LAMP_RANGE = (0.75, 1.1)
"""Brightness factor of the table far from and right under the lamp (uneven illumination)."""
LAMP_DISTANCE = 2.5
"""Horizontal distance of the lamp from the z axis, towards the key light (so the light falls off consistently)."""
LAMP_REACH = 3.5
"""Standard deviation (world units) of the lamp's Gaussian falloff across the table."""
SHADOW_REACH = 3.5
"""Table points farther than this from the z axis cannot be in the object's cast shadow (lights are > 45 degrees
high and the object is at most ~2.2 tall), so their shadow lookups are skipped."""
CONTACT_EXTENT = 1.7
"""Half-width of the square around the z axis on which contact shadows are computed."""
CONTACT_TEXELS = 256
CONTACT_SHADOW = ((0.06, 0.04, 0.55), (0.4, 0.18, 0.3))
"""(height scale, blur radius, strength) of the sharp contact term and of the broad term under overhangs: geometry at
height h above the table takes away strength * exp(-h / scale) of the light below it, blurred by a Gaussian of the
radius."""
TABLE_MATERIALS = ("wood", "cloth")

_WOOD_COLOURS = np.array([[0.62, 0.45, 0.30], [0.55, 0.40, 0.28], [0.70, 0.56, 0.40], [0.48, 0.34, 0.24]])
_CLOTH_COLOURS = np.array([[0.56, 0.56, 0.54], [0.50, 0.53, 0.56], [0.60, 0.57, 0.52], [0.47, 0.49, 0.47]])
_WALL_COLOURS = np.array([[0.70, 0.74, 0.76], [0.72, 0.75, 0.68], [0.80, 0.76, 0.68], [0.66, 0.70, 0.78]])
_LATTICE = 256
"""Side of the random lattices of the value noise (a power of two; small enough to stay in the CPU's cache)."""


@dataclass(frozen=True)
class Backdrop:
    """Table and wall around an object; see the module docstring. Build one with :meth:`around`.

    Example:
        >>> backdrop = Backdrop.around(scene, seed=7)
        >>> hits = trace(scene, c2w, 64)
        >>> image = compose(hits, shade(hits), backdrop.background(hits, c2w))
    """

    ground_z: float
    """Height of the table top: the object's lowest point."""
    table: str
    """Table material, one of ``TABLE_MATERIALS``."""
    table_colour: tuple[float, float, float]
    """Mean albedo of the table."""
    wall_colour: tuple[float, float, float]
    """Mean albedo of the wall."""
    seed: int
    """Seeds the textures (plank layout, noise lattices, stripe widths)."""

    @classmethod
    def around(cls, scene: Scene, seed: int) -> Backdrop:
        """The backdrop of an object: the table at its lowest point, materials and colours drawn from ``seed``.

        Example:
            >>> Backdrop.around(build_brick_animal("01Gorilla").scene(), seed=1).ground_z == ground_height(scene)
            True
        """
        rng = np.random.default_rng(seed)
        table = TABLE_MATERIALS[int(rng.integers(len(TABLE_MATERIALS)))]
        palette = _WOOD_COLOURS if table == "wood" else _CLOTH_COLOURS
        table_colour = palette[rng.integers(len(palette))] * rng.uniform(0.94, 1.06)
        wall_colour = _WALL_COLOURS[rng.integers(len(_WALL_COLOURS))] * rng.uniform(0.95, 1.05)
        return cls(
            ground_z=ground_height(scene),
            table=table,
            table_colour=tuple(float(c) for c in table_colour),
            wall_colour=tuple(float(c) for c in wall_colour),
            seed=int(rng.integers(1 << 62)),
        )

    def background(
        self,
        hits: Hits,
        c2w: np.ndarray,
        camera_angle_x: float = CAMERA_ANGLE_X,
        shadows: ShadowMaps | None = None,
        scene: Scene | None = None,
    ) -> np.ndarray:
        """Background colours (size, size, 3) of a traced view, for :func:`~pad_nerfstudio.synth.raycast.compose`:
        per pixel, the backdrop averaged over a grid of ``min(supersample, BACKDROP_SUPERSAMPLE)`` squared rays, for
        the pixel's samples that miss the object (zero where none does).

        ``scene`` (the object) adds its contact shadow; ``shadows`` (its shadow maps, for a capture style with
        shadows) darken the table where the object shadows it from the lights.
        """
        size, supersample = hits.size, hits.supersample
        rate = min(supersample, BACKDROP_SUPERSAMPLE)
        missed = hits.primitive.reshape(size, supersample, size, supersample) < 0
        pixels = np.flatnonzero(missed.any(axis=3).any(axis=1))
        grid = pixel_directions(c2w, size, rate, camera_angle_x).reshape(size, rate, size, rate, 3)
        directions = grid.transpose(0, 2, 1, 3, 4).reshape(size * size, rate * rate, 3)[pixels].reshape(-1, 3)
        colours = np.zeros((size * size, 3))
        colours[pixels] = self.colours(hits.origin, directions, shadows, scene).reshape(-1, rate * rate, 3).mean(1)
        return colours.reshape(size, size, 3)

    def colours(
        self,
        origin: np.ndarray,
        directions: np.ndarray,
        shadows: ShadowMaps | None = None,
        scene: Scene | None = None,
    ) -> np.ndarray:
        """Colour (n, 3) in [0, 1] of the backdrop along rays from ``origin`` (3,) in ``directions`` (n, 3), as if
        the object were not there (it is up to the caller to ask only for rays that miss it).

        The origin must be above the table top and inside the wall, as every camera of a hand-held capture is.
        """
        # Single precision is plenty for a backdrop within 10 units and halves the cost of the per-sample work.
        ox, oy, oz = (np.float32(value) for value in np.asarray(origin, dtype=np.float64))
        dx, dy, dz = np.ascontiguousarray(np.asarray(directions, dtype=np.float32).T)
        colours = np.empty((len(dx), 3), dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_table = (np.float32(self.ground_z) - oz) / dz
            x, y = ox + t_table * dx, oy + t_table * dy
            on_table = (dz < 0.0) & (x * x + y * y <= np.float32(TABLE_RADIUS**2))
            # From inside the wall, the far root of the ray-cylinder quadratic is the hit.
            a = dx * dx + dy * dy
            b = ox * dx + oy * dy
            c = ox * ox + oy * oy - np.float32(WALL_RADIUS**2)
            t_wall = (-b + np.sqrt(np.maximum(b * b - a * c, 0.0))) / a
            wall_z = oz + t_wall * dz
        beyond = ~on_table
        on_wall = beyond & (a > 1e-12) & (wall_z <= np.float32(self.ground_z + WALL_HEIGHT))
        table = np.flatnonzero(on_table)
        colours[table] = self._table(x[table], y[table], shadows, scene)
        wall = np.flatnonzero(on_wall)
        colours[wall] = self._wall(ox + t_wall[wall] * dx[wall], oy + t_wall[wall] * dy[wall], wall_z[wall])
        colours[beyond & ~on_wall] = CEILING_COLOUR
        return np.clip(colours, 0.0, 1.0).astype(np.float64)

    def lamp(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Brightness factor (n,) of the lamp's light on the table at (x, y): ``LAMP_RANGE`` from far to near."""
        key = LIGHTS[0][0][:2] / np.linalg.norm(LIGHTS[0][0][:2])
        lamp_x, lamp_y = LAMP_DISTANCE * key
        falloff = np.exp(-((x - lamp_x) ** 2 + (y - lamp_y) ** 2) / (2.0 * LAMP_REACH**2))
        low, high = LAMP_RANGE
        return low + (high - low) * falloff

    @cached_property
    def _lattices(self) -> np.ndarray:
        return _lattices(self.seed)

    def _table(self, x: np.ndarray, y: np.ndarray, shadows: ShadowMaps | None, scene: Scene | None) -> np.ndarray:
        """Shaded colour of table points (n,) x, y (float32)."""
        albedo = self._wood(x, y) if self.table == "wood" else self._cloth(x, y)
        light = np.full(len(x), AMBIENT, dtype=np.float32)
        for k, (direction, intensity) in enumerate(LIGHTS):
            if direction[2] <= 0.0:
                continue  # a light from below never reaches the table top
            reach = np.ones(len(x), dtype=np.float32)
            if shadows is not None:
                near = self._maybe_shadowed(x, y, direction, scene)
                points = np.stack([x[near], y[near], np.full(len(near), self.ground_z)], axis=1).astype(np.float64)
                lit = shadows.lit(points, np.tile([0.0, 0.0, 1.0], (len(near), 1)))
                reach[near] = lit[:, k]
            light += np.float32(intensity * direction[2]) * reach
        light *= self.lamp(x, y)
        if scene is not None:
            # The lights are not points: close to the object, it hides part of every one of them, too.
            light *= contact_occlusion(scene, self.ground_z).at(x, y)
        return albedo * light[:, None]

    def _maybe_shadowed(self, x: np.ndarray, y: np.ndarray, light: np.ndarray, scene: Scene | None) -> np.ndarray:
        """Indices of the table points that the object may shadow from ``light``: those inside the bounding box of
        the object's footprint and its projection along the light onto the table (a disc without ``scene``)."""
        if scene is None:
            return np.flatnonzero(x * x + y * y < np.float32(SHADOW_REACH**2))
        corners = object_corners(scene)
        cast = corners[:, :2] - ((corners[:, 2] - self.ground_z) / light[2])[:, None] * light[:2]
        reach = np.concatenate([corners[:, :2], cast])
        (x0, y0), (x1, y1) = reach.min(0) - 0.05, reach.max(0) + 0.05
        return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))

    def _wood(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Albedo of a plank table: boards of varying tone with staggered ends and dark joints, warped grain."""
        lattice = self._lattices
        board_width, board_length = np.float32(0.62), np.float32(2.9)
        across = x * np.float32(0.8) + y * np.float32(0.6)  # boards at an angle to the world axes
        along = -x * np.float32(0.6) + y * np.float32(0.8)
        board = np.floor(across / board_width)
        stagger = _hash(lattice[0], board, 0.0) * 0.5 + 0.5
        position = along / board_length + stagger
        piece = np.floor(position)
        tone = 1.0 + 0.16 * _hash(lattice[1], board, piece)
        warp = _fbm(lattice[2], across / 0.3, along / 2.0, 2)
        grain = 0.07 * np.sin(2.0 * np.pi * (across / np.float32(0.05) + 1.5 * warp))
        fine = 0.05 * _noise(lattice[3], across / np.float32(0.01), along / np.float32(0.3))
        blotch = 0.1 * _fbm(lattice[4], x / np.float32(0.6), y / np.float32(0.6), 3)
        # Knots and dark pores stretched along the grain: blobs of several sizes for feature detectors.
        knots = 0.4 * _flecks(lattice[10], across / np.float32(0.12), along / np.float32(0.4), 0.78)
        pores = 0.22 * _flecks(lattice[11], across / np.float32(0.035), along / np.float32(0.11), 0.62)
        figure = 0.1 * _noise(lattice[9], across / np.float32(0.04), along / np.float32(1.2))
        joint_across = np.minimum(across / board_width - board, board + 1 - across / board_width) * board_width
        joint_along = np.minimum(position - piece, piece + 1 - position) * board_length
        joint = np.minimum(joint_across, joint_along)
        seam = 1.0 - 0.55 * np.clip(1.0 - joint / np.float32(0.012), 0.0, 1.0)
        shade = tone * (1.0 + grain + figure + fine + blotch - knots - pores) * seam
        # Grain streaks are a little redder and darker than the board between them.
        tint = np.array([1.0, 0.97, 0.93], dtype=np.float32) ** (10.0 * grain[:, None])
        return np.asarray(self.table_colour, dtype=np.float32) * tint * shade[:, None]

    def _cloth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Albedo of a checked cloth: stripes of random widths and tones both ways, mottling, a fine weave."""
        lattice = self._lattices
        stripes = []
        for axis, coordinate in enumerate((x, y)):
            # Bands of one of three widths; the band index is found through a smooth warp so widths vary.
            band = np.floor(coordinate / np.float32(0.17) + 0.6 * _noise(lattice[5 + axis], coordinate / 1.3, 0.0))
            stripes.append(np.round(1.5 * _hash(lattice[7 + axis], band, 0.0)) / 1.5)
        check = 0.12 * (stripes[0] + stripes[1])
        mottle = 0.14 * _fbm(lattice[4], x / np.float32(0.4), y / np.float32(0.4), 3)
        weave = 0.05 * np.sin(np.float32(2.0 * np.pi / 0.03) * x) * np.sin(np.float32(2.0 * np.pi / 0.03) * y)
        fibre = 0.04 * _noise(lattice[3], x / np.float32(0.015), y / np.float32(0.015))
        # Dark and light flecks, as in a tweed: blobs of several sizes for feature detectors.
        flecks = 0.3 * _flecks(lattice[10], x / np.float32(0.05), y / np.float32(0.05), 0.6) - 0.25 * _flecks(
            lattice[11], x / np.float32(0.1), y / np.float32(0.1), 0.65
        )
        shade = 1.0 + check + mottle + weave + fibre - flecks
        # Stripes in one direction are a touch warmer, so the checks differ in hue and not only in brightness.
        tint = 1.0 + np.outer(stripes[0], np.array([0.04, 0.0, -0.04], dtype=np.float32))
        return np.asarray(self.table_colour, dtype=np.float32) * tint * shade[:, None]

    def _wall(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Shaded colour of wall points (n,) x, y, z (float32): panels, blotches, a vertical gradient.

        The noise is mapped triplanarly (noise of (y, z) and of (x, z), weighted by how squarely the wall faces
        each axis), so the texture wraps around the wall without a seam.
        """
        lattice = self._lattices
        around = np.arctan2(y, x) / np.float32(2.0 * np.pi) % np.float32(1.0)
        panel = np.floor(around * 48)
        tone = 1.0 + 0.08 * _hash(lattice[1], panel, 7)
        joint = np.minimum(around * 48 - panel, panel + 1 - around * 48)
        seam = 1.0 - 0.4 * np.clip(1.0 - joint / np.float32(0.02), 0.0, 1.0)
        facing_x = (x / np.float32(WALL_RADIUS)) ** 2
        facing_y = 1.0 - facing_x
        texture = np.zeros(len(x), dtype=np.float32)
        for weight, across in ((facing_x, y), (facing_y, x)):
            blotch = 0.14 * _fbm(lattice[6], across / np.float32(1.1), z / np.float32(1.1), 3)
            fine = 0.03 * _noise(lattice[3], across / np.float32(0.1), z / np.float32(0.1))
            texture += weight * (blotch + fine)
        relative = z - np.float32(self.ground_z)
        gradient = np.where(
            relative >= 0.0,
            0.8 + 0.25 * np.clip(relative / np.float32(WALL_HEIGHT), 0.0, 1.0),
            0.45 + 0.1 * np.exp(np.minimum(relative, 0.0)),
        )
        # Lit like the table, but the wall faces inwards: brighter where it faces a light.
        light = np.full(len(x), 0.75, dtype=np.float32)
        for direction, intensity in LIGHTS:
            facing = -(x * np.float32(direction[0]) + y * np.float32(direction[1])) / np.float32(WALL_RADIUS)
            light += np.float32(0.7 * intensity) * np.maximum(facing, 0.0)
        shade = tone * (1.0 + texture) * seam * gradient * light
        return np.asarray(self.wall_colour, dtype=np.float32) * shade[:, None]


def ground_height(scene: Scene) -> float:
    """Height of the table an object stands on: its lowest point (min z over its boxes and cylinders).

    Example:
        >>> ground_height(build_brick_animal("01Gorilla").scene())  # about -0.5 for most objects
    """
    lows = [scene.box_lo[:, 2], scene.cylinder_z[:, 0]]
    return float(min(values.min() for values in lows if len(values)))


def object_centre(scene: Scene) -> np.ndarray:
    """Centre (3,) of the object's axis-aligned bounding box (the world origin for the generator's objects)."""
    lo, hi = object_corners(scene).min(0), object_corners(scene).max(0)
    return 0.5 * (lo + hi)


def object_corners(scene: Scene) -> np.ndarray:
    """Corners (8 P, 3) of the bounding boxes of all primitives: points whose projections bound the object's."""
    cylinder_lo, cylinder_hi = _cylinder_bounds(scene)
    lo = np.concatenate([scene.box_lo, cylinder_lo]).reshape(-1, 3)
    hi = np.concatenate([scene.box_hi, cylinder_hi]).reshape(-1, 3)
    return np.stack(
        [
            np.stack([(lo, hi)[i][:, 0], (lo, hi)[j][:, 1], (lo, hi)[k][:, 2]], 1)
            for i in (0, 1)
            for j in (0, 1)
            for k in (0, 1)
        ],
        axis=1,
    ).reshape(-1, 3)


@dataclass(frozen=True)
class ContactOcclusion:
    """How much light reaches the table around an object's footprint, on a grid around the z axis."""

    factor: np.ndarray
    """(T, T) fraction of the light, 1 far from the object; rows along y, columns along x."""
    extent: float
    """The grid spans [-extent, extent] in x and y (texel centres)."""

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bilinearly interpolated factor (n,) at table points; 1 outside the grid."""
        texels = self.factor.shape[0]
        scale = (texels - 1) / (2.0 * self.extent)
        u, v = (x + self.extent) * scale, (y + self.extent) * scale
        inside = np.flatnonzero((u >= 0) & (u < texels - 1) & (v >= 0) & (v < texels - 1))
        result = np.ones(len(x), dtype=np.float32)
        u, v = u[inside], v[inside]
        i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        fu, fv = u - i, v - j
        grid = self.factor
        top = grid[j, i] * (1 - fu) + grid[j, i + 1] * fu
        bottom = grid[j + 1, i] * (1 - fu) + grid[j + 1, i + 1] * fu
        result[inside] = top * (1 - fv) + bottom * fv
        return result


_CONTACT_CACHE: OrderedDict[bytes, ContactOcclusion] = OrderedDict()
_CONTACT_CACHE_SIZE = 8


def contact_occlusion(scene: Scene, ground_z: float) -> ContactOcclusion:
    """The contact shadow of ``scene`` on a table at ``ground_z`` (cached per geometry, like the shadow maps):
    geometry close above the table darkens the light around and under it (``CONTACT_SHADOW``)."""
    key = hashlib.blake2b(_geometry_key(scene) + np.float64(ground_z).tobytes(), digest_size=16).digest()
    return cached(_CONTACT_CACHE, key, _CONTACT_CACHE_SIZE, lambda: _contact_occlusion(scene, ground_z))


def _contact_occlusion(scene: Scene, ground_z: float) -> ContactOcclusion:
    from scipy.ndimage import gaussian_filter

    texels, extent = CONTACT_TEXELS, CONTACT_EXTENT
    centres = np.linspace(-extent, extent, texels)
    texel = centres[1] - centres[0]
    # Height above the table of the lowest geometry over each texel (inf where there is none).
    lowest = np.full((texels, texels), np.inf)
    max_height = max(scale for scale, _, _ in CONTACT_SHADOW) * 6.0

    def span(lo: float, hi: float) -> slice:
        return slice(
            int(np.clip(np.ceil((lo + extent) / texel), 0, texels)),
            int(np.clip(np.floor((hi + extent) / texel) + 1, 0, texels)),
        )

    for lo, hi in zip(scene.box_lo, scene.box_hi):
        height = lo[2] - ground_z
        if height < max_height:
            rows, columns = span(lo[1], hi[1]), span(lo[0], hi[0])
            lowest[rows, columns] = np.minimum(lowest[rows, columns], height)
    for (cx, cy), (z0, _), radius in zip(scene.cylinder_xy, scene.cylinder_z, scene.cylinder_radius):
        height = z0 - ground_z
        if height < max_height:
            rows, columns = span(cy - radius, cy + radius), span(cx - radius, cx + radius)
            inside = (centres[rows, None] - cy) ** 2 + (centres[None, columns] - cx) ** 2 <= radius * radius
            lowest[rows, columns] = np.where(inside, np.minimum(lowest[rows, columns], height), lowest[rows, columns])
    factor = np.ones((texels, texels))
    for scale, radius, strength in CONTACT_SHADOW:
        cover = np.exp(-np.maximum(lowest, 0.0) / scale)
        factor -= strength * gaussian_filter(cover, sigma=radius / texel, mode="constant")
    return ContactOcclusion(factor=np.clip(factor, 0.25, 1.0), extent=extent)


@lru_cache(maxsize=8)
def _lattices(seed: int) -> np.ndarray:
    """Twelve random lattices of values in [-1, 1], float32, stored as (12, L * L, 4): per cell its own value and its
    right, lower and lower-right neighbours' (wrapping around), so that noise needs one gather per point, not four."""
    values = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(12, _LATTICE, _LATTICE)).astype(np.float32)
    right = np.roll(values, -1, axis=2)
    quads = np.stack([values, right, np.roll(values, -1, axis=1), np.roll(right, -1, axis=1)], axis=-1)
    return quads.reshape(len(values), _LATTICE * _LATTICE, 4)


def _hash(lattice: np.ndarray, i: np.ndarray, j) -> np.ndarray:
    """A random value in [-1, 1] per integer lattice coordinate (i, j) (any integers; they wrap around)."""
    mask = _LATTICE - 1
    row = (np.asarray(j).astype(np.int64) & mask) * _LATTICE
    return np.take(lattice[:, 0], row + (np.asarray(i).astype(np.int64) & mask))


def _noise(lattice: np.ndarray, u: np.ndarray, v) -> np.ndarray:
    """Smooth value noise in [-1, 1] at lattice coordinates (u, v): smoothstep interpolation of the lattice values.

    It repeats every ``_LATTICE`` cells; the octaves and layers built on it have different scales, so their sum
    does not.
    """
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    mask = _LATTICE - 1
    index = (iv.astype(np.int64) & mask) * _LATTICE + (iu.astype(np.int64) & mask)
    # np.take along an axis gathers whole rows and is much faster than fancy indexing here.
    a, b, c, d = np.take(lattice, index, axis=0).T
    su = fu * fu * (3.0 - 2.0 * fu)
    sv = fv * fv * (3.0 - 2.0 * fv)
    top = a + (b - a) * su
    return top + (c + (d - c) * su - top) * sv


def _flecks(lattice: np.ndarray, u: np.ndarray, v: np.ndarray, threshold: float) -> np.ndarray:
    """Isolated soft spots in [0, 1], about one lattice cell across, where the value noise exceeds ``threshold``."""
    return np.clip((_noise(lattice, u, v) - threshold) * (3.0 / (1.0 - threshold)), 0.0, 1.0)


_OCTAVE_ROTATIONS = [(np.float32(np.cos(angle)), np.float32(np.sin(angle))) for angle in (0.0, 0.61, 1.37, 2.11)]


def _fbm(lattice: np.ndarray, u: np.ndarray, v: np.ndarray, octaves: int) -> np.ndarray:
    """Fractal sum of ``octaves`` of value noise, each twice as fine and half as strong and turned against the last
    so that the lattice's axes do not show; normalised to about [-1, 1]."""
    total = np.zeros(np.shape(u), dtype=np.float32)
    weight = 0.0
    for octave in range(octaves):
        cos, sin = _OCTAVE_ROTATIONS[octave % len(_OCTAVE_ROTATIONS)]
        scale = np.float32(2.0**octave)
        amplitude = 0.5**octave
        total += amplitude * _noise(lattice, (u * cos - v * sin) * scale + 17.0 * octave, (u * sin + v * cos) * scale)
        weight += amplitude
    return total / np.float32(weight)
