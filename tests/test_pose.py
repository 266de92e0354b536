"""Pose estimation: SE(3) maths, retrieval, direct alignment on exact renders, refinement through a tiny field."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_estimator

from pad_nerfstudio.anomaly.backbone import load_backbone
from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import load_rgb
from pad_nerfstudio.data.mad_layout import read_true_poses
from pad_nerfstudio.field.rays import pixel_rays
from pad_nerfstudio.pose.alignment import AlignmentConfig, ReferenceView, align_to_reference
from pad_nerfstudio.pose.matching import PnPHypothesis
from pad_nerfstudio.pose.refine import PoseEstimatorConfig, render_views
from pad_nerfstudio.pose.retrieval import PoseRetrieval, RetrievalConfig
from pad_nerfstudio.pose.se3 import (
    apply_pose_correction,
    camera_points_to_pixels,
    exp_se3,
    invert,
    log_se3,
    opencv_intrinsics_matrix,
    opengl_to_opencv,
    pixels_to_camera_directions,
    reprojection_displacement,
    rotation_error_deg,
    translation_error_percent,
)
from pad_nerfstudio.pose.se3 import orbit as se3_orbit
from pad_nerfstudio.synth import raycast
from pad_nerfstudio.synth.cameras import focal_length, look_at, spherical_position
from pad_nerfstudio.synth.generate import _scene


def orbit(pose: torch.Tensor, degrees: float, axis=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """The camera moved on its sphere about the world origin (what a wrong nearest view looks like)."""
    return se3_orbit(pose.double(), torch.tensor(axis), degrees, torch.zeros(3))


# ---------------------------------------------------------------------------------------------- SE(3)
def test_exp_log_round_trip():
    torch.manual_seed(0)
    tangents = torch.randn(64, 6, dtype=torch.float64) * torch.tensor([1, 1, 1, 0.8, 0.8, 0.8], dtype=torch.float64)
    tangents = torch.cat([tangents, torch.randn(8, 6, dtype=torch.float64) * 1e-6])  # the small-angle branches
    poses = exp_se3(tangents)
    assert torch.allclose(log_se3(poses), tangents, atol=1e-9)
    assert torch.allclose(exp_se3(log_se3(poses)), poses, atol=1e-9)
    assert torch.allclose(invert(invert(poses)), poses, atol=1e-12)
    # The same map as nerfstudio's exp_map_SE3 (whose small-angle series differs by < 1e-11 near zero).
    from nerfstudio.cameras.lie_groups import exp_map_SE3

    assert torch.allclose(poses, exp_map_SE3(tangents), atol=1e-10)
    assert torch.allclose(exp_se3(tangents.reshape(8, 9, 6)), poses.reshape(8, 9, 3, 4))  # batched over any shape


def test_correction_sides_and_errors_of_a_known_perturbation():
    camera = torch.tensor(look_at(spherical_position(30.0, 20.0)))[:3]
    backwards = torch.tensor([0.0, 0.0, 0.4, 0.0, 0.0, 0.0], dtype=torch.float64)
    # right = camera frame: +z moves the camera away from the object along its own axis
    moved = apply_pose_correction(camera, backwards, side="right")
    assert float(moved[:, 3].norm()) == pytest.approx(4.4)
    # left = world frame: +z moves it up
    assert torch.allclose(apply_pose_correction(camera, backwards, side="left")[:, 3], camera[:, 3] + backwards[:3])
    turned = apply_pose_correction(camera, torch.tensor([0, 0, 0, 0.02, -0.03, 0.01], dtype=torch.float64))
    assert float(rotation_error_deg(camera, turned)) == pytest.approx(math.degrees(math.sqrt(0.0014)), rel=1e-9)
    assert float(rotation_error_deg(camera, orbit(camera, 0.05))) == pytest.approx(0.05, rel=1e-6)
    assert float(translation_error_percent(moved, camera)) == pytest.approx(10.0)
    assert float(translation_error_percent(camera, camera)) == 0.0


def test_projection_conventions_match_opencv_and_the_field_rays():
    pose = torch.tensor(look_at(spherical_position(70.0, -35.0), roll_deg=3.0))[:3]
    intrinsics = torch.tensor([70.0, 72.0, 24.0, 23.0], dtype=torch.float64)
    points = torch.randn(20, 3, dtype=torch.float64) * 0.5
    camera_points = (points - pose[:, 3]) @ pose[:, :3]
    ours, depth = camera_points_to_pixels(camera_points, intrinsics)
    cv_pose = invert(opengl_to_opencv(pose)).numpy()
    theirs, _ = cv2.projectPoints(
        points.numpy(), cv2.Rodrigues(cv_pose[:, :3])[0], cv_pose[:, 3], opencv_intrinsics_matrix(intrinsics), None
    )
    assert np.allclose(ours.numpy(), theirs[:, 0], atol=1e-9)
    assert (depth > 0).all()
    # A pixel's ray, as the field generates it, passes through the point that projects onto that pixel.
    _, directions = pixel_rays(pose, intrinsics, ours)
    to_points = torch.nn.functional.normalize(points - pose[:, 3], dim=-1)
    assert torch.allclose(directions, to_points, atol=1e-9)
    assert torch.allclose(pixels_to_camera_directions(ours, intrinsics) @ pose[:, :3].t(), directions, atol=1e-9)
    # Image motion of the surface: zero for the same pose, f * angle for a small turn about the camera's y axis.
    assert float(reprojection_displacement(points, pose, pose, intrinsics).max()) == 0.0
    turned = apply_pose_correction(pose, torch.tensor([0, 0, 0, 0, 1e-3, 0], dtype=torch.float64))
    centre = pose[:, 3] - 4.0 * pose[:, 2]
    assert float(reprojection_displacement(centre[None], turned, pose, intrinsics)) == pytest.approx(0.07, rel=1e-3)


# ---------------------------------------------------------------------------------------------- exact renders
class ExactRenderer:
    """The generator's ray caster with the field's rendering interface: alignment tests without field error."""

    def __init__(self, class_dir):
        attributes = json.loads((class_dir.parent / "attributes.json").read_text())[class_dir.name]
        self.scene = _scene(class_dir.name, int(attributes["seed"]))

    def render_image(self, camera_to_world, intrinsics, width, height):
        hits = raycast.trace(self.scene, camera_to_world.double().numpy(), width, 3)
        hit = np.isfinite(hits.depth)
        samples = (np.arange(width * 3) + 0.5) / 3 - 0.5 * width
        stretch = np.sqrt(1 + (samples[None, :] / hits.focal) ** 2 + (samples[:, None] / hits.focal) ** 2).reshape(-1)
        accumulation = raycast.resolve(hit.astype(float), width, 3)
        distance = raycast.resolve(np.where(hit, hits.depth * stretch, 0.0), width, 3)
        depth = np.where(accumulation > 0, distance / np.maximum(accumulation, 1e-9), 0.0)
        rgb = raycast.compose(hits, raycast.shade(hits))
        return {
            "rgb": torch.from_numpy(rgb).float(),
            "depth": torch.from_numpy(depth).float()[..., None],
            "accumulation": torch.from_numpy(accumulation).float()[..., None],
        }


@pytest.fixture(scope="module")
def exact(tiny_class):
    renderer = ExactRenderer(tiny_class)
    true_pose = torch.tensor(look_at(spherical_position(40.0, 25.0), roll_deg=2.0))[:3]
    size = 96
    focal = float(focal_length(size))
    intrinsics = torch.tensor([focal, focal, size / 2, size / 2])
    return renderer, true_pose, intrinsics, size


def test_alignment_converges_on_exact_renders_and_ignores_a_defect(exact):
    renderer, true_pose, intrinsics, size = exact
    query = renderer.render_image(true_pose, intrinsics, size, size)["rgb"]
    config = AlignmentConfig(blur_sigmas=(2.0, 1.0, 0.5), iterations=(10, 10, 20))
    start = apply_pose_correction(orbit(true_pose, 1.5), torch.tensor([0, 0, 0, 0, 0, 0.01], dtype=torch.float64))
    pose = start
    for _ in range(2):  # render at the estimate, align, twice
        reference = ReferenceView(
            **renderer.render_image(pose, intrinsics, size, size), camera_to_world=pose, intrinsics=intrinsics
        )
        pose, info = align_to_reference(query, intrinsics, reference, config)
    before, after = float(rotation_error_deg(start, true_pose)), float(rotation_error_deg(pose, true_pose))
    assert after < 0.1 * before, (before, after)
    # The true pose is a fixed point even when part of the query is an outlier blob (a stain).
    stained = query.clone()
    opaque = renderer.render_image(true_pose, intrinsics, size, size)["accumulation"][..., 0].numpy() > 0.9
    rows, cols = np.nonzero(opaque)
    centre = rows.mean(), cols.mean()
    yy, xx = np.mgrid[:size, :size]
    blob = torch.from_numpy((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 6**2)
    stained[blob] = torch.tensor([0.6, 0.1, 0.5])
    reference = ReferenceView(
        **renderer.render_image(true_pose, intrinsics, size, size), camera_to_world=true_pose, intrinsics=intrinsics
    )
    stays, info = align_to_reference(stained, intrinsics, reference, config)
    assert float(rotation_error_deg(stays, true_pose)) < 0.05
    assert info["inlier_fraction"] < 0.99  # the blob was down-weighted, not fitted


# ---------------------------------------------------------------------------------------------- retrieval
@pytest.fixture(scope="module")
def training(tiny_class):
    outputs = MADDataParserConfig(data=tiny_class).setup().get_dataparser_outputs("train")
    images = [torch.from_numpy(load_rgb(path)).float() / 255 for path in outputs.image_filenames]
    return outputs, images


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


def test_retrieval_finds_training_views_and_their_perturbed_renders(training, backbone, tiny_class):
    outputs, images = training
    poses = outputs.cameras.camera_to_worlds
    retrieval = PoseRetrieval(backbone, RetrievalConfig(input_size=96)).build(images, poses)
    assert retrieval.size == len(images)
    some = list(range(3, len(images), 23))
    distances, indices = retrieval.search(retrieval.describe([images[i] for i in some]), 1)
    assert indices[:, 0].tolist() == some
    assert np.allclose(distances[:, 0], 0.0, atol=1e-5)
    pose, distance, index = retrieval.query(images[some[0]], k=3)[0]
    assert index == some[0] and torch.equal(pose, poses[some[0]])
    # A render 2 degrees away from a training view (exact renderer) retrieves that view.
    renderer = ExactRenderer(tiny_class)
    size = images[0].shape[0]
    focal = float(focal_length(size))
    intrinsics = torch.tensor([focal, focal, size / 2, size / 2])
    for view in (40, 100, 150):
        nudged = orbit(poses[view], 2.0, axis=(0.3, 0.2, 1.0))
        render = renderer.render_image(nudged, intrinsics, size, size)["rgb"]
        assert retrieval.query(render, k=1)[0][2] == view


# ---------------------------------------------------------------------------------------------- tiny field
@pytest.fixture(scope="module")
def tiny_field(tiny_scene):
    """The session's briefly trained field on the 48 px class (see conftest.py)."""
    return tiny_scene.model, tiny_scene.cameras, tiny_scene.intrinsics, tiny_scene.images


@pytest.fixture(scope="module")
def estimator(tiny_field, backbone):
    model, cameras, intrinsics, images = tiny_field
    return tiny_estimator(model, cameras, intrinsics, images, backbone)


def _query(tiny_class, name):
    truth = read_true_poses(tiny_class)
    return torch.from_numpy(load_rgb(tiny_class / name)).float() / 255, torch.from_numpy(truth[name])[:3]


def test_refinement_through_the_field_removes_most_of_a_known_perturbation(estimator, tiny_class):
    query, true_pose = _query(tiny_class, "test/good/0.png")
    start = orbit(true_pose, 7.0, axis=(0.2, -0.4, 1.0))
    pose, diagnostics = estimator.refine(query, [start])
    before, after = float(rotation_error_deg(start, true_pose)), float(rotation_error_deg(pose, true_pose))
    assert before == pytest.approx(7.0, rel=1e-6)
    assert after < 0.25 * before, (before, after)
    assert set(diagnostics["stage_poses"]) == {"round1", "round2", "round3"}
    # Several hypotheses in one batch: the good one wins against a far-off one, wherever it is listed.
    far = orbit(true_pose, 60.0)
    pose_b, diagnostics_b = estimator.refine(query, [far, start])
    assert diagnostics_b["chosen_hypothesis"] == 1
    assert float(rotation_error_deg(pose_b, true_pose)) < 0.25 * before


def test_a_wrong_start_is_detected_as_a_bad_fit_and_recovered(estimator, tiny_class, monkeypatch):
    """Every hypothesis 40° off (as when retrieval and PnP all fail): the fit is far worse than the field's typical
    fit, so the fine stage restarts from the nearest training views and orbits of the estimate, and wins."""
    query, true_pose = _query(tiny_class, "test/good/1.png")
    wrong = orbit(true_pose, 40.0, axis=(0.3, 1.0, 0.2))
    monkeypatch.setattr(estimator, "_select_hypotheses", lambda _: [PnPHypothesis(wrong.float(), 0, 0, 0)])
    pose, diagnostics = estimator.estimate_pose(query)
    assert diagnostics["retried"]
    assert diagnostics["first_score"] > estimator.config.retry_factor * estimator.typical_score
    assert float(rotation_error_deg(diagnostics["first_pose"].double(), true_pose)) > 10.0
    assert diagnostics["score"] < diagnostics["first_score"]
    recovered = float(rotation_error_deg(pose.double(), true_pose))
    # About as close as the normal path gets on this 48 px field.
    monkeypatch.undo()
    normal_pose, _ = estimator.estimate_pose(query)
    assert recovered < float(rotation_error_deg(normal_pose.double(), true_pose)) + 0.5


def test_estimate_pose_end_to_end_is_deterministic(estimator, tiny_class):
    query, true_pose = _query(tiny_class, "test/good/1.png")
    pose, diagnostics = estimator.estimate_pose(query)
    again, _ = estimator.estimate_pose(query)
    assert torch.equal(pose, again)
    assert pose.shape == (3, 4)
    coarse = float(rotation_error_deg(diagnostics["coarse_pose"].double(), true_pose))
    final = float(rotation_error_deg(pose.double(), true_pose))
    assert final < max(2.0, 0.5 * coarse), (coarse, final)
    assert {"retrieval", "pnp", "total"} <= set(diagnostics["seconds"])
    with pytest.raises(ValueError, match="RGB"):
        estimator.estimate_pose(query[..., 0])
    with pytest.raises(ValueError, match="255"):
        estimator.estimate_pose(query * 255)


def test_estimator_rejects_mismatched_inputs(tiny_field, backbone):
    model, cameras, intrinsics, images = tiny_field
    with pytest.raises(ValueError, match="training images"):
        PoseEstimatorConfig().setup(
            model=model,
            camera_to_worlds=cameras.camera_to_worlds,
            intrinsics=intrinsics,
            image_size=(48, 48),
            images=list(images[:5]),
            backbone=backbone,
        )


def test_densify_extends_the_databases(estimator, tiny_class):
    # Runs last in this module: it grows the shared estimator's databases.
    before = estimator.retrieval.size
    extra = torch.stack([orbit(estimator.camera_to_worlds[10], 12.0), orbit(estimator.camera_to_worlds[50], 12.0)])
    estimator.densify(extra)
    assert estimator.retrieval.size == before + 2 == len(estimator.keypoints.views) == len(estimator.camera_to_worlds)
    intrinsics = estimator.query_intrinsics(48, 48)
    render = render_views(estimator.model, [extra[0]], intrinsics, 48, 48)[0]["rgb"]
    pose, distance, index = estimator.retrieval.query(render, k=1)[0]
    assert index == before and torch.allclose(pose.double(), extra[0])


def test_sift_on_a_scaled_down_image_reports_positions_in_the_images_own_pixels():
    """Large images are searched for keypoints at ``max_side`` and the positions mapped back (half-pixel centres)."""
    from pad_nerfstudio.pose.matching import sift_features

    size, centres = 640, np.array([[150.0, 200.0], [420.0, 330.0], [260.0, 500.0], [500.0, 120.0]])
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.full((size, size), 40.0)
    for cx, cy in centres:
        image += 200.0 * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * 12.0**2))
    gray = image.clip(0, 255).astype(np.uint8)
    for max_side in (0, 320):
        pixels, descriptors = sift_features(gray, max_side=max_side)
        assert len(pixels) >= len(centres) and descriptors.shape == (len(pixels), 128)
        nearest = np.linalg.norm(centres[:, None] - pixels[None], axis=-1).min(axis=1)
        # Within a pixel: OpenCV's SIFT itself reports blob centres ~0.3 of its pixels off, measured 0.4 px at full
        # size and 0.76 px at 320 (a wrong scale would put them tens of pixels off).
        assert (nearest < 1.0).all(), (max_side, nearest)
