"""The MAD datamanager: nerfstudio's image loaders, with a worker count the machine can hold."""

from __future__ import annotations

import os
import warnings

from mad_fixtures import make_mad_class

from pad_nerfstudio.data.datamanager import MADDataManagerConfig, dataloader_workers
from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig


def test_dataloader_workers_are_capped_by_the_cpus():
    assert dataloader_workers(1, cpus=1) == 1
    assert dataloader_workers(1, cpus=2) == 2
    assert dataloader_workers(1, cpus=64) == 4  # nerfstudio's 4 per device where there is room
    assert dataloader_workers(2, cpus=64) == 8
    assert dataloader_workers(1, cpus=0) == 1


def test_two_cpu_machine_gets_no_worker_warning(tmp_path, monkeypatch):
    """nerfstudio asks for 4 loader workers; torch warns that 2 CPUs suggest at most 2."""
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    class_dir = make_mad_class(tmp_path, size=16, test_counts={"good": 2, "Burrs": 2})
    config = MADDataManagerConfig(dataparser=MADDataParserConfig(data=class_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datamanager = config.setup(device="cpu", test_mode="test")
    assert not [w for w in caught if "worker processes" in str(w.message)]
    assert datamanager.train_image_dataloader.num_workers == 2
    assert datamanager.eval_image_dataloader.num_workers == 2
    # Everything nerfstudio's setup_train/setup_eval set up is there.
    ray_bundle, batch = datamanager.next_train(0)
    assert ray_bundle.origins.shape[0] == batch["image"].shape[0] > 0
    camera, batch = next(iter(datamanager.fixed_indices_eval_dataloader))
    assert batch["image"].shape == (16, 16, 3) and len(list(datamanager.fixed_indices_eval_dataloader)) == 4
    assert datamanager.eval_ray_generator is not None and datamanager.eval_pixel_sampler is not None
