"""Appearance of real captures: per-image colour transforms, learned for training views and fitted for queries.

Real photos (and MAD-Sim's renders of glossy plastic) differ from image to image by exposure and white balance,
which a radiance field of the object cannot explain. Two pieces keep the field and the anomaly map about the
object itself:

- `PerImageColourTransform`: while training, every training image gets a small affine colour transform
  (``colour' = (I + M_i) colour + b_i``, regularised towards identity) applied to the rendered colour before the
  loss, in the spirit of nerfstudio's appearance embeddings. The field converges to one canonical look (the
  images' average), and rendering for pose estimation or scoring never applies the transforms.
- `fit_colour_transform`: at query time, a per-channel gain and offset from the field's rendering to the query
  is fitted robustly (iteratively reweighted least squares with Tukey's biweight), so a query with its own
  exposure and white balance is compared with a reference in the same colours, while a stain, a missing brick
  or a highlight covers too few pixels to move the fit (they are its outliers). Saturated query pixels carry no
  colour information and are left out.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = [
    "PerImageColourTransform",
    "apply_colour_transform",
    "background_colour",
    "fit_colour_transform",
    "identity_transform",
    "match_colours",
]


def identity_transform(dtype: torch.dtype = torch.float32, device=None) -> Float[Tensor, "3 4"]:
    """The (3, 4) affine colour transform that changes nothing."""
    return torch.cat([torch.eye(3, dtype=dtype, device=device), torch.zeros(3, 1, dtype=dtype, device=device)], 1)


def apply_colour_transform(colours: Float[Tensor, "*bs 3"], transform: Float[Tensor, "3 4"]) -> Tensor:
    """``transform[:, :3] @ colour + transform[:, 3]`` for every colour, clipped to [0, 1] like a camera.

    Example:
        >>> gain = torch.tensor([[1.1, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.9, 0]])
        >>> apply_colour_transform(torch.tensor([0.5, 0.5, 0.5]), gain)
        tensor([0.5500, 0.5000, 0.4500])
    """
    transform = transform.to(colours)
    return (colours @ transform[:, :3].t() + transform[:, 3]).clamp(0.0, 1.0)


def fit_colour_transform(
    source: Float[Tensor, "n 3"],
    target: Float[Tensor, "n 3"],
    weights: Float[Tensor, " n"] | None = None,
    iterations: int = 8,
    saturation: float = 0.98,
    ridge: float = 1e-3,
    tukey_scale: float = 4.685,
    min_sigma: float = 0.01,
    max_gain_change: float = 0.25,
    max_offset: float = 0.1,
) -> Float[Tensor, "3 4"]:
    """Robust per-channel gain and offset ``T`` with ``target ~ T[:, :3] @ source + T[:, 3]`` (RGB in [0, 1]).

    The map is diagonal: exposure, white balance and black level act on each channel alone, and a map that mixes
    channels could recolour a wrong rendering (the object seen from behind, a stain) into the query. Pixels whose
    target is saturated in any channel (``>= saturation``: clipped highlights, an over-exposed background) are
    ignored. The first solve is weighted least squares; the following ones reweight with Tukey's biweight at
    ``tukey_scale`` robust standard deviations of the colour residual (median absolute residual, floored at
    ``min_sigma``), so a minority of pixels that the reference does not explain (a defect) gets weight zero. A small
    ridge towards the identity keeps the map defined when a channel barely varies. Gains stay within
    ``1 -+ max_gain_change`` and offsets within ``+-max_offset``: exposure and white balance vary by a few percent
    between captures, while a free fit could fade a wrong rendering to a flat colour that matches any query.

    Example:
        >>> source = torch.rand(1000, 3) * 0.9
        >>> truth = torch.tensor([[1.05, 0, 0, 0.01], [0, 0.97, 0, 0], [0, 0, 1.02, -0.02]])
        >>> target = apply_colour_transform(source, truth)
        >>> target[:50] = torch.tensor([0.3, 0.2, 0.1])  # a stain
        >>> torch.allclose(fit_colour_transform(source, target), truth, atol=1e-3)
        True
    """
    source = source.reshape(-1, 3).double()
    target = target.reshape(-1, 3).double()
    device = source.device
    prior = torch.ones(len(source), dtype=torch.float64, device=device) if weights is None else weights.reshape(-1)
    prior = prior.double() * (target < saturation).all(-1)
    gain, offset = torch.ones(3, dtype=torch.float64, device=device), torch.zeros(3, dtype=torch.float64, device=device)
    robust = torch.ones_like(prior)
    for iteration in range(max(1, iterations)):
        if iteration > 0:
            residual = (target - (source * gain + offset)).norm(dim=-1)
            sigma = max(float(1.4826 * residual[prior > 0].median()), min_sigma)
            robust = (1.0 - (residual / (tukey_scale * sigma)).clamp(max=1.0) ** 2) ** 2
        w = prior * robust
        total = float(w.sum())
        if total < 8:
            break
        # Per channel, the 2x2 normal equations of target = gain * source + offset, with the ridge towards (1, 0).
        sw, sx, sy = total, (w[:, None] * source).sum(0), (w[:, None] * target).sum(0)
        sxx, sxy = (w[:, None] * source * source).sum(0), (w[:, None] * source * target).sum(0)
        damp = ridge * total
        a11, a12, a22 = sxx + damp, sx, sw + damp
        b1, b2 = sxy + damp, sy
        det = a11 * a22 - a12 * a12
        gain = ((a22 * b1 - a12 * b2) / det).clamp(1.0 - max_gain_change, 1.0 + max_gain_change)
        offset = ((sy - gain * sx) / sw).clamp(-max_offset, max_offset)  # the best offset for the bounded gain
    transform = torch.cat([torch.diag(gain), offset[:, None]], 1)
    return transform.float()


def background_colour(image: Float[Tensor, "h w 3"]) -> Float[Tensor, "3"]:
    """Colour of the uniform background of an object photo: the median of the image's outermost pixels.

    MAD-style views frame the object with margin, so the border is background; the median ignores the odd
    object pixel touching it and sensor noise.
    """
    border = torch.cat([image[0], image[-1], image[:, 0], image[:, -1]])
    return border.median(dim=0).values


class PerImageColourTransform(nn.Module):
    """A learned affine colour transform per training image, initialised at (and pulled towards) the identity.

    Args:
        num_images: training images (indices of the ray bundle's ``camera_indices``).
    """

    def __init__(self, num_images: int) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.zeros(max(1, num_images), 3, 3))
        self.offset = nn.Parameter(torch.zeros(max(1, num_images), 3))

    def forward(self, rgb: Float[Tensor, "n 3"], image_indices: Int[Tensor, " n"]) -> Float[Tensor, "n 3"]:
        """Each ray's colour as its training image saw it (clipped to [0, 1] like the camera)."""
        matrix, offset = self.matrix[image_indices], self.offset[image_indices]
        return (rgb + (matrix @ rgb[:, :, None])[:, :, 0] + offset).clamp(0.0, 1.0)

    def transform(self, image_index: int) -> Float[Tensor, "3 4"]:
        """The learned (3, 4) transform of one training image (canonical colour -> that image's colour)."""
        eye = torch.eye(3, device=self.matrix.device)
        return torch.cat([eye + self.matrix[image_index], self.offset[image_index, :, None]], 1).detach()

    def regulariser(self) -> Tensor:
        """Mean squared deviation from the identity over images: keeps the canonical look the images' average."""
        return self.matrix.square().sum((1, 2)).mean() + self.offset.square().sum(1).mean()


def match_colours(
    reference: Float[Tensor, "h w 3"], query: Float[Tensor, "h w 3"], max_pixels: int = 20000
) -> tuple[Float[Tensor, "h w 3"], Float[Tensor, "3 4"]]:
    """The reference in the query's colours (exposure, white balance) and the fitted (3, 4) transform.

    Both images must have the same size. At most ``max_pixels`` pixels on a regular grid enter the fit. The
    reference's white background would outnumber the object several times over; its pixels are down-weighted
    to the object's total weight so that the object's colours decide.

    Example:
        >>> matched, transform = match_colours(rendering, 0.93 * rendering)  # doctest: +SKIP
        >>> transform[:, :3].diagonal()  # doctest: +SKIP
        tensor([0.9300, 0.9300, 0.9300])
    """
    if reference.shape != query.shape:
        raise ValueError(f"Reference {tuple(reference.shape)} and query {tuple(query.shape)} differ in size.")
    stride = max(1, int((reference.shape[0] * reference.shape[1] / max(1, max_pixels)) ** 0.5))
    source = reference[::stride, ::stride].reshape(-1, 3).float()
    target = query[::stride, ::stride].reshape(-1, 3).float()
    blank = (source > 0.99).all(-1)
    weights = torch.ones(len(source))
    blank_count, object_count = int(blank.sum()), int((~blank).sum())
    if blank_count > object_count > 0:
        weights[blank] = object_count / blank_count
    transform = fit_colour_transform(source, target, weights.to(source.device))
    return apply_colour_transform(reference.float(), transform), transform
