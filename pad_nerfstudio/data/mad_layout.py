"""Reading the MAD folder layout: class resolution, posed training views and labelled test queries.

This module knows the on-disk conventions of MAD-Sim (and of nerfstudio-format captures used for
MAD-Real) and nothing about nerfstudio itself, so it is cheap to import and easy to test. Every
problem a user can cause with a bad folder becomes a :class:`MADFormatError` that names the file and
says what was expected.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

GOOD = "good"
"""Name of the defect-free test folder (and of the label given to its images)."""


class MADFormatError(ValueError):
    """A dataset folder does not follow the MAD layout; the message says where and how to fix it."""


@dataclass
class Intrinsics:
    """Pinhole intrinsics of one image, in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


@dataclass
class TrainingViews:
    """The posed, defect-free training views of one class."""

    image_paths: list[Path]
    camera_to_worlds: np.ndarray  # (N, 4, 4), OpenGL camera axes
    intrinsics: list[Intrinsics]
    mask_paths: list[Path | None] = field(default_factory=list)
    """Object masks (white = object) of photos taken on a backdrop, from each frame's ``mask_path``; None for
    views on MAD's white background."""

    @property
    def on_backdrop(self) -> bool:
        """The views are photos on a backdrop, with object masks (MAD-Real after ``pad-poses``)."""
        return any(path is not None for path in self.mask_paths)


@dataclass
class TestQueries:
    """The unposed test images of one class with their labels and ground-truth masks."""

    image_paths: list[Path]
    defect_types: list[str]  # GOOD or the defect folder name
    mask_paths: list[Path | None]  # None for good images
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height)

    @property
    def labels(self) -> list[int]:
        return [int(t != GOOD) for t in self.defect_types]


def _normalise_class_name(name: str) -> str:
    """'01Gorilla', 'gorilla' and 'Gorilla' all become 'gorilla'."""
    return re.sub(r"^\d+[_\- ]?", "", name).lower()


def _looks_like_class(folder: Path) -> bool:
    return (folder / "transforms.json").is_file() or (folder / "train").is_dir()


def resolve_class_dir(data: Path) -> Path:
    """Find the class folder that ``data`` designates.

    ``data`` is either the class folder itself or ``<dataset root>/<class>`` where the class is given
    loosely: ``mad/01Gorilla``, ``mad/gorilla`` and ``mad/Gorilla`` all resolve to ``mad/01Gorilla``.

    Example:
        >>> resolve_class_dir(Path("mad/gorilla"))  # doctest: +SKIP
        PosixPath('mad/01Gorilla')
    """
    data = Path(data)
    if data.is_dir() and _looks_like_class(data):
        return data
    root, wanted = data.parent, _normalise_class_name(data.name)
    if not root.is_dir():
        raise MADFormatError(f"Data folder {data} does not exist (nor does its parent {root}).")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and _looks_like_class(p))
    matches = [p for p in classes if _normalise_class_name(p.name) == wanted]
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(p.name for p in classes) or "none"
    if data.is_dir():
        raise MADFormatError(
            f"{data} is not a MAD class folder: expected transforms.json and train/good/ inside it. "
            f"Class folders found next to it in {root}: {found}."
        )
    raise MADFormatError(f"No class '{data.name}' in {root}. Classes found: {found}.")


def natural_key(path: Path) -> tuple:
    """Sort key that orders 0, 1, 2, ..., 10 numerically (MAD file names are not zero-padded)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, read from its header, with a clear error for unreadable files."""
    if not path.is_file():
        raise MADFormatError(f"Image {path} does not exist.")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise MADFormatError(f"Cannot read image {path}: {error}. Expected a PNG/JPEG image.") from error


def _as_pose(matrix, where: str) -> np.ndarray:
    try:
        pose = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise MADFormatError(f"{where}: transform_matrix is not numeric ({error}).") from error
    if pose.shape != (4, 4):
        raise MADFormatError(f"{where}: transform_matrix must be a 4x4 camera-to-world matrix, got shape {pose.shape}.")
    if not np.isfinite(pose).all():
        raise MADFormatError(f"{where}: transform_matrix contains NaN or infinite values.")
    return pose


NON_RIGID_TOLERANCE = 1e-3
"""Largest |R^T R - I| entry accepted as a rotation (float32 round-off in exported poses is far below it)."""


def _rigid(pose: np.ndarray, where: str) -> np.ndarray:
    """``pose`` with its rotation block made orthonormal, with a warning when it was scaled or sheared."""
    rotation = pose[:3, :3]
    if np.linalg.det(rotation) <= 0:
        raise MADFormatError(
            f"{where}: transform_matrix is not a camera pose (its 3x3 block mirrors or collapses space, "
            f"determinant {np.linalg.det(rotation):.3g}). Expected a rotation and a translation."
        )
    if np.abs(rotation.T @ rotation - np.eye(3)).max() <= NON_RIGID_TOLERANCE:
        return pose
    left, singular, right = np.linalg.svd(rotation)
    rigid = pose.copy()
    rigid[:3, :3] = left @ right  # the nearest rotation (orthogonal Procrustes)
    warnings.warn(
        f"{where}: transform_matrix is not rigid (its 3x3 block has scales {', '.join(f'{v:.4g}' for v in singular)} "
        "instead of 1, 1, 1: scaled or sheared). Its rotation was orthonormalised to the nearest rotation; fix the "
        "export if the camera poses should be exact.",
        stacklevel=2,
    )
    return rigid


def _intrinsics(meta: dict, frame: dict, size: tuple[int, int], where: str) -> Intrinsics:
    """Intrinsics from MAD/Blender (`camera_angle_x`) or nerfstudio (`fl_x`, `cx`, ...) keys, frame overrides."""

    def get(key):
        return frame.get(key, meta.get(key))

    width, height = size
    if get("fl_x") is not None:
        fx = float(get("fl_x"))
        fy = float(get("fl_y") if get("fl_y") is not None else fx)
        # Intrinsics refer to the declared w/h; images may have been resized since (e.g. images_2/).
        sx = width / float(get("w") or width)
        sy = height / float(get("h") or height)
        cx = float(get("cx") if get("cx") is not None else (get("w") or width) / 2) * sx
        cy = float(get("cy") if get("cy") is not None else (get("h") or height) / 2) * sy
        return Intrinsics(fx * sx, fy * sy, cx, cy, width, height)
    if get("camera_angle_x") is not None:
        fx = 0.5 * width / np.tan(0.5 * float(get("camera_angle_x")))
        fy = 0.5 * height / np.tan(0.5 * float(get("camera_angle_y"))) if get("camera_angle_y") is not None else fx
        return Intrinsics(fx, fy, width / 2.0, height / 2.0, width, height)
    raise MADFormatError(f"{where}: no intrinsics: expected 'camera_angle_x' (MAD/Blender) or 'fl_x' (nerfstudio).")


def read_training_views(class_dir: Path) -> TrainingViews:
    """Parse ``transforms.json`` of a class folder into posed training views."""
    transforms = class_dir / "transforms.json"
    if not transforms.is_file():
        raise MADFormatError(
            f"{transforms} not found. Training needs posed defect-free views: MAD-Sim ships them; MAD-Real is "
            f"released without poses. Estimate them (and the object's masks) first with `pad-poses {class_dir}`."
        )
    try:
        meta = json.loads(transforms.read_text())
    except json.JSONDecodeError as error:
        raise MADFormatError(f"{transforms} is not valid JSON: {error}.") from error
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise MADFormatError(f"{transforms} has no 'frames' list: expected {{'frames': [{{'file_path', ...}}]}}.")

    paths, poses, intrinsics, masks = [], [], [], []
    for index, frame in enumerate(frames):
        where = f"{transforms}, frame {index}"
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise MADFormatError(f"{where}: expected keys 'file_path' and 'transform_matrix'.")
        path = class_dir / frame["file_path"]
        if path.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
            path = path.with_name(path.name + ".png")  # Blender-style paths omit the suffix
        if not path.is_file():
            raise MADFormatError(f"{where}: image {path} does not exist.")
        poses.append(_rigid(_as_pose(frame["transform_matrix"], where), f"{where} ({frame['file_path']})"))
        intrinsics.append(_intrinsics(meta, frame, image_size(path), where))
        paths.append(path)
        masks.append(_frame_mask(class_dir, frame, image_size(path), where))
    return TrainingViews(paths, np.stack(poses), intrinsics, masks)


def _frame_mask(class_dir: Path, frame: dict, size: tuple[int, int], where: str) -> Path | None:
    """The frame's object mask (nerfstudio's ``mask_path``), checked to exist and to match its image's size."""
    if not frame.get("mask_path"):
        return None
    mask = class_dir / frame["mask_path"]
    if not mask.is_file():
        raise MADFormatError(
            f"{where}: mask {mask} does not exist. Run `pad-poses {class_dir} --force` to write the masks again, or "
            "remove the frames' 'mask_path' keys if the photos show the object on white."
        )
    if image_size(mask) != size:
        raise MADFormatError(f"{where}: mask {mask} is {image_size(mask)} pixels but its image is {size}.")
    return mask


def read_test_queries(class_dir: Path) -> TestQueries:
    """List every image under ``test/<type>/`` in numeric order, with its label and ground-truth mask."""
    test_dir = class_dir / "test"
    if not test_dir.is_dir():
        raise MADFormatError(f"{test_dir} not found: expected test/<defect type>/<n>.png (e.g. test/good/0.png).")
    queries = TestQueries([], [], [], [])
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        images = sorted(
            (p for p in type_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}), key=natural_key
        )
        for path in images:
            size = image_size(path)
            mask = None
            if type_dir.name != GOOD:
                mask = class_dir / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
                if not mask.is_file():
                    raise MADFormatError(
                        f"Ground-truth mask {mask} for test image {path} does not exist: every defective test image "
                        "needs ground_truth/<defect type>/<n>_mask.png (white where the defect is). Add the mask, or "
                        "move the image to test/good/ if it shows no defect."
                    )
                if image_size(mask) != size:
                    raise MADFormatError(
                        f"Ground-truth mask {mask} is {image_size(mask)} pixels but its image {path} is {size}: "
                        f"masks must have the size of their image. Resize the mask to {size[0]} x {size[1]} "
                        "(nearest neighbour) or the image to the mask's size."
                    )
            queries.image_paths.append(path)
            queries.defect_types.append(type_dir.name)
            queries.mask_paths.append(mask)
            queries.sizes.append(size)
    if not queries.image_paths:
        raise MADFormatError(
            f"{test_dir} contains no test images: expected test/<defect type>/<n>.png, at least test/good/<n>.png "
            "(.png or .jpg)."
        )
    return queries


class TruePoses(dict):
    """True camera-to-worlds keyed by a test image's path in the class folder, compared without its extension.

    test_poses.json names ``test/good/0.png``; a copy of the class converted to JPEG still finds that pose under
    ``test/good/0.jpg``. Keys are stored as ``test/good/0``.
    """

    @staticmethod
    def key(relative_path: str | Path) -> str:
        """``test/good/0.png`` -> ``test/good/0`` (also from ``./test/good/0.jpg``)."""
        return PurePosixPath(Path(relative_path).as_posix()).with_suffix("").as_posix()

    def __getitem__(self, relative_path: str | Path) -> np.ndarray:
        return super().__getitem__(self.key(relative_path))

    def __contains__(self, relative_path: object) -> bool:
        return isinstance(relative_path, (str, Path)) and super().__contains__(self.key(relative_path))

    def get(self, relative_path: str | Path, default: np.ndarray | None = None) -> np.ndarray | None:
        return super().get(self.key(relative_path), default)


def read_true_poses(class_dir: Path) -> TruePoses:
    """True camera-to-world of each test image from pad-synth's test_poses.json, looked up by the image's path in
    the class folder with or without its extension (see :class:`TruePoses`).

    Empty when the class has no such file (real MAD data): only used to measure pose error, never as input.

    Example:
        >>> read_true_poses(Path("data/pad-synth/01Gorilla")).get("test/good/0.jpg").shape  # doctest: +SKIP
        (4, 4)
    """
    path = class_dir / "test_poses.json"
    if not path.exists():
        return TruePoses()
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MADFormatError(f"{path} is not valid JSON: {error}.") from error
    return TruePoses({TruePoses.key(name): np.asarray(pose, dtype=np.float64) for name, pose in stored.items()})


def spread_subset(positions: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` evenly spread points (farthest-point sampling, deterministic).

    Used for the paper's dense-to-sparse study (``--train-views``) and to pick monitoring views.
    """
    count = min(count, len(positions))
    chosen = [0]
    distance = np.linalg.norm(positions - positions[0], axis=1)
    while len(chosen) < count:
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(positions - positions[chosen[-1]], axis=1))
    return np.sort(np.array(chosen))


def object_sphere(camera_to_worlds: np.ndarray, intrinsics: list[Intrinsics]) -> tuple[np.ndarray, float]:
    """Centre and radius of the region every camera sees: where a single object must lie.

    The centre is the least-squares point closest to all optical axes (the origin for MAD, whose cameras
    all look at it); the radius is the largest sphere around it inside every camera's field of view.
    """
    origins = camera_to_worlds[:, :3, 3]
    axes = -camera_to_worlds[:, :3, 2]  # OpenGL cameras look down -z
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    projectors = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    centre = np.linalg.solve(projectors.sum(0), np.einsum("nij,nj->i", projectors, origins))
    distances = np.linalg.norm(origins - centre, axis=1)
    half_fov = np.array([min(np.arctan(k.width / 2 / k.fx), np.arctan(k.height / 2 / k.fy)) for k in intrinsics])
    return centre, float(np.min(distances * np.sin(half_fov)))
