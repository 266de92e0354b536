"""Pose-agnostic anomaly detection (PAD / OmniposeAD) as a nerfstudio plugin.

Importing the package hides two deprecation warnings that current torch prints while nerfstudio 1.1.5 and timm
0.6.7 are imported (their ``torch.jit.script`` and ``torch.cuda.amp.custom_fwd`` decorators): the user can do
nothing about them, and they would open every pad-bench and pad-demo run (and ns-train, from the plugin on).
The filters go after any the user set (``-W``, ``PYTHONWARNINGS``), so asking for these warnings still shows them.
"""

import warnings

warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, append=True)
warnings.filterwarnings(
    "ignore",
    r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated",
    FutureWarning,
    r"nerfstudio\.",
    append=True,
)
