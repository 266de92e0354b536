"""Query-vs-reference anomaly maps: zero for identical images, peaked on a pasted defect, tolerant to small shifts."""

import pytest
import torch

from pad_nerfstudio.anomaly.anomaly_map import (
    AnomalyScorer,
    AnomalyScorerConfig,
    foreground_mask,
    gaussian_blur,
    image_scores,
    register_translation,
    shift_offsets,
    shift_tolerant_sqdiff,
    translate,
)
from pad_nerfstudio.anomaly.backbone import load_backbone

PATCH = (slice(120, 140), slice(96, 116))  # rows, columns of the pasted defect, on the object
PLAIN_PAD = dict(align_radius=0, shift_radius=0)  # the released PAD protocol


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


def scorer(backbone, **overrides) -> AnomalyScorer:
    return AnomalyScorer(AnomalyScorerConfig(**overrides), backbone=backbone)


@pytest.fixture(scope="module")
def bricks() -> torch.Tensor:
    """A 224 px stand-in for a MAD rendering: shaded coloured blocks with dark seams on a white background."""
    generator = torch.Generator().manual_seed(0)
    image = torch.ones(1, 3, 224, 224)
    for _ in range(10):
        y, x = torch.randint(60, 140, (2,), generator=generator).tolist()
        h, w = torch.randint(20, 60, (2,), generator=generator).tolist()
        colour = 0.15 + 0.7 * torch.rand(3, 1, 1, generator=generator)
        shading = torch.linspace(0.75, 1.0, h).view(1, h, 1)
        image[0, :, y : y + h, x : x + w] = colour * shading
        image[0, :, y : y + h, x : x + 1] = 0.1
        image[0, :, y : y + 1, x : x + w] = 0.1
    return image


def with_patch(image: torch.Tensor) -> torch.Tensor:
    out = image.clone()
    out[0, :, PATCH[0], PATCH[1]] = torch.tensor([0.9, 0.1, 0.6]).view(3, 1, 1)
    return out


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return torch.roll(image, shifts=(dy, dx), dims=(-2, -1))  # the border is white, so wrapping adds nothing


@pytest.mark.parametrize("overrides", [{}, PLAIN_PAD])
def test_image_against_itself_is_zero(backbone, bricks, overrides):
    maps, scores = scorer(backbone, **overrides)(bricks, bricks)
    assert maps.shape == (1, 224, 224) and scores.shape == (1,)
    assert maps.abs().max() < 1e-6
    assert scores.abs().max() < 1e-6


@pytest.mark.parametrize("overrides", [{}, PLAIN_PAD])
def test_pasted_patch_is_located(backbone, bricks, overrides):
    maps, scores = scorer(backbone, **overrides)(with_patch(bricks), bricks)
    amap = maps[0]
    row, col = divmod(int(amap.argmax()), amap.shape[1])
    assert PATCH[0].start <= row < PATCH[0].stop and PATCH[1].start <= col < PATCH[1].stop
    inside = torch.zeros_like(amap, dtype=torch.bool)
    inside[PATCH] = True
    assert amap[inside].mean() > 5 * amap[~inside].mean()
    assert scores[0] == pytest.approx(float(amap.max()))


def test_local_window_suppresses_a_one_pixel_shift(backbone, bricks):
    query = shifted(bricks, 1, 1)
    _, plain = scorer(backbone, **PLAIN_PAD)(query, bricks)
    _, windowed = scorer(backbone, align_radius=0, shift_radius=2)(query, bricks)
    assert windowed < 0.75 * plain


def test_registration_removes_a_global_shift_but_keeps_the_defect(backbone, bricks):
    default = scorer(backbone)
    _, plain = scorer(backbone, **PLAIN_PAD)(shifted(bricks, 1, -2), bricks)
    _, misaligned_good = default(shifted(bricks, 1, -2), bricks)
    maps, misaligned_bad = default(shifted(with_patch(bricks), 1, -2), bricks)
    assert misaligned_good < 0.1 * plain
    assert misaligned_bad > 5 * misaligned_good
    row, col = divmod(int(maps[0].argmax()), 224)
    assert PATCH[0].start + 1 <= row < PATCH[0].stop + 1 and PATCH[1].start - 2 <= col < PATCH[1].stop - 2


def test_register_translation_finds_sub_pixel_shifts():
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 24, 24), size=(96, 96), mode="bicubic")
    truth = torch.tensor([[0.75, -1.25], [-2.0, 0.5]])
    moved = translate(smooth, truth)
    found = register_translation(moved[..., 8:-8, 8:-8], smooth[..., 8:-8, 8:-8], radius=3)
    torch.testing.assert_close(found, truth, atol=0.02, rtol=0)


def test_shift_tolerant_sqdiff_and_offsets():
    assert shift_offsets(0) == [(0.0, 0.0)]
    assert len(shift_offsets(2)) == 25 and len(shift_offsets(1, 0.5)) == 25
    x = torch.rand(2, 5, 12, 12)
    rolled = torch.roll(x, 1, dims=-1)
    assert shift_tolerant_sqdiff(x, rolled, [(0.0, 0.0)]).min() > 0
    assert shift_tolerant_sqdiff(x, rolled, shift_offsets(1))[..., 1:-1].abs().max() < 1e-6
    half = shift_tolerant_sqdiff(translate(x, torch.full((2, 2), 0.5)), x, shift_offsets(1, 0.5))
    assert half.abs().max() < 1e-6


def test_score_rules():
    maps = torch.zeros(2, 32, 32)
    maps[0, 5, 5] = 1.0  # a single hot pixel
    maps[1, 10:18, 10:18] = 0.5  # a broad blob
    torch.testing.assert_close(image_scores(maps, "max"), torch.tensor([1.0, 0.5]))
    pooled = image_scores(maps, "avgpool-max", pool_size=4)
    torch.testing.assert_close(pooled, torch.tensor([1.0 / 16, 0.5]))  # the hot pixel is diluted, the blob not
    with pytest.raises(ValueError, match="score rule"):
        image_scores(maps, "mean")


def test_scorer_applies_the_configured_score_rule(backbone, bricks):
    query = with_patch(bricks)
    maps, scores = scorer(backbone, score_rule="avgpool-max", pool_size=16)(query, bricks)
    torch.testing.assert_close(scores, image_scores(maps, "avgpool-max", pool_size=16))
    assert scores[0] < maps[0].max()


def test_gaussian_blur_preserves_mass_and_constants():
    maps = torch.zeros(1, 64, 64)
    maps[0, 32, 32] = 1.0
    blurred = gaussian_blur(maps, 4.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    assert blurred[0, 32, 32] == pytest.approx(1 / (2 * torch.pi * 16), rel=0.02)
    torch.testing.assert_close(gaussian_blur(torch.full((1, 8, 8), 3.0), 4.0), torch.full((1, 8, 8), 3.0))


def test_foreground_mask_and_scorer_option(backbone, bricks):
    mask = foreground_mask(bricks, dilation=4)
    assert mask[0, 0, 0] == 0 and mask[0, 130, 100] == 1
    assert mask.sum() > foreground_mask(bricks, dilation=0).sum()
    query = with_patch(bricks)
    query[0, :, 5:12, 5:12] = 0.98  # faint off-white dust in the background, below the tolerance
    maps, _ = scorer(backbone, foreground_only=True)(query, bricks)
    assert maps[0, :20, :20].max() < 1e-6
    row, col = divmod(int(maps[0].argmax()), 224)
    assert PATCH[0].start <= row < PATCH[0].stop and PATCH[1].start <= col < PATCH[1].stop


def test_inputs_of_any_size_and_dtype(backbone, bricks):
    big = torch.nn.functional.interpolate(bricks, size=(400, 400), mode="bilinear")
    model = scorer(backbone, **PLAIN_PAD)
    maps, scores = model(big.repeat(2, 1, 1, 1), big.repeat(2, 1, 1, 1))
    assert maps.shape == (2, 224, 224) and scores.shape == (2,)
    as_uint8 = (bricks * 255).round().to(torch.uint8)
    maps8, _ = model(as_uint8, as_uint8)
    assert maps8.abs().max() < 1e-6
    with pytest.raises(ValueError, match="query images"):
        model(bricks.repeat(2, 1, 1, 1), bricks)
    with pytest.raises(ValueError, match="RGB"):
        model(bricks[:, :1], bricks)
    with pytest.raises(ValueError, match="one weight per layer"):
        scorer(backbone, layer_weights=(1.0, 1.0))


def test_terms_expose_alignment(backbone, bricks):
    terms = scorer(backbone).terms(shifted(bricks, 2, 0), bricks)
    assert {"rgb", "layer0", "layer1", "layer2", "alignment"} <= set(terms)
    torch.testing.assert_close(terms["alignment"], torch.tensor([[-2.0, 0.0]]))
