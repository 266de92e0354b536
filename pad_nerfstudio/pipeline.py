"""The OmniposeAD pipeline: trains the anomaly-free field of one object.

Training is nerfstudio's: ray batches from the posed defect-free views. Before the first step the
occupancy grid is carved from the training silhouettes so that no sample is wasted on empty space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Type

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE

from pad_nerfstudio.data.datamanager import MADDataManagerConfig
from pad_nerfstudio.data.mad_layout import spread_subset
from pad_nerfstudio.field.model import OmniposeModel, OmniposeModelConfig


@dataclass
class OmniposePipelineConfig(VanillaPipelineConfig):
    """Pipeline of the `omnipose-ad` method."""

    _target: Type = field(default_factory=lambda: OmniposePipeline)
    datamanager: MADDataManagerConfig = field(default_factory=MADDataManagerConfig)
    model: OmniposeModelConfig = field(default_factory=OmniposeModelConfig)
    startup_note: Optional[str] = None
    """Printed when the pipeline starts (e.g. that a GPU preset fell back to its CPU settings)."""
    hull_views: int = 64
    """Training views used to carve the visual hull that initialises the occupancy grid."""


class OmniposePipeline(VanillaPipeline):
    """Radiance field of the defect-free object (localisation and scoring build on it)."""

    config: OmniposePipelineConfig
    model: OmniposeModel

    def __init__(
        self,
        config: OmniposePipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[torch.cuda.amp.GradScaler] = None,
    ):
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        if config.startup_note and test_mode == "val":
            CONSOLE.print(f"[bold yellow]{config.startup_note}")

    def carve_visual_hull(self, step: int) -> None:
        if bool(self.model.hull_carved):
            return
        dataset = self.datamanager.train_dataset
        # An evenly spread subset of views carves nearly the same hull at a fraction of the cost.
        positions = dataset.cameras.camera_to_worlds[:, :, 3].numpy()
        views = spread_subset(positions - positions.mean(0), self.config.hull_views).tolist()
        images = [dataset.get_image_float32(i) for i in views]
        self.model.carve_visual_hull(dataset.cameras[torch.tensor(views)], images)
        CONSOLE.log(
            f"Occupancy grid carved from {len(images)} silhouettes: "
            f"{float(self.model.occupancy.occupied.float().mean()):.1%} of the box may hold the object"
        )

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        carve = TrainingCallback(
            [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.carve_visual_hull, update_every_num_iters=1
        )
        return [carve] + super().get_training_callbacks(training_callback_attributes)
