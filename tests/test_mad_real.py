"""MAD-Real support: normalising a structure-from-motion reconstruction, comparing it with true poses, object
masks from colour and multi-view geometry, and training views cut out along their masks."""

from __future__ import annotations

import json
from pathlib import Path

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

    # One camera placed on the wrong side does not tilt the comparison of the others.
    misplaced = poses.copy()
    misplaced[3, :3, 3] *= -3.0
    errors = pose_errors_after_alignment(misplaced, poses)
    assert not errors["inlier"][3] and errors["inlier"].sum() == len(poses) - 1
    assert np.delete(errors["centre_fraction"], 3).max() < 1e-9 and errors["centre_fraction"][3] > 1.0


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


@pytest.fixture(scope="module")
def handheld_class(tmp_path_factory):
    """A small hand-held capture as pad-synth writes it (30 photos of 192 px on a table, no poses)."""
    from pad_nerfstudio.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("handheld")
    (class_dir,) = generate_dataset(
        root, ["gorilla"], size=192, n_test_good=1, n_test_defect=1, supersample=1, progress=False,
        capture="handheld", views=30, workers=2,
    )  # fmt: skip
    return class_dir


def _copy_photos(class_dir, target):
    import shutil

    for name in ("train", "test", "ground_truth"):
        shutil.copytree(class_dir / name, target / name)
    return target


@pytest.mark.slow
def test_pad_poses_recovers_a_handheld_capture(handheld_class, tmp_path):
    from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
    from pad_nerfstudio.data.poses_cli import main as pad_poses

    class_dir = _copy_photos(handheld_class, tmp_path / "01Gorilla")
    assert pad_poses([str(class_dir)]) == 0
    written = json.loads((class_dir / "transforms.json").read_text())
    truth = {
        f["file_path"]: f["transform_matrix"]
        for f in json.loads((handheld_class / "truth" / "transforms.json").read_text())["frames"]
    }
    assert written["pad_poses"]["registered"] >= 28 and written["pad_poses"]["misplaced"] == []
    estimated = np.stack([f["transform_matrix"] for f in written["frames"]])
    errors = pose_errors_after_alignment(estimated, np.stack([truth[f["file_path"]] for f in written["frames"]]))
    assert np.median(errors["rotation_deg"]) < 0.5 and np.median(errors["centre_fraction"]) < 0.01
    # The frame is MAD-Sim's: cameras 4 units from the object, above a horizontal ground below the object centre.
    assert np.median(np.linalg.norm(estimated[:, :3, 3], axis=1)) == pytest.approx(4.0)
    assert -1.2 < written["pad_poses"]["ground_height"] < -0.2 and np.all(estimated[:, 2, 3] > 0.5)
    assert written["fl_x"] == pytest.approx(0.5 * 192 / np.tan(0.5 * 0.6911), rel=0.03)

    ious = []
    for frame in written["frames"]:
        stem = Path(frame["file_path"]).stem
        predicted = np.asarray(Image.open(class_dir / frame["mask_path"])) > 127
        ious.append(
            mask_iou(predicted, np.asarray(Image.open(handheld_class / "truth" / "train_masks" / f"{stem}.png")) > 127)
        )
    assert np.mean(ious) > 0.95

    # The class now trains like a MAD-Sim class: mad-data reads it, cut out along the masks.
    outputs = MADDataParserConfig(data=class_dir).setup().get_dataparser_outputs(split="train")
    dataset = MADDataset(outputs)
    assert len(dataset) == written["pad_poses"]["registered"] and dataset.on_backdrop
    assert (dataset.get_numpy_image(0) == 255).all(axis=-1).mean() > 0.6  # the table and wall are gone

    # A second run refuses to overwrite without --force.
    assert pad_poses([str(class_dir)]) == 1


@pytest.mark.slow
def test_pad_poses_names_the_photos_it_could_not_pose(handheld_class, tmp_path, capsys):
    from pad_nerfstudio.data.poses_cli import main as pad_poses

    class_dir = _copy_photos(handheld_class, tmp_path / "01Gorilla")
    rng = np.random.default_rng(0)
    for index in range(0, 30, 3):  # ten photos of something else entirely
        Image.fromarray(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)).save(
            class_dir / "train" / "good" / f"{index}.png"
        )
    assert pad_poses([str(class_dir), "--masks", "none"]) == 1
    error = capsys.readouterr().err
    assert "photos got a pose" in error and "train/good/3.png" in error and "train/good/1.png" not in error
    assert not (class_dir / "transforms.json").exists() and not (class_dir / "train" / "masks").exists()


def test_backdrop_pixels_do_not_change_the_score_of_a_good_query():
    """A query photographed on a table, cut out along its outline the way the pipeline does it (GrabCut started from
    the field's silhouette at a slightly wrong pose), scores like the same view on white."""
    import torch

    from pad_nerfstudio.anomaly.anomaly_map import AnomalyScorerConfig
    from pad_nerfstudio.data.object_masks import composite_on_white
    from pad_nerfstudio.synth.generate import handheld_poses, render_clean_view

    pose = handheld_poses("gorilla", 0, 50)[7]
    on_table = render_clean_view("gorilla", 0, pose, 160, supersample=2, capture="handheld")
    on_white = render_clean_view("gorilla", 0, pose, 160, supersample=2)
    silhouette = (on_white < 250).any(axis=-1)
    cut = composite_on_white(on_table, segment_object(on_table, np.roll(silhouette, (1, -1), (0, 1)), band=5))
    stained = cut.copy()
    rows, columns = np.nonzero(silhouette)
    row, column = int(np.median(rows)), int(np.median(columns))
    stained[row - 3 : row + 3, column - 3 : column + 3] = (60, 40, 30)

    scorer = AnomalyScorerConfig().setup()
    reference = torch.from_numpy(on_white).permute(2, 0, 1)[None].float() / 255.0

    def score(image: np.ndarray) -> float:
        return float(scorer(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0, reference)[1][0])

    good, cut_out, with_table, stain = score(on_white), score(cut), score(on_table), score(stained)
    # Against an exact reference a good query scores 0; what the cut-out leaves is its one-pixel outline (part
    # backdrop), well under a small stain (0.25-0.31 of it over ten GrabCut seeds). Without the cut-out the
    # backdrop alone would outscore the stain.
    assert cut_out - good < 0.4 * (stain - good)
    assert with_table > stain
