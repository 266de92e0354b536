"""The `omnipose-ad` radiance field model: an object-centric, CPU-friendly NeRF.

Rays are marched with a fixed step through the tight box around the occupied voxels; only samples in
occupied voxels are evaluated, colour only where a sample still contributes (early ray termination),
and the background is explicitly white. Two rendering entry points serve the rest of the system:
`render_image` (a whole camera, batched, no gradients) and `render_pixels` (a ray subset, differentiable
with respect to the camera pose, for pose refinement through the frozen field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor
from torch.nn import Parameter
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from pad_nerfstudio.field.field import ObjectField
from pad_nerfstudio.field.occupancy import OccupancyGrid, ray_box_intersection
from pad_nerfstudio.field.rays import pixel_grid, pixel_rays


@dataclass
class OmniposeModelConfig(ModelConfig):
    """Configuration of the object field and its renderer."""

    _target: Type = field(default_factory=lambda: OmniposeModel)
    grid_resolutions: tuple[int, ...] = (48, 192)
    """Resolutions of the factorised feature grids (coarse for shape, fine for detail)."""
    density_components: int = 8
    """Vector-matrix components per plane for density."""
    colour_components: int = 16
    """Vector-matrix components per plane for colour."""
    view_dependent: bool = False
    """Let colour depend on the viewing direction (for glossy real objects)."""
    step_ratio: float = 0.6
    """Ray-marching step as a fraction of the finest voxel."""
    occupancy_resolution: int = 64
    """Resolution of the occupancy grid used to skip empty space."""
    occupancy_update_every: int = 200
    """Steps between occupancy refreshes from the learned density (after the first refresh)."""
    occupancy_warmup: int = 400
    """Step of the first occupancy refresh from density."""
    occupancy_threshold: float = 0.005
    """Sample opacity under which a voxel counts as empty."""
    min_contribution: float = 1e-4
    """Samples whose rendering weight is below this are not shaded (early ray termination)."""
    density_l1: float = 1e-5
    """Weight of the L1 sparsity prior on the fine density grid."""
    eval_rays_per_chunk: int = 1 << 14
    """Rays rendered at once when rendering whole images."""


class OmniposeModel(Model):
    """Object-centric radiance field with occupancy-grid ray marching and a white background."""

    config: OmniposeModelConfig

    def populate_modules(self):
        super().populate_modules()
        aabb = self.scene_box.aabb.float()
        self.field = ObjectField(
            aabb,
            resolutions=self.config.grid_resolutions,
            density_components=self.config.density_components,
            colour_components=self.config.colour_components,
            view_dependent=self.config.view_dependent,
        )
        self.occupancy = OccupancyGrid(aabb, self.config.occupancy_resolution)
        self.register_buffer("hull_carved", torch.tensor(False))
        self.voxel_size = float((aabb[1] - aabb[0]).max()) / max(self.config.grid_resolutions)
        self.step_size = self.voxel_size * self.config.step_ratio

    # ---------------------------------------------------------------- training plumbing
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        grids = list(self.field.density_grid.parameters()) + list(self.field.colour_grid.parameters())
        return {"fields": grids, "heads": list(self.field.colour_head.parameters())}

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        def refresh_occupancy(step: int):
            if step >= self.config.occupancy_warmup and step % self.config.occupancy_update_every == 0:
                self.occupancy.update_from_density(self.opacity, self.config.occupancy_threshold)

        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], refresh_occupancy)]

    @torch.no_grad()
    def carve_visual_hull(self, cameras: Cameras, images: list[Float[Tensor, "h w 3"]]) -> None:
        """Initialise the occupancy grid from the training silhouettes (non-white pixels)."""
        silhouettes = [(1.0 - image).amax(-1) > 0.03 for image in images]
        intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1)
        self.occupancy.carve_visual_hull(cameras.camera_to_worlds.cpu(), intrinsics.cpu(), [s.cpu() for s in silhouettes])
        self.hull_carved.fill_(True)

    def opacity(self, positions: Float[Tensor, "n 3"]) -> Float[Tensor, "n"]:
        """Opacity of one ray-marching step at each position."""
        return 1.0 - torch.exp(-self.field.density(positions) * self.config.step_ratio)

    # ---------------------------------------------------------------- rendering core
    def render_rays(
        self, origins: Float[Tensor, "n 3"], directions: Float[Tensor, "n 3"], jitter: bool = False
    ) -> Dict[str, Tensor]:
        """Volume-render rays (differentiable in the field and in origins/directions)."""
        count = len(origins)
        rgb = torch.ones(count, 3, device=origins.device)
        accumulation = torch.zeros(count, 1, device=origins.device)
        depth = torch.zeros(count, 1, device=origins.device)
        box_min, box_max = self.occupancy.occupied_box()
        with torch.no_grad():
            near, far = ray_box_intersection(origins, directions, box_min, box_max)
            hits = (far > near).nonzero()[:, 0]
        if len(hits) == 0:
            return {"rgb": rgb, "accumulation": accumulation, "depth": depth}
        o, d, near, far = origins[hits], directions[hits], near[hits], far[hits]
        num_steps = int(math.ceil(float((far - near).max()) / self.step_size)) + 1
        offsets = torch.arange(num_steps, device=o.device, dtype=torch.float32)
        offsets = offsets + (torch.rand(len(o), 1, device=o.device) if jitter else 0.5)
        t = near[:, None] + offsets * self.step_size  # (n, s)
        with torch.no_grad():
            active = (t < far[:, None]) & self.occupancy.query(o.detach()[:, None] + t[..., None] * d.detach()[:, None])
        ray_index, sample_index = active.nonzero(as_tuple=True)
        points = o[ray_index] + t[ray_index, sample_index, None] * d[ray_index]
        alpha = torch.zeros_like(t)
        alpha = alpha.index_put((ray_index, sample_index), self.opacity(points))
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1] + 1e-10], -1), -1)
        weights = alpha * transmittance
        sample_weights = weights[ray_index, sample_index]
        contributes = (sample_weights.detach() > self.config.min_contribution).nonzero()[:, 0]
        colours = self.field.colour(points[contributes], d[ray_index[contributes]])
        shaded = torch.zeros(len(o), 3, device=o.device).index_add(
            0, ray_index[contributes], colours * sample_weights[contributes, None]
        )
        acc = weights.sum(-1, keepdim=True)
        rgb = rgb.index_put((hits,), shaded + (1.0 - acc))  # white background
        accumulation = accumulation.index_put((hits,), acc)
        depth = depth.index_put((hits,), (weights * t).sum(-1, keepdim=True) / acc.clamp_min(1e-6))
        return {"rgb": rgb, "accumulation": accumulation, "depth": depth}

    def render_pixels(
        self, camera_to_world: Float[Tensor, "3 4"], intrinsics: Float[Tensor, "4"], pixels: Float[Tensor, "n 2"]
    ) -> Dict[str, Tensor]:
        """Render chosen pixels of a pinhole camera; gradients flow to ``camera_to_world``."""
        origins, directions = pixel_rays(camera_to_world, intrinsics, pixels)
        return self.render_rays(origins, directions)

    @torch.no_grad()
    def render_image(
        self, camera_to_world: Float[Tensor, "3 4"], intrinsics: Float[Tensor, "4"], width: int, height: int
    ) -> Dict[str, Tensor]:
        """Render a whole image (H, W, C outputs) in chunks, without gradients."""
        device = self.occupancy.aabb.device
        pixels = pixel_grid(width, height, device)
        camera_to_world, intrinsics = camera_to_world.to(device).float(), intrinsics.to(device).float()
        chunks = [
            self.render_pixels(camera_to_world, intrinsics, chunk)
            for chunk in torch.split(pixels, self.config.eval_rays_per_chunk)
        ]
        return {key: torch.cat([c[key] for c in chunks]).reshape(height, width, -1) for key in chunks[0]}

    # ---------------------------------------------------------------- nerfstudio interface
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        shape = ray_bundle.origins.shape[:-1]
        outputs = self.render_rays(
            ray_bundle.origins.reshape(-1, 3), ray_bundle.directions.reshape(-1, 3), jitter=self.training
        )
        return {key: value.reshape(*shape, -1) for key, value in outputs.items()}

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, Tensor]:
        camera = camera.flatten()[0] if camera.shape else camera
        intrinsics = torch.cat([camera.fx, camera.fy, camera.cx, camera.cy]).flatten()
        return self.render_image(camera.camera_to_worlds, intrinsics, int(camera.width), int(camera.height))

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)[..., :3]
        return {"psnr": peak_signal_noise_ratio(outputs["rgb"], image, data_range=1.0)}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)[..., :3]
        losses = {"rgb_loss": F.mse_loss(outputs["rgb"], image)}
        if self.config.density_l1 > 0:
            losses["density_l1"] = self.config.density_l1 * self.field.density_grid.l1()
        return losses

    def get_image_metrics_and_images(self, outputs, batch):
        image = batch["image"].to(outputs["rgb"].device)[..., :3]
        prediction = outputs["rgb"]
        pair = (prediction.permute(2, 0, 1)[None], image.permute(2, 0, 1)[None])
        metrics = {
            "psnr": float(peak_signal_noise_ratio(*pair, data_range=1.0)),
            "ssim": float(structural_similarity_index_measure(*pair, data_range=1.0)),
        }
        images = {
            "img": torch.cat([image, prediction], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images
