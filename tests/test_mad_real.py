"""MAD-Real support: normalising a structure-from-motion reconstruction, comparing it with true poses, object
masks from colour and multi-view geometry, and training views cut out along their masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mad_fixtures import look_at_pose, make_mad_class
from PIL import Image

from pad_nerfstudio.data.mad_dataset import MADDataset
from pad_nerfstudio.data.mad_layout import MADFormatError, read_training_views
from pad_nerfstudio.data.object_masks import carve_hull, hull_silhouette, mask_iou, project, segment_object
from pad_nerfstudio.data.sfm import align_similarity, fit_ground_plane, normalise_to_object, pose_errors_after_alignment


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _scene(rng: np.random.Generator):
    """Cameras above a ground plane at z = -1 looking at the origin, and points on that ground."""
    poses = np.stack([look_at_pose(az, el) for az, el in zip(rng.uniform(0, 360, 30), rng.uniform(15, 60, 30))])
    ground = np.column_stack([rng.uniform(-4, 4, (400, 2)), np.full(400, -1.0)])
    return poses, ground


def _move(poses: np.ndarray, points: np.ndarray, scale: float, rotation: np.ndarray, offset: np.ndarray):
    moved = poses.copy()
    moved[:, :3, :3] = rotation @ poses[:, :3, :3]
    moved[:, :3, 3] = scale * poses[:, :3, 3] @ rotation.T + offset
    return moved, scale * points @ rotation.T + offset


def test_normalisation_undoes_an_unknown_similarity():
    rng = np.random.default_rng(0)
    poses, ground = _scene(rng)
    moved, moved_points = _move(poses, ground, 0.37, _random_rotation(rng), np.array([3.0, -2.0, 5.0]))
    normalised, points, ground_height = normalise_to_object(moved, moved_points, distance=4.0)
    # Up is +z again (the ground is horizontal), the object centre is the origin, the cameras are 4 away.
    assert ground_height == pytest.approx(-1.0, abs=1e-6)
    assert np.allclose(points[:, 2], -1.0, atol=1e-6)
    assert np.allclose(np.linalg.norm(normalised[:, :3, 3], axis=1), 4.0, atol=1e-6)
    # Only a rotation about the vertical axis is left undetermined: relative geometry is exact.
    errors = pose_errors_after_alignment(normalised, poses)
    assert errors["rotation_deg"].max() < 1e-4 and errors["centre_fraction"].max() < 1e-6
    assert np.allclose(normalised[:, 2, 3], poses[:, 2, 3], atol=1e-6)  # heights above the ground are kept


def test_similarity_alignment_recovers_scale_rotation_translation_and_measures_errors():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(20, 3))
    rotation = _random_rotation(rng)
    target = 2.5 * source @ rotation.T + np.array([1.0, 2.0, 3.0])
    scale, found, translation = align_similarity(source, target)
    assert scale == pytest.approx(2.5) and np.allclose(found, rotation) and np.allclose(translation, [1, 2, 3])

    poses, _ = _scene(rng)
    disturbed = poses.copy()
    angle = np.radians(0.5)
    disturbed[0, :3, :3] = poses[0, :3, :3] @ np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    errors = pose_errors_after_alignment(disturbed, poses)
    assert errors["rotation_deg"][0] == pytest.approx(0.5, abs=1e-3)
    assert np.all(errors["rotation_deg"][1:] < 1e-6)


def test_ground_plane_ignores_walls_and_clutter():
    rng = np.random.default_rng(2)
    ground = np.column_stack([rng.uniform(-3, 3, (300, 2)), rng.normal(-1.0, 0.002, 300)])
    wall = np.column_stack([np.full(250, 6.0), rng.uniform(-3, 3, 250), rng.uniform(-1, 4, 250)])
    clutter = rng.uniform(-1, 1, (100, 3))
    normal, offset, fraction = fit_ground_plane(np.concatenate([ground, wall, clutter]), np.array([0.1, 0.0, 1.0]))
    assert np.degrees(np.arccos(normal[2])) < 0.5 and offset == pytest.approx(-1.0, abs=0.01)
    assert 0.4 < fraction < 0.5


def _disc_photo(size: int = 96, rng_seed: int = 0):
    """A red disc on a textured grey-brown backdrop, and its true mask."""
    rng = np.random.default_rng(rng_seed)
    rows, columns = np.mgrid[:size, :size]
    truth = (rows - size / 2) ** 2 + (columns - size / 2) ** 2 < (size / 4) ** 2
    stripes = 40 * np.sin(columns / 3.0)[..., None] * np.array([1.0, 0.8, 0.6])
    backdrop = 120 + stripes + rng.normal(0, 6, (size, size, 3))
    photo = np.where(truth[..., None], np.array([200, 40, 30]) + rng.normal(0, 4, (size, size, 3)), backdrop)
    return np.clip(photo, 0, 255).astype(np.uint8), truth


def test_segmentation_recovers_the_object_from_a_shifted_prior():
    photo, truth = _disc_photo()
    prior = np.roll(truth, (3, -2), axis=(0, 1))  # a pose a few pixels off
    mask = segment_object(photo, prior, band=5)
    assert mask_iou(prior, truth) < 0.85
    assert mask_iou(mask, truth) > 0.97


def test_hull_keeps_what_most_views_agree_on():
    # A ball of radius 0.5 seen by 24 cameras; two views' masks also hold a false blob of backdrop.
    poses = np.stack([look_at_pose(az, el) for az in range(0, 360, 30) for el in (20, 50)])
    camera = np.array([100.0, 100.0, 48.0, 48.0])
    voxels = np.stack(np.meshgrid(*[np.linspace(-1, 1, 81)] * 3, indexing="ij"), -1).reshape(-1, 3)
    ball = voxels[np.linalg.norm(voxels, axis=1) < 0.5]
    truths = [hull_silhouette(ball, 0.025, pose, camera, (96, 96)) for pose in poses]
    masks = [t.copy() for t in truths]
    masks[0][5:25, 5:25] = True
    masks[1][70:90, 60:90] = True
    kept, step = carve_hull(masks, poses, np.repeat(camera[None], len(poses), 0), -np.ones(3), np.ones(3), 64)
    # The blobs are carved away; the ball stays whole (a vote is looser than an intersection, so the hull's
    # outline may lie a pixel or two outside: the second GrabCut pass decides there).
    for pose, truth, mask in zip(poses[:2], truths[:2], masks[:2]):
        silhouette = hull_silhouette(kept, step, pose, camera, (96, 96))
        assert not (silhouette & mask & ~truth).any()
        assert (silhouette & truth).sum() > 0.97 * truth.sum() and mask_iou(silhouette, truth) > 0.75
    u, v, depth = project(np.zeros((1, 3)), poses[0], camera)
    assert (u[0], v[0]) == pytest.approx((47.5, 47.5)) and depth[0] == pytest.approx(4.0)


def test_training_views_are_cut_out_along_their_masks(tmp_path):
    class_dir = make_mad_class(tmp_path, n_train=4, size=16)
    meta = json.loads((class_dir / "transforms.json").read_text())
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    (class_dir / "train" / "masks").mkdir()
    for index, frame in enumerate(meta["frames"]):
        Image.fromarray(mask).save(class_dir / "train" / "masks" / f"{index}.png")
        frame["mask_path"] = f"train/masks/{index}.png"
    (class_dir / "transforms.json").write_text(json.dumps(meta))

    views = read_training_views(class_dir)
    assert views.on_backdrop and views.mask_paths[2] == class_dir / "train" / "masks" / "2.png"
    from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig

    outputs = MADDataParserConfig(data=class_dir).setup().get_dataparser_outputs(split="train")
    dataset = MADDataset(outputs)
    photo = np.asarray(Image.open(outputs.image_filenames[0]).convert("RGB"))
    cut = dataset.get_numpy_image(0)
    assert dataset.on_backdrop
    assert np.array_equal(cut[4:12, 4:12], photo[4:12, 4:12]) and np.all(cut[:4] == 255) and np.all(cut[:, 12:] == 255)
    assert np.array_equal(dataset.get_photo(0), photo)

    Image.fromarray(mask[:8, :8]).save(class_dir / "train" / "masks" / "1.png")
    with pytest.raises(MADFormatError, match="1.png is \\(8, 8\\) pixels"):
        read_training_views(class_dir)
    (class_dir / "train" / "masks" / "1.png").unlink()
    with pytest.raises(MADFormatError, match="does not exist.*pad-poses"):
        read_training_views(class_dir)
