"""The `mad-data` dataparser on tiny generated MAD-layout folders, including every bad-input case."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from mad_fixtures import make_mad_class, write_png16

from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import MADDataset, load_rgb
from pad_nerfstudio.data.mad_layout import MADFormatError, read_true_poses


def parse(data, split="train", **options):
    return MADDataParserConfig(data=data, **options).setup().get_dataparser_outputs(split=split)


def test_train_split_reads_poses_and_intrinsics(tmp_path):
    class_dir = make_mad_class(tmp_path, size=16)
    outputs = parse(class_dir)
    assert len(outputs.image_filenames) == 12
    assert outputs.image_filenames[3].name == "3.png"
    poses = json.loads((class_dir / "transforms.json").read_text())["frames"]
    np.testing.assert_allclose(
        outputs.cameras.camera_to_worlds[5].numpy(), np.array(poses[5]["transform_matrix"])[:3], atol=1e-6
    )
    assert float(outputs.cameras.fx[0]) == pytest.approx(8 / np.tan(0.6911 / 2), rel=1e-6)
    assert int(outputs.cameras.width[0]) == 16 and float(outputs.cameras.cx[0]) == 8.0
    # Cameras all look at the origin from radius 4: the object region is centred there.
    assert np.allclose(outputs.scene_box.aabb.mean(0).numpy(), 0.0, atol=1e-4)


@pytest.mark.parametrize("name", ["01Gorilla", "gorilla", "Gorilla", "GORILLA"])
def test_loose_class_names_resolve(tmp_path, name):
    make_mad_class(tmp_path, "01Gorilla")
    make_mad_class(tmp_path, "16Cat")
    outputs = parse(tmp_path / name)
    assert outputs.metadata["class_name"] == "01Gorilla"


def test_unknown_class_lists_the_classes_found(tmp_path):
    make_mad_class(tmp_path, "01Gorilla")
    make_mad_class(tmp_path, "16Cat")
    with pytest.raises(MADFormatError, match=r"No class 'zebra'.*01Gorilla, 16Cat"):
        parse(tmp_path / "zebra")


def test_test_split_is_numerically_ordered_with_labels_and_masks(tmp_path):
    class_dir = make_mad_class(tmp_path, test_counts={"good": 2, "Stains": 12})
    outputs = parse(class_dir, split="test")
    stains = [p.name for p in outputs.image_filenames if p.parent.name == "Stains"]
    assert stains == [f"{i}.png" for i in range(12)]
    types = outputs.metadata["defect_types"]
    assert sorted(types) == ["Stains"] * 12 + ["good"] * 2
    assert outputs.metadata["labels"] == [int(t != "good") for t in types]
    dataset = MADDataset(outputs)
    item = dataset[types.index("Stains") + 11]  # Stains/11.png: its mask marks row 11
    assert item["label"] == 1 and item["defect_type"] == "Stains"
    assert item["gt_mask"].shape == (16, 16) and item["gt_mask"][11].all() and item["gt_mask"].sum() == 16
    assert not dataset[types.index("good")]["gt_mask"].any()  # good images get an all-zero mask


def test_test_queries_never_reach_training(tmp_path):
    class_dir = make_mad_class(tmp_path)
    train = parse(class_dir)
    assert all("train" in p.parts for p in train.image_filenames)
    assert "labels" not in train.metadata


def test_rgba_is_composited_on_white(tmp_path):
    class_dir = make_mad_class(tmp_path, rgba=True)
    image = MADDataset(parse(class_dir)).get_image_float32(0)
    assert image.shape == (16, 16, 3)
    assert (image[0, 0] == 1.0).all()  # alpha 0 in the corner -> white


def test_train_views_keeps_evenly_spread_subset(tmp_path):
    class_dir = make_mad_class(tmp_path, n_train=24)
    outputs = parse(class_dir, train_views=6)
    assert len(outputs.image_filenames) == 6
    positions = outputs.cameras.camera_to_worlds[:, :, 3].numpy()
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + np.eye(6) * 1e9
    assert distances.min() > 2.0  # spread around the object, not neighbours on the ring
    val = parse(class_dir, split="val", train_views=6, val_views=2)
    assert set(val.image_filenames) <= set(outputs.image_filenames) and len(val.image_filenames) == 2


def test_downscale_resizes_cameras_and_images(tmp_path):
    class_dir = make_mad_class(tmp_path, size=16)
    outputs = parse(class_dir, downscale_factor=2)
    assert int(outputs.cameras.width[0]) == 8 and float(outputs.cameras.fx[0]) == pytest.approx(4 / np.tan(0.6911 / 2))
    assert MADDataset(outputs).get_image_float32(0).shape == (8, 8, 3)
    test = MADDataset(parse(class_dir, split="test", downscale_factor=2))
    assert all(test[i]["gt_mask"].shape == (8, 8) for i in range(len(test)))


def test_file_path_without_png_suffix(tmp_path):
    class_dir = make_mad_class(tmp_path, suffix=False)
    assert parse(class_dir).image_filenames[0].name == "0.png"


def test_nerfstudio_format_with_per_frame_intrinsics(tmp_path):
    class_dir = make_mad_class(tmp_path, size=16)
    meta = json.loads((class_dir / "transforms.json").read_text())
    del meta["camera_angle_x"]
    for frame in meta["frames"]:
        frame.update(fl_x=20.0, fl_y=21.0, cx=7.5, cy=8.5, w=16, h=16)
    (class_dir / "transforms.json").write_text(json.dumps(meta))
    outputs = parse(class_dir)
    assert float(outputs.cameras.fy[0]) == 21.0 and float(outputs.cameras.cx[0]) == 7.5


# ------------------------------------------------------------------------------- bad input
def test_missing_transforms_explains_how_to_get_poses(tmp_path):
    class_dir = make_mad_class(tmp_path)
    (class_dir / "transforms.json").unlink()
    with pytest.raises(MADFormatError, match=r"transforms.json not found.*posed.*pad-poses"):
        parse(class_dir)


def test_frame_pointing_to_missing_image(tmp_path):
    class_dir = make_mad_class(tmp_path)
    (class_dir / "train" / "good" / "4.png").unlink()
    with pytest.raises(MADFormatError, match=r"frame 4: image .*4.png does not exist"):
        parse(class_dir)


def test_unreadable_image(tmp_path):
    class_dir = make_mad_class(tmp_path)
    (class_dir / "train" / "good" / "2.png").write_bytes(b"not an image")
    with pytest.raises(MADFormatError, match=r"Cannot read image .*2.png"):
        parse(class_dir)


def test_truncated_image(tmp_path):
    class_dir = make_mad_class(tmp_path, size=64)
    path = class_dir / "train" / "good" / "1.png"
    path.write_bytes(path.read_bytes()[:200])
    dataset = MADDataset(parse(class_dir))
    with pytest.raises(MADFormatError, match=r"Cannot read image .*1.png.*truncated"):
        dataset.get_image_float32(1)


def test_mask_size_differs_from_image(tmp_path):
    from PIL import Image

    class_dir = make_mad_class(tmp_path)
    Image.new("L", (5, 5)).save(class_dir / "ground_truth" / "Burrs" / "1_mask.png")
    with pytest.raises(MADFormatError, match=r"1_mask.png is \(5, 5\).*must have the size of their image"):
        parse(class_dir, split="test")


def test_missing_mask(tmp_path):
    class_dir = make_mad_class(tmp_path)
    (class_dir / "ground_truth" / "Burrs" / "0_mask.png").unlink()
    with pytest.raises(MADFormatError, match=r"mask .*0_mask.png .* does not exist"):
        parse(class_dir, split="test")


def test_empty_test_folder(tmp_path):
    class_dir = make_mad_class(tmp_path)
    shutil.rmtree(class_dir / "test")
    (class_dir / "test" / "good").mkdir(parents=True)
    with pytest.raises(MADFormatError, match=r"contains no test images"):
        parse(class_dir, split="test")


def test_missing_test_folder(tmp_path):
    class_dir = make_mad_class(tmp_path)
    shutil.rmtree(class_dir / "test")
    with pytest.raises(MADFormatError, match=r"test not found"):
        parse(class_dir, split="test")


def test_non_4x4_matrix(tmp_path):
    class_dir = make_mad_class(tmp_path)
    meta = json.loads((class_dir / "transforms.json").read_text())
    meta["frames"][3]["transform_matrix"] = meta["frames"][3]["transform_matrix"][:3]
    (class_dir / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(MADFormatError, match=r"frame 3: transform_matrix must be a 4x4 .* got shape \(3, 4\)"):
        parse(class_dir)


def test_not_a_class_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MADFormatError, match=r"empty is not a MAD class folder: expected transforms.json"):
        parse(tmp_path / "empty")


def test_loads_pad_synth_output(tiny_class):
    """The generator's output is a valid MAD class: 210 posed views and labelled test queries with masks."""
    train = parse(tiny_class.parent / "gorilla")
    assert len(train.image_filenames) == 210
    assert float(train.cameras.fx[0]) == pytest.approx(24 / np.tan(0.6911 / 2), rel=1e-4)
    test = MADDataset(parse(tiny_class, split="test"))
    types = test.metadata["defect_types"]
    assert sorted(set(types)) == ["Burrs", "Missing", "Stains", "good"]
    for index in range(len(test)):
        item = test[index]
        assert item["image"].shape == (48, 48, 3)
        assert bool(item["gt_mask"].any()) == (item["defect_type"] != "good")


# ------------------------------------------------------------------------------- image modes
def test_8bit_grey_and_grey_alpha(tmp_path):
    from PIL import Image

    grey = tmp_path / "L.png"
    Image.fromarray(np.array([[0, 100]], dtype=np.uint8)).save(grey)
    assert load_rgb(grey).tolist() == [[[0, 0, 0], [100, 100, 100]]]
    grey_alpha = tmp_path / "LA.png"
    Image.fromarray(np.array([[[100, 255], [100, 0]]], dtype=np.uint8), mode="LA").save(grey_alpha)
    assert Image.open(grey_alpha).mode == "LA"
    assert load_rgb(grey_alpha).tolist() == [[[100, 100, 100], [255, 255, 255]]]  # transparent -> white


def test_palette_with_and_without_transparency(tmp_path):
    from PIL import Image

    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    plain = tmp_path / "P.png"
    image.save(plain)
    assert load_rgb(plain).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    transparent = tmp_path / "P_transparent.png"
    image.save(transparent, transparency=1)
    assert Image.open(transparent).mode == "P"
    assert load_rgb(transparent).tolist() == [[[10, 20, 30], [255, 255, 255]]]


def test_8bit_rgb_and_rgba(tmp_path):
    from PIL import Image

    rgb = tmp_path / "RGB.png"
    Image.fromarray(np.array([[[1, 2, 3], [250, 128, 0]]], dtype=np.uint8)).save(rgb)
    assert load_rgb(rgb).tolist() == [[[1, 2, 3], [250, 128, 0]]]
    rgba = tmp_path / "RGBA.png"
    Image.fromarray(np.array([[[200, 100, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8)).save(rgba)
    # Half-transparent black on white: about half grey.
    assert load_rgb(rgba).tolist() == [[[200, 100, 0], [127, 127, 127]]]


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    """PIL opens 16-bit grey as I;16; convert("RGB") clips every value above 255 to white."""
    from PIL import Image

    path = tmp_path / "grey16.png"
    write_png16(path, np.array([[0, 257 * 100, 30000, 65535]]))
    assert Image.open(path).mode == "I;16"
    assert load_rgb(path)[0, :, 0].tolist() == [0, 100, 117, 255]  # 30000 / 257 = 116.7
    assert (load_rgb(path)[..., 0] == load_rgb(path)[..., 2]).all()


def test_16bit_grey_alpha_rgb_and_rgba_keep_all_bits(tmp_path):
    """PIL keeps only the high byte of 16-bit colour PNGs (1000 -> 3); the reader rounds value / 257 (-> 4)."""
    rgb = tmp_path / "rgb16.png"
    write_png16(rgb, np.array([[[1000, 257 * 200, 65535], [300, 0, 50000]]]))
    assert load_rgb(rgb).tolist() == [[[4, 200, 255], [1, 0, 195]]]
    rgba = tmp_path / "rgba16.png"
    write_png16(rgba, np.array([[[1000, 257 * 200, 0, 65535], [0, 0, 0, 0], [0, 0, 0, 32768]]]))
    assert load_rgb(rgba).tolist() == [[[4, 200, 0], [255, 255, 255], [127, 127, 127]]]
    grey_alpha = tmp_path / "la16.png"
    write_png16(grey_alpha, np.array([[[1000, 65535], [1000, 0]]]))
    assert load_rgb(grey_alpha).tolist() == [[[4, 4, 4], [255, 255, 255]]]


def test_16bit_grey_training_view_through_the_dataset(tmp_path):
    class_dir = make_mad_class(tmp_path, size=4)
    write_png16(class_dir / "train" / "good" / "0.png", np.full((4, 4), 257 * 60))
    image = MADDataset(parse(class_dir)).get_image_float32(0)
    assert torch.allclose(image, torch.full((4, 4, 3), 60 / 255))


def test_unsupported_mode_is_refused_by_name(tmp_path):
    from PIL import Image

    path = tmp_path / "float.tiff"
    Image.fromarray(np.array([[0.5, 0.25]], dtype=np.float32), mode="F").save(path)
    with pytest.raises(MADFormatError, match=r"float.tiff has PIL mode 'F'.*Save it as an 8-bit RGB"):
        load_rgb(path)


# ------------------------------------------------------------------------------- true poses
def _convert_test_images_to_jpeg(class_dir):
    from PIL import Image

    for path in list((class_dir / "test").rglob("*.png")):
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=95)
        path.unlink()


def test_true_poses_match_test_images_of_another_extension(tmp_path):
    class_dir = make_mad_class(tmp_path, test_counts={"good": 2})
    pose = np.arange(16, dtype=np.float64).reshape(4, 4)
    (class_dir / "test_poses.json").write_text(json.dumps({"test/good/0.png": pose.tolist()}))
    poses = read_true_poses(class_dir)
    for name in ("test/good/0.png", "test/good/0.jpg", "./test/good/0.jpg", "test/good/0"):
        np.testing.assert_array_equal(poses.get(name), pose)
        assert name in poses
    assert poses.get("test/good/1.jpg") is None and "test/good/1.png" not in poses


def test_pose_error_is_measured_for_jpeg_queries(tmp_path):
    """Evaluation (the baselines' protocol, like ns-eval) finds the pad-synth poses of a class converted to JPEG."""
    from scipy.spatial.transform import Rotation

    from pad_nerfstudio.bench.evaluate import Detection, evaluate_detector, load_split, read_scores_csv

    class_dir = make_mad_class(tmp_path, test_counts={"good": 2, "Burrs": 1})
    estimate = np.eye(4)
    estimate[:3, 3] = [0.0, 0.0, 4.0]
    tilted = estimate.copy()
    tilted[:3, :3] = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    truth = {"test/good/0.png": estimate, "test/good/1.png": tilted, "test/Burrs/0.png": estimate}
    (class_dir / "test_poses.json").write_text(json.dumps({k: v.tolist() for k, v in truth.items()}))
    _convert_test_images_to_jpeg(class_dir)

    class FixedPose:
        def detect(self, query):
            size = query.shape[:2]
            return Detection(np.zeros((8, 8)), 0.0, np.ones((*size, 3)), torch.from_numpy(estimate[:3]).float())

    metrics = evaluate_detector(FixedPose(), load_split(class_dir, "test"), tmp_path / "report", map_size=8)
    errors = {
        row["image_path"]: row.get("rotation_error_deg") for row in read_scores_csv(tmp_path / "report" / "scores.csv")
    }
    assert errors == pytest.approx({"test/Burrs/0.jpg": 0.0, "test/good/0.jpg": 0.0, "test/good/1.jpg": 30.0}, abs=1e-3)
    assert metrics["pose_within_2deg"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------- the test split before training
def test_training_refuses_a_missing_mask(tmp_path):
    class_dir = make_mad_class(tmp_path)
    (class_dir / "ground_truth" / "Stains" / "7_mask.png").unlink()
    with pytest.raises(MADFormatError, match=r"Stains/7_mask.png for test image .*Stains/7.png does not exist.*Add"):
        parse(class_dir, split="train")


def test_training_refuses_a_mask_of_another_size(tmp_path):
    from PIL import Image

    class_dir = make_mad_class(tmp_path, size=16)
    Image.new("L", (32, 32)).save(class_dir / "ground_truth" / "Burrs" / "1_mask.png")
    with pytest.raises(MADFormatError, match=r"Burrs/1_mask.png is \(32, 32\).*Resize the mask to 16 x 16"):
        parse(class_dir, split="train")


def test_training_refuses_an_empty_or_missing_test_folder(tmp_path):
    class_dir = make_mad_class(tmp_path)
    shutil.rmtree(class_dir / "test")
    with pytest.raises(MADFormatError, match=r"01Gorilla/test not found.*checked before training"):
        parse(class_dir, split="train")
    (class_dir / "test" / "good").mkdir(parents=True)
    with pytest.raises(MADFormatError, match=r"01Gorilla/test contains no test images.*--check-test-split False"):
        parse(class_dir, split="train")
    # Deliberately training without test queries is possible, and the val split never checks them.
    assert len(parse(class_dir, split="train", check_test_split=False).image_filenames) == 12
    assert len(parse(class_dir, split="val").image_filenames) == 4


# ------------------------------------------------------------------------------- queries of another size
def test_test_images_at_twice_the_training_resolution(tmp_path):
    """ns-eval's datamanager on a class whose defective queries are 2x: each query keeps its own size."""
    from PIL import Image

    from pad_nerfstudio.data.datamanager import MADDataManagerConfig

    class_dir = make_mad_class(tmp_path, size=16, test_counts={"good": 2, "Burrs": 2})
    for index in range(2):
        pixels = np.zeros((32, 32, 3), dtype=np.uint8)
        pixels[:, 16:] = 200
        Image.fromarray(pixels).save(class_dir / "test" / "Burrs" / f"{index}.png")
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[5, :] = 255
        Image.fromarray(mask).save(class_dir / "ground_truth" / "Burrs" / f"{index}_mask.png")
    config = MADDataManagerConfig(dataparser=MADDataParserConfig(data=class_dir))
    datamanager = config.setup(device="cpu", test_mode="test")
    queries = datamanager.eval_dataset
    burrs = queries.metadata["defect_types"].index("Burrs")
    good = queries.metadata["defect_types"].index("good")
    item = queries[burrs]
    assert item["image"].shape == (32, 32, 3) and queries[good]["image"].shape == (16, 16, 3)
    assert float(item["image"][0, 0, 0]) == 0.0 and float(item["image"][0, 31, 0]) == pytest.approx(200 / 255)
    assert item["gt_mask"].shape == (32, 32) and item["gt_mask"][5].all() and int(item["gt_mask"].sum()) == 32
    # Intrinsics scaled from the training views': twice the focal length and principal point.
    train_fx = float(datamanager.train_dataset.cameras.fx[0])
    assert float(queries.cameras.fx[burrs]) == pytest.approx(2 * train_fx) and float(queries.cameras.cx[burrs]) == 16
    assert float(queries.cameras.fx[good]) == pytest.approx(train_fx)


# ------------------------------------------------------------------------------- non-rigid poses
def test_scaled_or_sheared_pose_is_orthonormalised_with_a_warning(tmp_path):
    class_dir = make_mad_class(tmp_path)
    meta = json.loads((class_dir / "transforms.json").read_text())
    pose = np.array(meta["frames"][5]["transform_matrix"])
    distorted = pose.copy()
    distorted[:3, :3] = pose[:3, :3] @ np.diag([1.0, 1.0, 1.5])  # z axis stretched
    distorted[:3, 1] += 0.05 * pose[:3, 0]  # and a slight shear
    meta["frames"][5]["transform_matrix"] = distorted.tolist()
    (class_dir / "transforms.json").write_text(json.dumps(meta))
    with pytest.warns(
        UserWarning, match=r"frame 5 \(train/good/5.png\): transform_matrix is not rigid.*orthonormalised"
    ):
        outputs = parse(class_dir)
    rotation = outputs.cameras.camera_to_worlds[5, :, :3].double().numpy()
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(rotation, pose[:3, :3], atol=0.05)  # the nearest rotation: close to the original
    np.testing.assert_allclose(outputs.cameras.camera_to_worlds[5, :, 3].numpy(), pose[:3, 3], atol=1e-6)


def test_mirrored_pose_is_refused(tmp_path):
    class_dir = make_mad_class(tmp_path)
    meta = json.loads((class_dir / "transforms.json").read_text())
    meta["frames"][2]["transform_matrix"][0][0] *= -1
    meta["frames"][2]["transform_matrix"][1][0] *= -1
    meta["frames"][2]["transform_matrix"][2][0] *= -1
    (class_dir / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(MADFormatError, match=r"frame 2 \(train/good/2.png\): transform_matrix is not a camera pose"):
        parse(class_dir)
