"""The `mad-data` dataparser: one MAD class as nerfstudio splits.

`train` holds the posed defect-free views, `val` a few of them for monitoring during training, and
`test` the unposed queries with their labels and ground-truth masks (carried in metadata, never as
nerfstudio sampling masks). Test queries get placeholder cameras: their pose is what the method has to
find. This module is the target of an entry point, so it must stay import-light: no datamanagers,
pipelines or models here (nerfstudio's circular-import trap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from pad_nerfstudio.data.mad_layout import (
    Intrinsics,
    MADFormatError,
    object_sphere,
    read_test_queries,
    read_training_views,
    resolve_class_dir,
    spread_subset,
)


@dataclass
class MADDataParserConfig(DataParserConfig):
    """One class of MAD-Sim (or a MAD-format dataset such as `pad-synth` output)."""

    _target: Type = field(default_factory=lambda: MADDataParser)
    data: Path = Path("data/pad-synth/01Gorilla")
    """Class folder, or dataset root plus a loosely written class name (`mad/gorilla`, `mad/01Gorilla`)."""
    train_views: Optional[int] = None
    """Keep this many evenly spread training views (the paper's dense-to-sparse study); all if None."""
    val_views: int = 4
    """Training views also used for monitoring (the `val` split)."""
    downscale_factor: int = 1
    """Divide image resolution by this factor (MAD-Sim: 800 -> 400 with 2, -> 200 with 4)."""
    scene_margin: float = 1.05
    """Scene box half-size relative to the largest sphere all cameras see (see `object_sphere`)."""
    check_test_split: bool = True
    """Also check the test split (images, ground-truth masks and their sizes) when the train split is parsed, so
    that a broken test split is reported before training instead of by ns-eval afterwards."""


def _cameras(poses: np.ndarray, intrinsics: list[Intrinsics], downscale: int) -> Cameras:
    def column(name: str, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor([getattr(k, name) for k in intrinsics], dtype=dtype)[:, None]

    return Cameras(
        camera_to_worlds=torch.from_numpy(poses[:, :3, :4]).float(),
        fx=column("fx") / downscale,
        fy=column("fy") / downscale,
        cx=column("cx") / downscale,
        cy=column("cy") / downscale,
        width=column("width", torch.int64) // downscale,
        height=column("height", torch.int64) // downscale,
        camera_type=CameraType.PERSPECTIVE,
    )


def _check_test_split(class_dir: Path) -> None:
    """Read the test split's file list, image and mask headers now: the first use of the test split is ns-eval."""
    try:
        read_test_queries(class_dir)
    except MADFormatError as error:
        raise MADFormatError(
            f"{error} (The test split is checked before training so that evaluation cannot fail after it. Fix it, "
            "or train without a test split with the mad-data option --check-test-split False.)"
        ) from error


@dataclass
class MADDataParser(DataParser):
    """Parses a MAD class folder into train / val / test outputs."""

    config: MADDataParserConfig

    def _generate_dataparser_outputs(self, split: Literal["train", "val", "test"] = "train", **kwargs):
        if self.config.downscale_factor < 1:
            raise MADFormatError(f"downscale_factor must be >= 1, got {self.config.downscale_factor}.")
        class_dir = resolve_class_dir(self.config.data)
        views = read_training_views(class_dir)
        centre, radius = object_sphere(views.camera_to_worlds, views.intrinsics)
        half_size = radius * self.config.scene_margin
        scene_box = SceneBox(aabb=torch.tensor(np.stack([centre - half_size, centre + half_size])).float())
        metadata = {"class_dir": class_dir, "class_name": class_dir.name, "split": split}

        positions = views.camera_to_worlds[:, :3, 3] - centre
        train_indices = np.arange(len(views.image_paths))
        if self.config.train_views is not None:
            train_indices = spread_subset(positions, self.config.train_views)
        if split in ("train", "val"):
            indices = train_indices
            if split == "val":
                indices = train_indices[spread_subset(positions[train_indices], self.config.val_views)]
            cameras = _cameras(
                views.camera_to_worlds[indices], [views.intrinsics[i] for i in indices], self.config.downscale_factor
            )
            if split == "train":
                if getattr(self.config, "check_test_split", True):  # configs saved before the option lack it
                    _check_test_split(class_dir)
                CONSOLE.log(f"MAD class {class_dir.name}: {len(indices)} training views, object radius {radius:.2f}")
            if views.on_backdrop:
                metadata["object_mask_filenames"] = [views.mask_paths[i] for i in indices]
            return DataparserOutputs(
                image_filenames=[views.image_paths[i] for i in indices],
                cameras=cameras,
                alpha_color=torch.ones(3),
                scene_box=scene_box,
                metadata=metadata,
            )
        if split != "test":
            raise ValueError(f"Unknown split {split!r}: expected train, val or test.")

        queries = read_test_queries(class_dir)
        # Test queries carry no pose: give each a placeholder camera (the first training pose) with the
        # intrinsics of the training views scaled to its own size. Nothing may read this pose as truth.
        reference = views.intrinsics[0]
        intrinsics = [
            Intrinsics(
                reference.fx * w / reference.width,
                reference.fy * h / reference.height,
                reference.cx * w / reference.width,
                reference.cy * h / reference.height,
                w,
                h,
            )
            for w, h in queries.sizes
        ]
        placeholder = np.repeat(views.camera_to_worlds[:1], len(intrinsics), axis=0)
        metadata.update(on_backdrop=views.on_backdrop)
        metadata.update(labels=queries.labels, defect_types=queries.defect_types, gt_mask_filenames=queries.mask_paths)
        return DataparserOutputs(
            image_filenames=queries.image_paths,
            cameras=_cameras(placeholder, intrinsics, self.config.downscale_factor),
            alpha_color=torch.ones(3),
            scene_box=scene_box,
            metadata=metadata,
        )


mad_dataparser = DataParserSpecification(
    config=MADDataParserConfig(),
    description="One class of the MAD pose-agnostic anomaly detection dataset (MAD-Sim layout).",
)
