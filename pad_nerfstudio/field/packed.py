"""Packed volume rendering: samples of many rays in one flat array, sorted by ray then depth.

A ray keeps only the samples that fall in occupied voxels, so rays have different sample counts; packing
avoids padding them to the longest ray. Transmittance is an exclusive cumulative sum of optical depth per
ray, computed over the flat array in float64 (the running sum spans all rays, float32 would lose the
small per-ray differences).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def segment_starts(ray: Int[Tensor, " p"]) -> Tensor:
    """True at the first sample of each ray (samples sorted by ray)."""
    first = torch.ones_like(ray, dtype=torch.bool)
    first[1:] = ray[1:] != ray[:-1]
    return first


def exclusive_cumsum_per_ray(values: Float[Tensor, " p"], ray: Int[Tensor, " p"]) -> Float[Tensor, " p"]:
    """For each sample, the sum of ``values`` of the earlier samples on the same ray."""
    running = torch.cumsum(values, 0)
    first = segment_starts(ray)
    ray_start = (running - values)[first]
    return running - values - ray_start[torch.cumsum(first.long(), 0) - 1]


def rank_in_ray(ray: Int[Tensor, " p"]) -> Int[Tensor, " p"]:
    """Index of each sample within its ray (0 for the nearest)."""
    index = torch.arange(len(ray), device=ray.device)
    first = segment_starts(ray)
    return index - index[first][torch.cumsum(first.long(), 0) - 1]


@torch.no_grad()
def visible_samples(
    optical_depth_fn, ray: Int[Tensor, " p"], num_rays: int, max_optical_depth: float, window: int = 16
) -> tuple[Tensor, Tensor]:
    """Early ray termination: which samples lie before their ray becomes opaque.

    Samples are evaluated front to back in windows of ``window`` per ray; rays whose accumulated optical
    depth exceeds ``max_optical_depth`` (transmittance below exp(-max)) stop being evaluated. Returns the
    keep mask and the optical depth of the evaluated samples (zero elsewhere).
    """
    rank = rank_in_ray(ray)
    accumulated = torch.zeros(num_rays, dtype=torch.float64, device=ray.device)
    keep = torch.zeros_like(ray, dtype=torch.bool)
    optical_depth = torch.zeros(len(ray), dtype=torch.float64, device=ray.device)
    for start in range(0, int(rank.max()) + 1 if len(rank) else 0, window):
        chosen = ((rank >= start) & (rank < start + window) & (accumulated[ray] < max_optical_depth)).nonzero()[:, 0]
        if len(chosen) == 0:
            break  # ranks are contiguous: no alive ray has samples further on
        depth = optical_depth_fn(chosen)
        before = accumulated[ray[chosen]] + exclusive_cumsum_per_ray(depth, ray[chosen])
        keep[chosen] = before < max_optical_depth
        optical_depth[chosen] = depth
        accumulated.index_add_(0, ray[chosen], depth)
    return keep, optical_depth


def distortion(
    weights: Float[Tensor, " p"], t: Float[Tensor, " p"], delta: float, ray: Int[Tensor, " p"], num_rays: int
) -> Float[Tensor, " r"]:
    """Distortion loss of mip-NeRF 360 per ray: sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 delta.

    The pairwise term is computed in linear time from per-ray exclusive prefix sums of w and w*t.
    """
    weight_before = exclusive_cumsum_per_ray(weights, ray)
    weighted_t_before = exclusive_cumsum_per_ray(weights * t, ray)
    pairwise = 2.0 * weights * (t * weight_before - weighted_t_before)
    per_sample = pairwise + weights**2 * delta / 3.0
    return torch.zeros(num_rays, device=weights.device, dtype=weights.dtype).index_add(0, ray, per_sample)
