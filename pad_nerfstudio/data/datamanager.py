"""Datamanager for MAD classes: nerfstudio's vanilla ray datamanager over :class:`MADDataset`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Type

from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import (
    VanillaDataManager,
    VanillaDataManagerConfig,
    variable_res_collate,
)
from nerfstudio.data.utils.dataloaders import CacheDataloader, FixedIndicesEvalDataloader, RandIndicesEvalDataloader
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE

from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import MADDataset


@dataclass
class MADDataManagerConfig(VanillaDataManagerConfig):
    """Ray batches from the training views; whole images (with masks and labels) for evaluation."""

    _target: Type = field(default_factory=lambda: MADDataManager)
    # Typed as nerfstudio's dataparser union (through the parent) so that `mad-data` is a CLI subcommand.
    dataparser: AnnotatedDataParserUnion = field(default_factory=MADDataParserConfig)


def usable_cpus() -> int:
    """CPUs this process may run on (what torch compares DataLoader workers with)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def dataloader_workers(world_size: int, cpus: Optional[int] = None) -> int:
    """nerfstudio's 4 image-loader workers per device, at most one per usable CPU.

    nerfstudio 1.1.5 asks for ``4 * world_size`` whatever the machine, and torch warns ("This DataLoader will create
    4 worker processes in total. Our suggested max number of worker in current system is 2") on a small one. Its
    `CacheDataloader` never starts those processes: it loads the images on ``4 * num_workers`` threads, at most
    CPUs - 1, so on a machine whose CPUs are all usable the cap leaves the loading as it was and only removes the
    false alarm.

    Example:
        >>> dataloader_workers(1, cpus=2), dataloader_workers(1, cpus=64), dataloader_workers(2, cpus=64)
        (2, 4, 8)
    """
    return max(1, min(4 * world_size, usable_cpus() if cpus is None else cpus))


class MADDataManager(VanillaDataManager[MADDataset]):
    """Vanilla datamanager whose datasets are :class:`MADDataset`."""

    def setup_train(self):
        # nerfstudio 1.1.5's `VanillaDataManager.setup_train`, with the worker count capped (`dataloader_workers`).
        assert self.train_dataset is not None
        CONSOLE.print("Setting up training dataset...")
        self.train_image_dataloader = CacheDataloader(
            self.train_dataset,
            num_images_to_sample_from=self.config.train_num_images_to_sample_from,
            num_times_to_repeat_images=self.config.train_num_times_to_repeat_images,
            device=self.device,
            num_workers=dataloader_workers(self.world_size),
            pin_memory=True,
            collate_fn=self.config.collate_fn,
            exclude_batch_keys_from_device=self.exclude_batch_keys_from_device,
        )
        self.iter_train_image_dataloader = iter(self.train_image_dataloader)
        self.train_pixel_sampler = self._get_pixel_sampler(self.train_dataset, self.config.train_num_rays_per_batch)
        self.train_ray_generator = RayGenerator(self.train_dataset.cameras.to(self.device))

    def setup_eval(self):
        # Test queries keep their own size (e.g. captured at twice the training resolution; the dataparser scales
        # their intrinsics). nerfstudio switches to its list collate only for training views of several sizes;
        # stacking queries of several sizes would fail in `setup_eval`, so do the same for the eval split.
        cameras = self.eval_dataset.cameras
        sizes = set(zip(cameras.width[:, 0].tolist(), cameras.height[:, 0].tolist()))
        if len(sizes) > 1 and self.config.collate_fn is not variable_res_collate:
            CONSOLE.print(f"{self.test_split} images of {len(sizes)} sizes: using variable_res_collate")
            self.config.collate_fn = variable_res_collate
        # The rest is nerfstudio 1.1.5's `VanillaDataManager.setup_eval`, with the worker count capped.
        CONSOLE.print("Setting up evaluation dataset...")
        workers = dataloader_workers(self.world_size)
        self.eval_image_dataloader = CacheDataloader(
            self.eval_dataset,
            num_images_to_sample_from=self.config.eval_num_images_to_sample_from,
            num_times_to_repeat_images=self.config.eval_num_times_to_repeat_images,
            device=self.device,
            num_workers=workers,
            pin_memory=True,
            collate_fn=self.config.collate_fn,
            exclude_batch_keys_from_device=self.exclude_batch_keys_from_device,
        )
        self.iter_eval_image_dataloader = iter(self.eval_image_dataloader)
        self.eval_pixel_sampler = self._get_pixel_sampler(self.eval_dataset, self.config.eval_num_rays_per_batch)
        self.eval_ray_generator = RayGenerator(self.eval_dataset.cameras.to(self.device))
        self.fixed_indices_eval_dataloader = FixedIndicesEvalDataloader(
            input_dataset=self.eval_dataset, device=self.device, num_workers=workers
        )
        self.eval_dataloader = RandIndicesEvalDataloader(
            input_dataset=self.eval_dataset, device=self.device, num_workers=workers
        )
