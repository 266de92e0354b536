"""Capture styles of the generator: how far the written images depart from the ideal render. ``clean`` is the
plain Lambertian render written as is; ``real`` adds what a camera sees in front of a glossy plastic toy: specular
highlights and cast shadows (both part of shading, see :class:`pad_nerfstudio.synth.raycast.Shading`), then per
image an exposure and white-balance gain applied to the whole frame (background included), a slight optical blur
and Gaussian sensor noise before the 8-bit rounding. Every effect can be switched off on its own for ablations
(``pad-synth --style real --without shadows,noise``); the random draws of the others do not change when one is off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pad_nerfstudio.synth.raycast import Shading

EFFECTS = {
    "gloss": "gloss",
    "shadows": "shadows",
    "exposure": "exposure",
    "white-balance": "white_balance",
    "blur": "blur_sigma",
    "noise": "noise_sigma",
}
"""Effect names accepted by ``--without`` and the :class:`CaptureStyle` field each one switches off."""
STYLES = ("clean", "real")
"""Names of the predefined styles (``--style``), each a :class:`CaptureStyle` constructor."""


@dataclass(frozen=True)
class CaptureStyle:
    """Settings of the capture effects; the defaults (all off) are the ``clean`` style.

    Example:
        >>> style = CaptureStyle.named("real").without(["noise"])
        >>> image = style.apply_photometric(render(scene, c2w, 64, shading=style.shading), rng)
    """

    gloss: bool = False
    """Blinn-Phong highlights of glossy plastic from the renderer's lights."""
    shadows: bool = False
    """Shadows cast by the object onto itself, per light (shadowed hits keep only the ambient term of that light)."""
    exposure: float = 0.0
    """Per image, the whole frame is multiplied by a gain drawn uniformly from [1 - exposure, 1 + exposure]."""
    white_balance: float = 0.0
    """Per image and colour channel, a further gain drawn uniformly from [1 - white_balance, 1 + white_balance]."""
    blur_sigma: float = 0.0
    """Standard deviation of the Gaussian optical blur in pixels (0: none)."""
    noise_sigma: float = 0.0
    """Standard deviation of the Gaussian sensor noise, in [0, 1] intensity units (0: none)."""

    @classmethod
    def clean(cls) -> CaptureStyle:
        """The ideal render: no capture effect (the generator's default, identical to its output before styles)."""
        return cls()

    @classmethod
    def real(cls) -> CaptureStyle:
        """All effects on, at strengths typical of photographs of a plastic toy under fixed lights."""
        return cls(gloss=True, shadows=True, exposure=0.08, white_balance=0.03, blur_sigma=0.5, noise_sigma=1.5 / 255.0)

    @classmethod
    def named(cls, name: str) -> CaptureStyle:
        """The style called ``name`` (one of ``STYLES``)."""
        if name not in STYLES:
            raise ValueError(f"unknown capture style {name!r}; expected one of {', '.join(STYLES)}")
        return getattr(cls, name)()

    def without(self, names: Iterable[str]) -> CaptureStyle:
        """A copy with the effects ``names`` (keys of ``EFFECTS``) switched off."""
        unknown = [name for name in names if name not in EFFECTS]
        if unknown:
            raise ValueError(
                f"unknown capture effect {', '.join(map(repr, unknown))}; expected comma-separated names from "
                f"{', '.join(EFFECTS)}"
            )
        off = {EFFECTS[name]: False if isinstance(getattr(self, EFFECTS[name]), bool) else 0.0 for name in names}
        return dataclasses.replace(self, **off)

    @property
    def shading(self) -> Shading:
        """The part of the style the renderer applies per surface hit."""
        return Shading(gloss=self.gloss, shadows=self.shadows)

    @property
    def is_clean(self) -> bool:
        """Every effect is off: the written images are the plain renders."""
        return self == CaptureStyle()

    def as_dict(self) -> dict:
        """The settings as plain JSON values (what attributes.json records)."""
        return dataclasses.asdict(self)

    def gains(self, rng: np.random.Generator) -> np.ndarray:
        """Per-channel gain (3,) of one image: exposure times white balance.

        Both uniforms are drawn whatever the settings, so switching one effect off leaves the other's draw as it was.
        """
        exposure = 1.0 + self.exposure * rng.uniform(-1.0, 1.0)
        white_balance = 1.0 + self.white_balance * rng.uniform(-1.0, 1.0, size=3)
        return exposure * white_balance

    def apply_photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The per-image effects on a rendered RGB image (H, W, 3) in [0, 1]: gains, blur, noise.

        Gains act on the whole frame and saturate at 1, so a brighter draw clips the white background like a real
        sensor and a darker one turns it light grey. The result is not clipped or rounded (``to_uint8`` does that).
        Returns ``image`` itself when every per-image effect is off.
        """
        if not (self.exposure or self.white_balance or self.blur_sigma or self.noise_sigma):
            return image
        gains = self.gains(rng)
        image = np.minimum(np.asarray(image, dtype=np.float64) * gains, 1.0)
        if self.blur_sigma:
            from scipy.ndimage import gaussian_filter

            image = gaussian_filter(image, sigma=(self.blur_sigma, self.blur_sigma, 0.0), mode="nearest")
        if self.noise_sigma:
            image = image + rng.normal(0.0, self.noise_sigma, size=image.shape)
        return image
