"""Analytic, vectorised ray casting of brick scenes made of axis-aligned boxes and vertical cylinders. Instead of
testing every ray against every primitive, each primitive is tested only against the supersamples inside its
projected screen rectangle, so the cost follows the object's screen area rather than rays x primitives; the nearest
hit per sample is then shaded (Lambertian, two fixed world-space lights plus ambient, thin dark seams at face edges)
and the samples of each pixel are averaged for anti-aliasing. Everything is plain numpy and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pad_nerfstudio.synth.cameras import CAMERA_ANGLE_X, focal_length, pixel_directions

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
    scene: Scene, c2w: np.ndarray, size: int, supersample: int = 3, camera_angle_x: float = CAMERA_ANGLE_X
) -> Hits:
    """Cast a ``supersample`` x ``supersample`` grid of rays per pixel of a ``size`` x ``size`` view into ``scene``.

    Example:
        >>> hits = trace(scene, look_at(np.array([4.0, 0.0, 0.0])), 64, supersample=2)
        >>> image = compose(hits, shade(hits))
    """
    focal = focal_length(size, camera_angle_x)
    origin = np.asarray(c2w[:3, 3], dtype=np.float64)
    samples = size * supersample
    n = samples * samples
    cylinder_lo = np.concatenate([scene.cylinder_xy - scene.cylinder_radius[:, None], scene.cylinder_z[:, :1]], 1)
    cylinder_hi = np.concatenate([scene.cylinder_xy + scene.cylinder_radius[:, None], scene.cylinder_z[:, 1:]], 1)
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
    )


def shade(hits: Hits, albedo: np.ndarray | None = None) -> np.ndarray:
    """Lambertian colour of every hit, (M, 3) in [0, 1].

    ``albedo`` (M, 3) replaces the primitives' colours (this is how stains recolour the surface without geometry).
    """
    albedo = hits.albedo if albedo is None else albedo
    light = np.full(len(hits.index), AMBIENT)
    for direction, intensity in LIGHTS:
        light += intensity * np.maximum(hits.normals @ direction, 0.0)
    seam_width = EDGE_WIDTH_PX * hits.depth[hits.index] / hits.focal
    light *= 1.0 - EDGE_DARKENING * (1.0 - np.clip(hits.edge_distance / seam_width, 0.0, 1.0))
    return np.clip(albedo * light[:, None], 0.0, 1.0)


def compose(hits: Hits, colours: np.ndarray, background: float = 1.0) -> np.ndarray:
    """Average the hits' colours (M, C) and the background over each pixel's samples -> (size, size, C) image."""
    colours = np.asarray(colours, dtype=np.float64).reshape(len(hits.index), -1)
    samples = hits.size * hits.supersample
    row, column = np.divmod(hits.index, samples)
    pixel = (row // hits.supersample) * hits.size + column // hits.supersample
    per_pixel = hits.supersample * hits.supersample
    count = np.bincount(pixel, minlength=hits.size * hits.size)
    channels = [
        np.bincount(pixel, weights=colours[:, k], minlength=hits.size * hits.size) + (per_pixel - count) * background
        for k in range(colours.shape[1])
    ]
    return (np.stack(channels, axis=1) / per_pixel).reshape(hits.size, hits.size, colours.shape[1])


def resolve(values: np.ndarray, size: int, supersample: int) -> np.ndarray:
    """Average per-sample values (N,) or (N, C) over each pixel's samples -> (size, size) or (size, size, C)."""
    values = np.asarray(values, dtype=np.float64)
    grid = values.reshape(size, supersample, size, supersample, *values.shape[1:])
    return grid.sum(axis=3).sum(axis=1) / (supersample * supersample)


def render(
    scene: Scene, c2w: np.ndarray, size: int, supersample: int = 3, camera_angle_x: float = CAMERA_ANGLE_X
) -> np.ndarray:
    """Anti-aliased RGB image (size, size, 3) in [0, 1] of ``scene`` seen from camera-to-world pose ``c2w``."""
    hits = trace(scene, c2w, size, supersample, camera_angle_x)
    return compose(hits, shade(hits))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 8-bit with rounding (what gets written to PNG)."""
    return np.clip(np.floor(image * 255.0 + 0.5), 0, 255).astype(np.uint8)


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
