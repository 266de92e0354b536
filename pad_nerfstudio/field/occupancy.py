"""Occupancy grid: where the object can be, so that rays spend samples only there.

The grid starts as the visual hull of the training silhouettes (a voxel is carved when enough training
views see background where it projects) and is then tightened from the learned density during
training. Ray marching asks it which uniform samples along a ray are worth evaluating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn


def ray_box_intersection(
    origins: Float[Tensor, "n 3"], directions: Float[Tensor, "n 3"], box_min: Tensor, box_max: Tensor
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Entry and exit distances of rays through an axis-aligned box (exit < entry when missed)."""
    inverse = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (box_min - origins) * inverse
    t1 = (box_max - origins) * inverse
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


class OccupancyGrid(nn.Module):
    """A boolean voxel grid over the scene box, stored in checkpoints."""

    occupied: Bool[Tensor, "r r r"]

    def __init__(self, aabb: Float[Tensor, "2 3"], resolution: int = 64):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("aabb", aabb.clone().float())
        self.register_buffer("occupied", torch.ones((resolution,) * 3, dtype=torch.bool))

    @property
    def voxel_size(self) -> float:
        return float(((self.aabb[1] - self.aabb[0]) / self.resolution).min())

    def voxel_centres(self) -> Float[Tensor, "r r r 3"]:
        r = self.resolution
        steps = (torch.arange(r, device=self.aabb.device, dtype=torch.float32) + 0.5) / r
        grid = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), dim=-1)
        return self.aabb[0] + grid * (self.aabb[1] - self.aabb[0])

    def occupied_box(self) -> tuple[Tensor, Tensor]:
        """Tight axis-aligned bounds of the occupied voxels (the whole box when nothing is occupied)."""
        index = self.occupied.nonzero()
        if len(index) == 0:
            return self.aabb[0], self.aabb[1]
        size = (self.aabb[1] - self.aabb[0]) / self.resolution
        return self.aabb[0] + index.amin(0) * size, self.aabb[0] + (index.amax(0) + 1) * size

    def query(self, points: Float[Tensor, "*bs 3"]) -> Bool[Tensor, "*bs"]:
        """True where a point falls in an occupied voxel (False outside the box)."""
        normalised = (points - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        index = (normalised * self.resolution).floor().long()
        inside = ((index >= 0) & (index < self.resolution)).all(-1)
        index = index.clamp(0, self.resolution - 1)
        flat = (index[..., 0] * self.resolution + index[..., 1]) * self.resolution + index[..., 2]
        return inside & self.occupied.reshape(-1)[flat]

    @torch.no_grad()
    def carve_visual_hull(
        self,
        camera_to_worlds: Float[Tensor, "n 3 4"],
        intrinsics: Float[Tensor, "n 4"],
        silhouettes: list[Bool[Tensor, "h w"]],
        min_votes: float = 0.1,
        dilation: int = 2,
    ) -> None:
        """Keep the voxels that do not project onto background in at least ``min_votes`` of their views.

        Silhouettes are dilated and a vote fraction is required (rather than a single view) so that
        thin parts and near-white object regions survive imperfect foreground masks.
        """
        centres = self.voxel_centres().reshape(-1, 3).cpu()
        background_votes = torch.zeros(len(centres))
        seen = torch.zeros(len(centres))
        masks = torch.stack(silhouettes).float()[:, None]
        if dilation > 0:
            masks = F.max_pool2d(masks, 2 * dilation + 1, 1, dilation)
        masks = masks[:, 0] > 0
        height, width = masks.shape[1:]
        for pose, (fx, fy, cx, cy), silhouette in zip(camera_to_worlds, intrinsics, masks):
            local = (centres - pose[:, 3]) @ pose[:, :3]  # world -> camera (OpenGL axes: looks down -z)
            depth = -local[:, 2].clamp(max=-1e-6)
            u = (fx * local[:, 0] / depth + cx).floor()
            v = (-fy * local[:, 1] / depth + cy).floor()
            visible = (local[:, 2] < 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            pixel = (v.clamp(0, height - 1) * width + u.clamp(0, width - 1)).long()
            seen += visible.float()
            background_votes += (visible & ~silhouette.reshape(-1)[pixel]).float()
        keep = background_votes <= min_votes * seen.clamp_min(1)
        self.occupied = keep.reshape(self.occupied.shape).to(self.occupied.device) & self.occupied

    @torch.no_grad()
    def update_from_density(self, alpha_fn, threshold: float = 1e-3, dilation: int = 1) -> float:
        """Drop voxels whose jittered samples all have opacity below ``threshold``; returns occupied fraction.

        Dilation keeps a one-voxel safety margin so surfaces between voxel centres are not cut.
        """
        centres = self.voxel_centres().reshape(-1, 3)
        candidates = self.occupied.reshape(-1).nonzero()[:, 0]
        size = (self.aabb[1] - self.aabb[0]) / self.resolution
        peak = torch.zeros(len(candidates), device=centres.device)
        for _ in range(2):
            jitter = (torch.rand(len(candidates), 3, device=centres.device) - 0.5) * size
            for chunk in torch.split(torch.arange(len(candidates), device=centres.device), 1 << 18):
                peak[chunk] = torch.maximum(peak[chunk], alpha_fn(centres[candidates[chunk]] + jitter[chunk]))
        alive = torch.zeros(self.occupied.numel(), dtype=torch.bool, device=centres.device)
        alive[candidates] = peak > threshold
        alive = alive.reshape(self.occupied.shape)
        if dilation > 0:
            kernel = 2 * dilation + 1
            alive = F.max_pool3d(alive[None, None].float(), kernel, 1, dilation)[0, 0] > 0
        self.occupied = alive & self.occupied
        return float(self.occupied.float().mean())
