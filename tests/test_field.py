"""The object field: packed rendering maths, training on a tiny scene, pose gradients."""

from __future__ import annotations

import math

import pytest
import torch

from pad_nerfstudio.field.occupancy import ray_box_intersection
from pad_nerfstudio.field.packed import distortion, exclusive_cumsum_per_ray, rank_in_ray, visible_samples
from pad_nerfstudio.field.rays import pixel_grid, pixel_rays


def test_exclusive_cumsum_and_rank_per_ray():
    ray = torch.tensor([0, 0, 0, 2, 2, 5])
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    assert exclusive_cumsum_per_ray(values, ray).tolist() == [0.0, 1.0, 3.0, 0.0, 4.0, 0.0]
    assert rank_in_ray(ray).tolist() == [0, 1, 2, 0, 1, 0]


def test_distortion_matches_pairwise_definition():
    torch.manual_seed(0)
    ray = torch.tensor([0] * 5 + [1] * 3)
    weights, t = torch.rand(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64).sort().values
    expected = []
    for r in (0, 1):
        w, s = weights[ray == r], t[ray == r]
        expected.append(float((w[:, None] * w[None] * (s[:, None] - s[None]).abs()).sum() + (w**2).sum() * 0.1 / 3))
    assert distortion(weights, t, 0.1, ray, 2).tolist() == pytest.approx(expected)


def test_visible_samples_cuts_behind_opaque_surface():
    ray = torch.tensor([0] * 40 + [1] * 40)
    depth = torch.full((80,), 0.01, dtype=torch.float64)
    depth[10] = 20.0  # ray 0 hits an opaque surface at sample 10
    keep, cached = visible_samples(lambda i: depth[i], ray, 2, max_optical_depth=math.log(1e3), window=8)
    assert keep[:11].all() and not keep[11:40].any()  # the surface sample itself is still shaded
    assert keep[40:].all()  # ray 1 never becomes opaque
    assert torch.equal(cached[keep], depth[keep])


def test_training_loss_falls(tiny_scene):
    losses = tiny_scene.losses
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_render_beats_constant_white_image(tiny_scene):
    model, images, intrinsics = tiny_scene.model, tiny_scene.images, tiny_scene.intrinsics
    truth = images[7]
    render = model.render_image(tiny_scene.cameras.camera_to_worlds[7], intrinsics[7], truth.shape[1], truth.shape[0])
    psnr = -10 * math.log10(float(((render["rgb"] - truth) ** 2).mean()))
    white = -10 * math.log10(float(((1.0 - truth) ** 2).mean()))
    assert psnr > white + 5.0, (psnr, white)


def test_depth_is_on_the_object_and_behind_the_scene_box_over_the_background(tiny_scene):
    model, intrinsics = tiny_scene.model, tiny_scene.intrinsics
    pose = tiny_scene.cameras.camera_to_worlds[7]
    render = model.render_image(pose, intrinsics[7], 48, 48)
    depth, accumulation = render["depth"].reshape(-1), render["accumulation"].reshape(-1)
    origins, directions = pixel_rays(pose, intrinsics[7], pixel_grid(48, 48, pose.device))
    near, far = ray_box_intersection(origins, directions, *model.occupancy.aabb)
    opaque, empty = accumulation > 0.9, accumulation < 1e-3
    assert opaque.sum() > 50 and empty.sum() > 50
    assert ((depth[opaque] > near[opaque]) & (depth[opaque] < far[opaque])).all()
    # The viewer composites its scene objects with this depth: the background must not be in front of them.
    beyond = torch.where(far > near, far, torch.zeros_like(far))
    assert (depth[empty] >= beyond[empty]).all()


def test_pose_gradients_are_finite_and_nonzero(tiny_scene):
    model, images, intrinsics = tiny_scene.model, tiny_scene.images, tiny_scene.intrinsics
    from nerfstudio.cameras.lie_groups import exp_map_SE3

    correction = torch.zeros(1, 6, requires_grad=True)
    pose = tiny_scene.cameras.camera_to_worlds[3]
    perturbed = torch.tensor([[0.02, -0.01, 0.0, 0.01, 0.02, -0.015]])
    delta = exp_map_SE3(correction + perturbed)[0]
    corrected = torch.cat([delta[:, :3] @ pose[:, :3], (delta[:, :3] @ pose[:, 3:] + delta[:, 3:])], dim=1)
    pixels = torch.stack(torch.meshgrid(torch.arange(0, 48, 3.0), torch.arange(0, 48, 3.0), indexing="xy"), -1)
    pixels = pixels.reshape(-1, 2)
    result = model.render_pixels(corrected, intrinsics[3], pixels)
    target = images[3][pixels[:, 1].long(), pixels[:, 0].long()]
    # autograd.grad, not backward(): the shared model's parameters get no gradients
    (gradient,) = torch.autograd.grad(((result["rgb"] - target) ** 2).mean(), correction)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_total_variation_is_zero_for_smooth_grids_and_matches_its_definition():
    from pad_nerfstudio.field.field import VectorMatrixGrid

    grid = VectorMatrixGrid((4, 8), components=2)
    with torch.no_grad():
        grid.planes[-1].fill_(0.3)
        grid.lines[-1].fill_(-1.0)
    assert float(grid.total_variation()) == 0.0
    with torch.no_grad():
        grid.planes[-1][0, 0, 3, 5] = 1.3  # one cell off by 1: two differences of 1 along each plane axis
    pairs = 3 * 2 * 7 * 8  # neighbour pairs along one axis of the (3, 2, 8, 8) planes
    assert float(grid.total_variation()) == pytest.approx(2 / pairs + 2 / pairs)
