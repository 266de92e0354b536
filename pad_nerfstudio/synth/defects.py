"""The three MAD defect types as 3D-consistent changes of a brick object, each rendered from one test pose together
with a pixel-exact ground-truth mask. Burrs add small boxes grown out of a visible surface point, Missing removes one
visible brick (its studs go with it, the studs it covered come back), Stains recolour the surface inside a sphere
around a visible surface point. Masks come from the geometry of the supersamples, never from shaded colour: a
sample is defective when it sees burr geometry, when it saw the removed brick in the defect-free render or sees a
different surface (part or depth) than there, or when its hit point lies in the stain's core (blend weight >= 0.5).
So with cast shadows on (:class:`~pad_nerfstudio.synth.raycast.Shading`), a shadow that a burr casts or that a
removed brick no longer casts changes pixels outside the mask, as it would on a real object. A pixel is in the mask
when at least half of its samples are defective, or when any of its samples is touched by the defect and the
pixel's colour changed by more than ``VISIBLE_CHANGE``: every visibly changed pixel of the defect itself is in the
mask, faint anti-aliased fringes are not. A draw is kept only if the mask is large enough and mostly visibly
changed in the noise-free render; otherwise a new pose and defect are drawn. With a
:class:`~pad_nerfstudio.synth.backdrop.Backdrop`, the image and its reference show the table and wall behind the
object; the fringe test is made on white, so the backdrop never enters a mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pad_nerfstudio.synth.cameras import CAMERA_ANGLE_X
from pad_nerfstudio.synth.difficulty import STANDARD, Difficulty
from pad_nerfstudio.synth.objects import BrickObject
from pad_nerfstudio.synth.raycast import (
    LAMBERTIAN,
    Hits,
    Shading,
    ShadowMaps,
    background_for,
    compose,
    resolve,
    shade,
    trace,
)

if TYPE_CHECKING:
    from pad_nerfstudio.synth.backdrop import Backdrop

DEFECT_TYPES = ("Burrs", "Missing", "Stains")
"""Folder names of the defect types, as in MAD."""

BURR_PART = -2
"""Part label of burr geometry."""

MASK_COVERAGE = 0.5
"""A pixel belongs to the mask when at least this fraction of its supersamples is defective."""
VISIBLE_CHANGE = 0.1
"""Max RGB difference (in [0, 1]) above which a mask pixel counts as visibly changed."""
MIN_VISIBLE_FRACTION = 0.3
"""A defect is kept only if at least this fraction of its mask is visibly changed."""
MAX_MISSING_FRACTION = 0.08
"""A removed brick may cover at most this fraction of the object's pixels (MAD defects are small)."""
MAX_ATTEMPTS = 100

# World-unit sizes; the object fits a sphere of radius 1.1, so these are a few percent of its extent.
BURR_HALF_SIZE = (0.05, 0.085)
STAIN_RADIUS = (0.08, 0.14)
STAIN_COLOURS = np.array(
    [
        [0.33, 0.20, 0.09],  # brown grime
        [0.12, 0.11, 0.10],  # soot
        [0.62, 0.34, 0.10],  # rust
        [0.45, 0.47, 0.20],  # olive
        [0.88, 0.84, 0.66],  # pale paint
    ]
)


@dataclass
class DefectView:
    """One defective test image with its mask and the defect-free render from the same pose."""

    image: np.ndarray
    """(H, W, 3) RGB in [0, 1], noise-free (capture effects beyond shading are applied when writing)."""
    mask: np.ndarray
    """(H, W) bool ground truth."""
    reference: np.ndarray
    """(H, W, 3) defect-free render from the same pose."""


def render_defect(
    kind: str,
    obj: BrickObject,
    c2w: np.ndarray,
    size: int,
    rng: np.random.Generator,
    supersample: int = 3,
    camera_angle_x: float = CAMERA_ANGLE_X,
    shading: Shading = LAMBERTIAN,
    backdrop: Backdrop | None = None,
    floor: float | None = None,
    difficulty: Difficulty = STANDARD,
) -> DefectView | None:
    """Draw one defect of ``kind`` visible from ``c2w`` and render it; None when this view offers no place for it.

        ``shading`` and ``backdrop`` (the table and wall behind the object, with the defective object's shadows on it in
        the image and the intact one's in the reference) apply to the image and its reference alike; they change neither
        the draws nor the mask. ``floor`` is the height of the table the object stands on: burrs are cut off below it.
    ``difficulty`` scales burrs and stains and sets the smallest brick that Missing may remove.

        Example:
            >>> view = render_defect("Stains", build_brick_animal("01Gorilla"), c2w, 200, np.random.default_rng(0))
    """
    if kind not in DEFECT_TYPES:
        raise ValueError(f"unknown defect type {kind!r}; expected one of {', '.join(DEFECT_TYPES)}")
    scene = obj.scene()
    shadows = shading.shadow_maps(scene)
    clean = trace(scene, c2w, size, supersample, camera_angle_x, shadows=shadows)
    if kind == "Burrs":
        result = _burrs(scene, clean, shadows, c2w, size, rng, supersample, camera_angle_x, floor, difficulty)
    elif kind == "Missing":
        minimum = 1.5 * difficulty.min_mask_pixels(size)
        result = _missing(obj, clean, shadows, c2w, size, rng, supersample, camera_angle_x, minimum)
    else:
        result = _stains(scene, clean, shadows, rng, difficulty)
    if result is None:
        return None
    hits, albedo, defective, touched, defective_scene, defective_shadows = result
    reference_background = background_for(clean, c2w, camera_angle_x, backdrop, scene, shadows)
    if hits is clean and defective_scene is scene and defective_shadows is shadows:
        image_background = reference_background  # a stain changes colours only: the same backdrop and shadows
    else:
        image_background = background_for(hits, c2w, camera_angle_x, backdrop, defective_scene, defective_shadows)
    image = compose(hits, shade(hits, albedo, gloss=shading.gloss), image_background)
    reference = compose(clean, shade(clean, gloss=shading.gloss), reference_background)
    if shading == LAMBERTIAN and backdrop is None:
        plain_image, plain_reference = image, reference
    else:
        # Judged under the plain light model on white, the fringe (and so the mask) is the same in every capture
        # style, and a change of shadow, highlight or backdrop alone never enters it.
        plain_image = compose(hits, shade(dataclasses.replace(hits, lit=None), albedo))
        plain_reference = compose(clean, shade(dataclasses.replace(clean, lit=None)))
    changed = np.abs(plain_image - plain_reference).max(axis=-1) > VISIBLE_CHANGE
    mask = (resolve(defective, size, supersample) >= MASK_COVERAGE) | (
        changed & (resolve(touched, size, supersample) > 0)
    )
    return DefectView(image=image, mask=mask, reference=reference)


def is_acceptable(view: DefectView, size: int, difficulty: Difficulty = STANDARD) -> bool:
    """Large enough (``difficulty.min_mask_pixels``) and mostly visible (not e.g. a brick hiding an identical one)."""
    mask_pixels = int(view.mask.sum())
    if mask_pixels < difficulty.min_mask_pixels(size):
        return False
    changed = np.abs(view.image - view.reference).max(axis=-1) > VISIBLE_CHANGE
    return int((changed & view.mask).sum()) >= MIN_VISIBLE_FRACTION * mask_pixels


def sample_defect_view(
    kind: str,
    obj: BrickObject,
    size: int,
    rng: np.random.Generator,
    supersample: int = 3,
    camera_angle_x: float = CAMERA_ANGLE_X,
    shading: Shading = LAMBERTIAN,
    backdrop: Backdrop | None = None,
    floor: float | None = None,
    pose_sampler: Callable[[np.random.Generator], np.ndarray] | None = None,
    difficulty: Difficulty = STANDARD,
) -> tuple[np.ndarray, DefectView]:
    """Draw test poses and defects until one is acceptable; returns (camera-to-world, view).

    Poses come from ``pose_sampler`` (default: ``difficulty.test_pose``). The draws do not depend on ``shading`` or
    ``backdrop`` except through acceptance, which is judged on the shaded renders. ``backdrop``, ``floor`` and
    ``difficulty`` are passed on to :func:`render_defect`.
    """
    pose_sampler = pose_sampler or difficulty.test_pose
    for _ in range(MAX_ATTEMPTS):
        c2w = pose_sampler(rng)
        view = render_defect(
            kind, obj, c2w, size, rng, supersample, camera_angle_x, shading, backdrop, floor, difficulty
        )
        if view is not None and is_acceptable(view, size, difficulty):
            return c2w, view
    raise RuntimeError(
        f"could not place a visible {kind} defect of at least {difficulty.min_mask_pixels(size)} px on {obj.name} in "
        f"{MAX_ATTEMPTS} attempts; the image size ({size} px) is probably too small"
    )


def _facing_samples(hits: Hits, min_cosine: float = 0.35) -> np.ndarray:
    """Positions (into the per-hit arrays) of object hits facing the camera, so that a defect placed there is seen."""
    candidates = np.flatnonzero(hits.hit_part >= 0)
    to_camera = hits.origin - hits.points[candidates]
    to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True)
    cosine = np.einsum("ij,ij->i", to_camera, hits.normals[candidates])
    return candidates[cosine > min_cosine]


def _burrs(
    scene, clean: Hits, shadows: ShadowMaps | None, c2w, size, rng, supersample, camera_angle_x, floor, difficulty
):
    """Like the other defect helpers: (hits, albedo override or None, defective samples, touched samples, defective
    scene, its shadow maps) or None."""
    candidates = _facing_samples(clean)
    if len(candidates) == 0:
        return None
    sample = candidates[rng.integers(len(candidates))]
    point, normal = clean.points[sample], clean.normals[sample]
    # Studs have curved sides; growing along the dominant axis keeps the burr an axis-aligned box.
    axis = int(np.abs(normal).argmax())
    sign = 1.0 if normal[axis] > 0 else -1.0
    tangents = [a for a in range(3) if a != axis]
    half = rng.uniform(*BURR_HALF_SIZE) * difficulty.defect_scale
    count = int(rng.integers(1, 4))
    lo, hi = np.zeros((count, 3)), np.zeros((count, 3))
    for k in range(count):
        height = rng.uniform(0.6, 1.6) * half
        base, tip = point[axis] - sign * 0.15 * half, point[axis] + sign * height
        lo[k, axis], hi[k, axis] = min(base, tip), max(base, tip)
        for tangent in tangents:
            centre = point[tangent] + (rng.uniform(-0.6, 0.6) * half if k else 0.0)
            extent = rng.uniform(0.35, 1.0) * half
            lo[k, tangent], hi[k, tangent] = centre - extent, centre + extent
    if floor is not None:
        # Plastic cannot grow into the table the object stands on.
        lo[:, 2] = np.maximum(lo[:, 2], floor)
        above = hi[:, 2] > lo[:, 2]
        lo, hi, count = lo[above], hi[above], int(above.sum())
        if count == 0:
            return None
    albedo = clean.albedo[sample]
    # Excess plastic of the same brick, a shade lighter or darker so it reads as a flaw and not as a stud.
    tint = albedo * 0.62 if albedo.mean() > 0.5 else albedo + (1.0 - albedo) * 0.4
    burred = scene.with_boxes(lo, hi, np.tile(tint, (count, 1)), np.full(count, BURR_PART))
    if shadows is not None:
        shadows = shadows.with_boxes(lo, hi, np.full(count, BURR_PART))
    hits = trace(burred, c2w, size, supersample, camera_angle_x, shadows=shadows)
    burr = hits.part == BURR_PART
    return hits, None, burr, burr, burred, shadows


def _missing(
    obj: BrickObject, clean: Hits, shadows: ShadowMaps | None, c2w, size, rng, supersample, camera_angle_x, minimum
):
    samples_per_pixel = supersample * supersample
    object_parts = clean.hit_part[clean.hit_part >= 0]
    visible = np.bincount(object_parts, minlength=len(obj.bricks)) / samples_per_pixel
    object_pixels = len(object_parts) / samples_per_pixel
    maximum = max(MAX_MISSING_FRACTION * object_pixels, 2.0 * minimum)
    candidates = np.flatnonzero((visible >= minimum) & (visible <= maximum))
    if len(candidates) == 0:
        return None
    # Prefer bricks with nothing resting on them: pulling those off leaves a plausible toy.
    free = candidates[~obj.supports()[candidates]]
    pool = free if len(free) and rng.uniform() < 0.85 else candidates
    removed = int(pool[rng.integers(len(pool))])
    scene = obj.scene(removed=removed)
    if shadows is not None:
        shadows = shadows.without_part(scene, removed)
    hits = trace(scene, c2w, size, supersample, camera_angle_x, shadows=shadows)
    # Geometry, not colour: shadows that the brick cast elsewhere change colours there, but are not the defect.
    uncovered = (hits.part != clean.part) | ~np.isclose(hits.depth, clean.depth, rtol=0.0, atol=1e-9)
    defective = (clean.part == removed) | uncovered
    return hits, None, defective, defective, scene, shadows


def _stains(scene, clean: Hits, shadows: ShadowMaps | None, rng, difficulty: Difficulty):
    candidates = _facing_samples(clean)
    if len(candidates) == 0:
        return None
    sample = candidates[rng.integers(len(candidates))]
    centre = clean.points[sample]
    radius = rng.uniform(*STAIN_RADIUS) * difficulty.defect_scale
    # A few random plane waves wobble the boundary; a function of the 3D point keeps the stain 3D-consistent.
    waves = rng.normal(size=(3, 3)) * (2.5 / radius)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    object_samples = np.flatnonzero(clean.hit_part >= 0)
    offset = clean.points[object_samples] - centre
    wobble = 1.0 + 0.18 * np.sin(offset @ waves.T + phases).mean(axis=1)
    distance = np.linalg.norm(offset, axis=1) / (radius * wobble)
    weight = np.clip((1.0 - distance) / 0.35, 0.0, 1.0)  # solid core, soft rim over the outer 35%
    base = clean.albedo[sample]
    distances = np.linalg.norm(STAIN_COLOURS - base, axis=1)
    best = np.argsort(-distances)[:2]
    stain_colour = STAIN_COLOURS[best[rng.integers(2)]]
    strength = rng.uniform(0.7, 0.9)
    blend = (strength * weight)[:, None]
    albedo = clean.albedo.copy()
    albedo[object_samples] = albedo[object_samples] * (1.0 - blend) + stain_colour * blend
    stained = np.zeros(len(clean.index), dtype=bool)
    stained[object_samples] = weight >= 0.5
    touched = np.zeros(len(clean.index), dtype=bool)
    touched[object_samples] = weight > 0.0
    return clean, albedo, clean.scatter(stained, fill=False), clean.scatter(touched, fill=False), scene, shadows
