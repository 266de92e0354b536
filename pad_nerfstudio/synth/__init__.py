"""Procedural MAD-format data: LEGO-like brick animals rendered by analytic ray casting, with 3D-consistent
Burrs / Missing / Stains defects and pixel-exact masks, written in the MAD-Sim folder layout (``pad-synth``), as
ideal renders (``--style clean``) or with the look of real photographs (``--style real``: gloss, shadows, exposure,
white balance, blur, noise).
"""

from pad_nerfstudio.synth.capture import CaptureStyle
from pad_nerfstudio.synth.defects import DEFECT_TYPES
from pad_nerfstudio.synth.generate import (
    CLASS_NAMES,
    generate_dataset,
    render_clean_view,
    resolve_capture_style,
    resolve_class_names,
)

__all__ = [
    "CLASS_NAMES",
    "DEFECT_TYPES",
    "CaptureStyle",
    "generate_dataset",
    "render_clean_view",
    "resolve_capture_style",
    "resolve_class_names",
]
