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
from typing import Callable, Dict, List, Literal, Optional, Type

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

from pad_nerfstudio.field.appearance import PerImageColourTransform, background_colour
from pad_nerfstudio.field.field import ObjectField
from pad_nerfstudio.field.occupancy import OccupancyGrid, ray_box_intersection
from pad_nerfstudio.field.packed import distortion, exclusive_cumsum_per_ray, visible_samples
from pad_nerfstudio.field.rays import pixel_grid, pixel_rays


@dataclass
class OmniposeModelConfig(ModelConfig):
    """Configuration of the object field and its renderer."""

    _target: Type = field(default_factory=lambda: OmniposeModel)
    encoding: Literal["vm", "hash"] = "vm"
    """Feature grids of the field: ``vm`` (TensoRF vector-matrix factorisation, a few `grid_sample` calls per
    point) or ``hash`` (Instant-NGP multiresolution hash grid through nerfstudio's `HashEncoding`: tiny-cuda-nn
    with CUDA, a torch implementation elsewhere). Both keep gradients with respect to sample positions."""
    grid_resolutions: tuple[int, ...] = (48, 192)
    """Resolutions of the factorised feature grids (coarse for shape, fine for detail); with ``hash``, the finest
    level's resolution is the last of them."""
    hash_levels: int = 16
    """Hash grid: levels between resolution 16 and the finest."""
    hash_log2_table_size: int = 19
    """Hash grid: log2 of the entries per level (19 as in Instant-NGP; smaller tables are cheaper on a CPU)."""
    hash_implementation: Literal["auto", "tcnn", "torch"] = "auto"
    """Hash grid: tiny-cuda-nn (``tcnn``, needs CUDA), nerfstudio's ``torch`` grid, or ``auto`` (tcnn where it runs).
    Their tables differ: a field trained with one loads only with the same one."""
    density_components: int = 8
    """Vector-matrix components per plane for density."""
    colour_components: int = 16
    """Vector-matrix components per plane for colour."""
    view_dependent: bool = False
    """Let colour depend on the viewing direction (for glossy real objects). Measured on a real-style pad-synth
    class (160 px, benchmarks/capture_robustness.py): pixel AUROC 0.990 -> 0.995, AUPRO 0.977 -> 0.984, image AUROC
    unchanged, training 15 % slower; off by default until a larger study decides."""
    appearance_compensation: bool = True
    """Learn a small affine colour transform per training image (exposure, white balance) so that the field
    converges to one canonical look; renderings never apply it (see `appearance.py`)."""
    appearance_regulariser: float = 1e-2
    """Weight of the pull of the per-image colour transforms towards the identity."""
    step_ratio: float = 0.6
    """Ray-marching step as a fraction of the finest voxel."""
    occupancy_resolution: int = 64
    """Resolution of the occupancy grid used to skip empty space."""
    occupancy_update_every: int = 100
    """Steps between occupancy refreshes from the learned density (after the first refresh)."""
    occupancy_warmup: int = 100
    """Step of the first occupancy refresh from density."""
    occupancy_threshold: float = 0.01
    """Sample opacity under which a voxel counts as empty."""
    min_contribution: float = 1e-3
    """Samples whose rendering weight is below this are not shaded (early ray termination)."""
    distortion_loss_mult: float = 1e-3
    """Weight of the distortion loss (mip-NeRF 360), which keeps each ray's weights compact: sharp
    surfaces render better and, after early termination, cost fewer samples."""
    density_l1: float = 1e-5
    """Weight of the L1 sparsity prior on the fine density grid."""
    total_variation: float = 0.0
    """Weight of the total-variation prior on the fine density and colour grids (a sparse-view regulariser, as in
    TensoRF's few-view setting); 0 disables it. Off by default: measured on 160 px Gorilla (benchmarks/
    sparse_views.py), 0.1 changed nothing at 50 or 25 views (image AUROC 1.000 -> 0.993 / 0.988, pixel AUROC and
    AUPRO equal) and trained 15-20 % slower; the visual hull from the silhouettes already holds sparse views."""
    eval_rays_per_chunk: int = 1 << 14
    """Rays rendered at once when rendering whole images."""


class OmniposeModel(Model):
    """Object-centric radiance field with occupancy-grid ray marching and a white background."""

    config: OmniposeModelConfig
    extra_outputs: Optional[Callable[[Cameras, Dict[str, Tensor]], Dict[str, Tensor]]] = None
    """More outputs from a rendered camera and its outputs (set by the viewer's inspection panel: "anomaly")."""

    def populate_modules(self):
        super().populate_modules()
        aabb = self.scene_box.aabb.float()
        if getattr(self.config, "encoding", "vm") == "hash" and getattr(self.config, "total_variation", 0.0) > 0:
            raise ValueError(
                "--pipeline.model.total-variation needs the vm encoding (hashed cells have no neighbours)."
            )
        self.field = ObjectField(
            aabb,
            resolutions=self.config.grid_resolutions,
            density_components=self.config.density_components,
            colour_components=self.config.colour_components,
            view_dependent=self.config.view_dependent,
            # getattr: configs saved before the option were trained with the vm grids.
            encoding=getattr(self.config, "encoding", "vm"),
            hash_levels=getattr(self.config, "hash_levels", 16),
            hash_log2_table_size=getattr(self.config, "hash_log2_table_size", 19),
            hash_implementation=getattr(self.config, "hash_implementation", "auto"),
        )
        self.occupancy = OccupancyGrid(aabb, self.config.occupancy_resolution)
        # getattr: runs whose config.yml predates the option were trained without it (and load without it).
        compensate = getattr(self.config, "appearance_compensation", False)
        self.appearance = PerImageColourTransform(self.num_train_data) if compensate else None
        self.register_buffer("hull_carved", torch.tensor(False))
        self.voxel_size = float((aabb[1] - aabb[0]).max()) / max(self.config.grid_resolutions)
        self.step_size = self.voxel_size * self.config.step_ratio
        self.max_optical_depth = -math.log(self.config.min_contribution)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Refuse a checkpoint whose field grids differ from this model's, which nerfstudio would otherwise load
        non-strictly, leaving the grids random: a vm field into a hash one, or a tiny-cuda-nn hash table where
        only the torch one can be built (the two lay out their tables differently)."""
        theirs = {key for key in state_dict if key.startswith("field.")}
        ours = {key for key in self.state_dict() if key.startswith("field.")}
        if theirs and theirs != ours:
            trained, built = _describe_grids(theirs), _describe_grids(ours)
            if trained == built:  # same kind of grids, other settings (e.g. --pipeline.model.grid-resolutions)
                differing = ", ".join(sorted(theirs ^ ours)[:4])
                raise ValueError(f"The checkpoint's field has other parameters than this model's ({differing}).")
            raise ValueError(
                f"The checkpoint's field has {trained}, but this model builds {built}. Load it with the same "
                "--pipeline.model.encoding, where the same hash grid implementation runs (tiny-cuda-nn needs CUDA)."
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---------------------------------------------------------------- training plumbing
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = {"fields": self.field.grid_parameters(), "heads": self.field.head_parameters()}
        if self.appearance is not None:
            groups["appearance"] = list(self.appearance.parameters())
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        def refresh_occupancy(step: int):
            if step >= self.config.occupancy_warmup and step % self.config.occupancy_update_every == 0:
                self.occupancy.update_from_density(self.opacity, self.config.occupancy_threshold)

        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], refresh_occupancy)]

    @torch.no_grad()
    def carve_visual_hull(self, cameras: Cameras, images: list[Float[Tensor, "h w 3"]]) -> None:
        """Initialise the occupancy grid from the training silhouettes (pixels unlike the image's background).

        The background colour is measured per image (its border), so exposure and white-balance changes that
        turn white into light grey do not make the whole frame "object".
        """
        silhouettes = [(image - background_colour(image)).abs().amax(-1) > 0.03 for image in images]
        intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1)
        self.occupancy.carve_visual_hull(
            cameras.camera_to_worlds.cpu(), intrinsics.cpu(), [s.cpu() for s in silhouettes]
        )
        self.hull_carved.fill_(True)

    def opacity(self, positions: Float[Tensor, "n 3"]) -> Float[Tensor, " n"]:
        """Opacity of one ray-marching step at each position."""
        return -torch.expm1(-self.field.density(positions) * self.config.step_ratio)

    # ---------------------------------------------------------------- rendering core
    def render_rays(
        self, origins: Float[Tensor, "n 3"], directions: Float[Tensor, "n 3"], jitter: bool = False
    ) -> Dict[str, Tensor]:
        """Volume-render rays (differentiable in the field and in origins/directions).

        Samples are packed (see `packed.py`): a coarse march through the occupancy grid finds the occupied
        segments of each ray, only those are sampled finely, and samples behind the surface are dropped.
        """
        count, device = len(origins), origins.device
        rgb = torch.ones(count, 3, device=device)
        accumulation = torch.zeros(count, 1, device=device)
        depth = self._background_depth(origins)
        with torch.no_grad():
            box_min, box_max = self.occupancy.occupied_box()
            near, far = ray_box_intersection(origins, directions, box_min, box_max)
            hits = (far > near).nonzero()[:, 0]
        if len(hits) == 0:
            return {"rgb": rgb, "accumulation": accumulation, "depth": depth}
        o, d = origins[hits], directions[hits]
        with torch.no_grad():
            near, far = near[hits], far[hits]
            coarse = self.occupancy.voxel_size / 2  # half a voxel: no occupied voxel is stepped over
            steps = int(math.ceil(float((far - near).max()) / coarse))
            centres = near[:, None] + (torch.arange(steps, device=device) + 0.5) * coarse
            active = (centres - coarse / 2 < far[:, None]) & self.occupancy.query(
                o.detach()[:, None] + centres[..., None] * d.detach()[:, None]
            )
            ray, segment = active.nonzero(as_tuple=True)
            per_segment = max(1, round(coarse / self.step_size))
            delta = coarse / per_segment
            offsets = torch.arange(per_segment, device=device) + (
                torch.rand(len(ray), 1, device=device) if jitter else 0.5
            )
            t = (centres[ray, segment, None] - coarse / 2 + offsets * delta).reshape(-1)
            ray = ray.repeat_interleave(per_segment)
            keep = (t > near[ray]) & (t < far[ray])
            ray, t = ray[keep], t[keep]
            if len(ray) > 0:
                # Early ray termination: only samples in front of the surface are shaded and, in
                # training or pose refinement, pay for gradients.
                o_fixed, d_fixed = o.detach(), d.detach()
                visible, cached = visible_samples(
                    lambda i: self._optical_depth(o_fixed[ray[i]] + t[i, None] * d_fixed[ray[i]], delta),
                    ray,
                    len(o),
                    self.max_optical_depth,
                )
                ray, t, cached = ray[visible], t[visible], cached[visible]
        if len(ray) == 0:
            return {"rgb": rgb, "accumulation": accumulation, "depth": depth}
        points = o[ray] + t[:, None] * d[ray]
        optical_depth = self._optical_depth(points, delta) if torch.is_grad_enabled() else cached
        before = exclusive_cumsum_per_ray(optical_depth, ray)
        weights = (torch.exp(-before) * -torch.expm1(-optical_depth)).float()
        shade = (weights.detach() > self.config.min_contribution).nonzero()[:, 0]
        colours = self.field.colour(points[shade], d[ray[shade]])
        shaded = torch.zeros(len(o), 3, device=device).index_add(0, ray[shade], colours * weights[shade, None])
        acc = torch.zeros(len(o), device=device).index_add(0, ray, weights)[:, None]
        expected_t = torch.zeros(len(o), device=device).index_add(0, ray, weights * t)[:, None]
        rgb = rgb.index_put((hits,), shaded + (1.0 - acc))  # white background
        accumulation = accumulation.index_put((hits,), acc)
        surface = torch.where(acc > self.config.min_contribution, expected_t / acc.clamp_min(1e-6), depth[hits])
        depth = depth.index_put((hits,), surface)
        outputs = {"rgb": rgb, "accumulation": accumulation, "depth": depth}
        if self.training and self.config.distortion_loss_mult > 0:
            per_ray = distortion(weights, t / self.voxel_size, delta / self.voxel_size, ray, len(o))
            outputs["distortion"] = torch.zeros(count, 1, device=device).index_put((hits,), per_ray[:, None])
        return outputs

    def _background_depth(self, origins: Float[Tensor, "n 3"]) -> Float[Tensor, "n 1"]:
        """Depth of the white background: beyond the far side of the scene box, not 0.

        The viewer composites its scene objects (cameras, query frustums) with this depth; 0 would put the
        empty background in front of them. Pose code only uses the depth of opaque pixels.
        """
        low, high = self.occupancy.aabb.to(origins.device)
        centre, radius = (low + high) / 2, float((high - low).norm()) / 2
        return ((origins.detach() - centre).norm(dim=-1, keepdim=True) + radius).float()

    def _optical_depth(self, points: Float[Tensor, "p 3"], delta: float) -> Float[Tensor, " p"]:
        """Optical depth of ray segments of length ``delta`` at ``points`` (float64 for packed sums)."""
        return (self.field.density(points) * (delta / self.voxel_size)).clamp(max=30.0).double()

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
        if self.training and self.appearance is not None and ray_bundle.camera_indices is not None:
            # The training image's exposure and white balance; every other rendering stays canonical.
            indices = ray_bundle.camera_indices.reshape(-1).long().clamp(0, len(self.appearance.offset) - 1)
            outputs["rgb"] = self.appearance(outputs["rgb"], indices)
        return {key: value.reshape(*shape, -1) for key, value in outputs.items()}

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, Tensor]:
        camera = camera.flatten()[0] if camera.shape else camera
        intrinsics = torch.cat([camera.fx, camera.fy, camera.cx, camera.cy]).flatten()
        outputs = self.render_image(camera.camera_to_worlds, intrinsics, int(camera.width), int(camera.height))
        if self.extra_outputs is not None:
            outputs.update(self.extra_outputs(camera, outputs))
        return outputs

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)[..., :3]
        return {"psnr": peak_signal_noise_ratio(outputs["rgb"], image, data_range=1.0)}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)[..., :3]
        losses = {"rgb_loss": F.mse_loss(outputs["rgb"], image)}
        if "distortion" in outputs:
            losses["distortion_loss"] = self.config.distortion_loss_mult * outputs["distortion"].mean()
        if self.config.density_l1 > 0:
            losses["density_l1"] = self.config.density_l1 * self.field.density_grid.l1()
        if getattr(self.config, "total_variation", 0.0) > 0:  # configs saved before the option lack it
            variation = self.field.density_grid.total_variation() + 0.1 * self.field.colour_grid.total_variation()
            losses["total_variation"] = self.config.total_variation * variation
        if self.training and self.appearance is not None:
            losses["appearance_prior"] = self.config.appearance_regulariser * self.appearance.regulariser()
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


def _describe_grids(keys: set[str]) -> str:
    """Which feature grids a field's state-dict keys hold."""
    if any("tcnn_encoding" in key for key in keys):
        return "tiny-cuda-nn hash grids"
    if any("hash_table" in key for key in keys):
        return "torch hash grids"
    return "vm grids"
