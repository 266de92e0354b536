"""Direct image alignment of a query to a rendering of the frozen field: the photometric fine stage.

iNeRF refines a pose by back-propagating a photometric loss through the radiance field, which costs a
differentiable rendering per step (hundreds of steps, a minute per query on a GPU). Here the field is
rendered once per outer iteration (colour and depth at the current pose estimate); the surface points
seen by the rendering are then warped into the query with a relative SE(3) motion, and Gauss-Newton on the
robust photometric residual ``query(warp(u)) - render(u)`` finds that motion with analytic Jacobians (query
image gradients times the projection Jacobian) without touching the field again. The residual is robust
(Huber, then Tukey's biweight once converged) because a query may show a defect the field does not have;
pixels are sampled where the rendering has strong gradients (colour edges and silhouettes, the only places
that constrain the pose); and the problem is solved coarse-to-fine over a blur pyramid, which widens the
basin of convergence to several pixels. Everything here is pure tensor maths on images and depth maps, so
it is testable without a trained field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from pad_nerfstudio.field.appearance import apply_colour_transform, fit_colour_transform
from pad_nerfstudio.pose.se3 import (
    camera_points_to_pixels,
    compose,
    exp_se3,
    invert,
    pixels_to_camera_directions,
)

__all__ = ["AlignmentConfig", "QueryImage", "ReferenceView", "align_to_reference", "gaussian_blur", "select_pixels"]


@dataclass
class AlignmentConfig:
    """Settings of the direct alignment (pixels are in query pixels unless said otherwise)."""

    blur_sigmas: Tuple[float, ...] = (3.0, 1.5, 0.7)
    """Gaussian blur of query and rendering per pyramid level, coarse to fine (pixels of the query)."""
    iterations: Tuple[int, ...] = (8, 8, 10)
    """Gauss-Newton iterations per pyramid level."""
    num_pixels: int = 3000
    """Rendered pixels used per level, sampled where the blurred rendering has strong gradients."""
    min_accumulation: float = 0.95
    """Render pixels less opaque than this have no trustworthy depth and are not warped."""
    background_band: int = 3
    """Also warp white background pixels within this many render pixels of the silhouette, at the depth of the
    nearest surface, so both sides of an outline pull on the pose (0 disables)."""
    huber_scale: float = 1.345
    """Huber threshold in robust standard deviations (MAD of the residuals)."""
    tukey_scale: float = 4.685
    """Tukey biweight threshold in robust standard deviations, used on the finest level (rejects defects)."""
    min_sigma: float = 0.01
    """Floor of the robust residual scale (colour units), so a perfect fit does not turn every pixel into an outlier."""
    damping: float = 1e-6
    """Levenberg-Marquardt damping relative to the normal matrix diagonal."""
    convergence: float = 2e-5
    """Stop a level once the update is smaller than this (radians / scene units)."""
    fit_colour: bool = False
    """Fit the query's exposure and white balance at every iteration: the residual is taken against the rendering
    under a robust per-channel gain and offset (`field.appearance.fit_colour_transform`), so a query brighter or
    tinted against the field's canonical look aligns on its edges rather than on its overall colour. Off where
    alignment scores rank distinct pose hypotheses: the fit gives a wrong pose the freedom to recolour itself
    towards the query (measured: 180 degree flips on near-symmetric views)."""
    score_truncation: float = 0.1
    """Residuals are clipped at this (colour units) in the fixed-scale ``score`` used to compare hypotheses."""
    seed: int = 0
    """Seed of the pixel subsampling (the result is deterministic for a seed)."""


@dataclass
class ReferenceView:
    """A rendering of the field at a known pose: what the query is aligned to."""

    rgb: Float[Tensor, "h w 3"]
    depth: Float[Tensor, "h w 1"]
    """Distance along the unit ray direction (the model's ``depth`` output)."""
    accumulation: Float[Tensor, "h w 1"]
    camera_to_world: Float[Tensor, "3 4"]
    intrinsics: Float[Tensor, "4"]
    """(fx, fy, cx, cy) at the rendering's resolution."""


def gaussian_blur(images: Float[Tensor, "B C H W"], sigma: float) -> Float[Tensor, "B C H W"]:
    """Separable Gaussian blur with replicate padding (identity for sigma <= 0)."""
    if sigma <= 0:
        return images
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _image_gradients(images: Float[Tensor, "B C H W"]) -> tuple[Tensor, Tensor]:
    """Central-difference d/du and d/dv (one-sided at the border)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    du = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    dv = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return du, dv


def _sample(images: Float[Tensor, "C H W"], pixels: Float[Tensor, "n 2"]) -> Float[Tensor, "n C"]:
    """Bilinear lookup at OpenCV-style pixel coordinates (integer = pixel centre), border values outside."""
    height, width = images.shape[-2:]
    grid = torch.stack([(pixels[:, 0] + 0.5) / width * 2 - 1, (pixels[:, 1] + 0.5) / height * 2 - 1], dim=-1)
    grid = grid[None, None].to(images.dtype)
    out = F.grid_sample(images[None], grid, align_corners=False, padding_mode="border")
    return out[0, :, 0].t()


def _nearest_surface_depth(depth: Tensor, valid: Tensor, band: int) -> tuple[Tensor, Tensor]:
    """Depth of the nearest valid pixel for pixels within ``band`` pixels of the valid region (min over a window).

    Taking the nearest (smallest) depth means a background pixel next to the outline moves with the occluding
    surface, which is what the outline itself does.
    """
    big = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    near = -F.max_pool2d(-big[None, None], kernel_size=2 * band + 1, stride=1, padding=band)[0, 0]
    return near, torch.isfinite(near) & ~valid


def select_pixels(
    gradient_magnitude: Float[Tensor, "h w"], candidates: Float[Tensor, "h w"], count: int, seed: int = 0
) -> Float[Tensor, "n 2"]:
    """Pick up to ``count`` candidate pixels, favouring strong gradients; (u, v) OpenCV-style coordinates.

    The strongest half is taken by rank; the rest is drawn at random, with probability proportional to the
    gradient, among the others, so that flat-but-textured areas and weaker edges still contribute (pure
    top-k clusters every sample on the single strongest outline).
    """
    flat = torch.where(candidates.reshape(-1) > 0, gradient_magnitude.reshape(-1), torch.zeros(()))
    available = int((flat > 0).sum())
    if available == 0:
        return torch.zeros(0, 2)
    count = min(count, available)
    order = torch.argsort(flat, descending=True)
    top = order[: count // 2]
    rest = order[count // 2 : available]
    generator = torch.Generator().manual_seed(seed)
    drawn = rest[torch.multinomial(flat[rest].float(), count - len(top), replacement=False, generator=generator)]
    chosen = torch.cat([top, drawn])
    width = gradient_magnitude.shape[1]
    return torch.stack([chosen % width, torch.div(chosen, width, rounding_mode="floor")], dim=-1).to(torch.float64)


def _robust_weights(residuals: Tensor, inside: Tensor, kind: str, config: AlignmentConfig) -> tuple[Tensor, Tensor]:
    """IRLS weights and robust cost per residual; zero for points that left the image."""
    sigma = max(float(1.4826 * residuals[inside].abs().median()), config.min_sigma)
    if kind == "huber":
        threshold = config.huber_scale * sigma
        absolute = residuals.abs()
        weights = torch.where(absolute <= threshold, torch.ones_like(absolute), threshold / absolute.clamp_min(1e-12))
        cost = torch.where(absolute <= threshold, 0.5 * absolute**2, threshold * (absolute - 0.5 * threshold))
    else:
        threshold = config.tukey_scale * sigma
        ratio = (residuals / threshold).clamp(-1, 1)
        weights = (1 - ratio**2) ** 2
        cost = threshold**2 / 6 * (1 - (1 - ratio**2) ** 3)
    mask = inside[:, None].to(weights.dtype)
    return weights * mask, cost * mask


class QueryImage:
    """A query with its blurred copies and their gradients, computed once per blur level and reused by every
    hypothesis and round that aligns to the same query."""

    def __init__(self, image: Float[Tensor, "H W 3"]) -> None:
        self.image = torch.as_tensor(image).detach().float().cpu()
        self.height, self.width = self.image.shape[:2]
        self._stacks: Dict[float, Tensor] = {}

    def stack(self, sigma: float) -> Float[Tensor, "9 H W"]:
        """Blurred RGB followed by its d/du and d/dv (9 channels)."""
        key = round(float(sigma), 4)
        if key not in self._stacks:
            blurred = gaussian_blur(self.image.permute(2, 0, 1)[None], key)
            du, dv = _image_gradients(blurred)
            self._stacks[key] = torch.cat([blurred, du, dv], dim=1)[0]
        return self._stacks[key]


def align_to_reference(
    query: Float[Tensor, "H W 3"] | QueryImage,
    query_intrinsics: Float[Tensor, "4"],
    reference: ReferenceView,
    config: AlignmentConfig | None = None,
    initial_pose: Float[Tensor, "3 4"] | None = None,
) -> tuple[Float[Tensor, "3 4"], Dict[str, float]]:
    """Camera-to-world of the query that best explains it as a rigid motion of the reference rendering.

    Args:
        query: RGB query in [0, 1] (or a `QueryImage` wrapping it, to reuse its blur pyramid).
        query_intrinsics: (fx, fy, cx, cy) of the query.
        reference: rendering (rgb, depth, accumulation) at a pose close to the query's (within a few pixels of
            image motion; retrieval plus PnP or a previous alignment provide that), at any resolution.
        config: alignment settings.
        initial_pose: start of the search (default: the reference's pose).

    Returns:
        The refined camera-to-world (float64) and diagnostics: ``score`` (mean truncated squared residual per
        channel on the finest level, a fixed scale that compares hypotheses), ``cost`` (robust cost with the
        data-driven scale), ``inlier_fraction``, ``pixels`` and ``iterations``.

    Example:
        >>> pose, info = align_to_reference(query, intrinsics, ReferenceView(**render, camera_to_world=c2w,
        ...     intrinsics=intrinsics))  # doctest: +SKIP
    """
    config = config or AlignmentConfig()
    if not isinstance(query, QueryImage):
        query = QueryImage(query)
    dtype = torch.float64
    query_intrinsics = query_intrinsics.to(dtype)
    reference_pose = reference.camera_to_world.to(dtype)
    render_intrinsics = reference.intrinsics.to(dtype)
    # Relative motion from reference camera coordinates to query camera coordinates (OpenGL axes).
    start = initial_pose.to(dtype) if initial_pose is not None else reference_pose
    motion = compose(invert(start), reference_pose)

    render_image = reference.rgb.float().cpu().permute(2, 0, 1)[None]
    depth = reference.depth.to(dtype).cpu()[..., 0]
    accumulation = reference.accumulation.float().cpu()[..., 0]
    valid = (accumulation >= config.min_accumulation) & (depth > 0)
    background = torch.zeros_like(valid)
    if config.background_band > 0:
        near_depth, background = _nearest_surface_depth(depth, valid, config.background_band)
        background = background & (accumulation < 0.05)
        depth = torch.where(background, near_depth, depth)
    candidates = valid | background
    render_scale = float(render_intrinsics[0] / query_intrinsics[0])  # render pixels per query pixel
    fx, fy = query_intrinsics[0], query_intrinsics[1]

    diagnostics: Dict[str, float] = {"iterations": 0.0}
    levels = list(zip(config.blur_sigmas, config.iterations))
    for level, (sigma, iterations) in enumerate(levels):
        query_stack = query.stack(sigma)
        render_blurred = gaussian_blur(render_image, sigma * render_scale)
        render_du, render_dv = _image_gradients(render_blurred)
        magnitude = (render_du**2 + render_dv**2).sum(1)[0].sqrt()
        pixels = select_pixels(magnitude, candidates, config.num_pixels, seed=config.seed + level)
        if len(pixels) < 12:
            diagnostics.update(cost=float("inf"), score=float("inf"), inlier_fraction=0.0, pixels=float(len(pixels)))
            break
        rows, cols = pixels[:, 1].long(), pixels[:, 0].long()
        target = render_blurred[0, :, rows, cols].t().to(dtype)
        points = pixels_to_camera_directions(pixels, render_intrinsics) * depth[rows, cols, None]
        kind = "tukey" if level == len(levels) - 1 and level > 0 else "huber"
        for _ in range(iterations):
            moved = points @ motion[:, :3].t() + motion[:, 3]
            projected, z = camera_points_to_pixels(moved, query_intrinsics)
            sampled = _sample(query_stack, projected).to(dtype)
            inside = (z > 1e-6) & (projected[:, 0] > -0.5) & (projected[:, 1] > -0.5)
            inside &= (projected[:, 0] < query.width - 0.5) & (projected[:, 1] < query.height - 0.5)
            used = int(inside.sum())
            if used < 12:
                diagnostics.update(cost=float("inf"), score=float("inf"), inlier_fraction=0.0, pixels=float(used))
                break
            predicted = target
            if config.fit_colour:
                colour = fit_colour_transform(target, sampled[:, :3], inside.to(dtype), iterations=3)
                predicted = apply_colour_transform(target, colour.to(dtype))
            residuals = sampled[:, :3] - predicted
            weights, cost = _robust_weights(residuals, inside, kind, config)
            truncated = residuals.clamp(-config.score_truncation, config.score_truncation) ** 2
            diagnostics.update(
                cost=float(cost.sum()) / used / 3.0,
                score=float((truncated * inside[:, None]).sum()) / used / 3.0,
                inlier_fraction=float(((weights > 0.5) & inside[:, None]).sum()) / used / 3.0,
                pixels=float(used),
            )
            # Pixel motion per point motion for u = fx x / (-z) + cx', v = fy y / z + cy' (OpenGL camera).
            x, y, zc = moved[:, 0:1], moved[:, 1:2], moved[:, 2:3]
            grad_u, grad_v = sampled[:, 3:6, None], sampled[:, 6:9, None]  # (n, 3 channels, 1)
            d_u = torch.cat([-fx / zc, torch.zeros_like(x), fx * x / zc**2], dim=-1)[:, None]  # (n, 1, 3)
            d_v = torch.cat([torch.zeros_like(x), fy / zc, -fy * y / zc**2], dim=-1)[:, None]
            d_point = grad_u * d_u + grad_v * d_v  # (n, 3 channels, 3): residual per point motion
            # A left perturbation exp(delta) of the motion moves p by t + w x p, and g . (w x p) = w . (p x g).
            d_rotation = torch.linalg.cross(moved[:, None].expand_as(d_point), d_point, dim=-1)
            jacobian = torch.cat([d_point, d_rotation], dim=-1).reshape(-1, 6)
            w = weights.reshape(-1)
            normal = jacobian.t() @ (jacobian * w[:, None])
            rhs = -(jacobian.t() @ (w * residuals.reshape(-1)))
            normal = normal + config.damping * torch.diag(normal.diagonal().clamp_min(1e-12))
            try:
                delta = torch.linalg.solve(normal, rhs)
            except RuntimeError:  # singular: nothing constrains the motion any more
                break
            motion = compose(exp_se3(delta), motion)
            diagnostics["iterations"] += 1
            if float(delta.abs().max()) < config.convergence:
                break
    return compose(reference_pose, invert(motion)), diagnostics
