"""Where the field renders unreliably, learnt per class from its own training views, so the anomaly map can discount
it.

A trained field does not render every place equally well: silhouette outlines, depth discontinuities (stud edges, a
limb in front of the body) and sharp colour edges come out a little wrong, and a pose estimate a tenth of a degree
off moves exactly those places. A good query's anomaly map lights up there at the level of a small burr on a flat
face. `RenderingErrorModel` measures the scorer's (unsmoothed) map on training views, which are defect-free, against
renderings at slightly perturbed poses, and tabulates its mean per bin of three image-space cues computed from the
reference rendering alone (so they exist for every query): signed distance to the silhouette, depth-edge strength
and colour-edge strength. At inspection the map is divided by the expected error relative to the object's typical
error, never amplified: a place that always renders badly must show more to count, a flat face is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import cv2
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

SILHOUETTE_BINS = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
"""Edges (map pixels, positive inside the object) of the signed silhouette-distance bins: far outside, near
outside, at the outline from outside, at the outline from inside, near inside, deep inside."""
EDGE_QUANTILES = (0.5, 0.85)
"""Depth- and colour-edge strengths are binned at these quantiles of their values on the object (none, some, strong),
so the bins adapt to image size and object without absolute thresholds."""
EDGE_REACH = 2
"""Edge strength is spread over this many map pixels around an edge (the scorer compares with a shift window)."""
MIN_BIN_PIXELS = 200
"""Bins seen on fewer calibration pixels than this use their silhouette-distance bin's mean instead."""


@dataclass
class RenderingCues:
    """Per-pixel cues of one reference rendering at the map's size (the error model bins them)."""

    silhouette: np.ndarray
    """(S, S) int, 0..len(SILHOUETTE_BINS)."""
    depth_edge: np.ndarray
    """(S, S) float, relative depth gradient (0 off the object)."""
    colour_edge: np.ndarray
    """(S, S) float, luminance gradient."""


def rendering_cues(
    rgb: Float[Tensor, "H W 3"], depth: Float[Tensor, "H W"], accumulation: Float[Tensor, "H W"], size: int
) -> RenderingCues:
    """The cues of a reference rendering, computed at the anomaly map's ``size``."""

    def resized(image: Tensor) -> np.ndarray:
        array = image.detach().float().cpu().numpy()
        shrinking = array.shape[0] > size
        return cv2.resize(array, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    inside = resized(accumulation) > 0.5
    distance_in = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
    distance_out = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 3)
    signed = np.where(inside, distance_in, -distance_out)
    kernel = np.ones((2 * EDGE_REACH + 1, 2 * EDGE_REACH + 1), np.uint8)

    object_depth = np.where(inside, resized(depth), 0.0).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(object_depth, cv2.CV_32F, 1, 0), cv2.Sobel(object_depth, cv2.CV_32F, 0, 1))
    # Only jumps within the object: its outline is the silhouette cue's business.
    interior = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    relative = np.where(interior, gradient / np.maximum(object_depth, 1e-6), 0.0).astype(np.float32)
    luminance = (resized(rgb) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)
    colour = np.hypot(cv2.Sobel(luminance, cv2.CV_32F, 1, 0), cv2.Sobel(luminance, cv2.CV_32F, 0, 1))
    return RenderingCues(
        silhouette=np.digitize(signed, SILHOUETTE_BINS),
        depth_edge=cv2.dilate(relative, kernel),
        colour_edge=cv2.dilate(np.where(inside, colour, 0.0).astype(np.float32), kernel),
    )


class RenderingErrorModel:
    """Expected anomaly-map value of a defect-free view per cue bin, and the discount it gives a query's map.

    Example:
        >>> model = RenderingErrorModel.fit(maps, cues)  # doctest: +SKIP
        >>> discounted = raw_map / model.discount(cues_of_the_query)  # doctest: +SKIP
    """

    def __init__(self, table: np.ndarray, depth_edges: np.ndarray, colour_edges: np.ndarray, typical: float) -> None:
        self.table = table
        """(silhouette bins, 3, 3) expected map value."""
        self.depth_edges = depth_edges
        self.colour_edges = colour_edges
        self.typical = typical
        """Mean map value over the object's interior: the error of a place the field renders well."""

    @classmethod
    def fit(cls, maps: Sequence[np.ndarray], cues: Sequence[RenderingCues]) -> "RenderingErrorModel":
        """Tabulate defect-free maps (each (S, S), unsmoothed) by the cues of their references."""
        if not maps:
            raise ValueError("RenderingErrorModel.fit needs at least one defect-free view")
        first_inside = int(np.digitize(0.5, SILHOUETTE_BINS))  # inside pixels are at distance >= 1
        on_object = [c.silhouette >= first_inside for c in cues]
        depth_values = np.concatenate([c.depth_edge[m] for c, m in zip(cues, on_object)])
        colour_values = np.concatenate([c.colour_edge[m] for c, m in zip(cues, on_object)])
        depth_edges = np.quantile(depth_values, EDGE_QUANTILES) if depth_values.size else np.zeros(2)
        colour_edges = np.quantile(colour_values, EDGE_QUANTILES) if colour_values.size else np.zeros(2)
        bins = len(SILHOUETTE_BINS) + 1
        sums, counts = np.zeros((bins, 3, 3)), np.zeros((bins, 3, 3))
        for values, cue in zip(maps, cues):
            index = cls._bins(cue, depth_edges, colour_edges)
            np.add.at(sums, index, values)
            np.add.at(counts, index, 1.0)
        table = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        marginal = sums.sum(axis=(1, 2)) / np.maximum(counts.sum(axis=(1, 2)), 1.0)
        table = np.where(counts >= MIN_BIN_PIXELS, table, marginal[:, None, None])
        interior = np.concatenate([v[c.silhouette == bins - 1] for v, c in zip(maps, cues)])
        typical = float(interior.mean()) if interior.size else float(np.mean([m.mean() for m in maps]))
        return cls(table, depth_edges, colour_edges, max(typical, 1e-12))

    @staticmethod
    def _bins(cue: RenderingCues, depth_edges: np.ndarray, colour_edges: np.ndarray) -> tuple:
        return (
            cue.silhouette,
            np.digitize(cue.depth_edge, depth_edges, right=True),
            np.digitize(cue.colour_edge, colour_edges, right=True),
        )

    def expected(self, cue: RenderingCues) -> np.ndarray:
        """(S, S) expected defect-free map value at each pixel of a reference with these cues."""
        return self.table[self._bins(cue, self.depth_edges, self.colour_edges)]

    def discount(self, cue: RenderingCues) -> Float[Tensor, "S S"]:
        """(S, S) divisor >= 1 for the unsmoothed map: how many times worse than typical this place renders."""
        return torch.from_numpy(np.maximum(self.expected(cue) / self.typical, 1.0).astype(np.float32))

    def summary(self) -> Dict[str, float]:
        """Expected error per silhouette-distance bin relative to typical (for logs and the closing report)."""
        names = ("far outside", "near outside", "outline outside", "outline inside", "near inside", "interior")
        return {name: float(self.table[i].mean() / self.typical) for i, name in enumerate(names)}
