"""Coarse pose by retrieval: a compact global image descriptor and a FAISS index over the posed training views.

OmniposeAD starts pose estimation from the training view that looks most like the query. The descriptor
here is built from the shared frozen ImageNet backbone: each requested feature level is pooled on a coarse
spatial grid (the object is centred in MAD views, so *where* a part appears says much about the viewpoint,
which plain global pooling throws away) and by global max pooling, each level is L2-normalised so that no
level dominates, and the concatenation is projected to 64 dimensions (as in the paper) by a PCA fitted on
the training views. The index is derived state: it is rebuilt from the training images after training or
on loading a checkpoint, never stored in it. When faiss has GPU support the index lives on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from pad_nerfstudio.anomaly.backbone import FeatureExtractor

__all__ = ["PoseRetrieval", "RetrievalConfig", "faiss_gpu_available"]


def faiss_gpu_available() -> bool:
    """Whether the installed faiss can put indices on a GPU (faiss-gpu build and a visible device)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class RetrievalConfig:
    """Global descriptor and index settings."""

    descriptor_dim: int = 64
    """Dimension of the projected descriptor (64 in the paper); capped by the number of database views."""
    input_size: int = 224
    """Square size images are resized to before the backbone, so queries of any size get comparable features."""
    spatial_grid: int = 4
    """Average-pooling grid per feature level (1 = global average pooling only)."""
    whiten: bool = False
    """Scale PCA components to unit variance (gives minor components as much weight as major ones)."""
    batch_size: int = 16
    """Images per backbone batch when describing the database."""


class PoseRetrieval:
    """A FAISS index of global descriptors of posed views: ``build`` once, ``query`` per image.

    Example:
        >>> retrieval = PoseRetrieval(load_backbone())  # doctest: +SKIP
        >>> retrieval.build(training_images, training_poses)  # doctest: +SKIP
        >>> pose, distance, index = retrieval.query(query_image, k=3)[0]  # doctest: +SKIP
    """

    def __init__(self, backbone: FeatureExtractor, config: Optional[RetrievalConfig] = None) -> None:
        self.backbone = backbone
        self.config = config or RetrievalConfig()
        self.index: Optional[faiss.Index] = None
        self.poses: Optional[Tensor] = None
        self._mean: Optional[np.ndarray] = None
        self._projection: Optional[np.ndarray] = None

    # ------------------------------------------------------------------------------------------------ descriptors
    @torch.no_grad()
    def raw_descriptors(self, images: Sequence[Float[Tensor, "H W 3"]] | Float[Tensor, "B H W 3"]) -> np.ndarray:
        """Unprojected multi-scale descriptors (float32, one row per image) of RGB images in [0, 1]."""
        device = next(self.backbone.buffers()).device
        rows = []
        size = self.config.input_size
        for start in range(0, len(images), self.config.batch_size):
            batch = [
                torch.as_tensor(image, dtype=torch.float32) for image in images[start : start + self.config.batch_size]
            ]
            batch = torch.stack(
                [
                    F.interpolate(
                        image.permute(2, 0, 1)[None].to(device),
                        size=(size, size),
                        mode="bilinear",
                        align_corners=False,
                        antialias=image.shape[0] > size,
                    )[0]
                    for image in batch
                ]
            )
            parts = []
            for features in self.backbone(batch.clamp(0.0, 1.0)):
                pooled = [F.adaptive_avg_pool2d(features, self.config.spatial_grid).flatten(1), features.amax((2, 3))]
                parts.append(F.normalize(torch.cat(pooled, dim=1), dim=1))
            rows.append(torch.cat(parts, dim=1).cpu())
        return torch.cat(rows).numpy().astype(np.float32)

    def describe(self, images: Sequence[Float[Tensor, "H W 3"]] | Float[Tensor, "B H W 3"]) -> np.ndarray:
        """Projected, L2-normalised descriptors (float32, ``descriptor_dim`` columns) for the index."""
        return self.project(self.raw_descriptors(images))

    def project(self, raw: np.ndarray) -> np.ndarray:
        """Project raw descriptors with the fitted PCA and L2-normalise them."""
        if self._projection is None:
            raise RuntimeError("PoseRetrieval.build(...) must run before descriptors can be projected.")
        projected = (raw.astype(np.float32) - self._mean) @ self._projection
        return (projected / np.linalg.norm(projected, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    # ------------------------------------------------------------------------------------------------ index
    def build(
        self, images: Sequence[Float[Tensor, "H W 3"]] | Float[Tensor, "B H W 3"], poses: Float[Tensor, "B 3 4"]
    ) -> "PoseRetrieval":
        """Fit the projection on ``images`` and index them with their camera-to-world ``poses``."""
        if len(images) != len(poses) or len(images) == 0:
            raise ValueError(
                f"build needs as many poses as images (and at least one), got {len(images)} and {len(poses)}."
            )
        raw = self.raw_descriptors(images).astype(np.float64)
        self._mean = raw.mean(0)
        # PCA by SVD of the centred database; components beyond the rank carry no information.
        _, singular, components = np.linalg.svd(raw - self._mean, full_matrices=False)
        dim = max(1, min(self.config.descriptor_dim, int((singular > 1e-8 * singular[0]).sum()) if len(raw) > 1 else 1))
        projection = components[:dim].T
        if self.config.whiten:
            projection = projection / (singular[:dim] / np.sqrt(max(len(raw) - 1, 1)))
        self._projection = projection.astype(np.float32)
        self._mean = self._mean.astype(np.float32)
        self.poses = torch.as_tensor(poses)[..., :3, :4].detach().cpu().clone()
        database = self.project(raw)
        index = faiss.IndexFlatL2(database.shape[1])
        if faiss_gpu_available():
            self._gpu_resources = faiss.StandardGpuResources()  # must outlive the index
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        index.add(database)
        self.index = index
        return self

    def add(
        self, images: Sequence[Float[Tensor, "H W 3"]] | Float[Tensor, "B H W 3"], poses: Float[Tensor, "B 3 4"]
    ) -> "PoseRetrieval":
        """Index more posed views (e.g. field renders on a finer pose grid) with the already fitted projection."""
        if self.index is None or self.poses is None:
            raise RuntimeError("Call PoseRetrieval.build(...) on the training views before adding views.")
        if len(images) != len(poses):
            raise ValueError(f"add needs as many poses as images, got {len(images)} and {len(poses)}.")
        self.index.add(self.describe(images))
        self.poses = torch.cat([self.poses, torch.as_tensor(poses)[..., :3, :4].detach().cpu().to(self.poses.dtype)])
        return self

    @property
    def size(self) -> int:
        """Number of indexed views."""
        return 0 if self.index is None else int(self.index.ntotal)

    def search(self, descriptors: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search: squared L2 distances and database indices, each (queries, k)."""
        if self.index is None:
            raise RuntimeError("The retrieval index is empty: call PoseRetrieval.build(...) first.")
        return self.index.search(np.ascontiguousarray(descriptors, dtype=np.float32), min(k, self.size))

    def query(self, image: Float[Tensor, "H W 3"], k: int = 3) -> List[Tuple[Float[Tensor, "3 4"], float, int]]:
        """The ``k`` nearest views as (camera-to-world, squared descriptor distance, database index), nearest first."""
        distances, indices = self.search(self.describe([image]), k)
        return [(self.poses[int(i)], float(d), int(i)) for d, i in zip(distances[0], indices[0]) if i >= 0]
