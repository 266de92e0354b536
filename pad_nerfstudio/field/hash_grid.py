"""Multiresolution hash-grid encoding (Instant-NGP) behind the same interface as the vector-matrix grid.

nerfstudio's `HashEncoding` does the work: tiny-cuda-nn's fused kernels when tinycudann is installed and CUDA is
present, nerfstudio's torch implementation otherwise. Both keep the features differentiable with respect to the
sample positions (torch: through the trilinear weights; tiny-cuda-nn: its grid encodings compute input gradients
when the input requires them), which pose refinement through the frozen field relies on.

The two implementations lay out their tables differently (tiny-cuda-nn indexes coarse levels densely, the torch
one hashes every level), so a field trained with one cannot be loaded by the other.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.utils.external import TCNN_EXISTS
from torch import Tensor, nn

HashImplementation = Literal["auto", "tcnn", "torch"]


def resolve_implementation(implementation: HashImplementation) -> Literal["tcnn", "torch"]:
    """``auto``: tiny-cuda-nn where it can run (installed, CUDA present), nerfstudio's torch hash grid elsewhere.

    Asking for ``tcnn`` where it cannot run is an error rather than a silent fallback: the two train different
    tables, and a user who asked for the fast one should know they did not get it.
    """
    usable = TCNN_EXISTS and torch.cuda.is_available()
    if implementation == "auto":
        return "tcnn" if usable else "torch"
    if implementation == "tcnn" and not usable:
        reason = "tinycudann is not installed" if not TCNN_EXISTS else "no CUDA device is available"
        raise ValueError(
            f"The tcnn hash grid needs tinycudann and CUDA, but {reason}; "
            "use --pipeline.model.hash-implementation torch."
        )
    return implementation


class HashGrid(nn.Module):
    """Hash-grid features of positions in [-1, 1]^3, levels spaced geometrically from ``min_resolution`` to
    ``max_resolution`` (``levels`` x ``features_per_level`` features, ``2 ** log2_table_size`` entries a level)."""

    def __init__(
        self,
        min_resolution: int,
        max_resolution: int,
        levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        implementation: HashImplementation = "auto",
    ):
        super().__init__()
        self.implementation = resolve_implementation(implementation)
        self.encoding = HashEncoding(
            num_levels=levels,
            min_res=min_resolution,
            max_res=max_resolution,
            log2_hashmap_size=log2_table_size,
            features_per_level=features_per_level,
            implementation=self.implementation,
        )

    @property
    def out_dim(self) -> int:
        return self.encoding.get_out_dim()

    def forward(self, positions: Float[Tensor, "n 3"]) -> Float[Tensor, "n f"]:
        unit = ((positions + 1.0) / 2.0).clamp(0.0, 1.0)  # HashEncoding's domain is the unit cube
        return self.encoding(unit).float()  # tiny-cuda-nn returns half precision

    def table(self) -> Tensor:
        """All learned table entries (one flat parameter in either implementation)."""
        tcnn = self.encoding.tcnn_encoding
        return tcnn.params if tcnn is not None else self.encoding.hash_table

    def l1(self) -> Tensor:
        """Mean absolute value of the table: the sparsity prior that clears floaters."""
        return self.table().abs().mean()

    def total_variation(self) -> Tensor:
        raise NotImplementedError(
            "The total-variation prior needs the vm encoding: hashed cells have no neighbours to compare."
        )
