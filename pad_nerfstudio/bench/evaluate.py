"""Evaluation of a baseline detector under exactly the protocol of the OmniposeAD pipeline.

The baselines (`patchcore`, `nearest-view`) see the same test queries as `ns-eval` (the `mad-data` test
split, labels and ground-truth masks from `MADDataset`), produce the same per-query `QueryRecord`s, and go
through the same `compute_anomaly_metrics` (maps and masks at 224) and `write_report`, so their numbers
differ from OmniposeAD's only by what the detectors do. Timing is measured the same way as in the pipeline:
the one-off set-up per class (memory bank, retrieval index) is excluded from seconds per query.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from pad_nerfstudio.anomaly.report import QueryRecord, summarise_records, write_report
from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import MADDataset
from pad_nerfstudio.data.mad_layout import read_true_poses
from pad_nerfstudio.pipeline import pose_errors

__all__ = ["Detection", "Detector", "load_split", "evaluate_detector", "read_scores_csv", "ProgressCallback"]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while a run works (the benchmark's progress bar)."""


def no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass
class Detection:
    """What a baseline finds for one query image."""

    anomaly_map: Float[np.ndarray, "S S"]
    """Pixel anomaly scores at the protocol size (224)."""
    score: float
    """Image anomaly score."""
    reference: Float[np.ndarray, "H W 3"]
    """The image the query was compared with (RGB in [0, 1], query size); white when there is none."""
    camera_to_world: Optional[Float[Tensor, "3 4"]] = None
    """Pose the detector assigns to the query (nearest-view: the retrieved view's), if any."""
    extra: Dict[str, Any] = field(default_factory=dict)


class Detector(Protocol):
    def detect(self, query: Float[Tensor, "H W 3"]) -> Detection: ...


def load_split(class_dir: Path, split: str, train_views: Optional[int] = None, downscale_factor: int = 1) -> MADDataset:
    """The `mad-data` split of a class exactly as the pipeline's datamanager loads it."""
    config = MADDataParserConfig(data=Path(class_dir), train_views=train_views, downscale_factor=downscale_factor)
    return MADDataset(config.setup().get_dataparser_outputs(split=split))


def evaluate_detector(
    detector: Detector,
    queries: MADDataset,
    report_dir: Optional[Path] = None,
    map_size: int = 224,
    progress: ProgressCallback = no_progress,
) -> Dict[str, Any]:
    """PAD metrics of ``detector`` over the test queries, with the same keys as `ns-eval` reports.

    Writes panels, scores.csv, poses.json, metrics.json and curves.png to ``report_dir`` when given.
    """
    class_dir = Path(queries.metadata["class_dir"])
    true_poses = read_true_poses(class_dir)
    centre = queries.scene_box.aabb.mean(dim=0).double()  # the object centre the dataparser found
    records: List[QueryRecord] = []
    started = time.perf_counter()
    for index in range(len(queries)):
        progress("inspecting queries", index, len(queries))
        item = queries[index]
        relative = Path(queries.image_filenames[index]).relative_to(class_dir).as_posix()
        query = item["image"][..., :3]
        clock = time.perf_counter()
        detection = detector.detect(query)
        seconds = time.perf_counter() - clock
        if detection.camera_to_world is not None:
            pose = detection.camera_to_world.double()
            errors = pose_errors(pose, true_poses.get(relative), centre)
            camera_to_world = pose.numpy()
        else:
            errors = {"rotation_error_deg": None, "translation_error_pct": None}
            camera_to_world = np.full((3, 4), np.nan)  # no pose: NaN in poses.json rather than a made-up one
        records.append(
            QueryRecord(
                image_path=relative,
                label=int(item["label"]),
                defect_type=str(item["defect_type"]),
                score=float(detection.score),
                anomaly_map=np.asarray(detection.anomaly_map, dtype=np.float32),
                gt_mask=item["gt_mask"].numpy(),
                camera_to_world=camera_to_world,
                query=query.numpy(),
                reference=np.asarray(detection.reference, dtype=np.float32),
                seconds=seconds,
                **errors,
            )
        )
    progress("inspecting queries", len(queries), len(queries))
    elapsed = time.perf_counter() - started
    results = summarise_records(records, elapsed, size=map_size)
    if report_dir is not None:
        progress("writing report", 0, 1)
        write_report(Path(report_dir), records, results, title=class_dir.name, size=map_size)
    return results


def read_scores_csv(path: Path) -> List[Dict[str, Any]]:
    """Per-query image results from a report's scores.csv: image_path, label, defect_type, score (+ pose error)."""
    rows = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry: Dict[str, Any] = {
                "image_path": row["image_path"],
                "label": int(row["label"]),
                "defect_type": row["defect_type"],
                "score": float(row["score"]),
            }
            if row.get("rotation_error_deg"):
                entry["rotation_error_deg"] = float(row["rotation_error_deg"])
            rows.append(entry)
    return rows


def as_query_tensor(image: Any) -> Float[Tensor, "H W 3"]:
    """RGB float image in [0, 1] as a CPU tensor (uint8 accepted)."""
    tensor = torch.as_tensor(image)
    if not tensor.is_floating_point():
        tensor = tensor.float() / 255.0
    return tensor[..., :3].cpu()
