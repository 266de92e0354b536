"""The evaluation report of one class: heat-map panels, per-query scores and poses, ROC and PRO curves.

`write_report` lays out what `ns-eval --render-output-path DIR` leaves for a person to look at:

    DIR/panels/<defect type>/<image>.png   query | reference | heat-map overlay | GT mask
    DIR/scores.csv                         image path, label, defect type, image score, pose error
    DIR/poses.json                         image path -> estimated 4x4 camera-to-world
    DIR/metrics.json                       the metrics ns-eval reports
    DIR/curves.png                         image ROC, pixel ROC and PRO curves

Heat maps share one colour scale across the class (background level to the highest image score), so a
panel that looks hot is hot relative to the other queries, not just to itself.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from pad_nerfstudio.anomaly.metrics import compute_anomaly_metrics, pro_curve, resize_map, resize_mask

__all__ = ["QueryRecord", "summarise_records", "write_report", "heatmap_overlay", "anomaly_panel", "to_uint8"]


@dataclass
class QueryRecord:
    """Everything evaluated about one test query."""

    image_path: str
    """Path relative to the class folder, e.g. "test/Burrs/3.png"."""
    label: int
    defect_type: str
    score: float
    anomaly_map: np.ndarray
    gt_mask: np.ndarray
    camera_to_world: np.ndarray
    query: np.ndarray
    """RGB in [0, 1], (H, W, 3)."""
    reference: np.ndarray
    """The anomaly-free rendering at the estimated pose, RGB in [0, 1], (H, W, 3)."""
    seconds: float
    rotation_error_deg: Optional[float] = None
    translation_error_pct: Optional[float] = None


def summarise_records(records: Sequence[QueryRecord], seconds: float, size: int = 224) -> Dict[str, Any]:
    """The metrics ns-eval reports for one class's evaluated queries (pose errors only where the truth is known).

    ``seconds`` is the wall time spent on the queries (the one-off per-class set-up excluded).
    """
    results: Dict[str, Any] = compute_anomaly_metrics(
        [r.label for r in records],
        [r.defect_type for r in records],
        [r.score for r in records],
        [r.gt_mask for r in records],
        [r.anomaly_map for r in records],
        size=size,
    )
    results.update(num_queries=len(records), seconds_per_query=seconds / max(len(records), 1))
    with_pose = [r for r in records if r.rotation_error_deg is not None]
    if with_pose:
        rotation = np.array([r.rotation_error_deg for r in with_pose])
        translation = np.array([r.translation_error_pct for r in with_pose])
        results.update(
            pose_rot_err_deg_median=float(np.median(rotation)),
            pose_rot_err_deg_p95=float(np.percentile(rotation, 95)),
            pose_trans_err_pct_median=float(np.median(translation)),
            pose_within_2deg=float(np.mean(rotation <= 2.0)),
            pose_within_quarter_deg=float(np.mean(rotation <= 0.25)),
            pose_beyond_half_deg=float(np.mean(rotation > 0.5)),
        )
    return results


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] as uint8, rounded (values outside are clipped)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def heatmap_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, value_range: Tuple[float, float], opacity: float = 0.6
) -> np.ndarray:
    """RGB uint8 image with the anomaly map drawn over it in the jet colour map.

    Args:
        image: RGB in [0, 1], (H, W, 3).
        anomaly_map: any size; resized (bilinear) to the image.
        value_range: map values shown as the coldest and the hottest colour.
        opacity: of the heat map where it is hottest; cold regions fade to the image, so context stays visible.

    Example:
        >>> heatmap_overlay(np.ones((4, 4, 3)), np.zeros((2, 2)), (0.0, 1.0)).shape
        (4, 4, 3)
    """
    height, width = image.shape[:2]
    low, high = value_range
    resized = cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    level = np.clip((resized - low) / max(high - low, 1e-12), 0.0, 1.0)
    colours = cv2.applyColorMap(to_uint8(level), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32) / 255.0
    alpha = opacity * np.sqrt(level)[..., None]
    return to_uint8((1.0 - alpha) * image[..., :3] + alpha * colours)


def anomaly_panel(
    record: QueryRecord, value_range: Tuple[float, float], threshold: Optional[float] = None
) -> np.ndarray:
    """query | reference | heat-map overlay | GT mask, side by side with a caption line, as RGB uint8."""
    height, width = record.query.shape[:2]
    reference = cv2.resize(record.reference.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    mask = resize_mask(record.gt_mask, (height, width)).astype(np.float32)
    tiles = [
        to_uint8(record.query),
        to_uint8(reference),
        heatmap_overlay(record.query, record.anomaly_map, value_range),
        to_uint8(np.repeat(mask[..., None], 3, axis=-1)),
    ]
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    caption = f"{record.image_path}  score {record.score:.4g}"
    if threshold is not None:
        caption += "  -> " + ("ANOMALOUS" if record.score >= threshold else "good")
    if record.rotation_error_deg is not None:
        caption += f"  pose err {record.rotation_error_deg:.2f} deg"
    bar = np.full((22, row.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, row], axis=0)


def colour_scale(records: Sequence[QueryRecord]) -> Tuple[float, float]:
    """Class-wide heat-map range: the typical map level of good queries up to the highest image score."""
    good = [r.anomaly_map for r in records if r.label == 0] or [r.anomaly_map for r in records]
    low = float(np.median(np.stack(good)))
    high = max(max(r.score for r in records), low + 1e-12)
    return low, high


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Image-score threshold at the F1-max operating point (None without both classes)."""
    if labels.all() or not labels.any():
        return None
    best, best_f1 = None, -1.0
    for threshold in np.unique(scores[labels == 1]):
        predicted = scores >= threshold
        tp = np.sum(predicted & (labels == 1))
        f1 = 2 * tp / (predicted.sum() + labels.sum())
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    return best


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_scores_csv(path: Path, records: Sequence[QueryRecord]) -> None:
    fields = ["image_path", "label", "defect_type", "score", "rotation_error_deg", "translation_error_pct", "seconds"]
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for r in records:
            writer.writerow(
                [r.image_path, r.label, r.defect_type, f"{r.score:.6g}"]
                + ["" if v is None else f"{v:.4f}" for v in (r.rotation_error_deg, r.translation_error_pct)]
                + [f"{r.seconds:.3f}"]
            )
    os.replace(temporary, path)


def plot_curves(path: Path, records: Sequence[QueryRecord], metrics: Dict[str, Any], size: int, title: str) -> None:
    """Image ROC, pixel ROC and PRO (to FPR 0.3) in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    labels = np.array([r.label for r in records])
    scores = np.array([r.score for r in records])
    masks = np.stack([resize_mask(r.gt_mask, size) for r in records])
    maps = np.stack([resize_map(r.anomaly_map, size) for r in records])
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    if 0 < labels.sum() < labels.size:
        fpr, tpr, _ = roc_curve(labels, scores)
        axes[0].plot(fpr, tpr, label=f"AUROC {metrics.get('image_auroc', float('nan')):.3f}")
    if masks.any() and not masks.all():
        fpr, tpr, _ = roc_curve(masks.ravel(), maps.ravel())
        axes[1].plot(fpr, tpr, label=f"AUROC {metrics.get('pixel_auroc', float('nan')):.3f}")
        fpr, pro = pro_curve(masks, maps)
        axes[2].plot(fpr, pro, label=f"AUPRO {metrics.get('pixel_aupro', float('nan')):.3f}")
    for axis, name, limit in zip(axes, ("Image ROC", "Pixel ROC", "PRO (FPR <= 0.3)"), (1.0, 1.0, 0.3)):
        axis.plot([0, limit], [0, limit], color="0.7", linestyle=":")
        axis.set(title=name, xlim=(0, limit), ylim=(0, 1.01), xlabel="false positive rate")
        axis.set_ylabel("per-region overlap" if limit < 1 else "true positive rate")
        axis.legend(loc="lower right")
    figure.suptitle(f"{title}: {len(records)} queries")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(
    output_dir: Path, records: Sequence[QueryRecord], metrics: Dict[str, Any], title: str = "", size: int = 224
) -> None:
    """Write the panels, scores.csv, poses.json, metrics.json and curves.png of one evaluated class."""
    output_dir.mkdir(parents=True, exist_ok=True)
    value_range = colour_scale(records)
    threshold = f1_threshold(np.array([r.label for r in records]), np.array([r.score for r in records]))
    for record in records:
        relative = Path(record.image_path)
        panel_path = output_dir / "panels" / relative.parent.name / f"{relative.stem}.png"
        panel_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(panel_path), anomaly_panel(record, value_range, threshold)[..., ::-1])
    write_scores_csv(output_dir / "scores.csv", records)
    poses = {r.image_path: np.vstack([r.camera_to_world[:3, :4], [0, 0, 0, 1]]).tolist() for r in records}
    _write_atomic(output_dir / "poses.json", json.dumps(poses, indent=1))
    _write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    plot_curves(output_dir / "curves.png", records, metrics, size, title)
