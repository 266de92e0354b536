"""What inspecting one query image yields: the end of the chain data -> field -> pose -> anomaly, as a value.

`OmniposePipeline.inspect` returns it (ns-eval collects one per test query); the viewer's inspection panel shows it.
It lives apart from both so that the panel depends on this value and not on the pipeline that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from jaxtyping import Float
from torch import Tensor


@dataclass
class Inspection:
    """What the pipeline finds for one query image."""

    camera_to_world: Float[Tensor, "3 4"]
    """Estimated pose, in the frame of the class's transforms.json (OpenGL convention)."""
    reference: Float[Tensor, "H W 3"]
    """Anomaly-free rendering of the object at the estimated pose, RGB in [0, 1], at the query's size, in the
    query's colours (exposure and white balance fitted, see `colour_transform`)."""
    anomaly_map: Float[Tensor, "S S"]
    """Pixel anomaly scores at the scorer's map size (224 in the PAD protocol)."""
    score: float
    """Image anomaly score."""
    pose: Dict[str, Any]
    """Diagnostics of the pose estimate (retrieved views, fit score, seconds per stage)."""
    colour_transform: Float[Tensor, "3 4"]
    """Per-channel gain and offset, as a (3, 4) affine map, from the field's canonical colours to the query's
    (identity without the scorer's colour fit)."""
    seconds: Dict[str, float]
    """Wall time per stage: pose, render, score."""
