"""Dataset for MAD images: RGB on white, resized to the camera, with ground-truth masks for test queries.

Images in any 8- or 16-bit PNG mode become 8-bit RGB, transparent ones composited on white (MAD's background),
images are resized to their camera's resolution (the dataparser's downscale option), and test items carry their
anomaly label and ground-truth mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import torch
from nerfstudio.data.datasets.base_dataset import InputDataset
from PIL import Image

from pad_nerfstudio.data.mad_layout import MADFormatError
from pad_nerfstudio.data.object_masks import composite_on_white

_EIGHT_BIT_MODES = {"1", "L", "P", "RGB", "CMYK", "YCbCr"}
"""Modes PIL converts to RGB without loss of meaning (CMYK and YCbCr come from JPEGs)."""
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_GREY_MODES = {"I;16", "I;16B", "I;16L", "I"}


def load_rgb(path: Path | BinaryIO, size: tuple[int, int] | None = None) -> npt.NDArray[np.uint8]:
    """Read an image as uint8 RGB on a white background, optionally resized to (width, height).

    Handles the PNG modes MAD-like data comes in: 8-bit L, LA, P (with or without transparency), RGB, RGBA,
    and 16-bit grey, grey+alpha, RGB and RGBA, which are scaled to 8 bits (value / 257, rounded). Other modes
    (floating point, 32-bit integers beyond the 16-bit range) are refused with a :class:`MADFormatError`.

    Example:
        >>> load_rgb(Path("data/01Gorilla/train/good/0.png"), (200, 200)).shape  # doctest: +SKIP
        (200, 200, 3)
    """
    try:
        with Image.open(path) as image:
            image = _to_rgb(image, path)
            if size is not None and image.size != tuple(size):
                image = image.resize(tuple(size), resample=Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, MADFormatError):
            raise
        raise MADFormatError(
            f"Cannot read image {_name(path)}: {error}. The file may be truncated or not an image."
        ) from error


def _name(path: Path | BinaryIO) -> str:
    return str(path) if isinstance(path, (str, Path)) else "(uploaded image)"


def _to_rgb(image: Image.Image, path: Path | BinaryIO) -> Image.Image:
    """8-bit RGB of an opened image, alpha composited on white."""
    rawmode = str(image.tile[0][3]) if image.tile else ""
    if image.format == "PNG" and rawmode.endswith(";16B") and image.mode in ("RGB", "RGBA"):
        # PIL keeps only the high byte of 16-bit colour PNGs (grey+alpha becomes RGBA): decode all 16 bits.
        return Image.fromarray(_sixteen_bit_colour(path))
    image.load()
    if image.mode in _SIXTEEN_BIT_GREY_MODES:
        grey = np.asarray(image).astype(np.float64)
        if grey.min() < 0 or grey.max() > 65535:
            raise MADFormatError(
                f"Image {_name(path)} has 32-bit integer pixels ({grey.min():.0f} .. {grey.max():.0f}): expected "
                "8- or 16-bit values. Save it as an 8-bit RGB or 16-bit PNG."
            )
        # convert("RGB") would clip 16-bit values at 255 (an all-white image): scale them instead.
        return Image.fromarray(np.round(grey / 257.0).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    if image.mode in _EIGHT_BIT_MODES:
        return image.convert("RGB")
    raise MADFormatError(
        f"Image {_name(path)} has PIL mode {image.mode!r}, which is not a colour or grey photograph: expected "
        "8-bit L/LA/P/RGB/RGBA or 16-bit grey/RGB(A). Save it as an 8-bit RGB(A) PNG."
    )


def _sixteen_bit_colour(path: Path | BinaryIO) -> npt.NDArray[np.uint8]:
    """A 16-bit RGB(A) or grey+alpha PNG as 8-bit RGB on white (value / 257, alpha composited in float)."""
    import cv2

    if isinstance(path, (str, Path)):
        content = Path(path).read_bytes()
    else:
        path.seek(0)
        content = path.read()
    pixels = cv2.imdecode(np.frombuffer(content, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3:
        raise MADFormatError(f"Cannot decode the 16-bit PNG {_name(path)}.")
    pixels = pixels.astype(np.float64) / 65535.0
    rgb = pixels[..., 2::-1]  # OpenCV decodes to BGR(A)
    if pixels.shape[-1] == 4:
        alpha = pixels[..., 3:]
        rgb = rgb * alpha + (1.0 - alpha)
    return np.round(rgb * 255.0).astype(np.uint8)


def load_mask(path: Path | None, size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Read a ground-truth mask as booleans of (height, width) = size reversed; all False when absent."""
    if path is None:
        return np.zeros(size[::-1], dtype=bool)
    try:
        with Image.open(path) as mask:
            if mask.mode in _SIXTEEN_BIT_GREY_MODES:  # convert("L") would clip: threshold at half the 16-bit range
                mask = Image.fromarray(np.where(np.asarray(mask) > 32767, 255, 0).astype(np.uint8))
            mask = mask.convert("L")
            if mask.size != tuple(size):
                mask = mask.resize(tuple(size), resample=Image.Resampling.NEAREST)
            return np.asarray(mask) > 127
    except (OSError, SyntaxError, ValueError) as error:
        raise MADFormatError(f"Cannot read mask {path}: {error}.") from error


class MADDataset(InputDataset):
    """InputDataset over MAD images; test items also hold `label`, `defect_type` and `gt_mask`."""

    exclude_batch_keys_from_device = InputDataset.exclude_batch_keys_from_device + ["gt_mask"]

    def _camera_size(self, image_idx: int) -> tuple[int, int]:
        camera = self.cameras[image_idx]
        return int(camera.width.item()), int(camera.height.item())

    @property
    def on_backdrop(self) -> bool:
        """Photos on a backdrop: training views come with object masks, queries need segmenting."""
        return bool(self.metadata.get("object_mask_filenames")) or bool(self.metadata.get("on_backdrop"))

    def get_numpy_image(self, image_idx: int) -> npt.NDArray[np.uint8]:
        """The view as the field learns it: a photo on a backdrop is cut out along its mask onto white."""
        image = self.get_photo(image_idx)
        masks = self.metadata.get("object_mask_filenames")
        if masks and masks[image_idx] is not None:
            image = composite_on_white(image, load_mask(masks[image_idx], self._camera_size(image_idx)))
        return image

    def get_photo(self, image_idx: int) -> npt.NDArray[np.uint8]:
        """The image as stored (with its backdrop, if any), resized to its camera."""
        return load_rgb(self._dataparser_outputs.image_filenames[image_idx], self._camera_size(image_idx))

    def get_metadata(self, data: dict) -> dict:
        if "labels" not in self.metadata:
            return {}
        index = data["image_idx"]
        mask = load_mask(self.metadata["gt_mask_filenames"][index], self._camera_size(index))
        return {
            "label": self.metadata["labels"][index],
            "defect_type": self.metadata["defect_types"][index],
            "gt_mask": torch.from_numpy(mask),
        }
