"""The `nearest-view` baseline: OmniposeAD without the radiance field.

Each query is compared with the training image that pose retrieval ranks nearest, instead of with a rendering
of the field at the refined pose. Everything else is the pipeline's own: the same backbone, the same retrieval
settings (`OmniposePipelineConfig().localisation.retrieval`), the same scorer settings
(`OmniposePipelineConfig().scorer`, including its registration and shift tolerance). The gap between this
baseline and `omnipose-ad` is therefore what the field (novel-view rendering plus pose refinement) contributes.
The retrieved view's pose is the query's pose estimate, so its error shows how far the nearest training view is.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from pad_nerfstudio.anomaly.anomaly_map import AnomalyScorer, AnomalyScorerConfig
from pad_nerfstudio.bench.evaluate import Detection, as_query_tensor
from pad_nerfstudio.pipeline import OmniposePipelineConfig
from pad_nerfstudio.pose.retrieval import PoseRetrieval, RetrievalConfig

__all__ = ["NearestViewDetector"]


class NearestViewDetector:
    """Score queries against their retrieved nearest training view.

    Example:
        >>> detector = NearestViewDetector(training_images, training_poses)  # doctest: +SKIP
        >>> detection = detector.detect(query)  # doctest: +SKIP
    """

    def __init__(
        self,
        images: List[Float[Tensor, "H W 3"]],
        camera_to_worlds: Float[Tensor, "N 3 4"],
        scorer: Optional[AnomalyScorerConfig] = None,
        retrieval: Optional[RetrievalConfig] = None,
        device: str = "cpu",
    ) -> None:
        pipeline = OmniposePipelineConfig()
        self.scorer: AnomalyScorer = (scorer or pipeline.scorer).setup().to(device)
        # The pipeline shares the scorer's backbone with retrieval; so does this baseline.
        self.retrieval = PoseRetrieval(self.scorer.backbone, retrieval or pipeline.localisation.retrieval)
        self.images = [as_query_tensor(image) for image in images]
        self.retrieval.build(self.images, torch.as_tensor(camera_to_worlds)[:, :3, :4])

    @torch.no_grad()
    def detect(self, query: Float[Tensor, "H W 3"]) -> Detection:
        query = as_query_tensor(query)
        camera_to_world, distance, index = self.retrieval.query(query, k=1)[0]
        reference = self.images[index]
        if reference.shape[:2] != query.shape[:2]:
            reference = F.interpolate(
                reference.permute(2, 0, 1)[None],
                size=query.shape[:2],
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0].permute(1, 2, 0)
        maps, scores = self.scorer(query.permute(2, 0, 1)[None], reference.permute(2, 0, 1)[None])
        return Detection(
            anomaly_map=maps[0].cpu().numpy(),
            score=float(scores[0]),
            reference=reference.clamp(0.0, 1.0).numpy(),
            camera_to_world=camera_to_world.clone(),
            extra={"retrieved_view": index, "descriptor_distance": distance},
        )
