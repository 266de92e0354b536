"""Camera rays for pinhole cameras in nerfstudio's (OpenGL) convention, differentiable in the pose.

nerfstudio's `Cameras.generate_rays` is general (distortion, many camera models) but heavy for the inner
loop of pose refinement; this is the small subset we need, with the same conventions: pixel centres at
+0.5, camera looking down -z, image rows going down (-y).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def pixel_grid(width: int, height: int, device: torch.device | str = "cpu") -> Float[Tensor, "hw 2"]:
    """(u, v) pixel coordinates (column, row) of every pixel, row-major."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([cols, rows], dim=-1).reshape(-1, 2)


def pixel_rays(
    camera_to_world: Float[Tensor, "*c 3 4"], intrinsics: Float[Tensor, "*c 4"], pixels: Float[Tensor, "n 2"]
) -> tuple[Float[Tensor, "n 3"], Float[Tensor, "n 3"]]:
    """Origins and unit directions of the rays through ``pixels`` (u, v) for intrinsics (fx, fy, cx, cy).

    One camera for all pixels, or one camera per pixel (leading dimension n) for training batches.
    """
    fx, fy, cx, cy = intrinsics.unbind(-1)
    x = (pixels[:, 0] + 0.5 - cx) / fx
    y = -(pixels[:, 1] + 0.5 - cy) / fy
    camera_directions = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    directions = (camera_to_world[..., :3, :3] @ camera_directions[..., None])[..., 0]
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return camera_to_world[..., :3, 3].expand_as(directions), directions
