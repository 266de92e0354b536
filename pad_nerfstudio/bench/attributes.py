"""Per-class object attributes for the attribute study (the PAD paper's Figures 3 and 6).

The paper relates each class's results to the object's shape complexity and colour contrast. Two sources:

- ``pad-synth``: the generator's ``attributes.json`` at the dataset root (exact, from the brick model):
  ``shape_complexity`` = 1 - brick volume / convex-hull volume, ``colour_contrast`` = mean CIE76 delta E
  between face-adjacent bricks (see `pad_nerfstudio.synth.generate`).
- ``images``: computed from the training images, for MAD or any class without that file. Definitions:

  * ``shape_complexity``: mean over evenly spread training views of 1 - silhouette area / convex-hull area
    of the silhouette (pixels differing from the white background by more than 0.05 in a channel). The 2-D
    analogue of pad-synth's definition: 0 for a convex outline, towards 1 for limbs, necks and tails.
  * ``colour_contrast``: the object's pixels (silhouette eroded by one pixel, to drop edges blended with the
    background) of those views are clustered into 8 colours in CIELAB (deterministic k-means); the value is
    the mean CIE76 delta E between the cluster colours of 4-neighbouring object pixels that fall into
    different clusters, i.e. the average colour step across region boundaries, weighted by boundary length.
    Shading splits one paint colour into lighter and darker regions, which adds small (lightness) steps.

Both are stored with every run, so reports need no access to the data. The study uses pad-synth's values
when every class has them, else the image-based ones for all classes, so one definition holds across a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import cv2
import numpy as np

from pad_nerfstudio.data.mad_dataset import load_rgb
from pad_nerfstudio.data.mad_layout import read_training_views, spread_subset

__all__ = ["ATTRIBUTES", "class_attributes", "image_attributes", "synth_attributes", "silhouette", "convexity_deficit"]

ATTRIBUTES = ("shape_complexity", "colour_contrast")
"""The two attributes of the study, in plot order."""

BACKGROUND_TOLERANCE = 0.05
WORKING_SIZE = 200
"""Views are analysed at most this large, so the definition does not depend on MAD's 800 px vs 200 px."""


def synth_attributes(class_dir: Path) -> Optional[Dict[str, Any]]:
    """pad-synth's attributes of this class from ``<root>/attributes.json``, or None when the class is not listed."""
    path = Path(class_dir).parent / "attributes.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    entry = table.get(Path(class_dir).name) if isinstance(table, dict) else None
    if not isinstance(entry, dict) or not all(isinstance(entry.get(name), (int, float)) for name in ATTRIBUTES):
        return None
    return dict(entry)


def silhouette(image: np.ndarray, tolerance: float = BACKGROUND_TOLERANCE) -> np.ndarray:
    """Pixels of an RGB image in [0, 1] that differ from the white background in any channel by > tolerance."""
    return (1.0 - image[..., :3]).max(axis=-1) > tolerance


def convexity_deficit(mask: np.ndarray) -> float:
    """1 - area / convex-hull area of a binary silhouette (hull rasterised, so both count pixels alike).

    Example:
        >>> mask = np.zeros((20, 20), bool); mask[5:15, 5:15] = True
        >>> convexity_deficit(mask)
        0.0
    """
    points = np.argwhere(mask)[:, ::-1].astype(np.int32)  # (x, y)
    if len(points) < 3:
        return 0.0
    hull = cv2.convexHull(points)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(filled, hull, 1)
    hull_area = float(np.count_nonzero(filled | mask))
    return float(max(0.0, 1.0 - mask.sum() / hull_area))


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    # OpenCV's float conversion is CIELAB (D65) with L in [0, 100], the scale of delta E.
    return cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2LAB)


def _kmeans(points: np.ndarray, clusters: int, iterations: int = 20) -> np.ndarray:
    """Cluster centres by Lloyd's algorithm from a farthest-point start (deterministic)."""
    clusters = min(clusters, len(points))
    centres = [points[0]]
    distance = np.linalg.norm(points - points[0], axis=1)
    while len(centres) < clusters:
        centres.append(points[int(np.argmax(distance))])
        distance = np.minimum(distance, np.linalg.norm(points - centres[-1], axis=1))
    centres = np.stack(centres).astype(np.float64)
    for _ in range(iterations):
        labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        for k in range(len(centres)):
            members = points[labels == k]
            if len(members):
                centres[k] = members.mean(axis=0)
    return centres


def image_attributes(class_dir: Path, views: int = 24, colours: int = 8) -> Dict[str, float]:
    """Shape complexity and colour contrast of a class computed from ``views`` spread training views."""
    training = read_training_views(Path(class_dir))
    positions = training.camera_to_worlds[:, :3, 3]
    chosen = spread_subset(positions - positions.mean(0), views)
    deficits, labs, masks = [], [], []
    for index in chosen:
        path = training.image_paths[int(index)]
        image = load_rgb(path)
        scale = min(1.0, WORKING_SIZE / max(image.shape[:2]))
        if scale < 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        rgb = image.astype(np.float32) / 255.0
        mask = silhouette(rgb)
        deficits.append(convexity_deficit(mask))
        inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        labs.append(_to_lab(rgb))
        masks.append(inner)
    pixels = np.concatenate([lab[mask] for lab, mask in zip(labs, masks)]) if masks else np.zeros((0, 3))
    contrast = 0.0
    if len(pixels) >= colours:
        rng = np.random.default_rng(0)
        sample = pixels[rng.choice(len(pixels), min(len(pixels), 20000), replace=False)].astype(np.float64)
        centres = _kmeans(sample, colours)
        steps = []
        for lab, mask in zip(labs, masks):
            labels = np.argmin(((lab[..., None, :] - centres[None, None]) ** 2).sum(-1), axis=-1)
            for a, b, both in (
                (labels[:, 1:], labels[:, :-1], mask[:, 1:] & mask[:, :-1]),
                (labels[1:], labels[:-1], mask[1:] & mask[:-1]),
            ):
                boundary = both & (a != b)
                steps.append(np.linalg.norm(centres[a[boundary]] - centres[b[boundary]], axis=-1))
        steps = np.concatenate(steps) if steps else np.zeros(0)
        contrast = float(steps.mean()) if steps.size else 0.0
    return {"shape_complexity": round(float(np.mean(deficits)), 4), "colour_contrast": round(contrast, 3)}


def class_attributes(class_dir: Path) -> Dict[str, Optional[Dict[str, Any]]]:
    """Both attribute sets of a class: ``{"pad-synth": ... or None, "images": ...}``."""
    return {"pad-synth": synth_attributes(class_dir), "images": image_attributes(class_dir)}
