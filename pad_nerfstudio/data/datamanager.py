"""Datamanager for MAD classes: nerfstudio's vanilla ray datamanager over :class:`MADDataset`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import (
    VanillaDataManager,
    VanillaDataManagerConfig,
    variable_res_collate,
)
from nerfstudio.utils.rich_utils import CONSOLE

from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import MADDataset


@dataclass
class MADDataManagerConfig(VanillaDataManagerConfig):
    """Ray batches from the training views; whole images (with masks and labels) for evaluation."""

    _target: Type = field(default_factory=lambda: MADDataManager)
    # Typed as nerfstudio's dataparser union (through the parent) so that `mad-data` is a CLI subcommand.
    dataparser: AnnotatedDataParserUnion = field(default_factory=MADDataParserConfig)


class MADDataManager(VanillaDataManager[MADDataset]):
    """Vanilla datamanager whose datasets are :class:`MADDataset`."""

    def setup_eval(self):
        # Test queries keep their own size (e.g. captured at twice the training resolution; the dataparser scales
        # their intrinsics). nerfstudio switches to its list collate only for training views of several sizes;
        # stacking queries of several sizes would fail in `setup_eval`, so do the same for the eval split.
        cameras = self.eval_dataset.cameras
        sizes = set(zip(cameras.width[:, 0].tolist(), cameras.height[:, 0].tolist()))
        if len(sizes) > 1 and self.config.collate_fn is not variable_res_collate:
            CONSOLE.print(f"{self.test_split} images of {len(sizes)} sizes: using variable_res_collate")
            self.config.collate_fn = variable_res_collate
        super().setup_eval()
