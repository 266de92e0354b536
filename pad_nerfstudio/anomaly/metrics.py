"""Dataset-level anomaly-detection metrics under the PAD / MVTec AD protocol.

These are pure numpy functions that take the scores and maps of *all* test images of one
class at once, because every metric here (AUROC, AUPRO, F1-max) ranks across images and
cannot be averaged per image. Conventions follow the PAD benchmark: image score = one
float per image, anomaly maps and ground-truth masks compared at 224x224 (masks resized
with nearest neighbour), pixel AUROC over all pixels of all images pooled (good images
contribute only negative pixels), and AUPRO as defined by MVTec AD (per-region overlap
against the global false-positive rate, integrated up to FPR 0.3 and divided by 0.3).
All results are fractions in [0, 1]; a metric that is undefined for the given data
(e.g. no anomalous image) is NaN with a warning rather than an exception, so one odd
class does not abort a whole benchmark.
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import warnings
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from jaxtyping import Bool, Float, Shaped
from scipy import ndimage
from sklearn.metrics import roc_auc_score

ArrayLike = Union[np.ndarray, Sequence]

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "f1_max",
    "resize_mask",
    "resize_map",
    "compute_anomaly_metrics",
]


def _warn_nan(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined ({reason}); returning NaN.", RuntimeWarning, stacklevel=3)
    return float("nan")


def _as_binary(mask: np.ndarray) -> np.ndarray:
    """Binarise a mask stored as bool, {0, 1} or {0, 255} (MAD ships 8-bit PNG masks)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        # An RGB(A) mask image: any lit channel marks the defect.
        mask = mask[..., :3].max(axis=-1)
    threshold = 0.5 if mask.size == 0 or mask.max() <= 1 else 127.5
    return mask > threshold


def _stack_masks(masks: ArrayLike) -> Bool[np.ndarray, "N H W"]:
    if isinstance(masks, np.ndarray):
        arr = masks if masks.dtype == bool else _as_binary(masks)
    else:
        arr = np.stack([_as_binary(m) for m in masks])
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"Expected masks of shape (N, H, W), got {arr.shape}.")
    return arr


def _stack_maps(maps: ArrayLike) -> Float[np.ndarray, "N H W"]:
    arr = np.asarray(maps if isinstance(maps, np.ndarray) else np.stack([np.asarray(m) for m in maps]))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"Expected anomaly maps of shape (N, H, W), got {arr.shape}.")
    # float32 halves memory and sorting time for the pooled pixel metrics; scores only need rank order.
    return arr.astype(np.float32, copy=False)


def _check_same_shape(masks: np.ndarray, maps: np.ndarray) -> None:
    if masks.shape != maps.shape:
        raise ValueError(
            f"Ground-truth masks {masks.shape} and anomaly maps {maps.shape} differ in shape; resize both to the "
            "protocol size first (resize_mask / resize_map, or compute_anomaly_metrics(..., size=224))."
        )


def _check_finite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{what} contain NaN or infinite values; check the scorer output.")


def _sorted_split(labels: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(negative scores sorted ascending, positive scores): the one O(n log n) step shared by the pixel metrics.

    Sorting only the values of the (majority) negatives is about twice as fast as an argsort of all pixels,
    and every pixel metric here can be read off it with binary searches of the (few) positive scores.
    """
    return np.sort(scores[~labels]), scores[labels]


def _auroc_sorted(negatives: np.ndarray, positives: np.ndarray) -> float:
    # Mann-Whitney form: P(positive > negative) + 0.5 P(tie), exactly the trapezoidal ROC area with ties.
    below = np.searchsorted(negatives, positives, side="left").astype(np.float64)
    not_above = np.searchsorted(negatives, positives, side="right").astype(np.float64)
    return float((below + not_above).sum() / (2.0 * positives.size * negatives.size))


def _f1_max_sorted(negatives: np.ndarray, positives: np.ndarray) -> float:
    # The best threshold is always one of the positive scores (lowering it further only adds false positives),
    # so evaluate F1 = 2 TP / (TP + FP + P) at each distinct positive score, predicting "score >= threshold".
    thresholds, counts = np.unique(positives, return_counts=True)
    true_positives = np.cumsum(counts[::-1])[::-1].astype(np.float64)
    false_positives = negatives.size - np.searchsorted(negatives, thresholds, side="left")
    return float((2.0 * true_positives / (true_positives + false_positives + positives.size)).max())


def _aupro_sorted(negatives: np.ndarray, positives: np.ndarray, weights: np.ndarray, fpr_limit: float) -> float:
    """Area under PRO(FPR) up to fpr_limit, divided by fpr_limit, from sorted negatives and weighted positives.

    The curve has one point per distinct score t: FPR(t) = #negatives >= t / N, PRO(t) = W(>= t), the summed
    weights of positives >= t. Walking the negatives from the highest score down, each one widens FPR by 1 / N;
    the area of its strip is 1 / N times the mean PRO across it. Between two distinct scores the curve is a
    straight segment (trapezoid rule), so inside a group of n_g tied negatives at score v, whose positives
    of score exactly v weigh w_v, the i-th strip has mean height W(> v) + w_v (i + 0.5) / n_g. The strip that
    straddles fpr_limit counts only up to the limit, i.e. the curve is interpolated linearly there.
    """
    n_neg = negatives.size
    steps = fpr_limit * n_neg
    n_full = min(int(np.floor(steps + 1e-9)), n_neg)
    partial = steps - n_full if n_full < n_neg else 0.0
    k = n_full + (1 if partial > 1e-12 else 0)
    if k == 0:
        return 0.0
    top = negatives[::-1][:k]  # the k highest negative scores, descending

    order = np.argsort(positives)
    pos_sorted = positives[order]
    above = np.append(np.cumsum(weights[order][::-1])[::-1], 0.0)  # above[i] = weight of pos_sorted[i:]
    weight_greater = above[np.searchsorted(pos_sorted, top, side="right")]
    weight_at_least = above[np.searchsorted(pos_sorted, top, side="left")]

    # Position of each of the k negatives inside its tie group; the last group may continue past k.
    new_group = np.append(True, top[1:] != top[:-1])
    group_start = np.flatnonzero(new_group)
    group_id = np.cumsum(new_group) - 1
    group_size = np.diff(np.append(group_start, k))
    group_size[-1] = np.count_nonzero(negatives == top[-1])
    index_in_group = np.arange(k) - group_start[group_id]
    size = group_size[group_id]

    fraction = np.ones(k)
    if partial > 1e-12:
        fraction[-1] = partial
    height = weight_greater + (weight_at_least - weight_greater) * (index_in_group + 0.5 * fraction) / size
    return float(np.sum(height * fraction) / n_neg / fpr_limit)


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level AUROC: area under the ROC of one score per image (label 1 = anomalous).

    Example:
        >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"Got {labels.size} labels but {scores.size} scores.")
    _check_finite(scores, "Image scores")
    if labels.all() or not labels.any():
        return _warn_nan("image AUROC", "needs both good and anomalous images")
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks: Shaped[ArrayLike, "N H W"], maps: Float[ArrayLike, "N H W"]) -> float:
    """Pixel-level AUROC over all pixels of all images pooled (good images have all-zero masks).

    Equal to ``sklearn.metrics.roc_auc_score(masks.ravel(), maps.ravel())``, several times faster.

    Example:
        >>> m = np.zeros((1, 4, 4), bool); m[0, :2] = True
        >>> pixel_auroc(m, m.astype(float))
        1.0
    """
    masks, maps = _stack_masks(masks), _stack_maps(maps)
    _check_same_shape(masks, maps)
    _check_finite(maps, "Anomaly maps")
    if masks.all() or not masks.any():
        return _warn_nan("pixel AUROC", "needs both defect and defect-free pixels")
    return _auroc_sorted(*_sorted_split(masks.ravel(), maps.ravel()))


def f1_max(labels: Shaped[ArrayLike, "..."], scores: Float[ArrayLike, "..."]) -> float:
    """Best F1 score over all decision thresholds (anomalib's F1Max); works on images or pooled pixels.

    Equal to the maximum F1 along ``sklearn.metrics.precision_recall_curve``, without its overhead on
    millions of pixels.

    Example:
        >>> f1_max([0, 1, 1], [0.2, 0.9, 0.1])
        0.8
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores).ravel()
    # Keep the caller's precision (image scores may be float64); only float32 maps stay float32.
    scores = scores.astype(np.float64 if scores.dtype == np.float64 else np.float32, copy=False)
    if labels.shape != scores.shape:
        raise ValueError(f"Got {labels.size} labels but {scores.size} scores.")
    _check_finite(scores, "Scores")
    if not labels.any():
        return _warn_nan("F1-max", "there are no positive samples")
    return _f1_max_sorted(*_sorted_split(labels, scores))


def _region_weights(masks: np.ndarray, connectivity: int) -> Tuple[np.ndarray, int]:
    """Weight of each defect pixel in PRO: 1 / (size of its connected region * number of regions)."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
    # A 3x3x3 structure with only its middle plane set labels every image independently in one call, with
    # region ids unique across images.
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    regions, n_regions = ndimage.label(masks, structure=structure)
    if n_regions == 0:
        return np.zeros(0), 0
    region_ids = regions[masks]  # same order as maps[masks]
    region_sizes = np.bincount(region_ids, minlength=n_regions + 1).astype(np.float64)
    return 1.0 / (region_sizes[region_ids] * n_regions), n_regions


def pixel_aupro(
    masks: Shaped[ArrayLike, "N H W"],
    maps: Float[ArrayLike, "N H W"],
    fpr_limit: float = 0.3,
    connectivity: int = 8,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD's AUPRO).

    Each connected component of each ground-truth mask is one region (8-connectivity by
    default, as in the MVTec AD evaluation code, which labels with a 3x3 structuring element).
    For a threshold t, PRO(t) is the mean over all regions of the fraction of the region's
    pixels with score >= t, and FPR(t) is the fraction of all defect-free pixels with
    score >= t. The curve through every distinct score, starting at (0, 0), is integrated with
    the trapezoid rule from FPR 0 to ``fpr_limit`` (interpolating linearly at the limit) and
    divided by ``fpr_limit``, so a perfect map scores 1.0 and a random one about fpr_limit / 2.

    Each defect pixel carries its share of PRO (1 / (region size * number of regions)), so
    PRO(t) is a weighted count and the whole curve follows from one sort of the negative
    scores and binary searches, with no pass per threshold.

    Example:
        >>> m = np.zeros((1, 8, 8), bool); m[0, 2:4, 2:4] = True
        >>> pixel_aupro(m, m.astype(float))
        1.0
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    masks, maps = _stack_masks(masks), _stack_maps(maps)
    _check_same_shape(masks, maps)
    _check_finite(maps, "Anomaly maps")
    return _pixel_aupro(masks, maps, *_sorted_split(masks.ravel(), maps.ravel()), fpr_limit, connectivity)


def pro_curve(
    masks: Shaped[ArrayLike, "N H W"], maps: Float[ArrayLike, "N H W"], fpr_limit: float = 0.3, points: int = 200
) -> Tuple[np.ndarray, np.ndarray]:
    """Points (FPR, PRO) of the per-region-overlap curve up to ``fpr_limit``, for plotting (see `pixel_aupro`).

    Thresholds are the negative-score quantiles of ``points`` evenly spaced FPRs.

    Example:
        >>> m = np.zeros((1, 8, 8), bool); m[0, 2:4, 2:4] = True
        >>> fpr, pro = pro_curve(m, m.astype(float), points=3)
        >>> pro.tolist()
        [1.0, 1.0, 1.0]
    """
    masks, maps = _stack_masks(masks), _stack_maps(maps)
    _check_same_shape(masks, maps)
    weights, n_regions = _region_weights(masks, 8)
    negatives = np.sort(maps[~masks])
    positives = maps[masks]
    if n_regions == 0 or negatives.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(positives)
    positives = positives[order]
    above = np.append(np.cumsum(weights[order][::-1])[::-1], 0.0)  # weight of positives[i:]
    target = np.linspace(0.0, fpr_limit, points)
    # The threshold that lets through a fraction `target` of the negatives (at least the top one is excluded).
    index = np.clip(np.ceil((1.0 - target) * negatives.size).astype(np.int64), 0, negatives.size - 1)
    above_all = np.nextafter(negatives[-1:], np.array(np.inf, negatives.dtype))  # in the maps' own precision
    thresholds = np.where(target > 0, negatives[index], above_all)
    fpr = (negatives.size - np.searchsorted(negatives, thresholds, side="left")) / negatives.size
    pro = above[np.searchsorted(positives, thresholds, side="left")]
    return fpr, np.minimum(pro, 1.0)


def _pixel_aupro(masks, maps, negatives, positives, fpr_limit: float, connectivity: int = 8) -> float:
    weights, n_regions = _region_weights(masks, connectivity)
    if n_regions == 0:
        return _warn_nan("AUPRO", "there are no defect regions")
    if negatives.size == 0:
        return _warn_nan("AUPRO", "there are no defect-free pixels")
    # min() only absorbs floating-point rounding above 1 of a perfect map.
    return min(_aupro_sorted(negatives, positives, weights, fpr_limit), 1.0)


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    # Sample at output pixel centres (PIL NEAREST / torch "nearest-exact"), so no half-pixel drift.
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_mask(mask: Shaped[np.ndarray, "*n H W"], size: Union[int, tuple] = 224) -> Bool[np.ndarray, "*n h w"]:
    """Nearest-neighbour resize of binary mask(s) to ``size`` (int = square, or (height, width)).

    Accepts bool, {0, 1} or {0, 255} masks, one (H, W) or a stack (N, H, W); returns bool.

    Example:
        >>> resize_mask(np.full((800, 800), 255, np.uint8)).shape
        (224, 224)
    """
    h_out, w_out = (size, size) if isinstance(size, int) else size
    mask = _as_binary(np.asarray(mask))
    rows = _nearest_indices(mask.shape[-2], h_out)
    cols = _nearest_indices(mask.shape[-1], w_out)
    return mask[..., rows[:, None], cols[None, :]]


def _linear_weights(n_in: int, n_out: int) -> tuple:
    # Half-pixel-centre bilinear (torch align_corners=False, cv2 INTER_LINEAR) without antialiasing.
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_map(amap: Float[np.ndarray, "*n H W"], size: Union[int, tuple] = 224) -> Float[np.ndarray, "*n h w"]:
    """Bilinear resize of anomaly map(s) to ``size`` (int = square, or (height, width)); returns float32.

    Example:
        >>> resize_map(np.ones((2, 100, 100))).shape
        (2, 224, 224)
    """
    h_out, w_out = (size, size) if isinstance(size, int) else size
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape[-2:] == (h_out, w_out):
        return amap
    r0, r1, wr = _linear_weights(amap.shape[-2], h_out)
    c0, c1, wc = _linear_weights(amap.shape[-1], w_out)
    rows = amap[..., r0, :] * (1 - wr)[:, None] + amap[..., r1, :] * wr[:, None]
    return rows[..., c0] * (1 - wc) + rows[..., c1] * wc


def compute_anomaly_metrics(
    labels: ArrayLike,
    defect_types: Sequence[str],
    scores: ArrayLike,
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    size: Union[int, tuple, None] = 224,
    fpr_limit: float = 0.3,
) -> Dict[str, float]:
    """All PAD-benchmark metrics of one class, as fractions in [0, 1].

    Args:
        labels: 1 for anomalous test images, 0 for good ones.
        defect_types: the test folder of each image (e.g. "Burrs", "Missing", "Stains", "good").
        scores: one anomaly score per image.
        masks: ground-truth mask per image (all zero for good images), any size.
        maps: anomaly map per image, any size.
        size: masks (nearest) and maps (bilinear) are resized to this before pixel metrics
            (224 in the PAD protocol); None requires them to already match.
        fpr_limit: upper FPR limit of AUPRO.

    Returns:
        ``image_auroc``, ``pixel_auroc``, ``pixel_aupro``, ``image_f1_max``, ``pixel_f1_max`` and, per
        defect type T, ``image_auroc_T`` and ``pixel_auroc_T`` (type T's images against the good images).

    Example:
        >>> m = [np.zeros((8, 8)), np.pad(np.ones((2, 2)), 3)]
        >>> r = compute_anomaly_metrics([0, 1], ["good", "Stains"], [0.1, 0.9], m, m, size=None)
        >>> r["image_auroc"], r["pixel_auroc_Stains"]
        (1.0, 1.0)
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    defect_types = np.asarray([str(t) for t in defect_types])
    n = labels.size
    if not (scores.size == defect_types.size == len(masks) == len(maps) == n):
        raise ValueError(
            f"Inconsistent inputs: {n} labels, {scores.size} scores, {defect_types.size} defect types, "
            f"{len(masks)} masks, {len(maps)} maps (one of each per test image)."
        )
    if size is None:
        mask_stack, map_stack = _stack_masks(masks), _stack_maps(maps)
    else:
        mask_stack = np.stack([resize_mask(m, size) for m in masks])
        map_stack = np.stack([resize_map(m, size) for m in maps])
    _check_same_shape(mask_stack, map_stack)
    if mask_stack[~labels].any():
        warnings.warn("Some images labelled good have non-empty masks; their pixels count as defects.", stacklevel=2)

    _check_finite(map_stack, "Anomaly maps")
    flat_masks = mask_stack.ravel()
    has_both = flat_masks.any() and not flat_masks.all()
    negatives, positives = _sorted_split(flat_masks, map_stack.ravel())  # shared by the three pixel metrics
    no_defect = "no defect pixel or no normal pixel"  # the pixel pool lacks one class
    results = {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": _auroc_sorted(negatives, positives) if has_both else _warn_nan("pixel AUROC", no_defect),
        "pixel_aupro": _pixel_aupro(mask_stack, map_stack, negatives, positives, fpr_limit),
        "image_f1_max": f1_max(labels, scores),
        "pixel_f1_max": _f1_max_sorted(negatives, positives) if positives.size else _warn_nan("pixel F1", no_defect),
    }
    good = ~labels
    for defect in sorted(set(defect_types[labels].tolist())):
        subset = good | (labels & (defect_types == defect))
        results[f"image_auroc_{defect}"] = image_auroc(labels[subset], scores[subset])
        results[f"pixel_auroc_{defect}"] = pixel_auroc(mask_stack[subset], map_stack[subset])
    return results
