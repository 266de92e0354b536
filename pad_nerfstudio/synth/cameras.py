"""Camera geometry of the synthetic MAD-Sim clone: the 14 x 15 training grid, random off-grid test poses, hand-held
poses around an object standing on a table (MAD-Real-like captures) and the pinhole model shared by the renderer and
the tests. Poses are camera-to-world 4x4 matrices in the OpenGL / Blender convention used by NeRF-Blender data
(camera looks down its -z axis, +y is up in the image, world up is +z), so ``transforms.json`` written from them
loads like a MAD-Sim class.
"""

from __future__ import annotations

import numpy as np

CAMERA_ANGLE_X = 0.6911
"""Horizontal field of view in radians, as in MAD-Sim (fx = 1111.1 px at 800 px)."""

CAMERA_RADIUS = 4.0
"""Distance of every training camera from the world origin (MAD-Sim uses 3-4 depending on the class)."""

TRAIN_ELEVATIONS_DEG = np.linspace(85.0, -85.0, 14)
"""Elevation of the 14 training rings, top to bottom, as in MAD-Sim."""

TRAIN_AZIMUTHS_DEG = np.arange(15) * 24.0
"""15 evenly spaced azimuths per ring (MAD-Sim uses 22.857 degree steps with one 40 degree gap)."""

TEST_ELEVATION_RANGE_DEG = (-80.0, 80.0)
TEST_ROLL_MAX_DEG = 4.0
TEST_LOOK_AT_JITTER = 0.03
"""Standard deviation of the look-at point offset in world units (object radius is about 1.05)."""
TEST_RADIUS_JITTER = 0.1


def focal_length(size: int, camera_angle_x: float = CAMERA_ANGLE_X) -> float:
    """Pinhole focal length in pixels for a square image of ``size`` px, e.g. ``focal_length(800)`` is ~1111.1."""
    return 0.5 * size / np.tan(0.5 * camera_angle_x)


def spherical_position(azimuth_deg: float, elevation_deg: float, radius: float = CAMERA_RADIUS) -> np.ndarray:
    """Point on a sphere around the origin; azimuth is measured from +x towards +y, elevation from the xy plane."""
    azimuth, elevation = np.radians(azimuth_deg), np.radians(elevation_deg)
    return radius * np.array(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
    )


def look_at(
    eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None, roll_deg: float = 0.0
) -> np.ndarray:
    """Camera-to-world matrix of an OpenGL camera at ``eye`` looking at ``target`` (default: the origin).

    ``roll_deg`` turns the camera about its own viewing axis, which is how test poses leave the upright grid.

    Example:
        >>> c2w = look_at(np.array([4.0, 0.0, 0.0]))
        >>> c2w[:3, 2]  # the camera's +z axis points away from the target
        array([1., 0., 0.])
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    z_axis = eye - target
    z_axis /= np.linalg.norm(z_axis)
    x_axis = np.cross(up, z_axis)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    rotation = np.stack([x_axis, y_axis, z_axis], axis=1)
    if roll_deg:
        roll = np.radians(roll_deg)
        in_plane = np.array([[np.cos(roll), -np.sin(roll), 0.0], [np.sin(roll), np.cos(roll), 0.0], [0.0, 0.0, 1.0]])
        rotation = rotation @ in_plane
    c2w = np.eye(4)
    c2w[:3, :3] = rotation
    c2w[:3, 3] = eye
    return c2w


def training_poses(radius: float = CAMERA_RADIUS) -> np.ndarray:
    """The 210 training poses (14 rings x 15 azimuths, ring by ring from the top) as a (210, 4, 4) array."""
    return np.stack(
        [
            look_at(spherical_position(azimuth, elevation, radius))
            for elevation in TRAIN_ELEVATIONS_DEG
            for azimuth in TRAIN_AZIMUTHS_DEG
        ]
    )


def random_test_pose(
    rng: np.random.Generator,
    radius: float = CAMERA_RADIUS,
    roll_max_deg: float = TEST_ROLL_MAX_DEG,
    look_at_radius: float | None = None,
) -> np.ndarray:
    """An off-grid pose: random azimuth and elevation, a small roll, a jittered look-at point and radius.

    The look-at point is Gaussian (σ ``TEST_LOOK_AT_JITTER``, clipped at 2.5 σ) or, with ``look_at_radius``,
    uniform in a ball of that radius around the origin. The jitter is small enough that an object inside a sphere
    of radius 1.1 stays fully in frame.
    """
    azimuth = rng.uniform(0.0, 360.0)
    elevation = rng.uniform(*TEST_ELEVATION_RANGE_DEG)
    roll = rng.uniform(-roll_max_deg, roll_max_deg)
    if look_at_radius is None:
        target = np.clip(
            rng.normal(0.0, TEST_LOOK_AT_JITTER, size=3), -2.5 * TEST_LOOK_AT_JITTER, 2.5 * TEST_LOOK_AT_JITTER
        )
    else:
        direction = rng.normal(size=3)
        # Uniform in the ball: radius ~ r * u^(1/3) along a uniform direction.
        target = direction / np.linalg.norm(direction) * look_at_radius * rng.uniform() ** (1.0 / 3.0)
    distance = radius + rng.uniform(-TEST_RADIUS_JITTER, TEST_RADIUS_JITTER)
    return look_at(target + spherical_position(azimuth, elevation, distance), target, roll_deg=roll)


HANDHELD_ELEVATION_RANGE_DEG = (12.0, 65.0)
"""Elevations of hand-held views above the horizontal plane through the look-at point (the camera stays above the
table the object stands on)."""
HANDHELD_ELEVATION_BANDS_DEG = (22.0, 38.0, 54.0)
"""Centres of the loose loops at which hand-held training views are taken."""
HANDHELD_ELEVATION_JITTER_DEG = 5.0
"""Standard deviation of a training view's elevation around its loop's centre."""
HANDHELD_AZIMUTH_JITTER = 0.35
"""Azimuth jitter of training views, as a fraction of the even spacing within a loop (uniform, either way)."""
HANDHELD_DISTANCE_RANGE = (3.3, 4.7)
"""Distance of hand-held cameras from their look-at point."""
HANDHELD_LOOK_AT_JITTER = 0.1
"""Each coordinate of the look-at point is drawn uniformly within this of the object centre."""
HANDHELD_ROLL_MAX_DEG = 6.0
FRAME_MARGIN = 0.05
"""Fraction of the image width kept free around the object in hand-held views (room for burrs)."""
MAX_POSE_DRAWS = 1000


def handheld_pose(
    azimuth_deg: float, elevation_deg: float, distance: float, target: np.ndarray, roll_deg: float = 0.0
) -> np.ndarray:
    """Camera-to-world matrix of a camera at ``distance`` from ``target`` in the given direction, looking at it."""
    target = np.asarray(target, dtype=np.float64)
    return look_at(target + spherical_position(azimuth_deg, elevation_deg, distance), target, roll_deg=roll_deg)


def in_frame(
    points: np.ndarray, c2w: np.ndarray, margin: float = FRAME_MARGIN, camera_angle_x: float = CAMERA_ANGLE_X
) -> bool:
    """Whether all world ``points`` (n, 3) lie in front of the camera and inside the image, ``margin`` (a fraction of
    the image width) away from its border. Independent of the image size.

    Example:
        >>> in_frame(np.zeros((1, 3)), look_at(np.array([4.0, 0.0, 0.0])))
        True
    """
    uv, depth = project_points(points, c2w, 1, camera_angle_x)
    return bool((depth > 0.0).all() and (uv >= margin).all() and (uv <= 1.0 - margin).all())


def handheld_training_poses(rng: np.random.Generator, views: int, centre: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``views`` hand-held poses (views, 4, 4) around an object standing on a table, like a person walking round it
    with a camera: loops at a few heights (``HANDHELD_ELEVATION_BANDS_DEG``, elevations jittered within
    ``HANDHELD_ELEVATION_RANGE_DEG``), azimuths evenly spaced per loop and jittered, each loop starting elsewhere;
    the distance, the look-at point (around ``centre``) and the roll vary per view. A view that would cut off any
    of the object's ``points`` (n, 3) is drawn again.

    Example:
        >>> poses = handheld_training_poses(np.random.default_rng(0), 50, np.zeros(3), corners)
    """
    loops = np.array_split(np.arange(views), min(len(HANDHELD_ELEVATION_BANDS_DEG), max(1, views)))
    poses = np.empty((views, 4, 4))
    for band, members in zip(HANDHELD_ELEVATION_BANDS_DEG, loops):
        if len(members) == 0:
            continue
        step = 360.0 / len(members)
        start = rng.uniform(0.0, 360.0)
        for position, view in enumerate(members):
            azimuth = start + step * (position + rng.uniform(-HANDHELD_AZIMUTH_JITTER, HANDHELD_AZIMUTH_JITTER))
            elevation = float(np.clip(rng.normal(band, HANDHELD_ELEVATION_JITTER_DEG), *HANDHELD_ELEVATION_RANGE_DEG))
            poses[view] = _framed_pose(rng, azimuth % 360.0, elevation, centre, points)
    return poses


def random_handheld_pose(rng: np.random.Generator, centre: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A hand-held test pose: like :func:`handheld_training_poses` but with azimuth and elevation drawn uniformly
    (360 degrees, ``HANDHELD_ELEVATION_RANGE_DEG``); redrawn until the object's ``points`` are all in frame."""
    for _ in range(MAX_POSE_DRAWS):
        azimuth = rng.uniform(0.0, 360.0)
        elevation = rng.uniform(*HANDHELD_ELEVATION_RANGE_DEG)
        c2w = _jittered_pose(rng, azimuth, elevation, centre)
        if in_frame(points, c2w):
            return c2w
    raise RuntimeError(f"no hand-held pose frames the object in {MAX_POSE_DRAWS} draws; is it larger than radius 1.1?")


def _jittered_pose(rng: np.random.Generator, azimuth: float, elevation: float, centre: np.ndarray) -> np.ndarray:
    distance = rng.uniform(*HANDHELD_DISTANCE_RANGE)
    target = np.asarray(centre, dtype=np.float64) + rng.uniform(-HANDHELD_LOOK_AT_JITTER, HANDHELD_LOOK_AT_JITTER, 3)
    roll = rng.uniform(-HANDHELD_ROLL_MAX_DEG, HANDHELD_ROLL_MAX_DEG)
    return handheld_pose(azimuth, elevation, distance, target, roll)


def _framed_pose(
    rng: np.random.Generator, azimuth: float, elevation: float, centre: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """A pose in the given direction whose distance, look-at point and roll are drawn until the object is in frame."""
    for _ in range(MAX_POSE_DRAWS):
        c2w = _jittered_pose(rng, azimuth, elevation, centre)
        if in_frame(points, c2w):
            return c2w
    raise RuntimeError(f"no hand-held pose frames the object in {MAX_POSE_DRAWS} draws; is it larger than radius 1.1?")


def project_points(
    points: np.ndarray, c2w: np.ndarray, size: int, camera_angle_x: float = CAMERA_ANGLE_X
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u right, v down, pixel (0, 0) spans [0, 1]^2) and depths of world points (n, 3).

    Example:
        >>> uv, depth = project_points(np.zeros((1, 3)), look_at(np.array([0.0, 4.0, 0.0])), 200)
        >>> uv  # the look-at point lands on the image centre
        array([[100., 100.]])
    """
    focal = focal_length(size, camera_angle_x)
    camera = (np.asarray(points, dtype=np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
    depth = -camera[:, 2]
    u = 0.5 * size + focal * camera[:, 0] / depth
    v = 0.5 * size - focal * camera[:, 1] / depth
    return np.stack([u, v], axis=1), depth


def pixel_directions(
    c2w: np.ndarray,
    size: int,
    supersample: int = 1,
    camera_angle_x: float = CAMERA_ANGLE_X,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """World-space ray directions of a regular ``supersample`` x ``supersample`` grid of samples in every pixel.

    Returns ((size * supersample) ** 2, 3) directions in row-major sample order (sample row 0 at the top), or only
    those of the sample columns [u0, u1) and rows [v0, v1) given as ``window``. They are scaled so that their
    camera-space z is -1: the ray parameter of a hit is then its depth.
    """
    focal = focal_length(size, camera_angle_x)
    u0, u1, v0, v1 = window if window is not None else (0, size * supersample, 0, size * supersample)
    columns = (np.arange(u0, u1) + 0.5) / supersample
    rows = (np.arange(v0, v1) + 0.5) / supersample
    camera = np.empty((rows.size, columns.size, 3))
    camera[:, :, 0] = ((columns - 0.5 * size) / focal)[None, :]
    camera[:, :, 1] = (-(rows - 0.5 * size) / focal)[:, None]
    camera[:, :, 2] = -1.0
    directions = camera.reshape(-1, 3) @ c2w[:3, :3].T
    # An exactly zero component would turn the slab test's 0 * inf into NaN.
    directions[directions == 0.0] = 1e-12
    return directions
