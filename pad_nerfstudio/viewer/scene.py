"""The inspection panel's 3D side: query cameras drawn in the viewer's scene, the viewer camera moved onto them.

Poses come from the pipeline in nerfstudio's world frame (that of the class's transforms.json, OpenGL camera axes:
x right, y up, looking down -z). The viser scene is the same frame scaled by nerfstudio's
`VISER_NERFSTUDIO_SCALE_RATIO`, with OpenCV camera axes (x right, y down, looking down +z). nerfstudio 1.1.5's
`ViewerControl.set_pose` is not implemented, so the viewer camera is moved by setting each client's camera directly.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np
import torch
import viser.transforms as vtf
from jaxtyping import Float
from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO
from torch import Tensor

from pad_nerfstudio.pose.se3 import rotation_error_deg, translation_error_percent

__all__ = [
    "ESTIMATED_COLOUR",
    "TRUE_COLOUR",
    "viser_pose",
    "nerfstudio_pose",
    "vertical_fov",
    "draw_query_camera",
    "move_viewer_cameras",
    "is_at_pose",
]

ESTIMATED_COLOUR = (255, 96, 32)
"""Frustum of the estimated query pose (orange)."""
TRUE_COLOUR = (40, 200, 90)
"""Frustum of the true query pose from test_poses.json (green)."""


def viser_pose(camera_to_world: Float[Tensor, "3 4"]) -> Tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of a nerfstudio camera-to-world in the viser scene.

    Example:
        >>> wxyz, position = viser_pose(torch.eye(4)[:3])
        >>> wxyz.round(3).tolist(), position.tolist()  # OpenGL -> OpenCV: a half turn about x
        ([0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    """
    matrix = torch.as_tensor(camera_to_world).detach().cpu().double().numpy()
    rotation = vtf.SO3.from_matrix(matrix[:3, :3]) @ vtf.SO3.from_x_radians(np.pi)
    return np.asarray(rotation.wxyz), matrix[:3, 3] * VISER_NERFSTUDIO_SCALE_RATIO


def nerfstudio_pose(wxyz: np.ndarray, position: np.ndarray) -> Float[Tensor, "3 4"]:
    """Inverse of `viser_pose`: the camera-to-world that nerfstudio renders for a viser camera (float64)."""
    rotation = vtf.SO3(np.asarray(wxyz, dtype=np.float64)) @ vtf.SO3.from_x_radians(np.pi)
    translation = np.asarray(position, dtype=np.float64) / VISER_NERFSTUDIO_SCALE_RATIO
    return torch.from_numpy(np.concatenate([rotation.as_matrix(), translation[:, None]], axis=1))


def vertical_fov(intrinsics: Float[Tensor, "4"], height: int) -> float:
    """Vertical field of view in radians of a pinhole camera (fx, fy, cx, cy) with images ``height`` pixels high."""
    return 2.0 * math.atan(0.5 * height / float(intrinsics[1]))


def draw_query_camera(
    server: Any,
    name: str,
    camera_to_world: Float[Tensor, "3 4"],
    intrinsics: Float[Tensor, "4"],
    size: Tuple[int, int],
    colour: Tuple[int, int, int],
    image: Optional[np.ndarray] = None,
    centre: Optional[Float[Tensor, "3"]] = None,
) -> Any:
    """Draw (or redraw, under the same scene name) a query camera as a frustum, holding the query image if given.

    Args:
        server: the viewer's `viser.ViserServer`.
        name: scene-tree name, e.g. "/inspection/estimated"; drawing again under a name replaces the old frustum.
        camera_to_world: the pose, nerfstudio frame.
        intrinsics: (fx, fy, cx, cy) of the query.
        size: (height, width) of the query.
        colour: frustum colour.
        image: the query, RGB uint8 (H, W, 3), shown on the frustum.
        centre: object centre; frusta are sized to a fifth of the camera's distance to it (visible at any scene
            scale, unlike a fixed size).

    Returns:
        The frustum's handle.
    """
    height, width = size
    wxyz, position = viser_pose(camera_to_world)
    distance = float(np.linalg.norm(position - _scene_point(centre)))
    return server.scene.add_camera_frustum(
        name,
        fov=vertical_fov(intrinsics, height),
        aspect=width / height,
        scale=max(0.2 * distance, 1e-3),
        color=colour,
        image=None if image is None else _thumbnail(image),
        format="png",
        wxyz=wxyz,
        position=position,
    )


def move_viewer_cameras(
    server: Any,
    camera_to_world: Float[Tensor, "3 4"],
    fov: float,
    centre: Optional[Float[Tensor, "3"]] = None,
) -> int:
    """Put every connected browser's camera at a pose with the given vertical field of view.

    The orbit point (viser's look-at) is set on the optical axis at the depth of ``centre``, so orbiting from
    there turns around the object. Returns the number of cameras moved.
    """
    wxyz, position = viser_pose(camera_to_world)
    forward = vtf.SO3(wxyz).as_matrix()[:, 2]  # OpenCV: the camera looks down +z
    depth = float((_scene_point(centre) - position) @ forward)
    clients: Dict[int, Any] = server.get_clients()
    for client in clients.values():
        with client.atomic():
            client.camera.fov = fov
            client.camera.position = position
            client.camera.wxyz = wxyz
            client.camera.look_at = position + max(depth, 1e-3) * forward
    return len(clients)


def is_at_pose(
    camera_to_world: Float[Tensor, "3 4"],
    target: Float[Tensor, "3 4"],
    centre: Optional[Float[Tensor, "3"]] = None,
    max_rotation_deg: float = 0.5,
    max_translation_percent: float = 0.5,
) -> bool:
    """Whether a camera sits at a target pose, up to the round trip through the browser's camera (float32)."""
    camera_to_world, target = torch.as_tensor(camera_to_world).double().cpu(), torch.as_tensor(target).double().cpu()
    rotation = float(rotation_error_deg(camera_to_world, target))
    translation = float(translation_error_percent(camera_to_world, target, centre))
    return rotation <= max_rotation_deg and translation <= max_translation_percent


def _scene_point(point: Optional[Float[Tensor, "3"]]) -> np.ndarray:
    """A nerfstudio world point in the viser scene (the world origin when None)."""
    if point is None:
        return np.zeros(3)
    return torch.as_tensor(point).double().cpu().numpy() * VISER_NERFSTUDIO_SCALE_RATIO


def _thumbnail(image: np.ndarray, max_side: int = 256) -> np.ndarray:
    """The image shrunk to at most ``max_side`` pixels so that the scene message stays small."""
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    if factor >= 1.0:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
