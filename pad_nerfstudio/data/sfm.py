"""Camera poses of unposed photos by structure from motion (pycolmap), in the MAD-Sim frame.

MAD-Real is released without poses: a class is a folder of ~50 hand-held photos of one toy on a backdrop. COLMAP's
incremental mapper (through the pycolmap wheel, so no system COLMAP is needed) recovers the cameras up to a
similarity; :func:`normalise_to_object` then puts the object where MAD-Sim has it: the point all cameras look at
becomes the origin, the ground the toy stands on (a plane fitted to the sparse points) becomes horizontal with +z
up, and the median camera distance becomes ``CAMERA_DISTANCE``. The result is written as a nerfstudio/MAD
``transforms.json`` by ``pad-poses`` (:mod:`pad_nerfstudio.data.poses_cli`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

CAMERA_DISTANCE = 4.0
"""Median distance of the normalised cameras from the object centre (pad-synth's ring radius; MAD-Sim 3-4)."""

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
"""Distortion-free models: the field renders pinhole cameras, so lens distortion must be removed beforehand."""


SIFT_PEAK_THRESHOLD = 0.002
"""SIFT contrast threshold (COLMAP's default 0.0067): small photos need more, weaker features."""
MIN_INITIAL_INLIERS = 50
"""Verified matches the first image pair needs (COLMAP's default 100)."""
MIN_REGISTRATION_INLIERS = 15
"""2D-3D inliers a photo needs to be added to the model (COLMAP's default 30)."""


class SfMError(RuntimeError):
    """Structure from motion could not pose enough of the photos; the message names them and what to do."""


@dataclass
class SfMResult:
    """Registered photos with their cameras in the normalised (MAD-Sim) frame."""

    names: list[str]
    """Registered image names, relative to the image root, in input order."""
    camera_to_worlds: np.ndarray
    """(N, 4, 4) OpenGL camera-to-world of each registered image."""
    intrinsics: dict
    """Shared pinhole intrinsics in nerfstudio keys: fl_x, fl_y, cx, cy, w, h."""
    points: np.ndarray
    """(P, 3) sparse scene points (object and backdrop) in the same frame."""
    unregistered: list[str] = field(default_factory=list)
    mean_reprojection_error: float = float("nan")
    """Pixels, over all observations of the sparse points."""
    ground_height: float | None = None
    """z of the fitted ground plane in the normalised frame (None when no plane was found)."""
    seconds: dict = field(default_factory=dict)
    """Time per stage: features, matching, mapping."""


def reconstruct(
    image_root: Path,
    image_names: Sequence[str],
    camera_model: str = "SIMPLE_PINHOLE",
    focal_length: float | None = None,
    on_stage: Callable[[str, int, int], None] | None = None,
    seed: int = 0,
) -> SfMResult:
    """Run SIFT extraction, exhaustive matching and incremental mapping on ``image_names`` under ``image_root``.

    All photos are assumed to come from one camera (MAD-Real: one phone). ``focal_length`` (pixels) fixes the focal
    length when known (e.g. from MAD-Sim's ``camera_angle_x``); otherwise it is estimated by bundle adjustment.
    ``on_stage(stage, done, total)`` reports progress. Returns the largest reconstruction, normalised with
    :func:`normalise_to_object`.

    Example:
        >>> result = reconstruct(Path("mad_real/01Gorilla"), ["train/good/0.png", ...])  # doctest: +SKIP
        >>> len(result.names), result.mean_reprojection_error  # doctest: +SKIP
        (50, 0.41)
    """
    import pycolmap

    # COLMAP logs every step at INFO level through glog; the progress bars say what a user needs.
    pycolmap.logging.minloglevel = 0 if os.environ.get("PAD_DEBUG") else 2
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera model {camera_model!r}: expected one of {', '.join(CAMERA_MODELS)}")
    report = on_stage or (lambda stage, done, total: None)
    names = list(image_names)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pad-poses-") as work:
        database = Path(work) / "database.db"
        clock = time.perf_counter()
        reader = pycolmap.ImageReaderOptions(camera_model=camera_model)
        if focal_length is not None:
            from PIL import Image

            with Image.open(image_root / names[0]) as first:
                width, height = first.size
            params = [focal_length, width / 2, height / 2]
            if camera_model == "PINHOLE":
                params = [focal_length, focal_length, width / 2, height / 2]
            reader.camera_params = ",".join(f"{p:.6f}" for p in params)
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = -1
        # Small photos (MAD-Real is often downscaled, pad-synth renders 160-400 px) need a lower contrast threshold
        # to give SIFT enough features on the toy itself, not only on the backdrop.
        extraction.sift.peak_threshold = SIFT_PEAK_THRESHOLD
        report("features", 0, len(names))
        pycolmap.extract_features(
            database,
            image_root,
            image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        report("features", len(names), len(names))
        seconds["features"] = time.perf_counter() - clock

        clock = time.perf_counter()
        pairs = len(names) * (len(names) - 1) // 2
        report("matching", 0, pairs)
        pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
        report("matching", pairs, pairs)
        seconds["matching"] = time.perf_counter() - clock

        clock = time.perf_counter()
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = -1
        options.random_seed = seed
        options.multiple_models = False
        # COLMAP's defaults expect megapixel photos with thousands of features; a toy in a few hundred pixels gives
        # a tenth of that, so the thresholds to start and to grow the model are lowered in proportion.
        options.mapper.init_min_num_inliers = MIN_INITIAL_INLIERS
        options.mapper.abs_pose_min_num_inliers = MIN_REGISTRATION_INLIERS
        if focal_length is not None:
            options.ba_refine_focal_length = False
            options.ba_refine_extra_params = False
        options.ba_refine_principal_point = False
        registered = 0

        def next_image() -> None:
            nonlocal registered
            registered += 1
            report("mapping", min(registered, len(names)), len(names))

        report("mapping", 0, len(names))
        models = pycolmap.incremental_mapping(
            database, image_root, Path(work) / "sparse", options=options, next_image_callback=next_image
        )
        seconds["mapping"] = time.perf_counter() - clock
    if not models:
        raise SfMError(
            f"Structure from motion found no reconstruction for the {len(names)} photos in {image_root}: too few "
            "features match between them. Photograph the object on a textured surface (a newspaper, a patterned "
            "cloth), with more overlap between neighbouring photos (about 10-15 degrees apart), sharp and well lit."
        )
    reconstruction = max(models.values(), key=lambda model: model.num_reg_images())
    return _result(reconstruction, names, seconds)


def _result(reconstruction, names: list[str], seconds: dict[str, float]) -> SfMResult:
    by_name = {image.name: image for image in reconstruction.images.values() if image.has_pose}
    registered = [name for name in names if name in by_name]
    unregistered = [name for name in names if name not in by_name]
    camera_to_worlds = []
    for name in registered:
        world_to_camera = np.eye(4)
        world_to_camera[:3, :4] = by_name[name].cam_from_world().matrix()
        camera_to_world = np.linalg.inv(world_to_camera)
        camera_to_world[:3, 1:3] *= -1.0  # OpenCV (y down, z forward) -> OpenGL (y up, z backward)
        camera_to_worlds.append(camera_to_world)
    camera = by_name[registered[0]].camera
    focal_x, focal_y = (camera.focal_length_x, camera.focal_length_y)
    intrinsics = {
        "fl_x": float(focal_x),
        "fl_y": float(focal_y),
        "cx": float(camera.principal_point_x),
        "cy": float(camera.principal_point_y),
        "w": int(camera.width),
        "h": int(camera.height),
    }
    points = np.array([point.xyz for point in reconstruction.points3D.values()], dtype=np.float64).reshape(-1, 3)
    camera_to_worlds, points, ground = normalise_to_object(np.stack(camera_to_worlds), points)
    return SfMResult(
        names=registered,
        camera_to_worlds=camera_to_worlds,
        intrinsics=intrinsics,
        points=points,
        unregistered=unregistered,
        mean_reprojection_error=float(reconstruction.compute_mean_reprojection_error()),
        ground_height=ground,
        seconds=seconds,
    )


def look_at_point(camera_to_worlds: np.ndarray) -> np.ndarray:
    """Least-squares point closest to all optical axes (OpenGL cameras look down -z): the photographed object."""
    origins = camera_to_worlds[:, :3, 3]
    axes = -camera_to_worlds[:, :3, 2]
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    projectors = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    return np.linalg.solve(projectors.sum(0), np.einsum("nij,nj->i", projectors, origins))


def fit_ground_plane(
    points: np.ndarray, up_hint: np.ndarray, max_tilt_deg: float = 30.0, iterations: int = 400, seed: int = 0
) -> tuple[np.ndarray, float, float] | None:
    """RANSAC plane (unit normal towards ``up_hint``, offset d with n.x = d, inlier fraction) among ``points``.

    Only planes within ``max_tilt_deg`` of ``up_hint`` are considered: the surface the object stands on, not a
    wall behind it. The inlier threshold adapts to the scene's scale (1 % of the points' spread). None when fewer
    than 15 % of the points lie on any such plane.
    """
    if len(points) < 20:
        return None
    rng = np.random.default_rng(seed)
    spread = float(np.median(np.linalg.norm(points - np.median(points, axis=0), axis=1)))
    threshold = 0.01 * spread
    up_hint = up_hint / np.linalg.norm(up_hint)
    best: tuple[np.ndarray, float, int] | None = None
    for _ in range(iterations):
        sample = points[rng.choice(len(points), 3, replace=False)]
        normal = np.cross(sample[1] - sample[0], sample[2] - sample[0])
        length = np.linalg.norm(normal)
        if length < 1e-12:
            continue
        normal = normal / length
        if normal @ up_hint < 0:
            normal = -normal
        if normal @ up_hint < np.cos(np.radians(max_tilt_deg)):
            continue
        offset = float(normal @ sample[0])
        count = int((np.abs(points @ normal - offset) < threshold).sum())
        if best is None or count > best[2]:
            best = (normal, offset, count)
    if best is None or best[2] < 0.15 * len(points):
        return None
    # Least-squares refit on the inliers.
    inliers = points[np.abs(points @ best[0] - best[1]) < threshold]
    centroid = inliers.mean(axis=0)
    normal = np.linalg.svd(inliers - centroid)[2][-1]
    if normal @ up_hint < 0:
        normal = -normal
    return normal, float(normal @ centroid), len(inliers) / len(points)


def normalise_to_object(
    camera_to_worlds: np.ndarray, points: np.ndarray, distance: float = CAMERA_DISTANCE
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Similarity transform of a reconstruction into the MAD-Sim frame; returns (cameras, points, ground z).

    Origin: the point the cameras look at. Up (+z): the normal of the ground plane when one is found, else the mean
    of the cameras' up vectors (photographers hold the camera upright, so their sideways tilts cancel out). Scale:
    the median camera distance becomes ``distance``.
    """
    centre = look_at_point(camera_to_worlds)
    camera_up = camera_to_worlds[:, :3, 1].mean(axis=0)
    plane = fit_ground_plane(points, camera_up)
    up = plane[0] if plane is not None else camera_up / np.linalg.norm(camera_up)
    # Rotation taking `up` to +z, keeping the mean viewing direction's azimuth arbitrary but deterministic.
    x_axis = np.cross([0.0, 1.0, 0.0], up) if abs(up[1]) < 0.9 else np.cross([1.0, 0.0, 0.0], up)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(up, x_axis)
    rotation = np.stack([x_axis, y_axis, up])  # rows: new axes in old coordinates
    scale = distance / float(np.median(np.linalg.norm(camera_to_worlds[:, :3, 3] - centre, axis=1)))

    normalised = camera_to_worlds.copy()
    normalised[:, :3, :3] = rotation @ camera_to_worlds[:, :3, :3]
    normalised[:, :3, 3] = scale * (camera_to_worlds[:, :3, 3] - centre) @ rotation.T
    moved_points = scale * (points - centre) @ rotation.T
    ground = None if plane is None else scale * (plane[1] - float(plane[0] @ centre))
    return normalised, moved_points, ground


def align_similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R and translation t minimising |s R source + t - target|^2 over points (N, 3) (Umeyama).

    Used to compare an SfM reconstruction, known only up to a similarity, with true camera positions.
    """
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(b.T @ a / len(source))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / (a**2).sum(axis=1).mean())
    return scale, rotation, target_mean - scale * rotation @ source_mean


def pose_errors_after_alignment(estimated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-camera rotation error (degrees) and centre error (fraction of the camera's distance from the scene
    centre) of estimated camera-to-worlds (N, 4, 4) after the best similarity onto the true ones.

    The similarity is fitted robustly: cameras whose centre lands more than 5 times the median error (and over
    1 % of the distance) away are left out of the next fit, twice, so one camera placed wildly wrong does not
    tilt the comparison of all the others. ``inlier`` says which cameras the final fit used.
    """
    distance = np.linalg.norm(truth[:, :3, 3] - look_at_point(truth), axis=1)
    inlier = np.ones(len(estimated), dtype=bool)
    for _ in range(3):
        scale, rotation, translation = align_similarity(estimated[inlier, :3, 3], truth[inlier, :3, 3])
        centres = scale * estimated[:, :3, 3] @ rotation.T + translation
        centre_error = np.linalg.norm(centres - truth[:, :3, 3], axis=1) / distance
        inlier = centre_error <= max(5.0 * float(np.median(centre_error[inlier])), 0.01)
    rotations = rotation @ estimated[:, :3, :3]
    relative = np.einsum("nji,njk->nik", rotations, truth[:, :3, :3])
    return {
        # Rotation vectors rather than arccos of the trace: exact for the hundredths of a degree that matter here.
        "rotation_deg": np.degrees(Rotation.from_matrix(relative).magnitude()),
        "centre_fraction": centre_error,
        "inlier": inlier,
    }


def write_ply(path: Path, points: np.ndarray) -> None:
    """Points (N, 3) as an ASCII PLY (what nerfstudio's ``ply_file_path`` names: the sparse point cloud)."""
    properties = "".join(f"property float {axis}\n" for axis in "xyz")
    header = f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n{properties}end_header\n"
    Path(path).write_text(header + "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in points))
