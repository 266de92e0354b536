"""The inspection panel's 2D side: query, reference, heat map and ground truth side by side, as viewer markdown.

viser 0.2.7 has no image element, so the picture travels as a PNG data URL inside markdown. The heat map uses
the report's overlay (`anomaly.report.heatmap_overlay`) with a colour scale tied to the decision threshold: the
map's typical (median) level is the coldest colour and the threshold the hottest, so red pixels are the ones that
alone would make the image anomalous (the image score is the map's maximum).
"""

from __future__ import annotations

import base64
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from pad_nerfstudio.anomaly.report import heatmap_overlay, to_uint8

__all__ = ["heatmap_range", "decision", "inspection_image", "png_data_url", "result_markdown"]


def heatmap_range(anomaly_map: np.ndarray, threshold: float) -> Tuple[float, float]:
    """Colour scale of a heat map: from the map's median (background level) to the decision threshold.

    Example:
        >>> heatmap_range(np.array([[0.0, 1.0], [1.0, 9.0]]), threshold=4.0)
        (1.0, 4.0)
    """
    low = float(np.median(anomaly_map))
    return low, max(float(threshold), low + 1e-6)


def decision(score: float, threshold: float) -> str:
    """ "ANOMALOUS" when the image score reaches the threshold, else "good" (the report's wording)."""
    return "ANOMALOUS" if score >= threshold else "good"


def inspection_image(
    query: np.ndarray,
    reference: np.ndarray,
    anomaly_map: np.ndarray,
    value_range: Tuple[float, float],
    opacity: float,
    gt_mask: Optional[np.ndarray] = None,
    tile: int = 160,
) -> np.ndarray:
    """2 x 2 grid, RGB uint8: query | reference over heat-map overlay | ground-truth mask, each tile labelled.

    A grid rather than the report's single row because the viewer's side panel is narrow.

    Args:
        query, reference: RGB in [0, 1], (H, W, 3); the reference is resized to the query.
        anomaly_map: any size (the scorer's 224 x 224), drawn over the query.
        value_range: map values shown coldest and hottest (see `heatmap_range`).
        opacity: of the heat map where it is hottest.
        gt_mask: boolean (h, w) when the query's ground truth is known; otherwise that tile says so.
        tile: side of each tile in pixels (tiles keep the query's aspect ratio).

    Example:
        >>> inspection_image(np.ones((8, 8, 3)), np.ones((8, 8, 3)), np.zeros((4, 4)), (0.0, 1.0), 0.6).shape
        (360, 324, 3)
    """
    height, width = query.shape[:2]
    size = (tile, max(1, round(tile * height / width)))
    reference = cv2.resize(reference.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    tiles = {
        "query": to_uint8(query),
        "reference": to_uint8(reference),
        "heat map": heatmap_overlay(query, anomaly_map, value_range, opacity),
    }
    if gt_mask is not None:
        mask = cv2.resize(gt_mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_NEAREST)
        tiles["ground truth"] = np.repeat(mask[..., None], 3, axis=-1)
    else:
        tiles["no ground truth"] = np.full((height, width, 3), 235, np.uint8)
    labelled = [
        _labelled(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), text) for text, image in tiles.items()
    ]
    gap_column = np.full((labelled[0].shape[0], 4, 3), 255, np.uint8)
    rows = [np.concatenate([labelled[i], gap_column, labelled[i + 1]], axis=1) for i in (0, 2)]
    gap_row = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([rows[0], gap_row, rows[1]], axis=0)


def png_data_url(image: np.ndarray) -> str:
    """An RGB uint8 image as a `data:image/png;base64,...` URL, for markdown."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"Could not encode an image of shape {image.shape} as PNG.")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def result_markdown(
    name: str,
    defect_type: Optional[str],
    score: float,
    threshold: float,
    image_url: str,
    seconds: Dict[str, float],
    pose_error_deg: Optional[float] = None,
) -> str:
    """The panel's result: picture, image score, decision at the threshold, and what is known about the query."""
    verdict = decision(score, threshold)
    lines = [
        f"![query, reference, heat map, ground truth]({image_url})",
        "",
        f"**Score {score:.4g}** at threshold {threshold:.4g}: **{verdict}**",
        "",
        f"`{name}`" + (f", true class: {defect_type}" if defect_type is not None else ""),
    ]
    if pose_error_deg is not None:
        lines += ["", f"Pose error vs test_poses.json: {pose_error_deg:.2f} deg (true pose in green)"]
    stages = ", ".join(f"{stage} {value:.1f} s" for stage, value in seconds.items())
    lines += ["", f"{sum(seconds.values()):.1f} s ({stages})"]
    return "\n".join(lines)


def _labelled(image: np.ndarray, label: str) -> np.ndarray:
    """The tile under a white strip holding its label."""
    strip = np.full((18, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, label, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)
