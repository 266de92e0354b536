"""Analytic, vectorised ray casting of brick scenes made of axis-aligned boxes and vertical cylinders. Instead of
testing every ray against every primitive, each primitive is tested only against the supersamples inside its
projected screen rectangle, so the cost follows the object's screen area rather than rays x primitives; the nearest
hit per sample is then shaded (Lambertian, two fixed world-space lights plus ambient, thin dark seams at face edges;
optionally Blinn-Phong gloss and cast shadows, see :class:`Shading`) and the samples of each pixel are averaged for
anti-aliasing. Shadows come from one shadow map per light, traced by the same ray caster from a distant, narrow
camera looking along the light (nearly orthographic); as the lights are fixed in the world, a scene's maps serve
every view of it and are cached by geometry. Samples that miss the scene show a white background or a
:class:`~pad_nerfstudio.synth.backdrop.Backdrop` (table and wall). Everything is plain numpy and deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pad_nerfstudio.synth.cameras import CAMERA_ANGLE_X, focal_length, look_at, pixel_directions

if TYPE_CHECKING:
    from pad_nerfstudio.synth.backdrop import Backdrop

NO_PART = -1
"""Part label of background samples."""

AMBIENT = 0.38
# Two lights from opposite octants so that all six face orientations get distinct, non-dark shades, also from below.
LIGHTS = (
    (np.array([0.55, 0.25, 0.8]) / np.linalg.norm([0.55, 0.25, 0.8]), 0.58),
    (np.array([-0.3, -0.75, -0.6]) / np.linalg.norm([-0.3, -0.75, -0.6]), 0.34),
)
EDGE_WIDTH_PX = 0.7
"""Width of the darkened seam along face edges, in pixels at the hit's depth (so seams look alike at any size)."""
EDGE_DARKENING = 0.45
MAX_PAIRS_PER_CHUNK = 1 << 20
"""Bounds memory: ray-primitive candidate pairs are processed in chunks of at most this many."""
GLOSS_STRENGTH = 0.4
"""Peak of the white highlight of the key (first) light; the other light's highlight scales with its intensity."""
GLOSS_EXPONENT = 45.0
"""Blinn-Phong exponent: small, sharp highlights as on moulded plastic."""
SHADOW_MAP_SIZE = 320
"""Shadow map resolution per light, in texels per side over the framed object (~130 texels per world unit)."""
SHADOW_DISTANCE = 60.0
"""Distance of the shadow cameras from the origin; rays within a map diverge by at most 1.4 degrees."""
SHADOW_FRAME_RADIUS = 1.45
"""Radius of the sphere the shadow maps frame: the object (radius 1.1) plus room for burrs."""
SHADOW_BIAS_TEXELS = (1.0, 1.5)
"""Depth bias against self-shadowing ("acne"): constant plus slope term, both in texels at the hit's depth."""
SHADOW_MAX_SLOPE = 6.0
"""Cap of the slope term (surfaces nearly parallel to a light get almost no light from it anyway)."""


@dataclass(frozen=True)
class Shading:
    """Optional terms of the light model on top of the Lambertian base (ambient + diffuse of ``LIGHTS``, seams).

    Example:
        >>> image = render(scene, c2w, 64, shading=Shading(gloss=True, shadows=True))
    """

    gloss: bool = False
    """Blinn-Phong specular highlights, white, from the same lights."""
    shadows: bool = False
    """Cast shadows: a hit that a light does not reach loses that light's diffuse and specular terms."""

    def shadow_maps(self, scene: Scene) -> ShadowMaps | None:
        """What :func:`trace` needs for this shading: the scene's shadow maps, or None without shadows."""
        return shadow_maps(scene) if self.shadows else None


LAMBERTIAN = Shading()
"""The plain light model (no gloss, no shadows)."""


@dataclass(frozen=True)
class Scene:
    """Renderable primitives in world units. Every primitive carries a colour and an integer part label
    (the brick index for bricks and their studs, negative labels for defect geometry)."""

    box_lo: np.ndarray
    """(B, 3) minimum corners of the axis-aligned boxes."""
    box_hi: np.ndarray
    """(B, 3) maximum corners."""
    box_colour: np.ndarray
    """(B, 3) RGB albedo in [0, 1]."""
    box_part: np.ndarray
    """(B,) part labels."""
    cylinder_xy: np.ndarray
    """(C, 2) axis position of the vertical cylinders."""
    cylinder_z: np.ndarray
    """(C, 2) bottom and top heights."""
    cylinder_radius: np.ndarray
    """(C,) radii."""
    cylinder_colour: np.ndarray
    """(C, 3) RGB albedo."""
    cylinder_part: np.ndarray
    """(C,) part labels."""

    @property
    def num_boxes(self) -> int:
        return len(self.box_lo)

    @property
    def colours(self) -> np.ndarray:
        """Albedo of all primitives, boxes first, indexed like the primitive ids of :class:`Hits`."""
        return np.concatenate([self.box_colour, self.cylinder_colour]).reshape(-1, 3)

    @property
    def parts(self) -> np.ndarray:
        """Part label of all primitives, boxes first."""
        return np.concatenate([self.box_part, self.cylinder_part]).astype(np.int64)

    def with_boxes(self, lo: np.ndarray, hi: np.ndarray, colour: np.ndarray, part: np.ndarray) -> Scene:
        """A copy of the scene with extra boxes appended (used to attach defect geometry)."""
        return Scene(
            box_lo=np.concatenate([self.box_lo, lo]).reshape(-1, 3),
            box_hi=np.concatenate([self.box_hi, hi]).reshape(-1, 3),
            box_colour=np.concatenate([self.box_colour, colour]).reshape(-1, 3),
            box_part=np.concatenate([self.box_part, part]).astype(np.int64),
            cylinder_xy=self.cylinder_xy,
            cylinder_z=self.cylinder_z,
            cylinder_radius=self.cylinder_radius,
            cylinder_colour=self.cylinder_colour,
            cylinder_part=self.cylinder_part,
        )


@dataclass
class Hits:
    """Nearest surface per supersample of one view.

    Per-sample arrays cover the whole ``(size * supersample) ** 2`` sample grid in row-major order; per-hit arrays
    are compact, one row per sample that hit something (``index`` says which), because objects cover a small part
    of the frame and shading the background would be wasted work.
    """

    size: int
    supersample: int
    focal: float
    origin: np.ndarray
    """(3,) camera centre."""
    depth: np.ndarray
    """(N,) depth of the hit per sample (inf for background)."""
    primitive: np.ndarray
    """(N,) primitive id per sample, boxes first (-1 for background)."""
    part: np.ndarray
    """(N,) part label per sample (NO_PART for background)."""
    index: np.ndarray
    """(M,) ascending sample indices of the hits."""
    albedo: np.ndarray
    """(M, 3) colour of the hit primitive."""
    points: np.ndarray
    """(M, 3) world hit points."""
    normals: np.ndarray
    """(M, 3) outward unit normals."""
    edge_distance: np.ndarray
    """(M,) world distance from the hit to the nearest edge of its face."""
    lit: np.ndarray | None = None
    """(M, L) fraction of each of the ``LIGHTS`` that reaches the hit (None when traced without shadows)."""

    @property
    def hit(self) -> np.ndarray:
        """(N,) bool: the sample sees a surface."""
        return self.primitive >= 0

    @property
    def hit_part(self) -> np.ndarray:
        """(M,) part label of each hit."""
        return self.part[self.index]

    def scatter(self, values: np.ndarray, fill: float = 1.0) -> np.ndarray:
        """Per-hit values (M, ...) -> per-sample array (N, ...) with ``fill`` for background samples."""
        full = np.full((len(self.depth), *values.shape[1:]), fill, dtype=np.result_type(values, type(fill)))
        full[self.index] = values
        return full


def trace(
    scene: Scene,
    c2w: np.ndarray,
    size: int,
    supersample: int = 3,
    camera_angle_x: float = CAMERA_ANGLE_X,
    shadows: ShadowMaps | None = None,
) -> Hits:
    """Cast a ``supersample`` x ``supersample`` grid of rays per pixel of a ``size`` x ``size`` view into ``scene``.

    With ``shadows`` (the scene's :func:`shadow_maps`), the hits also get ``lit``: how much of each light reaches
    them past the scene's own geometry.

    Example:
        >>> hits = trace(scene, look_at(np.array([4.0, 0.0, 0.0])), 64, supersample=2)
        >>> image = compose(hits, shade(hits))
    """
    focal = focal_length(size, camera_angle_x)
    origin = np.asarray(c2w[:3, 3], dtype=np.float64)
    samples = size * supersample
    n = samples * samples
    cylinder_lo, cylinder_hi = _cylinder_bounds(scene)
    box_rects = _screen_rects(scene.box_lo, scene.box_hi, c2w, size, supersample, focal)
    cylinder_rects = _screen_rects(cylinder_lo, cylinder_hi, c2w, size, supersample, focal)

    depth = np.full(n, np.inf)
    primitive = np.full(n, -1, dtype=np.int64)
    all_rects = np.concatenate([box_rects, cylinder_rects])
    all_rects = all_rects[(all_rects[:, 1] > all_rects[:, 0]) & (all_rects[:, 3] > all_rects[:, 2])]
    if len(all_rects):
        # Only the window spanned by the primitives' rectangles needs rays.
        u0, u1 = all_rects[:, 0].min(), all_rects[:, 1].max()
        v0, v1 = all_rects[:, 2].min(), all_rects[:, 3].max()
        directions = pixel_directions(c2w, size, supersample, camera_angle_x, window=(u0, u1, v0, v1))
        columns = np.ascontiguousarray(directions.T)
        window_width = u1 - u0
        hit_rays, hit_depths, hit_prims = [], [], []
        for rects, kernel, per_sample, offset in (
            (box_rects, _intersect_boxes, 1.0 / columns, 0),
            (cylinder_rects, _intersect_cylinders, columns, scene.num_boxes),
        ):
            rects = rects - np.array([u0, u0, v0, v0])
            for prims, rays in _candidate_pairs(rects, window_width):
                found = kernel(scene, prims, origin, per_sample[:, rays])
                ok = np.isfinite(found)
                hit_rays.append(rays[ok])
                hit_depths.append(found[ok])
                hit_prims.append(prims[ok] + offset)
        rays, depths, prims = np.concatenate(hit_rays), np.concatenate(hit_depths), np.concatenate(hit_prims)
        window_depth = np.full(len(directions), np.inf)
        np.minimum.at(window_depth, rays, depths)
        # Coplanar faces can tie; taking the largest id keeps the choice independent of evaluation order.
        nearest = depths == window_depth[rays]
        window_primitive = np.full(len(directions), -1, dtype=np.int64)
        np.maximum.at(window_primitive, rays[nearest], prims[nearest])
        local = np.flatnonzero(window_primitive >= 0)
        index = (local // window_width + v0) * samples + local % window_width + u0
        depth[index] = window_depth[local]
        primitive[index] = window_primitive[local]
        hit_directions = directions[local]
    else:
        index = np.zeros(0, dtype=np.int64)
        hit_directions = np.zeros((0, 3))

    part = np.full(n, NO_PART, dtype=np.int64)
    hit_primitive = primitive[index]
    part[index] = scene.parts[hit_primitive]
    points = origin + depth[index, None] * hit_directions
    normals, edge = _surface_frames(scene, hit_primitive, points)
    return Hits(
        size,
        supersample,
        focal,
        origin,
        depth,
        primitive,
        part,
        index,
        scene.colours[hit_primitive],
        points,
        normals,
        edge,
        None if shadows is None else shadows.lit(points, normals),
    )


def shade(hits: Hits, albedo: np.ndarray | None = None, gloss: bool = False) -> np.ndarray:
    """Colour of every hit, (M, 3) in [0, 1]: Lambertian, plus white Blinn-Phong highlights with ``gloss``.

    ``albedo`` (M, 3) replaces the primitives' colours (this is how stains recolour the surface without geometry).
    Lights are attenuated by ``hits.lit`` when the hits were traced with shadows.
    """
    albedo = hits.albedo if albedo is None else albedo
    light = np.full(len(hits.index), AMBIENT)
    specular = np.zeros(len(hits.index)) if gloss else None
    if gloss:
        # With unit n, v and l, the Blinn-Phong n.h is (n.v + n.l) / |v + l| and |v + l|^2 = 2 + 2 v.l.
        to_camera = hits.origin - hits.points
        to_camera /= np.sqrt(np.einsum("ij,ij->i", to_camera, to_camera))[:, None]
        normal_view = np.einsum("ij,ij->i", hits.normals, to_camera)
    for k, (direction, intensity) in enumerate(LIGHTS):
        cosine = hits.normals @ direction
        weight = intensity if hits.lit is None else intensity * hits.lit[:, k]
        light += weight * np.maximum(cosine, 0.0)
        if gloss:
            facing = np.flatnonzero(cosine > 0.0)
            halfway_length = np.sqrt(np.maximum(2.0 + 2.0 * (to_camera[facing] @ direction), 1e-12))
            highlight = np.maximum((normal_view[facing] + cosine[facing]) / halfway_length, 0.0) ** GLOSS_EXPONENT
            specular[facing] += (
                (GLOSS_STRENGTH / LIGHTS[0][1]) * highlight * (weight if np.isscalar(weight) else weight[facing])
            )
    seam_width = EDGE_WIDTH_PX * hits.depth[hits.index] / hits.focal
    seam = 1.0 - EDGE_DARKENING * (1.0 - np.clip(hits.edge_distance / seam_width, 0.0, 1.0))
    light *= seam
    colour = albedo * light[:, None]
    if gloss:
        # The highlight is reflected, not absorbed: white whatever the albedo; seams are grooves and stay dark.
        colour = colour + (specular * seam)[:, None]
    return np.clip(colour, 0.0, 1.0)


def compose(hits: Hits, colours: np.ndarray, background: float | np.ndarray = 1.0) -> np.ndarray:
    """Average the hits' colours (M, C) and the background over each pixel's samples -> (size, size, C) image.

    ``background`` is what the samples that miss the scene see: one value for every channel, per-pixel colours
    (size, size, C) such as :meth:`~pad_nerfstudio.synth.backdrop.Backdrop.background` gives, or per-sample colours
    (N, C) (their values at hits are unused).
    """
    colours = np.asarray(colours, dtype=np.float64).reshape(len(hits.index), -1)
    if np.ndim(background) == 2:
        samples = np.array(background, dtype=np.float64).reshape(len(hits.primitive), -1)
        samples[hits.index] = colours
        return resolve(samples, hits.size, hits.supersample)
    if np.ndim(background) == 3:
        background = np.asarray(background, dtype=np.float64).reshape(hits.size * hits.size, -1)
    samples = hits.size * hits.supersample
    row, column = np.divmod(hits.index, samples)
    pixel = (row // hits.supersample) * hits.size + column // hits.supersample
    per_pixel = hits.supersample * hits.supersample
    count = np.bincount(pixel, minlength=hits.size * hits.size)
    channels = [
        np.bincount(pixel, weights=colours[:, k], minlength=hits.size * hits.size)
        + (per_pixel - count) * (background if np.ndim(background) == 0 else background[:, k])
        for k in range(colours.shape[1])
    ]
    return (np.stack(channels, axis=1) / per_pixel).reshape(hits.size, hits.size, colours.shape[1])


def resolve(values: np.ndarray, size: int, supersample: int) -> np.ndarray:
    """Average per-sample values (N,) or (N, C) over each pixel's samples -> (size, size) or (size, size, C)."""
    values = np.asarray(values, dtype=np.float64)
    grid = values.reshape(size, supersample, size, supersample, *values.shape[1:])
    return grid.sum(axis=3).sum(axis=1) / (supersample * supersample)


def render(
    scene: Scene,
    c2w: np.ndarray,
    size: int,
    supersample: int = 3,
    camera_angle_x: float = CAMERA_ANGLE_X,
    shading: Shading = LAMBERTIAN,
    backdrop: Backdrop | None = None,
) -> np.ndarray:
    """Anti-aliased RGB image (size, size, 3) in [0, 1] of ``scene`` seen from camera-to-world pose ``c2w``.

    The background is white, or ``backdrop`` (which receives the scene's contact shadow, and its cast shadows when
    ``shading`` has them).
    """
    shadows = shading.shadow_maps(scene)
    hits = trace(scene, c2w, size, supersample, camera_angle_x, shadows=shadows)
    return compose(
        hits, shade(hits, gloss=shading.gloss), background_for(hits, c2w, camera_angle_x, backdrop, scene, shadows)
    )


def background_for(
    hits: Hits,
    c2w: np.ndarray,
    camera_angle_x: float,
    backdrop: Backdrop | None,
    scene: Scene,
    shadows: ShadowMaps | None,
) -> float | np.ndarray:
    """The ``background`` argument of :func:`compose` for a view of ``scene``: white without ``backdrop``, else the
    backdrop's colours with the scene's contact shadow, and its cast shadows when it was traced with ``shadows``."""
    if backdrop is None:
        return 1.0
    return backdrop.background(hits, c2w, camera_angle_x, shadows, scene)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 8-bit with rounding (what gets written to PNG)."""
    return np.clip(np.floor(image * 255.0 + 0.5), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ShadowMaps:
    """Depth of a scene seen from each of the ``LIGHTS`` by a distant, narrow (nearly orthographic) camera.

    A point is shadowed from a light when its depth along that light's camera exceeds the depth stored for its texel
    by more than a bias. Build with :func:`shadow_maps`; a defect's maps are derived from the intact object's with
    :meth:`with_boxes` and :meth:`without_part`, which retrace only what changed and give the same maps as tracing
    the defective scene from scratch.
    """

    c2w: np.ndarray
    """(L, 4, 4) camera-to-world of the shadow cameras, one per light, looking at the origin against the light."""
    camera_angle: float
    """Field of view of the shadow cameras (radians), framing a sphere of ``SHADOW_FRAME_RADIUS``."""
    depth: np.ndarray
    """(L, S, S) depth of the nearest surface per texel (inf where the light passes the object)."""
    part: np.ndarray
    """(L, S, S) part label of that surface (``NO_PART`` where there is none)."""

    @property
    def size(self) -> int:
        return self.depth.shape[1]

    @property
    def focal(self) -> float:
        return focal_length(self.size, self.camera_angle)

    def lit(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """(M, L) fraction of each light reaching the points (M, 3), filtered over the 2 x 2 nearest texels.

        A surface facing away from a light is in its own shadow (0). The bias grows with the slope of the surface
        (from ``normals``) because a texel covers a longer depth range on a surface seen at a grazing angle.
        """
        size, focal = self.size, self.focal
        lit = np.zeros((len(points), len(LIGHTS)))
        constant, per_slope = SHADOW_BIAS_TEXELS
        for k, ((direction, _), c2w) in enumerate(zip(LIGHTS, self.c2w)):
            cosine = normals @ direction
            facing = np.flatnonzero(cosine > 0.0)
            camera = (points[facing] - c2w[:3, 3]) @ c2w[:3, :3]
            depth = -camera[:, 2]
            # Continuous texel coordinates with texel centres on integers.
            x = 0.5 * size - 0.5 + (focal * camera[:, 0]) / depth
            y = 0.5 * size - 0.5 - (focal * camera[:, 1]) / depth
            cosine = np.clip(cosine[facing], 1e-3, 1.0)
            slope = np.minimum(np.sqrt(1.0 - cosine * cosine) / cosine, SHADOW_MAX_SLOPE)
            reached = depth - depth / focal * (constant + per_slope * slope)
            x0, y0 = np.floor(x), np.floor(y)
            fx, fy = x - x0, y - y0
            # Through a border of inf, the texels of a point just off the map see nothing in the way; points farther
            # off (none: the maps frame the whole object) count as lit.
            stored = np.pad(self.depth[k], 1, constant_values=np.inf).ravel()
            stride = size + 2
            on_map = (x0 >= -1) & (x0 < size) & (y0 >= -1) & (y0 < size)
            row = (np.clip(y0, -1, size - 1) + 1).astype(np.int64)
            column = (np.clip(x0, -1, size - 1) + 1).astype(np.int64)
            top_left = row * stride + column
            clear = [reached <= stored[top_left + offset] for offset in (0, 1, stride, stride + 1)]
            filtered = (1.0 - fy) * ((1.0 - fx) * clear[0] + fx * clear[1]) + fy * (
                (1.0 - fx) * clear[2] + fx * clear[3]
            )
            lit[facing, k] = np.where(on_map, filtered, 1.0)
        return lit

    def with_boxes(self, lo: np.ndarray, hi: np.ndarray, part: np.ndarray) -> ShadowMaps:
        """The maps after adding boxes (like :meth:`Scene.with_boxes`): only the new boxes are traced."""
        lo = np.asarray(lo, dtype=np.float64).reshape(-1, 3)
        added = Scene(
            box_lo=lo,
            box_hi=np.asarray(hi, dtype=np.float64).reshape(-1, 3),
            box_colour=np.zeros_like(lo),
            box_part=np.asarray(part, dtype=np.int64),
            cylinder_xy=np.zeros((0, 2)),
            cylinder_z=np.zeros((0, 2)),
            cylinder_radius=np.zeros(0),
            cylinder_colour=np.zeros((0, 3)),
            cylinder_part=np.zeros(0, dtype=np.int64),
        )
        depth, parts = self.depth.copy(), self.part.copy()
        for k, c2w in enumerate(self.c2w):
            hits = trace(added, c2w, self.size, 1, self.camera_angle)
            # Ties keep the existing surface; the depth is the same either way.
            nearer = hits.depth.reshape(self.size, self.size) < depth[k]
            depth[k][nearer] = hits.depth.reshape(self.size, self.size)[nearer]
            parts[k][nearer] = hits.part.reshape(self.size, self.size)[nearer]
        return dataclasses.replace(self, depth=depth, part=parts)

    def without_part(self, scene: Scene, part: int) -> ShadowMaps:
        """The maps of ``scene``: these maps' scene without the primitives of ``part`` (plus, at most, geometry that
        was hidden inside them, like the studs a removed brick covered).

        Only texels whose nearest surface was ``part`` can change; they are retraced against the primitives whose
        projection overlaps them.
        """
        depth, parts = self.depth.copy(), self.part.copy()
        cylinder_lo, cylinder_hi = _cylinder_bounds(scene)
        for k, c2w in enumerate(self.c2w):
            stale = self.part[k] == part
            if not stale.any():
                continue
            rows, columns = np.nonzero(stale)
            u0, u1, v0, v1 = columns.min(), columns.max() + 1, rows.min(), rows.max() + 1
            rects = np.concatenate(
                [
                    _screen_rects(scene.box_lo, scene.box_hi, c2w, self.size, 1, self.focal),
                    _screen_rects(cylinder_lo, cylinder_hi, c2w, self.size, 1, self.focal),
                ]
            )
            overlapping = (rects[:, 0] < u1) & (rects[:, 1] > u0) & (rects[:, 2] < v1) & (rects[:, 3] > v0)
            nearby = _subset(scene, overlapping[: scene.num_boxes], overlapping[scene.num_boxes :])
            hits = trace(nearby, c2w, self.size, 1, self.camera_angle)
            depth[k][stale] = hits.depth.reshape(self.size, self.size)[stale]
            parts[k][stale] = hits.part.reshape(self.size, self.size)[stale]
        return dataclasses.replace(self, depth=depth, part=parts)


_SHADOW_CACHE: OrderedDict[bytes, ShadowMaps] = OrderedDict()
_SHADOW_CACHE_SIZE = 8


def shadow_maps(scene: Scene) -> ShadowMaps:
    """The shadow maps of ``scene``, traced once per distinct geometry (a process-wide cache of a few scenes: the
    lights are fixed in the world, so every view of an object shares them).

    Example:
        >>> hits = trace(scene, c2w, 64, shadows=shadow_maps(scene))
        >>> hits.lit  # (M, 2) fraction of each light reaching the hits
    """
    return cached(_SHADOW_CACHE, _geometry_key(scene), _SHADOW_CACHE_SIZE, lambda: _trace_shadow_maps(scene))


def cached(cache: OrderedDict, key: bytes, size: int, build):
    """``cache[key]``, built with ``build()`` when missing; the least recently used of more than ``size`` entries
    is dropped (the per-geometry caches of shadow maps and contact shadows)."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = build()
        if len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def _trace_shadow_maps(scene: Scene) -> ShadowMaps:
    angle = 2.0 * np.arcsin(SHADOW_FRAME_RADIUS / SHADOW_DISTANCE)
    c2ws = np.stack([look_at(SHADOW_DISTANCE * direction) for direction, _ in LIGHTS])
    traced = [trace(scene, c2w, SHADOW_MAP_SIZE, 1, angle) for c2w in c2ws]
    shape = (len(LIGHTS), SHADOW_MAP_SIZE, SHADOW_MAP_SIZE)
    return ShadowMaps(
        c2w=c2ws,
        camera_angle=float(angle),
        depth=np.stack([hits.depth for hits in traced]).reshape(shape),
        part=np.stack([hits.part for hits in traced]).reshape(shape),
    )


def _geometry_key(scene: Scene) -> bytes:
    """Digest of the primitives' geometry and parts (colours cast the same shadows)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (
        scene.box_lo,
        scene.box_hi,
        scene.box_part,
        scene.cylinder_xy,
        scene.cylinder_z,
        scene.cylinder_radius,
        scene.cylinder_part,
    ):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()


def _subset(scene: Scene, boxes: np.ndarray, cylinders: np.ndarray) -> Scene:
    """The scene with only the boxes and cylinders selected by the boolean masks."""
    return Scene(
        box_lo=scene.box_lo[boxes],
        box_hi=scene.box_hi[boxes],
        box_colour=scene.box_colour[boxes],
        box_part=scene.box_part[boxes],
        cylinder_xy=scene.cylinder_xy[cylinders],
        cylinder_z=scene.cylinder_z[cylinders],
        cylinder_radius=scene.cylinder_radius[cylinders],
        cylinder_colour=scene.cylinder_colour[cylinders],
        cylinder_part=scene.cylinder_part[cylinders],
    )


def _cylinder_bounds(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding boxes (C, 3) lo and hi of the cylinders."""
    lo = np.concatenate([scene.cylinder_xy - scene.cylinder_radius[:, None], scene.cylinder_z[:, :1]], 1)
    hi = np.concatenate([scene.cylinder_xy + scene.cylinder_radius[:, None], scene.cylinder_z[:, 1:]], 1)
    return lo, hi


def _screen_rects(
    lo: np.ndarray, hi: np.ndarray, c2w: np.ndarray, size: int, supersample: int, focal: float
) -> np.ndarray:
    """Conservative sample-grid rectangles [u0, u1) x [v0, v1) covering each primitive's bounding box, (P, 4)."""
    corners = np.stack(
        [
            np.stack([(lo, hi)[i][:, 0], (lo, hi)[j][:, 1], (lo, hi)[k][:, 2]], axis=1)
            for i in (0, 1)
            for j in (0, 1)
            for k in (0, 1)
        ],
        axis=1,
    )
    camera = (corners - c2w[:3, 3]) @ c2w[:3, :3]
    depth = -camera[..., 2]
    samples = size * supersample
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (0.5 * size + focal * camera[..., 0] / depth) * supersample - 0.5
        v = (0.5 * size - focal * camera[..., 1] / depth) * supersample - 0.5
    rects = np.stack(
        [np.floor(u.min(1)) - 1, np.ceil(u.max(1)) + 2, np.floor(v.min(1)) - 1, np.ceil(v.max(1)) + 2], axis=1
    )
    # A primitive reaching behind the camera has no meaningful projection: test it against every sample.
    behind = (depth <= 1e-6).any(1)
    rects[behind] = [0, samples, 0, samples]
    return np.clip(np.nan_to_num(rects), 0, samples).astype(np.int64)


def _candidate_pairs(rects: np.ndarray, row_length: int):
    """Yield (primitive index, flat sample index) arrays for every sample inside every primitive's rectangle."""
    widths = rects[:, 1] - rects[:, 0]
    heights = rects[:, 3] - rects[:, 2]
    areas = np.maximum(widths, 0) * np.maximum(heights, 0)
    start = 0
    while start < len(rects):
        cumulative = np.cumsum(areas[start:])
        stop = start + max(1, int(np.searchsorted(cumulative, MAX_PAIRS_PER_CHUNK, side="right")))
        prims = np.arange(start, stop)
        counts = areas[start:stop]
        total = int(counts.sum())
        if total:
            pair_prims = np.repeat(prims, counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            local = np.arange(total) - first
            width = widths[pair_prims]
            u = rects[pair_prims, 0] + local % width
            v = rects[pair_prims, 2] + local // width
            yield pair_prims, v * row_length + u
        start = stop


def _intersect_boxes(scene: Scene, prims: np.ndarray, origin: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Slab test; depth of the entry point per pair, inf on a miss. The camera is always outside the object.

    ``inverse`` holds (3, n) inverse direction components; working axis by axis on 1-D arrays is several times
    faster in numpy than reducing over a trailing axis of length 3.
    """
    near = far = None
    for axis in range(3):
        t0 = (scene.box_lo[:, axis] - origin[axis])[prims] * inverse[axis]
        t1 = (scene.box_hi[:, axis] - origin[axis])[prims] * inverse[axis]
        entry, exit_ = np.minimum(t0, t1), np.maximum(t0, t1)
        near = entry if near is None else np.maximum(near, entry)
        far = exit_ if far is None else np.minimum(far, exit_)
    return np.where((near <= far) & (near > 0.0), near, np.inf)


def _intersect_cylinders(scene: Scene, prims: np.ndarray, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Vertical capped cylinders: nearest of the side and the cap facing the ray, inf on a miss.

    ``directions`` holds (3, n) direction components.
    """
    dx, dy, dz = directions
    ox = origin[0] - scene.cylinder_xy[prims, 0]
    oy = origin[1] - scene.cylinder_xy[prims, 1]
    radius = scene.cylinder_radius[prims]
    z0, z1 = scene.cylinder_z[prims, 0], scene.cylinder_z[prims, 1]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    discriminant = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(discriminant, 0.0))) / a
        z_side = origin[2] + t_side * dz
        side = (discriminant >= 0.0) & (a > 1e-18) & (t_side > 0.0) & (z_side >= z0) & (z_side <= z1)
        t_cap = np.where(dz < 0.0, z1 - origin[2], z0 - origin[2]) / dz
        x_cap, y_cap = ox + t_cap * dx, oy + t_cap * dy
        cap = (t_cap > 0.0) & (x_cap * x_cap + y_cap * y_cap <= radius * radius)
    depth = np.where(side, t_side, np.inf)
    return np.where(cap & (t_cap < depth), t_cap, depth)


def _surface_frames(scene: Scene, primitive: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward normals (M, 3) and distances to the nearest face edge (M,) of hits, recomputed from the hit points."""
    normals = np.zeros_like(points)
    edge = np.zeros(len(points))
    boxes = np.flatnonzero(primitive < scene.num_boxes)
    if len(boxes):
        box = primitive[boxes]
        p = points[boxes]
        lo, hi = scene.box_lo[box], scene.box_hi[box]
        relative = (p - 0.5 * (lo + hi)) / np.maximum(0.5 * (hi - lo), 1e-12)
        axis = np.abs(relative).argmax(axis=1)
        rows = np.arange(len(box))
        normal = np.zeros_like(p)
        normal[rows, axis] = np.sign(relative[rows, axis])
        to_edge = np.minimum(p - lo, hi - p)
        to_edge[rows, axis] = np.inf
        normals[boxes] = normal
        edge[boxes] = np.minimum(np.minimum(to_edge[:, 0], to_edge[:, 1]), to_edge[:, 2])
    cylinders = np.flatnonzero(primitive >= scene.num_boxes)
    if len(cylinders):
        cylinder = primitive[cylinders] - scene.num_boxes
        p = points[cylinders]
        radial = p[:, :2] - scene.cylinder_xy[cylinder]
        radial_distance = np.sqrt(radial[:, 0] ** 2 + radial[:, 1] ** 2)
        z0, z1 = scene.cylinder_z[cylinder, 0], scene.cylinder_z[cylinder, 1]
        on_top = np.abs(p[:, 2] - z1) < 1e-7
        on_bottom = np.abs(p[:, 2] - z0) < 1e-7
        normal = np.zeros_like(p)
        normal[:, :2] = radial / np.maximum(radial_distance, 1e-12)[:, None]
        normal[on_top] = [0.0, 0.0, 1.0]
        normal[on_bottom] = [0.0, 0.0, -1.0]
        normals[cylinders] = normal
        edge[cylinders] = np.where(
            on_top | on_bottom,
            scene.cylinder_radius[cylinder] - radial_distance,
            np.minimum(p[:, 2] - z0, z1 - p[:, 2]),
        )
    return normals, edge
