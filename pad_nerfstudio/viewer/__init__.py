"""Interactive inspection in the nerfstudio viewer: the `InspectionPanel` that `OmniposePipeline` exposes."""

from pad_nerfstudio.viewer.inspection_panel import InspectionPanel

__all__ = ["InspectionPanel"]
