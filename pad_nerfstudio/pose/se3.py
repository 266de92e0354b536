"""Small, pure SE(3) helpers for pose estimation: corrections, conversions, projections and pose errors.

Poses are camera-to-world matrices (3x4 or 4x4) in nerfstudio's OpenGL convention (camera looks down -z,
+y up). Corrections are 6-vectors in nerfstudio's tangent layout (translation first, then rotation as an
axis-angle vector), exponentiated exactly with `torch.linalg.matrix_exp`. OpenCV (solvePnP) uses +z forward and
+y down, and puts integer pixel coordinates at pixel centres; the conversions for both live here so that
the rest of the pose code never flips an axis by hand. Everything is batched over leading dimensions and
keeps the caller's dtype (use float64 when comparing poses to a hundredth of a degree).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "apply_pose_correction",
    "camera_points_to_pixels",
    "compose",
    "exp_se3",
    "invert",
    "log_se3",
    "log_so3",
    "opencv_intrinsics_matrix",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "pixels_to_camera_directions",
    "reprojection_displacement",
    "rotation_error_deg",
    "to_homogeneous",
    "translation_error_percent",
]

# OpenGL camera axes (x right, y up, z backwards) <-> OpenCV camera axes (x right, y down, z forwards).
_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


def to_homogeneous(pose: Float[Tensor, "*b 3 4"]) -> Float[Tensor, "*b 4 4"]:
    """Append the [0, 0, 0, 1] row (no-op for 4x4 input)."""
    if pose.shape[-2] == 4:
        return pose
    bottom = torch.zeros(*pose.shape[:-2], 1, 4, dtype=pose.dtype, device=pose.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([pose, bottom], dim=-2)


def compose(a: Float[Tensor, "*b 3 4"], b: Float[Tensor, "*b 3 4"]) -> Float[Tensor, "*b 3 4"]:
    """Rigid transform ``a @ b`` of two 3x4 matrices."""
    rotation = a[..., :3, :3] @ b[..., :3, :3]
    translation = a[..., :3, :3] @ b[..., :3, 3:] + a[..., :3, 3:]
    return torch.cat([rotation, translation], dim=-1)


def invert(pose: Float[Tensor, "*b 3 4"]) -> Float[Tensor, "*b 3 4"]:
    """Inverse of a rigid transform given as 3x4 (or 4x4; the result is 3x4)."""
    rotation_t = pose[..., :3, :3].transpose(-1, -2)
    return torch.cat([rotation_t, -rotation_t @ pose[..., :3, 3:]], dim=-1)


def exp_se3(tangent: Float[Tensor, "*b 6"]) -> Float[Tensor, "*b 3 4"]:
    """SE(3) exponential of (translation-part, rotation-part) 6-vectors, as nerfstudio's `exp_map_SE3`, batched.

    The matrix exponential of the 4x4 twist: exact at any angle (no small-angle series) and, for the single
    corrections of each alignment step, half the cost of nerfstudio's forty small tensor operations.
    """
    v, w = tangent[..., :3], tangent[..., 3:]
    zero = torch.zeros_like(w[..., 0])
    twist = torch.stack(
        [
            torch.stack([zero, -w[..., 2], w[..., 1], v[..., 0]], -1),
            torch.stack([w[..., 2], zero, -w[..., 0], v[..., 1]], -1),
            torch.stack([-w[..., 1], w[..., 0], zero, v[..., 2]], -1),
            torch.stack([zero, zero, zero, zero], -1),
        ],
        -2,
    )
    return torch.linalg.matrix_exp(twist)[..., :3, :]


def log_so3(rotation: Float[Tensor, "*b 3 3"]) -> Float[Tensor, "*b 3"]:
    """Axis-angle vector of rotation matrices (angle in [0, pi]); the inverse of the SO(3) exponential.

    The angle comes from atan2 of the antisymmetric and symmetric parts, which stays accurate for tiny angles
    (where arccos of the trace loses half of the significant digits). Near pi the axis is read from the
    symmetric part instead.
    """
    skew = torch.stack(
        [
            rotation[..., 2, 1] - rotation[..., 1, 2],
            rotation[..., 0, 2] - rotation[..., 2, 0],
            rotation[..., 1, 0] - rotation[..., 0, 1],
        ],
        dim=-1,
    )
    sin_angle = 0.5 * skew.norm(dim=-1)
    cos_angle = 0.5 * (rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    angle = torch.atan2(sin_angle, cos_angle)
    # angle / (2 sin(angle)) -> 1/2 as angle -> 0
    small = sin_angle < 1e-7
    scale = torch.where(small, 0.5 + angle**2 / 12.0, angle / (2.0 * sin_angle.clamp_min(1e-30)))
    result = skew * scale[..., None]
    near_pi = cos_angle < -0.999
    if bool(near_pi.any()):
        # R = I + 2 a a^T - 2 I at angle pi: the axis is the dominant column of (R + I) / 2.
        symmetric = 0.5 * (rotation[near_pi] + torch.eye(3, dtype=rotation.dtype, device=rotation.device))
        column = symmetric.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = symmetric[torch.arange(len(column)), :, column]
        axis = axis / axis.norm(dim=-1, keepdim=True)
        # keep the sign consistent with the (small but non-zero) antisymmetric part
        sign = torch.where((axis * skew[near_pi]).sum(-1) < 0, -1.0, 1.0).to(axis.dtype)
        result[near_pi] = axis * (angle[near_pi] * sign)[..., None]
    return result


def log_se3(pose: Float[Tensor, "*b 3 4"]) -> Float[Tensor, "*b 6"]:
    """SE(3) logarithm in nerfstudio's layout (translation-part, rotation-part): ``exp_se3(log_se3(T)) == T``."""
    omega = log_so3(pose[..., :3, :3])
    theta = omega.norm(dim=-1, keepdim=True)[..., None]
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    skew = torch.zeros(*omega.shape[:-1], 3, 3, dtype=pose.dtype, device=pose.device)
    skew[..., 0, 1], skew[..., 0, 2], skew[..., 1, 2] = -omega[..., 2], omega[..., 1], -omega[..., 0]
    skew = skew - skew.transpose(-1, -2)
    # V^-1 = I - W/2 + (1 - theta sin(theta) / (2 (1 - cos theta))) / theta^2 W^2; the coefficient -> 1/12 at 0.
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    coefficient = (1.0 - safe * torch.sin(safe) / (2.0 * (1.0 - torch.cos(safe)))) / safe**2
    coefficient = torch.where(small, torch.full_like(theta, 1.0 / 12.0), coefficient)
    v_inverse = eye - 0.5 * skew + coefficient * (skew @ skew)
    return torch.cat([(v_inverse @ pose[..., :3, 3:])[..., 0], omega], dim=-1)


def apply_pose_correction(
    camera_to_world: Float[Tensor, "*b 3 4"],
    correction: Float[Tensor, "*b 6"],
    side: Literal["right", "left"] = "right",
) -> Float[Tensor, "*b 3 4"]:
    """Apply a 6-vector SE(3) correction to camera-to-world poses.

    ``side="right"`` (the default, used by the refinement here) computes ``c2w @ exp(correction)``: the
    correction is expressed in the camera's own frame (translation along the camera axes, rotation about
    them), so its components have the same meaning wherever the camera is. ``side="left"`` computes
    ``exp(correction) @ c2w``, a correction in world coordinates (what the released iNeRF code does).

    Example:
        >>> c2w = torch.eye(4)[:3]
        >>> apply_pose_correction(c2w, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))[:, 3]  # one unit backwards
        tensor([0., 0., 1.])
    """
    delta = exp_se3(correction.to(camera_to_world.dtype))
    if side == "right":
        return compose(camera_to_world[..., :3, :], delta)
    if side == "left":
        return compose(delta, camera_to_world[..., :3, :])
    raise ValueError(f"side must be 'right' or 'left', got {side!r}.")


def orbit(
    camera_to_world: Float[Tensor, "3 4"], axis: Float[Tensor, "3"], degrees: float, centre: Float[Tensor, "3"]
) -> Float[Tensor, "3 4"]:
    """The camera turned by ``degrees`` about the world ``axis`` through ``centre``: it keeps facing an object there
    while the object's image moves (an axis along the camera's x or y shifts it, along z rolls it).

    Example:
        >>> c2w = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4]])
        >>> orbit(c2w, torch.tensor([1.0, 0, 0]), 90.0, torch.zeros(3))[:, 3].round()  # from +z over to -y
        tensor([ 0., -4.,  0.])
    """
    dtype = camera_to_world.dtype
    axis = torch.as_tensor(axis, dtype=torch.float64)
    tangent = torch.cat([torch.zeros(3, dtype=torch.float64), axis / axis.norm() * math.radians(degrees)])
    rotation = exp_se3(tangent)[:3, :3]
    pose = camera_to_world[:3, :4].double()
    centre = torch.as_tensor(centre, dtype=torch.float64).reshape(3)
    turned = torch.cat([rotation @ pose[:, :3], (rotation @ (pose[:, 3] - centre) + centre)[:, None]], dim=1)
    return turned.to(dtype)


def opengl_to_opencv(camera_to_world: Float[Tensor, "*b 3 4"]) -> Float[Tensor, "*b 3 4"]:
    """Camera-to-world of the same camera with OpenCV axes (+z forward, +y down); the conversion is its own inverse."""
    flip = _FLIP_YZ.to(camera_to_world)
    return torch.cat([camera_to_world[..., :3, :3] @ flip, camera_to_world[..., :3, 3:]], dim=-1)


opencv_to_opengl = opengl_to_opencv


def opencv_intrinsics_matrix(intrinsics: Float[Tensor, "4"] | np.ndarray) -> np.ndarray:
    """3x3 OpenCV camera matrix for (fx, fy, cx, cy) in nerfstudio's convention.

    nerfstudio puts pixel (i, j)'s centre at (i + 0.5, j + 0.5) while OpenCV (keypoints, PnP, remap) puts it at
    (i, j), so the principal point moves by half a pixel; without this every estimate is off by half a pixel.
    """
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])


def pixels_to_camera_directions(pixels: Float[Tensor, "n 2"], intrinsics: Float[Tensor, "4"]) -> Float[Tensor, "n 3"]:
    """Unit ray directions in OpenGL camera coordinates for pixels given as OpenCV-style (u, v) coordinates.

    Pixel coordinates here follow OpenCV (integer = pixel centre), as in ``camera_points_to_pixels``;
    `pad_nerfstudio.field.rays.pixel_rays` takes the same numbers (it adds the half pixel itself).
    """
    fx, fy, cx, cy = intrinsics.to(pixels.dtype)
    x = (pixels[:, 0] + 0.5 - cx) / fx
    y = -(pixels[:, 1] + 0.5 - cy) / fy
    directions = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    return directions / directions.norm(dim=-1, keepdim=True)


def camera_points_to_pixels(
    points: Float[Tensor, "*b 3"], intrinsics: Float[Tensor, "4"]
) -> tuple[Float[Tensor, "*b 2"], Float[Tensor, "*b"]]:
    """Project OpenGL camera-frame points to OpenCV-style pixel coordinates; also returns depth along -z."""
    fx, fy, cx, cy = intrinsics.to(points.dtype)
    depth = -points[..., 2]
    safe = torch.where(depth.abs() < 1e-9, torch.full_like(depth, 1e-9), depth)
    u = fx * points[..., 0] / safe + cx - 0.5
    v = -fy * points[..., 1] / safe + cy - 0.5
    return torch.stack([u, v], dim=-1), depth


def rotation_error_deg(rotation_a: Float[Tensor, "*b 3 _"], rotation_b: Float[Tensor, "*b 3 _"]) -> Float[Tensor, "*b"]:
    """Geodesic angle in degrees between two rotations (the rotation blocks of poses are accepted too).

    Example:
        >>> c2w = torch.eye(4, dtype=torch.float64)[:3]
        >>> turned = apply_pose_correction(c2w, torch.tensor([0, 0, 0, 0, 0, 0.01], dtype=torch.float64))
        >>> round(float(rotation_error_deg(c2w, turned)), 4)
        0.573
    """
    dtype = torch.promote_types(rotation_a.dtype, rotation_b.dtype)
    relative = rotation_a[..., :3, :3].to(dtype).transpose(-1, -2) @ rotation_b[..., :3, :3].to(dtype)
    return torch.rad2deg(log_so3(relative).norm(dim=-1))


def translation_error_percent(
    camera_to_world_a: Float[Tensor, "*b 3 4"],
    camera_to_world_b: Float[Tensor, "*b 3 4"],
    centre: Float[Tensor, "3"] | None = None,
) -> Float[Tensor, "*b"]:
    """Distance between camera centres as a percentage of camera b's (the reference's) distance to ``centre``.

    ``centre`` is the object centre (default: the world origin, where MAD cameras look).
    """
    dtype = torch.promote_types(camera_to_world_a.dtype, camera_to_world_b.dtype)
    camera_to_world_a, camera_to_world_b = camera_to_world_a.to(dtype), camera_to_world_b.to(dtype)
    centre = torch.zeros(3, dtype=dtype) if centre is None else centre.to(camera_to_world_b)
    distance = (camera_to_world_b[..., :3, 3] - centre).norm(dim=-1)
    return 100.0 * (camera_to_world_a[..., :3, 3] - camera_to_world_b[..., :3, 3]).norm(dim=-1) / distance


def reprojection_displacement(
    points: Float[Tensor, "n 3"],
    camera_to_world_a: Float[Tensor, "3 4"],
    camera_to_world_b: Float[Tensor, "3 4"],
    intrinsics: Float[Tensor, "4"],
) -> Float[Tensor, " n"]:
    """Image displacement in pixels of world points seen from pose a instead of pose b (same intrinsics).

    With ``points`` on the object's visible surface this is the misalignment a reference rendered at the
    estimated pose has relative to the query: the quantity anomaly scoring actually suffers from.
    """
    pixels = []
    for pose in (camera_to_world_a, camera_to_world_b):
        pose = pose.to(points.dtype)
        camera = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> camera: R^T (p - t)
        pixels.append(camera_points_to_pixels(camera, intrinsics)[0])
    return (pixels[0] - pixels[1]).norm(dim=-1)
