"""The registered `omnipose-ad` methods (installed as `pad_nerfstudio.method_configs`).

`omnipose-ad` is the full-quality preset for a GPU; on a machine without CUDA it scales itself down to
the CPU settings (and says so), so a laptop user gets a result in minutes without learning flags.
`omnipose-ad-lite` is the CPU preset used by the default run and the tests.

Both presets use the vm field (`--pipeline.model.encoding vm`). On the CPU that is measured: at 300 equal steps on
a 200 px class the hash grid (nerfstudio's torch implementation) is 1 dB lower in held-out PSNR, trains 9x and
renders 7.7x slower (benchmarks/field_speed.py; README, "GPU, hash grids and full resolution"). On a GPU the
choice is not measured yet: no GPU was available while the hash field was built. `benchmarks/gpu_check.sh` trains
both on one GPU and prints them side by side; the GPU preset should take whichever it shows faster at equal
quality.
"""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from pad_nerfstudio.compat import (
    allow_numpy_in_checkpoints,
    explain_missing_checkpoints,
    fast_external_method_registry,
)
from pad_nerfstudio.data.datamanager import MADDataManagerConfig
from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.field.model import OmniposeModelConfig
from pad_nerfstudio.pipeline import OmniposePipelineConfig

allow_numpy_in_checkpoints()
# ns-eval, ns-viewer: a run without checkpoints says so instead of "list index out of range" (nerfstudio's scripts
# load the plugin while importing the function to wrap; see compat.py).
explain_missing_checkpoints()
# nerfstudio builds its external-method list right after loading the plugins: 4-10 s less per command.
fast_external_method_registry()
HAS_CUDA = torch.cuda.is_available()


def _optimizers(max_steps: int) -> dict:
    return {
        "fields": {
            "optimizer": AdamOptimizerConfig(lr=0.02, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.002, max_steps=max_steps),
        },
        "heads": {
            "optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.0005, max_steps=max_steps),
        },
        "appearance": {  # per-training-image colour transforms (used when appearance_compensation is on)
            "optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.0005, max_steps=max_steps),
        },
    }


def omnipose_trainer(method_name: str, gpu: bool) -> TrainerConfig:
    """Trainer config of the GPU (full quality) or CPU (lite) preset."""
    steps = 20000 if gpu else 1000
    model = (
        OmniposeModelConfig(encoding="vm", grid_resolutions=(64, 320), occupancy_resolution=128)
        if gpu
        else OmniposeModelConfig(encoding="vm", grid_resolutions=(48, 192), occupancy_resolution=64)
    )
    return TrainerConfig(
        method_name=method_name,
        steps_per_eval_batch=500,
        steps_per_eval_image=1000,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=1000,
        max_num_iterations=steps,
        mixed_precision=False,
        save_only_latest_checkpoint=True,
        machine=MachineConfig(device_type="cuda" if HAS_CUDA else "cpu"),
        pipeline=OmniposePipelineConfig(
            datamanager=MADDataManagerConfig(
                dataparser=MADDataParserConfig(),
                train_num_rays_per_batch=8192 if gpu else 4096,
                eval_num_rays_per_batch=8192 if gpu else 4096,
            ),
            model=model,
            startup_note=None
            if gpu or method_name.endswith("-lite")
            else "No CUDA device: omnipose-ad trains with its CPU settings (smaller grids, fewer steps); "
            "a GPU gives the full-quality preset.",
        ),
        optimizers=_optimizers(steps),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14, quit_on_train_completion=True),
        vis="viewer",
    )


omnipose_ad = MethodSpecification(
    config=omnipose_trainer("omnipose-ad", gpu=HAS_CUDA),  # scales itself down without CUDA
    description="OmniposeAD pose-agnostic anomaly detection (GPU preset; CPU settings when no CUDA).",
)
omnipose_ad_lite = MethodSpecification(
    config=omnipose_trainer("omnipose-ad-lite", gpu=False),
    description="OmniposeAD, CPU preset: minutes on a laptop.",
)
