"""`pad-demo`: the default run on embedded generated data, from nothing to results in one command.

Generates the default `pad-synth` class under `data/` (once), trains the anomaly-free field with the
CPU preset through nerfstudio's own training entry point, then reports how well the field reproduces
views it never saw (the test images of the defect-free object at their true poses).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import tyro
from nerfstudio.scripts.train import main as ns_train
from nerfstudio.utils.eval_utils import eval_setup
from rich.console import Console
from rich.table import Table

from pad_nerfstudio.data.mad_dataset import load_rgb
from pad_nerfstudio.data.mad_layout import resolve_class_dir

CONSOLE = Console()


@dataclass
class DemoConfig:
    """Generate the default class, train `omnipose-ad-lite` on it and report."""

    data: Path = Path("data/pad-synth")
    """Dataset root holding (or receiving) the generated default class."""
    class_name: str = "gorilla"
    """Class to generate and train on."""
    size: int = 200
    """Image size of the generated class, in pixels."""
    output_dir: Path = Path("outputs")
    """Where nerfstudio writes the run."""
    max_num_iterations: Optional[int] = None
    """Training steps (the preset's default when None)."""


def ensure_default_class(config: DemoConfig) -> Path:
    try:
        return resolve_class_dir(config.data / config.class_name)
    except ValueError:
        from pad_nerfstudio.synth.generate import generate_dataset

        CONSOLE.print(f"Generating the default class '{config.class_name}' under {config.data} ...")
        return generate_dataset(config.data, classes=[config.class_name], size=config.size)[0]


def held_out_psnr(config_path: Path, class_dir: Path) -> tuple[float, float]:
    """Mean PSNR and render seconds of the field on the defect-free test views at their true poses."""
    _, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    model = pipeline.model
    cameras = pipeline.datamanager.train_dataset.cameras
    intrinsics = torch.cat([cameras.fx[0], cameras.fy[0], cameras.cx[0], cameras.cy[0]])
    poses = json.loads((class_dir / "test_poses.json").read_text())
    psnrs, seconds = [], []
    for name, pose in poses.items():
        if not name.startswith("test/good/"):
            continue
        truth = torch.from_numpy(load_rgb(class_dir / name)).float() / 255.0
        start = time.perf_counter()
        render = model.render_image(torch.tensor(pose)[:3].float(), intrinsics, truth.shape[1], truth.shape[0])
        seconds.append(time.perf_counter() - start)
        psnrs.append(-10.0 * math.log10(float(((render["rgb"].cpu() - truth) ** 2).mean())))
    return sum(psnrs) / len(psnrs), sum(seconds) / len(seconds)


def main(config: DemoConfig) -> None:
    from pad_nerfstudio.method_configs import omnipose_ad_lite

    start = time.perf_counter()
    class_dir = ensure_default_class(config)
    trainer_config = copy.deepcopy(omnipose_ad_lite.config)
    trainer_config.pipeline.datamanager.data = class_dir
    trainer_config.output_dir = config.output_dir
    trainer_config.timestamp = "demo"
    trainer_config.vis = "tensorboard"
    if config.max_num_iterations is not None:
        trainer_config.max_num_iterations = config.max_num_iterations
    ns_train(trainer_config)
    config_path = trainer_config.get_base_dir() / "config.yml"
    psnr, seconds = held_out_psnr(config_path, class_dir)

    table = Table(title=f"pad-demo: {class_dir.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("held-out PSNR (defect-free test views)", f"{psnr:.2f} dB")
    table.add_row("render time per image", f"{seconds:.2f} s")
    table.add_row("total wall time", f"{time.perf_counter() - start:.0f} s")
    CONSOLE.print(table)
    CONSOLE.print(f"Run folder: {trainer_config.get_base_dir()} (inspect with `ns-viewer --load-config {config_path}`)")


def entrypoint() -> None:
    main(tyro.cli(DemoConfig))


if __name__ == "__main__":
    entrypoint()
