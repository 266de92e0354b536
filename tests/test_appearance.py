"""Appearance of real captures: the robust colour fit, its use in scoring and alignment, and training that learns
the object's canonical colours from images with jittered exposure and white balance."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pad_nerfstudio.field.appearance import (
    PerImageColourTransform,
    apply_colour_transform,
    background_colour,
    fit_colour_transform,
    match_colours,
)

EXPOSED = torch.tensor([[1.08, 0.0, 0.0, 0.0], [0.0, 1.05, 0.0, -0.01], [0.0, 0.0, 0.97, 0.01]])
"""A known exposure / white-balance change: per-channel gains and black-level offsets."""


@pytest.fixture(scope="module")
def rendering() -> torch.Tensor:
    """An exact defect-free pad-synth rendering (object on white), (64, 64, 3) in [0, 1]."""
    from pad_nerfstudio.synth.cameras import look_at, spherical_position
    from pad_nerfstudio.synth.generate import render_clean_view

    pose = look_at(spherical_position(30.0, 25.0))
    return torch.from_numpy(render_clean_view("gorilla", 0, pose, 64, supersample=2)).float() / 255.0


def test_colour_fit_recovers_a_known_transform_of_a_rendering(rendering):
    query = apply_colour_transform(rendering, EXPOSED)
    matched, transform = match_colours(rendering, query)
    # Whites clip in the query: the fit must ignore them and still find the whole transform from the object.
    assert torch.allclose(transform, EXPOSED, atol=0.01), transform
    assert float((matched - query).abs().max()) < 0.01


def test_colour_fit_is_not_moved_by_a_stain(rendering):
    query = apply_colour_transform(rendering, EXPOSED)
    foreground = ((rendering - 1.0).abs().amax(-1) > 0.05).nonzero()
    stain = foreground[: len(foreground) // 12]  # a twelfth of the object turns brown
    query[stain[:, 0], stain[:, 1]] = torch.tensor([0.33, 0.20, 0.09])
    matched, transform = match_colours(rendering, query)
    assert torch.allclose(transform, EXPOSED, atol=0.02), transform
    # The stain stays as different from the matched reference as from the truly exposed rendering.
    truth = apply_colour_transform(rendering, EXPOSED)
    stained = (matched - query).abs().amax(-1)[stain[:, 0], stain[:, 1]]
    expected = (truth - query).abs().amax(-1)[stain[:, 0], stain[:, 1]]
    assert torch.allclose(stained, expected, atol=0.03)


def test_colour_fit_of_identical_images_is_the_identity(rendering):
    _, transform = match_colours(rendering, rendering.clone())
    assert torch.allclose(transform, torch.cat([torch.eye(3), torch.zeros(3, 1)], 1), atol=1e-4)


def test_fit_ignores_saturated_targets_and_defaults_to_identity():
    source = torch.rand(100, 3)
    assert torch.equal(
        fit_colour_transform(source, torch.ones(100, 3)), torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)
    )


def test_background_colour_is_the_border_median():
    image = torch.full((20, 20, 3), 0.92)
    image[5:15, 5:15] = torch.tensor([0.8, 0.1, 0.1])
    image[0, :3] = 0.0  # the odd object pixel on the border
    assert torch.allclose(background_colour(image), torch.full((3,), 0.92))


def test_per_image_transform_starts_at_identity_and_regularises_towards_it():
    transform = PerImageColourTransform(4)
    rgb = torch.rand(10, 3)
    assert torch.equal(transform(rgb, torch.zeros(10, dtype=torch.long)), rgb)
    assert float(transform.regulariser().detach()) == 0.0
    with torch.no_grad():
        transform.offset[1] = 0.1
    assert float(transform.regulariser().detach()) == pytest.approx(3 * 0.01 / 4)
    assert torch.allclose(transform.transform(1)[:, 3], torch.full((3,), 0.1))


# ------------------------------------------------------------------------------------------ scoring a brighter query
@pytest.fixture(scope="module")
def exact_class(tmp_path_factory):
    """A 96 px pad-synth class with every test query's exact defect-free reference (rendered at its true pose)."""
    from pad_nerfstudio.data.mad_dataset import load_rgb
    from pad_nerfstudio.synth.generate import generate_dataset, render_clean_view

    root = tmp_path_factory.mktemp("exact")
    class_dir = generate_dataset(root, classes=["gorilla"], size=96, n_test_good=6, n_test_defect=6, progress=False)[0]
    poses = json.loads((class_dir / "test_poses.json").read_text())
    queries = {}
    for name, pose in sorted(poses.items()):
        query = torch.from_numpy(load_rgb(class_dir / name)).float() / 255.0
        reference = torch.from_numpy(render_clean_view("gorilla", 0, np.array(pose), 96)).float() / 255.0
        queries[name] = (query, reference)
    return queries


def _score(scorer, query, reference) -> float:
    return float(scorer(query.permute(2, 0, 1)[None], reference.permute(2, 0, 1)[None])[1][0])


@pytest.mark.parametrize("colour_fit", [True, False])
def test_brighter_good_query_is_not_anomalous_but_a_stain_still_is(exact_class, colour_fit):
    from pad_nerfstudio.anomaly.anomaly_map import AnomalyScorerConfig
    from pad_nerfstudio.anomaly.report import f1_threshold

    scorer = AnomalyScorerConfig(colour_fit=colour_fit).setup()
    labels = np.array([0 if "/good/" in name else 1 for name in exact_class])
    scores = np.array([_score(scorer, q, r) for q, r in exact_class.values()])
    threshold = f1_threshold(labels, scores)
    assert threshold is not None and scores[labels == 0].max() < threshold  # exact references separate the class

    def brighter(image):  # +10 % exposure, clipped like a camera
        return (image * 1.10).clamp(0.0, 1.0)

    good = [(q, r) for name, (q, r) in exact_class.items() if "/good/" in name]
    before = np.array([_score(scorer, q, r) for q, r in good])
    after = np.array([_score(scorer, brighter(q), r) for q, r in good])
    stains = np.array([_score(scorer, brighter(q), r) for name, (q, r) in exact_class.items() if "/Stains/" in name])
    if colour_fit:
        assert after.max() < threshold, (after, threshold)
        assert np.all(after < 1.5 * before + 0.5), (before, after)  # the exposure change is explained away
        assert np.mean(stains >= threshold) >= 0.8, (stains, threshold)  # the stain is not
    else:  # without the fit the exposure change alone raises every good score several times over
        assert np.all(after > 2.0 * before), (before, after)


# ------------------------------------------------------------------------------------ training on jittered captures
def test_training_on_jittered_exposures_converges_to_the_canonical_colour(tiny_class, tiny_scene, tmp_path):
    """Every training image gets its own exposure and white balance; the field must learn the object's average
    look (the clean render) and the per-image transforms the jitter itself."""
    from conftest import train_briefly

    from pad_nerfstudio.data.datamanager import MADDataManagerConfig
    from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
    from pad_nerfstudio.field.model import OmniposeModelConfig
    from pad_nerfstudio.pipeline import OmniposePipelineConfig

    jittered = shutil.copytree(tiny_class, tmp_path / tiny_class.name)
    frames = json.loads((jittered / "transforms.json").read_text())["frames"]
    rng = np.random.default_rng(0)
    gains = rng.uniform(0.92, 1.08, (len(frames), 1)) * rng.uniform(0.97, 1.03, (len(frames), 3))
    gains /= gains.mean(0)  # the canonical look is the average one
    for frame, gain in zip(frames, gains):
        path = jittered / frame["file_path"]
        pixels = np.asarray(Image.open(path).convert("RGB")) / 255.0
        Image.fromarray(np.clip(pixels * gain * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(path)

    config = OmniposePipelineConfig(
        datamanager=MADDataManagerConfig(dataparser=MADDataParserConfig(data=jittered)),
        model=OmniposeModelConfig(grid_resolutions=(16, 48), occupancy_resolution=32),
        hull_views=32,
    )
    pipeline = config.setup(device="cpu", test_mode="test")
    _, cameras, intrinsics, _ = train_briefly(pipeline, steps=150)
    model = pipeline.model
    clean = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(tiny_class / f["file_path"]).convert("RGB")) / 255.0) for f in frames]
    ).float()
    views = range(0, len(frames), 15)
    # The order of the dataset is the order of transforms.json (mad-data keeps it).
    learned = np.stack([model.appearance.transform(i)[:, :3].diagonal().numpy() for i in range(len(frames))])
    ratio = learned / learned.mean(0)
    # The learned gains follow the true ones (measured: correlation 0.81, a third of the jitter taken up after these
    # 150 brief steps, which give each image only ~700 rays; the presets' 1,000 steps of 4,096 rays give it ~20,000).
    # Without compensation the learned gains would be constant: no correlation at all.
    correlation = np.corrcoef(ratio.ravel(), gains.ravel())[0, 1]
    slope = np.polyfit(gains.ravel() - 1.0, ratio.ravel() - 1.0, 1)[0]
    assert correlation > 0.7 and slope > 0.2, (correlation, slope)

    def colour_errors(trained_model) -> tuple[float, float]:
        """Mean absolute and mean signed colour error of canonical renderings against the clean images."""
        absolute, signed = [], []
        for view in views:
            rendering = trained_model.render_image(cameras.camera_to_worlds[view], intrinsics[view], 48, 48)["rgb"]
            object_pixels = (clean[view] < 0.95).any(-1)
            difference = (rendering - clean[view])[object_pixels]
            absolute.append(float(difference.abs().mean()))
            signed.append(float(difference.mean()))
        return float(np.mean(absolute)), float(np.mean(signed))

    # The canonical colours are the clean ones: the same overall bias and error against the clean images as the same
    # field trained on the clean images themselves (the session's tiny scene, same grids and steps; both are still
    # a little dark after 150 steps).
    absolute, bias = colour_errors(model)
    clean_absolute, clean_bias = colour_errors(tiny_scene.model)
    assert abs(bias - clean_bias) < 0.02, (bias, clean_bias)
    assert absolute < clean_absolute + 0.01, (absolute, clean_absolute)
