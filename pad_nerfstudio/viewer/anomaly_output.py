"""The viewer's "anomaly" output: a heat map of the current view against the inspected query, at the query's pose.

When the viewer camera sits at a query's estimated pose, the field's rendering there is a defect-free reference
for the query, only seen through the browser's intrinsics (its window's size and aspect ratio) instead of the
query's. With both cameras at one pose, pixels correspond through the two intrinsics alone (an axis-aligned
scaling), so the rendering is warped into the query's frame, compared with the query by the pipeline's own scorer
(the same call as ns-eval, at the query's size), and the heat map drawn over the query is warped back into the
view. Where the view sees beyond the query's frame it shows the plain rendering.
"""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from pad_nerfstudio.anomaly.anomaly_map import AnomalyScorer
from pad_nerfstudio.anomaly.report import heatmap_overlay
from pad_nerfstudio.viewer.display import heatmap_range

__all__ = ["warp_to_camera", "anomaly_output"]


def warp_to_camera(
    image: np.ndarray,
    source_intrinsics: Tensor | np.ndarray,
    target_intrinsics: Tensor | np.ndarray,
    target_size: Tuple[int, int],
    border_value: float = 1.0,
) -> np.ndarray:
    """Resample an image taken by one pinhole camera as a second camera at the same pose would see it.

    Args:
        image: (H, W, C) float32 or uint8.
        source_intrinsics: (fx, fy, cx, cy) of ``image``.
        target_intrinsics: (fx, fy, cx, cy) of the result.
        target_size: (width, height) of the result.
        border_value: value where the target sees beyond the source's frame.

    Pixel centres are at +0.5 (the convention of the field's rays). Shrinking averages over pixel areas first,
    so that a large viewer rendering is not aliased into a small query's frame.

    Example:
        >>> image = np.random.rand(8, 8, 3).astype(np.float32)
        >>> same = warp_to_camera(image, [8.0, 8.0, 4.0, 4.0], [4.0, 4.0, 2.0, 2.0], (4, 4))
        >>> bool(np.allclose(same, cv2.resize(image, (4, 4), interpolation=cv2.INTER_AREA), atol=1e-5))
        True
    """
    fx_s, fy_s, cx_s, cy_s = (float(v) for v in source_intrinsics)
    fx_t, fy_t, cx_t, cy_t = (float(v) for v in target_intrinsics)
    shrink_x, shrink_y = min(1.0, fx_t / fx_s), min(1.0, fy_t / fy_s)
    if shrink_x < 1.0 or shrink_y < 1.0:
        height, width = image.shape[:2]
        size = (max(1, round(width * shrink_x)), max(1, round(height * shrink_y)))
        shrink_x, shrink_y = size[0] / width, size[1] / height
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        fx_s, cx_s, fy_s, cy_s = fx_s * shrink_x, cx_s * shrink_x, fy_s * shrink_y, cy_s * shrink_y
    scale_x, scale_y = fx_s / fx_t, fy_s / fy_t
    target_to_source = np.array(
        [
            [scale_x, 0.0, (0.5 - cx_t) * scale_x + cx_s - 0.5],
            [0.0, scale_y, (0.5 - cy_t) * scale_y + cy_s - 0.5],
        ]
    )
    channels = image.shape[2] if image.ndim == 3 else 1
    warped = cv2.warpAffine(
        image,
        target_to_source,
        tuple(int(v) for v in target_size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(border_value,) * min(channels, 4),
    )
    return warped.reshape(*warped.shape[:2], channels) if image.ndim == 3 else warped


@torch.no_grad()
def anomaly_output(
    rendering: Float[Tensor, "H W 3"],
    view_intrinsics: Float[Tensor, "4"],
    query: np.ndarray,
    query_intrinsics: Float[Tensor, "4"],
    scorer: AnomalyScorer,
    threshold: float,
    opacity: float,
) -> Float[Tensor, "H W 3"]:
    """Heat map of a view rendered at a query's pose against that query, drawn over the query, in the view's frame.

    Args:
        rendering: the field's RGB at the query's pose through the viewer's camera, in [0, 1].
        view_intrinsics: (fx, fy, cx, cy) of ``rendering``.
        query: the query image, RGB in [0, 1], (h, w, 3).
        query_intrinsics: (fx, fy, cx, cy) of ``query``.
        scorer: the pipeline's anomaly scorer.
        threshold: decision threshold: the hottest colour (see `display.heatmap_range`).
        opacity: of the heat map where it is hottest.

    Returns:
        RGB in [0, 1] on the rendering's device.
    """
    height, width = rendering.shape[:2]
    query_height, query_width = query.shape[:2]
    view = rendering[..., :3].clamp(0.0, 1.0).float().cpu().numpy()
    reference = warp_to_camera(view, view_intrinsics, query_intrinsics, (query_width, query_height))
    maps, _ = scorer(
        torch.from_numpy(np.ascontiguousarray(query[..., :3], dtype=np.float32)).permute(2, 0, 1)[None],
        torch.from_numpy(reference).permute(2, 0, 1)[None],
    )
    anomaly_map = maps[0].float().cpu().numpy()
    overlay = heatmap_overlay(query, anomaly_map, heatmap_range(anomaly_map, threshold), opacity)
    overlay = overlay.astype(np.float32) / 255.0
    inside = np.ones((query_height, query_width), np.float32)
    back = warp_to_camera(overlay, query_intrinsics, view_intrinsics, (width, height))
    weight = warp_to_camera(inside, query_intrinsics, view_intrinsics, (width, height), border_value=0.0)[..., None]
    combined = weight * back + (1.0 - weight) * view
    return torch.from_numpy(np.ascontiguousarray(combined, dtype=np.float32)).to(rendering.device)
