"""Shared fixtures: a tiny generated MAD class and one briefly trained pipeline on it, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/mad_fixtures.py


@pytest.fixture(scope="session")
def tiny_class(tmp_path_factory) -> Path:
    """A 48 px pad-synth class: 210 posed training views, a few good and defective test queries."""
    from pad_nerfstudio.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("pad-synth")
    return generate_dataset(root, classes=["gorilla"], size=48, n_test_good=3, n_test_defect=2, progress=False)[0]


@pytest.fixture(scope="session")
def tiny_scene(tiny_class) -> SimpleNamespace:
    """The pipeline as ns-viewer builds it (test mode) on the tiny class, its field trained for 150 steps.

    Training is most of the cost of the field, pose and viewer tests, so they share this one scene. Tests
    must not change the model; the viewer tests may change the pipeline's inspection panel.
    Holds: pipeline, model, cameras, intrinsics [n, 4], images [n, h, w, 3], losses (per-step MSE).
    """
    pipeline = tiny_pipeline(tiny_class)
    images, cameras, intrinsics, losses = train_briefly(pipeline, steps=150)
    model = pipeline.model
    return SimpleNamespace(
        pipeline=pipeline, model=model, cameras=cameras, intrinsics=intrinsics, images=images, losses=losses
    )


def tiny_pipeline(class_dir: Path, **model_options):
    """The pipeline as ns-viewer builds it (test mode) for a 48 px class, its field not trained yet.

    ``model_options`` override the small field's settings (e.g. ``encoding="hash"``).
    """
    from pad_nerfstudio.data.datamanager import MADDataManagerConfig
    from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
    from pad_nerfstudio.field.model import OmniposeModelConfig
    from pad_nerfstudio.pipeline import OmniposePipelineConfig
    from pad_nerfstudio.pose.alignment import AlignmentConfig
    from pad_nerfstudio.pose.refine import PoseEstimatorConfig, RoundConfig
    from pad_nerfstudio.pose.retrieval import RetrievalConfig

    torch.manual_seed(0)
    config = OmniposePipelineConfig(
        datamanager=MADDataManagerConfig(dataparser=MADDataParserConfig(data=class_dir)),
        model=OmniposeModelConfig(**{"grid_resolutions": (16, 48), "occupancy_resolution": 32, **model_options}),
        # 48 px queries: no quarter-resolution round (12 px renders say nothing), short alignments
        localisation=PoseEstimatorConfig(
            retrieval=RetrievalConfig(input_size=96),
            rounds=(
                RoundConfig(0.5, AlignmentConfig(blur_sigmas=(2.0, 1.0), iterations=(10, 10), num_pixels=500)),
                RoundConfig(1.0, AlignmentConfig(blur_sigmas=(0.5,), iterations=(15,), num_pixels=800)),
            ),
        ),
        hull_views=32,
    )
    return config.setup(device="cpu", test_mode="test")


def tiny_estimator(model, cameras, intrinsics, images, backbone):
    """A pose estimator over a 48 px field's training views, with rounds for 48 px queries."""
    from pad_nerfstudio.pose.alignment import AlignmentConfig
    from pad_nerfstudio.pose.refine import PoseEstimatorConfig, RoundConfig
    from pad_nerfstudio.pose.retrieval import RetrievalConfig

    # No quarter-resolution round (12 px renders say nothing), blur scaled down accordingly.
    config = PoseEstimatorConfig(
        retrieval=RetrievalConfig(input_size=96),
        rounds=(
            RoundConfig(0.5, AlignmentConfig(blur_sigmas=(2.0, 1.0), iterations=(10, 10), num_pixels=500)),
            RoundConfig(1.0, AlignmentConfig(blur_sigmas=(1.0, 0.5), iterations=(10, 15), num_pixels=800)),
            RoundConfig(1.0, AlignmentConfig(blur_sigmas=(0.5,), iterations=(15,), num_pixels=800)),
        ),
    )
    return config.setup(
        model=model,
        camera_to_worlds=cameras.camera_to_worlds,
        intrinsics=intrinsics,
        image_size=(int(cameras.width[0]), int(cameras.height[0])),
        images=list(images),
        backbone=backbone,
    )


def train_briefly(pipeline, steps: int, rays: int = 1024, seed: int = 0):
    """Carve the hull and train the pipeline's field on random rays over all training views, as ns-train does.

    Rays go through ``model.get_outputs`` with their camera indices, so per-image appearance is learned too.
    Returns the training images [n, h, w, 3], cameras, intrinsics [n, 4] and the per-step MSE.
    """
    from nerfstudio.cameras.rays import RayBundle

    from pad_nerfstudio.field.rays import pixel_rays

    torch.manual_seed(seed)
    pipeline.carve_visual_hull(step=0)
    model, dataset = pipeline.model, pipeline.datamanager.train_dataset
    images = torch.stack([dataset.get_image_float32(i) for i in range(len(dataset))])
    cameras = dataset.cameras
    intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1)
    groups = model.get_param_groups()
    rates = {"fields": 0.02, "heads": 0.005, "appearance": 0.005}
    optimizer = torch.optim.Adam([{"params": params, "lr": rates[name]} for name, params in groups.items()])
    height, width = images.shape[1:3]
    losses = []
    model.train()
    for _ in range(steps):
        view = torch.randint(0, len(dataset), (rays,))
        pixels = torch.stack([torch.randint(0, width, (rays,)), torch.randint(0, height, (rays,))], -1)
        origins, directions = pixel_rays(cameras.camera_to_worlds[view], intrinsics[view], pixels.float())
        bundle = RayBundle(origins, directions, pixel_area=torch.ones(rays, 1), camera_indices=view[:, None])
        result = model.get_outputs(bundle)
        batch = {"image": images[view, pixels[:, 1], pixels[:, 0]]}
        loss = sum(model.get_loss_dict(result, batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(((result["rgb"].detach() - batch["image"]) ** 2).mean()))
    model.eval()
    return images, cameras, intrinsics, losses
