"""Dataset-level anomaly metrics against sklearn and against deliberately naive reference implementations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from pad_nerfstudio.anomaly.metrics import (
    compute_anomaly_metrics,
    f1_max,
    image_auroc,
    pixel_aupro,
    pixel_auroc,
    resize_map,
    resize_mask,
)


def _blob_dataset(seed: int, n_images: int = 12, size: int = 64, signal: float = 1.0):
    """Random smooth maps; about two thirds of the images carry 1-3 rectangular or disc-shaped defects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_images):
        if i % 3 == 0:
            continue  # a good image
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(2, 8)
            if rng.uniform() < 0.5:
                masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            else:
                masks[i, cy - r : cy + r, cx : cx + 2 * r] = True
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 2, 2))
    strength = rng.uniform(0.2, 1.0, size=(n_images, 1, 1))
    maps = noise + signal * strength * ndimage.gaussian_filter(masks.astype(float), sigma=(0, 1.5, 1.5))
    return masks, maps.astype(np.float32)


def _reference_aupro(masks, maps, fpr_limit: float = 0.3, n_thresholds: int = 400, thresholds=None) -> float:
    """Textbook AUPRO: one full pass over all images per threshold (default: evenly spaced thresholds)."""
    regions = []  # (image index, boolean region mask)
    for index, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3), int))
        regions += [(index, labelled == k) for k in range(1, n + 1)]
    negatives = ~masks
    fprs, pros = [0.0], [0.0]
    if thresholds is None:
        thresholds = np.linspace(maps.max(), maps.min(), n_thresholds)
    for t in thresholds:
        above = maps >= t
        fprs.append((above & negatives).sum() / negatives.sum())
        pros.append(np.mean([above[index][region].mean() for index, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    x, y = list(fprs[keep]), list(pros[keep])
    x.append(fpr_limit)
    y.append(np.interp(fpr_limit, fprs, pros))
    return float(np.trapz(y, x) / fpr_limit)


def _brute_force_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = (predicted & labels).sum()
        if tp == 0:
            continue
        precision, recall = tp / predicted.sum(), tp / labels.sum()
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def test_image_and_pixel_auroc_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)

    masks, maps = _blob_dataset(1)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-6)
    # Lists of per-image arrays and 0/255 masks are accepted too.
    assert pixel_auroc([m.astype(np.uint8) * 255 for m in masks], list(maps)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", [2, 3])
def test_aupro_matches_direct_reference(seed):
    masks, maps = _blob_dataset(seed, signal=0.6)
    fast = pixel_aupro(masks, maps)
    assert 0.0 < fast < 1.0
    assert fast == pytest.approx(_reference_aupro(masks, maps), abs=1e-2)


def test_aupro_exact_with_ties():
    # With every distinct score as a threshold the textbook curve is exact, ties included.
    masks, maps = _blob_dataset(9, signal=0.6)
    maps = np.round(maps * 4) / 4  # a handful of levels: many ties between defect and normal pixels
    exact = _reference_aupro(masks, maps, thresholds=np.unique(maps)[::-1])
    assert pixel_aupro(masks, maps) == pytest.approx(exact, abs=1e-9)
    for limit in (0.05, 0.3, 1.0):
        exact = _reference_aupro(masks, maps, fpr_limit=limit, thresholds=np.unique(maps)[::-1])
        assert pixel_aupro(masks, maps, fpr_limit=limit) == pytest.approx(exact, abs=1e-9)


def test_aupro_perfect_and_inverted_maps():
    masks, _ = _blob_dataset(4)
    assert pixel_aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-9)
    # Defects scored below every normal pixel: no region pixel is found before FPR reaches 1.
    assert pixel_aupro(masks, (~masks).astype(float)) == pytest.approx(0.0, abs=1e-9)


def test_aupro_connectivity():
    # Pixels (1, 1) and (2, 2) touch only at a corner: one region with 8-connectivity (MVTec), two with 4.
    masks = np.zeros((1, 12, 12), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True
    masks[0, 6:9, 6:9] = True
    maps = masks.astype(np.float32)
    maps[0, 2, 2] = -1.0  # missed; everything else defective is found at FPR 0
    assert pixel_aupro(masks, maps) == pytest.approx((0.5 + 1.0) / 2)
    assert pixel_aupro(masks, maps, connectivity=4) == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_aupro_weights_regions_equally():
    # A large region fully found and a small region missed: PRO is 0.5, not the pixel fraction.
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 2:20, 2:20] = True
    masks[0, 30, 30] = True
    maps = masks.astype(np.float32).copy()
    maps[0, 30, 30] = -1.0
    assert pixel_aupro(masks, maps) == pytest.approx(0.5, abs=1e-6)


def test_f1_max_matches_brute_force_and_sklearn():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding makes ties, which must be handled
    assert f1_max(labels, scores) == pytest.approx(_brute_force_f1_max(labels, scores), abs=1e-6)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        sklearn_best = np.nanmax(2 * precision * recall / (precision + recall))
    assert f1_max(labels, scores) == pytest.approx(sklearn_best, abs=1e-6)
    masks, maps = _blob_dataset(10)  # pooled pixels, quantised to keep the brute force short
    maps = np.round(maps, 2)
    assert f1_max(masks, maps) == pytest.approx(_brute_force_f1_max(masks.ravel(), maps.ravel()), abs=1e-6)
    assert f1_max([0, 1, 1], [0.2, 0.9, 0.1]) == pytest.approx(0.8)


def test_resize_mask_and_map():
    mask = np.zeros((800, 800), np.uint8)
    mask[:400] = 255
    small = resize_mask(mask)
    assert small.dtype == bool and small.shape == (224, 224)
    assert small[:112].all() and not small[112:].any()
    stack = resize_mask(np.stack([mask, mask[::-1]]), size=(100, 50))
    assert stack.shape == (2, 100, 50)

    rng = np.random.default_rng(6)
    amap = rng.uniform(size=(2, 56, 72)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(amap)[None], size=(224, 224), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize_map(amap), expected[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(resize_map(np.full((300, 300), 2.0)), 2.0)


def _class_results(seed: int = 7):
    masks, maps = _blob_dataset(seed, n_images=18)
    labels = masks.any(axis=(1, 2)).astype(int)
    types = np.where(labels == 1, np.array(["Burrs", "Missing", "Stains"])[np.arange(18) % 3], "good")
    scores = maps.max(axis=(1, 2))
    return labels, types, scores, masks, maps


def test_compute_anomaly_metrics_keys_and_per_type_values():
    labels, types, scores, masks, maps = _class_results()
    results = compute_anomaly_metrics(labels, types, scores, list(masks), list(maps), size=None)
    expected_keys = {"image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max"}
    present = sorted(set(types[labels == 1]))
    expected_keys |= {f"{level}_auroc_{t}" for level in ("image", "pixel") for t in present}
    assert set(results) == expected_keys
    assert all(0.0 <= v <= 1.0 for v in results.values())
    assert results["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-9)
    for t in present:
        subset = (types == t) | (labels == 0)
        assert results[f"image_auroc_{t}"] == pytest.approx(roc_auc_score(labels[subset], scores[subset]))
        assert results[f"pixel_auroc_{t}"] == pytest.approx(roc_auc_score(masks[subset].ravel(), maps[subset].ravel()))


def test_compute_anomaly_metrics_resizes_to_protocol_size():
    labels, types, scores, masks, maps = _class_results()
    big_masks = [np.kron(m, np.ones((4, 4), np.uint8)) * 255 for m in masks]  # 256 px, stored as 0/255
    results = compute_anomaly_metrics(labels, types, scores, big_masks, list(maps), size=64)
    reference = compute_anomaly_metrics(labels, types, scores, list(masks), list(maps), size=None)
    assert results == pytest.approx(reference)


def test_degenerate_inputs_give_nan_with_warning():
    masks = np.zeros((3, 16, 16), bool)
    maps = np.random.default_rng(8).uniform(size=(3, 16, 16))
    with pytest.warns(RuntimeWarning, match="undefined"):
        results = compute_anomaly_metrics([0, 0, 0], ["good"] * 3, [0.1, 0.2, 0.3], list(masks), list(maps), size=None)
    assert set(results) == {"image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max"}
    assert all(np.isnan(v) for v in results.values())


def test_mismatched_shapes_explain_the_fix():
    with pytest.raises(ValueError, match="resize"):
        pixel_auroc(np.zeros((2, 8, 8), bool), np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match="one of each per test image"):
        compute_anomaly_metrics([0, 1], ["good"], [0.1, 0.2], [np.zeros((4, 4))] * 2, [np.zeros((4, 4))] * 2)
