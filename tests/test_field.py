"""The object field: packed rendering maths, training on a tiny scene, pose gradients."""

from __future__ import annotations

import math

import pytest
import torch

from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import MADDataset
from pad_nerfstudio.field.model import OmniposeModelConfig
from pad_nerfstudio.field.packed import distortion, exclusive_cumsum_per_ray, rank_in_ray, visible_samples
from pad_nerfstudio.field.rays import pixel_rays


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


@pytest.fixture(scope="module")
def trained(tiny_class):
    """A field trained briefly on the tiny class, with its per-step losses."""
    torch.manual_seed(0)
    outputs = MADDataParserConfig(data=tiny_class).setup().get_dataparser_outputs("train")
    dataset = MADDataset(outputs)
    images = torch.stack([dataset.get_image_float32(i) for i in range(len(dataset))])
    model = OmniposeModelConfig(grid_resolutions=(16, 48), occupancy_resolution=32).setup(
        scene_box=outputs.scene_box, num_train_data=len(dataset)
    )
    model.carve_visual_hull(dataset.cameras, list(images))
    cameras = dataset.cameras
    intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1)
    groups = model.get_param_groups()
    optimizer = torch.optim.Adam([{"params": groups["fields"], "lr": 0.02}, {"params": groups["heads"], "lr": 0.005}])
    losses = []
    height, width = images.shape[1:3]
    for _ in range(120):
        view = torch.randint(0, len(dataset), (1024,))
        pixels = torch.stack([torch.randint(0, width, (1024,)), torch.randint(0, height, (1024,))], -1)
        origins, directions = pixel_rays(cameras.camera_to_worlds[view], intrinsics[view], pixels.float())
        result = model.render_rays(origins, directions, jitter=True)
        batch = {"image": images[view, pixels[:, 1], pixels[:, 0]]}
        loss = sum(model.get_loss_dict(result, batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(((result["rgb"].detach() - batch["image"]) ** 2).mean()))
    model.eval()
    return model, dataset, images, intrinsics, losses


def test_training_loss_falls(trained):
    losses = trained[-1]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_render_beats_constant_white_image(trained):
    model, dataset, images, intrinsics, _ = trained
    truth = images[7]
    render = model.render_image(dataset.cameras.camera_to_worlds[7], intrinsics[7], truth.shape[1], truth.shape[0])
    psnr = -10 * math.log10(float(((render["rgb"] - truth) ** 2).mean()))
    white = -10 * math.log10(float(((1.0 - truth) ** 2).mean()))
    assert psnr > white + 5.0, (psnr, white)


def test_pose_gradients_are_finite_and_nonzero(trained):
    model, dataset, images, intrinsics, _ = trained
    model.requires_grad_(False)
    from nerfstudio.cameras.lie_groups import exp_map_SE3

    correction = torch.zeros(1, 6, requires_grad=True)
    pose = dataset.cameras.camera_to_worlds[3]
    perturbed = torch.tensor([[0.02, -0.01, 0.0, 0.01, 0.02, -0.015]])
    delta = exp_map_SE3(correction + perturbed)[0]
    corrected = torch.cat([delta[:, :3] @ pose[:, :3], (delta[:, :3] @ pose[:, 3:] + delta[:, 3:])], dim=1)
    pixels = torch.stack(torch.meshgrid(torch.arange(0, 48, 3.0), torch.arange(0, 48, 3.0), indexing="xy"), -1)
    pixels = pixels.reshape(-1, 2)
    result = model.render_pixels(corrected, intrinsics[3], pixels)
    target = images[3][pixels[:, 1].long(), pixels[:, 0].long()]
    ((result["rgb"] - target) ** 2).mean().backward()
    assert torch.isfinite(correction.grad).all() and correction.grad.abs().sum() > 0
