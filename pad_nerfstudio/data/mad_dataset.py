"""Dataset for MAD images: RGB on white, resized to the camera, with ground-truth masks for test queries.

RGBA images are composited on white (MAD's background), images are resized to their camera's resolution
(the dataparser's downscale option), and test items carry their anomaly label and ground-truth mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from nerfstudio.data.datasets.base_dataset import InputDataset
from PIL import Image

from pad_nerfstudio.data.mad_layout import MADFormatError


def load_rgb(path: Path, size: tuple[int, int] | None = None) -> npt.NDArray[np.uint8]:
    """Read an image as uint8 RGB on a white background, optionally resized to (width, height)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image)
            image = image.convert("RGB")
            if size is not None and image.size != tuple(size):
                image = image.resize(tuple(size), resample=Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as error:
        raise MADFormatError(
            f"Cannot read image {path}: {error}. The file may be truncated or not an image."
        ) from error


def load_mask(path: Path | None, size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Read a ground-truth mask as booleans of (height, width) = size reversed; all False when absent."""
    if path is None:
        return np.zeros(size[::-1], dtype=bool)
    try:
        with Image.open(path) as mask:
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

    def get_numpy_image(self, image_idx: int) -> npt.NDArray[np.uint8]:
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
