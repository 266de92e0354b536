"""Datamanager for MAD classes: nerfstudio's vanilla ray datamanager over :class:`MADDataset`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig

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
