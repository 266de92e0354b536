"""Compatibility fixes for running nerfstudio 1.1.5 on current PyTorch, applied on plugin import.

torch >= 2.6 loads checkpoints with ``weights_only=True``; nerfstudio checkpoints hold numpy scalars, so
``ns-eval``, ``ns-viewer`` and resuming would fail with "Unsupported global". Allow-listing the numpy
types that appear in them keeps the safe loader (no arbitrary pickles) and makes those commands work.
"""

from __future__ import annotations

import numpy as np
import torch


def allow_numpy_in_checkpoints() -> None:
    scalar = np.core.multiarray.scalar  # type: ignore[attr-defined]
    dtypes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtypes])
