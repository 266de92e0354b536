"""The evaluation report: PRO curve points, F1 operating point, heat-map overlays and the files written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from pad_nerfstudio.anomaly.metrics import f1_max, pixel_aupro, pro_curve
from pad_nerfstudio.anomaly.report import QueryRecord, f1_threshold, heatmap_overlay, write_report


def random_masks_and_maps(seed: int, n: int = 4, size: int = 32):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        y, x = rng.integers(0, size - 8, 2)
        masks[i, y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
    maps = rng.random((n, size, size)) + 0.8 * masks
    return masks, maps


@pytest.mark.parametrize("seed", [0, 1])
def test_pro_curve_integrates_to_aupro(seed):
    masks, maps = random_masks_and_maps(seed)
    fpr, pro = pro_curve(masks, maps, fpr_limit=0.3, points=2000)
    assert fpr[0] == 0.0 and fpr[-1] == pytest.approx(0.3, abs=1e-3)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    area = float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2)) / 0.3
    assert area == pytest.approx(pixel_aupro(masks, maps), abs=5e-3)


def test_f1_threshold_is_the_f1_max_operating_point():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50) + 0.5 * labels
    threshold = f1_threshold(labels, scores)
    predicted = scores >= threshold
    tp = np.sum(predicted & (labels == 1))
    assert 2 * tp / (predicted.sum() + labels.sum()) == pytest.approx(f1_max(labels, scores))
    assert f1_threshold(np.ones(3, int), np.arange(3.0)) is None


def test_heatmap_overlay_leaves_cold_pixels_and_colours_hot_ones():
    image = np.full((20, 20, 3), 0.5)
    anomaly_map = np.zeros((10, 10))
    anomaly_map[:5, :5] = 1.0
    overlay = heatmap_overlay(image, anomaly_map, (0.0, 1.0), opacity=0.6)
    assert overlay.dtype == np.uint8 and overlay.shape == (20, 20, 3)
    assert np.all(overlay[15:, 15:] == 128)  # cold: the image itself
    red = overlay[2, 2].astype(int)
    assert red[0] >= 120 and red[0] - red[2] > 60  # hot: jet's (dark) red end blended in


def test_write_report_files(tmp_path):
    masks, maps = random_masks_and_maps(5, n=3, size=16)
    rng = np.random.default_rng(0)
    records = []
    for i, (name, label) in enumerate([("test/good/0.png", 0), ("test/Burrs/0.png", 1), ("test/Stains/1.png", 1)]):
        pose = np.eye(4)[:3]
        pose[:, 3] = [0, 0, 4 + i]
        records.append(
            QueryRecord(
                image_path=name,
                label=label,
                defect_type=name.split("/")[1],
                score=float(maps[i].max()),
                anomaly_map=maps[i],
                gt_mask=masks[i] if label else np.zeros_like(masks[i]),
                camera_to_world=pose,
                query=rng.random((24, 24, 3)),
                reference=rng.random((24, 24, 3)),
                seconds=1.5,
                rotation_error_deg=0.1 * i,
                translation_error_pct=0.2,
            )
        )
    metrics = {"image_auroc": 1.0, "pixel_auroc": 0.9, "pixel_aupro": 0.8}
    write_report(tmp_path, records, metrics, title="unit", size=16)

    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [r["image_path"] for r in rows] == [r.image_path for r in records]
    assert [float(r["score"]) for r in rows] == pytest.approx([r.score for r in records], rel=1e-5)
    assert [float(r["rotation_error_deg"]) for r in rows] == pytest.approx([0.0, 0.1, 0.2])
    poses = json.loads((tmp_path / "poses.json").read_text())
    assert np.allclose(poses["test/Stains/1.png"], np.vstack([records[2].camera_to_world, [0, 0, 0, 1]]))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    panel = Image.open(tmp_path / "panels" / "Burrs" / "0.png")
    assert panel.size[0] >= 4 * 24 and panel.size[1] > 24
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert not list(tmp_path.glob("*.tmp"))
