"""Tests of the procedural MAD-format generator (pad_nerfstudio.synth): layout, determinism, mask accuracy,
camera geometry, the safety of class-folder writes, the capture styles (each effect on its own, masks that
ignore shadows, the CLI switches) and hand-held captures (layout, backdrop, true masks and poses). Tiny images keep
the whole file fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pad_nerfstudio.synth import (
    CLASS_NAMES,
    DEFECT_TYPES,
    CaptureStyle,
    generate_dataset,
    render_clean_view,
    resolve_capture_style,
    resolve_class_names,
)
from pad_nerfstudio.synth import cli as cli_module
from pad_nerfstudio.synth import generate as generate_module
from pad_nerfstudio.synth.backdrop import ground_height, object_centre, object_corners
from pad_nerfstudio.synth.cameras import in_frame, look_at, random_handheld_pose, random_test_pose, spherical_position
from pad_nerfstudio.synth.cli import main as cli_main
from pad_nerfstudio.synth.defects import render_defect
from pad_nerfstudio.synth.difficulty import HARD, STANDARD
from pad_nerfstudio.synth.generate import InvalidOptionError, class_backdrop, handheld_poses
from pad_nerfstudio.synth.objects import build_brick_animal
from pad_nerfstudio.synth.raycast import (
    LAMBERTIAN,
    LIGHTS,
    Scene,
    Shading,
    render,
    resolve,
    shade,
    shadow_maps,
    to_uint8,
    trace,
)

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


def test_never_overwrites_an_attributes_json_it_did_not_write(tmp_path: Path, capsys):
    foreign = tmp_path / "attributes.json"
    foreign.write_text('{"experiment": "my notes"}')
    assert cli_main(["--out", str(tmp_path), "--classes", "1", "--size", "32", "--workers", "1"]) == 2
    error = capsys.readouterr().err
    assert error.strip() == (
        f"pad-synth: error: {foreign} exists and was not written by pad-synth; pass --force to replace it or choose "
        "another --out"
    )
    assert foreign.read_text() == '{"experiment": "my notes"}' and sorted(p.name for p in tmp_path.iterdir()) == [
        "attributes.json"
    ]
    generate_dataset(
        tmp_path, classes=1, size=32, n_test_good=0, n_test_defect=0, force=True, workers=1, progress=False
    )
    assert list(json.loads(foreign.read_text())) == [CLASS]  # replaced with --force


def test_out_that_is_a_file_is_one_line(tmp_path: Path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("keep")
    assert cli_main(["--out", str(path), "--classes", "1", "--size", "32"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pad-synth: error: --out {path}: {path} is a file, not a folder; choose a folder (it is created if missing)"
    ]
    assert cli_main(["--out", str(path / "sub"), "--classes", "1", "--size", "32"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert path.read_text() == "keep"


def test_failure_mid_class_leaves_no_class_folder(tmp_path: Path, monkeypatch):
    real_write = generate_module._write_png
    calls = []

    def failing_write(path, pixels, *options):
        calls.append(path)
        if len(calls) > 20:
            raise RuntimeError("simulated crash")
        real_write(path, pixels, *options)

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


# Capture styles.

REAL = CaptureStyle.real()


@pytest.fixture(scope="module")
def gorilla():
    return build_brick_animal(CLASS, 0)


@pytest.fixture(scope="module")
def plain_view(gorilla) -> np.ndarray:
    """A Lambertian render, 64 px, from a pose that sees both lights' sides and several self-shadows."""
    return render(gorilla.scene(), look_at(spherical_position(200.0, 30.0)), 64, supersample=2)


def _boxes(lo, hi) -> Scene:
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return Scene(
        box_lo=lo,
        box_hi=hi,
        box_colour=np.full((len(lo), 3), 0.6),
        box_part=np.arange(len(lo)),
        cylinder_xy=np.zeros((0, 2)),
        cylinder_z=np.zeros((0, 2)),
        cylinder_radius=np.zeros(0),
        cylinder_colour=np.zeros((0, 3)),
        cylinder_part=np.zeros(0, dtype=np.int64),
    )


def test_gloss_adds_small_highlights_and_never_darkens(gorilla, plain_view):
    glossy = render(
        gorilla.scene(), look_at(spherical_position(200.0, 30.0)), 64, supersample=2, shading=Shading(gloss=True)
    )
    gain = (glossy - plain_view).max(axis=-1)
    on_object = (plain_view < 0.999).any(axis=-1)
    assert (glossy >= plain_view - 1e-12).all()
    assert gain.max() > 0.1  # visible
    assert 0.0 < (gain[on_object] > 0.05).mean() < 0.3  # but small
    # White highlights: every channel of a surface point rises by the same amount where nothing clips.
    hits = trace(gorilla.scene(), look_at(spherical_position(200.0, 30.0)), 64, 2)
    highlight = shade(hits, gloss=True) - shade(hits)
    unclipped = shade(hits, gloss=True).max(axis=-1) < 1.0
    assert (highlight[unclipped].max(axis=-1) > 0.05).sum() > 50
    assert np.allclose(highlight[unclipped].min(axis=-1), highlight[unclipped].max(axis=-1), atol=1e-12)
    assert np.array_equal(glossy[~on_object], plain_view[~on_object])


def test_shadows_only_darken_the_object(gorilla, plain_view):
    c2w = look_at(spherical_position(200.0, 30.0))
    shadowed = render(gorilla.scene(), c2w, 64, supersample=2, shading=Shading(shadows=True))
    loss = (plain_view - shadowed).max(axis=-1)
    assert (shadowed <= plain_view + 1e-12).all()
    assert loss.max() > 0.2 and (loss > 0.05).sum() >= 20
    hits = trace(gorilla.scene(), c2w, 64, 2)
    background = resolve(hits.hit, 64, 2) == 0
    assert np.array_equal(shadowed[background], plain_view[background])


def test_shadow_falls_where_the_light_projects_an_occluder():
    # A floor slab and a small cube hovering above it; the key light comes from above, the fill light from below.
    scene = _boxes([[-1.0, -1.0, -0.1], [-0.1, -0.1, 0.4]], [[1.0, 1.0, 0.0], [0.1, 0.1, 0.6]])
    key = LIGHTS[0][0]
    cube_centre = np.array([0.0, 0.0, 0.5])
    shadow_centre = cube_centre - (0.5 / key[2]) * key  # along the light down to the floor (z = 0)
    floor = np.array([shadow_centre, [0.0, 0.0, 0.0], [0.7, 0.7, 0.0], shadow_centre + [0.06, -0.06, 0.0]])
    lit = shadow_maps(scene).lit(floor, np.tile([0.0, 0.0, 1.0], (len(floor), 1)))
    assert lit[:, 0] == pytest.approx([0.0, 1.0, 1.0, 0.0])
    assert (lit[:, 1] == 0.0).all()  # the floor's top faces away from the fill light
    # The cube's own top is lit by the key light: no self-shadowing ("acne") on a lit face.
    top = np.array([[0.05, -0.03, 0.6], [-0.08, 0.08, 0.6]])
    assert shadow_maps(scene).lit(top, np.tile([0.0, 0.0, 1.0], (2, 1)))[:, 0] == pytest.approx([1.0, 1.0])


def test_defect_shadow_maps_equal_retraced_ones(gorilla):
    base = shadow_maps(gorilla.scene())
    removed = int(np.argmax([brick.size_x * brick.size_y for brick in gorilla.bricks]))
    fast = base.without_part(gorilla.scene(removed=removed), removed)
    traced = shadow_maps(gorilla.scene(removed=removed))
    assert not np.array_equal(fast.depth, base.depth)
    assert np.array_equal(fast.depth, traced.depth) and np.array_equal(fast.part, traced.part)

    lo, hi = np.array([[0.0, 0.0, 0.8], [0.3, -0.2, 0.5]]), np.array([[0.1, 0.1, 0.95], [0.4, -0.1, 0.6]])
    fast = base.with_boxes(lo, hi, np.full(2, -2))
    traced = shadow_maps(gorilla.scene().with_boxes(lo, hi, np.zeros((2, 3)), np.full(2, -2)))
    assert np.array_equal(fast.depth, traced.depth) and np.array_equal(fast.part, traced.part)


def test_exposure_scales_the_whole_frame_and_clips(plain_view):
    style = CaptureStyle(exposure=0.08)
    clean = to_uint8(plain_view).astype(float)
    seen_dark = seen_bright = False
    for seed in range(12):
        gains = style.gains(np.random.default_rng(seed))
        assert gains[0] == gains[1] == gains[2] and 0.92 <= gains[0] <= 1.08
        image = to_uint8(style.apply_photometric(plain_view, np.random.default_rng(seed))).astype(float)
        unclipped = (plain_view.max(axis=-1) * gains[0] < 0.99) & (clean.min(axis=-1) > 40)
        # The ratio to the clean image is the gain, up to the rounding of both to 8 bits.
        assert np.abs(image - clean * gains[0])[unclipped].max() <= 0.5 * gains[0] + 0.5 + 1e-9
        background = image[0, 0]
        if gains[0] < 0.97:
            seen_dark = True
            assert (background < 250).all() and background == pytest.approx(255 * gains, abs=1)  # light grey
        if gains[0] > 1.0:
            seen_bright = True
            assert (background == 255).all()
    assert seen_dark and seen_bright


def test_white_balance_gains_per_channel(plain_view):
    style = CaptureStyle(white_balance=0.03)
    gains = style.gains(np.random.default_rng(3))
    assert ((0.97 <= gains) & (gains <= 1.03)).all() and np.ptp(gains) > 0.005
    image = style.apply_photometric(plain_view, np.random.default_rng(3))
    assert np.allclose(image, np.minimum(plain_view * gains, 1.0))


def test_noise_has_the_configured_sigma(plain_view):
    style = CaptureStyle(noise_sigma=1.5 / 255.0)
    clean = to_uint8(plain_view).astype(float)
    noisy = to_uint8(style.apply_photometric(plain_view, np.random.default_rng(0))).astype(float)
    unclipped = (clean > 15) & (clean < 240)
    assert unclipped.sum() > 600
    assert np.std((noisy - clean)[unclipped]) == pytest.approx(1.5, rel=0.2)


def test_blur_lowers_high_frequencies(plain_view):
    blurred = CaptureStyle(blur_sigma=0.5).apply_photometric(plain_view, np.random.default_rng(0))

    def high_frequency_energy(image):
        return (np.diff(image, axis=0) ** 2).sum() + (np.diff(image, axis=1) ** 2).sum()

    assert high_frequency_energy(blurred) < 0.8 * high_frequency_energy(plain_view)
    assert blurred.mean() == pytest.approx(plain_view.mean(), abs=2e-3)


def test_switching_an_effect_off_keeps_the_other_draws(plain_view):
    assert np.array_equal(REAL.gains(np.random.default_rng(5)), REAL.without(["noise"]).gains(np.random.default_rng(5)))
    assert CaptureStyle.clean().apply_photometric(plain_view, np.random.default_rng(0)) is plain_view
    assert REAL.without(["gloss", "shadows", "exposure", "white-balance", "blur", "noise"]).is_clean


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_masks_do_not_depend_on_capture_style(gorilla, kind):
    """Same pose and defect draw: the mask is the same with gloss and shadows as without, so a shadow that a burr
    casts, or that a removed brick no longer casts, never enters it (though it changes the image)."""
    # Seeds 40 and 50 remove bricks that shadowed other visible bricks.
    seeds = [0, 1, 2, 3, 40, 50] if kind == "Missing" else [0, 1, 2, 3]
    rendered = shadow_only = 0
    for seed in seeds:
        c2w = random_test_pose(np.random.default_rng(seed))
        plain = render_defect(kind, gorilla, c2w, 64, np.random.default_rng(100 + seed), supersample=2)
        real = render_defect(kind, gorilla, c2w, 64, np.random.default_rng(100 + seed), 2, shading=REAL.shading)
        assert (plain is None) == (real is None)
        if plain is None:
            continue
        rendered += 1
        assert np.array_equal(plain.mask, real.mask), seed
        assert not np.array_equal(plain.image, real.image)
        changed_by_shadow = (np.abs(real.image - real.reference).max(axis=-1) > 0.02) & (
            np.abs(plain.image - plain.reference).max(axis=-1) == 0.0
        )
        shadow_only += int((changed_by_shadow & ~real.mask).sum())
    assert rendered >= 3
    if kind != "Stains":  # the check above was not vacuous: shadows did change pixels outside the masks
        assert shadow_only > 0


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth-real")
    generate_dataset(
        out,
        classes=["gorilla"],
        size=SIZE,
        n_test_good=N_GOOD,
        n_test_defect=N_DEFECT,
        workers=1,
        progress=False,
        style="real",
    )
    return out


def test_real_style_keeps_poses_masks_and_records_the_style(dataset: Path, real_dataset: Path):
    clean_root, real_root = dataset / CLASS, real_dataset / CLASS
    clean_poses = json.loads((clean_root / "test_poses.json").read_text())
    real_poses = json.loads((real_root / "test_poses.json").read_text())
    assert (real_root / "transforms.json").read_bytes() == (clean_root / "transforms.json").read_bytes()
    same_draws = [name for name in clean_poses if clean_poses[name] == real_poses[name]]
    assert all(f"test/good/{index}.png" in same_draws for index in range(N_GOOD))
    assert sum("good" not in name for name in same_draws) >= N_DEFECT * len(DEFECT_TYPES) - 2
    for name in same_draws:
        if "good" in name:
            continue
        mask = Path("ground_truth") / name.split("/")[1] / name.split("/")[2].replace(".png", "_mask.png")
        assert (real_root / mask).read_bytes() == (clean_root / mask).read_bytes(), mask

    for name in ("train/good/0.png", "train/good/117.png", "test/good/0.png"):
        clean_image = np.asarray(Image.open(clean_root / name)).astype(int)
        real_image = np.asarray(Image.open(real_root / name)).astype(int)
        assert np.abs(real_image - clean_image).max() > 10
        assert np.abs(real_image - clean_image).mean() < 20
    # Good test images are the noise-free reference plus only the per-image effects.
    good = np.asarray(Image.open(real_root / "test/good/0.png")).astype(int)
    reference = render_clean_view(CLASS, 0, np.asarray(real_poses["test/good/0.png"]), SIZE, style="real")
    assert not np.array_equal(reference, render_clean_view(CLASS, 0, np.asarray(real_poses["test/good/0.png"]), SIZE))
    assert np.abs(good - reference).mean() < 12

    attributes = json.loads((real_dataset / "attributes.json").read_text())[CLASS]
    assert attributes["capture"] == REAL.as_dict()
    assert "capture" not in json.loads((dataset / "attributes.json").read_text())[CLASS]


def test_real_style_is_deterministic_across_runs_and_workers(real_dataset: Path, tmp_path: Path):
    generate_dataset(
        tmp_path,
        classes=["gorilla"],
        size=SIZE,
        n_test_good=N_GOOD,
        n_test_defect=N_DEFECT,
        workers=2,
        progress=False,
        style=REAL,
    )
    assert _files(tmp_path) == _files(real_dataset)


def test_clean_style_writes_the_plain_lambertian_render(dataset: Path, gorilla):
    poses = json.loads((dataset / CLASS / "transforms.json").read_text())["frames"]
    for index in (0, 100):
        written = np.asarray(Image.open(dataset / CLASS / f"train/good/{index}.png"))
        expected = to_uint8(
            render(gorilla.scene(), np.asarray(poses[index]["transform_matrix"]), SIZE, 3, shading=LAMBERTIAN)
        )
        assert np.array_equal(written, expected)
    assert resolve_capture_style() == CaptureStyle.clean() == CaptureStyle()


def test_capture_style_options(tmp_path: Path, monkeypatch, capsys):
    style = resolve_capture_style("real", "shadows, White_Balance")
    assert not style.shadows and style.white_balance == 0.0 and style.gloss and style.noise_sigma == REAL.noise_sigma
    assert resolve_capture_style("clean", "noise").is_clean
    with pytest.raises(InvalidOptionError, match="'sparkle'.*gloss, shadows, exposure, white-balance, blur, noise"):
        resolve_capture_style("real", "gloss,sparkle")
    with pytest.raises(InvalidOptionError, match="--style"):
        resolve_capture_style("fancy")

    assert cli_main(["--out", str(tmp_path), "--style", "real", "--without", "gloss,sparkle"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pad-synth: error: --without: unknown capture effect 'sparkle'") and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []

    received = {}
    monkeypatch.setattr(cli_module, "generate_dataset", lambda out, **options: received.update(options))
    assert cli_main(["--out", str(tmp_path), "--style", "real", "--without", "blur,noise"]) == 0
    assert received["style"] == REAL.without(["blur", "noise"])
    assert cli_main(["--out", str(tmp_path)]) == 0
    assert received["style"].is_clean


# Hand-held captures (--capture handheld).

HANDHELD_SIZE = 64
HANDHELD_VIEWS = 6
HANDHELD_SUPERSAMPLE = 2


def _generate_handheld(out: Path, workers: int = 1, **options) -> Path:
    settings = dict(n_test_good=N_GOOD, n_test_defect=2, supersample=HANDHELD_SUPERSAMPLE, views=HANDHELD_VIEWS)
    generate_dataset(
        out,
        classes=["gorilla"],
        size=HANDHELD_SIZE,
        workers=workers,
        progress=False,
        capture="handheld",
        **{**settings, **options},
    )
    return out


@pytest.fixture(scope="module")
def handheld_dataset(tmp_path_factory) -> Path:
    return _generate_handheld(tmp_path_factory.mktemp("synth-handheld"))


def _eroded(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    return ~_dilate(~mask, steps)


def test_handheld_layout(handheld_dataset: Path):
    root = handheld_dataset / CLASS
    assert not (root / "transforms.json").exists()  # structure-from-motion must find the poses
    truth = json.loads((root / "truth" / "transforms.json").read_text())
    assert truth["camera_angle_x"] == pytest.approx(0.6911)
    assert [frame["file_path"] for frame in truth["frames"]] == [f"train/good/{i}.png" for i in range(HANDHELD_VIEWS)]
    for index, frame in enumerate(truth["frames"]):
        assert np.asarray(frame["transform_matrix"]).shape == (4, 4)
        image = Image.open(root / frame["file_path"])
        assert image.mode == "RGB" and image.size == (HANDHELD_SIZE, HANDHELD_SIZE)
        mask = Image.open(root / "truth" / "train_masks" / f"{index}.png")
        assert mask.mode == "L" and mask.size == (HANDHELD_SIZE, HANDHELD_SIZE)
        assert set(np.unique(np.asarray(mask))) == {0, 255}
    assert len(list((root / "train" / "good").iterdir())) == HANDHELD_VIEWS
    assert len(list((root / "truth" / "train_masks").iterdir())) == HANDHELD_VIEWS
    test_poses = json.loads((root / "test_poses.json").read_text())
    expected = [f"test/good/{i}.png" for i in range(N_GOOD)] + [
        f"test/{k}/{i}.png" for k in DEFECT_TYPES for i in (0, 1)
    ]
    assert sorted(test_poses) == sorted(expected)
    for kind in DEFECT_TYPES:
        assert sorted(p.name for p in (root / "ground_truth" / kind).iterdir()) == ["0_mask.png", "1_mask.png"]
    attributes = json.loads((handheld_dataset / "attributes.json").read_text())[CLASS]
    assert attributes["capture"] == {"kind": "handheld", "views": HANDHELD_VIEWS}


def test_handheld_is_deterministic_across_runs_and_workers(handheld_dataset: Path, tmp_path: Path):
    assert _files(_generate_handheld(tmp_path, workers=2)) == _files(handheld_dataset)


def test_object_stands_on_the_table(gorilla):
    scene = gorilla.scene()
    backdrop = class_backdrop("gorilla", 0)
    lowest = min(scene.box_lo[:, 2].min(), scene.cylinder_z[:, 0].min())
    assert backdrop.ground_z == ground_height(scene) == lowest
    assert lowest < -0.2  # the object is centred on the origin, so the table is well below it
    # A ray straight down next to the object meets the table; one up and away from it meets the wall or ceiling.
    colours = backdrop.colours(np.array([2.0, 0.0, 1.0]), np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.2]]))
    assert colours.shape == (2, 3) and not np.array_equal(colours[0], colours[1])


def test_backdrop_is_textured_and_the_masks_are_the_object(handheld_dataset: Path, gorilla):
    root = handheld_dataset / CLASS
    frames = json.loads((root / "truth" / "transforms.json").read_text())["frames"]
    for index, frame in enumerate(frames):
        image = np.asarray(Image.open(root / frame["file_path"])).astype(float)
        mask = np.asarray(Image.open(root / "truth" / "train_masks" / f"{index}.png")) == 255
        c2w = np.asarray(frame["transform_matrix"])
        # Exactly the object's coverage of the pixels, from geometry.
        hits = trace(gorilla.scene(), c2w, HANDHELD_SIZE, HANDHELD_SUPERSAMPLE)
        assert np.array_equal(mask, resolve(hits.hit, HANDHELD_SIZE, HANDHELD_SUPERSAMPLE) >= 0.5), index
        # ... which is what a render on white shows, up to the anti-aliased outline.
        on_white = render(gorilla.scene(), c2w, HANDHELD_SIZE, HANDHELD_SUPERSAMPLE)
        covered = (on_white < 0.999).any(axis=-1)
        assert not ((covered ^ mask) & ~(_dilate(mask) & ~_eroded(mask))).any(), index
        assert 0.03 < mask.mean() < 0.6, index  # the object is in the picture, and so is the backdrop
        # The backdrop: not white, textured, never saturated.
        backdrop = image[~_dilate(mask, 2)]
        luminance = backdrop @ np.array([0.2126, 0.7152, 0.0722])
        assert (backdrop.min(axis=-1) < 250).mean() > 0.95, index
        assert luminance.std() > 8.0, index
        assert (backdrop == 255).all(axis=-1).mean() < 0.2, index  # a little ceiling at most
        # Texture at the scale of a few pixels, not only a gradient across the frame.
        grey = image @ np.array([0.2126, 0.7152, 0.0722])
        detail = np.abs(grey[1:-1, 1:-1] - 0.25 * (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]))
        assert np.median(detail[~_dilate(mask, 2)[1:-1, 1:-1]]) > 1.5, index


def test_handheld_test_images_are_references_on_the_table_or_masked_defects(handheld_dataset: Path):
    root = handheld_dataset / CLASS
    test_poses = json.loads((root / "test_poses.json").read_text())
    for relative, pose in test_poses.items():
        image = np.asarray(Image.open(root / relative)).astype(int)
        reference = render_clean_view(
            CLASS, 0, np.asarray(pose), HANDHELD_SIZE, HANDHELD_SUPERSAMPLE, capture="handheld"
        ).astype(int)
        if "/good/" in relative:
            assert np.array_equal(image, reference), relative
            continue
        kind, name = relative.split("/")[1:]
        mask = np.asarray(Image.open(root / "ground_truth" / kind / name.replace(".png", "_mask.png"))) > 0
        changed = np.abs(image - reference).max(axis=-1) > 40
        assert mask.sum() >= 4 and changed.any(), relative
        assert not (changed & ~_dilate(mask)).any(), f"{relative}: change outside the mask"
    assert not np.array_equal(
        render_clean_view(CLASS, 0, np.asarray(test_poses["test/good/0.png"]), HANDHELD_SIZE, 1, capture="handheld"),
        render_clean_view(CLASS, 0, np.asarray(test_poses["test/good/0.png"]), HANDHELD_SIZE, 1),
    )


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_masks_do_not_depend_on_the_backdrop(gorilla, kind):
    """Same pose and defect draw with and without the table and wall behind: the same mask (the backdrop, its
    shadows included, changes only the image)."""
    table = class_backdrop("gorilla", 0)
    scene = gorilla.scene()
    rendered = 0
    for seed in range(4):
        c2w = random_handheld_pose(np.random.default_rng(seed), object_centre(scene), object_corners(scene))
        on_table, on_white = (
            render_defect(
                kind, gorilla, c2w, 64, np.random.default_rng(100 + seed), 2, shading=REAL.shading, backdrop=backdrop,
                floor=table.ground_z,
            )
            for backdrop in (table, None)
        )  # fmt: skip
        assert (on_table is None) == (on_white is None)
        if on_table is None:
            continue
        rendered += 1
        assert np.array_equal(on_table.mask, on_white.mask), seed
        outside = ~_dilate((on_white.reference < 0.999).any(axis=-1) | on_table.mask, 3)
        assert (on_white.reference[outside] == 1.0).all() and (on_table.reference[outside] < 0.97).mean() > 0.9
    assert rendered >= 2


def test_handheld_poses_stay_in_their_ranges(gorilla):
    scene = gorilla.scene()
    centre, corners, ground = object_centre(scene), object_corners(scene), ground_height(scene)
    rng = np.random.default_rng(0)
    poses = {
        "train": handheld_poses("gorilla", 0, 50),
        "test": np.stack([random_handheld_pose(rng, centre, corners) for _ in range(50)]),
    }
    jitter = 0.1 * np.sqrt(3.0)  # the look-at point is within 0.1 of the centre per axis
    for name, stack in poses.items():
        assert len(stack) == 50
        elevations, azimuths = [], []
        for c2w in stack:
            eye, backwards = c2w[:3, 3], c2w[:3, 2]
            elevation = np.degrees(np.arcsin(backwards[2]))  # the optical axis's elevation, unaffected by roll
            along = (eye - centre) @ backwards  # distance to the point of the axis nearest the centre
            assert 12.0 - 1e-9 <= elevation <= 65.0 + 1e-9, name
            assert 3.3 - jitter <= along <= 4.7 + jitter, name
            assert np.linalg.norm(eye - along * backwards - centre) <= jitter + 1e-9, name
            roll = np.degrees(np.arcsin(c2w[2, 0] / np.cos(np.radians(elevation))))
            assert abs(roll) <= 6.0 + 1e-6, name
            assert in_frame(corners, c2w), name
            assert eye[2] > ground + 0.5 and np.linalg.norm(eye[:2]) < 6.0, name  # above the table, inside the wall
            elevations.append(elevation)
            azimuths.append(np.degrees(np.arctan2(backwards[1], backwards[0])) % 360.0)
        gaps = np.diff(np.sort(np.concatenate([azimuths, [min(azimuths) + 360.0]])))
        assert gaps.max() < 45.0 and np.std(elevations) > 8.0, name  # all the way round, at several heights
        rolls = [np.degrees(np.arcsin(c2w[2, 0] / np.cos(np.arcsin(c2w[2, 2])))) for c2w in stack]
        assert np.ptp(rolls) > 6.0, name
    assert np.array_equal(poses["train"], handheld_poses("gorilla", 0, 50))


def test_handheld_real_style_keeps_poses_and_masks(handheld_dataset: Path, tmp_path: Path):
    _generate_handheld(tmp_path, n_test_good=1, n_test_defect=0, style="real")
    clean_root, real_root = handheld_dataset / CLASS, tmp_path / CLASS
    truth = Path("truth") / "transforms.json"
    assert (real_root / truth).read_bytes() == (clean_root / truth).read_bytes()
    for index in range(HANDHELD_VIEWS):
        mask = Path("truth") / "train_masks" / f"{index}.png"
        assert (real_root / mask).read_bytes() == (clean_root / mask).read_bytes()
        image = Path("train") / "good" / f"{index}.png"
        assert (real_root / image).read_bytes() != (clean_root / image).read_bytes()
    attributes = json.loads((tmp_path / "attributes.json").read_text())[CLASS]
    assert attributes["capture"] == {**REAL.as_dict(), "kind": "handheld", "views": HANDHELD_VIEWS}


def test_capture_options(tmp_path: Path, monkeypatch, capsys):
    assert cli_main(["--out", str(tmp_path), "--views", "20"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "pad-synth: error: --views applies to --capture handheld only (the ring grid has 210 views)"
    ]
    with pytest.raises(InvalidOptionError, match="--capture"):
        generate_dataset(tmp_path, classes=1, capture="drone", progress=False)
    with pytest.raises(InvalidOptionError, match="--views"):
        generate_dataset(tmp_path, classes=1, capture="handheld", views=0, progress=False)
    assert list(tmp_path.iterdir()) == []

    received = {}
    monkeypatch.setattr(cli_module, "generate_dataset", lambda out, **options: received.update(options))
    assert cli_main(["--out", str(tmp_path), "--capture", "handheld", "--style", "real"]) == 0
    assert received["capture"] == "handheld" and received["views"] == 50 and received["style"] == REAL
    assert cli_main(["--out", str(tmp_path), "--capture", "handheld", "--views", "12"]) == 0
    assert received["views"] == 12
    assert cli_main(["--out", str(tmp_path)]) == 0
    assert received["capture"] == "ring"


def test_hard_test_poses_roll_further_and_look_off_centre():
    rng = np.random.default_rng(0)
    poses = [HARD.test_pose(rng) for _ in range(300)]
    offsets, rolls = [], []
    for c2w in poses:
        eye, backwards = c2w[:3, 3], c2w[:3, 2]
        along = eye @ backwards  # the point of the optical axis nearest the object centre (the origin)
        offsets.append(np.linalg.norm(eye - along * backwards))
        rolls.append(np.degrees(np.arcsin(c2w[2, 0] / np.cos(np.arcsin(c2w[2, 2])))))
        assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3))
    assert max(offsets) <= 0.05 + 1e-9 and np.mean(offsets) > 0.02  # up to 0.05 off, not all near the centre
    assert max(np.abs(rolls)) <= 5.0 + 1e-6 and max(np.abs(rolls)) > 4.5
    # The standard conditions draw exactly what random_test_pose always drew.
    assert np.array_equal(STANDARD.test_pose(np.random.default_rng(3)), random_test_pose(np.random.default_rng(3)))


def test_hard_difficulty_writes_smaller_defects(tmp_path: Path):
    sizes = {}
    for difficulty in ("standard", "hard"):
        options = dict(size=128, n_test_good=0, n_test_defect=3, supersample=2, workers=1, progress=False)
        generate_dataset(tmp_path / difficulty, classes=["gorilla"], difficulty=difficulty, **options)
        masks = sorted((tmp_path / difficulty / CLASS / "ground_truth").glob("*/*.png"))
        sizes[difficulty] = [int((np.asarray(Image.open(path)) > 0).sum()) for path in masks]
    assert min(sizes["hard"]) >= 20 and min(sizes["standard"]) >= STANDARD.min_mask_pixels(128)
    assert np.median(sizes["hard"]) < 0.7 * np.median(sizes["standard"])
    attributes = json.loads((tmp_path / "hard" / "attributes.json").read_text())[CLASS]
    assert (
        attributes["difficulty"] == "hard"
        and "difficulty" not in json.loads((tmp_path / "standard" / "attributes.json").read_text())[CLASS]
    )
    with pytest.raises(InvalidOptionError, match="--difficulty"):
        generate_dataset(tmp_path / "x", classes=["gorilla"], size=96, difficulty="extreme", progress=False)
