"""How hard a class's test views are (``pad-synth --difficulty``): how far test cameras leave the upright,
centred framing of the training grid, and how small the defects may be.

``standard`` is what pad-synth always drew (roll within ±4°, look-at jitter of σ 0.03, defects of at least 0.1 %
of the image). ``hard`` reproduces the conditions under which unseen MAD-format data exposed the pose tail and the
smallest defects: roll up to ±5°, the look-at point anywhere within 0.05 of the object centre, defects drawn at
0.6x the size and kept from 20 px up (at 160 px, a burr can be a 4 x 5 px box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pad_nerfstudio.synth.cameras import CAMERA_RADIUS, TEST_ROLL_MAX_DEG, random_test_pose


@dataclass(frozen=True)
class Difficulty:
    """Test-view conditions of a generated class."""

    name: str
    roll_max_deg: float = TEST_ROLL_MAX_DEG
    """In-plane roll of test cameras, uniform within ±this."""
    look_at_radius: float | None = None
    """The look-at point is uniform in a ball of this radius around the object centre; None: the standard
    Gaussian jitter of :func:`~pad_nerfstudio.synth.cameras.random_test_pose`."""
    defect_scale: float = 1.0
    """Burr and stain sizes relative to the standard ones."""
    min_defect_fraction: float = 0.001
    """Smallest accepted defect mask as a fraction of the image's pixels."""
    min_defect_pixels: int = 4

    def test_pose(self, rng: np.random.Generator, radius: float = CAMERA_RADIUS) -> np.ndarray:
        """A random off-grid test camera-to-world matrix under these conditions."""
        return random_test_pose(rng, radius, roll_max_deg=self.roll_max_deg, look_at_radius=self.look_at_radius)

    def min_mask_pixels(self, size: int) -> int:
        """Smallest accepted defect mask of a ``size`` x ``size`` image."""
        return max(self.min_defect_pixels, math.ceil(self.min_defect_fraction * size * size))


STANDARD = Difficulty("standard")
HARD = Difficulty("hard", roll_max_deg=5.0, look_at_radius=0.05, defect_scale=0.6, min_defect_fraction=0.0,
                  min_defect_pixels=20)  # fmt: skip
DIFFICULTIES = {difficulty.name: difficulty for difficulty in (STANDARD, HARD)}
