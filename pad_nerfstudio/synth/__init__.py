"""Procedural MAD-format data: LEGO-like brick animals rendered by analytic ray casting, with 3D-consistent
Burrs / Missing / Stains defects and pixel-exact masks, written in the MAD-Sim folder layout (``pad-synth``), as
ideal renders (``--style clean``) or with the look of real photographs (``--style real``: gloss, shadows, exposure,
white balance, blur, noise), from MAD-Sim's posed ring of views on white (``--capture ring``) or from MAD-Real-like
unposed hand-held views of the toy on a textured table (``--capture handheld``).
"""

from pad_nerfstudio.synth.capture import CaptureStyle
from pad_nerfstudio.synth.defects import DEFECT_TYPES
from pad_nerfstudio.synth.generate import (
    CAPTURES,
    CLASS_NAMES,
    class_backdrop,
    generate_dataset,
    handheld_poses,
    render_clean_view,
    resolve_capture_style,
    resolve_class_names,
)

__all__ = [
    "CAPTURES",
    "CLASS_NAMES",
    "DEFECT_TYPES",
    "CaptureStyle",
    "class_backdrop",
    "generate_dataset",
    "handheld_poses",
    "render_clean_view",
    "resolve_capture_style",
    "resolve_class_names",
]
