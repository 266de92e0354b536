"""The rendering-error model: cues from a reference rendering, and the discount it gives the anomaly map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pad_nerfstudio.anomaly.anomaly_map import AnomalyScorerConfig, gaussian_blur
from pad_nerfstudio.anomaly.rendering_error import SILHOUETTE_BINS, RenderingErrorModel, rendering_cues

SIZE = 112


def disc_scene(centre: tuple[float, float], radius: float = 30.0, soft: float = 0.0):
    """A grey disc on white with a darker band across it (a colour edge), its depth and opacity; ``soft`` blurs the
    outline and the band the way a radiance field renders edges a little wrong."""
    rows, columns = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    inside = ((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2).astype(np.float32)
    band = (np.abs(rows - centre[0]) < 4).astype(np.float32)
    shade = 0.55 - 0.25 * band
    alpha, shade = torch.from_numpy(inside), torch.from_numpy(shade)
    if soft:
        alpha = gaussian_blur(alpha[None], soft)[0]
        shade = gaussian_blur(shade[None], soft)[0]
    rgb = alpha[..., None] * shade[..., None] * torch.tensor([1.0, 0.9, 0.8]) + (1 - alpha[..., None])
    return rgb, torch.full((SIZE, SIZE), 4.0) * (alpha > 0.5), alpha


@pytest.fixture(scope="module")
def scorer():
    return AnomalyScorerConfig(map_size=SIZE).setup()


def test_cues_bin_the_outline_and_the_interior():
    rgb, depth, alpha = disc_scene((56.0, 56.0))
    cues = rendering_cues(rgb, depth, alpha, SIZE)
    interior, outline_inside = len(SILHOUETTE_BINS), int(np.digitize(0.5, SILHOUETTE_BINS))
    assert cues.silhouette[56, 40] == interior and cues.silhouette[0, 0] == 0
    assert cues.silhouette[56, 56 + 29] == outline_inside and cues.silhouette[56, 56 + 32] == outline_inside - 1
    # the band's edges are colour edges, its middle and the flat grey are not; a flat-depth disc has no depth edge
    assert cues.colour_edge[56 - 4, 50] > 10 * cues.colour_edge[56 + 15, 50] + 1e-3
    assert float(np.abs(cues.depth_edge).max()) == 0.0


def test_normalisation_lowers_rendering_error_but_not_a_planted_defect(scorer):
    def unsmoothed(query, reference):
        return scorer.unsmoothed(query.permute(2, 0, 1)[None], reference.permute(2, 0, 1)[None])[0].numpy()

    # Calibration: sharp "training photos" against soft "renderings" of the same views.
    maps, cues = [], []
    for centre in [(50.0, 50.0), (60.0, 55.0), (55.0, 62.0), (48.0, 58.0)]:
        photo, _, _ = disc_scene(centre)
        rendering, depth, alpha = disc_scene(centre, soft=1.5)
        maps.append(unsmoothed(photo, rendering))
        cues.append(rendering_cues(rendering, depth, alpha, SIZE))
    model = RenderingErrorModel.fit(maps, cues)
    assert model.summary()["outline inside"] > 1.5  # the outline renders worse than the interior

    # A new view: the good query differs from its reference only by rendering error...
    good, _, _ = disc_scene((57.0, 53.0))
    reference, depth, alpha = disc_scene((57.0, 53.0), soft=1.5)
    discount = model.discount(rendering_cues(reference, depth, alpha, SIZE))[None]
    # ... the defective one also has a small dark stain on the flat grey.
    defective = good.clone()
    defective[70:75, 45:50] = torch.tensor([0.25, 0.18, 0.12])

    def score(query, with_discount):
        return float(scorer(query.permute(2, 0, 1)[None], reference.permute(2, 0, 1)[None], with_discount)[1][0])

    assert score(good, discount) < 0.6 * score(good, None)
    assert score(defective, discount) == pytest.approx(score(defective, None), rel=0.02)
    assert score(defective, discount) > 2.0 * score(good, discount)
    assert torch.all(discount >= 1.0)
