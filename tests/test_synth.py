"""Tests of the procedural MAD-format generator (pad_nerfstudio.synth): layout, determinism, mask accuracy,
camera geometry and the safety of class-folder writes. Tiny images keep the whole file fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pad_nerfstudio.synth import CLASS_NAMES, DEFECT_TYPES, generate_dataset, render_clean_view, resolve_class_names
from pad_nerfstudio.synth import generate as generate_module
from pad_nerfstudio.synth.cameras import look_at
from pad_nerfstudio.synth.cli import main as cli_main
from pad_nerfstudio.synth.raycast import Scene, render

SIZE = 48
N_GOOD = 2
N_DEFECT = 3
CLASS = "01Gorilla"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(
        out, classes=["gorilla"], size=SIZE, n_test_good=N_GOOD, n_test_defect=N_DEFECT, workers=1, progress=False
    )
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = (
            padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
            | padded[:-2, :-2] | padded[:-2, 2:] | padded[2:, :-2] | padded[2:, 2:]
        )  # fmt: skip
    return mask


def test_layout_matches_mad_sim(dataset: Path):
    root = dataset / CLASS
    assert sorted(p.name for p in dataset.iterdir()) == [CLASS, "attributes.json"]
    transforms = json.loads((root / "transforms.json").read_text())
    assert transforms["camera_angle_x"] == pytest.approx(0.6911)
    frames = transforms["frames"]
    assert len(frames) == 210
    assert [frame["file_path"] for frame in frames] == [f"train/good/{i}.png" for i in range(210)]
    for frame in frames:
        assert np.asarray(frame["transform_matrix"]).shape == (4, 4)
        assert (root / frame["file_path"]).is_file()
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == sorted(f"{i}.png" for i in range(210))

    assert sorted(p.name for p in (root / "test").iterdir()) == sorted([*DEFECT_TYPES, "good"])
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
    test_poses = json.loads((root / "test_poses.json").read_text())
    expected_tests = [f"test/good/{i}.png" for i in range(N_GOOD)]
    expected_tests += [f"test/{kind}/{i}.png" for kind in DEFECT_TYPES for i in range(N_DEFECT)]
    assert sorted(test_poses) == sorted(expected_tests)
    for relative in expected_tests:
        image = Image.open(root / relative)
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        assert np.asarray(test_poses[relative]).shape == (4, 4)
    for kind in DEFECT_TYPES:
        assert sorted(p.name for p in (root / "test" / kind).iterdir()) == [f"{i}.png" for i in range(N_DEFECT)]
        masks = sorted(p.name for p in (root / "ground_truth" / kind).iterdir())
        assert masks == [f"{i}_mask.png" for i in range(N_DEFECT)]
        for name in masks:
            mask = Image.open(root / "ground_truth" / kind / name)
            assert mask.mode == "L" and mask.size == (SIZE, SIZE)
            assert set(np.unique(np.asarray(mask))) <= {0, 255}

    attributes = json.loads((dataset / "attributes.json").read_text())[CLASS]
    for key in ("shape_complexity", "colour_contrast", "num_bricks", "silhouette_complexity", "luminance_std"):
        assert key in attributes
    assert attributes["num_bricks"] >= 5


def test_training_poses_look_at_image_centre(dataset: Path):
    transforms = json.loads((dataset / CLASS / "transforms.json").read_text())
    focal = 0.5 * SIZE / np.tan(0.5 * transforms["camera_angle_x"])
    elevations = []
    for frame in transforms["frames"]:
        c2w = np.asarray(frame["transform_matrix"])
        # OpenGL camera: looks down -z, +y up; pixel row 0 at the top.
        for point, expect_up in ((np.zeros(3), None), (np.array([0.0, 0.0, 0.3]), True)):
            camera = c2w[:3, :3].T @ (point - c2w[:3, 3])
            assert camera[2] < 0  # in front of the camera
            u = 0.5 * SIZE + focal * camera[0] / -camera[2]
            v = 0.5 * SIZE - focal * camera[1] / -camera[2]
            if expect_up is None:
                assert u == pytest.approx(SIZE / 2, abs=1e-6) and v == pytest.approx(SIZE / 2, abs=1e-6)
            else:
                assert v < SIZE / 2  # world up (+z) appears above the centre
        elevations.append(np.degrees(np.arcsin(c2w[2, 3] / np.linalg.norm(c2w[:3, 3]))))
    assert np.unique(np.round(elevations, 3)) == pytest.approx(np.linspace(-85, 85, 14), abs=1e-3)


def test_test_images_are_defect_free_renders_or_masked_defects(dataset: Path):
    root = dataset / CLASS
    test_poses = json.loads((root / "test_poses.json").read_text())
    for index in range(N_GOOD):
        relative = f"test/good/{index}.png"
        image = np.asarray(Image.open(root / relative))
        assert np.array_equal(image, render_clean_view(CLASS, 0, np.asarray(test_poses[relative]), SIZE))
        # the whole object stays in frame: the border is background
        assert (image[[0, -1]] == 255).all() and (image[:, [0, -1]] == 255).all()
    for kind in DEFECT_TYPES:
        for index in range(N_DEFECT):
            relative = f"test/{kind}/{index}.png"
            image = np.asarray(Image.open(root / relative)).astype(int)
            mask = np.asarray(Image.open(root / "ground_truth" / kind / f"{index}_mask.png")) > 0
            reference = render_clean_view(CLASS, 0, np.asarray(test_poses[relative]), SIZE).astype(int)
            changed = np.abs(image - reference).max(axis=-1) > 40
            assert mask.sum() >= 4, relative
            assert changed.any(), relative
            assert not (changed & ~_dilate(mask)).any(), f"{relative}: change outside the mask"
            assert (changed & mask).sum() >= 0.3 * min(mask.sum(), changed.sum()), f"{relative}: mask off target"


def test_generation_is_deterministic_across_runs_and_workers(dataset: Path, tmp_path: Path):
    generate_dataset(
        tmp_path, classes="1", size=SIZE, n_test_good=N_GOOD, n_test_defect=N_DEFECT, workers=2, progress=False
    )
    assert _files(tmp_path) == _files(dataset)


def test_raycast_box_silhouette_matches_pinhole_projection():
    scene = Scene(
        box_lo=np.array([[-0.5, -0.5, -0.5]]),
        box_hi=np.array([[0.5, 0.5, 0.5]]),
        box_colour=np.array([[0.8, 0.1, 0.1]]),
        box_part=np.array([0]),
        cylinder_xy=np.zeros((0, 2)),
        cylinder_z=np.zeros((0, 2)),
        cylinder_radius=np.zeros(0),
        cylinder_colour=np.zeros((0, 3)),
        cylinder_part=np.zeros(0, dtype=np.int64),
    )
    size = 64
    image = render(scene, look_at(np.array([4.0, 0.0, 0.0])), size, supersample=4)
    covered = (image < 0.99).any(axis=-1)
    focal = 0.5 * size / np.tan(0.5 * 0.6911)
    half_width = focal * 0.5 / 3.5  # front face at depth 3.5
    rows, columns = np.flatnonzero(covered.any(1)), np.flatnonzero(covered.any(0))
    assert columns[0] == pytest.approx(size / 2 - half_width, abs=1) and columns[-1] + 1 == pytest.approx(
        size / 2 + half_width, abs=1
    )
    assert rows[0] == pytest.approx(size / 2 - half_width, abs=1)


def test_resolve_class_names():
    assert resolve_class_names(3) == list(CLASS_NAMES[:3])
    assert resolve_class_names("2") == list(CLASS_NAMES[:2])
    assert resolve_class_names("gorilla,16cat,PIG") == ["01Gorilla", "16Cat", "11Pig"]
    with pytest.raises(ValueError, match="unknown class"):
        resolve_class_names("dragon")


def test_refuses_non_empty_class_folder_without_force(tmp_path: Path, capsys):
    existing = tmp_path / CLASS
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match=CLASS):
        generate_dataset(tmp_path, classes=1, size=32, n_test_good=0, n_test_defect=0, workers=1, progress=False)
    assert cli_main(["--out", str(tmp_path), "--classes", "1", "--size", "32"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (existing / "keep.txt").exists()

    generate_dataset(
        tmp_path, classes=1, size=32, n_test_good=0, n_test_defect=1, force=True, workers=1, progress=False
    )
    assert not (existing / "keep.txt").exists()
    assert (existing / "transforms.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLASS, "attributes.json"]


def test_failure_mid_class_leaves_no_class_folder(tmp_path: Path, monkeypatch):
    real_write = generate_module._write_png
    calls = []

    def failing_write(path, pixels):
        calls.append(path)
        if len(calls) > 20:
            raise RuntimeError("simulated crash")
        real_write(path, pixels)

    monkeypatch.setattr(generate_module, "_write_png", failing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_dataset(tmp_path, classes=1, size=32, n_test_good=0, n_test_defect=0, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []

    # A failed --force run must not destroy the class it was going to replace.
    (tmp_path / CLASS).mkdir()
    (tmp_path / CLASS / "keep.txt").write_text("previous run")
    calls.clear()
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_dataset(
            tmp_path, classes=1, size=32, n_test_good=0, n_test_defect=0, force=True, workers=1, progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLASS]
    assert (tmp_path / CLASS / "keep.txt").exists()
