"""The object field: density and colour of one object from factorised feature grids.

Each quantity is a TensoRF-style vector-matrix factorisation (three axis-aligned feature planes times
three feature lines) at two resolutions, a coarse one that learns the shape quickly and a fine one for
detail. Compared with a hash grid and MLPs this needs a handful of `grid_sample` calls per point, which
is what makes training and rendering fast on a CPU, and it stays differentiable with respect to the
sample positions (needed to refine camera poses through the frozen field). Colour is view-independent
by default: anomaly-free objects under fixed lighting are close to Lambertian, and a view-independent
colour cannot explain away a defect by a viewing-angle trick.

`--pipeline.model.encoding hash` swaps both grids for Instant-NGP hash grids (`hash_grid.py`) behind the same
interface; a small network then turns the hashed features into density, since hashed cells collide.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from pad_nerfstudio.field.hash_grid import HashGrid, HashImplementation


class VectorMatrixGrid(nn.Module):
    """Sum over resolutions of a vector-matrix factorised 3D feature grid, input in [-1, 1]^3.

    Unlike nerfstudio's `TensorVMEncoding` the sample positions keep their gradient (for pose refinement).
    """

    _PLANES = ((0, 1), (0, 2), (1, 2))
    _LINES = (2, 1, 0)

    def __init__(self, resolutions: tuple[int, ...], components: int, init_scale: float = 0.1):
        super().__init__()
        self.components = components
        self.planes = nn.ParameterList(nn.Parameter(init_scale * torch.randn(3, components, r, r)) for r in resolutions)
        self.lines = nn.ParameterList(nn.Parameter(init_scale * torch.randn(3, components, r, 1)) for r in resolutions)

    @property
    def out_dim(self) -> int:
        return 3 * self.components

    def forward(self, positions: Float[Tensor, "n 3"]) -> Float[Tensor, "n f"]:
        # Points laid out along the sampled grid's width (3, 1, n, 2): CPU grid_sample vectorises that axis.
        plane_coords = torch.stack([positions[:, list(axes)] for axes in self._PLANES])[:, None]
        line_coords = torch.stack([positions[:, axis] for axis in self._LINES])
        line_coords = torch.stack([torch.zeros_like(line_coords), line_coords], dim=-1)[:, None]
        features = 0.0
        for plane, line in zip(self.planes, self.lines):
            plane_features = F.grid_sample(plane, plane_coords, mode="bilinear", align_corners=True)
            line_features = F.grid_sample(line, line_coords, mode="bilinear", align_corners=True)
            features = features + plane_features * line_features  # 3 c 1 n
        return features.reshape(self.out_dim, -1).t()

    def total_variation(self) -> Tensor:
        """Mean squared difference between neighbouring cells of the fine planes and lines: a smoothness prior
        for sparse views, where a cell seen by few rays would otherwise stay noisy."""
        plane, line = self.planes[-1], self.lines[-1]
        return (
            (plane[..., 1:, :] - plane[..., :-1, :]).pow(2).mean()
            + (plane[..., :, 1:] - plane[..., :, :-1]).pow(2).mean()
            + (line[..., 1:, :] - line[..., :-1, :]).pow(2).mean()
        )

    def l1(self) -> Tensor:
        """Mean absolute value of the fine planes: a sparsity prior that clears floaters."""
        return self.planes[-1].abs().mean() + self.lines[-1].abs().mean()


class ObjectField(nn.Module):
    """Density and RGB colour at world positions inside an axis-aligned box."""

    def __init__(
        self,
        aabb: Float[Tensor, "2 3"],
        resolutions: tuple[int, ...] = (48, 192),
        density_components: int = 8,
        colour_components: int = 16,
        density_shift: float = -5.0,
        view_dependent: bool = False,
        encoding: Literal["vm", "hash"] = "vm",
        hash_levels: int = 16,
        hash_log2_table_size: int = 19,
        hash_implementation: HashImplementation = "auto",
    ):
        super().__init__()
        self.register_buffer("aabb", aabb.clone().float())
        self.density_shift = density_shift
        self.encoding = encoding
        if encoding == "vm":
            self.density_grid = VectorMatrixGrid(resolutions, density_components)
            self.colour_grid = VectorMatrixGrid(resolutions, colour_components)
            self.density_head = None  # the sum of the factorised features is the raw density (as in TensoRF)
        elif encoding == "hash":
            # Levels from Instant-NGP's coarsest (16) to the finest vm resolution, so both sample the same detail.
            grid = dict(levels=hash_levels, log2_table_size=hash_log2_table_size, implementation=hash_implementation)
            self.density_grid = HashGrid(16, max(resolutions), **grid)
            self.colour_grid = HashGrid(16, max(resolutions), **grid)
            # Hashed cells collide at fine levels; a small network can tell the colliding points apart.
            self.density_head = nn.Sequential(nn.Linear(self.density_grid.out_dim, 32), nn.ReLU(), nn.Linear(32, 1))
        else:
            raise ValueError(f"Unknown field encoding {encoding!r}: choose 'vm' or 'hash'.")
        self.view_dependent = view_dependent
        in_dim = self.colour_grid.out_dim + (3 if view_dependent else 0)
        self.colour_head = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, 3))

    def grid_parameters(self) -> list[nn.Parameter]:
        """The feature grids' parameters (trained with a high learning rate)."""
        return list(self.density_grid.parameters()) + list(self.colour_grid.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """The small networks' parameters."""
        heads = [self.colour_head] + ([self.density_head] if self.density_head is not None else [])
        return [parameter for head in heads for parameter in head.parameters()]

    def normalise(self, positions: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
        return (positions - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * 2.0 - 1.0

    def density(self, positions: Float[Tensor, "n 3"]) -> Float[Tensor, " n"]:
        """Density per unit of the finest voxel size (so opacities do not depend on the scene's scale)."""
        features = self.density_grid(self.normalise(positions))
        raw = features.sum(-1) if self.density_head is None else self.density_head(features)[:, 0]
        return F.softplus(raw + self.density_shift)

    def colour(self, positions: Float[Tensor, "n 3"], directions: Float[Tensor, "n 3"] | None = None) -> Tensor:
        features = self.colour_grid(self.normalise(positions))
        if self.view_dependent:
            features = torch.cat([features, directions], dim=-1)
        return torch.sigmoid(self.colour_head(features))
